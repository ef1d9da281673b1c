//! Polarion for the tests: the importers' HTTP wire as clients such as dump2polarion meet it. A
//! multipart upload (the file in the part `file`) with basic or bearer authentication (401 otherwise)
//! answered `{"files": {NAME: {"job-ids": [N]}}}`; jobs that go READY → RUNNING → SUCCESS (or FAILED)
//! as time passes; the queue endpoint, one job per page; and the job log in the importers' own line
//! format. A store of work items resolves lookups by id, title and custom field (and reports
//! duplicates); a dry run changes nothing.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A test case work item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkItem {
    pub id: String,
    pub title: String,
    /// The custom lookup field's value (`testCaseID`).
    pub custom: String,
}

/// An upload as the fake took it.
#[derive(Clone, Debug)]
pub struct Upload {
    /// `xunit` or `testcase`.
    pub kind: String,
    pub file_name: String,
    pub xml: String,
    pub job: u64,
}

/// What the next upload gets instead of a job.
#[derive(Clone, Copy, Debug)]
pub enum UploadFailure {
    /// 500 with an HTML error page.
    ServerError,
    /// 200 with HTML (a login page through a proxy).
    Html,
}

struct Job {
    kind: String,
    started: Instant,
    fails: bool,
    log: String,
}

#[derive(Default)]
struct Shared {
    user: String,
    password: String,
    token: String,
    items: Vec<WorkItem>,
    next_item: u64,
    next_job: u64,
    jobs: BTreeMap<u64, Job>,
    uploads: Vec<Upload>,
    upload_failures: VecDeque<UploadFailure>,
    fail_next_job: bool,
    refused: u64,
}

pub struct FakePolarion {
    pub addr: SocketAddr,
    pub project: String,
    shared: Arc<Mutex<Shared>>,
    _runtime: tokio::runtime::Runtime,
}

/// How long a job stays READY, then RUNNING.
const READY_FOR: Duration = Duration::from_millis(300);
const RUNNING_FOR: Duration = Duration::from_millis(600);

#[derive(Clone)]
struct AppState {
    shared: Arc<Mutex<Shared>>,
    project: String,
    base: String,
}

impl FakePolarion {
    pub fn start(user: &str, password: &str) -> FakePolarion {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Mutex::new(Shared {
            user: user.into(),
            password: password.into(),
            next_item: 100,
            next_job: 243_400,
            ..Default::default()
        }));
        let state = AppState {
            shared: shared.clone(),
            project: "RHEL".into(),
            base: format!("http://{addr}/polarion"),
        };
        let router = axum::Router::new()
            .route(
                "/polarion/import/{endpoint}",
                axum::routing::post(upload).get(read),
            )
            .with_state(state);
        runtime.spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakePolarion {
            addr,
            project: "RHEL".into(),
            shared,
            _runtime: runtime,
        }
    }

    /// What `polarion.url` is.
    pub fn url(&self) -> String {
        format!("http://{}/polarion", self.addr)
    }

    pub fn set_password(&self, password: &str) {
        self.shared.lock().unwrap().password = password.into();
    }

    pub fn items(&self) -> Vec<WorkItem> {
        self.shared.lock().unwrap().items.clone()
    }

    pub fn add_item(&self, title: &str, custom: &str) -> String {
        let mut shared = self.shared.lock().unwrap();
        shared.next_item += 1;
        let id = format!("RHEL-{}", shared.next_item);
        shared.items.push(WorkItem {
            id: id.clone(),
            title: title.into(),
            custom: custom.into(),
        });
        id
    }

    /// Deletes the work item with this custom id (it is then not found).
    pub fn forget(&self, custom: &str) {
        self.shared
            .lock()
            .unwrap()
            .items
            .retain(|item| item.custom != custom);
    }

    pub fn uploads(&self) -> Vec<Upload> {
        self.shared.lock().unwrap().uploads.clone()
    }

    /// Uploads answered 401.
    pub fn refused(&self) -> u64 {
        self.shared.lock().unwrap().refused
    }

    pub fn fail_next_upload(&self, failure: UploadFailure) {
        self.shared
            .lock()
            .unwrap()
            .upload_failures
            .push_back(failure);
    }

    /// The next job ends FAILED.
    pub fn fail_next_job(&self) {
        self.shared.lock().unwrap().fail_next_job = true;
    }
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    let given = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if let Some(token) = given.strip_prefix("Bearer ") {
        return !shared.token.is_empty() && token == shared.token;
    }
    let Some(encoded) = given.strip_prefix("Basic ") else {
        return false;
    };
    decode_base64(encoded)
        .is_some_and(|pair| pair == format!("{}:{}", shared.user, shared.password))
}

fn decode_base64(text: &str) -> Option<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut count = 0;
    let mut out = Vec::new();
    for byte in text.trim().bytes().filter(|byte| *byte != b'=') {
        let value = ALPHABET.iter().position(|c| *c == byte)? as u32;
        bits = (bits << 6) | value;
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}

fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The value of attribute `name` in the first tag of `block` that has it.
fn attribute(block: &str, name: &str) -> Option<String> {
    let marker = format!("{name}=\"");
    let start = block.find(&marker)? + marker.len();
    let end = block[start..].find('"')?;
    Some(unescape(&block[start..start + end]))
}

/// The `value` of `<property name="NAME" value="…"/>` in `block`.
fn property(block: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = block.find(&marker)? + marker.len();
    let end = block[start..].find('"')?;
    Some(unescape(&block[start..start + end]))
}

/// The text of `<element>…</element>` in `block`.
fn element_text(block: &str, element: &str) -> Option<String> {
    let open = format!("<{element}>");
    let start = block.find(&open)? + open.len();
    let end = block[start..].find(&format!("</{element}>"))?;
    Some(unescape(&block[start..start + end]))
}

/// The `<testcase …>…</testcase>` (or empty `<testcase …/>`) blocks of a file.
fn testcase_blocks(xml: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase ").or_else(|| rest.find("<testcase>")) {
        let after = &rest[start..];
        let end = match (after.find("</testcase>"), after.find("/>")) {
            (Some(close), Some(empty))
                if empty < after.find('>').unwrap_or(0) + 1 && empty < close =>
            {
                empty + 2
            }
            (Some(close), _) => close + "</testcase>".len(),
            (None, Some(empty)) => empty + 2,
            (None, None) => after.len(),
        };
        blocks.push(&after[..end]);
        rest = &after[end..];
    }
    blocks
}

fn line(thread: &str, level: &str, message: &str) -> String {
    format!("2026-12-01 12:00:00,000 {level} {thread} - {message}\n")
}

fn html(status: StatusCode, text: &str) -> Response {
    (
        status,
        [("content-type", "text/html")],
        format!("<html><head><title>{text}</title></head><body><h1>{text}</h1></body></html>"),
    )
        .into_response()
}

async fn upload(
    State(state): State<AppState>,
    axum::extract::Path(kind): axum::extract::Path<String>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    {
        let mut shared = state.shared.lock().unwrap();
        if !authorized(&shared, &headers) {
            shared.refused += 1;
            return html(StatusCode::UNAUTHORIZED, "401 Unauthorized");
        }
        if let Some(failure) = shared.upload_failures.pop_front() {
            return match failure {
                UploadFailure::ServerError => html(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "500 Internal Server Error",
                ),
                UploadFailure::Html => html(StatusCode::OK, "Polarion login"),
            };
        }
    }
    if kind != "xunit" && kind != "testcase" {
        return html(StatusCode::NOT_FOUND, "404 Not Found");
    }
    let mut file = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        if field.name() == Some("file") {
            let name = field.file_name().unwrap_or("file.xml").to_string();
            let bytes = field.bytes().await.unwrap_or_default();
            file = Some((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    let Some((name, xml)) = file else {
        return (
            StatusCode::BAD_REQUEST,
            json!({"error-message": "no file part"}).to_string(),
        )
            .into_response();
    };
    let mut shared = state.shared.lock().unwrap();
    shared.next_job += 1;
    let job = shared.next_job;
    let log = if kind == "xunit" {
        import_xunit(&mut shared, &state, job, &xml)
    } else {
        import_testcases(&mut shared, &state, job, &xml)
    };
    let fails = std::mem::take(&mut shared.fail_next_job);
    shared.jobs.insert(
        job,
        Job {
            kind: kind.clone(),
            started: Instant::now(),
            fails,
            log,
        },
    );
    shared.uploads.push(Upload {
        kind,
        file_name: name.clone(),
        xml,
        job,
    });
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"files": {name: {"job-ids": [job]}}}).to_string(),
    )
        .into_response()
}

fn import_xunit(shared: &mut Shared, state: &AppState, job: u64, xml: &str) -> String {
    let thread = "ImportXUnitThread_181";
    let lookup = property(xml, "polarion-lookup-method").unwrap_or_else(|| "id".into());
    let field = property(xml, "polarion-custom-lookup-method-field-id")
        .unwrap_or_else(|| "testCaseID".into());
    let run = property(xml, "polarion-testrun-id").unwrap_or_default();
    let mut log = line(thread, "INFO", "Red Hat Importers version 2.0.21.");
    log += &line(thread, "INFO", &format!("Processing job #{job}."));
    log += &line(
        thread,
        "INFO",
        &format!("Using Polarion lookup method: {lookup}"),
    );
    log += &line(
        thread,
        "INFO",
        &format!("Importing results to test run '{run}'."),
    );
    let _ = field;
    for block in testcase_blocks(xml) {
        let name = attribute(block, "name").unwrap_or_default();
        let Some(wanted) = property(block, "polarion-testcase-id") else {
            continue;
        };
        log += &line(thread, "INFO", &format!("Processing test case '{name}'."));
        let found: Vec<&WorkItem> = shared
            .items
            .iter()
            .filter(|item| match lookup.as_str() {
                "name" => item.title == wanted,
                "custom" => item.custom == wanted,
                _ => item.id == wanted,
            })
            .collect();
        match found.as_slice() {
            [item] => {
                log += &line(
                    thread,
                    "INFO",
                    &format!("Work item: '{wanted}' ({})", item.id),
                )
            }
            [] => {
                log += &line(
                    thread,
                    "WARN",
                    &format!("Unable to find work item for '{wanted}'."),
                )
            }
            _ => {
                log += &line(
                    thread,
                    "WARN",
                    &format!("Unable to find *unique* work item for '{wanted}'."),
                )
            }
        }
    }
    log += &line(
        thread,
        "INFO",
        &format!(
            "Polarion results published to: {}/#/project/{}/testrun?id={run}",
            state.base, state.project
        ),
    );
    log += &line(
        thread,
        "INFO",
        "Ending import of XUnit results to Polarion.",
    );
    log
}

fn import_testcases(shared: &mut Shared, state: &AppState, job: u64, xml: &str) -> String {
    let thread = "ImportTestcaseThread_1985";
    let lookup = property(xml, "lookup-method").unwrap_or_else(|| "id".into());
    let dry_run = property(xml, "dry-run").as_deref() == Some("true");
    let mut log = line(thread, "INFO", "Red Hat Importers version 2.0.21.");
    log += &line(thread, "INFO", &format!("Processing job #{job}."));
    log += &line(
        thread,
        "INFO",
        &format!("Using Polarion lookup method: {lookup}"),
    );
    for block in testcase_blocks(xml) {
        let title = element_text(block, "title").unwrap_or_default();
        let id = block.split('>').next().and_then(|tag| attribute(tag, "id"));
        let custom = block
            .find("<custom-field id=\"testCaseID\"")
            .and_then(|start| attribute(&block[start..], "content"))
            .unwrap_or_default();
        let matches: Vec<usize> = shared
            .items
            .iter()
            .enumerate()
            .filter(|(_, item)| match lookup.as_str() {
                "name" => item.title == title,
                "custom" => !custom.is_empty() && item.custom == custom,
                _ => id.as_deref() == Some(item.id.as_str()),
            })
            .map(|(index, _)| index)
            .collect();
        match matches.as_slice() {
            [index] => {
                let item = &mut shared.items[*index];
                if !dry_run {
                    item.title = title.clone();
                }
                log += &line(
                    thread,
                    "INFO",
                    &format!("Updated test case '{title}' ({}/{custom}).", item.id),
                );
            }
            [] => {
                shared.next_item += 1;
                let new_id = format!("{}-{}", state.project, shared.next_item);
                if !dry_run {
                    shared.items.push(WorkItem {
                        id: new_id.clone(),
                        title: title.clone(),
                        custom: custom.clone(),
                    });
                }
                log += &line(
                    thread,
                    "INFO",
                    &format!("Created test case '{title}' ({new_id}/{custom})."),
                );
            }
            _ => {
                log += &line(
                    thread,
                    "ERROR",
                    &format!("Found multiple work items with the title '{title}'."),
                )
            }
        }
    }
    log += &line(thread, "INFO", "Ending import of test cases to Polarion.");
    log
}

fn status(job: &Job) -> &'static str {
    let age = job.started.elapsed();
    if age < READY_FOR {
        "READY"
    } else if age < READY_FOR + RUNNING_FOR {
        "RUNNING"
    } else if job.fails {
        "FAILED"
    } else {
        "SUCCESS"
    }
}

/// `GET …/import/{kind}-queue` and `…/import/{kind}-log`.
async fn read(
    State(state): State<AppState>,
    axum::extract::Path(endpoint): axum::extract::Path<String>,
    headers: HeaderMap,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    if !authorized(&state.shared.lock().unwrap(), &headers) {
        return html(StatusCode::UNAUTHORIZED, "401 Unauthorized");
    }
    if let Some(kind) = endpoint.strip_suffix("-queue") {
        queue(&state, kind, &query)
    } else if endpoint.ends_with("-log") {
        log(&state, &query)
    } else {
        html(StatusCode::NOT_FOUND, "404 Not Found")
    }
}

fn queue(state: &AppState, kind: &str, query: &BTreeMap<String, String>) -> Response {
    let shared = state.shared.lock().unwrap();
    let wanted: Vec<u64> = query
        .get("jobIds")
        .map(|ids| ids.split(',').filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default();
    let jobs: Vec<(u64, &Job)> = shared
        .jobs
        .iter()
        .filter(|(id, job)| job.kind == kind && (wanted.is_empty() || wanted.contains(id)))
        .map(|(id, job)| (*id, job))
        .collect();
    // One job per page, so clients must follow the pages.
    let pages = jobs.len().max(1);
    let page: usize = query
        .get("currentPage")
        .and_then(|page| page.parse().ok())
        .unwrap_or(1)
        .clamp(1, pages);
    let shown: Vec<serde_json::Value> = jobs
        .iter()
        .skip(page - 1)
        .take(1)
        .map(|(id, job)| {
            json!({"id": id, "status": status(job), "logstashURL": format!("{}/import/{kind}-log?jobId={id}", state.base), "jobType": kind})
        })
        .collect();
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"jobsPerPage": 1, "maxPages": pages, "currentPage": page, "jobs": shown})
            .to_string(),
    )
        .into_response()
}

fn log(state: &AppState, query: &BTreeMap<String, String>) -> Response {
    let shared = state.shared.lock().unwrap();
    let job = query
        .get("jobId")
        .and_then(|id| id.parse::<u64>().ok())
        .and_then(|id| shared.jobs.get(&id));
    match job {
        Some(job) => (
            StatusCode::OK,
            [("content-type", "text/plain")],
            job.log.clone(),
        )
            .into_response(),
        None => html(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}

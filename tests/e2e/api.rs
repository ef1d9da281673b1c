//! The JSON API under `/api/` on the coordinator's HTTP port: the operator token as a bearer token, the
//! same answers as the CLI's `--json`, triggers and cancels, errors that name what is wrong.

use std::time::Duration;

use polarizer_e2e::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(90);

/// One API call: its status, `Location` and `WWW-Authenticate` headers, and its body (JSON when it is).
struct Answer {
    status: StatusCode,
    location: Option<String>,
    authenticate: Option<String>,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text))
    }
}

struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
}

impl Api {
    fn new(cluster: &TestCluster) -> Api {
        Api {
            base: format!("http://{}", cluster.http),
            token: read(&cluster.data_dir.join("operator-token"))
                .trim()
                .to_string(),
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            runtime: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        self.runtime.block_on(async {
            let mut request = self.client.request(method, format!("{}{path}", self.base));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.expect("the coordinator answers HTTP");
            let header = |name| {
                response
                    .headers()
                    .get(name)
                    .and_then(|value: &reqwest::header::HeaderValue| value.to_str().ok())
                    .map(str::to_string)
            };
            Answer {
                status: response.status(),
                location: header(reqwest::header::LOCATION),
                authenticate: header(reqwest::header::WWW_AUTHENTICATE),
                text: response.text().await.unwrap_or_default(),
            }
        })
    }

    fn get(&self, path: &str) -> Answer {
        self.call(reqwest::Method::GET, path, Some(&self.token), None)
    }

    fn post(&self, path: &str, body: Value) -> Answer {
        self.call(reqwest::Method::POST, path, Some(&self.token), Some(body))
    }

    /// Opens the WebSocket at `path` with the operator token (or `token`): the socket, or the status
    /// the handshake was refused with.
    fn websocket(&self, path: &str, token: Option<&str>) -> Result<Socket, StatusCode> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("{}{path}", self.base.replacen("http", "ws", 1))
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        }
        self.runtime.block_on(async {
            match tokio_tungstenite::connect_async(request).await {
                Ok((socket, _)) => Ok(socket),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    Err(StatusCode::from_u16(response.status().as_u16()).unwrap())
                }
                Err(err) => panic!("websocket {path}: {err}"),
            }
        })
    }

    /// The next message: a JSON text, or the close code; `None` when nothing came before `deadline`.
    fn next(&self, socket: &mut Socket, deadline: Duration) -> Option<Received> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        self.runtime.block_on(async {
            loop {
                let message = tokio::time::timeout(deadline, socket.next()).await.ok()??;
                match message.expect("a websocket message") {
                    Message::Text(text) => {
                        return Some(Received::Json(serde_json::from_str(&text).unwrap()))
                    }
                    Message::Close(frame) => {
                        return Some(Received::Closed(
                            frame.map(|frame| (u16::from(frame.code), frame.reason.to_string())),
                        ))
                    }
                    _ => continue,
                }
            }
        })
    }
}

impl Api {
    /// Whether a ping arrives before `deadline` (other messages are passed over).
    fn pinged(&self, socket: &mut Socket, deadline: Duration) -> bool {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        self.runtime.block_on(async {
            let waited = tokio::time::timeout(deadline, async {
                while let Some(message) = socket.next().await {
                    if let Ok(Message::Ping(_)) = message {
                        return true;
                    }
                }
                false
            });
            waited.await.unwrap_or(false)
        })
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, PartialEq)]
enum Received {
    Json(Value),
    Closed(Option<(u16, String)>),
}

#[test]
fn the_json_api_answers_as_the_cli_does_behind_the_operator_token() {
    let cluster = TestCluster::builder().agents(1).start();
    let api = Api::new(&cluster);
    let repo = git_repo(
        &cluster.path("repo"),
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "/pass:\n  test: \"true\"\n  tag: [smoke]\n/fail:\n  test: echo boom; exit 1\n",
            ),
        ],
    );

    // Without the operator token, or with another, nothing is answered; probes stay open.
    let anonymous = api.call(reqwest::Method::GET, "/api/runs", None, None);
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        anonymous.text
    );
    assert_eq!(anonymous.authenticate.as_deref(), Some("Bearer"));
    assert!(anonymous.json()["error"]
        .as_str()
        .unwrap()
        .contains("operator token"));
    let wrong = api.call(
        reqwest::Method::GET,
        "/api/agents",
        Some("not-the-token"),
        None,
    );
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{}", wrong.text);
    let refused_trigger = api.call(
        reqwest::Method::POST,
        "/api/runs",
        Some("not-the-token"),
        Some(json!({ "repo": repo, "all": true })),
    );
    assert_eq!(refused_trigger.status, StatusCode::UNAUTHORIZED);
    assert!(http_get(cluster.http, "/healthz").starts_with("HTTP/1.1 200"));

    // Bad triggers name what is wrong and start nothing.
    let unknown_field = api.post("/api/runs", json!({ "repo": repo, "colour": "red" }));
    assert_eq!(
        unknown_field.status,
        StatusCode::BAD_REQUEST,
        "{}",
        unknown_field.text
    );
    assert!(unknown_field.json()["error"]
        .as_str()
        .unwrap()
        .contains("colour"));
    let bad_kind = api.post("/api/runs", json!({ "repo": repo, "kind": "nightly" }));
    assert_eq!(
        bad_kind.status,
        StatusCode::BAD_REQUEST,
        "{}",
        bad_kind.text
    );
    assert!(bad_kind.json()["error"]
        .as_str()
        .unwrap()
        .contains("nightly"));
    assert_eq!(api.get("/api/runs").json(), json!([]));

    // A trigger: 201, where the run is, and what `trigger --json` says.
    let triggered = api.post(
        "/api/runs",
        json!({ "repo": repo, "all": true, "context": ["distro=fedora-40"] }),
    );
    assert_eq!(triggered.status, StatusCode::CREATED, "{}", triggered.text);
    let run = triggered.json()["run"].as_u64().expect("a run id");
    assert_eq!(triggered.location, Some(format!("/api/runs/{run}")));
    assert_eq!(triggered.json()["tests"], 2);

    // The run as it goes, then finished: the same JSON as `runs show --json`.
    let mut seen = Value::Null;
    wait_for("the run to finish, seen through the API", DEADLINE, || {
        seen = api.get(&format!("/api/runs/{run}")).json();
        !matches!(seen["state"].as_str(), None | Some("queued" | "running"))
    });
    assert_eq!(seen["state"], "failed", "{seen:#}");
    let shown = ok_json(cluster.operator(&["runs", "show", &run.to_string(), "--json"]));
    assert_eq!(seen, shown);
    assert_eq!(api.get(&format!("/api/runs/{run}/report")).json(), shown);
    let listed = ok_json(cluster.operator(&["runs", "--json"]));
    assert_eq!(api.get("/api/runs").json(), listed);
    assert_eq!(
        api.get("/api/runs?limit=1")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad_limit = api.get("/api/runs?limit=many");
    assert_eq!(bad_limit.status, StatusCode::BAD_REQUEST);
    assert!(bad_limit.json()["error"]
        .as_str()
        .unwrap()
        .contains("limit"));

    let junit = api.get(&format!("/api/runs/{run}/report?format=junit"));
    assert_eq!(junit.status, StatusCode::OK);
    assert!(junit.text.starts_with("<?xml"), "{}", junit.text);
    assert!(junit.text.contains("/tests/fail"), "{}", junit.text);
    let pdf = api.get(&format!("/api/runs/{run}/report?format=pdf"));
    assert_eq!(pdf.status, StatusCode::BAD_REQUEST);
    assert!(pdf.json()["error"].as_str().unwrap().contains("pdf"));

    // The catalog the trigger stored, filtered as `tests list` filters.
    assert_eq!(
        api.get("/api/tests?tag=smoke").json(),
        ok_json(cluster.operator(&["tests", "list", "--tag", "smoke", "--json"]))
    );
    assert_eq!(api.get("/api/tests").json().as_array().unwrap().len(), 2);
    let bad_filter = api.get("/api/tests?colour=red");
    assert_eq!(bad_filter.status, StatusCode::BAD_REQUEST);
    assert!(bad_filter.json()["error"]
        .as_str()
        .unwrap()
        .contains("colour"));
    assert_eq!(
        api.get("/api/features").json(),
        ok_json(cluster.operator(&["features", "--json"]))
    );

    // Agents, triggers and platforms as the CLI lists them (an agent's last_seen moves on).
    let agents = api.get("/api/agents").json();
    let cli_agents = ok_json(cluster.operator(&["agents", "--json"]));
    let without_last_seen = |mut agents: Value| {
        for agent in agents.as_array_mut().unwrap() {
            agent.as_object_mut().unwrap().remove("last_seen");
        }
        agents
    };
    assert_eq!(without_last_seen(agents), without_last_seen(cli_agents));
    assert_eq!(
        api.get("/api/triggers").json(),
        ok_json(cluster.operator(&["triggers", "--json"]))
    );
    assert_eq!(
        api.get("/api/platforms").json(),
        json!({ "pools": [], "platforms": [] })
    );

    // Events over a WebSocket: what is stored, as `tail --json` has it, then the end and a normal close.
    assert_eq!(
        api.websocket("/api/events?follow=false&since=0", None)
            .err(),
        Some(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(
        api.websocket("/api/events?test=/tests/fail", Some(&api.token))
            .err(),
        Some(StatusCode::BAD_REQUEST)
    );
    let stored_lines = cluster.operator(&["tail", "--json", "--no-follow", "--since", "0"]);
    assert!(stored_lines.status.success());
    let stored: Vec<Value> = String::from_utf8_lossy(&stored_lines.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(!stored.is_empty(), "the run left events");
    let mut socket = api
        .websocket("/api/events?follow=false&since=0", Some(&api.token))
        .unwrap();
    let mut received = Vec::new();
    loop {
        match api.next(&mut socket, DEADLINE) {
            Some(Received::Json(value)) if value.get("end").is_some() => break,
            Some(Received::Json(value)) => received.push(value),
            other => panic!("before the end: {other:?}"),
        }
    }
    assert_eq!(received, stored);
    assert_eq!(
        api.next(&mut socket, DEADLINE),
        Some(Received::Closed(Some((1000, "done".into()))))
    );

    // Live: an event a test's app emits reaches a WebSocket following the kind, as it happens (from
    // the last event seen: whether it lands before or after the follower subscribes, it arrives).
    let last_seen = stored.last().unwrap()["id"].as_u64().unwrap();
    let mut live = api
        .websocket(
            &format!("/api/events?kind=app&since={last_seen}"),
            Some(&api.token),
        )
        .unwrap();
    let sent = emit(
        &cluster.path("agent-vm-1").join("emit.sock"),
        &["--kind", "app", "--data", r#"{"state":"registered"}"#],
    );
    assert!(
        sent.status.success(),
        "{}",
        String::from_utf8_lossy(&sent.stderr)
    );
    match api.next(&mut live, DEADLINE) {
        Some(Received::Json(event)) => {
            assert_eq!(event["kind"], "app", "{event}");
            assert_eq!(event["agent"], "vm-1", "{event}");
            assert_eq!(event["data"], json!({ "state": "registered" }), "{event}");
            assert!(event["id"].as_u64().unwrap() > last_seen, "{event}");
        }
        other => panic!("no live event: {other:?}"),
    }
    // Quiet, it is pinged at the agents' heartbeat interval (200 ms here), so dead clients are found.
    assert!(
        api.pinged(&mut live, DEADLINE),
        "no ping on a quiet WebSocket"
    );

    // A run watched over a WebSocket: as it stands, each result as it lands, the end, the final run.
    let marker = cluster.path("gate-open");
    let gated = git_repo(
        &cluster.path("gated-repo"),
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                &format!(
                    "/gated:\n  test: while [ ! -e {} ]; do sleep 0.05; done\n/quick:\n  test: \"true\"\n",
                    marker.display()
                ),
            ),
        ],
    );
    let watched = api
        .post("/api/runs", json!({ "repo": gated, "all": true }))
        .json()["run"]
        .as_u64()
        .unwrap();
    assert_eq!(
        api.websocket("/api/runs/999/watch", Some(&api.token)).err(),
        Some(StatusCode::NOT_FOUND)
    );
    let mut watch = api
        .websocket(&format!("/api/runs/{watched}/watch"), Some(&api.token))
        .unwrap();
    let Some(Received::Json(first)) = api.next(&mut watch, DEADLINE) else {
        panic!("no first message");
    };
    assert_eq!(first["type"], "run", "{first}");
    assert!(
        matches!(first["run"]["state"].as_str(), Some("queued" | "running")),
        "{first}"
    );
    std::fs::write(&marker, "").unwrap();
    let mut messages = Vec::new();
    let closed = loop {
        match api.next(&mut watch, DEADLINE) {
            Some(Received::Json(message)) => messages.push(message),
            Some(Received::Closed(frame)) => break frame,
            None => panic!("the watch went quiet: {messages:#?}"),
        }
    };
    assert_eq!(closed, Some((1000, "done".into())));
    let gated_result = messages
        .iter()
        .find(|message| {
            message["type"] == "test_finished" && message["test"]["name"] == "/tests/gated"
        })
        .unwrap_or_else(|| panic!("no result for /tests/gated: {messages:#?}"));
    assert_eq!(gated_result["test"]["status"], "pass");
    assert_eq!(gated_result["run"], watched);
    let finished_at = messages
        .iter()
        .position(|message| message["type"] == "run_finished")
        .unwrap_or_else(|| panic!("no run_finished: {messages:#?}"));
    assert_eq!(messages[finished_at]["state"], "passed");
    let last = messages.last().unwrap();
    assert_eq!(last["type"], "run");
    assert_eq!(
        finished_at + 2,
        messages.len(),
        "the final run comes last: {messages:#?}"
    );
    assert_eq!(
        last["run"],
        ok_json(cluster.operator(&["runs", "show", &watched.to_string(), "--json"]))
    );

    // The OpenAPI document: open, generated from the handlers, naming every route and the bearer scheme.
    let document = api.call(reqwest::Method::GET, "/api/openapi.json", None, None);
    assert_eq!(document.status, StatusCode::OK, "{}", document.text);
    let document = document.json();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3."),
        "{document:#}"
    );
    let paths: Vec<&str> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = vec![
        "/api/agents",
        "/api/events",
        "/api/features",
        "/api/platforms",
        "/api/runs",
        "/api/runs/{run}",
        "/api/runs/{run}/cancel",
        "/api/runs/{run}/report",
        "/api/runs/{run}/watch",
        "/api/tests",
        "/api/triggers",
    ];
    expected.sort();
    let mut documented = paths.clone();
    documented.sort();
    assert_eq!(documented, expected);
    assert_eq!(
        document["components"]["securitySchemes"]["operator_token"]["scheme"],
        "bearer"
    );
    assert!(document["paths"]["/api/runs"]["post"]["requestBody"].is_object());
    let filters: Vec<&str> = document["paths"]["/api/tests"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|parameter| parameter["name"].as_str().unwrap())
        .collect();
    assert!(
        filters.contains(&"depends-on") && filters.contains(&"type"),
        "{filters:?}"
    );
    // Every documented path that is a plain GET answers (not the API's 404 for unknown paths).
    for path in &paths {
        if path.contains('{') || *path == "/api/events" {
            continue;
        }
        assert_eq!(api.get(path).status, StatusCode::OK, "{path}");
    }

    // Cancelling a finished run says how it ended; what does not exist is a 404 that says so.
    let cancelled = api.post(&format!("/api/runs/{run}/cancel"), json!({}));
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.text);
    assert_eq!(cancelled.json(), json!({ "run": run, "state": "failed" }));
    let missing = api.get("/api/runs/999");
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.json()["error"].as_str().unwrap().contains("999"));
    let cancel_missing = api.post("/api/runs/999/cancel", json!({}));
    assert_eq!(
        cancel_missing.status,
        StatusCode::NOT_FOUND,
        "{}",
        cancel_missing.text
    );
    let no_repo = api.post(
        "/api/runs",
        json!({ "repo": cluster.path("nothing-here"), "all": true }),
    );
    assert_eq!(no_repo.status, StatusCode::BAD_REQUEST, "{}", no_repo.text);
    assert!(no_repo.json()["error"]
        .as_str()
        .unwrap()
        .contains("nothing-here"));
    let nowhere = api.get("/api/nowhere");
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    assert!(nowhere.json()["error"]
        .as_str()
        .unwrap()
        .contains("/api/nowhere"));
}

/// The Python client as its README shows it, against a real coordinator and agent: a trigger, its
/// results watched as they land, the run, its JUnit report, its events, and errors with their status.
#[test]
fn the_python_client_triggers_watches_reads_and_tails() {
    let python = match python_client() {
        Ok(python) => python,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    let cluster = TestCluster::builder().agents(1).start();
    let repo = git_repo(
        &cluster.path("repo"),
        &[
            (".fmf/version", "1\n"),
            (
                "tests/main.fmf",
                "/pass:\n  test: \"true\"\n/fail:\n  test: echo boom; exit 1\n",
            ),
        ],
    );
    let script = r#"
import os
from polarizer_client import Client, PolarizerError

url = os.environ["POLARIZER_URL"]
c = Client(url, token_file=os.environ["TOKEN_FILE"])
try:
    Client(url, token="not-the-token").runs()
    raise SystemExit("a wrong token was accepted")
except PolarizerError as refused:
    assert refused.status == 401, refused

run = c.trigger(repo=os.environ["REPO"], all=True, context={"distro": "fedora-40"})
assert run.tests == 2, run
results = {result.name: result.status for result in c.watch(run.id)}
assert results == {"/tests/pass": "pass", "/tests/fail": "fail"}, results

final = c.run(run.id)
assert final.state == "failed" and final.finished, final
assert sorted(result.name for result in final.results) == ["/tests/fail", "/tests/pass"], final
assert c.runs()[0].id == run.id
assert "<testsuite" in c.report(run.id, "junit")
assert c.report(run.id)["id"] == run.id
assert c.cancel(run.id) == "failed"
assert [agent["name"] for agent in c.agents()] == ["vm-1"]
assert len(c.tests()) == 2

events = list(c.tail(run=run.id, since=0, follow=False))
assert events and all(event.run == run.id for event in events), events
assert "result" in {event.kind for event in events}, events

for call, status, words in [
    (lambda: c.run(999), 404, "999"),
    (lambda: c.trigger(repo=os.environ["REPO"], kind="nightly"), 400, "nightly"),
    (lambda: list(c.tail(test="/tests/pass")), 400, "run"),
]:
    try:
        call()
        raise SystemExit(f"no error where {status} was due")
    except PolarizerError as failed:
        assert failed.status == status and words in failed.message, failed
print("ok")
"#;
    let output = std::process::Command::new(&python)
        .args(["-c", script])
        .env("POLARIZER_URL", format!("http://{}", cluster.http))
        .env("TOKEN_FILE", cluster.data_dir.join("operator-token"))
        .env("REPO", &repo)
        .env("NO_PROXY", "*")
        .output()
        .unwrap();
    assert!(
        output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "ok",
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

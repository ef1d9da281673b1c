//! Polarion: importer files from the catalog and the runs, uploads, and every job followed to its end.
//!
//! An import is written to `DATA_DIR/polarion/` and stored before it is uploaded; the worker here uploads
//! what waits (again, with backoff, while Polarion cannot take it), polls Polarion's queue until each job
//! is SUCCESS or FAILED, then reads the job's log: the work item ids it names are kept with the tests (so
//! the next results find every test), the lookups that failed are named in `polarizer polarion jobs`.

pub mod api;
pub mod config;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use polarizer_shared::catalog::TestQuery;
use polarizer_shared::metadata::TestMetadata;
use polarizer_shared::polarion::LookupMethod;
use polarizer_shared::run::{RunDetail, RunUpdate};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::core::polarion::{lookup_id, parse_job_log, test_cases_file, xunit_imports};
use crate::daemon::clock::now_ms;
use crate::daemon::fanout::FanOut;
use crate::store::polarion::{self as imports, NewImport, OpenImport};
use crate::store::sql::sqlite_error;
use crate::store::StoreHandle;

use api::{PolarionApi, PolarionError};
use config::{PolarionConfig, UploadResults};

/// The longest wait between tries at an upload.
const BACKOFF_MAX: Duration = Duration::from_secs(600);

pub struct Polarion {
    pub config: PolarionConfig,
    store: StoreHandle,
    directory: PathBuf,
    api: Option<PolarionApi>,
    wake: Notify,
}

/// What `polarion jobs` and the log say went wrong, in one line.
fn summary(log: &crate::core::polarion::JobLog, failed_jobs: &[u64]) -> String {
    let mut parts = Vec::new();
    if !failed_jobs.is_empty() {
        let jobs: Vec<String> = failed_jobs.iter().map(u64::to_string).collect();
        parts.push(format!("job {} FAILED", jobs.join(", ")));
    }
    let list = |names: &[String]| {
        let shown: Vec<&str> = names.iter().take(10).map(String::as_str).collect();
        let more = names.len().saturating_sub(shown.len());
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    if !log.not_found.is_empty() {
        parts.push(format!(
            "{} not found: {}",
            log.not_found.len(),
            list(&log.not_found)
        ));
    }
    if !log.not_unique.is_empty() {
        parts.push(format!(
            "{} not unique: {}",
            log.not_unique.len(),
            list(&log.not_unique)
        ));
    }
    if !log.errors.is_empty() {
        parts.push(list(&log.errors));
    }
    parts.join("; ")
}

impl Polarion {
    pub fn new(
        config: PolarionConfig,
        store: StoreHandle,
        data_dir: &std::path::Path,
    ) -> Result<Arc<Polarion>, String> {
        let api = if config.url.is_empty() {
            None
        } else {
            Some(PolarionApi::new(&config.url, config.auth.clone())?)
        };
        Ok(Arc::new(Polarion {
            config,
            store,
            directory: data_dir.join("polarion"),
            api,
            wake: Notify::new(),
        }))
    }

    /// Starts the worker (uploads and jobs) and, with `upload_results = "on-finish"`, the watcher that
    /// queues each finished run's results.
    pub fn spawn(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        fanout: &FanOut,
        shutdown: CancellationToken,
    ) {
        if self.api.is_none() {
            return;
        }
        tracker.spawn(self.clone().worker(shutdown.clone()));
        if self.config.upload_results == UploadResults::OnFinish {
            let polarion = self.clone();
            let mut updates = fanout.updates.subscribe();
            tracker.spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        update = updates.recv() => match update {
                            Ok(RunUpdate::RunFinished { run, .. }) => {
                                if let Err(err) = polarion.upload_run(run, false, "on-finish").await {
                                    warn!(run, error = %err, "results not queued for Polarion");
                                }
                            }
                            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
            });
        }
    }

    /// A run, the components of its tests, and the work item ids learnt so far.
    async fn run_material(
        &self,
        run: u64,
    ) -> Result<(RunDetail, Vec<String>, BTreeMap<String, String>), String> {
        self.store
            .read(move |reader| {
                let Some(detail) = reader.run(run)? else {
                    return Ok(Err(format!("no run {run}")));
                };
                let mut components = std::collections::BTreeSet::new();
                for test in &detail.tests {
                    if let Some((metadata, _, _)) = reader.test(&test.test)? {
                        components.extend(metadata.components);
                    }
                }
                let known = reader.polarion_ids()?;
                Ok(Ok((detail, components.into_iter().collect(), known)))
            })
            .await
            .map_err(|err| err.to_string())?
    }

    /// The tests a query selects, with their metadata, and the work item ids learnt so far.
    async fn tests_material(
        &self,
        query: TestQuery,
    ) -> Result<(Vec<TestMetadata>, BTreeMap<String, String>), String> {
        self.store
            .read(move |reader| {
                let mut tests = Vec::new();
                for row in reader.tests(&query)? {
                    if let Some((metadata, _, _)) = reader.test(&row.id)? {
                        tests.push(metadata);
                    }
                }
                Ok((tests, reader.polarion_ids()?))
            })
            .await
            .map_err(|err| err.to_string())
    }

    /// A run's results as one XUnit importer file (`polarizer report N --format polarion`).
    pub async fn xunit_file(&self, run: u64, dry_run: bool) -> Result<String, String> {
        let (detail, components, known) = self.run_material(run).await?;
        let import = xunit_imports(
            &self.config.settings,
            &detail,
            &components,
            &|test| known.get(test).cloned(),
            dry_run,
            usize::MAX,
        );
        Ok(import
            .first()
            .map(polarizer_shared::polarion::xunit)
            .unwrap_or_default())
    }

    /// The tests a query selects as one TestCase importer file.
    pub async fn testcases_file(&self, query: TestQuery, dry_run: bool) -> Result<String, String> {
        let (tests, known) = self.tests_material(query).await?;
        if tests.is_empty() {
            return Err("no test matches: nothing to export".into());
        }
        Ok(test_cases_file(
            &self.config.settings,
            &tests,
            &|test| known.get(test).cloned(),
            dry_run,
        ))
    }

    fn require_url(&self) -> Result<(), String> {
        if self.api.is_none() {
            return Err("polarion.url is not set in the coordinator's config: nothing can be uploaded (write the file with -o)".into());
        }
        Ok(())
    }

    /// Writes `text` under the data dir's `polarion/`; answers its path.
    fn write_file(&self, name: &str, text: &str) -> Result<String, String> {
        std::fs::create_dir_all(&self.directory)
            .map_err(|err| format!("cannot make {}: {err}", self.directory.display()))?;
        let path = self.directory.join(name);
        std::fs::write(&path, text)
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok(path.display().to_string())
    }

    async fn store_imports(&self, imports: Vec<NewImport>) -> Result<Vec<u64>, String> {
        let ids = self
            .store
            .write(move |savepoint, path| {
                let mut ids = Vec::new();
                for import in &imports {
                    if let Some(id) =
                        imports::insert(savepoint, import).map_err(sqlite_error(path))?
                    {
                        ids.push(id);
                    }
                }
                Ok(ids)
            })
            .await
            .map_err(|err| err.to_string())?;
        self.wake.notify_one();
        Ok(ids)
    }

    /// Queues a run's results for upload (in files of at most `chunk` cases); answers the imports.
    /// `origin` `on-finish` queues them once per run.
    pub async fn upload_run(
        &self,
        run: u64,
        dry_run: bool,
        origin: &'static str,
    ) -> Result<Vec<u64>, String> {
        self.require_url()?;
        let (detail, components, known) = self.run_material(run).await?;
        let settings = &self.config.settings;
        if settings.lookup_method == LookupMethod::Id
            && !detail
                .tests
                .iter()
                .any(|test| known.contains_key(&test.test))
        {
            return Err(format!(
                "run {run}: none of its {} tests has a Polarion id yet, and polarion.lookup_method is \"id\": \
                 import the tests first (polarizer polarion export-tests)",
                detail.tests.len()
            ));
        }
        let files = xunit_imports(
            settings,
            &detail,
            &components,
            &|test| known.get(test).cloned(),
            dry_run,
            self.config.chunk,
        );
        let parts = files.len() as u32;
        let stamp = now_ms();
        let mut stored = Vec::new();
        for (index, file) in files.iter().enumerate() {
            let part = index as u32 + 1;
            let names = detail
                .tests
                .iter()
                .map(|test| {
                    (
                        lookup_id(
                            settings,
                            &test.test,
                            &test.name,
                            known.get(&test.test).map(String::as_str),
                        ),
                        test.test.clone(),
                    )
                })
                .collect();
            let path = self.write_file(
                &format!("run-{run}-{part}-of-{parts}-{stamp}.xml"),
                &polarizer_shared::polarion::xunit(file),
            )?;
            stored.push(NewImport {
                kind: "xunit",
                origin,
                run: Some(run),
                part,
                parts,
                file: path,
                dry_run,
                names,
                now_ms: stamp,
            });
        }
        let ids = self.store_imports(stored).await?;
        if !ids.is_empty() {
            info!(run, imports = ?ids, dry_run, "results queued for Polarion");
        }
        Ok(ids)
    }

    /// Queues the tests a query selects as a TestCase import; answers the import.
    pub async fn upload_tests(&self, query: TestQuery, dry_run: bool) -> Result<Vec<u64>, String> {
        self.require_url()?;
        let (tests, known) = self.tests_material(query).await?;
        if tests.is_empty() {
            return Err("no test matches: nothing to export".into());
        }
        let settings = &self.config.settings;
        let file = test_cases_file(settings, &tests, &|test| known.get(test).cloned(), dry_run);
        let mut names = BTreeMap::new();
        for test in &tests {
            // The log names a test case by its title, and by its custom id after the work item id.
            let title = if settings.lookup_method == LookupMethod::Name || test.summary.is_empty() {
                test.name.clone()
            } else {
                test.summary.clone()
            };
            names.insert(title, test.id.clone());
            names.insert(test.id.clone(), test.id.clone());
        }
        let stamp = now_ms();
        let path = self.write_file(&format!("testcases-{stamp}.xml"), &file)?;
        let ids = self
            .store_imports(vec![NewImport {
                kind: "testcase",
                origin: "operator",
                run: None,
                part: 1,
                parts: 1,
                file: path,
                dry_run,
                names,
                now_ms: stamp,
            }])
            .await?;
        info!(imports = ?ids, tests = tests.len(), dry_run, "test cases queued for Polarion");
        Ok(ids)
    }

    /// Uploads what waits and follows what was uploaded, until shutdown.
    async fn worker(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let open = self
                .store
                .read(|reader| reader.open_imports())
                .await
                .unwrap_or_else(|err| {
                    warn!(error = %err, "cannot read the Polarion imports");
                    Vec::new()
                });
            let mut next = self.config.poll_interval;
            for import in open {
                let now = now_ms();
                if import.next_try_ms > now {
                    next = next.min(Duration::from_millis((import.next_try_ms - now) as u64));
                    continue;
                }
                if let Err(err) = self.advance(import).await {
                    warn!(error = %err, "cannot store a Polarion import's progress");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(next) => {}
            }
        }
    }

    /// Stores an import's state and message, and when it is looked at again.
    async fn set_state(
        &self,
        id: u64,
        state: String,
        message: String,
        next_try_ms: i64,
        now: i64,
    ) -> Result<(), crate::store::sql::StoreError> {
        self.store
            .write(move |savepoint, path| {
                imports::set_state(savepoint, id, &state, &message, next_try_ms, now)
                    .map_err(sqlite_error(path))
            })
            .await
    }

    /// One step of an import: its upload, or a look at its jobs.
    async fn advance(&self, import: OpenImport) -> Result<(), crate::store::sql::StoreError> {
        let Some(api) = &self.api else { return Ok(()) };
        let id = import.id;
        let now = now_ms();
        if import.state == "waiting" {
            let name = std::path::Path::new(&import.file)
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_else(|| "import.xml".into());
            let file = match std::fs::read(&import.file) {
                Ok(file) => file,
                Err(err) => {
                    let message = format!("the file {} is gone: {err}", import.file);
                    return self
                        .set_state(id, "failed".to_string(), message, 0, now)
                        .await;
                }
            };
            return match api.upload(&import.kind, &name, file).await {
                Ok(jobs) => {
                    info!(import = id, jobs = ?jobs, "uploaded to Polarion");
                    let next = now + self.config.poll_interval.as_millis() as i64;
                    self.store
                        .write(move |savepoint, path| {
                            imports::uploaded(savepoint, id, &jobs, now)
                                .map_err(sqlite_error(path))?;
                            imports::set_state(savepoint, id, "queued", "", next, now)
                                .map_err(sqlite_error(path))
                        })
                        .await
                }
                Err(PolarionError::Refused(message)) => {
                    warn!(import = id, error = %message, "Polarion refused an import");
                    self.set_state(id, "failed".to_string(), message, 0, now)
                        .await
                }
                Err(PolarionError::Retry(message)) => {
                    let wait = Duration::from_secs(1u64 << import.tries.min(10)).min(BACKOFF_MAX);
                    warn!(import = id, error = %message, retry_in_s = wait.as_secs(), "upload to Polarion failed");
                    let next = now + wait.as_millis() as i64;
                    self.store
                        .write(move |savepoint, path| {
                            imports::upload_failed(savepoint, id, &message, next, now)
                                .map_err(sqlite_error(path))
                        })
                        .await
                }
            };
        }
        let next = now + self.config.poll_interval.as_millis() as i64;
        let jobs = match api.queue(&import.kind, &import.job_ids).await {
            Ok(jobs) => jobs,
            Err(err) => {
                let message = format!("cannot follow jobs: {err}");
                let state = import.state.clone();
                return self.set_state(id, state, message, next, now).await;
            }
        };
        let done = |status: &str| status == "SUCCESS" || status == "FAILED";
        let all_done = import.job_ids.iter().all(|job| {
            jobs.iter()
                .any(|seen| seen.id == *job && done(&seen.status))
        });
        if !all_done {
            let running = jobs.iter().any(|job| job.status == "RUNNING");
            let waited = now - import.uploaded_ms.unwrap_or(now);
            let message = if waited > self.config.poll_timeout.as_millis() as i64 {
                format!(
                    "still in Polarion's queue after {} s (followed until it ends)",
                    waited / 1000
                )
            } else {
                String::new()
            };
            let state = if running {
                "running"
            } else {
                import.state.as_str()
            }
            .to_string();
            return self.set_state(id, state, message, next, now).await;
        }
        let failed_jobs: Vec<u64> = jobs
            .iter()
            .filter(|job| job.status == "FAILED")
            .map(|job| job.id)
            .collect();
        let mut log = crate::core::polarion::JobLog::default();
        for job in &import.job_ids {
            match api.log(&import.kind, *job).await {
                Ok(text) => {
                    let parsed = parse_job_log(&text);
                    log.work_items.extend(parsed.work_items);
                    log.not_found.extend(parsed.not_found);
                    log.not_unique.extend(parsed.not_unique);
                    log.errors.extend(parsed.errors);
                    if !parsed.testrun_url.is_empty() {
                        log.testrun_url = parsed.testrun_url;
                    }
                }
                Err(err) => log
                    .errors
                    .push(format!("the log of job {job} could not be read: {err}")),
            }
        }
        let learnt: Vec<(String, String)> = log
            .work_items
            .iter()
            .filter_map(|(name, work_item, custom)| {
                let test = import
                    .names
                    .get(name)
                    .or_else(|| import.names.get(custom))?;
                Some((test.clone(), work_item.clone()))
            })
            .collect();
        let state = if failed_jobs.is_empty() {
            "success"
        } else {
            "failed"
        };
        let message = summary(&log, &failed_jobs);
        info!(
            import = id,
            state,
            learnt = learnt.len(),
            not_found = log.not_found.len(),
            "Polarion import ended"
        );
        let url = log.testrun_url.clone();
        self.store
            .write(move |savepoint, path| {
                imports::finished(savepoint, id, state, &message, &url, &learnt, now)
                    .map_err(sqlite_error(path))
            })
            .await?;
        // A file Polarion took is not needed again; a failed one stays for a look.
        if state == "success" {
            let _ = std::fs::remove_file(&import.file);
        }
        Ok(())
    }
}

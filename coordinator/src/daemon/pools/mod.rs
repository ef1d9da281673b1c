//! Pools of platforms made on demand: what `core::pools` decides, carried out. Each platform is a row in
//! the store from the moment it is decided until it is destroyed, and a task makes it: a one-time
//! enrollment token for its name, the provisioner's create, then waiting (within `boot_timeout`) for its
//! agent to join; a try that fails is destroyed and tried again (`launch_retries`), and when every try
//! fails the suite it was made for loses an attempt as an infrastructure error. After its suite a
//! platform is destroyed (`reuse = "never"`) or cleaned and kept (`reuse = "clean"`). Platforms a
//! previous coordinator process left (it stopped or crashed mid-create or mid-suite) are destroyed at
//! start; a stopping coordinator destroys its own.

pub mod config;
mod images;
pub mod provision;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polarizer_shared::facts::AgentFacts;
use polarizer_shared::platforms::{PlatformRecord, PlatformState, PoolRecord};
use polarizer_shared::run::SuiteRef;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::core::pools::{PoolAction, PoolView};
use crate::daemon::clock::now_ms;
use crate::store::runs::Effect;
use crate::store::{platforms, runs, StoreError, StoreHandle};
use config::{PoolConfig, Reuse};
use provision::{Enrollment, Provisioner};

struct Pool {
    config: PoolConfig,
    /// What its platforms are, for placement.
    offers: AgentFacts,
    provisioner: Provisioner,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct PoolMetrics {
    pub created: AtomicU64,
    pub destroyed: AtomicU64,
    pub failures: AtomicU64,
    /// Images built from suites' Containerfiles (an image of the same content is reused).
    pub images_built: AtomicU64,
}

/// Where new platforms' agents join, and what the pools do with what they change.
pub struct PoolsSetup {
    pub pools: Vec<PoolConfig>,
    pub store: StoreHandle,
    /// The coordinator's gossip address: every platform's agent joins there.
    pub join: SocketAddr,
    /// Its gossip cluster and interval, which the platforms' agents use too.
    pub cluster: String,
    pub gossip_interval: Duration,
    pub ca: PathBuf,
    pub data_dir: PathBuf,
    /// Attempts per suite (a platform that could not be made costs one).
    pub attempts: u32,
    /// Publishes what a store write changed (a suite requeued or given up) and wakes the scheduler.
    pub publish: Box<dyn Fn(Vec<Effect>) + Send + Sync>,
    /// Under `--enroll approve`: a platform's agent is the coordinator's own making, approved as it
    /// enrolls.
    pub approve_own: bool,
}

pub struct Pools {
    pools: Vec<Pool>,
    platforms: Mutex<BTreeMap<String, PlatformRecord>>,
    /// Per queued suite, the pools that could not make a platform for it.
    failed: Mutex<HashMap<u64, Vec<String>>>,
    /// A platform changed state (its agent joined, it was destroyed).
    changed: Notify,
    store: StoreHandle,
    join: SocketAddr,
    cluster: String,
    gossip_interval: Duration,
    ca: PathBuf,
    /// `DATA_DIR/platforms`: a directory per platform (token, logs, a local agent's state).
    root: PathBuf,
    attempts: u32,
    publish: Box<dyn Fn(Vec<Effect>) + Send + Sync>,
    tasks: TaskTracker,
    pub metrics: PoolMetrics,
    data_dir: PathBuf,
    approve_own: bool,
    /// One image build at a time (two suites of one Containerfile share the first's build).
    builds: tokio::sync::Mutex<()>,
}

impl Pools {
    pub fn new(setup: PoolsSetup) -> Pools {
        let arch = std::env::consts::ARCH.to_string();
        let pools = setup
            .pools
            .into_iter()
            .map(|config| {
                let offers = AgentFacts {
                    name: config.name.clone(),
                    hostname: String::new(),
                    os: "linux".into(),
                    distro_id: String::new(),
                    distro_version: String::new(),
                    kernel: String::new(),
                    arch: arch.clone(),
                    cpus: 0,
                    memory_bytes: 0,
                    agent_version: String::new(),
                    labels: config.labels.clone(),
                    platform: config.platform,
                };
                Pool {
                    provisioner: Provisioner::new(config.provisioner.clone()),
                    offers,
                    config,
                }
            })
            .collect();
        Pools {
            pools,
            platforms: Mutex::new(BTreeMap::new()),
            failed: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            store: setup.store,
            join: setup.join,
            cluster: setup.cluster,
            gossip_interval: setup.gossip_interval,
            ca: setup.ca,
            root: setup.data_dir.join("platforms"),
            attempts: setup.attempts,
            publish: setup.publish,
            tasks: TaskTracker::new(),
            metrics: PoolMetrics::default(),
            data_dir: setup.data_dir.clone(),
            approve_own: setup.approve_own,
            builds: tokio::sync::Mutex::new(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pools.is_empty() && self.platforms.lock().expect("platforms lock").is_empty()
    }

    /// The pools, for the planner.
    pub fn views(&self) -> Vec<PoolView<'_>> {
        self.pools
            .iter()
            .map(|pool| PoolView {
                name: &pool.config.name,
                offers: &pool.offers,
                max: pool.config.max,
                min_ready: pool.config.min_ready,
                builds_images: matches!(
                    pool.config.provisioner,
                    config::ProvisionerConfig::Podman { .. }
                ),
            })
            .collect()
    }

    /// What each pool's platforms are, once per platform it may make: the platforms a run's parallel
    /// suites may spread over, beside the agents in the inventory.
    pub fn slot_facts(&self) -> Vec<AgentFacts> {
        self.pools
            .iter()
            .flat_map(|pool| {
                std::iter::repeat_n(pool.offers.clone(), pool.config.max.min(64) as usize)
            })
            .collect()
    }

    /// Every platform as it is now.
    pub fn snapshot(&self) -> Vec<PlatformRecord> {
        self.platforms
            .lock()
            .expect("platforms lock")
            .values()
            .cloned()
            .collect()
    }

    pub fn failed_pools(&self) -> HashMap<u64, Vec<String>> {
        self.failed.lock().expect("failed lock").clone()
    }

    /// The pools and their platforms, for `polarizer platforms`.
    pub fn list(&self) -> (Vec<PoolRecord>, Vec<PlatformRecord>) {
        let pools = self
            .pools
            .iter()
            .map(|pool| PoolRecord {
                name: pool.config.name.clone(),
                provisioner: pool.config.provisioner.kind().into(),
                max: pool.config.max,
                min_ready: pool.config.min_ready,
                reuse: match pool.config.reuse {
                    Reuse::Never => "never".into(),
                    Reuse::Clean(_) => "clean".into(),
                },
            })
            .collect();
        (pools, self.snapshot())
    }

    fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|pool| pool.config.name == name)
    }

    fn get(&self, name: &str) -> Option<PlatformRecord> {
        self.platforms
            .lock()
            .expect("platforms lock")
            .get(name)
            .cloned()
    }

    /// Changes a platform in memory, then writes it. `None` when there is no such platform.
    async fn update(
        &self,
        name: &str,
        change: impl FnOnce(&mut PlatformRecord),
    ) -> Option<PlatformRecord> {
        let record = {
            let mut platforms = self.platforms.lock().expect("platforms lock");
            let record = platforms.get_mut(name)?;
            let before = record.state;
            change(record);
            if record.state != before {
                record.state_ms = now_ms();
            }
            record.clone()
        };
        let row = record.clone();
        if let Err(err) = self
            .store
            .write(move |savepoint, path| {
                platforms::update(savepoint, &row).map_err(crate::store::sql::sqlite_error(path))
            })
            .await
        {
            warn!(platform = name, error = %err, "cannot store a platform's state");
        }
        self.changed.notify_waiters();
        Some(record)
    }

    /// Carries out the planner's actions.
    pub async fn apply(self: &Arc<Self>, actions: Vec<PoolAction>) -> Result<(), StoreError> {
        for action in actions {
            match action {
                PoolAction::Create {
                    pool,
                    for_suite,
                    containerfile,
                } => self.create(&pool, for_suite, containerfile).await?,
                PoolAction::Joined { platform } => {
                    self.update(&platform, |record| {
                        if record.state == PlatformState::Creating {
                            record.state = PlatformState::Ready;
                        }
                    })
                    .await;
                    info!(platform, "platform ready: made, and its agent joined");
                    (self.publish)(Vec::new());
                }
                PoolAction::Release { platform } => {
                    // Claimed now, under the lock: a later step never releases it twice.
                    if let Some(cleaning) = self.begin_release(&platform) {
                        let pools = self.clone();
                        self.tasks.spawn(async move {
                            if cleaning {
                                pools.clean(&platform).await
                            } else {
                                info!(platform, "destroying the platform: its suite is done, or nobody needs it");
                                pools.destroy(&platform).await
                            }
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The scheduler leased `suite` to `agent`: if that agent is a platform, it is spent on it.
    pub async fn leased(&self, agent: &str, suite: SuiteRef) {
        if self.get(agent).is_none() {
            return;
        }
        self.failed
            .lock()
            .expect("failed lock")
            .remove(&suite.suite);
        self.update(agent, |record| {
            record.state = PlatformState::Leased;
            record.suite = Some(suite);
        })
        .await;
    }

    async fn create(
        self: &Arc<Self>,
        pool: &str,
        for_suite: Option<SuiteRef>,
        containerfile: String,
    ) -> Result<(), StoreError> {
        let pool_name = pool.to_string();
        let record = self
            .store
            .write(move |savepoint, path| {
                platforms::insert(savepoint, &pool_name, for_suite, &containerfile, now_ms())
                    .map_err(crate::store::sql::sqlite_error(path))
            })
            .await?;
        info!(platform = %record.name, pool, suite = ?for_suite.map(|suite| suite.suite), "making a platform");
        let name = record.name.clone();
        self.platforms
            .lock()
            .expect("platforms lock")
            .insert(name.clone(), record);
        self.metrics.created.fetch_add(1, Ordering::Relaxed);
        let pools = self.clone();
        let pool = pool.to_string();
        self.tasks
            .spawn(async move { pools.make(&name, &pool).await });
        Ok(())
    }

    /// Makes a platform: tries until its agent joins, or every try failed.
    async fn make(self: Arc<Self>, name: &str, pool_name: &str) {
        let Some(pool) = self.pool(pool_name) else {
            return;
        };
        let config = &pool.config;
        let work_dir = self.root.join(name);
        let mut error = std::fs::create_dir_all(&work_dir)
            .map_err(|err| err.to_string())
            .and_then(|()| {
                polarizer_transport::state_files::ensure_private_dir(&work_dir)
                    .map_err(|err| err.to_string())
            })
            .map_err(|err| format!("cannot create {}: {err}", work_dir.display()))
            .err();
        if error.is_none() {
            for attempt in 1..=config.launch_retries {
                match self.try_make(pool, name, attempt, &work_dir).await {
                    Ok(()) => return,
                    Err(None) => return, // destroyed meanwhile
                    Err(Some(try_error)) => error = Some(try_error),
                }
            }
        }
        let error = error.unwrap_or_default();
        self.metrics.failures.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "pool {pool_name} could not make platform {name} ({} tries): {error}",
            config.launch_retries
        );
        warn!(platform = name, pool = pool_name, error = %error, "platform failed");
        let Some(record) = self.get(name) else {
            return;
        };
        // The suite's attempt is settled first: while this platform still counts as being made for
        // it, no other is made for the attempt that just failed.
        let mut effects = Vec::new();
        if let Some(suite) = record.suite {
            self.failed
                .lock()
                .expect("failed lock")
                .entry(suite.suite)
                .or_default()
                .push(pool_name.to_string());
            let attempts = self.attempts;
            let pool = pool_name.to_string();
            match self
                .store
                .write(move |savepoint, path| {
                    runs::platform_failed(
                        savepoint,
                        path,
                        suite,
                        &pool,
                        &message,
                        attempts,
                        now_ms(),
                    )
                })
                .await
            {
                Ok(changed) => effects = changed,
                Err(err) => warn!(error = %err, "cannot record a platform failure"),
            }
        }
        self.update(name, |record| {
            record.state = PlatformState::Failed;
            record.error = error.clone();
        })
        .await;
        (self.publish)(effects);
    }

    /// One try: a token, the provisioner's create, the agent joining within `boot_timeout`. A failed
    /// try is destroyed. `Err(None)`: the platform was destroyed meanwhile.
    async fn try_make(
        &self,
        pool: &Pool,
        name: &str,
        attempt: u32,
        work_dir: &std::path::Path,
    ) -> Result<(), Option<String>> {
        let config = &pool.config;
        self.update(name, |record| record.tries = attempt)
            .await
            .filter(|record| record.state == PlatformState::Creating)
            .ok_or(None)?;
        if attempt > 1 {
            // What an earlier try's agent may have enrolled is void: this try enrolls afresh.
            let agent = name.to_string();
            let _ = self
                .store
                .write(move |savepoint, path| {
                    platforms::forget_agent(savepoint, &agent)
                        .map_err(crate::store::sql::sqlite_error(path))
                })
                .await;
        }
        let deadline = tokio::time::Instant::now() + config.boot_timeout;
        let record = self.get(name).ok_or(None)?;
        // A platform made for one suite's Containerfile: its image first (built once per content),
        // and a label that binds its agent to that suite.
        let mut labels = config.labels.clone();
        let image = match (&record.image, record.suite) {
            (containerfile, Some(suite)) if !containerfile.is_empty() => {
                labels.insert(
                    crate::core::placement::MADE_FOR_LABEL.into(),
                    suite.suite.to_string(),
                );
                self.image_for(suite, containerfile, config.boot_timeout)
                    .await
                    .map(Some)
            }
            _ => Ok(None),
        };
        let made = match (image, crate::daemon::local_agents::agent_binary()) {
            (Err(err), _) => Err(err),
            (_, Err(err)) => Err(err.to_string()),
            (Ok(image), Ok(agent_binary)) => match self.enroll(name, config, work_dir).await {
                Err(err) => Err(err),
                Ok(token_file) => {
                    let enrollment = Enrollment {
                        name: name.to_string(),
                        pool: config.name.clone(),
                        join: self.join,
                        cluster: self.cluster.clone(),
                        gossip_interval_ms: self.gossip_interval.as_millis() as u64,
                        ca: self.ca.clone(),
                        token_file,
                        labels,
                        platform: config.platform,
                        agent_binary,
                        work_dir: work_dir.to_path_buf(),
                        image,
                    };
                    pool.provisioner
                        .create(&enrollment, config.boot_timeout)
                        .await
                }
            },
        };
        let error = match made {
            Ok(made) => {
                let (id, address) = (made.id.clone(), made.address.clone());
                let made_record = self
                    .update(name, |record| {
                        record.provider_id = id;
                        record.address = address;
                    })
                    .await;
                // Destroyed (by an operator, or a stopping coordinator) while the provisioner made it:
                // what it made must not outlive it.
                if made_record
                    .as_ref()
                    .is_none_or(|record| record.state != PlatformState::Creating)
                {
                    let leftover = PlatformRecord {
                        provider_id: made.id,
                        address: made.address,
                        ..record
                    };
                    if let Err(err) = pool.provisioner.destroy(&leftover).await {
                        warn!(platform = name, error = %err, "cannot destroy a platform made after it was destroyed");
                    }
                    return Err(None);
                }
                // Made: once its agent is online too, the scheduler's next step finds it ready.
                (self.publish)(Vec::new());
                if self.joined(name, deadline).await {
                    let _ = std::fs::remove_file(work_dir.join("agent-token"));
                    return Ok(());
                }
                format!(
                    "its agent did not join within boot_timeout ({} s)",
                    config.boot_timeout.as_secs()
                )
            }
            Err(err) => err,
        };
        warn!(platform = name, pool = %config.name, attempt, error = %error, "a try at making a platform failed");
        let record = self
            .update(name, |record| record.error = error.clone())
            .await
            .filter(|record| record.state == PlatformState::Creating)
            .ok_or(None)?;
        if let Err(err) = pool.provisioner.destroy(&record).await {
            warn!(platform = name, error = %err, "cannot destroy a failed try");
        }
        Err(Some(error))
    }

    /// The image built from a suite's Containerfile at its run's commit; built once per content (the
    /// git tree of the file's directory), reused after.
    async fn image_for(
        &self,
        suite: SuiteRef,
        containerfile: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        let source = self
            .store
            .read(move |reader| reader.run_source(suite.run))
            .await
            .map_err(|err| err.to_string())?
            .ok_or_else(|| format!("run {} is gone", suite.run))?;
        let (repo, commit, tree_path) = source;
        let in_repo = if tree_path.is_empty() {
            containerfile.to_string()
        } else {
            format!("{}/{containerfile}", tree_path.trim_matches('/'))
        };
        let _building = self.builds.lock().await;
        let (tag, built) = images::build(
            &crate::daemon::shipping::cached_repository(&self.data_dir, &repo),
            &repo,
            &commit,
            &in_repo,
            &self.root,
            timeout,
        )
        .await?;
        if built {
            self.metrics.images_built.fetch_add(1, Ordering::Relaxed);
            info!(image = %tag, containerfile = %in_repo, "image built from a suite's Containerfile");
        }
        Ok(tag)
    }

    /// A one-time token for the platform's name, in a 0600 file its agent (or ansible) reads.
    async fn enroll(
        &self,
        name: &str,
        config: &PoolConfig,
        work_dir: &std::path::Path,
    ) -> Result<PathBuf, String> {
        let ttl = config.boot_timeout + Duration::from_secs(60);
        let issued = crate::daemon::host_tokens::issue(
            &self.store,
            name.to_string(),
            ttl.as_millis() as u64,
        )
        .await
        .map_err(|err| format!("cannot make an enrollment token: {err}"))?;
        let path = work_dir.join("agent-token");
        polarizer_transport::state_files::write_private(&path, issued.token.as_bytes())
            .map_err(|err| format!("cannot write {}: {err}", path.display()))?;
        Ok(path)
    }

    /// Waits until the platform's agent joined (it left `creating`); false at the deadline or when the
    /// platform is gone.
    async fn joined(&self, name: &str, deadline: tokio::time::Instant) -> bool {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.get(name).map(|record| record.state) {
                None => return false,
                Some(PlatformState::Creating) => {}
                Some(PlatformState::Destroying | PlatformState::Failed) => return false,
                Some(_) => return true,
            }
            let approve_in = tokio::time::sleep(Duration::from_millis(250));
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return false,
                // Its agent waits as pending until approved: it reconnects and is admitted.
                () = approve_in, if self.approve_own => {
                    if self.store.approve(name).await.is_ok() {
                        info!(platform = name, "platform's agent approved: the pool made it");
                    }
                }
            }
        }
    }

    /// Its suite ended: destroyed, or cleaned and back in the pool.
    /// Moves a platform the planner released to `cleaning` (its suite is done and its pool reuses
    /// platforms) or `destroying`; `Some(true)` to clean, `Some(false)` to destroy, `None` when it is
    /// no longer there to release.
    fn begin_release(&self, name: &str) -> Option<bool> {
        let mut platforms = self.platforms.lock().expect("platforms lock");
        let record = platforms.get_mut(name)?;
        let reuses = self
            .pool(&record.pool)
            .is_some_and(|pool| matches!(pool.config.reuse, Reuse::Clean(_)));
        let cleaning = match record.state {
            PlatformState::Leased => reuses,
            PlatformState::Creating | PlatformState::Ready => false,
            PlatformState::Cleaning | PlatformState::Destroying | PlatformState::Failed => {
                return None
            }
        };
        record.state = if cleaning {
            PlatformState::Cleaning
        } else {
            PlatformState::Destroying
        };
        record.state_ms = now_ms();
        Some(cleaning)
    }

    /// After its suite: the pool's clean command, then back in the pool (destroyed if it fails).
    async fn clean(self: Arc<Self>, name: &str) {
        let Some(record) = self.get(name) else {
            return;
        };
        let Some((pool, Reuse::Clean(command))) = self
            .pool(&record.pool)
            .map(|pool| (pool, &pool.config.reuse))
        else {
            return self.destroy(name).await;
        };
        // `cleaning`, set when the release was claimed, stored now.
        self.update(name, |_| {}).await;
        let work_dir = self.root.join(name);
        match pool
            .provisioner
            .clean(&record, command, &work_dir, pool.config.boot_timeout)
            .await
        {
            Ok(()) => {
                info!(platform = name, "platform cleaned and back in its pool");
                self.update(name, |record| {
                    if record.state == PlatformState::Cleaning {
                        record.state = PlatformState::Ready;
                        record.suite = None;
                    }
                })
                .await;
                (self.publish)(Vec::new());
            }
            Err(err) => {
                warn!(platform = name, error = %err, "cleaning failed: destroying the platform");
                self.update(name, |record| record.error = err).await;
                self.destroy(name).await;
            }
        }
    }

    /// Destroys a platform and forgets it (and its agent). One that cannot be destroyed stays,
    /// failed, with the error.
    async fn destroy(self: &Arc<Self>, name: &str) {
        let Some(record) = self
            .update(name, |record| record.state = PlatformState::Destroying)
            .await
        else {
            return;
        };
        self.changed.notify_waiters();
        let destroyed = match self.pool(&record.pool) {
            Some(pool) => pool.provisioner.destroy(&record).await,
            None => Err(format!(
                "its pool {} is no longer configured: destroy it by hand, then `polarizer platforms destroy {name}` forgets it",
                record.pool
            )),
        };
        match destroyed {
            Ok(()) => {
                self.platforms.lock().expect("platforms lock").remove(name);
                let platform = name.to_string();
                if let Err(err) = self
                    .store
                    .write(move |savepoint, path| {
                        platforms::remove(savepoint, &platform)
                            .map_err(crate::store::sql::sqlite_error(path))
                    })
                    .await
                {
                    warn!(platform = name, error = %err, "cannot forget a destroyed platform");
                }
                let _ = std::fs::remove_dir_all(self.root.join(name));
                self.metrics.destroyed.fetch_add(1, Ordering::Relaxed);
                self.changed.notify_waiters();
                info!(platform = name, "platform destroyed");
            }
            Err(err) => {
                warn!(platform = name, error = %err, "cannot destroy a platform");
                self.update(name, |record| {
                    record.state = PlatformState::Failed;
                    record.error = err;
                })
                .await;
            }
        }
        (self.publish)(Vec::new());
    }

    /// `polarizer platforms destroy NAME`. A failed platform whose pool is gone is only forgotten.
    pub fn destroy_now(self: &Arc<Self>, name: &str) -> Result<(), String> {
        let Some(record) = self.get(name) else {
            return Err(format!("no platform named {name:?}"));
        };
        if record.state == PlatformState::Destroying {
            return Ok(());
        }
        if record.state == PlatformState::Failed && self.pool(&record.pool).is_none() {
            self.platforms.lock().expect("platforms lock").remove(name);
            let store = self.store.clone();
            let platform = name.to_string();
            self.tasks.spawn(async move {
                let _ = store
                    .write(move |savepoint, path| {
                        platforms::remove(savepoint, &platform)
                            .map_err(crate::store::sql::sqlite_error(path))
                    })
                    .await;
            });
            return Ok(());
        }
        let pools = self.clone();
        let name = name.to_string();
        self.tasks.spawn(async move { pools.destroy(&name).await });
        Ok(())
    }

    /// At start: every platform an earlier process left is destroyed (those that failed stay listed).
    pub async fn recover(self: &Arc<Self>) -> Result<(), StoreError> {
        let left = self.store.read(|reader| reader.platforms()).await?;
        let mut leaked = Vec::new();
        {
            let mut platforms = self.platforms.lock().expect("platforms lock");
            for record in left {
                if record.state != PlatformState::Failed {
                    leaked.push(record.name.clone());
                }
                platforms.insert(record.name.clone(), record);
            }
        }
        for name in leaked {
            warn!(platform = %name, "platform left by an earlier coordinator process: destroying it");
            let pools = self.clone();
            self.tasks.spawn(async move { pools.destroy(&name).await });
        }
        Ok(())
    }

    /// A stopping coordinator destroys its platforms (waiting at most `deadline`).
    pub async fn shutdown(self: &Arc<Self>, deadline: Duration) {
        let names: Vec<String> = self
            .snapshot()
            .into_iter()
            .filter(|record| {
                !matches!(
                    record.state,
                    PlatformState::Failed | PlatformState::Destroying
                )
            })
            .map(|record| record.name)
            .collect();
        for name in names {
            let pools = self.clone();
            self.tasks.spawn(async move { pools.destroy(&name).await });
        }
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            warn!("some platforms were not destroyed in time; the next start destroys them");
        }
    }
}

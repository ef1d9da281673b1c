//! `polarizer serve`: wires the data directory, store, QUIC server, gossip and HTTP together, prints where
//! it listens, and shuts down in two phases (stop accepting, then let sessions end before a deadline).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use polarizer_shared::membership::*;
use polarizer_transport::gossip::{advertised_addr, concrete_udp_addr};
use polarizer_transport::state_files::{read_private, secret_digest};
use polarizer_transport::{tls, Gossip, GossipConfig};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::daemon::config::ServeConfig;
use crate::daemon::fanout::FanOut;
use crate::daemon::http::HttpState;
use crate::daemon::identity::Prepare;

use crate::daemon::clock::now_ms;
use crate::daemon::context::{Context, Metrics, SchedulerHandle, Settings};
use crate::daemon::server;
use crate::daemon::sessions::Sessions;
use crate::data_dir::DataDir;
use crate::store::Store;

/// Where a started coordinator listens (ports resolved when the config asked for port 0).
#[derive(Clone, Debug)]
pub struct Listening {
    pub gossip: SocketAddr,
    pub quic: SocketAddr,
    pub http: SocketAddr,
    pub ca_fingerprint: String,
}

pub async fn run(
    config: ServeConfig,
    shutdown: CancellationToken,
    listening_tx: Option<oneshot::Sender<Listening>>,
) -> anyhow::Result<()> {
    polarizer_transport::install_crypto_provider();
    let data_dir = DataDir::new(&config.data_dir);
    let identity = data_dir.prepare()?;
    let enrollment_token_digest = secret_digest(&read_private(&data_dir.agent_token())?);
    let operator_token_digest = secret_digest(&read_private(&data_dir.operator_token())?);
    let (store, store_writer) = Store::open(&data_dir.database())?;

    let server_config = tls::server_config(identity.chain, identity.key)?;
    let endpoint = polarizer_transport::server_endpoint(server_config, config.quic)
        .with_context(|| format!("cannot listen for QUIC on {}", config.quic))?;
    let quic_listen = endpoint.local_addr()?;
    let quic_advertised = advertised_addr(quic_listen, config.advertise);

    let gossip_listen = concrete_udp_addr(config.gossip)
        .with_context(|| format!("cannot listen for gossip on {}", config.gossip))?;
    let gossip_advertised = advertised_addr(gossip_listen, config.advertise);
    let gossip = Gossip::start_cells(
        GossipConfig {
            node_id: coordinator_node_id(&quic_advertised.to_string()),
            listen_addr: gossip_listen,
            advertise_addr: gossip_advertised,
            seeds: config.join.clone(),
            cluster_id: config.cluster.clone(),
            interval: config.gossip_interval,
            advertised: vec![
                (KEY_ROLE.to_string(), ROLE_COORDINATOR.to_string()),
                (KEY_QUIC_ADDR.to_string(), quic_advertised.to_string()),
            ],
        },
        config.cells.clone(),
    )
    .await?;
    let gossip = Arc::new(gossip);

    let http_listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
    let http_addr = http_listener.local_addr()?;
    let http_tls = match &config.http_tls {
        Some((cert, key)) => {
            Some(crate::daemon::http_tls::server_config(cert, key).map_err(anyhow::Error::msg)?)
        }
        None => None,
    };
    let scheme = if http_tls.is_some() { "https" } else { "http" };
    let web_url = config.web_url.clone().unwrap_or_else(|| {
        format!(
            "{scheme}://{}",
            advertised_addr(http_addr, config.advertise)
        )
    });

    let (gossip_live_tx, gossip_live_rx) = watch::channel(BTreeSet::new());
    let fanout = Arc::new(FanOut::default());
    let scheduler = Arc::new(SchedulerHandle::default());
    let pools = Arc::new(crate::daemon::pools::Pools::new(
        crate::daemon::pools::PoolsSetup {
            pools: config.pools.clone(),
            store: store.clone(),
            join: gossip_advertised,
            cluster: config.cluster.clone(),
            gossip_interval: config.gossip_interval,
            ca: data_dir.ca_certificate(),
            data_dir: data_dir.root.clone(),
            attempts: config.runs.attempts,
            approve_own: config.enroll == crate::core::admission::EnrollMode::Approve,
            publish: {
                let fanout = fanout.clone();
                let scheduler = scheduler.clone();
                Box::new(move |effects| {
                    fanout.publish(effects);
                    scheduler.wake();
                })
            },
        },
    ));
    pools.recover().await?;
    let polarion = match config.polarion.clone() {
        Some(polarion) => Some(
            crate::daemon::polarion::Polarion::new(polarion, store.clone(), &data_dir.root)
                .map_err(anyhow::Error::msg)?,
        ),
        None => None,
    };
    let context = Context {
        store: store.clone(),
        settings: Arc::new(Settings {
            heartbeat_interval: config.heartbeat_interval,
            enroll: config.enroll,
            enrollment_token_digest: std::sync::RwLock::new(enrollment_token_digest),
            operator_token_digest,
            data_dir: data_dir.root.clone(),
            runs: config.runs.clone(),
            restart_grace_until_ms: now_ms() + config.runs.lease_grace.as_millis() as i64,
        }),
        sessions: Arc::new(Sessions::new(gossip_live_rx)),
        fanout,
        metrics: Arc::new(Metrics::default()),
        scheduler,
        shipping: Arc::new(crate::daemon::shipping::Shipping::new(
            &data_dir.root,
            config.shipping,
        )),
        pools: pools.clone(),
        polarion: polarion.clone(),
        analysis: crate::store::analysis::Analysis::shared(config.analysis.clone()),
        web: Arc::new(crate::daemon::web::Logins::new(&web_url)),
    };
    let tracker = TaskTracker::new();
    if let Some(polarion) = &polarion {
        polarion.spawn(&tracker, &context.fanout, shutdown.clone());
    }
    let sessions_shutdown = shutdown.child_token();

    tracker.spawn(watch_gossip_liveness(
        gossip.clone(),
        gossip_live_tx,
        config.gossip_interval,
        shutdown.clone(),
    ));
    tracker.spawn(crate::daemon::scheduler::run(
        context.clone(),
        shutdown.clone(),
    ));
    tracker.spawn(trim_events(
        store.clone(),
        config.event_retention,
        config.event_retention_bytes,
        shutdown.clone(),
    ));
    tracker.spawn(server::accept_loop(
        endpoint.clone(),
        context.clone(),
        sessions_shutdown.clone(),
        tracker.clone(),
    ));
    let github = match config.github.clone() {
        Some(github) => {
            let github = crate::daemon::github::Github::new(github, context.clone())
                .map_err(anyhow::Error::msg)?;
            github.spawn(&tracker, shutdown.clone());
            Some(github)
        }
        None => None,
    };
    let buses = (!config.buses.buses.is_empty()).then(|| {
        let buses = crate::daemon::bus::Buses::new(config.buses.clone(), context.clone(), &web_url);
        buses.spawn(&tracker, shutdown.clone());
        buses
    });
    tracker.spawn({
        let state = HttpState {
            store: store.clone(),
            sessions: context.sessions.clone(),
            metrics: context.metrics.clone(),
            shipping: context.shipping.clone(),
            pools: context.pools.clone(),
            github: github.clone(),
            buses: buses.clone(),
            gossip: gossip.clone(),
        };
        let api = crate::daemon::api::router(context.clone(), shutdown.clone())
            .merge(crate::daemon::web::router(context.clone()));
        let shutdown = shutdown.clone();
        async move {
            let served = match http_tls {
                Some(tls) => match crate::daemon::http_tls::TlsListener::new(
                    http_listener,
                    tls,
                    shutdown.clone(),
                ) {
                    Ok(listener) => {
                        crate::daemon::http::serve(listener, state, api, shutdown).await
                    }
                    Err(err) => Err(err),
                },
                None => crate::daemon::http::serve(http_listener, state, api, shutdown).await,
            };
            if let Err(err) = served {
                tracing::error!(error = %err, "http server failed");
            }
        }
    });

    println!("polarizer coordinator {}", env!("CARGO_PKG_VERSION"));
    println!("  data dir        {}", data_dir.root.display());
    println!(
        "  gossip          {gossip_advertised} (cluster {})",
        config.cluster
    );
    println!("  quic            {quic_advertised}");
    println!(
        "  http            {scheme}://{http_addr} (/healthz, /metrics, /api/, the web view at {web_url}{})",
        if github.is_some() {
            ", /hooks/github"
        } else {
            ""
        }
    );
    print!("{}", data_dir.secrets_summary(&identity.ca_fingerprint));
    info!(quic = %quic_advertised, gossip = %gossip_advertised, http = %http_addr, created = identity.created, "coordinator listening");
    polarizer_transport::daemon::notify_ready(&format!(
        "listening on {quic_advertised} (QUIC), {gossip_advertised} (gossip)"
    ));
    if let Some(listening_tx) = listening_tx {
        let _ = listening_tx.send(Listening {
            gossip: gossip_advertised,
            quic: quic_advertised,
            http: http_addr,
            ca_fingerprint: identity.ca_fingerprint.clone(),
        });
    }

    let local_agents = if config.local_agents > 0 {
        let names: Vec<String> = (1..=config.local_agents)
            .map(|index| format!("local-{index}"))
            .collect();
        let root = data_dir.root.join("local-agents");
        let agents = crate::daemon::local_agents::LocalAgents::start(
            &names,
            &root,
            &data_dir.root,
            gossip_advertised,
            &["local=true"],
        )?;
        println!(
            "  local agents    {} (logs in {})",
            names.join(", "),
            root.display()
        );
        Some(agents)
    } else {
        None
    };

    shutdown.cancelled().await;
    if let Some(agents) = local_agents {
        agents.stop().await;
    }
    if !pools.is_empty() {
        info!("shutting down: destroying the pools' platforms");
        pools.shutdown(Duration::from_secs(30)).await;
    }
    info!("shutting down: closing connections");
    sessions_shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not end within 5 s; closing anyway");
    }
    endpoint.close(
        polarizer_shared::protocol::close_code::SHUTTING_DOWN.into(),
        b"coordinator shutting down",
    );
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    if let Ok(gossip) = Arc::try_unwrap(gossip) {
        gossip.shutdown().await;
    }
    // Everything acknowledged is committed already; the writer commits what is left and stops.
    drop(context);
    store.shutdown();
    let _ = tokio::task::spawn_blocking(move || store_writer.join()).await;
    info!("coordinator stopped");
    Ok(())
}

/// `polarizer init`: what `serve` does on first start, without serving (for ansible and packaging).
pub fn init(data_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let data_dir =
        crate::data_dir::DataDir::new(data_dir.unwrap_or_else(crate::data_dir::default_data_dir));
    let identity = data_dir.prepare()?;
    // Run the migrations too, so the first `serve` finds a ready database.
    let (store, writer) = crate::store::Store::open(&data_dir.database())?;
    store.shutdown();
    let _ = writer.join();
    let verb = if identity.created {
        "created"
    } else {
        "exists"
    };
    println!("{verb} {}", data_dir.root.display());
    print!("{}", data_dir.secrets_summary(&identity.ca_fingerprint));
    Ok(())
}

/// `polarizer tokens create --offline`: a per-host token written straight into the data dir's
/// database, for ansible on a host where the coordinator may not run yet. Safe beside a running
/// coordinator (WAL, a busy timeout; it looks host tokens up at each hello), and as root on a data dir
/// owned by the service user (SQLite gives the -wal and -shm files it creates the database's owner).
/// The database must exist: a wrong path is an error, never a new data dir.
pub async fn create_host_token_offline(
    data_dir: Option<PathBuf>,
    name: String,
    ttl: Duration,
) -> anyhow::Result<String> {
    let data_dir =
        crate::data_dir::DataDir::new(data_dir.unwrap_or_else(crate::data_dir::default_data_dir));
    let database = data_dir.database();
    if !database.is_file() {
        anyhow::bail!(
            "no coordinator database at {}: pass the --data-dir that `polarizer init` or `polarizer serve` made",
            database.display()
        );
    }
    // Beside a coordinator that may be running: its agents stay as they are, its schema untouched.
    let (store, writer) = crate::store::Store::open_beside(&database)?;
    let issued = crate::daemon::host_tokens::issue(&store, name, ttl.as_millis() as u64).await;
    store.shutdown();
    let _ = tokio::task::spawn_blocking(move || writer.join()).await;
    Ok(issued?.token)
}

/// Trims the event log by age and size once a minute (and at start).
async fn trim_events(
    store: crate::store::StoreHandle,
    max_age: Duration,
    max_bytes: u64,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let max_age_ms = max_age.as_millis() as i64;
        let trimmed = store
            .write(move |savepoint, path| {
                crate::store::events::trim(savepoint, path, now_ms(), max_age_ms, max_bytes)
            })
            .await;
        match trimmed {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "old events trimmed"),
            Err(err) => tracing::warn!(error = %err, "cannot trim events"),
        }
    }
}

/// Publishes the set of agent names gossip sees alive, for sessions to consult as a liveness hint.
async fn watch_gossip_liveness(
    gossip: Arc<Gossip>,
    live_tx: watch::Sender<BTreeSet<String>>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let live = gossip.live_agent_names().await;
        live_tx.send_if_modified(|current| {
            if *current == live {
                false
            } else {
                *current = live;
                true
            }
        });
    }
}

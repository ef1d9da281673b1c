//! The coordinator's HTTP side: `/healthz` for probes, `/metrics` in Prometheus text format (both
//! unauthenticated, nothing secret in them), the JSON API under `/api/` (operator token), and
//! `/hooks/github` for GitHub's webhooks when `[github]` is configured (their own signature check).

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use polarizer_shared::protocol::AgentState;
use tokio_util::sync::CancellationToken;

use crate::daemon::context::Metrics;
use crate::daemon::sessions::Sessions;
use crate::store::StoreHandle;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub store: StoreHandle,
    pub sessions: Arc<Sessions>,
    pub metrics: Arc<Metrics>,
    pub shipping: Arc<crate::daemon::shipping::Shipping>,
    pub pools: Arc<crate::daemon::pools::Pools>,
    pub github: Option<Arc<crate::daemon::github::Github>>,
    pub buses: Option<Arc<crate::daemon::bus::Buses>>,
    pub gossip: Arc<polarizer_transport::Gossip>,
}

/// Serves `/healthz`, `/metrics`, the JSON API and web view (`api`, see `daemon::api`, `daemon::web`)
/// and GitHub's webhooks, on `listener`: plain TCP, or TLS (`daemon::http_tls`).
pub async fn serve<L>(
    listener: L,
    state: HttpState,
    api: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
    crate::daemon::http_tls::Peer:
        for<'a> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state.clone())
        .merge(api);
    if let Some(github) = state.github {
        router = router.merge(
            Router::new()
                .route(
                    "/hooks/github",
                    axum::routing::post(crate::daemon::github::webhook::receive),
                )
                .with_state(github),
        );
    }
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<crate::daemon::http_tls::Peer>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}

/// 200 `ok` while the store commits; 503 with the reason while it cannot (agents' records then stay
/// in their spools, unacknowledged, until it can again).
async fn healthz(State(state): State<HttpState>) -> (StatusCode, String) {
    match state.store.failing() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(failing) => {
            let for_seconds = (crate::daemon::clock::now_ms() - failing.since_ms).max(0) / 1000;
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "store cannot commit (for {for_seconds} s; agents keep their records until it can): {}\n",
                    failing.error
                ),
            )
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> String {
    // Counted, not listed: thousands of agents' facts are not read for a scrape.
    let (revoked, pending, admitted) = state
        .store
        .read(|reader| reader.agent_counts())
        .await
        .unwrap_or_default();
    let online = state.sessions.online_count() as u64;
    let count = |wanted: AgentState| match wanted {
        AgentState::Online => online,
        AgentState::Offline => admitted.saturating_sub(online),
        AgentState::Revoked => revoked,
        AgentState::Pending => pending,
    };
    let counters = &state.metrics;
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    format!(
        "# HELP polarizer_agents Agents in the inventory by state.\n\
         # TYPE polarizer_agents gauge\n\
         polarizer_agents{{state=\"online\"}} {}\n\
         polarizer_agents{{state=\"offline\"}} {}\n\
         polarizer_agents{{state=\"revoked\"}} {}\n\
         polarizer_agents{{state=\"pending\"}} {}\n\
         # HELP polarizer_connections_total QUIC connections accepted.\n\
         # TYPE polarizer_connections_total counter\n\
         polarizer_connections_total {}\n\
         # HELP polarizer_refusals_total Hellos refused (bad token, revoked, version, ...).\n\
         # TYPE polarizer_refusals_total counter\n\
         polarizer_refusals_total {}\n\
         # HELP polarizer_protocol_errors_total Connections closed for an oversize or undecodable frame.\n\
         # TYPE polarizer_protocol_errors_total counter\n\
         polarizer_protocol_errors_total {}\n\
         # HELP polarizer_store_pending_commands Writes sent to the store and not yet committed (bounded).\n\
         # TYPE polarizer_store_pending_commands gauge\n\
         polarizer_store_pending_commands {}\n\
         # HELP polarizer_store_healthy 1 while the store commits, 0 while it cannot (full disk, I/O error).\n\
         # TYPE polarizer_store_healthy gauge\n\
         polarizer_store_healthy {}\n\
         # HELP polarizer_test_transfers_total Transfers of a run's tests to an agent started (resumed ones again).\n\
         # TYPE polarizer_test_transfers_total counter\n\
         polarizer_test_transfers_total {}\n\
         # HELP polarizer_test_shipped_bytes_total Bytes of tests (git bundles, tars) sent to agents.\n\
         # TYPE polarizer_test_shipped_bytes_total counter\n\
         polarizer_test_shipped_bytes_total {}\n\
         # HELP polarizer_test_bundles_built_total Bundles and tars of tests built (each once per commit, format and base).\n\
         # TYPE polarizer_test_bundles_built_total counter\n\
         polarizer_test_bundles_built_total {}\n",
        count(AgentState::Online),
        count(AgentState::Offline),
        count(AgentState::Revoked),
        count(AgentState::Pending),
        load(&counters.connections),
        load(&counters.refusals),
        load(&counters.protocol_errors),
        state.store.pending_commands(),
        u8::from(state.store.failing().is_none()),
        load(&counters.transfers),
        load(&counters.shipped_bytes),
        state.shipping.builds(),
    ) + &platform_metrics(&state.pools)
        + &state.github.as_deref().map(github_metrics).unwrap_or_default()
        + &state
            .buses
            .as_deref()
            .map(crate::daemon::bus::Buses::metrics_text)
            .unwrap_or_default()
        + &cell_metrics(&state.gossip.cells().await)
}

/// The gossip cells the coordinator is in, and how many other nodes it sees alive in each.
fn cell_metrics(cells: &[(String, usize)]) -> String {
    let mut text = String::from(
        "# HELP polarizer_gossip_cell_members Nodes the coordinator sees alive in each gossip cell (\"\" is the default cell).\n\
         # TYPE polarizer_gossip_cell_members gauge\n",
    );
    for (cell, members) in cells {
        text.push_str(&format!(
            "polarizer_gossip_cell_members{{cell=\"{cell}\"}} {members}\n"
        ));
    }
    text
}

fn github_metrics(github: &crate::daemon::github::Github) -> String {
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let counters = &github.metrics;
    format!(
        "# HELP polarizer_github_deliveries_total Deliveries to /hooks/github.\n\
         # TYPE polarizer_github_deliveries_total counter\n\
         polarizer_github_deliveries_total {}\n\
         # HELP polarizer_github_refused_total Deliveries refused (signature, size, body).\n\
         # TYPE polarizer_github_refused_total counter\n\
         polarizer_github_refused_total {}\n\
         # HELP polarizer_github_duplicates_total Deliveries dropped as duplicates.\n\
         # TYPE polarizer_github_duplicates_total counter\n\
         polarizer_github_duplicates_total {}\n\
         # HELP polarizer_github_runs_total Runs started by deliveries.\n\
         # TYPE polarizer_github_runs_total counter\n\
         polarizer_github_runs_total {}\n\
         # HELP polarizer_github_reports_sent_total Commit statuses and check run updates GitHub took.\n\
         # TYPE polarizer_github_reports_sent_total counter\n\
         polarizer_github_reports_sent_total {}\n\
         # HELP polarizer_github_report_failures_total Tries at sending a report that failed (each is tried again).\n\
         # TYPE polarizer_github_report_failures_total counter\n\
         polarizer_github_report_failures_total {}\n\
         # HELP polarizer_github_unrecorded_total Refused or duplicate deliveries not stored (a flood beyond the budget).\n\
         # TYPE polarizer_github_unrecorded_total counter\n\
         polarizer_github_unrecorded_total {}\n",
        load(&counters.deliveries),
        load(&counters.refused),
        load(&counters.duplicates),
        load(&counters.runs),
        load(&counters.reports_sent),
        load(&counters.report_failures),
        load(&counters.unrecorded),
    )
}

fn platform_metrics(pools: &crate::daemon::pools::Pools) -> String {
    use polarizer_shared::platforms::PlatformState;
    let platforms = pools.snapshot();
    let mut text = String::from(
        "# HELP polarizer_platforms Platforms of the pools by state.\n\
         # TYPE polarizer_platforms gauge\n",
    );
    for state in PlatformState::ALL {
        let count = platforms
            .iter()
            .filter(|platform| platform.state == state)
            .count();
        text += &format!("polarizer_platforms{{state=\"{state}\"}} {count}\n");
    }
    let load =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    text += &format!(
        "# HELP polarizer_platforms_created_total Platforms pools decided to make.\n\
         # TYPE polarizer_platforms_created_total counter\n\
         polarizer_platforms_created_total {}\n\
         # HELP polarizer_platforms_destroyed_total Platforms destroyed.\n\
         # TYPE polarizer_platforms_destroyed_total counter\n\
         polarizer_platforms_destroyed_total {}\n\
         # HELP polarizer_platform_failures_total Platforms that could not be made in any try (infrastructure errors).\n\
         # TYPE polarizer_platform_failures_total counter\n\
         polarizer_platform_failures_total {}\n\
         # HELP polarizer_platform_images_built_total Images built from suites' Containerfiles (one per content).\n\
         # TYPE polarizer_platform_images_built_total counter\n\
         polarizer_platform_images_built_total {}\n",
        load(&pools.metrics.created),
        load(&pools.metrics.destroyed),
        load(&pools.metrics.failures),
        load(&pools.metrics.images_built),
    );
    text
}

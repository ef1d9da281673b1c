//! Per-host enrollment tokens, made one way whether an operator asks the running coordinator
//! (`polarizer tokens create`) or writes to a data dir's database itself (`tokens create --offline`):
//! the name checked, the lifetime capped, a fresh secret drawn, and only its digest stored.

use polarizer_transport::state_files;
use tracing::info;

use crate::daemon::clock::now_ms;
use crate::store::{StoreError, StoreHandle};

/// The longest a per-host token may live: it sits on a host until that host enrolls.
const MAX_HOST_TOKEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// A token just made: the one moment it exists outside the host it is for. No `Debug`, so it cannot
/// reach a log by accident.
pub struct IssuedHostToken {
    pub name: String,
    pub token: String,
    pub expires_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum HostTokenError {
    #[error("{reason}")]
    BadName { reason: String },
    #[error("--ttl is at most 30 days, not {seconds} s")]
    TooLong { seconds: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A token that enrolls the agent `name` once, within `ttl_ms` from now. Its digest is committed
/// before the token is returned, so a hello presenting it finds it.
pub async fn issue(
    store: &StoreHandle,
    name: String,
    ttl_ms: u64,
) -> Result<IssuedHostToken, HostTokenError> {
    polarizer_shared::facts::validate_agent_name(&name)
        .map_err(|reason| HostTokenError::BadName { reason })?;
    if ttl_ms > MAX_HOST_TOKEN_TTL_MS {
        return Err(HostTokenError::TooLong {
            seconds: ttl_ms / 1000,
        });
    }
    let token = state_files::random_secret();
    let now = now_ms();
    let expires_ms = now + ttl_ms as i64;
    store
        .create_host_token(
            state_files::secret_digest(&token),
            name.clone(),
            now,
            expires_ms,
        )
        .await?;
    info!(agent = %name, expires_ms, "per-host enrollment token created");
    Ok(IssuedHostToken {
        name,
        token,
        expires_ms,
    })
}

//! Login links and browser sessions of the web view, held in memory by their secrets' digests.

use std::collections::HashMap;
use std::sync::Mutex;

use polarizer_transport::state_files::{random_secret, secret_digest};

use crate::core::pages;

/// How long a login link stays good.
pub const LINK_TTL_MS: i64 = 5 * 60 * 1000;
/// How long a browser stays logged in.
pub const SESSION_TTL_MS: i64 = 12 * 3600 * 1000;
/// Links and sessions held at most (the oldest go first beyond it).
const MAX_LINKS: usize = 1000;
const MAX_SESSIONS: usize = 10_000;

/// Login links given and sessions opened, by their secrets' digests (a secret itself is never kept).
pub struct Logins {
    /// Where browsers reach this HTTP port (`web_url`), without a trailing `/`.
    web_url: String,
    links: Mutex<HashMap<String, Link>>,
    sessions: Mutex<HashMap<String, i64>>,
}

struct Link {
    expires_ms: i64,
    path: String,
}

/// Drops expired entries, then the soonest to expire while more than `max` are held.
fn bound<V>(map: &mut HashMap<String, V>, max: usize, now_ms: i64, expires: impl Fn(&V) -> i64) {
    map.retain(|_, value| expires(value) > now_ms);
    while map.len() >= max {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, value)| expires(value))
            .map(|(key, _)| key.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Logins {
    pub fn new(web_url: &str) -> Logins {
        Logins {
            web_url: web_url.trim_end_matches('/').to_string(),
            links: Mutex::default(),
            sessions: Mutex::default(),
        }
    }

    pub fn secure(&self) -> bool {
        self.web_url.starts_with("https://")
    }

    /// A one-time link that logs a browser in and leads it to `path`, and when it expires.
    pub fn link(&self, path: &str, now_ms: i64) -> Result<(String, i64), String> {
        let path = pages::login_path(path)?;
        let code = random_secret();
        let expires_ms = now_ms + LINK_TTL_MS;
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        bound(&mut links, MAX_LINKS, now_ms, |link| link.expires_ms);
        links.insert(
            secret_digest(&code),
            Link {
                expires_ms,
                path: path.to_string(),
            },
        );
        Ok((format!("{}/login?code={code}", self.web_url), expires_ms))
    }

    /// The path a link's code leads to, once: the code is spent.
    pub fn redeem(&self, code: &str, now_ms: i64) -> Option<String> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        let link = links.remove(&secret_digest(code))?;
        (link.expires_ms > now_ms).then_some(link.path)
    }

    /// A new session's secret (the cookie's value).
    pub fn open_session(&self, now_ms: i64) -> String {
        let secret = random_secret();
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        bound(&mut sessions, MAX_SESSIONS, now_ms, |expires| *expires);
        sessions.insert(secret_digest(&secret), now_ms + SESSION_TTL_MS);
        secret
    }

    pub fn session_valid(&self, secret: &str, now_ms: i64) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(&secret_digest(secret))
            .is_some_and(|expires| *expires > now_ms)
    }

    pub fn close_session(&self, secret: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.remove(&secret_digest(secret));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_logs_in_once_and_only_before_it_expires() {
        let logins = Logins::new("http://ops.example:7702/");
        let (url, expires) = logins.link("/runs/7", 1000).unwrap();
        assert_eq!(expires, 1000 + LINK_TTL_MS);
        let code = url
            .strip_prefix("http://ops.example:7702/login?code=")
            .unwrap();
        assert_eq!(logins.redeem(code, 2000).as_deref(), Some("/runs/7"));
        assert_eq!(logins.redeem(code, 2000), None, "a link is good once");

        let (url, _) = logins.link("/agents", 1000).unwrap();
        let code = url.rsplit('=').next().unwrap();
        assert_eq!(logins.redeem(code, 1000 + LINK_TTL_MS), None, "expired");
        assert!(logins.link("//evil.example", 1000).is_err());

        let session = logins.open_session(0);
        assert!(logins.session_valid(&session, 1));
        assert!(!logins.session_valid("forged", 1));
        assert!(!logins.session_valid(&session, SESSION_TTL_MS));
        logins.close_session(&session);
        assert!(!logins.session_valid(&session, 1));
    }
}

//! The coordinator's data directory as both sides see it: where the daemon keeps the SQLite database,
//! the CA and server certificate and the two tokens, and where the operator's client finds the CA and
//! the operator token. Creating them is the daemon's (`daemon::identity`).

use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DataDir { root: root.into() }
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("polarizer.db")
    }
    pub fn ca_certificate(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca-key.pem")
    }
    pub fn server_certificate(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server-key.pem")
    }
    pub fn agent_token(&self) -> PathBuf {
        self.root.join("agent-token")
    }
    pub fn operator_token(&self) -> PathBuf {
        self.root.join("operator-token")
    }

    /// The lines `serve` and `init` print: where the CA (with its fingerprint) and the tokens are.
    pub fn secrets_summary(&self, ca_fingerprint: &str) -> String {
        format!(
            "  CA              {} {ca_fingerprint}\n  agent token     {}\n  operator token  {}\n",
            self.ca_certificate().display(),
            self.agent_token().display(),
            self.operator_token().display()
        )
    }
}

/// `--data-dir`, else `$STATE_DIRECTORY` (systemd), else `~/.local/share/polarizer`.
pub fn default_data_dir() -> PathBuf {
    polarizer_transport::daemon::state_directory_or(".local/share/polarizer")
}

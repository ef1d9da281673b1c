//! The agent's identity on disk: the credential the coordinator issued at enrollment, kept 0600 in the
//! state directory and presented at every later hello.

use std::path::{Path, PathBuf};

use polarizer_transport::state_files::{self, StateFileError};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error(transparent)]
    File(#[from] StateFileError),
    #[error("credential file {path} is unreadable: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("state dir {dir} holds the credential of agent {stored:?}, but this agent is named {configured:?}: use another --state-dir or --name")]
    NameMismatch {
        dir: PathBuf,
        stored: String,
        configured: String,
    },
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub version: u32,
    pub name: String,
    pub secret: String,
    /// The CA this credential was issued under: a different coordinator would not know it.
    pub ca_fingerprint: String,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("credential.toml")
}

pub fn load(state_dir: &Path, name: &str) -> Result<Option<Credential>, CredentialError> {
    let file = path(state_dir);
    if !file.exists() {
        return Ok(None);
    }
    let text = state_files::read_private(&file)?;
    let credential: Credential = toml::from_str(&text).map_err(|err| CredentialError::Corrupt {
        path: file.clone(),
        reason: err.to_string(),
    })?;
    if credential.name != name {
        return Err(CredentialError::NameMismatch {
            dir: state_dir.to_path_buf(),
            stored: credential.name,
            configured: name.to_string(),
        });
    }
    Ok(Some(credential))
}

pub fn store(state_dir: &Path, credential: &Credential) -> Result<(), CredentialError> {
    state_files::ensure_private_dir(state_dir)?;
    let text = toml::to_string(credential).map_err(|err| CredentialError::Corrupt {
        path: path(state_dir),
        reason: err.to_string(),
    })?;
    state_files::write_private(&path(state_dir), text.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_round_trip_and_belong_to_one_name() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path(), "vm-1").unwrap().is_none());
        let credential = Credential {
            version: 1,
            name: "vm-1".into(),
            secret: "s".into(),
            ca_fingerprint: "sha256:00".into(),
        };
        store(dir.path(), &credential).unwrap();
        assert_eq!(load(dir.path(), "vm-1").unwrap().unwrap().secret, "s");
        let err = load(dir.path(), "vm-2").err().unwrap().to_string();
        assert!(
            err.contains("\"vm-1\"") && err.contains("\"vm-2\""),
            "{err}"
        );
    }
}

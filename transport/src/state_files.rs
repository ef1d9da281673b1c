//! State files both daemons keep: written atomically (temp file, fsync, rename) with owner-only modes,
//! so a crash never leaves half a secret and no other user can read one.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("{action} {path}: {source}")]
pub struct StateFileError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn error<'p>(
    action: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> StateFileError + 'p {
    move |source| StateFileError {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `dir` (and parents) if missing, and makes it owner-only (0700).
pub fn ensure_private_dir(dir: &Path) -> Result<(), StateFileError> {
    fs::create_dir_all(dir).map_err(error("cannot create directory", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(error("cannot set mode 0700 on", dir))
}

/// Writes `contents` to `path` with mode 0600, atomically.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), StateFileError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("state");
    let temporary = parent.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(error("cannot create", &temporary))?;
    file.write_all(contents)
        .map_err(error("cannot write", &temporary))?;
    file.sync_all().map_err(error("cannot sync", &temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(error("cannot rename into place", path))?;
    if let Ok(directory) = fs::File::open(parent) {
        let _ = directory.sync_all();
    }
    Ok(())
}

/// Reads a secret (token, credential) and refuses one that other users could read.
pub fn read_private(path: &Path) -> Result<String, StateFileError> {
    let metadata = fs::metadata(path).map_err(error("cannot read", path))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(StateFileError {
            action: "refusing to use a secret readable by other users (chmod 600)",
            path: path.to_path_buf(),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("mode is {mode:03o}"),
            ),
        });
    }
    let text = fs::read_to_string(path).map_err(error("cannot read", path))?;
    Ok(text.trim().to_string())
}

/// A fresh random secret: 32 bytes from the OS, as 64 hex digits.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the OS random source works");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// sha256 of a secret, hex: what the coordinator stores instead of the secret.
pub fn secret_digest(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_and_loose_ones_are_refused() {
        let dir =
            std::env::temp_dir().join(format!("polarizer-state-files-{}", std::process::id()));
        ensure_private_dir(&dir).unwrap();
        let path = dir.join("token");
        write_private(&path, b"secret\n").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_private(&path).unwrap(), "secret");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read_private(&path).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_are_random_and_digests_stable() {
        assert_ne!(random_secret(), random_secret());
        assert_eq!(random_secret().len(), 64);
        assert_eq!(secret_digest("a"), secret_digest("a"));
        assert_ne!(secret_digest("a"), secret_digest("b"));
    }
}

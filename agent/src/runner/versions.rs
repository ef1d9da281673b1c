//! The version chain's package versions: what rpm (preferred) or dpkg says is installed, asked with a timeout.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

const PACKAGE_QUERY_TIMEOUT: Duration = Duration::from_secs(30);
const NOT_INSTALLED: &str = "not installed";

/// Each package's version as rpm (preferred) or dpkg reports it, or "not installed".
pub(super) async fn package_versions(packages: &[String]) -> Vec<(String, String)> {
    if packages.is_empty() {
        return Vec::new();
    }
    let rpm = find_on_path("rpm").await;
    let dpkg_query = find_on_path("dpkg-query").await;
    let mut versions = Vec::with_capacity(packages.len());
    for package in packages {
        let mut version = None;
        // A name that looks like an option would be taken for one.
        if !package.starts_with('-') {
            if let Some(rpm) = &rpm {
                let format = "%{EPOCHNUM}:%{VERSION}-%{RELEASE}.%{ARCH}";
                version = query_version(rpm, &["-q", "--qf", format, package]).await;
            }
            if let (None, Some(dpkg_query)) = (&version, &dpkg_query) {
                let format = "${Version} ${Architecture}";
                version = query_version(dpkg_query, &["-W", "-f", format, package]).await;
            }
        }
        versions.push((
            package.clone(),
            version.unwrap_or_else(|| NOT_INSTALLED.to_string()),
        ));
    }
    versions
}

async fn query_version(program: &Path, args: &[&str]) -> Option<String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(PACKAGE_QUERY_TIMEOUT, command.output())
        .await
        .ok()?
        .ok()?;
    if !output.status.success() {
        return None;
    }
    let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
    (!version.is_empty()).then_some(version)
}

async fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if let Ok(metadata) = tokio::fs::metadata(&candidate).await {
            if metadata.is_file() && metadata.permissions().mode() & 0o111 != 0 {
                return Some(candidate);
            }
        }
    }
    None
}

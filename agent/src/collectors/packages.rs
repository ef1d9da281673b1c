//! Package changes: the RPM database (`rpm -qa` against its dbpath) and the dpkg status file. When the
//! database changes, the package set is read again and diffed: installed, removed, upgraded (or
//! downgraded). Only writes of the database itself count, never its `-wal`/`-shm` files: a read-only
//! query touches those and would loop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::{self, RecursiveMode};
use polarizer_shared::events::{kind, Event};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::spool::SharedSpool;

/// Quiet time after the database's last write before it is read again.
const QUIET: Duration = Duration::from_millis(300);

/// (name, arch) → epoch:version-release
pub type PackageSet = BTreeMap<(String, String), String>;

#[derive(Clone, Debug)]
pub enum Source {
    Rpm { dbpath: PathBuf },
    Dpkg { status: PathBuf },
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::Rpm { dbpath } => format!("rpm database {}", dbpath.display()),
            Source::Dpkg { status } => format!("dpkg status {}", status.display()),
        }
    }

    /// The directory to watch (dpkg replaces its status file by renaming a new one over it).
    fn directory(&self) -> PathBuf {
        match self {
            Source::Rpm { dbpath } => dbpath.clone(),
            Source::Dpkg { status } => status.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    /// Is a changed file the database itself (never its -wal/-shm files)?
    fn is_database(&self, name: &str) -> bool {
        match self {
            Source::Rpm { .. } => {
                matches!(
                    name,
                    "rpmdb.sqlite" | "Packages" | "Packages.db" | ".rpm.lock"
                )
            }
            Source::Dpkg { status } => status
                .file_name()
                .is_some_and(|file_name| file_name == name),
        }
    }

    async fn read(&self) -> Result<PackageSet, String> {
        match self {
            Source::Rpm { dbpath } => {
                let output = tokio::process::Command::new("rpm")
                    .arg("--dbpath")
                    .arg(dbpath)
                    .args([
                        "-qa",
                        "--qf",
                        "%{NAME} %{EPOCHNUM}:%{VERSION}-%{RELEASE} %{ARCH}\\n",
                    ])
                    .output()
                    .await
                    .map_err(|err| format!("cannot run rpm: {err}"))?;
                if !output.status.success() {
                    return Err(String::from_utf8_lossy(&output.stderr).trim().to_string());
                }
                Ok(String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter_map(|line| {
                        let mut fields = line.split(' ');
                        let (name, evr, arch) = (fields.next()?, fields.next()?, fields.next()?);
                        Some(((name.to_string(), arch.to_string()), evr.to_string()))
                    })
                    .collect())
            }
            Source::Dpkg { status } => {
                // Read a line at a time on a blocking thread: the status file is about a megabyte,
                // and a thread that held it whole would keep that much resident for nothing.
                let status = status.clone();
                tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&status).map_err(|err| err.to_string())?;
                    read_dpkg_status(std::io::BufReader::with_capacity(16 * 1024, file))
                        .map_err(|err| err.to_string())
                })
                .await
                .map_err(|err| err.to_string())?
            }
        }
    }
}

/// Installed packages of a dpkg status file.
pub fn parse_dpkg_status(text: &str) -> PackageSet {
    read_dpkg_status(text.as_bytes()).unwrap_or_default()
}

/// Installed packages of a dpkg status file, read a line at a time.
pub fn read_dpkg_status(reader: impl std::io::BufRead) -> std::io::Result<PackageSet> {
    #[derive(Default)]
    struct Paragraph {
        package: Option<String>,
        version: Option<String>,
        architecture: String,
        installed: bool,
    }
    fn end(paragraph: Paragraph, packages: &mut PackageSet) {
        if let (true, Some(name), Some(version)) =
            (paragraph.installed, paragraph.package, paragraph.version)
        {
            packages.insert((name, paragraph.architecture), version);
        }
    }
    let mut packages = PackageSet::new();
    let mut paragraph = Paragraph::default();
    // One buffer for every line: the file has tens of thousands.
    let mut reader = reader;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            end(std::mem::take(&mut paragraph), &mut packages);
            continue;
        }
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Package" => paragraph.package = Some(value.to_string()),
            "Version" => paragraph.version = Some(value.to_string()),
            "Architecture" => paragraph.architecture = value.to_string(),
            "Status" => paragraph.installed = value.ends_with(" installed"),
            _ => {}
        }
    }
    end(paragraph, &mut packages);
    Ok(packages)
}

/// What changed between two package sets, as events.
pub fn diff(before: &PackageSet, after: &PackageSet, source: &str) -> Vec<Event> {
    let mut events = Vec::new();
    let mut event = |action: &str,
                     (name, arch): &(String, String),
                     from: Option<&str>,
                     to: Option<&str>| {
        let versions = match (from, to) {
            (Some(from), Some(to)) => format!("{from} → {to}"),
            (None, Some(version)) | (Some(version), None) => version.to_string(),
            (None, None) => String::new(),
        };
        events.push(Event {
            kind: kind::PACKAGE.into(),
            summary: format!("{action} {name} {versions} {arch}"),
            data: json!({
                "action": action, "name": name, "arch": arch, "from": from, "to": to, "source": source,
            })
            .to_string(),
        });
    };
    for (key, version) in after {
        match before.get(key) {
            None => event("installed", key, None, Some(version)),
            Some(old) if old != version => {
                let action = if compare_evr(old, version).is_lt() {
                    "upgraded"
                } else {
                    "downgraded"
                };
                event(action, key, Some(old), Some(version))
            }
            Some(_) => {}
        }
    }
    for (key, version) in before {
        if !after.contains_key(key) {
            event("removed", key, Some(version), None);
        }
    }
    events
}

/// A version comparison close to rpmvercmp: digit runs numerically, letter runs lexically, `~` first.
pub fn compare_evr(left: &str, right: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let segments = |text: &str| -> Vec<(bool, String)> {
        let mut out: Vec<(bool, String)> = Vec::new();
        for character in text.chars() {
            if character == '~' {
                out.push((false, "~".into()));
                continue;
            }
            if !character.is_ascii_alphanumeric() {
                out.push((false, String::new()));
                continue;
            }
            let digit = character.is_ascii_digit();
            match out.last_mut() {
                Some((is_digit, segment))
                    if *is_digit == digit && !segment.is_empty() && segment != "~" =>
                {
                    segment.push(character)
                }
                _ => out.push((digit, character.to_string())),
            }
        }
        out.into_iter()
            .filter(|(_, segment)| !segment.is_empty())
            .collect()
    };
    let (left, right) = (segments(left), segments(right));
    for index in 0..left.len().max(right.len()) {
        let ordering = match (left.get(index), right.get(index)) {
            (Some((_, a)), Some((_, b))) if a == "~" || b == "~" => {
                (b == "~").cmp(&(a == "~")).then(Ordering::Equal)
            }
            (Some((true, a)), Some((true, b))) => {
                let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
                a.len().cmp(&b.len()).then_with(|| a.cmp(b))
            }
            (Some((true, _)), Some((false, _))) => Ordering::Greater,
            (Some((false, _)), Some((true, _))) => Ordering::Less,
            (Some((_, a)), Some((_, b))) => a.cmp(b),
            (Some((_, a)), None) => {
                if a == "~" {
                    Ordering::Less
                } else {
                    Ordering::Greater
                }
            }
            (None, Some((_, b))) => {
                if b == "~" {
                    Ordering::Greater
                } else {
                    Ordering::Less
                }
            }
            (None, None) => Ordering::Equal,
        };
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    Ordering::Equal
}

/// The RPM database on this host, if any: `/var/lib/rpm`, else `/usr/lib/sysimage/rpm`.
pub fn detect_rpm_dbpath() -> Option<PathBuf> {
    ["/var/lib/rpm", "/usr/lib/sysimage/rpm"]
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| {
            ["rpmdb.sqlite", "Packages", "Packages.db"]
                .iter()
                .any(|name| dir.join(name).exists())
        })
}

/// Watches one package database. An unreadable database is reported (agent log) and tried again at its
/// next change; the agent and its other collectors carry on.
pub fn start(source: Source, spool: SharedSpool, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let label = source.label();
        let directory = source.directory();
        let database_touched = {
            let source = source.clone();
            move |event: &notify::Event| {
                event.paths.iter().any(|path| {
                    path.file_name()
                        .and_then(|name| name.to_str())
                        .is_some_and(|name| source.is_database(name))
                })
            }
        };
        // A plain watcher (one thread); the quiet period is kept here, not by a debouncer thread of its own.
        let (changes_tx, mut changes_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let watcher = notify::recommended_watcher(move |result: notify::Result<notify::Event>| {
            if result.is_ok_and(|event| database_touched(&event)) {
                let _ = changes_tx.send(());
            }
        });
        let mut watcher = match watcher {
            Ok(watcher) => watcher,
            Err(err) => return warn!(source = %label, error = %err, "package events: cannot watch"),
        };
        if let Err(err) =
            notify::Watcher::watch(&mut watcher, &directory, RecursiveMode::NonRecursive)
        {
            return warn!(source = %label, error = %err, "package events: cannot watch; the other collectors carry on");
        }
        let mut known = match source.read().await {
            Ok(packages) => {
                info!(source = %label, packages = packages.len(), "package events: watching");
                Some(packages)
            }
            Err(err) => {
                warn!(source = %label, error = %err, "package events: cannot read the package database; will retry when it changes");
                None
            }
        };
        loop {
            tokio::select! {
                changed = changes_rx.recv() => if changed.is_none() { return },
                () = shutdown.cancelled() => return,
            }
            // A package manager writes its database in bursts: read it once they have been quiet a while.
            loop {
                tokio::select! {
                    changed = changes_rx.recv() => if changed.is_none() { return },
                    () = tokio::time::sleep(QUIET) => break,
                    () = shutdown.cancelled() => return,
                }
            }
            match source.read().await {
                Ok(packages) => {
                    if let Some(before) = &known {
                        for event in diff(before, &packages, &label) {
                            spool.push_event(event);
                        }
                    }
                    known = Some(packages);
                }
                Err(err) => {
                    warn!(source = %label, error = %err, "package events: cannot read the package database")
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let text = "Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b2\nDescription: GNU\n shell\n\nPackage: gone\nStatus: deinstall ok config-files\nVersion: 1.0\n\nPackage: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n";
        let packages = parse_dpkg_status(text);
        assert_eq!(packages.len(), 2);
        assert_eq!(packages[&("bash".into(), "amd64".into())], "5.2.15-2+b2");
    }

    #[test]
    fn diffs_name_installed_removed_and_upgraded() {
        let before: PackageSet = [
            (("a".into(), "noarch".into()), "0:1.0-1".into()),
            (("b".into(), "x86_64".into()), "0:2.9-1".into()),
        ]
        .into();
        let after: PackageSet = [
            (("b".into(), "x86_64".into()), "0:2.10-1".into()),
            (("c".into(), "noarch".into()), "0:1-1".into()),
        ]
        .into();
        let summaries: Vec<String> = diff(&before, &after, "test")
            .into_iter()
            .map(|e| e.summary)
            .collect();
        assert_eq!(
            summaries,
            [
                "upgraded b 0:2.9-1 → 0:2.10-1 x86_64",
                "installed c 0:1-1 noarch",
                "removed a 0:1.0-1 noarch"
            ]
        );
    }

    #[test]
    fn versions_compare_like_rpm() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_evr("0:1.10-1", "0:1.9-1"), Greater);
        assert_eq!(compare_evr("1.0~rc1", "1.0"), Less);
        assert_eq!(compare_evr("1.0a", "1.0"), Greater);
        assert_eq!(compare_evr("2.0", "2.0"), Equal);
    }
}

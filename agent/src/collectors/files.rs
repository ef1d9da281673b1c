//! File changes: notify watches on the configured paths (recursive or not), debounced, filtered by
//! include / exclude globs; created, modified, removed and renamed files with their size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify_debouncer_full::notify::event::{EventKind, ModifyKind, RenameMode};
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult};
use polarizer_shared::events::{kind, Event};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::spool::SharedSpool;

pub struct FileWatch {
    pub paths: Vec<PathBuf>,
    pub recursive: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    pub debounce: Duration,
}

/// Checks the `watch_include` / `watch_exclude` globs of the configuration, naming the key and the
/// pattern of the first bad one.
pub fn checked_globs(
    key: &'static str,
    patterns: Vec<String>,
) -> Result<Vec<String>, crate::config::ConfigError> {
    for pattern in &patterns {
        if let Err(err) = fast_glob::validate(pattern) {
            return Err(crate::config::ConfigError {
                key,
                message: format!("glob {pattern:?}: {:?} at byte {}", err.kind, err.index),
            });
        }
    }
    Ok(patterns)
}

/// Whether a changed path matches one of the globs: a glob with a `/` is matched against the whole
/// path (`*` within one directory, `**` across any), one without against the file's name, wherever
/// it is (`*.conf`).
fn matches(globs: &[String], path: &Path) -> bool {
    let whole = path.to_string_lossy();
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    globs.iter().any(|glob| {
        if glob.contains('/') {
            fast_glob::glob_match(glob, whole.as_ref())
        } else {
            fast_glob::glob_match(glob, name.as_ref())
        }
    })
}

/// What one debounced notify event means, as (action, path, second path for a rename).
fn describe(
    kind: &EventKind,
    paths: &[PathBuf],
) -> Option<(&'static str, PathBuf, Option<PathBuf>)> {
    let first = paths.first()?.clone();
    let action = match kind {
        EventKind::Create(_) => "created",
        EventKind::Remove(_) => "removed",
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            return Some(("renamed", first, paths.get(1).cloned()))
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => "renamed-from",
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => "renamed-to",
        EventKind::Modify(ModifyKind::Metadata(_)) => "attributes",
        EventKind::Modify(_) => "modified",
        // Reads and opens are noise.
        EventKind::Access(_) | EventKind::Any | EventKind::Other => return None,
    };
    Some((action, first, None))
}

/// Starts the watches; a path that does not exist is reported and skipped, the others keep working.
pub fn start(
    watch: FileWatch,
    spool: SharedSpool,
    shutdown: CancellationToken,
) -> Result<(), String> {
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel::<DebounceEventResult>();
    let mut debouncer = new_debouncer(watch.debounce, None, move |result: DebounceEventResult| {
        let _ = events_tx.send(result);
    })
    .map_err(|err| format!("cannot start watching files: {err}"))?;
    let mode = if watch.recursive {
        RecursiveMode::Recursive
    } else {
        RecursiveMode::NonRecursive
    };
    let mut watching = 0;
    for path in &watch.paths {
        match debouncer.watch(path, mode) {
            Ok(()) => {
                watching += 1;
                info!(path = %path.display(), recursive = watch.recursive, "file events: watching");
            }
            Err(err) => {
                warn!(path = %path.display(), error = %err, "file events: cannot watch this path; the other collectors carry on")
            }
        }
    }
    if watching == 0 {
        return Ok(());
    }
    let wanted = move |path: &Path| {
        (watch.include.is_empty() || matches(&watch.include, path))
            && !matches(&watch.exclude, path)
    };
    tokio::spawn(async move {
        // The debouncer lives as long as this task.
        let _debouncer = debouncer;
        loop {
            let result = tokio::select! {
                result = events_rx.recv() => result,
                () = shutdown.cancelled() => return,
            };
            let Some(result) = result else { return };
            match result {
                Ok(events) => {
                    for event in events {
                        let Some((action, path, to)) =
                            describe(&event.event.kind, &event.event.paths)
                        else {
                            continue;
                        };
                        if !wanted(&path) && to.as_deref().is_none_or(|to| !wanted(to)) {
                            continue;
                        }
                        let current = to.as_deref().unwrap_or(&path);
                        let size = std::fs::metadata(current)
                            .ok()
                            .map(|metadata| metadata.len());
                        let mut summary = format!("{action} {}", path.display());
                        if let Some(to) = &to {
                            summary.push_str(&format!(" → {}", to.display()));
                        }
                        if let Some(size) = size {
                            summary.push_str(&format!(" ({size} bytes)"));
                        }
                        spool.push_event(Event {
                            kind: kind::FILE.into(),
                            summary,
                            data: json!({
                                "action": action,
                                "path": path,
                                "to": to,
                                "size": size,
                            })
                            .to_string(),
                        });
                    }
                }
                Err(errors) => {
                    for error in errors {
                        warn!(error = %error, "file events: watch error");
                    }
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(patterns: &[&str]) -> Vec<String> {
        patterns.iter().map(|pattern| pattern.to_string()).collect()
    }

    #[test]
    fn a_glob_without_a_slash_matches_the_name_one_with_a_slash_the_path() {
        let names = globs(&["*.conf", "id_[a-z]sa"]);
        assert!(matches(&names, Path::new("/etc/rhsm/rhsm.conf")));
        assert!(matches(&names, Path::new("/root/.ssh/id_rsa")));
        assert!(!matches(&names, Path::new("/etc/rhsm/rhsm.conf.bak")));
        let paths = globs(&["/etc/*.conf", "/var/log/**/*.{log,txt}"]);
        assert!(matches(&paths, Path::new("/etc/yum.conf")));
        assert!(!matches(&paths, Path::new("/etc/rhsm/rhsm.conf")));
        assert!(matches(&paths, Path::new("/var/log/rhsm/rhsm.log")));
        assert!(matches(&paths, Path::new("/var/log/a/b/c.txt")));
        assert!(!matches(&paths, Path::new("/var/lib/x.log")));
        assert!(!matches(&[], Path::new("/etc/yum.conf")));
    }

    #[test]
    fn a_bad_glob_names_its_key_and_pattern() {
        let err = checked_globs("watch_include", globs(&["*.log", "/etc/{a,b"])).unwrap_err();
        assert_eq!(err.key, "watch_include");
        assert!(err.message.contains("/etc/{a,b"), "{}", err.message);
        assert_eq!(
            checked_globs("watch_exclude", globs(&["**/*.swp"])).unwrap(),
            globs(&["**/*.swp"])
        );
    }
}

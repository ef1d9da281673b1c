//! File changes: notify watches on the configured paths (recursive or not), debounced, filtered by
//! include / exclude globs; created, modified, removed and renamed files with their size.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
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

fn glob_set(patterns: &[String], key: &str) -> Result<GlobSet, String> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        builder.add(Glob::new(pattern).map_err(|err| format!("{key} glob {pattern:?}: {err}"))?);
    }
    builder.build().map_err(|err| format!("{key}: {err}"))
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
    let include = glob_set(&watch.include, "watch_include")?;
    let exclude = glob_set(&watch.exclude, "watch_exclude")?;
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
        (watch.include.is_empty() || include.is_match(path)) && !exclude.is_match(path)
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

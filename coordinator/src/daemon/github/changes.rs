//! The paths a change touches, from git in the coordinator's cache rather than from the payload: a
//! pull request against the merge base with its base branch, a push as `before..after`, a new branch
//! or a force push against the default branch's merge base. When that cannot be known (objects
//! missing, more than [`MAX_CHANGED_FILES`] files), it fails open: the run selects everything and says
//! why. Only the head itself is required: without it there is nothing to test.

use std::path::Path;
use std::time::Duration;

use polarizer_transport::git;

use crate::core::github::{Base, Change};
use crate::daemon::import::{cached_repository, holds_commit};

/// More changed files than this: every test is selected (a mass rename, a vendored update).
pub const MAX_CHANGED_FILES: usize = 3000;
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The changed paths, or `None` with the reason everything is selected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changes {
    pub paths: Option<Vec<String>>,
    pub note: String,
}

impl Changes {
    fn fail_open(note: String) -> Changes {
        Changes { paths: None, note }
    }
}

fn fetch(directory: &Path, url: &str, refspec: &str) -> Result<(), String> {
    git::run_blocking(
        directory,
        ["fetch", "--quiet", "--no-tags", "--", url, refspec],
        GIT_TIMEOUT,
    )
    .map(drop)
    .map_err(|err| err.to_string())
}

fn branch_refspec(branch: &str) -> Result<String, String> {
    let name = format!("refs/heads/{branch}");
    git::check_ref(&name).map_err(|err| err.to_string())?;
    Ok(format!("+{name}:refs/polarizer/heads/{branch}"))
}

fn merge_base(directory: &Path, one: &str, two: &str) -> Result<String, String> {
    git::run_blocking(directory, ["merge-base", "--", one, two], GIT_TIMEOUT)
        .map(|text| text.trim().to_string())
        .map_err(|err| err.to_string())
}

/// Fetches the change into the cache of `url` (under its lock) and lists the paths it touches.
/// `Err` only when the head commit cannot be had.
pub fn changed_paths(url: &str, cache: &Path, change: &Change) -> Result<Changes, String> {
    git::check_url(url).map_err(|err| err.to_string())?;
    let (directory, _guard) = cached_repository(url, cache).map_err(|err| err.to_string())?;
    let head_refspec = match &change.base {
        Base::Push { branch, .. } => branch_refspec(branch)?,
        Base::PullRequest { number, .. } => {
            format!("+refs/pull/{number}/head:refs/polarizer/pull/{number}/head")
        }
    };
    let fetched = fetch(&directory, url, &head_refspec);
    if !holds_commit(&directory, &change.sha) {
        // The ref moved on (pushed over since) or is gone: the commit itself, if the server still has it.
        if fetch(&directory, url, &change.sha).is_err() || !holds_commit(&directory, &change.sha) {
            return Err(format!(
                "commit {} of {} cannot be fetched from {url}{}",
                change.sha,
                change.git_ref,
                match fetched {
                    Err(err) => format!(": {err}"),
                    Ok(()) => " (the ref has moved on and the commit is gone)".into(),
                }
            ));
        }
    }
    let base = match &change.base {
        Base::Push {
            branch,
            before,
            forced,
            default_branch,
        } => match before {
            Some(before) if !forced => {
                if holds_commit(&directory, before) {
                    Ok(before.clone())
                } else {
                    Err(format!(
                        "the commit before the push ({before}) is not in the repository"
                    ))
                }
            }
            _ if default_branch.is_empty() || default_branch == branch => Err(format!(
                "{} to the default branch: nothing to compare it with",
                if *forced {
                    "a force push"
                } else {
                    "a new branch"
                }
            )),
            _ => branch_refspec(default_branch)
                .and_then(|refspec| fetch(&directory, url, &refspec))
                .and_then(|()| {
                    merge_base(
                        &directory,
                        &change.sha,
                        &format!("refs/polarizer/heads/{default_branch}"),
                    )
                })
                .map_err(|err| format!("no merge base with {default_branch}: {err}")),
        },
        Base::PullRequest { base_branch, .. } => branch_refspec(base_branch)
            .and_then(|refspec| fetch(&directory, url, &refspec))
            .and_then(|()| {
                merge_base(
                    &directory,
                    &change.sha,
                    &format!("refs/polarizer/heads/{base_branch}"),
                )
            })
            .map_err(|err| format!("no merge base with {base_branch}: {err}")),
    };
    let base = match base {
        Ok(base) => base,
        Err(why) => {
            return Ok(Changes::fail_open(format!(
                "the changed paths are unknown ({why}): everything selected"
            )))
        }
    };
    let listed = git::run_blocking(
        &directory,
        [
            "diff",
            "--name-only",
            "-z",
            "--no-renames",
            base.as_str(),
            change.sha.as_str(),
            "--",
        ],
        GIT_TIMEOUT,
    );
    let listed = match listed {
        Ok(listed) => listed,
        Err(err) => {
            return Ok(Changes::fail_open(format!(
                "the changed paths are unknown (git diff: {err}): everything selected"
            )))
        }
    };
    let paths: Vec<String> = listed
        .split('\0')
        .filter(|path| !path.is_empty())
        .map(str::to_string)
        .collect();
    if paths.len() > MAX_CHANGED_FILES {
        return Ok(Changes::fail_open(format!(
            "{} files changed, more than {MAX_CHANGED_FILES}: everything selected",
            paths.len()
        )));
    }
    Ok(Changes {
        paths: Some(paths),
        note: String::new(),
    })
}

//! Running the system `git` on values that come from outside (a trigger's repository URL and ref, an
//! assignment's commit), for the coordinator and the agent alike.
//!
//! A URL must be one of the schemes users use (https, ssh, git, file, an scp-like `user@host:path`) or
//! a local path; a ref must be what `git check-ref-format` accepts (or a commit id). Every git runs with
//! `--` before user values, only those transports enabled (`protocol.allow=never` otherwise, so no
//! `ext::` command transport), no `GIT_*` variable inherited, no terminal prompt, no stdin, and a
//! timeout. Operations on one repository are serialised by [`RepoLocks`].

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{url:?} is not a repository location: {reason} (use https://, ssh://, git://, file://, user@host:path or a local path)")]
    BadUrl { url: String, reason: &'static str },
    #[error("{name:?} is not a git ref: {reason}")]
    BadRef { name: String, reason: &'static str },
    #[error("cannot run git: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("git {action} timed out after {} s", .after.as_secs())]
    Timeout { action: String, after: Duration },
    #[error("{message}")]
    Failed { message: String },
}

/// The transports git may use; everything else (`ext::`, `fd::`, any helper) is off.
const ALLOWED_PROTOCOLS: [&str; 4] = ["https", "ssh", "git", "file"];

/// What no value handed to git may be: empty, an option, or text with control characters.
fn never_a_value(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        Some("it is empty")
    } else if value.starts_with('-') {
        Some("it starts with '-'")
    } else if value.chars().any(char::is_control) {
        Some("it holds control characters")
    } else {
        None
    }
}

/// Checks a repository location before git sees it.
pub fn check_url(url: &str) -> Result<(), GitError> {
    let bad = |reason| {
        Err(GitError::BadUrl {
            url: url.to_string(),
            reason,
        })
    };
    if let Some(reason) = never_a_value(url) {
        return bad(reason);
    }
    if let Some((scheme, rest)) = url.split_once("://") {
        if !ALLOWED_PROTOCOLS.contains(&scheme) {
            return bad("that scheme is not allowed");
        }
        if rest.is_empty() {
            return bad("nothing follows the scheme");
        }
        return Ok(());
    }
    // `transport::address` is git's syntax for remote helpers (`ext::sh -c …`): never.
    if url.contains("::") {
        return bad("remote helpers are not allowed");
    }
    // scp-like `user@host:path` (a colon before any slash); a local path otherwise.
    let colon = url.find(':');
    let slash = url.find('/');
    if let Some(colon) = colon {
        if slash.is_none_or(|slash| colon < slash) {
            let host = &url[..colon];
            if host.is_empty() || url[colon + 1..].is_empty() {
                return bad("an scp-like location needs host:path");
            }
            return Ok(());
        }
    }
    Ok(())
}

/// Checks a ref the way `git check-ref-format --allow-onelevel` does; a commit id passes too.
pub fn check_ref(name: &str) -> Result<(), GitError> {
    let bad = |reason| {
        Err(GitError::BadRef {
            name: name.to_string(),
            reason,
        })
    };
    if let Some(reason) = never_a_value(name) {
        return bad(reason);
    }
    if name == "@" {
        return bad("it is a lone '@'");
    }
    if name.ends_with('/') || name.starts_with('/') || name.contains("//") {
        return bad("it has an empty component");
    }
    if name.ends_with('.') {
        return bad("it ends with '.'");
    }
    if name.contains("..") || name.contains("@{") {
        return bad("it holds '..' or '@{'");
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == ' ' || "~^:?*[\\\u{7f}".contains(c))
    {
        return bad("it holds a space, a control character or one of ~^:?*[\\");
    }
    if name
        .split('/')
        .any(|component| component.starts_with('.') || component.ends_with(".lock"))
    {
        return bad("a component starts with '.' or ends with '.lock'");
    }
    Ok(())
}

/// `git -C directory ARGS` with the environment and transports locked down; stdout and stderr piped.
pub fn command<I, S>(directory: &Path, args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new("git");
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GIT_") {
            command.env_remove(key);
        }
    }
    command
        .env("GIT_TERMINAL_PROMPT", "0")
        .arg("-C")
        .arg(directory)
        .args(["-c", "protocol.allow=never"]);
    for protocol in ALLOWED_PROTOCOLS {
        command
            .arg("-c")
            .arg(format!("protocol.{protocol}.allow=always"));
    }
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Its stdout (trimmed) on success; git's last line of complaint otherwise.
fn outcome(output: Output) -> Result<String, GitError> {
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).trim().to_string());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message = stderr
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("git failed: {}", output.status));
    Err(GitError::Failed { message })
}

/// The arguments, owned, and the first of them (git's subcommand) to name the action in errors.
fn owned<I, S>(args: I) -> (Vec<std::ffi::OsString>, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|arg| arg.as_ref().to_owned())
        .collect();
    let action = args
        .first()
        .map(|arg| arg.to_string_lossy().into_owned())
        .unwrap_or_default();
    (args, action)
}

/// Runs git to the end or until `timeout` (then kills it), on this thread.
pub fn run_blocking<I, S>(directory: &Path, args: I, timeout: Duration) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (args, action) = owned(args);
    let child = command(directory, &args).spawn().map_err(GitError::Spawn)?;
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    // The waiter owns the child: until it has reaped it, the pid cannot name another process.
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    match done_rx.recv_timeout(timeout) {
        Ok(output) => outcome(output.map_err(GitError::Spawn)?),
        Err(_) => {
            // SAFETY: kill(2) with a pid the waiter thread has not reaped yet; no memory is touched.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            Err(GitError::Timeout {
                action,
                after: timeout,
            })
        }
    }
}

/// [`run_blocking`] for async callers: the child is killed when the timeout passes or the future drops.
pub async fn run<I, S>(directory: &Path, args: I, timeout: Duration) -> Result<String, GitError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (args, action) = owned(args);
    let mut command = tokio::process::Command::from(command(directory, &args));
    command.kill_on_drop(true);
    match tokio::time::timeout(timeout, command.output()).await {
        Ok(output) => outcome(output.map_err(GitError::Spawn)?),
        Err(_) => Err(GitError::Timeout {
            action,
            after: timeout,
        }),
    }
}

/// One lock per repository directory: operations on one repository wait for each other, operations on
/// different repositories do not.
#[derive(Default)]
pub struct RepoLocks {
    locks: Mutex<HashMap<PathBuf, Arc<RepoLock>>>,
}

#[derive(Default)]
struct RepoLock {
    busy: Mutex<bool>,
    freed: Condvar,
}

/// Held while a repository is in use; dropping it lets the next one in.
pub struct RepoGuard {
    lock: Arc<RepoLock>,
}

impl RepoLocks {
    /// The process-wide locks.
    pub fn global() -> &'static RepoLocks {
        static LOCKS: OnceLock<RepoLocks> = OnceLock::new();
        LOCKS.get_or_init(RepoLocks::default)
    }

    /// Waits until no one else uses `repository`, then holds it (blocking: call off the async runtime).
    pub fn lock(&self, repository: &Path) -> RepoGuard {
        let lock = self
            .locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(repository.to_path_buf())
            .or_default()
            .clone();
        let mut busy = lock
            .busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while *busy {
            busy = lock
                .freed
                .wait(busy)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *busy = true;
        drop(busy);
        RepoGuard { lock }
    }
}

impl Drop for RepoGuard {
    fn drop(&mut self) {
        *self
            .lock
            .busy
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = false;
        self.lock.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_the_schemes_users_use_pass_and_nothing_else() {
        for url in [
            "https://github.com/candlepin/subscription-manager.git",
            "ssh://git@example.com/qe/tests.git",
            "git://example.com/tests",
            "file:///srv/git/tests.git",
            "git@github.com:candlepin/tests.git",
            "/srv/git/tests",
            "relative/dir.git",
        ] {
            assert!(check_url(url).is_ok(), "{url}");
        }
        for url in [
            "--upload-pack=touch /tmp/x;:.git",
            "-u",
            "ext::sh -c touch% /tmp/x",
            "fd::17",
            "http://example.com/tests.git",
            "https://",
            "a\nb",
            "",
            ":path",
        ] {
            assert!(check_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn refs_are_checked_as_git_check_ref_format_would() {
        for name in [
            "main",
            "HEAD",
            "refs/heads/feature/x",
            "v1.2.3",
            "0123456789abcdef0123456789abcdef01234567",
        ] {
            assert!(check_ref(name).is_ok(), "{name}");
        }
        for name in [
            "--upload-pack=x",
            "a..b",
            "a b",
            "a:b",
            "+refs/heads/*:refs/x",
            "a/.hidden",
            "x.lock",
            "trailing/",
            "@",
            "a@{1}",
            "",
            "ends.",
        ] {
            assert!(check_ref(name).is_err(), "{name}");
        }
    }

    #[test]
    fn the_ext_transport_is_refused_by_git_itself_too() {
        let directory = tempfile::tempdir().unwrap();
        let marker = directory.path().join("marker");
        let url = format!("ext::sh -c touch% {}", marker.display());
        let result = run_blocking(
            directory.path(),
            ["ls-remote", "--", url.as_str()],
            Duration::from_secs(30),
        );
        assert!(result.is_err());
        assert!(!marker.exists(), "git ran the ext:: command");
    }

    #[test]
    fn a_git_that_hangs_is_killed_at_the_timeout() {
        let directory = tempfile::tempdir().unwrap();
        // A shell alias that sleeps stands in for a fetch from a server that never answers.
        let blocking = directory.path().join("block.sh");
        std::fs::write(&blocking, "#!/bin/sh\nexec sleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&blocking, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let result = run_blocking(
            directory.path(),
            [
                "-c".to_string(),
                format!("alias.hang=!{}", blocking.display()),
                "hang".to_string(),
            ],
            Duration::from_millis(300),
        );
        assert!(
            matches!(result, Err(GitError::Timeout { .. })),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn one_repository_is_used_by_one_caller_at_a_time() {
        let locks = Arc::new(RepoLocks::default());
        let inside = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let _guard = locks.lock(Path::new("/repo"));
                        let now = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                        most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                        inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(most.load(std::sync::atomic::Ordering::SeqCst), 1);
        // Another repository is not held up by this one.
        let _held = locks.lock(Path::new("/repo"));
        let _other = locks.lock(Path::new("/other"));
    }
}

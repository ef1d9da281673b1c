//! Process groups: runs one `sh -c` command in a group of its own with a timeout and cancellation, streams its
//! output, kills whatever is left of the group, and says how the process ended.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use polarizer_shared::run::{test_status, Exit, OutputStream, SuiteRef, TestStatus};
use tokio::process::Command;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::output::{read_pipe, OutputCollector, Pipe};
use super::{unix_ms, Emit, RunnerConfig};

/// How long to keep reading once the process group was killed: only a process that left the group (setsid)
/// can still hold the pipes open then, and it must not hold the suite up.
const PIPE_DRAIN_AFTER_EXIT: Duration = Duration::from_secs(5);
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Runs `sh -c command` in its own process group and streams its output until it exits, times out or
/// is cancelled; then kills whatever is left of the group.
pub(super) async fn run_process(
    request: ProcessRequest<'_>,
    emit: &Emit,
    suite: SuiteRef,
    config: &RunnerConfig,
) -> ProcessOutcome {
    let clock = Instant::now();
    let mut outcome = ProcessOutcome {
        exit: Exit::NotStarted,
        cancelled: false,
        timeout: request.timeout,
        spawn_error: None,
        started_ms: unix_ms(),
        duration: Duration::ZERO,
        dropped_bytes: 0,
        tail: String::new(),
    };
    let never_cancelled = CancellationToken::new();
    let cancel = request.cancel.unwrap_or(&never_cancelled);
    if cancel.is_cancelled() {
        outcome.cancelled = true;
        return outcome;
    }

    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(request.command)
        .current_dir(request.working_dir)
        .envs(
            request
                .environment
                .iter()
                .map(|(name, value)| (name, value)),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut collector =
        OutputCollector::new(emit.clone(), suite, request.test, request.hook, config);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let message = format!(
                "cannot start `{}` in {}: {error}",
                request.command,
                request.working_dir.display()
            );
            collector.emit_line(OutputStream::Agent, message);
            outcome.spawn_error = Some(error.to_string());
            return outcome;
        }
    };
    let mut group = ProcessGroup::new(child.id());
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let mut stdout_buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut stderr_buffer = vec![0u8; READ_CHUNK_BYTES];
    let deadline = clock + request.timeout;
    let mut stop: Option<Stop> = None;
    let mut sigkill_at: Option<Instant> = None;
    let mut exit_status: Option<io::Result<ExitStatus>> = None;
    let mut drain_until: Option<Instant> = None;

    loop {
        if exit_status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            read = read_pipe(&mut stdout, &mut stdout_buffer), if stdout.is_some() => match read {
                Ok(0) | Err(_) => {
                    collector.finish_pipe(Pipe::Stdout);
                    stdout = None;
                }
                Ok(count) => collector.accept(Pipe::Stdout, &stdout_buffer[..count]),
            },
            read = read_pipe(&mut stderr, &mut stderr_buffer), if stderr.is_some() => match read {
                Ok(0) | Err(_) => {
                    collector.finish_pipe(Pipe::Stderr);
                    stderr = None;
                }
                Ok(count) => collector.accept(Pipe::Stderr, &stderr_buffer[..count]),
            },
            exited = child.wait(), if exit_status.is_none() => {
                outcome.duration = clock.elapsed();
                // Background leftovers of the group must not keep the pipes open (or keep running).
                group.kill_after_exit();
                exit_status = Some(exited);
                drain_until = Some(Instant::now() + PIPE_DRAIN_AFTER_EXIT);
            }
            () = tokio::time::sleep_until(deadline), if stop.is_none() && exit_status.is_none() => {
                group.signal(libc::SIGTERM);
                stop = Some(Stop::TimedOut);
                sigkill_at = Some(Instant::now() + config.kill_grace);
            }
            () = cancel.cancelled(), if stop.is_none() && exit_status.is_none() => {
                group.signal(libc::SIGTERM);
                stop = Some(Stop::Cancelled);
                sigkill_at = Some(Instant::now() + config.kill_grace);
            }
            () = tokio::time::sleep_until(sigkill_at.unwrap_or(deadline)),
                if sigkill_at.is_some() && exit_status.is_none() => {
                group.signal(libc::SIGKILL);
                sigkill_at = None;
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or(deadline)), if drain_until.is_some() => {
                warn!(command = %request.command, "a process outside the group keeps the output open; not waiting for it");
                break;
            }
        }
    }
    collector.finish_pipe(Pipe::Stdout);
    collector.finish_pipe(Pipe::Stderr);

    if outcome.duration.is_zero() {
        outcome.duration = clock.elapsed();
    }
    outcome.exit = match (stop, exit_status) {
        (Some(Stop::TimedOut), _) => Exit::TimedOut,
        (_, Some(Ok(status))) => exit_from_status(status),
        (_, Some(Err(error))) => {
            warn!(command = %request.command, error = %error, "cannot wait for a process");
            Exit::NotStarted
        }
        (_, None) => Exit::NotStarted,
    };
    outcome.cancelled = stop == Some(Stop::Cancelled);
    outcome.dropped_bytes = collector.dropped_bytes;
    outcome.tail = collector.tail();
    outcome
}

pub(super) struct ProcessRequest<'a> {
    pub(super) command: &'a str,
    pub(super) working_dir: &'a Path,
    pub(super) environment: &'a [(String, String)],
    pub(super) timeout: Duration,
    /// The test the output belongs to ("" for suite hooks).
    pub(super) test: &'a str,
    /// A hook's output all goes to the agent stream; a test keeps stdout and stderr apart.
    pub(super) hook: bool,
    /// `None` for cleanups, which always run to the end.
    pub(super) cancel: Option<&'a CancellationToken>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    TimedOut,
    Cancelled,
}

pub(super) struct ProcessOutcome {
    pub(super) exit: Exit,
    pub(super) cancelled: bool,
    timeout: Duration,
    pub(super) spawn_error: Option<String>,
    pub(super) started_ms: i64,
    pub(super) duration: Duration,
    pub(super) dropped_bytes: u64,
    pub(super) tail: String,
}

impl ProcessOutcome {
    pub(super) fn succeeded(&self) -> bool {
        self.exit == Exit::Code(0) && !self.cancelled
    }

    /// How the process ended, in a few words: "exit code 2", "killed by signal 9", "timed out after 5 s".
    pub(super) fn describe(&self) -> String {
        if let Some(error) = &self.spawn_error {
            return format!("cannot start: {error}");
        }
        if self.cancelled {
            return "cancelled".into();
        }
        match self.exit {
            Exit::Code(127) => "command not found (exit code 127)".into(),
            Exit::Code(code) => format!("exit code {code}"),
            Exit::Signal(signal) => format!("killed by signal {signal}"),
            Exit::TimedOut => format!("timed out after {} s", self.timeout.as_secs()),
            Exit::NotStarted => "not started".into(),
        }
    }
}

/// The message for a test's status: empty for a pass; names the `result` key when it changed the status.
pub(super) fn exit_message(
    status: TestStatus,
    process: &ProcessOutcome,
    result_key: &str,
) -> String {
    if status == TestStatus::Pass {
        return String::new();
    }
    let described = process.describe();
    if status == test_status(process.exit, "") {
        described
    } else {
        format!("{described} (result: {result_key})")
    }
}

fn exit_from_status(status: ExitStatus) -> Exit {
    match (status.code(), status.signal()) {
        (Some(code), _) => Exit::Code(code),
        (None, Some(signal)) => Exit::Signal(signal),
        (None, None) => Exit::NotStarted,
    }
}

/// The process group of a spawned child (its leader's pid, thanks to `process_group(0)`). Killed on drop
/// unless the leader was reaped and the group killed already, so that a dropped runner leaves nothing behind.
struct ProcessGroup {
    pgid: Option<libc::pid_t>,
}

impl ProcessGroup {
    fn new(child_pid: Option<u32>) -> ProcessGroup {
        // Never 0 or 1: kill(0) and kill(-1) would hit the agent's own group or every process.
        let pgid = child_pid
            .and_then(|pid| libc::pid_t::try_from(pid).ok())
            .filter(|pid| *pid > 1);
        ProcessGroup { pgid }
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(pgid) = self.pgid {
            // SAFETY: kill(2) has no memory effects; a negative pid addresses the group. ESRCH (the group
            // is gone already) is the expected failure and needs no handling.
            unsafe {
                libc::kill(-pgid, signal);
            }
        }
    }

    /// Kills what is left after the leader exited, once; afterwards the pgid may be reused.
    fn kill_after_exit(&mut self) {
        self.signal(libc::SIGKILL);
        self.pgid = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::path::Path;
    use std::time::Duration;

    use polarizer_shared::run::{Exit, TestStatus};
    use tokio::time::Instant;

    use crate::runner::fixture::{fixture, outcome, test, wait_for};

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group_and_cleanup_still_runs() {
        let fixture = fixture();
        let pid_file = fixture.path("background.pid");
        let marker = fixture.path("cleaned");
        let mut sleeper = test(
            "/t/sleep",
            &format!("sleep 60 & echo $! > '{pid_file}'; sleep 30"),
        );
        sleeper.duration_seconds = 1;
        sleeper.cleanup = vec![format!("touch '{marker}'")];
        let started = Instant::now();
        let records = fixture.run(fixture.assignment(vec![sleeper])).await;

        assert!(started.elapsed() < Duration::from_secs(20));
        let outcome = outcome(&records, "/t/sleep");
        assert_eq!(outcome.status, TestStatus::Timeout);
        assert_eq!(outcome.exit, Exit::TimedOut);
        assert_eq!(outcome.message, "timed out after 1 s");
        assert!(Path::new(&marker).exists(), "cleanup ran");
        let pid: libc::pid_t = std::fs::read_to_string(&pid_file)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid");
        wait_for(
            "the background sleep to die",
            Duration::from_secs(10),
            || process_is_gone(pid),
        )
        .await;
    }

    /// Gone, or a zombie waiting for its new parent to reap it: either way it no longer runs.
    fn process_is_gone(pid: libc::pid_t) -> bool {
        // SAFETY: signal 0 only checks for existence.
        if unsafe { libc::kill(pid, 0) } != 0 {
            return io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        }
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|fields| fields.trim_start().starts_with('Z'))
        })
    }
}

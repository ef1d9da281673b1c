//! Output capture: turns the chunks a process writes into line records, capped per line and per test (the
//! rest is counted and dropped), and keeps the last bytes as the test's tail.

use std::collections::VecDeque;
use std::io;

use polarizer_shared::run::{OutputStream, RecordBody, SuiteRef};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Emit, RunnerConfig};

const TRUNCATION_NOTE: &str = "output truncated: further output is counted, not kept";

pub(super) async fn read_pipe<R: AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buffer: &mut [u8],
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read(buffer).await,
        None => std::future::pending().await,
    }
}

#[derive(Clone, Copy, Debug)]
pub(super) enum Pipe {
    Stdout = 0,
    Stderr = 1,
}

/// Turns raw output chunks into line records: lines are capped at `output_line_bytes`, the total at
/// `output_bytes_per_test` (the rest is counted), and the last `tail_bytes` are kept. Memory is bounded by
/// those limits whatever the process writes.
pub(super) struct OutputCollector {
    emit: Emit,
    suite: SuiteRef,
    test: String,
    hook: bool,
    line_limit: usize,
    budget_remaining: u64,
    truncated: bool,
    pub(super) dropped_bytes: u64,
    /// The unfinished line of each pipe, never longer than `line_limit`.
    pending: [Vec<u8>; 2],
    tail: VecDeque<u8>,
    tail_limit: usize,
}

impl OutputCollector {
    pub(super) fn new(
        emit: Emit,
        suite: SuiteRef,
        test: &str,
        hook: bool,
        config: &RunnerConfig,
    ) -> OutputCollector {
        OutputCollector {
            emit,
            suite,
            test: test.to_string(),
            hook,
            line_limit: config.output_line_bytes.max(1),
            budget_remaining: config.output_bytes_per_test,
            truncated: false,
            dropped_bytes: 0,
            pending: [Vec::new(), Vec::new()],
            tail: VecDeque::new(),
            tail_limit: config.tail_bytes,
        }
    }

    pub(super) fn accept(&mut self, pipe: Pipe, chunk: &[u8]) {
        self.remember_tail(chunk);
        let kept_length = usize::try_from(self.budget_remaining)
            .unwrap_or(usize::MAX)
            .min(chunk.len());
        let (kept, dropped) = chunk.split_at(kept_length);
        self.budget_remaining -= kept_length as u64;
        self.split_lines(pipe, kept);
        if dropped.is_empty() {
            return;
        }
        self.dropped_bytes += dropped.len() as u64;
        if !self.truncated {
            self.truncated = true;
            self.finish_pipe(Pipe::Stdout);
            self.finish_pipe(Pipe::Stderr);
            self.emit_line(OutputStream::Agent, TRUNCATION_NOTE.to_string());
        }
    }

    fn split_lines(&mut self, pipe: Pipe, mut rest: &[u8]) {
        let index = pipe as usize;
        while !rest.is_empty() {
            if self.pending[index].len() >= self.line_limit {
                // A full piece: it is the whole line if a newline follows right away.
                if rest[0] == b'\n' {
                    rest = &rest[1..];
                }
                self.emit_pending(pipe);
                continue;
            }
            let room = self.line_limit - self.pending[index].len();
            let window = &rest[..room.min(rest.len())];
            match window.iter().position(|byte| *byte == b'\n') {
                Some(newline) => {
                    self.pending[index].extend_from_slice(&rest[..newline]);
                    self.emit_pending(pipe);
                    rest = &rest[newline + 1..];
                }
                None => {
                    self.pending[index].extend_from_slice(window);
                    rest = &rest[window.len()..];
                }
            }
        }
    }

    /// Emits the unfinished line of a pipe that ended (or before the truncation note).
    pub(super) fn finish_pipe(&mut self, pipe: Pipe) {
        if !self.pending[pipe as usize].is_empty() {
            self.emit_pending(pipe);
        }
    }

    fn emit_pending(&mut self, pipe: Pipe) {
        let line = String::from_utf8_lossy(&self.pending[pipe as usize]).into_owned();
        self.pending[pipe as usize].clear();
        let stream = match (self.hook, pipe) {
            (true, _) => OutputStream::Agent,
            (false, Pipe::Stdout) => OutputStream::Stdout,
            (false, Pipe::Stderr) => OutputStream::Stderr,
        };
        self.emit_line(stream, line);
    }

    pub(super) fn emit_line(&self, stream: OutputStream, line: String) {
        (self.emit)(RecordBody::Output {
            suite: self.suite,
            test: self.test.clone(),
            stream,
            line,
        });
    }

    fn remember_tail(&mut self, chunk: &[u8]) {
        if self.tail_limit == 0 {
            return;
        }
        let chunk = &chunk[chunk.len().saturating_sub(self.tail_limit)..];
        let overflow = (self.tail.len() + chunk.len()).saturating_sub(self.tail_limit);
        self.tail.drain(..overflow);
        self.tail.extend(chunk);
    }

    pub(super) fn tail(&mut self) -> String {
        String::from_utf8_lossy(self.tail.make_contiguous()).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use polarizer_shared::run::{OutputStream, RecordBody, TestStatus};

    use super::{OutputCollector, Pipe, TRUNCATION_NOTE};
    use crate::runner::fixture::{fixture, outcome, output_lines, recorder, test, SUITE};
    use crate::runner::RunnerConfig;

    #[tokio::test]
    async fn output_is_capped_drained_and_split() {
        let mut fixture = fixture();
        fixture.config.output_bytes_per_test = 1024 * 1024;
        let records = fixture
            .run(fixture.assignment(vec![
                test("/t/garbage", "head -c 20000000 /dev/urandom"),
                test("/t/long", "head -c 10000 /dev/zero | tr '\\0' a"),
            ]))
            .await;

        let garbage = outcome(&records, "/t/garbage");
        assert_eq!(garbage.status, TestStatus::Pass);
        assert!(
            garbage.message.starts_with("output truncated: "),
            "{}",
            garbage.message
        );
        // Lossy decoding turns each byte into at most one character.
        let kept_characters: usize = [OutputStream::Stdout, OutputStream::Stderr]
            .into_iter()
            .flat_map(|stream| output_lines(&records, "/t/garbage", stream))
            .map(|line| line.chars().count())
            .sum();
        assert!(kept_characters <= 1024 * 1024, "{kept_characters}");
        assert_eq!(
            output_lines(&records, "/t/garbage", OutputStream::Agent),
            [TRUNCATION_NOTE]
        );
        assert!(garbage.output_tail.chars().count() <= fixture.config.tail_bytes);

        let long = outcome(&records, "/t/long");
        assert_eq!(long.status, TestStatus::Pass);
        assert_eq!(long.message, "");
        let pieces: Vec<usize> = output_lines(&records, "/t/long", OutputStream::Stdout)
            .iter()
            .map(|line| line.len())
            .collect();
        assert_eq!(pieces, [8192, 10000 - 8192]);
        assert_eq!(long.output_tail, "a".repeat(10000));
    }

    #[test]
    fn lines_are_split_on_newlines_and_at_the_line_limit() {
        let (emit, records) = recorder();
        let mut config = RunnerConfig::new(Path::new("/nonexistent"));
        config.output_line_bytes = 4;
        config.output_bytes_per_test = 20;
        config.tail_bytes = 5;
        let mut collector = OutputCollector::new(emit, SUITE, "/t", false, &config);
        collector.accept(Pipe::Stdout, b"ab\ncdef");
        collector.accept(Pipe::Stderr, b"\xff\xfe");
        collector.accept(Pipe::Stdout, b"\nghijk");
        collector.accept(Pipe::Stdout, b"lm\nnopqrstuvwxyz");
        collector.finish_pipe(Pipe::Stdout);
        collector.finish_pipe(Pipe::Stderr);
        let records = records.lock().expect("records").clone();
        let lines: Vec<(OutputStream, &str)> = records
            .iter()
            .filter_map(|record| match record {
                RecordBody::Output { stream, line, .. } => Some((*stream, line.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(
            lines,
            [
                (OutputStream::Stdout, "ab"),
                (OutputStream::Stdout, "cdef"),
                (OutputStream::Stdout, "ghij"),
                (OutputStream::Stdout, "klm"),
                (OutputStream::Stdout, "no"),
                (OutputStream::Stderr, "\u{fffd}\u{fffd}"),
                (OutputStream::Agent, TRUNCATION_NOTE),
            ]
        );
        assert_eq!(collector.dropped_bytes, 11);
        assert_eq!(collector.tail(), "vwxyz");
    }
}

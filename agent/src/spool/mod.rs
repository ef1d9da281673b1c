//! The agent's spool of unacknowledged records: every record gets the next per-agent sequence number, is
//! written to `spool.log` in the state directory (one frame each, written through to the OS before it is
//! sent, so a killed agent loses nothing), and stays until the coordinator acknowledges it is committed.
//! When everything is acknowledged the file is emptied and the next sequence number is kept in
//! `spool.seq`. The spool is bounded: past the limit the oldest output lines are dropped (results never
//! are) and counted.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use polarizer_shared::events::{Correlation, Event};
use polarizer_shared::frame::{self, FrameDecoder};
use polarizer_shared::run::{Record, RecordBody};
use polarizer_transport::state_files::{ensure_private_dir, write_private};
use tokio::sync::Notify;

const LOG_FILE: &str = "spool.log";
const SEQ_FILE: &str = "spool.seq";
/// Rewrite the log once it holds this much acknowledged data (and more than what is pending).
const COMPACT_BYTES: u64 = 8 * 1024 * 1024;
/// Unacknowledged records kept in memory; beyond this they are only on disk until sent (the agent stays
/// small while the coordinator is away).
const MEMORY_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    StateFile(#[from] polarizer_transport::state_files::StateFileError),
    #[error("spool {path}: record of {bytes} bytes cannot be encoded: {reason}")]
    Encode {
        path: PathBuf,
        bytes: usize,
        reason: String,
    },
}

struct Pending {
    seq: u64,
    /// Where its frame starts in the log, and its length with the prefix.
    offset: u64,
    bytes: u64,
    /// Its frame (prefix included), kept in memory while the memory budget allows; otherwise read back
    /// from the log to send.
    frame: Option<Vec<u8>>,
}

pub struct Spool {
    directory: PathBuf,
    /// Buffered: written through before anything is sent (see `unsent`), and synced for results.
    log: std::io::BufWriter<File>,
    next_seq: u64,
    pending: VecDeque<Pending>,
    pending_bytes: u64,
    log_bytes: u64,
    /// Bytes of the pending records held in memory.
    memory_bytes: u64,
    limit_bytes: u64,
    /// Events and output lines dropped because the spool was full, by kind, not yet reported.
    dropped: std::collections::BTreeMap<String, u64>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

impl Spool {
    /// Opens the spool in `directory`, reloading what a previous process left unacknowledged. A frame
    /// cut short by a crash is dropped (it was never sent: sending follows the write).
    pub fn open(directory: &Path, limit_bytes: u64) -> Result<Spool, SpoolError> {
        ensure_private_dir(directory)?;
        let log_path = directory.join(LOG_FILE);
        let mut log = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&log_path)
            .map_err(io_error(&log_path))?;
        let mut bytes = Vec::new();
        log.read_to_end(&mut bytes).map_err(io_error(&log_path))?;
        let mut decoder = FrameDecoder::new();
        decoder.push(&bytes);
        let mut pending = VecDeque::new();
        let mut good_bytes = 0u64;
        let mut memory_bytes = 0u64;
        while let Ok(Some(frame_bytes)) = decoder.next_frame_bytes() {
            let Ok(record) = frame::decode::<Record>(frame_bytes) else {
                break;
            };
            let length = frame_bytes.len() as u64 + 4;
            let in_memory = memory_bytes + length <= MEMORY_BYTES;
            if in_memory {
                memory_bytes += length;
            }
            pending.push_back(Pending {
                seq: record.seq,
                offset: good_bytes,
                bytes: length,
                frame: in_memory
                    .then(|| bytes[good_bytes as usize..(good_bytes + length) as usize].to_vec()),
            });
            good_bytes += length;
        }
        if good_bytes < bytes.len() as u64 {
            tracing::warn!(spool = %log_path.display(), kept = good_bytes, cut = bytes.len() as u64 - good_bytes, "spool ended inside a record (the agent was killed while writing it); dropping the partial record");
            log.set_len(good_bytes).map_err(io_error(&log_path))?;
        }
        log.seek(SeekFrom::End(0)).map_err(io_error(&log_path))?;
        let stored_next = std::fs::read_to_string(directory.join(SEQ_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(1);
        let after_pending = pending.back().map_or(1, |last: &Pending| last.seq + 1);
        let pending_bytes = pending.iter().map(|entry| entry.bytes).sum();
        Ok(Spool {
            directory: directory.to_path_buf(),
            log: std::io::BufWriter::with_capacity(256 * 1024, log),
            next_seq: stored_next.max(after_pending).max(1),
            pending,
            pending_bytes,
            log_bytes: good_bytes,
            memory_bytes,
            limit_bytes,
            dropped: Default::default(),
        })
    }

    /// Gives `body` the next sequence number and writes it through. Returns its sequence number.
    pub fn push(&mut self, body: RecordBody) -> Result<u64, SpoolError> {
        if !self.dropped.is_empty() && self.pending_bytes < self.limit_bytes / 2 {
            let dropped = std::mem::take(&mut self.dropped);
            let kinds: Vec<String> = dropped
                .iter()
                .map(|(kind, count)| format!("{count} {kind}"))
                .collect();
            self.append(RecordBody::Event {
                correlation: None,
                event: Event {
                    kind: polarizer_shared::events::kind::DROPPED.into(),
                    summary: format!(
                        "spool full ({} MiB): dropped the oldest {}",
                        self.limit_bytes >> 20,
                        kinds.join(", ")
                    ),
                    data: serde_json::json!({ "dropped": dropped }).to_string(),
                },
            })?;
        }
        let is_result = body.is_result();
        if !is_result && self.pending_bytes >= self.limit_bytes {
            let kind = match &body {
                RecordBody::Event { event, .. } => event.kind.clone(),
                _ => polarizer_shared::events::kind::OUTPUT.to_string(),
            };
            *self.dropped.entry(kind).or_default() += 1;
            return Ok(0);
        }
        let seq = self.append(body)?;
        if is_result {
            // Results survive a machine crash too, not only a killed agent.
            let log_path = self.directory.join(LOG_FILE);
            self.log.flush().map_err(io_error(&log_path))?;
            self.log
                .get_ref()
                .sync_data()
                .map_err(io_error(&log_path))?;
        }
        Ok(seq)
    }

    fn append(&mut self, body: RecordBody) -> Result<u64, SpoolError> {
        let record = Record {
            seq: self.next_seq,
            at_ms: now_ms(),
            body,
        };
        let log_path = self.directory.join(LOG_FILE);
        let encoded = frame::encode(&record).map_err(|err| SpoolError::Encode {
            path: log_path.clone(),
            bytes: 0,
            reason: err.to_string(),
        })?;
        self.log.write_all(&encoded).map_err(io_error(&log_path))?;
        self.next_seq += 1;
        let bytes = encoded.len() as u64;
        let in_memory = self.memory_bytes + bytes <= MEMORY_BYTES;
        if in_memory {
            self.memory_bytes += bytes;
        }
        self.pending.push_back(Pending {
            seq: record.seq,
            offset: self.log_bytes,
            bytes,
            frame: in_memory.then_some(encoded),
        });
        self.log_bytes += bytes;
        self.pending_bytes += bytes;
        Ok(self.next_seq - 1)
    }

    /// The coordinator has committed everything up to `up_to`: forget it.
    pub fn acknowledge(&mut self, up_to: u64) -> Result<(), SpoolError> {
        while self.pending.front().is_some_and(|entry| entry.seq <= up_to) {
            if let Some(entry) = self.pending.pop_front() {
                self.pending_bytes -= entry.bytes;
                if entry.frame.is_some() {
                    self.memory_bytes -= entry.bytes;
                }
            }
        }
        // A coordinator that has committed more than we ever numbered (our state dir was restored from
        // an old backup) must not see those numbers again.
        self.next_seq = self.next_seq.max(up_to + 1);
        let drained = self.pending.is_empty() && self.log_bytes > 0;
        let mostly_acknowledged =
            self.log_bytes > COMPACT_BYTES && self.log_bytes > 4 * self.pending_bytes;
        if drained || mostly_acknowledged {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Rewrites the log with only the pending records, and records the next sequence number.
    fn rewrite(&mut self) -> Result<(), SpoolError> {
        write_private(
            &self.directory.join(SEQ_FILE),
            self.next_seq.to_string().as_bytes(),
        )?;
        let log_path = self.directory.join(LOG_FILE);
        let temporary = self.directory.join("spool.log.new");
        self.log.flush().map_err(io_error(&log_path))?;
        let mut out = Vec::with_capacity(self.pending_bytes as usize);
        for index in 0..self.pending.len() {
            let frame_bytes = self.frame_bytes(index)?;
            let entry = &mut self.pending[index];
            entry.offset = out.len() as u64;
            out.extend_from_slice(&frame_bytes);
        }
        write_private(&temporary, &out)?;
        std::fs::rename(&temporary, &log_path).map_err(io_error(&log_path))?;
        self.log = std::io::BufWriter::with_capacity(
            256 * 1024,
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&log_path)
                .map_err(io_error(&log_path))?,
        );
        self.log_bytes = out.len() as u64;
        Ok(())
    }

    /// Writes buffered records through to the file (the OS has them: a killed agent keeps them).
    pub fn flush(&mut self) {
        if let Err(err) = self.log.flush() {
            tracing::error!(error = %err, spool = %self.directory.display(), "cannot write the spool");
        }
    }

    /// The frame of pending record `index` as it is in the log (prefix included).
    fn frame_bytes(&self, index: usize) -> Result<Vec<u8>, SpoolError> {
        use std::os::unix::fs::FileExt;
        let entry = &self.pending[index];
        let log_path = self.directory.join(LOG_FILE);
        match &entry.frame {
            Some(frame) => Ok(frame.clone()),
            None => {
                let mut bytes = vec![0; entry.bytes as usize];
                self.log
                    .get_ref()
                    .read_exact_at(&mut bytes, entry.offset)
                    .map_err(io_error(&log_path))?;
                Ok(bytes)
            }
        }
    }

    /// Up to `max` pending records after sequence number `after`, decoded (the session sends
    /// [`unsent_frame`](Self::unsent_frame) instead; this is how tests look inside).
    #[cfg(test)]
    fn unsent(&mut self, after: u64, max: usize) -> Vec<Record> {
        self.flush();
        let start = self.pending.partition_point(|entry| entry.seq <= after);
        let end = (start + max).min(self.pending.len());
        let mut out = Vec::with_capacity(end - start);
        for index in start..end {
            let read = self.frame_bytes(index).and_then(|bytes| {
                frame::decode::<Record>(&bytes[4..]).map_err(|err| SpoolError::Encode {
                    path: self.directory.join(LOG_FILE),
                    bytes: bytes.len(),
                    reason: err.to_string(),
                })
            });
            match read {
                Ok(record) => out.push(record),
                Err(err) => {
                    tracing::error!(error = %err, "cannot read a spooled record back");
                    break;
                }
            }
        }
        out
    }

    /// The next frame to send: up to `max` pending records after `after`, as one `Records` frame built
    /// from their spooled bytes, and the last sequence number in it.
    pub fn unsent_frame(&mut self, after: u64, max: usize) -> Option<(Vec<u8>, u64)> {
        self.flush();
        let start = self.pending.partition_point(|entry| entry.seq <= after);
        let end = (start + max).min(self.pending.len());
        let mut frames = Vec::with_capacity(end - start);
        let mut last = None;
        for index in start..end {
            match self.frame_bytes(index) {
                Ok(bytes) => {
                    frames.push(bytes);
                    last = Some(self.pending[index].seq);
                }
                Err(err) => {
                    // Sending stops here; the records stay spooled and are tried again.
                    tracing::error!(error = %err, "cannot read a spooled record back");
                    break;
                }
            }
        }
        let last = last?;
        let bodies: Vec<&[u8]> = frames.iter().map(|frame| &frame[4..]).collect();
        Some((polarizer_shared::protocol::records_frame(&bodies), last))
    }

    #[cfg(test)]
    fn pending_count(&self) -> usize {
        self.pending.len()
    }
}

/// The spool as the agent's tasks share it: the runner pushes, the session sends and acknowledges.
#[derive(Clone)]
pub struct SharedSpool {
    inner: Arc<Mutex<Spool>>,
    pub pushed: Arc<Notify>,
    /// What runs on this agent now, learnt from the runner's own records: events are stamped with it.
    running: Arc<Mutex<Option<Correlation>>>,
}

impl SharedSpool {
    pub fn new(spool: Spool) -> SharedSpool {
        SharedSpool {
            inner: Arc::new(Mutex::new(spool)),
            pushed: Arc::new(Notify::new()),
            running: Arc::new(Mutex::new(None)),
        }
    }

    /// Records an event from a collector, correlated with the suite and test running now.
    pub fn push_event(&self, event: Event) {
        let correlation = self.running.lock().expect("running lock").clone();
        self.push(RecordBody::Event { correlation, event });
    }

    pub fn push(&self, body: RecordBody) {
        {
            let mut running = self.running.lock().expect("running lock");
            match &body {
                RecordBody::SuiteStarted { suite, .. } => {
                    *running = Some(Correlation {
                        suite: *suite,
                        test: String::new(),
                    })
                }
                RecordBody::TestStarted { suite, test } => {
                    *running = Some(Correlation {
                        suite: *suite,
                        test: test.clone(),
                    })
                }
                RecordBody::TestFinished(outcome) => {
                    *running = Some(Correlation {
                        suite: outcome.suite,
                        test: String::new(),
                    })
                }
                RecordBody::SuiteFinished { .. } => *running = None,
                _ => {}
            }
        }
        let outcome = self.inner.lock().expect("spool lock").push(body);
        match outcome {
            Ok(_) => self.pushed.notify_one(),
            // The disk is full or gone: the record cannot be kept, and saying so is all that is left.
            Err(err) => tracing::error!(error = %err, "cannot spool a record"),
        }
    }

    pub fn with<T>(&self, action: impl FnOnce(&mut Spool) -> T) -> T {
        action(&mut self.inner.lock().expect("spool lock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::run::{OutputStream, SuiteRef};

    fn output(line: &str) -> RecordBody {
        RecordBody::Output {
            suite: SuiteRef {
                run: 1,
                suite: 1,
                attempt: 1,
            },
            test: "/t".into(),
            stream: OutputStream::Stdout,
            line: line.into(),
        }
    }

    fn finished() -> RecordBody {
        RecordBody::SuiteFinished {
            suite: SuiteRef {
                run: 1,
                suite: 1,
                attempt: 1,
            },
            error: None,
        }
    }

    #[test]
    fn records_survive_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.push(output("a")).unwrap(), 1);
        assert_eq!(spool.push(finished()).unwrap(), 2);
        assert_eq!(spool.push(output("c")).unwrap(), 3);
        drop(spool);

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let seqs: Vec<u64> = spool.unsent(0, 10).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(spool.unsent(1, 1)[0].seq, 2);
        spool.acknowledge(2).unwrap();
        assert_eq!(spool.pending_count(), 1);
        spool.acknowledge(3).unwrap();
        assert_eq!(spool.pending_count(), 0);
        drop(spool);

        // Emptied, yet numbering goes on where it stopped: the coordinator must never see a seq twice.
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending_count(), 0);
        assert_eq!(spool.push(output("d")).unwrap(), 4);
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(output("whole")).unwrap();
        drop(spool);
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.path().join(LOG_FILE))
            .unwrap();
        file.write_all(&[0, 0, 0, 50, 1, 2]).unwrap();
        drop(file);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending_count(), 1);
        assert_eq!(spool.push(output("next")).unwrap(), 2);
        drop(spool);
        assert_eq!(
            Spool::open(dir.path(), 1 << 20)
                .unwrap()
                .unsent(0, 10)
                .len(),
            2
        );
    }

    #[test]
    fn a_full_spool_drops_output_never_results_and_says_how_many() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 200).unwrap();
        let mut kept = 0;
        for index in 0..100 {
            if spool.push(output(&format!("line {index}"))).unwrap() > 0 {
                kept += 1;
            }
        }
        assert!(kept < 100, "the limit must bite");
        let result_seq = spool.push(finished()).unwrap();
        assert!(result_seq > 0, "results are never dropped");
        spool.acknowledge(result_seq).unwrap();
        spool.push(output("after")).unwrap();
        let notes: Vec<String> = spool
            .unsent(0, 10)
            .into_iter()
            .filter_map(|record| match record.body {
                RecordBody::Event { event, .. } if event.kind == "dropped" => Some(event.summary),
                _ => None,
            })
            .collect();
        assert_eq!(
            notes,
            [format!(
                "spool full (0 MiB): dropped the oldest {} output",
                100 - kept
            )]
        );
    }

    #[test]
    fn past_the_memory_budget_records_are_read_back_from_disk_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let line = "x".repeat(64 * 1024);
        let count = 100; // 6.4 MiB: past the 4 MiB kept in memory
        for index in 0..count {
            spool.push(output(&format!("{index} {line}"))).unwrap();
        }
        assert!(spool.memory_bytes <= MEMORY_BYTES);
        let lines = |spool: &mut Spool, after: u64| -> Vec<u64> {
            spool
                .unsent(after, 1000)
                .iter()
                .map(|record| record.seq)
                .collect()
        };
        assert_eq!(lines(&mut spool, 0), (1..=count).collect::<Vec<_>>());
        // Compaction keeps the on-disk ones readable, at their new offsets.
        spool.acknowledge(10).unwrap();
        spool.rewrite().unwrap();
        assert_eq!(lines(&mut spool, 0), (11..=count).collect::<Vec<_>>());
        let last = spool.unsent(count - 1, 10);
        match &last[0].body {
            RecordBody::Output { line: text, .. } => assert!(text.starts_with("99 x")),
            other => panic!("{other:?}"),
        }
        drop(spool);
        let mut reopened = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(lines(&mut reopened, 0), (11..=count).collect::<Vec<_>>());
    }

    #[test]
    fn acknowledging_past_the_numbering_moves_it_forward() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.acknowledge(41).unwrap();
        assert_eq!(spool.push(output("x")).unwrap(), 42);
    }
}

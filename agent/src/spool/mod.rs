//! The agent's spool of unacknowledged records: every record gets the next per-agent sequence number, is
//! written to `spool.log` in the state directory, and stays until the coordinator acknowledges it is
//! committed. A record is written through to the OS before it is handed out to send (a killed agent
//! loses nothing), and a result is fsynced before it, or anything after it, is handed out (a crashed
//! machine loses no result the coordinator may have seen). When everything is acknowledged and the file
//! holds 1 MiB or more it is emptied, and the next sequence number is kept in `spool.seq`. The spool is bounded: past the limit
//! output and events are dropped (results never are) and counted, and the count is sent as a `dropped`
//! event.
//!
//! - `format`: how records lie in the file: each framed with a checksum and a version, so one damaged
//!   record is skipped (and reported as dropped) instead of ending the spool there.
//! - `writer`: the thread that owns the spool, and [`SharedSpool`], the handle the agent's tasks use.

mod format;
mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use polarizer_shared::events::Event;
use polarizer_shared::record_codec::{self, MAX_RECORD_BYTES};
use polarizer_shared::run::{Record, RecordBody};
use polarizer_transport::state_files::{ensure_private_dir, write_private};

pub use writer::{SharedSpool, EVENT_BATCH};

const LOG_FILE: &str = "spool.log";
const SEQ_FILE: &str = "spool.seq";
/// Rewrite the log once it holds this much acknowledged data (and more than what is pending).
const COMPACT_BYTES: u64 = 8 * 1024 * 1024;
/// A log whose records are all acknowledged is emptied once it holds this much. Emptying costs four
/// fsyncs (the sequence file, the log, their directory), too many to pay at every acknowledgement that
/// catches up; records left behind are trimmed again by the next session's welcome.
const DRAINED_REWRITE_BYTES: u64 = 1024 * 1024;
/// Unacknowledged records kept in memory; beyond this they are only on disk until sent (the agent stays
/// small while the coordinator is away).
const MEMORY_BYTES: u64 = 4 * 1024 * 1024;
const HEADER_BYTES: u64 = format::HEADER_BYTES as u64;

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
    #[error("cannot start the spool's writer thread: {0}")]
    Thread(#[source] std::io::Error),
}

struct Pending {
    seq: u64,
    /// Where its payload starts in the log (its header is just before), and the payload's length.
    payload_offset: u64,
    payload_bytes: u64,
    /// Its payload (an encoded `Record`), kept in memory while the memory budget allows; otherwise read
    /// back from the log to send.
    payload: Option<Vec<u8>>,
}

impl Pending {
    fn record_bytes(&self) -> u64 {
        HEADER_BYTES + self.payload_bytes
    }
}

/// What opening a spool found that was not a whole record, reported as a `dropped` event.
#[derive(Debug, Default)]
struct Damage {
    /// Stretches of the file that held no valid record, and their bytes.
    regions: u64,
    bytes: u64,
    /// Records lost in them, counted from the gaps they left in the sequence numbers (at least one each).
    records: u64,
    /// Why, in a few words each (a record written by a newer agent, undecodable, out of order).
    reasons: BTreeMap<String, u64>,
}

pub struct Spool {
    directory: PathBuf,
    /// Buffered: written through before anything is sent (see `make_durable`).
    log: std::io::BufWriter<File>,
    next_seq: u64,
    pending: VecDeque<Pending>,
    /// Bytes of the pending records in the log, headers included.
    pending_bytes: u64,
    log_bytes: u64,
    /// Bytes of the pending payloads held in memory.
    memory_bytes: u64,
    limit_bytes: u64,
    /// Events and output lines dropped because the spool was full, by kind, not yet reported.
    dropped: BTreeMap<String, u64>,
    /// The same, dropped because the writer thread fell behind (see `writer`).
    dropped_behind: BTreeMap<String, u64>,
    /// The same, lost because the log could not be written (a full disk), and the last such error.
    unwritable: BTreeMap<String, u64>,
    unwritable_error: String,
    /// A result was written since the last fsync.
    unsynced_result: bool,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// Decodes a payload of `version` into a record as this agent sends it.
fn decode_payload(version: u8, payload: &[u8]) -> Result<Record, String> {
    match version {
        format::PAYLOAD_POSTCARD_V1 => match postcard::take_from_bytes::<Record>(payload) {
            Ok((record, [])) => Ok(record),
            Ok(_) => Err("bytes after the record".into()),
            Err(err) => Err(format!("undecodable: {err}")),
        },
        newer => Err(format!("record format {newer}, written by a newer agent")),
    }
}

impl Spool {
    /// Opens the spool in `directory`, reloading what a previous process left unacknowledged. A record
    /// cut short by a crash is dropped (it was never sent: sending follows the write); a damaged record is
    /// skipped, the records after it kept, and the loss sent as a `dropped` event. A file holding anything
    /// but whole current records (damage, a torn tail, records of an earlier format) is rewritten clean.
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
        let mut pending = VecDeque::new();
        let mut damage = Damage::default();
        let mut needs_rewrite = false;
        let mut last_seq = 0u64;
        // Damage was seen since the last good record: the next one tells how many records it held.
        let mut damage_before_next = false;
        for item in format::scan(&bytes) {
            let (version, payload) = match item {
                format::Scanned::Record { version, payload } => (version, payload),
                format::Scanned::Legacy { payload } => {
                    needs_rewrite = true;
                    (format::PAYLOAD_POSTCARD_V1, payload)
                }
                format::Scanned::Damaged { bytes: range } => {
                    tracing::warn!(spool = %log_path.display(), from = range.start, bytes = range.len(), "damaged spool record; skipping it and keeping the records after it");
                    damage.regions += 1;
                    damage.bytes += range.len() as u64;
                    damage_before_next = true;
                    needs_rewrite = true;
                    continue;
                }
                format::Scanned::TornTail { from } => {
                    tracing::warn!(spool = %log_path.display(), kept = from, cut = bytes.len() - from, "spool ended inside a record (the agent was killed while writing it); dropping the partial record");
                    needs_rewrite = true;
                    continue;
                }
            };
            let decoded = decode_payload(version, &bytes[payload.clone()]).and_then(|record| {
                if record.seq > last_seq {
                    Ok(record)
                } else {
                    Err("out of order".into())
                }
            });
            let record = match decoded {
                Ok(record) => record,
                Err(reason) => {
                    tracing::warn!(spool = %log_path.display(), from = payload.start, reason, "unreadable spool record; skipping it");
                    *damage.reasons.entry(reason).or_default() += 1;
                    damage.records += 1;
                    needs_rewrite = true;
                    continue;
                }
            };
            if damage_before_next {
                damage.records += (record.seq - last_seq - 1).max(1);
                damage_before_next = false;
            }
            last_seq = record.seq;
            // Whatever an earlier agent spooled is sent the way this one sends records: within the limit.
            let kept =
                if version == format::PAYLOAD_POSTCARD_V1 && payload.len() <= MAX_RECORD_BYTES {
                    bytes[payload.clone()].to_vec()
                } else {
                    needs_rewrite = true;
                    record_codec::encode_record(&record)
                        .map_err(|err| SpoolError::Encode {
                            path: log_path.clone(),
                            bytes: payload.len(),
                            reason: err.to_string(),
                        })?
                        .bytes
                };
            pending.push_back(Pending {
                seq: record.seq,
                payload_offset: payload.start as u64,
                payload_bytes: kept.len() as u64,
                payload: Some(kept),
            });
        }
        if damage_before_next {
            damage.records += 1;
        }
        drop(bytes);
        log.seek(SeekFrom::End(0)).map_err(io_error(&log_path))?;
        let stored_next = std::fs::read_to_string(directory.join(SEQ_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(1);
        let log_bytes = log.metadata().map_err(io_error(&log_path))?.len();
        let mut spool = Spool {
            directory: directory.to_path_buf(),
            log: std::io::BufWriter::with_capacity(256 * 1024, log),
            next_seq: stored_next.max(last_seq + 1).max(1),
            pending_bytes: pending.iter().map(Pending::record_bytes).sum(),
            memory_bytes: pending.iter().map(|entry| entry.payload_bytes).sum(),
            pending,
            log_bytes,
            limit_bytes,
            dropped: Default::default(),
            dropped_behind: Default::default(),
            unwritable: Default::default(),
            unwritable_error: String::new(),
            unsynced_result: false,
        };
        if needs_rewrite {
            spool.rewrite()?;
        }
        spool.release_memory();
        if damage.regions > 0 || damage.records > 0 {
            spool.report_damage(damage)?;
        }
        Ok(spool)
    }

    /// Keeps only the oldest pending payloads in memory, within the budget; the rest are read back.
    fn release_memory(&mut self) {
        let mut kept = 0;
        for entry in &mut self.pending {
            if entry.payload.is_some() {
                if kept + entry.payload_bytes <= MEMORY_BYTES {
                    kept += entry.payload_bytes;
                } else {
                    entry.payload = None;
                }
            }
        }
        self.memory_bytes = kept;
    }

    fn report_damage(&mut self, damage: Damage) -> Result<(), SpoolError> {
        let mut why: Vec<String> = vec![format!(
            "{} damaged stretch{} of {} bytes",
            damage.regions,
            if damage.regions == 1 { "" } else { "es" },
            damage.bytes
        )];
        why.extend(
            damage
                .reasons
                .iter()
                .map(|(reason, count)| format!("{count} {reason}")),
        );
        self.append(
            RecordBody::Event {
                correlation: None,
                event: Event {
                    kind: polarizer_shared::events::kind::DROPPED.into(),
                    summary: format!(
                        "spool damaged: dropped {} record{} ({})",
                        damage.records,
                        if damage.records == 1 { "" } else { "s" },
                        why.join(", ")
                    ),
                    data: serde_json::json!({
                        "dropped": { "damaged spool record": damage.records },
                        "damaged_bytes": damage.bytes,
                        "reasons": damage.reasons,
                    })
                    .to_string(),
                },
            },
            now_ms(),
        )?;
        self.make_durable()
    }

    /// Gives `body` the next sequence number and writes it (see [`push_at`](Self::push_at)).
    pub fn push(&mut self, body: RecordBody) -> Result<u64, SpoolError> {
        self.push_at(body, now_ms())
    }

    /// Gives `body`, created at `at_ms`, the next sequence number and writes it to the log's buffer.
    /// Returns its sequence number, or 0 when the spool is full and it was dropped (results never are).
    /// It is on disk once [`make_durable`](Self::make_durable) returns, which everything that hands
    /// records out calls first.
    pub fn push_at(&mut self, body: RecordBody, at_ms: i64) -> Result<u64, SpoolError> {
        let kind = kind_of(&body);
        let reported = if self.pending_bytes < self.limit_bytes / 2 {
            self.report_dropped()
        } else {
            Ok(())
        };
        let is_result = body.is_result();
        if reported.is_ok() && !is_result && self.pending_bytes >= self.limit_bytes {
            *self.dropped.entry(kind).or_default() += 1;
            return Ok(0);
        }
        // A log that cannot be written (a full disk) loses the record; it is counted, and reported
        // as dropped once the log takes records again.
        match reported.and_then(|()| self.append(body, at_ms)) {
            Ok(seq) => {
                self.unsynced_result |= is_result;
                Ok(seq)
            }
            Err(err) => {
                *self.unwritable.entry(kind).or_default() += 1;
                self.unwritable_error = err.to_string();
                Err(err)
            }
        }
    }

    /// Counts a record the writer thread's queue had no room for (see `writer`).
    fn dropped_behind(&mut self, kind: String, count: u64) {
        *self.dropped_behind.entry(kind).or_default() += count;
    }

    /// Sends the counts of dropped records as `dropped` events.
    fn report_dropped(&mut self) -> Result<(), SpoolError> {
        let kinds = |dropped: &BTreeMap<String, u64>| -> String {
            dropped
                .iter()
                .map(|(kind, count)| format!("{count} {kind}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Counts are cleared only once their report is written: a full disk keeps them for later.
        if !self.dropped.is_empty() {
            let summary = format!(
                "spool full ({} MiB): dropped the oldest {}",
                self.limit_bytes >> 20,
                kinds(&self.dropped)
            );
            self.append_dropped(summary, &self.dropped.clone())?;
            self.dropped.clear();
        }
        if !self.dropped_behind.is_empty() {
            let summary = format!(
                "agent busy: the spool's writer fell behind and dropped {}",
                kinds(&self.dropped_behind)
            );
            self.append_dropped(summary, &self.dropped_behind.clone())?;
            self.dropped_behind.clear();
        }
        if !self.unwritable.is_empty() {
            let summary = format!(
                "cannot write the spool ({}): dropped {}",
                self.unwritable_error,
                kinds(&self.unwritable)
            );
            self.append_dropped(summary, &self.unwritable.clone())?;
            self.unwritable.clear();
        }
        Ok(())
    }

    /// Appends a `dropped` report and writes it through: its counts may be cleared only once it will be
    /// sent (in the file, or held in memory), not while it sits in a buffer a full disk would lose.
    fn append_dropped(
        &mut self,
        summary: String,
        dropped: &BTreeMap<String, u64>,
    ) -> Result<(), SpoolError> {
        let seq = self.append(
            RecordBody::Event {
                correlation: None,
                event: Event {
                    kind: polarizer_shared::events::kind::DROPPED.into(),
                    summary,
                    data: serde_json::json!({ "dropped": dropped }).to_string(),
                },
            },
            now_ms(),
        )?;
        let Err(err) = self.log.flush() else {
            return Ok(());
        };
        let _ = self.cut_back_after_failed_write();
        if self.pending.iter().any(|entry| entry.seq == seq) {
            // Held in memory: it is sent.
            return Ok(());
        }
        // The report itself is not a lost record of the agent's: its counts stay for the next one.
        if let Some(count) = self.unwritable.get_mut("record") {
            *count -= 1;
            if *count == 0 {
                self.unwritable.remove("record");
            }
        }
        Err(io_error(&self.directory.join(LOG_FILE))(err))
    }

    fn append(&mut self, body: RecordBody, at_ms: i64) -> Result<u64, SpoolError> {
        let record = Record {
            seq: self.next_seq,
            at_ms,
            body,
        };
        let log_path = self.directory.join(LOG_FILE);
        // The one place records are encoded: none is ever larger than a frame may carry.
        let encoded = record_codec::encode_record(&record).map_err(|err| SpoolError::Encode {
            path: log_path.clone(),
            bytes: 0,
            reason: err.to_string(),
        })?;
        if encoded.cut {
            tracing::warn!(seq = record.seq, kind = %kind_of(&record.body), limit = MAX_RECORD_BYTES, "record over the size limit: cut to fit");
        }
        let payload = encoded.bytes;
        let written = self
            .log
            .write_all(&format::header(format::PAYLOAD_POSTCARD_V1, &payload))
            .and_then(|()| self.log.write_all(&payload));
        if let Err(err) = written {
            if let Err(cut) = self.cut_back_after_failed_write() {
                tracing::warn!(path = %log_path.display(), error = %cut, "cannot cut a half-written record off the spool");
            }
            return Err(io_error(&log_path)(err));
        }
        self.next_seq += 1;
        let payload_bytes = payload.len() as u64;
        let in_memory = self.memory_bytes + payload_bytes <= MEMORY_BYTES;
        if in_memory {
            self.memory_bytes += payload_bytes;
        }
        let entry = Pending {
            seq: record.seq,
            payload_offset: self.log_bytes + HEADER_BYTES,
            payload_bytes,
            payload: in_memory.then_some(payload),
        };
        self.log_bytes += entry.record_bytes();
        self.pending_bytes += entry.record_bytes();
        self.pending.push_back(entry);
        Ok(record.seq)
    }

    /// A write failed (a full disk): what it left half-written is dropped from the buffer and cut off the
    /// file, so the log holds whole records and the next one lands where the index expects it.
    fn cut_back_after_failed_write(&mut self) -> std::io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let file = self.log.get_ref().try_clone()?;
        let failed = std::mem::replace(
            &mut self.log,
            std::io::BufWriter::with_capacity(256 * 1024, file),
        );
        // The buffer is dropped, not written.
        let (file, _unwritten) = failed.into_parts();
        let len = file.metadata()?.len();
        if len > self.log_bytes {
            file.set_len(self.log_bytes)?;
        } else if len < self.log_bytes {
            // Records whose bytes were still in the buffer never reached the file: those held in
            // memory are still sent; the others are lost, counted, and never read back.
            let mut lost = 0;
            let mut lost_bytes = 0;
            self.pending.retain(|entry| {
                let kept =
                    entry.payload.is_some() || entry.payload_offset + entry.payload_bytes <= len;
                if !kept {
                    lost += 1;
                    lost_bytes += entry.record_bytes();
                }
                kept
            });
            self.pending_bytes -= lost_bytes;
            if lost > 0 {
                *self.unwritable.entry("record".into()).or_default() += lost;
            }
            // The next record goes where the file ends; what lies half-written there is read past
            // (as damage) at the next start.
            self.log_bytes = len;
        }
        // The two handles share one offset.
        (&file).seek(SeekFrom::Start(self.log_bytes))?;
        Ok(())
    }

    /// Writes buffered records through to the OS (a killed agent keeps them), and fsyncs when a result
    /// is among them (a crashed machine keeps it).
    pub fn make_durable(&mut self) -> Result<(), SpoolError> {
        let log_path = self.directory.join(LOG_FILE);
        if let Err(err) = self.log.flush() {
            // What the buffer held stays pending in memory and is still sent; the file keeps whole
            // records only.
            let _ = self.cut_back_after_failed_write();
            return Err(io_error(&log_path)(err));
        }
        if self.unsynced_result {
            self.log
                .get_ref()
                .sync_data()
                .map_err(io_error(&log_path))?;
            self.unsynced_result = false;
        }
        Ok(())
    }

    /// The highest sequence number given so far (0 for none).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// The coordinator has committed everything up to `up_to`: forget it.
    pub fn acknowledge(&mut self, up_to: u64) -> Result<(), SpoolError> {
        while self.pending.front().is_some_and(|entry| entry.seq <= up_to) {
            if let Some(entry) = self.pending.pop_front() {
                self.pending_bytes -= entry.record_bytes();
                if entry.payload.is_some() {
                    self.memory_bytes -= entry.payload_bytes;
                }
            }
        }
        // A coordinator that has committed more than we ever numbered (our state dir was restored from
        // an old backup) must not see those numbers again.
        self.next_seq = self.next_seq.max(up_to + 1);
        let drained = self.pending.is_empty() && self.log_bytes >= DRAINED_REWRITE_BYTES;
        let mostly_acknowledged =
            self.log_bytes > COMPACT_BYTES && self.log_bytes > 4 * self.pending_bytes;
        if drained || mostly_acknowledged {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Rewrites the log with only the pending records (in the current format), and records the next
    /// sequence number. Atomic: a crash leaves the old log or the new one.
    fn rewrite(&mut self) -> Result<(), SpoolError> {
        write_private(
            &self.directory.join(SEQ_FILE),
            self.next_seq.to_string().as_bytes(),
        )?;
        let log_path = self.directory.join(LOG_FILE);
        self.log.flush().map_err(io_error(&log_path))?;
        let mut out = Vec::with_capacity(self.pending_bytes as usize);
        let mut offsets = Vec::with_capacity(self.pending.len());
        for index in 0..self.pending.len() {
            let payload = self.payload(index)?;
            out.extend_from_slice(&format::header(format::PAYLOAD_POSTCARD_V1, &payload));
            offsets.push(out.len() as u64);
            out.extend_from_slice(&payload);
        }
        write_private(&log_path, &out)?;
        for (entry, offset) in self.pending.iter_mut().zip(offsets) {
            entry.payload_offset = offset;
        }
        self.log = std::io::BufWriter::with_capacity(
            256 * 1024,
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&log_path)
                .map_err(io_error(&log_path))?,
        );
        self.log_bytes = out.len() as u64;
        // `write_private` synced the new file.
        self.unsynced_result = false;
        Ok(())
    }

    /// The payload of pending record `index`: from memory, or read back from the log (flushed).
    fn payload(&self, index: usize) -> Result<Vec<u8>, SpoolError> {
        use std::os::unix::fs::FileExt;
        let entry = &self.pending[index];
        match &entry.payload {
            Some(payload) => Ok(payload.clone()),
            None => {
                let mut bytes = vec![0; entry.payload_bytes as usize];
                self.log
                    .get_ref()
                    .read_exact_at(&mut bytes, entry.payload_offset)
                    .map_err(io_error(&self.directory.join(LOG_FILE)))?;
                Ok(bytes)
            }
        }
    }

    /// The next frame to send: the pending records after `after`, at most `max_records` of them and
    /// while they fit in `budget_bytes` (always at least one), as one `Records` frame built from their
    /// spooled bytes, and the last sequence number in it. Everything in it is durable first.
    pub fn unsent_frame(
        &mut self,
        after: u64,
        max_records: usize,
        budget_bytes: usize,
    ) -> Option<(Vec<u8>, u64)> {
        if let Err(err) = self.make_durable() {
            // Nothing is sent that could still be lost; it is tried again.
            tracing::error!(error = %err, "cannot write the spool through");
            return None;
        }
        let start = self.pending.partition_point(|entry| entry.seq <= after);
        // Which records go: sizes are known without reading them.
        let mut end = start;
        let mut bytes = 0;
        while end < self.pending.len() && end - start < max_records {
            let size = self.pending[end].payload_bytes as usize;
            if end > start && bytes + size > budget_bytes {
                break;
            }
            bytes += size;
            end += 1;
        }
        if end == start {
            return None;
        }
        // Payloads on disk are read back in one read (they lie one after the other, each after its
        // header); those in memory are borrowed, not copied twice.
        let on_disk = match self.read_back(start, end) {
            Ok(on_disk) => on_disk,
            Err(err) => {
                // Nothing is sent; the records stay spooled and are tried again.
                tracing::error!(error = %err, "cannot read spooled records back");
                return None;
            }
        };
        let slices: Vec<&[u8]> = (start..end)
            .map(|index| {
                let entry = &self.pending[index];
                match &entry.payload {
                    Some(payload) => payload.as_slice(),
                    None => {
                        let at = (entry.payload_offset - on_disk.offset) as usize;
                        &on_disk.bytes[at..at + entry.payload_bytes as usize]
                    }
                }
            })
            .collect();
        let frame = polarizer_shared::protocol::records_frame(&slices);
        debug_assert!(frame.len() <= polarizer_shared::frame::MAX_FRAME_BYTES);
        Some((frame, self.pending[end - 1].seq))
    }

    /// The stretch of the log that holds the payloads of pending records `start..end` not kept in
    /// memory, read in one go.
    fn read_back(&self, start: usize, end: usize) -> Result<ReadBack, SpoolError> {
        use std::os::unix::fs::FileExt;
        let on_disk = |index: &usize| self.pending[*index].payload.is_none();
        let (Some(first), Some(last)) =
            ((start..end).find(on_disk), (start..end).rev().find(on_disk))
        else {
            return Ok(ReadBack {
                offset: 0,
                bytes: Vec::new(),
            });
        };
        let offset = self.pending[first].payload_offset;
        let until = self.pending[last].payload_offset + self.pending[last].payload_bytes;
        let mut bytes = vec![0; (until - offset) as usize];
        self.log
            .get_ref()
            .read_exact_at(&mut bytes, offset)
            .map_err(io_error(&self.directory.join(LOG_FILE)))?;
        Ok(ReadBack { offset, bytes })
    }

    /// The frames [`unsent_frame`](Self::unsent_frame) would give one after the other, while they fit
    /// in `total_bytes` (at least one, if any record is pending after `after`).
    pub fn unsent_frames(
        &mut self,
        mut after: u64,
        max_records: usize,
        budget_bytes: usize,
        total_bytes: usize,
    ) -> Vec<(Vec<u8>, u64)> {
        let mut frames = Vec::new();
        let mut total = 0;
        while total < total_bytes {
            let Some((frame, last)) = self.unsent_frame(after, max_records, budget_bytes) else {
                break;
            };
            total += frame.len();
            after = last;
            frames.push((frame, last));
        }
        frames
    }

    /// Up to `max` pending records after sequence number `after`, decoded (the session sends
    /// [`unsent_frame`](Self::unsent_frame) instead; this is how tests look inside).
    #[cfg(test)]
    fn unsent(&mut self, after: u64, max: usize) -> Vec<Record> {
        self.make_durable().unwrap();
        let start = self.pending.partition_point(|entry| entry.seq <= after);
        let end = (start + max).min(self.pending.len());
        (start..end)
            .map(|index| {
                decode_payload(format::PAYLOAD_POSTCARD_V1, &self.payload(index).unwrap()).unwrap()
            })
            .collect()
    }

    /// Records not acknowledged yet.
    fn pending_count(&self) -> usize {
        self.pending.len()
    }
}

/// Payloads read back from the log: `bytes` from `offset` on.
struct ReadBack {
    offset: u64,
    bytes: Vec<u8>,
}

/// The kind a dropped record is counted under.
fn kind_of(body: &RecordBody) -> String {
    match body {
        RecordBody::Event { event, .. } => event.kind.clone(),
        RecordBody::Output { .. } => polarizer_shared::events::kind::OUTPUT.to_string(),
        _ => polarizer_shared::events::kind::RESULT.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::run::{Exit, OutputStream, SuiteRef, TestOutcome, TestStatus};

    const SUITE: SuiteRef = SuiteRef {
        run: 1,
        suite: 1,
        attempt: 1,
    };

    fn output(line: &str) -> RecordBody {
        RecordBody::Output {
            suite: SUITE,
            test: "/t".into(),
            stream: OutputStream::Stdout,
            line: line.into(),
        }
    }

    fn finished() -> RecordBody {
        RecordBody::SuiteFinished {
            suite: SUITE,
            error: None,
        }
    }

    fn result(test: &str) -> RecordBody {
        RecordBody::TestFinished(Box::new(TestOutcome {
            suite: SUITE,
            test: test.into(),
            status: TestStatus::Pass,
            exit: Exit::Code(0),
            started_ms: 1,
            duration_ms: 2,
            message: String::new(),
            output_tail: "ok\n".into(),
            subresults: Vec::new(),
        }))
    }

    fn seqs(records: &[Record]) -> Vec<u64> {
        records.iter().map(|record| record.seq).collect()
    }

    fn log_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join(LOG_FILE)
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
        assert_eq!(seqs(&spool.unsent(0, 10)), [1, 2, 3]);
        assert_eq!(spool.unsent(1, 1)[0].seq, 2);
        spool.acknowledge(2).unwrap();
        assert_eq!(spool.pending_count(), 1);
        spool.acknowledge(3).unwrap();
        assert_eq!(spool.pending_count(), 0);
        drop(spool);

        // A small log is left as it is; the coordinator's welcome trims it again.
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.acknowledge(3).unwrap();
        assert_eq!(spool.pending_count(), 0);
        // Emptied, yet numbering goes on where it stopped: the coordinator must never see a seq twice.
        spool.rewrite().unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending_count(), 0);
        assert_eq!(spool.push(output("d")).unwrap(), 4);
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(output("whole")).unwrap();
        spool.push(output("torn")).unwrap();
        spool.make_durable().unwrap();
        drop(spool);
        // The second record's last bytes never reached the disk.
        let bytes = std::fs::read(log_path(&dir)).unwrap();
        std::fs::write(log_path(&dir), &bytes[..bytes.len() - 3]).unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending_count(), 1);
        assert_eq!(spool.push(output("next")).unwrap(), 2);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let records = spool.unsent(0, 10);
        assert_eq!(seqs(&records), [1, 2], "a torn tail is no damage to report");
    }

    #[test]
    fn a_damaged_record_is_skipped_reported_as_dropped_and_the_records_after_it_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(result("/first")).unwrap();
        spool.push(result("/second")).unwrap();
        spool.push(result("/third")).unwrap();
        spool.make_durable().unwrap();
        drop(spool);
        let mut bytes = std::fs::read(log_path(&dir)).unwrap();
        let at = bytes
            .windows(7)
            .position(|window| window == b"/second")
            .unwrap();
        bytes[at + 2] ^= 0x01;
        std::fs::write(log_path(&dir), &bytes).unwrap();

        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        let records = spool.unsent(0, 10);
        assert_eq!(seqs(&records), [1, 3, 4]);
        let tests: Vec<&str> = records[..2]
            .iter()
            .map(|record| match &record.body {
                RecordBody::TestFinished(outcome) => outcome.test.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(tests, ["/first", "/third"]);
        let RecordBody::Event { event, .. } = &records[2].body else {
            panic!("a dropped event")
        };
        assert_eq!(event.kind, "dropped");
        assert!(
            event.summary.starts_with("spool damaged: dropped 1 record"),
            "{}",
            event.summary
        );
        drop(spool);
        // The damage was cut out: it is reported once, not at every start.
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(seqs(&spool.unsent(0, 10)), [1, 3, 4]);
    }

    #[test]
    fn a_spool_written_in_the_earlier_format_is_read_and_rewritten_in_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        ensure_private_dir(dir.path()).unwrap();
        // Byte for byte what the spool wrote before records were framed: `frame::encode(&record)` each,
        // and one record too large for a frame of today (it is cut when read).
        let earlier = [
            Record {
                seq: 5,
                at_ms: 10,
                body: output("before the upgrade"),
            },
            Record {
                seq: 6,
                at_ms: 11,
                body: result("/upgraded"),
            },
            Record {
                seq: 7,
                at_ms: 12,
                body: output(&"x".repeat(3 << 20)),
            },
        ];
        let mut bytes = Vec::new();
        for record in &earlier {
            bytes.extend(polarizer_shared::frame::encode(record).unwrap());
        }
        std::fs::write(log_path(&dir), &bytes).unwrap();

        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let records = spool.unsent(0, 10);
        assert_eq!(records[..2], earlier[..2]);
        assert_eq!(records[2].seq, 7);
        let RecordBody::Output { line, .. } = &records[2].body else {
            panic!("still output")
        };
        assert!(line.len() < MAX_RECORD_BYTES && line.contains("cut by the agent"));
        assert_eq!(spool.push(output("after")).unwrap(), 8);
        spool.make_durable().unwrap();
        drop(spool);
        let rewritten = std::fs::read(log_path(&dir)).unwrap();
        assert!(rewritten.starts_with(&format::MAGIC));
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(seqs(&spool.unsent(0, 10)), [5, 6, 7, 8]);
    }

    #[test]
    fn frames_are_bounded_in_bytes_and_any_record_fits_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
        let line = "y".repeat(100 * 1024);
        for _ in 0..40 {
            spool.push(output(&line)).unwrap();
        }
        // A D-Bus body or an output line far beyond a frame: cut to fit, never refused.
        spool.push(output(&"z".repeat(20 << 20))).unwrap();
        let budget = polarizer_shared::record_codec::RECORDS_FRAME_BUDGET_BYTES;
        let mut after = 0;
        let mut frames = 0;
        while let Some((frame, last)) = spool.unsent_frame(after, 512, budget) {
            assert!(frame.len() <= budget + MAX_RECORD_BYTES + 64);
            assert!(frame.len() <= polarizer_shared::frame::MAX_FRAME_BYTES);
            assert!(last > after);
            after = last;
            frames += 1;
        }
        assert_eq!(after, 41, "every record sent");
        assert!(frames >= 5, "4 MB of records take several frames, not one");
        // Taken several at a time, the same frames.
        let taken = spool.unsent_frames(0, 512, budget, 2 * budget);
        assert!(taken.len() >= 2 && taken.len() < frames);
        let bytes: usize = taken.iter().map(|(frame, _)| frame.len()).sum();
        assert!(bytes - taken.last().unwrap().0.len() < 2 * budget);
        assert_eq!(taken[0], spool.unsent_frame(0, 512, budget).unwrap());
        assert_eq!(spool.unsent_frames(41, 512, budget, 2 * budget), []);
    }

    #[test]
    fn a_result_is_fsynced_before_it_is_handed_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1 << 20).unwrap();
        spool.push(output("a")).unwrap();
        assert!(!spool.unsynced_result);
        spool.push(result("/t")).unwrap();
        assert!(spool.unsynced_result);
        spool.unsent_frame(0, 10, 1 << 20).unwrap();
        assert!(!spool.unsynced_result);
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
        let lines =
            |spool: &mut Spool, after: u64| -> Vec<u64> { seqs(&spool.unsent(after, 1000)) };
        assert_eq!(lines(&mut spool, 0), (1..=count).collect::<Vec<_>>());
        // Frames read the ones on disk back in one go, each record whole and in its place.
        let mut after = 0;
        while let Some((frame, last)) = spool.unsent_frame(after, 7, 1 << 20) {
            let records = match polarizer_shared::frame::decode(&frame[4..]).unwrap() {
                polarizer_shared::protocol::ClientFrame::Agent(
                    polarizer_shared::protocol::AgentMessage::Records(records),
                ) => records,
                other => panic!("{other:?}"),
            };
            for record in &records {
                after += 1;
                assert_eq!(record.seq, after);
                match &record.body {
                    RecordBody::Output { line: text, .. } => {
                        assert!(text.starts_with(&format!("{} x", after - 1)))
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(last, after);
        }
        assert_eq!(after, count);
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
        assert!(reopened.memory_bytes <= MEMORY_BYTES);
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

//! How records lie in the spool file, and how a file is read back whatever happened to it.
//!
//! Each record is framed on its own: a magic marker, the payload's format version, its length and a
//! CRC-32 over the three of them, then the payload. A record whose checksum fails is skipped and the
//! reader resynchronises on the next marker that starts a valid record, so one damaged record costs only
//! itself; bytes cut short at the end (a crash while writing) are a torn tail, cut cleanly. The version
//! says how the payload is encoded, so a later agent can still read what an earlier one spooled.
//!
//! Files written before this format (agents up to the commit that introduced it) hold bare frames: a
//! u32 big-endian length, then a postcard `Record`. Their first byte is always 0 (a length below
//! 16 MiB), which the marker's first byte never is, so both can be told apart record by record.

use std::ops::Range;

use polarizer_shared::run::Record;

/// Starts every record. Its first byte is not 0, unlike a legacy frame's.
pub const MAGIC: [u8; 4] = [0xA7, b'P', b'Z', b'R'];
/// Marker, version (1 byte), payload length (u32 LE), CRC-32 (u32 LE) of version, length and payload.
pub const HEADER_BYTES: usize = 13;
/// Payload version 1: a postcard `Record` as protocol version 2 encodes it (the same bytes legacy frames
/// hold). A new payload encoding gets the next number, and the spool converts older ones when reading.
pub const PAYLOAD_POSTCARD_V1: u8 = 1;
/// A length beyond this is damage, not a record (records are written well below it).
const MAX_PAYLOAD_BYTES: usize = polarizer_shared::frame::MAX_FRAME_BYTES;
const LEGACY_PREFIX_BYTES: usize = 4;

/// The header for `payload` encoded as `version`.
pub fn header(version: u8, payload: &[u8]) -> [u8; HEADER_BYTES] {
    let length = (payload.len() as u32).to_le_bytes();
    let mut header = [0; HEADER_BYTES];
    header[..4].copy_from_slice(&MAGIC);
    header[4] = version;
    header[5..9].copy_from_slice(&length);
    header[9..].copy_from_slice(&checksum(version, length, payload).to_le_bytes());
    header
}

fn checksum(version: u8, length: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[version]);
    hasher.update(&length);
    hasher.update(payload);
    hasher.finalize()
}

/// What one stretch of a spool file turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Scanned {
    /// A whole record whose checksum holds: `payload` is where its payload lies in the file.
    Record { version: u8, payload: Range<usize> },
    /// A whole legacy frame whose payload decodes as a `Record`.
    Legacy { payload: Range<usize> },
    /// Bytes that are no record: a damaged record, or several, up to the next valid one (or the end).
    Damaged { bytes: Range<usize> },
    /// The file ends inside a record: a write cut short. Always the last item.
    TornTail { from: usize },
}

enum Check {
    Valid {
        version: u8,
        payload: Range<usize>,
    },
    /// Runs past the end of the file.
    Incomplete,
    Invalid,
}

fn check_record(bytes: &[u8], at: usize) -> Check {
    let Some(header) = bytes.get(at..at + HEADER_BYTES) else {
        return Check::Incomplete;
    };
    if header[..4] != MAGIC {
        return Check::Invalid;
    }
    let version = header[4];
    let length: [u8; 4] = header[5..9].try_into().expect("4 bytes");
    let stored_checksum = u32::from_le_bytes(header[9..].try_into().expect("4 bytes"));
    let payload_length = u32::from_le_bytes(length) as usize;
    if payload_length > MAX_PAYLOAD_BYTES {
        return Check::Invalid;
    }
    let start = at + HEADER_BYTES;
    let Some(payload) = bytes.get(start..start + payload_length) else {
        return Check::Incomplete;
    };
    if checksum(version, length, payload) != stored_checksum {
        return Check::Invalid;
    }
    Check::Valid {
        version,
        payload: start..start + payload_length,
    }
}

fn check_legacy(bytes: &[u8], at: usize) -> Check {
    let Some(prefix) = bytes.get(at..at + LEGACY_PREFIX_BYTES) else {
        return Check::Incomplete;
    };
    let length = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if length > MAX_PAYLOAD_BYTES {
        return Check::Invalid;
    }
    let start = at + LEGACY_PREFIX_BYTES;
    let Some(payload) = bytes.get(start..start + length) else {
        return Check::Incomplete;
    };
    match postcard::take_from_bytes::<Record>(payload) {
        Ok((_, [])) => Check::Valid {
            version: PAYLOAD_POSTCARD_V1,
            payload: start..start + length,
        },
        _ => Check::Invalid,
    }
}

/// The next offset from `from` on where a valid (new-format) record starts.
fn resynchronise(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while at + HEADER_BYTES <= bytes.len() {
        let found = bytes[at..].windows(MAGIC.len()).position(|w| w == MAGIC)?;
        at += found;
        if let Check::Valid { .. } = check_record(bytes, at) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Reads a whole spool file into what each stretch of it is, in file order.
pub fn scan(bytes: &[u8]) -> Vec<Scanned> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let legacy = bytes[at] == 0;
        let check = if legacy {
            check_legacy(bytes, at)
        } else {
            check_record(bytes, at)
        };
        match check {
            Check::Valid { version, payload } => {
                at = payload.end;
                out.push(if legacy {
                    Scanned::Legacy { payload }
                } else {
                    Scanned::Record { version, payload }
                });
            }
            Check::Incomplete | Check::Invalid => {
                // Legacy frames carry no marker: after damage among them, only new records are found.
                match resynchronise(bytes, at + 1) {
                    Some(next) => {
                        out.push(Scanned::Damaged { bytes: at..next });
                        at = next;
                    }
                    None if matches!(check, Check::Incomplete) => {
                        out.push(Scanned::TornTail { from: at });
                        break;
                    }
                    None => {
                        out.push(Scanned::Damaged {
                            bytes: at..bytes.len(),
                        });
                        break;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use polarizer_shared::run::{OutputStream, RecordBody, SuiteRef};

    fn payload(seq: u64) -> Vec<u8> {
        postcard::to_stdvec(&Record {
            seq,
            at_ms: 1,
            body: RecordBody::Output {
                suite: SuiteRef {
                    run: 1,
                    suite: 1,
                    attempt: 1,
                },
                test: "/t".into(),
                stream: OutputStream::Stdout,
                line: format!("line {seq}"),
            },
        })
        .unwrap()
    }

    fn record(seq: u64) -> Vec<u8> {
        let payload = payload(seq);
        let mut bytes = header(PAYLOAD_POSTCARD_V1, &payload).to_vec();
        bytes.extend(payload);
        bytes
    }

    fn kinds(scanned: &[Scanned]) -> Vec<&'static str> {
        scanned
            .iter()
            .map(|item| match item {
                Scanned::Record { .. } => "record",
                Scanned::Legacy { .. } => "legacy",
                Scanned::Damaged { .. } => "damaged",
                Scanned::TornTail { .. } => "torn",
            })
            .collect()
    }

    #[test]
    fn whole_records_read_back_as_they_were_written() {
        let file: Vec<u8> = (1..=3).flat_map(record).collect();
        let scanned = scan(&file);
        assert_eq!(kinds(&scanned), ["record"; 3]);
        let Scanned::Record { version, payload } = &scanned[1] else {
            unreachable!()
        };
        assert_eq!(*version, PAYLOAD_POSTCARD_V1);
        assert_eq!(file[payload.clone()], payload_of(2));
    }

    fn payload_of(seq: u64) -> Vec<u8> {
        payload(seq)
    }

    #[test]
    fn any_damaged_byte_of_a_record_costs_that_record_only() {
        let first = record(1).len();
        let second = record(2).len();
        let file: Vec<u8> = (1..=3).flat_map(record).collect();
        for offset in first..first + second {
            let mut damaged = file.clone();
            damaged[offset] ^= 0x41;
            let scanned = scan(&damaged);
            assert_eq!(
                kinds(&scanned),
                ["record", "damaged", "record"],
                "byte {offset} damaged"
            );
            assert_eq!(
                scanned[1],
                Scanned::Damaged {
                    bytes: first..first + second
                }
            );
        }
    }

    #[test]
    fn a_torn_tail_is_told_from_damage() {
        let file: Vec<u8> = (1..=2).flat_map(record).collect();
        let first = record(1).len();
        for cut in first + 1..file.len() {
            assert_eq!(
                scan(&file[..cut]),
                [
                    Scanned::Record {
                        version: PAYLOAD_POSTCARD_V1,
                        payload: HEADER_BYTES..first
                    },
                    Scanned::TornTail { from: first }
                ],
                "cut at {cut}"
            );
        }
        // A whole last record whose checksum fails is damage, not a torn write.
        let mut damaged = file.clone();
        *damaged.last_mut().unwrap() ^= 1;
        assert_eq!(kinds(&scan(&damaged)), ["record", "damaged"]);
    }

    #[test]
    fn legacy_frames_are_read_and_new_records_after_them_too() {
        // Bytes as the spool wrote them before records were framed: `frame::encode` of each record.
        let mut file = Vec::new();
        for seq in 1..=2 {
            file.extend(
                polarizer_shared::frame::encode(
                    &postcard::from_bytes::<Record>(&payload(seq)).unwrap(),
                )
                .unwrap(),
            );
        }
        file.extend(record(3));
        let scanned = scan(&file);
        assert_eq!(kinds(&scanned), ["legacy", "legacy", "record"]);
        let Scanned::Legacy { payload } = &scanned[1] else {
            unreachable!()
        };
        assert_eq!(file[payload.clone()], payload_of(2));
        // A legacy frame cut short at the end is a torn tail, as it always was.
        let legacy_only = &file[..file.len() - record(3).len() - 3];
        assert_eq!(kinds(&scan(legacy_only)), ["legacy", "torn"]);
    }
}

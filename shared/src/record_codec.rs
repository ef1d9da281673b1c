//! Records as an agent spools and sends them: each encoded on its own, never larger than
//! [`MAX_RECORD_BYTES`] (a bigger one is cut to fit, and says so), so that a frame filled with whole
//! records up to [`RECORDS_FRAME_BUDGET_BYTES`] stays far below the frame limit. An agent must never
//! build a frame its coordinator has to refuse: the refusal would come back on every resend, for good.
//!
//! What a cut keeps: a result its status, exit, times, the start of its message and output, and as many
//! JUnit cases as fit (each with its status and duration); an event its kind, the start of its summary,
//! and the start of its data inside a JSON object that says it was cut; an output line its start. Names
//! that identify a test are cut last, only when nothing else is left to cut.

use crate::frame::MAX_FRAME_BYTES;
use crate::run::{Record, RecordBody};

/// The largest encoded record.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// A records frame is filled with whole records while they fit in this many bytes (and holds at least
/// one): with records of at most [`MAX_RECORD_BYTES`], every frame stays below [`MAX_FRAME_BYTES`].
pub const RECORDS_FRAME_BUDGET_BYTES: usize = 1024 * 1024;
/// The frame's own bytes around the records: length prefix, enum tags, the record count.
const RECORDS_FRAME_OVERHEAD_BYTES: usize = 32;
const _: () = assert!(
    RECORDS_FRAME_BUDGET_BYTES + MAX_RECORD_BYTES + RECORDS_FRAME_OVERHEAD_BYTES <= MAX_FRAME_BYTES
);

/// The smallest limit [`encode_record_within`] honours: enough for any record cut to the bone.
pub const MIN_RECORD_LIMIT_BYTES: usize = 16 * 1024;
/// Every text is cut to this at the last step.
const LAST_TEXT_CAP: usize = 256;
/// Upper bound of the marker a cut text ends with, and of a cut JSON object's own bytes.
const MARKER_BYTES: usize = 96;

/// A record as it is spooled and sent.
#[derive(Debug)]
pub struct EncodedRecord {
    pub bytes: Vec<u8>,
    /// The record was larger than the limit and was cut to fit.
    pub cut: bool,
}

/// Encodes `record` with postcard, cut to fit [`MAX_RECORD_BYTES`] when it is larger.
pub fn encode_record(record: &Record) -> Result<EncodedRecord, postcard::Error> {
    encode_record_within(record, MAX_RECORD_BYTES)
}

/// Encodes `record` in at most `max_bytes` (at least [`MIN_RECORD_LIMIT_BYTES`]), cutting its texts
/// step by step (a quarter of the limit each, then 8 KiB, then [`LAST_TEXT_CAP`] with as many list
/// entries as fit, then the identifiers too) until it fits.
pub fn encode_record_within(
    record: &Record,
    max_bytes: usize,
) -> Result<EncodedRecord, postcard::Error> {
    let max_bytes = max_bytes.max(MIN_RECORD_LIMIT_BYTES);
    let whole = postcard::to_stdvec(record)?;
    if whole.len() <= max_bytes {
        return Ok(EncodedRecord {
            bytes: whole,
            cut: false,
        });
    }
    drop(whole);
    // Room for list entries once every text is at its last cap.
    let list_room = max_bytes - MIN_RECORD_LIMIT_BYTES / 2;
    let steps = [
        Cut::texts(max_bytes / 4),
        Cut::texts(8 * 1024),
        Cut {
            list_room: Some(list_room),
            ..Cut::texts(LAST_TEXT_CAP)
        },
        Cut {
            list_room: Some(list_room),
            identifier: Some(LAST_TEXT_CAP),
            ..Cut::texts(LAST_TEXT_CAP)
        },
    ];
    let mut last = Vec::new();
    for step in steps {
        let mut candidate = record.clone();
        step.apply(&mut candidate.body);
        last = postcard::to_stdvec(&candidate)?;
        if last.len() <= max_bytes {
            break;
        }
    }
    debug_assert!(last.len() <= max_bytes, "the last step always fits");
    Ok(EncodedRecord {
        bytes: last,
        cut: true,
    })
}

/// How far one step cuts.
#[derive(Clone, Copy)]
struct Cut {
    /// Free text (messages, output, summaries, data) is cut to this many bytes.
    text: usize,
    /// Bytes that a list (JUnit cases, packages) may take, when lists are cut too.
    list_room: Option<usize>,
    /// Names that identify a test (and an event's kind) are cut to this, at the very last step.
    identifier: Option<usize>,
}

impl Cut {
    fn texts(text: usize) -> Cut {
        Cut {
            text,
            list_room: None,
            identifier: None,
        }
    }

    fn apply(self, body: &mut RecordBody) {
        let identifier = |text: &mut String| {
            if let Some(cap) = self.identifier {
                cut_text(text, cap);
            }
        };
        match body {
            RecordBody::SuiteStarted { versions, .. } => {
                cut_text(&mut versions.commit, self.text);
                cut_text(&mut versions.agent_version, self.text);
                if let Some(room) = self.list_room {
                    // Each entry holds two texts of at most `text` bytes and their markers.
                    let keep = room / (2 * (self.text + MARKER_BYTES + 5));
                    versions.packages.truncate(keep);
                }
                for (name, version) in &mut versions.packages {
                    cut_text(name, self.text);
                    cut_text(version, self.text);
                }
            }
            RecordBody::TestStarted { test, .. } => identifier(test),
            RecordBody::Output { test, line, .. } => {
                identifier(test);
                cut_text(line, self.text);
            }
            RecordBody::TestFinished(outcome) => {
                identifier(&mut outcome.test);
                cut_text(&mut outcome.message, self.text);
                cut_text(&mut outcome.output_tail, self.text);
                let cases = outcome.subresults.len();
                if let Some(room) = self.list_room {
                    // Three texts per case, and its status and duration.
                    let keep = room / (3 * (self.text + MARKER_BYTES + 5) + 16);
                    if keep < cases {
                        outcome.subresults.truncate(keep);
                        outcome.message.push_str(&format!(
                            " [cut by the agent: {keep} of {cases} JUnit cases kept]"
                        ));
                    }
                }
                for case in &mut outcome.subresults {
                    cut_text(&mut case.name, self.text);
                    cut_text(&mut case.classname, self.text);
                    cut_text(&mut case.message, self.text);
                }
            }
            RecordBody::SuiteFinished { error, .. } => {
                if let Some(error) = error {
                    cut_text(error, self.text);
                }
            }
            RecordBody::Event { correlation, event } => {
                if let Some(correlation) = correlation {
                    identifier(&mut correlation.test);
                }
                if let Some(cap) = self.identifier {
                    // A kind is short by nature (custom ones are at most 32 bytes): cut without a marker.
                    event
                        .kind
                        .truncate(floor_char_boundary(&event.kind, cap.min(64)));
                }
                cut_text(&mut event.summary, self.text);
                cut_json(&mut event.data, self.text);
            }
        }
    }
}

/// The largest index at most `index` that is a char boundary of `text`.
fn floor_char_boundary(text: &str, index: usize) -> usize {
    if index >= text.len() {
        return text.len();
    }
    let mut end = index;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// Cuts `text` to its first `cap` bytes (at a char boundary), followed by a marker saying so.
fn cut_text(text: &mut String, cap: usize) {
    if text.len() <= cap {
        return;
    }
    let original = text.len();
    let kept = floor_char_boundary(text, cap);
    text.truncate(kept);
    text.push_str(&format!(
        " …[cut by the agent: {original} bytes, the first {kept} kept]"
    ));
}

/// Replaces JSON text longer than `cap` by a JSON object that says it was cut and holds the start of
/// the original text as a string: `{"truncated":{"bytes":N,"kept":K},"start":"…"}`. Still JSON, so
/// whatever reads the data as JSON reads this too.
fn cut_json(data: &mut String, cap: usize) {
    if data.len() <= cap {
        return;
    }
    let mut start = String::with_capacity(cap + 8);
    let mut kept = 0;
    for character in data.chars() {
        let before = start.len();
        push_json_escaped(&mut start, character);
        if start.len() > cap {
            start.truncate(before);
            break;
        }
        kept += character.len_utf8();
    }
    *data = format!(
        r#"{{"truncated":{{"bytes":{},"kept":{kept}}},"start":"{start}"}}"#,
        data.len()
    );
}

fn push_json_escaped(out: &mut String, character: char) {
    match character {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        control if (control as u32) < 0x20 => {
            out.push_str(&format!("\\u{:04x}", control as u32));
        }
        other => out.push(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Correlation, Event};
    use crate::protocol::records_frame;
    use crate::run::{
        Exit, OutputStream, SubResult, SuiteRef, TestOutcome, TestStatus, VersionChain,
    };
    use proptest::prelude::*;

    const SUITE: SuiteRef = SuiteRef {
        run: 1,
        suite: 2,
        attempt: 1,
    };

    fn record(body: RecordBody) -> Record {
        Record {
            seq: 7,
            at_ms: 1_700_000_000_000,
            body,
        }
    }

    fn outcome(text: String, cases: usize, case_text: String) -> RecordBody {
        RecordBody::TestFinished(Box::new(TestOutcome {
            suite: SUITE,
            test: "/tests/junit".into(),
            status: TestStatus::Fail,
            exit: Exit::Code(1),
            started_ms: 1_700_000_000_000,
            duration_ms: 4321,
            message: text.clone(),
            output_tail: text,
            subresults: (0..cases)
                .map(|index| SubResult {
                    name: format!("case {index}"),
                    classname: case_text.clone(),
                    status: TestStatus::Pass,
                    duration_ms: index as u64,
                    message: case_text.clone(),
                })
                .collect(),
        }))
    }

    fn event(kind: &str, data: String) -> RecordBody {
        RecordBody::Event {
            correlation: Some(Correlation {
                suite: SUITE,
                test: "/tests/t".into(),
            }),
            event: Event {
                kind: kind.into(),
                summary: data.chars().take(300).collect(),
                data,
            },
        }
    }

    fn decoded(encoded: &EncodedRecord) -> Record {
        postcard::from_bytes(&encoded.bytes).expect("a cut record still decodes")
    }

    #[test]
    fn a_record_that_fits_is_encoded_as_it_is() {
        let small = record(event("app", r#"{"n":1}"#.into()));
        let encoded = encode_record(&small).unwrap();
        assert!(!encoded.cut);
        assert_eq!(encoded.bytes, postcard::to_stdvec(&small).unwrap());
    }

    #[test]
    fn a_huge_event_keeps_its_kind_and_the_start_of_its_data_in_json_that_says_so() {
        let data = format!(r#"{{"body":"{}"}}"#, "é\"".repeat(10 << 20));
        let encoded = encode_record(&record(event("dbus", data.clone()))).unwrap();
        assert!(encoded.cut);
        assert!(encoded.bytes.len() <= MAX_RECORD_BYTES);
        let RecordBody::Event { event, correlation } = decoded(&encoded).body else {
            panic!("still an event")
        };
        assert_eq!(event.kind, "dbus");
        assert_eq!(correlation.unwrap().test, "/tests/t");
        let cut: serde_json::Value = serde_json::from_str(&event.data).expect("still JSON");
        assert_eq!(cut["truncated"]["bytes"], data.len());
        let start = cut["start"].as_str().unwrap();
        assert!(data.starts_with(start), "the start of the original data");
        assert_eq!(cut["truncated"]["kept"], start.len());
        assert!(start.len() > 100 * 1024, "as much as fits is kept");
    }

    #[test]
    fn a_huge_result_keeps_its_status_duration_and_as_many_cases_as_fit() {
        // Long JUnit attributes on many cases: 40 MB of them.
        let body = outcome("m".repeat(3 << 20), 20_000, "a".repeat(2000));
        let encoded = encode_record(&record(body)).unwrap();
        assert!(encoded.cut);
        assert!(encoded.bytes.len() <= MAX_RECORD_BYTES);
        let RecordBody::TestFinished(outcome) = decoded(&encoded).body else {
            panic!("still a result")
        };
        assert_eq!(outcome.status, TestStatus::Fail);
        assert_eq!(outcome.duration_ms, 4321);
        assert_eq!(outcome.exit, Exit::Code(1));
        assert_eq!(outcome.test, "/tests/junit");
        assert!(outcome.message.starts_with("mmmm"));
        assert!(
            outcome.message.contains("JUnit cases kept"),
            "{}",
            &outcome.message[outcome.message.len() - 200..]
        );
        assert!(
            outcome.subresults.len() > 300,
            "{} cases kept",
            outcome.subresults.len()
        );
        assert_eq!(outcome.subresults[5].name, "case 5");
        assert_eq!(outcome.subresults[5].duration_ms, 5);
    }

    #[test]
    fn a_frame_of_the_largest_records_stays_below_the_frame_limit() {
        let huge = encode_record(&record(RecordBody::Output {
            suite: SUITE,
            test: "/t".into(),
            stream: OutputStream::Stdout,
            line: "x".repeat(20 << 20),
        }))
        .unwrap();
        assert!(huge.bytes.len() <= MAX_RECORD_BYTES);
        // A sender adds records while they fit in the budget, and always at least one: at worst the
        // budget nearly full, then one more of the largest size.
        let filler = vec![0u8; RECORDS_FRAME_BUDGET_BYTES - 1];
        let frame = records_frame(&[&filler, &huge.bytes]);
        assert!(frame.len() <= MAX_FRAME_BYTES);
        // And it is a frame the receiver accepts.
        let mut decoder = crate::frame::FrameDecoder::new();
        decoder.push(&frame);
        assert!(decoder.next_frame_bytes().unwrap().is_some());
    }

    fn text(max: usize) -> impl Strategy<Value = String> {
        (
            0..max,
            prop_oneof![Just("x"), Just("é"), Just("\""), Just("\n"), Just("🦀")],
        )
            .prop_map(|(length, piece)| piece.repeat(length / piece.len()))
    }

    fn any_body() -> impl Strategy<Value = RecordBody> {
        prop_oneof![
            (text(40_000), text(40_000), text(40_000)).prop_map(|(kind, summary, data)| {
                RecordBody::Event {
                    correlation: Some(Correlation {
                        suite: SUITE,
                        test: kind.clone(),
                    }),
                    event: Event {
                        kind,
                        summary,
                        data,
                    },
                }
            }),
            (text(60_000), 0..400usize, text(3_000))
                .prop_map(|(text, cases, case_text)| outcome(text, cases, case_text)),
            (text(60_000), text(60_000)).prop_map(|(test, line)| RecordBody::Output {
                suite: SUITE,
                test,
                stream: OutputStream::Stderr,
                line,
            }),
            (text(30_000), text(30_000), 0..300usize).prop_map(|(commit, package, count)| {
                RecordBody::SuiteStarted {
                    suite: SUITE,
                    versions: VersionChain {
                        commit,
                        agent_version: "0.1.0".into(),
                        packages: vec![(package.clone(), package); count],
                    },
                }
            }),
            text(60_000).prop_map(|test| RecordBody::TestStarted { suite: SUITE, test }),
            text(60_000).prop_map(|error| RecordBody::SuiteFinished {
                suite: SUITE,
                error: Some(error),
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_record_encodes_within_the_limit_and_keeps_what_identifies_it(
            body in any_body(),
            max_bytes in MIN_RECORD_LIMIT_BYTES..64 * 1024,
        ) {
            let original = record(body);
            let encoded = encode_record_within(&original, max_bytes).unwrap();
            prop_assert!(encoded.bytes.len() <= max_bytes, "{} > {max_bytes}", encoded.bytes.len());
            let whole = postcard::to_stdvec(&original).unwrap();
            prop_assert_eq!(encoded.cut, whole.len() > max_bytes);
            let back = decoded(&encoded);
            prop_assert_eq!(back.seq, original.seq);
            prop_assert_eq!(back.at_ms, original.at_ms);
            match (&back.body, &original.body) {
                (RecordBody::TestFinished(cut), RecordBody::TestFinished(whole)) => {
                    prop_assert_eq!(cut.status, whole.status);
                    prop_assert_eq!(cut.duration_ms, whole.duration_ms);
                    prop_assert_eq!(cut.suite, whole.suite);
                }
                (RecordBody::Event { event: cut, .. }, RecordBody::Event { event: whole, .. }) => {
                    prop_assert!(whole.kind.starts_with(&cut.kind));
                    if encoded.cut && whole.data.len() > cut.data.len() {
                        let marked = cut.data.starts_with(r#"{"truncated":"#);
                        prop_assert!(marked, "a cut data says so");
                    }
                }
                (cut, whole) => prop_assert_eq!(std::mem::discriminant(cut), std::mem::discriminant(whole)),
            }
        }
    }
}

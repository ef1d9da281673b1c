//! `polarizer failures cluster`: any text, offline, one output line per input line (its cluster id, a
//! tab, the template), bytes that are not UTF-8 included; no coordinator needed.

use std::io::Write;
use std::process::{Command, Stdio};

use polarizer_e2e::binary;

#[test]
fn any_text_clusters_offline_one_line_out_per_line_in() {
    let mut input = Vec::new();
    for n in 0..50 {
        writeln!(input, "timeout after {n}s waiting for 10.0.{n}.1:22").unwrap();
        writeln!(input, "AssertionError: expected {n} but got {}", n + 1).unwrap();
    }
    input.extend_from_slice(b"bad bytes \xff\xfe here\n\nlast line without newline");
    let mut child = Command::new(binary("polarizer"))
        .args(["failures", "cluster", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 103, "{text}");
    assert_eq!(lines[0], lines[2]);
    assert_eq!(lines[1], lines[99]);
    assert!(
        lines[0].ends_with("\ttimeout after <*> waiting for <*>"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].ends_with("\tAssertionError: expected <*> but got <*>"),
        "{}",
        lines[1]
    );
    assert!(lines[100].contains('\u{fffd}'), "{}", lines[100]);
    let missing = Command::new(binary("polarizer"))
        .args(["failures", "cluster", "/nonexistent/app.log"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/app.log"));
}

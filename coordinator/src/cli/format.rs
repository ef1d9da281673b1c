//! How the client shows things: times as RFC 3339, tables with aligned columns, agents as JSON objects
//! whose field names are a public interface.

use polarizer_shared::protocol::AgentRecord;

pub use crate::core::views::{agent_json, rfc3339};

pub fn agents_table(agents: &[AgentRecord]) -> String {
    let rows: Vec<Vec<String>> = agents
        .iter()
        .map(|agent| {
            let facts = &agent.facts;
            let labels: Vec<String> = facts
                .labels
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect();
            vec![
                agent.name.clone(),
                agent.state.as_str().to_string(),
                facts.platform.as_str().to_string(),
                facts.arch.clone(),
                facts.distro(),
                facts.cpus.to_string(),
                format!("{:.1} GiB", facts.memory_bytes as f64 / (1u64 << 30) as f64),
                rfc3339(agent.last_seen_ms),
                labels.join(","),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "NAME",
            "STATE",
            "PLATFORM",
            "ARCH",
            "DISTRO",
            "CPUS",
            "MEMORY",
            "LAST SEEN",
            "LABELS",
        ],
        &rows,
    );
    if agents.is_empty() {
        out.push_str("(no agents yet: start one with polarizer-agent --join HOST:7700 ...)\n");
    }
    out
}

/// Left-aligned columns, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|header| header.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(headers.iter().map(|header| header.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// Wall-clock milliseconds since the Unix epoch (for `--since 10m` and the like).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Writes `text` to `output` (saying so on standard error), or prints it.
pub fn write_or_print(text: &str, output: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    match output {
        Some(path) => {
            std::fs::write(&path, text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

//! `polarizer failures cluster FILE`: any text clustered offline into templates by `core::cluster`,
//! one line at a time; for every input line, in order, its cluster id and the cluster's template.

use std::io::{BufRead, Write};
use std::path::Path;

use anyhow::Context as _;
use serde_json::json;

use crate::core::cluster::{cluster_lines, ClusterConfig};

pub(super) fn cluster(
    file: &Path,
    json: bool,
    similarity: f64,
    depth: usize,
) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&similarity) {
        anyhow::bail!("--similarity {similarity} is not between 0 and 1");
    }
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?,
        ))
    };
    let mut lines = Vec::new();
    for line in reader.split(b'\n') {
        let line = line.with_context(|| format!("cannot read {}", file.display()))?;
        // Bytes that are not UTF-8 are shown as U+FFFD, never refused.
        let text = String::from_utf8_lossy(&line);
        lines.push(text.trim_end_matches('\r').to_string());
    }
    let config = ClusterConfig {
        similarity,
        depth,
        ..ClusterConfig::default()
    };
    let (clusterer, ids) = cluster_lines(lines.iter().map(String::as_str), config);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        let clusters: Vec<_> = clusterer
            .clusters()
            .into_iter()
            .map(|(id, template, count)| json!({ "id": id, "template": template, "lines": count }))
            .collect();
        serde_json::to_writer_pretty(&mut out, &json!({ "clusters": clusters, "lines": ids }))?;
        writeln!(out)?;
    } else {
        let templates: std::collections::HashMap<u32, String> = clusterer
            .clusters()
            .into_iter()
            .map(|(id, template, _)| (id, template))
            .collect();
        for id in ids {
            writeln!(
                out,
                "{id}\t{}",
                templates.get(&id).map(String::as_str).unwrap_or("")
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

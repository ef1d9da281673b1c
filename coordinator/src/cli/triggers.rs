//! `polarizer triggers`: what arrived from outside and what became of it, as a table or JSON.

use anyhow::Context;
use polarizer_shared::protocol::OperatorResponse;
use polarizer_shared::triggers::TriggerRecord;

use super::format::{rfc3339, table};
use crate::core::views::trigger_json;

pub(super) fn print(response: OperatorResponse, json: bool) -> anyhow::Result<()> {
    let triggers = match response {
        OperatorResponse::Triggers(triggers) => triggers,
        OperatorResponse::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    };
    if json {
        let rows: Vec<_> = triggers.iter().map(trigger_json).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).context("cannot encode JSON")?
        );
        return Ok(());
    }
    if triggers.is_empty() {
        println!("no triggers have arrived");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = triggers
        .iter()
        .map(|trigger| {
            vec![
                trigger.id.to_string(),
                rfc3339(trigger.received_ms),
                trigger.source.clone(),
                trigger.delivery.clone(),
                trigger.repo.clone(),
                trigger.event.clone(),
                // A commit, shortened; a build's NVR (bus triggers), whole.
                if trigger.source.starts_with("bus:") {
                    trigger.sha.clone()
                } else {
                    trigger.sha.chars().take(12).collect()
                },
                outcome_text(trigger),
                trigger.report.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["ID", "TIME", "SOURCE", "DELIVERY", "REPO", "EVENT", "SHA", "OUTCOME", "REPORT"],
            &rows
        )
    );
    Ok(())
}

/// `run 12`, `ignored: a tag push …`, `duplicate: …`, `refused: 401 …`, `failed: …`.
fn outcome_text(trigger: &TriggerRecord) -> String {
    let mut text = match trigger.run {
        Some(run) => format!("run {run}"),
        None => trigger.outcome.to_string(),
    };
    if !trigger.reason.is_empty() {
        text += ": ";
        text += &trigger.reason.replace('\n', " ");
    }
    text
}

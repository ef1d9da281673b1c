//! `polarizer polarion`: the catalog's tests as Polarion test cases (a file, or an upload), a run's
//! results uploaded, and every import followed (`jobs`).

use polarizer_shared::polarion::ImportRecord;
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use serde_json::json;

use super::args::PolarionAction;
use super::client::OperatorClient;
use super::format::{rfc3339, table};

fn queued(response: OperatorResponse, what: &str, json: bool) -> anyhow::Result<()> {
    match response {
        OperatorResponse::PolarionQueued { imports } if json => {
            println!("{}", json!({ "imports": imports }));
        }
        OperatorResponse::PolarionQueued { imports } if imports.is_empty() => {
            println!("{what}: already queued");
        }
        OperatorResponse::PolarionQueued { imports } => {
            let ids: Vec<String> = imports.iter().map(u64::to_string).collect();
            println!(
                "{what}: import {} queued; follow it with `polarizer polarion jobs`",
                ids.join(", ")
            );
        }
        OperatorResponse::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    }
    Ok(())
}

pub(super) async fn polarion_command(
    client: &mut OperatorClient,
    action: PolarionAction,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        PolarionAction::ExportTests {
            filters,
            dry_run,
            output,
        } => {
            let upload = output.is_none();
            let first = client
                .request(OperatorRequest::PolarionTestCases {
                    query: Box::new(filters.query()),
                    dry_run,
                    upload,
                })
                .await?;
            if upload {
                queued(first, "test cases", json)
            } else {
                let text = client.collect_text(first).await?;
                super::format::write_or_print(&text, output)
            }
        }
        PolarionAction::Upload { run, dry_run } => {
            let response = client
                .request(OperatorRequest::PolarionUpload { run, dry_run })
                .await?;
            queued(response, &format!("run {run}"), json)
        }
        PolarionAction::Jobs { limit } => {
            let imports = match client
                .request(OperatorRequest::PolarionJobs { limit })
                .await?
            {
                OperatorResponse::PolarionImports(imports) => imports,
                OperatorResponse::Error { message } => anyhow::bail!("{message}"),
                other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
            };
            if json {
                let rows: Vec<_> = imports.iter().map(import_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if imports.is_empty() {
                println!("no Polarion imports");
            } else {
                let rows: Vec<Vec<String>> = imports
                    .iter()
                    .map(|import| {
                        vec![
                            import.id.to_string(),
                            import.kind.clone(),
                            import
                                .run
                                .map(|run| format!("{run} ({}/{})", import.part, import.parts))
                                .unwrap_or_default(),
                            if import.dry_run {
                                format!("{} (dry run)", import.state)
                            } else {
                                import.state.clone()
                            },
                            import
                                .job_ids
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(","),
                            rfc3339(import.updated_ms),
                            import.testrun_url.clone(),
                            import.message.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["ID", "KIND", "RUN", "STATE", "JOBS", "UPDATED", "TEST RUN", "MESSAGE"],
                        &rows
                    )
                );
            }
            Ok(())
        }
    }
}

fn import_json(import: &ImportRecord) -> serde_json::Value {
    json!({
        "id": import.id,
        "kind": import.kind,
        "run": import.run,
        "part": import.part,
        "parts": import.parts,
        "dry_run": import.dry_run,
        "state": import.state,
        "job_ids": import.job_ids,
        "testrun_url": import.testrun_url,
        "message": import.message,
        "tries": import.tries,
        "created": rfc3339(import.created_ms),
        "updated": rfc3339(import.updated_ms),
    })
}

//! `polarizer tests` and `polarizer features`: the catalog request a command line asks for, and its answer
//! printed as a table or JSON.

use anyhow::Context;
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use serde_json::json;

use super::args::TestsAction;
use super::format::table;

pub(super) fn tests_request(action: TestsAction) -> anyhow::Result<OperatorRequest> {
    Ok(match action {
        TestsAction::Import {
            location,
            git_ref,
            context,
        } => {
            let context = crate::core::source::parse_context(&context)?;
            // A local directory is read by the coordinator: give it an absolute path.
            let location = if crate::core::source::is_git_url(&location) {
                location
            } else {
                std::fs::canonicalize(&location)
                    .with_context(|| format!("{location}: no such directory"))?
                    .display()
                    .to_string()
            };
            OperatorRequest::ImportTests {
                location,
                git_ref,
                context,
            }
        }
        TestsAction::List { filters } => OperatorRequest::ListTests(Box::new(filters.query())),
        TestsAction::Show { id } => OperatorRequest::ShowTest { id },
        // Dispatched before any connection: a lint needs no coordinator.
        TestsAction::Lint { .. } => anyhow::bail!("`tests lint` runs without a coordinator"),
        TestsAction::Flaky { .. } => anyhow::bail!("`tests flaky` has its own answer"),
    })
}

pub(super) fn print_catalog_response(response: OperatorResponse, json: bool) -> anyhow::Result<()> {
    match response {
        OperatorResponse::Imported { source, summary } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "source": source, "summary": summary }))?
                );
            } else {
                let commit = if source.git_commit.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", &source.git_commit)
                };
                println!(
                    "imported {}{commit}: {} tests ({} new, {} changed, {} removed), {} features",
                    source.location,
                    summary.tests,
                    summary.added,
                    summary.changed,
                    summary.removed,
                    summary.features
                );
                for warning in &summary.warnings {
                    eprintln!("{warning}");
                }
            }
        }
        OperatorResponse::Tests(tests) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&tests)?);
            } else {
                let rows: Vec<Vec<String>> = tests
                    .iter()
                    .map(|test| {
                        vec![
                            test.name.clone(),
                            test.test_type.clone(),
                            test.feature.clone(),
                            test.tier.clone(),
                            test.platform_kind.clone(),
                            format!("{}s", test.duration_seconds),
                            if test.removed {
                                "removed".into()
                            } else if test.enabled {
                                String::new()
                            } else {
                                "disabled".into()
                            },
                            test.summary.clone(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "NAME", "TYPE", "FEATURE", "TIER", "PLATFORM", "DURATION", "STATE",
                            "SUMMARY"
                        ],
                        &rows
                    )
                );
                println!("{} tests", tests.len());
            }
        }
        OperatorResponse::Test {
            metadata,
            source,
            removed,
            polarion_id,
        } => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({
                        "metadata": metadata,
                        "source": source,
                        "removed": removed,
                        "polarion_id": polarion_id,
                    }))?
                );
            } else {
                let mut value = serde_json::to_value(&metadata)?;
                if let Some(map) = value.as_object_mut() {
                    map.retain(|_, field| {
                        !(field.is_null()
                            || field == &json!("")
                            || field == &json!([])
                            || field == &json!({}))
                    });
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
                println!(
                    "source: {} {} {}",
                    source.location, source.git_ref, source.git_commit
                );
                if !polarion_id.is_empty() {
                    println!("polarion: {polarion_id}");
                }
                if removed {
                    println!("removed: this test is no longer in its source");
                }
            }
        }
        OperatorResponse::Features(features) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&features)?);
            } else {
                let rows: Vec<Vec<String>> = features
                    .iter()
                    .map(|feature| {
                        vec![
                            if feature.declared {
                                feature.name.clone()
                            } else {
                                format!("{} (undeclared)", feature.name)
                            },
                            feature.depends.join(","),
                            feature.dependents.join(","),
                            feature.direct_tests.to_string(),
                            feature.selected_tests.to_string(),
                            feature.paths.join(","),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "FEATURE",
                            "DEPENDS",
                            "DEPENDENTS",
                            "TESTS",
                            "SELECTED",
                            "PATHS"
                        ],
                        &rows
                    )
                );
            }
        }
        other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
    }
    Ok(())
}

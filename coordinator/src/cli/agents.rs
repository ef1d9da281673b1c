//! `polarizer agents`: the inventory as a table or JSON, approval and revocation.

use anyhow::Context;
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};
use serde_json::json;

use super::args::AgentsAction;
use super::client::OperatorClient;
use super::format::{agent_json, agents_table};

pub(super) async fn agents_command(
    client: &mut OperatorClient,
    action: Option<AgentsAction>,
    json: bool,
    page: (String, Option<u32>),
) -> anyhow::Result<()> {
    match action {
        None => {
            let request = match page {
                (after, None) if after.is_empty() => OperatorRequest::ListAgents,
                (after, limit) => OperatorRequest::ListAgentsPage {
                    after,
                    limit: limit.unwrap_or(u32::MAX),
                },
            };
            let OperatorResponse::Agents(agents) = client.request(request).await? else {
                anyhow::bail!("the coordinator answered a listing with something else");
            };
            if json {
                let rows: Vec<_> = agents.iter().map(agent_json).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&rows).context("cannot encode JSON")?
                );
            } else {
                print!("{}", agents_table(&agents));
            }
        }
        Some(AgentsAction::Revoke { name }) => {
            let response = client
                .request(OperatorRequest::RevokeAgent { name: name.clone() })
                .await?;
            if let OperatorResponse::Revoked { was_online, .. } = response {
                if json {
                    println!(
                        "{}",
                        json!({ "name": name, "revoked": true, "was_online": was_online })
                    );
                } else if was_online {
                    println!("revoked {name}; its connection was closed");
                } else {
                    println!("revoked {name}");
                }
            }
        }
        Some(AgentsAction::Approve { name }) => {
            match client
                .request(OperatorRequest::ApproveAgent { name: name.clone() })
                .await?
            {
                OperatorResponse::Approved { .. } if json => {
                    println!("{}", json!({ "name": name, "approved": true }));
                }
                OperatorResponse::Approved { .. } => {
                    println!("approved {name}; it is admitted at its next connection attempt");
                }
                other => anyhow::bail!("unexpected answer from the coordinator: {other:?}"),
            }
        }
    }
    Ok(())
}

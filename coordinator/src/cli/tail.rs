//! `polarizer tail` and `polarizer replay`: events on the operator's terminal, one line each (time,
//! agent, kind, summary; colour only on a terminal) or one JSON object per line.

use std::io::{IsTerminal, Write};

use anyhow::bail;
use polarizer_shared::events::{EventRow, TailQuery};
use polarizer_shared::protocol::{OperatorRequest, OperatorResponse};

use crate::cli::client::{CoordinatorStopped, OperatorClient};
use crate::core::views::event_json;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Only events from this agent (repeatable)
    #[arg(long)]
    pub agent: Vec<String>,
    /// Only events of this kind (repeatable): dbus, file, package, output, result, dropped, or a custom kind
    #[arg(long)]
    pub kind: Vec<String>,
    /// Only events of this run
    #[arg(long)]
    pub run: Option<u64>,
    /// Only events while this test ran (with --run)
    #[arg(long)]
    pub test: Option<String>,
    /// Start this far back (10m, 30s, 2h, 1h 30m) or after this event id (digits only)
    #[arg(long)]
    pub since: Option<String>,
    /// How many stored events to show first when --since is not given
    #[arg(short = 'n', long, default_value_t = 20)]
    pub lines: u32,
    /// Print what is stored and exit instead of following new events
    #[arg(long)]
    pub no_follow: bool,
    /// Only events whose summary or data match this regular expression
    #[arg(long)]
    pub grep: Option<String>,
    /// One JSON object per line
    #[arg(long)]
    pub json: bool,
}

pub fn tail_query(args: &TailArgs, now_ms: i64) -> anyhow::Result<TailQuery> {
    let (since_ms, after_id) = match args.since.as_deref() {
        None => (None, None),
        Some(text) => polarizer_shared::events::parse_since(text, now_ms)
            .map_err(|why| anyhow::anyhow!("--since {text:?}: {why}"))?,
    };
    if args.test.is_some() && args.run.is_none() {
        bail!("--test needs --run: test names repeat across runs");
    }
    Ok(TailQuery {
        agents: args.agent.clone(),
        kinds: args.kind.clone(),
        run: args.run,
        test: args.test.clone(),
        since_ms,
        after_id,
        grep: args.grep.clone(),
        follow: !args.no_follow,
        limit: if args.since.is_some() {
            None
        } else {
            Some(args.lines)
        },
    })
}

pub async fn tail(client: &mut OperatorClient, args: TailArgs) -> anyhow::Result<()> {
    let query = tail_query(&args, crate::cli::format::now_ms())?;
    let printer = Printer::new(args.json);
    let mut last_id = None;
    let streamed = stream_events(
        client,
        OperatorRequest::Tail(Box::new(query)),
        &printer,
        &mut last_id,
    )
    .await;
    match (streamed, last_id) {
        // Where to pick up once the coordinator is back: right after the last event shown.
        (Err(error), Some(last_id)) if CoordinatorStopped::is(&error) => Err(CoordinatorStopped {
            resume: Some(format!(
                "`polarizer tail --since {last_id}` goes on after the last event shown"
            )),
        }
        .into()),
        (streamed, _) => streamed,
    }
}

pub async fn replay(client: &mut OperatorClient, run: u64, json: bool) -> anyhow::Result<()> {
    let printer = Printer::new(json);
    stream_events(client, OperatorRequest::Replay { run }, &printer, &mut None).await
}

/// Prints events until the stream ends; `last_id` is the last one printed.
async fn stream_events(
    client: &mut OperatorClient,
    request: OperatorRequest,
    printer: &Printer,
    last_id: &mut Option<u64>,
) -> anyhow::Result<()> {
    let mut response = client.request(request).await?;
    let stdout = std::io::stdout();
    loop {
        match response {
            OperatorResponse::Events(events) => {
                let mut out = stdout.lock();
                for event in &events {
                    *last_id = Some(event.id);
                    let line = printer.line(event);
                    // A closed pipe (`| head`) ends the tail quietly.
                    if writeln!(out, "{line}").is_err() {
                        return Ok(());
                    }
                }
                if out.flush().is_err() {
                    return Ok(());
                }
            }
            OperatorResponse::Lagged { missed } => eprintln!(
                "tail: this terminal fell {missed} events behind the live stream; catching up from the store (none is skipped)"
            ),
            OperatorResponse::EventsEnd => return Ok(()),
            other => bail!("unexpected answer from the coordinator: {other:?}"),
        }
        response = client.next().await?;
    }
}

struct Printer {
    json: bool,
    colour: bool,
}

impl Printer {
    fn new(json: bool) -> Printer {
        Printer {
            json,
            colour: !json
                && std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn line(&self, event: &EventRow) -> String {
        if self.json {
            return event_json(event).to_string();
        }
        let time = chrono::DateTime::from_timestamp_millis(event.agent_ms)
            .map(|time| {
                time.with_timezone(&chrono::Local)
                    .format("%H:%M:%S%.3f")
                    .to_string()
            })
            .unwrap_or_default();
        let context = match (event.run, event.test.is_empty()) {
            (Some(run), false) => format!(" [run {run} {}]", event.test),
            (Some(run), true) => format!(" [run {run}]"),
            _ => String::new(),
        };
        let summary: String = event
            .summary
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if self.colour {
            let colour = match event.kind.as_str() {
                "dbus" => "35",
                "file" => "36",
                "package" => "33",
                "result" => "1;32",
                "dropped" => "1;31",
                "output" => "2",
                _ => "34",
            };
            format!(
                "\x1b[2m{time}\x1b[0m {:<10} \x1b[{colour}m{:<8}\x1b[0m {summary}\x1b[2m{context}\x1b[0m",
                event.agent, event.kind
            )
        } else {
            format!(
                "{time} {:<10} {:<8} {summary}{context}",
                event.agent, event.kind
            )
        }
    }
}

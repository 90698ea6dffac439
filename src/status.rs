//! `coxswain status [--server ADDR] [--output text|json]`: the last attempted and the last
//! applied commit of the sync, its state and its errors, read from the store.

use std::process::ExitCode;

use anyhow::Context;
use coxswain_reconciler::notes::CommitState;
use coxswain_reconciler::sync::read_status;
use coxswain_store::Client;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A store member to ask (host:port of `coxswain server`).
    #[arg(long, default_value = "127.0.0.1:7400")]
    server: String,
    /// The cluster's shared token (or set COXSWAIN_TOKEN).
    #[arg(long, env = "COXSWAIN_TOKEN", hide_env_values = true)]
    token: String,
    /// The source whose status to show.
    #[arg(long, default_value = "default")]
    source: String,
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = Client::new(vec![args.server.clone()], &args.token);
    let (record, attempt) = rt
        .block_on(read_status(&client, &args.source))
        .with_context(|| format!("reading the sync status from {}", args.server))?;
    if args.output == Output::Json {
        let out = serde_json::json!({ "lastApplied": record, "lastAttempted": attempt });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        match &attempt {
            Some(a) => {
                println!(
                    "last attempted: {} {} ({}){}",
                    a.commit,
                    a.state.as_str(),
                    a.attempted_at,
                    a.summary_line
                        .as_deref()
                        .map(|s| format!(" {s}"))
                        .unwrap_or_default()
                );
                if let Some(m) = &a.message {
                    println!("  {m}");
                }
                for e in &a.errors {
                    println!(
                        "  {}:{}:{} {} {}",
                        e.file, e.line, e.column, e.pointer, e.reason
                    );
                }
            }
            None => println!("last attempted: none"),
        }
        match &record {
            Some(r) => println!(
                "last applied:   {} ({}): {} created, {} updated, {} deleted, {} unchanged",
                r.commit,
                r.applied_at,
                r.summary.created,
                r.summary.updated,
                r.summary.deleted,
                r.summary.unchanged
            ),
            None => println!("last applied:   none"),
        }
    }
    // Like `validate`: 1 when the newest commit is not running.
    let failed = attempt
        .as_ref()
        .is_some_and(|a| a.state == CommitState::Failed || a.sync.prune_guard.held);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

//! `coxswain diff [PATH] [--rev REV] --server ADDR`: what the sync would do with a commit,
//! planned against the Git-owned objects in the store, without applying anything. Exit 0
//! for no changes, 1 for changes, 2 for an error (an invalid commit included), like
//! `flux diff`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use coxswain_reconciler::plan::{desired_from_report, plan};
use coxswain_reconciler::source::GitTree;
use coxswain_reconciler::sync::load_owned;
use coxswain_schema::{Limits, validate_tree};
use coxswain_store::Client;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The manifests folder inside a Git work tree (as given to `coxswain server --path`).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// The commit to plan (any revision Git understands).
    #[arg(long, default_value = "HEAD")]
    rev: String,
    /// A store member to plan against (host:port of `coxswain server`).
    #[arg(long, default_value = "127.0.0.1:7400")]
    server: String,
    /// The cluster's shared token (or set COXSWAIN_TOKEN).
    #[arg(long, env = "COXSWAIN_TOKEN", hide_env_values = true)]
    token: String,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let tree = GitTree::open(&args.path, &args.rev)?;
    let report = validate_tree(&tree, &Limits::default());
    if !report.is_valid() {
        for d in &report.diagnostics {
            eprintln!("{}", d.render(color));
        }
        bail!(
            "{} is invalid ({} errors): the sync would refuse it and apply nothing",
            args.rev,
            report.diagnostics.len()
        );
    }
    let desired = desired_from_report(&report)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = Client::new(vec![args.server.clone()], &args.token);
    let owned = rt
        .block_on(load_owned(&client))
        .with_context(|| format!("listing the store at {}", args.server))?;
    let plan = plan(&desired, &owned);
    print!("{}", plan.render(color));
    Ok(if plan.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

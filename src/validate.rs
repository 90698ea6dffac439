//! `coxswain validate [PATH] [--rev REV] [--output text|json]`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use coxswain_reconciler::source::GitTree;
use coxswain_schema::tree::{DirTree, Tree};
use coxswain_schema::{Limits, Report, validate_tree};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A folder or file of manifests (*.yaml, *.yml, *.json).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Validate this commit (any revision Git understands: HEAD~1, a branch, a tag, a hash)
    /// of the repository PATH is in, read straight from Git without a checkout.
    #[arg(long)]
    rev: Option<String>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let span =
        tracing::info_span!("validate", path = %args.path.display(), rev = args.rev.as_deref());
    let _enter = span.enter();
    let started = std::time::Instant::now();
    let tree: Box<dyn Tree> = match &args.rev {
        Some(rev) => Box::new(GitTree::open(&args.path, rev)?),
        None => Box::new(DirTree::new(&args.path)?),
    };
    let report = validate_tree(tree.as_ref(), &Limits::default());
    tracing::info!(
        files = report.files.len(),
        diagnostics = report.diagnostics.len(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "validated"
    );
    let mut out = std::io::stdout().lock();
    match args.output {
        Output::Json => {
            serde_json::to_writer_pretty(&mut out, &json_report(&report))?;
            writeln!(out)?;
        }
        Output::Text => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            for d in &report.diagnostics {
                writeln!(out, "{}", d.render(color))?;
            }
            let objects = report.objects().count();
            if report.is_valid() {
                writeln!(
                    out,
                    "valid: {objects} objects in {} files",
                    report.files.len()
                )?;
            } else {
                let files: std::collections::BTreeSet<&str> =
                    report.diagnostics.iter().map(|d| d.file.as_str()).collect();
                writeln!(
                    out,
                    "invalid: {} error{} in {} file{}; nothing would be applied",
                    report.diagnostics.len(),
                    if report.diagnostics.len() == 1 {
                        ""
                    } else {
                        "s"
                    },
                    files.len(),
                    if files.len() == 1 { "" } else { "s" },
                )?;
            }
        }
    }
    Ok(if report.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn json_report(report: &Report) -> serde_json::Value {
    serde_json::json!({
        "valid": report.is_valid(),
        "files": report.files.len(),
        "objects": report.objects().count(),
        "errors": report.diagnostics,
    })
}

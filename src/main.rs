//! The `coxswain` binary. Each subcommand lives in its own module; this file only parses the
//! command line, sets up logging and maps results to exit codes (0 success, 1 a negative
//! answer such as "invalid", 2 a usage or I/O error).

mod agent;
mod config;
mod diff;
mod get;
mod image;
mod logs;
#[cfg(all(rocksdb_statics_deferred, not(test)))]
mod rocksdb_statics;
mod runtime;
mod server;
mod status;
mod top;
mod up;
mod validate;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

// Validation parses files on every core and allocates many small nodes; glibc's per-thread
// arenas spend a large share of that time growing and trimming. mimalloc does not. It is
// built without transparent huge pages (see the workspace Cargo.toml) to keep idle RSS small.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "coxswain",
    version,
    about = "GitOps reconciler and small container orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a folder of manifests, or a commit of the Git repository it is in.
    Validate(validate::Args),
    /// Run one member of the replicated store, and with --repo the GitOps sync.
    // Boxed: its flags make it far larger than the other variants.
    Server(Box<server::Args>),
    /// Show what the sync would change for a commit, without applying it.
    Diff(diff::Args),
    /// Show the sync's last attempted and last applied commit.
    Status(status::Args),
    /// Import, list and remove the node's container images.
    Image(image::Args),
    /// Run this machine as a node: register it, and run the pods bound to it.
    Agent(Box<agent::Args>),
    /// Print a container's logs.
    Logs(logs::Args),
    /// List stored objects with kubectl's columns, or as a List object.
    Get(get::Args),
    /// Show the cpu and memory pods use, as `kubectl top pod` does.
    Top(top::Args),
    /// Run everything on this machine: store, controllers, scheduler, agent and the sync of
    /// examples-repo/.
    Up(Box<up::Args>),
}

/// RocksDB (C++) allocates through glibc's malloc, not mimalloc. Its memtables grow in
/// blocks of 1/8 of their size, which glibc serves with mmap and unmaps when a flushed
/// memtable is freed. But glibc then raises its mmap threshold to the freed block's size,
/// so every later block lands in a malloc arena, whose freed pages an idle process keeps:
/// `coxswain up` held 13 MiB there after 20 deploy/undeploy runs, 2 MiB with the threshold
/// fixed at glibc's default (see docs/benchmarks.md, "Idle memory").
#[allow(unsafe_code)]
fn fix_malloc_mmap_threshold() {
    const MMAP_THRESHOLD: nix::libc::c_int = 128 * 1024;
    // SAFETY: mallopt only sets an allocator parameter; it takes glibc's own locks and
    // has no memory-safety preconditions. A 0 return (not applied) keeps glibc's default.
    let applied = unsafe { nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
    if applied == 0 {
        tracing::debug!("mallopt(M_MMAP_THRESHOLD) was not applied");
    }
}

fn main() -> ExitCode {
    // The agent re-runs this binary as its container launcher, which forks and so must be
    // single-threaded: it takes over before anything here could start a thread.
    if let Some(code) = coxswain_node::runtime::launcher::main_if_launcher() {
        return ExitCode::from(u8::try_from(code).unwrap_or(2));
    }
    // RocksDB's constructors run when a store first opens (see src/rocksdb_statics.rs). This
    // file's own unit tests are linked with the same script but have no `main` to register
    // them, so they must not open a store; none does (the store is tested in its crate).
    #[cfg(all(rocksdb_statics_deferred, not(test)))]
    coxswain_store::defer_rocksdb_statics(rocksdb_statics::run);
    // Logs go to stderr so that `--output json` on stdout stays machine-readable.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    fix_malloc_mmap_threshold();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate(args) => validate::run(&args),
        Command::Server(args) => server::run(*args),
        Command::Status(args) => status::run(&args),
        Command::Diff(args) => diff::run(&args),
        Command::Image(args) => image::run(&args),
        Command::Agent(args) => agent::run(&args),
        Command::Logs(args) => logs::run(&args),
        Command::Get(args) => get::run(&args),
        Command::Top(args) => top::run(&args),
        Command::Up(args) => up::run(*args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes on one line, skipping a cause that the message before it already
/// quotes (some library errors include their source in their own text).
fn describe(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

//! `coxswain-bench`: benchmarks that print coxswain's figures, side by side with a peer run
//! on the same input in the same run where one exists on the machine. Every subcommand takes
//! `--quick` (done within a minute, used by the test suite) and `--json`.

mod common;
mod e2e;
mod generate;
mod pods;
mod rss;
mod schedule;
mod store;
mod sync;
mod validate;

use clap::{Parser, Subcommand};

// Validation parses files on every core and allocates many small nodes; glibc's per-thread
// arenas spend a large share of that time growing and trimming. mimalloc does not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "coxswain-bench", about = "coxswain benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a generated repository (10,000 objects in 1,000 files), against
    /// `kubernetes-validate --strict` on the same files.
    Validate(validate::Args),
    /// Put throughput and latency of the replicated store (1, 16, 256 clients; 1 and 3
    /// members), against etcd driven by the same load generator, plus memory after many writes.
    Store(store::Args),
    /// Git to store on a generated repository of 10,000 objects: the first full sync, a
    /// one-file incremental sync, a no-op poll beside `git ls-remote`, and commit → stored
    /// latency through the notify watch, each beside its target.
    Sync(sync::Args),
    /// Pod starts on this machine through the real runtime (sandbox, network, container),
    /// beside `runc run` of the same busybox rootfs and a bare `unshare`.
    Pods(pods::Args),
    /// The scheduler at scheduler_perf's SchedulingBasic size (5,000 simulated nodes, 10,000
    /// pods): decisions per second and p99 per decision, and pods bound per second through
    /// Raft by the scheduler controller.
    Schedule(schedule::Args),
    /// A commit of a 10-replica busybox httpd Deployment → all Ready, p50 and p99 over 20
    /// runs, through `coxswain up` (as root), and its idle RSS.
    E2e(e2e::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Validate(args) => validate::run(&args),
        Command::Store(args) => store::run(&args),
        Command::Sync(args) => sync::run(&args),
        Command::Pods(args) => pods::run(&args),
        Command::Schedule(args) => schedule::run(&args),
        Command::E2e(args) => e2e::run(&args),
    }
}

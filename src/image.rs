//! `coxswain image import|ls|rm`: the node-wide image store (`coxswain_node::image`), which
//! lives apart from any `--data` dir so that a fresh control plane finds the images already
//! imported.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use coxswain_node::image::{DEFAULT_ROOT, ImageStore};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The image store's folder.
    #[arg(long, global = true, default_value = DEFAULT_ROOT, env = "COXSWAIN_IMAGES")]
    store: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Import NAME[:TAG] from a rootfs folder, a tar (gzip or not) or an OCI image layout
    /// (a folder or a tar).
    Import { reference: String, path: PathBuf },
    /// List the imported images.
    #[command(alias = "list")]
    Ls,
    /// Forget an image's name; its files go with the next import's prune of unused images.
    Rm { reference: String },
}

pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let store = ImageStore::open(&args.store)
        .with_context(|| format!("opening the image store {}", args.store.display()))?;
    match &args.command {
        Command::Import { reference, path } => {
            let image = store
                .import(reference, path)
                .with_context(|| format!("importing {} as {reference}", path.display()))?;
            println!(
                "imported {} ({}, {:.1} MiB)",
                image.reference,
                short(&image.id),
                image.size_bytes as f64 / (1024.0 * 1024.0)
            );
        }
        Command::Ls => {
            println!("{:<40} {:<14} {:>10}  IMPORTED", "IMAGE", "ID", "SIZE");
            for image in store.list()? {
                println!(
                    "{:<40} {:<14} {:>8.1}Mi  {}",
                    image.reference,
                    short(&image.id),
                    image.size_bytes as f64 / (1024.0 * 1024.0),
                    image.imported_at
                );
            }
        }
        Command::Rm { reference } => match store.remove(reference)? {
            Some(image) => println!("removed {}", image.reference),
            None => {
                eprintln!("no image {reference}");
                return Ok(ExitCode::from(1));
            }
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// An id as `docker images` shows it: twelve hex digits, without the algorithm.
fn short(id: &str) -> &str {
    let hex = id.rsplit(':').next().unwrap_or(id);
    hex.get(..12).unwrap_or(hex)
}

//! `xfer store info|verify|compact`: inspect and maintain an embeddings store.

use std::path::PathBuf;

use anyhow::Context;
use xfer_store::{StoreLock, StoreReader};

/// Subcommands of `xfer store`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Rows per split, label and model; embedding dimension; size on disk.
    Info {
        /// Store directory.
        #[arg(default_value = "store", value_name = "DIR")]
        dir: PathBuf,
        /// Also decode every page of every part and check its checksum (`xfer store verify`).
        #[arg(long)]
        verify: bool,
        /// Also count the stale rows against this dataset (folder or CSV manifest): rows of
        /// images deleted, moved, renamed or relabelled since the last `xfer extract`, which
        /// the next `xfer extract` drops.
        #[arg(long, value_name = "DIR|CSV")]
        data: Option<PathBuf>,
    },
    /// Decode every page of every part file and check each against the checksum in its
    /// footer; name the damaged parts with the remedy (exit status 1 when any is damaged).
    Verify {
        /// Store directory.
        #[arg(default_value = "store", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Merge the part files into one file per model and drop superseded rows (under the
    /// store's lock: it waits for a running `xfer extract`).
    Compact {
        /// Store directory.
        #[arg(default_value = "store", value_name = "DIR")]
        dir: PathBuf,
        /// Fail at once when another writer holds the store's lock, instead of waiting.
        #[arg(long)]
        no_wait: bool,
    },
}

/// Decodes every part of `store`; an error naming each damaged part with the remedy.
fn verify_store(store: &StoreReader) -> anyhow::Result<()> {
    let damaged = store.verify();
    if damaged.is_empty() {
        println!(
            "verified {} part file(s): every page decodes and matches its checksum",
            store.files().len()
        );
        return Ok(());
    }
    for e in &damaged {
        eprintln!("{e}");
    }
    anyhow::bail!(
        "{} of {} part file(s) in {} are damaged",
        damaged.len(),
        store.files().len(),
        store.dir().display()
    )
}

/// Per model: the rows the next `xfer extract` of `data` drops (images gone or relabelled).
fn print_stale_rows(store: &StoreReader, data: &std::path::Path) -> anyhow::Result<()> {
    let dataset = xfer_data::Dataset::open(data)
        .with_context(|| format!("listing dataset {}", data.display()))?;
    for (fp, name) in store.models() {
        let stale = store
            .stale_rows(&dataset, &fp)
            .with_context(|| format!("reading store {}", store.dir().display()))?;
        if stale.dropped() == 0 {
            println!("model {name}: no stale rows against {}", data.display());
        } else {
            println!(
                "model {name}: {} stale row(s) against {} ({} of images gone, {} relabelled); the next `xfer extract --data {}` drops them, reusing the embeddings of moved or relabelled images",
                stale.dropped(),
                data.display(),
                stale.gone,
                stale.relabelled_rows,
                data.display()
            );
        }
    }
    Ok(())
}

/// Runs an `xfer store` subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info { dir, verify, data } => {
            let store = StoreReader::open(&dir)
                .with_context(|| format!("opening store {}", dir.display()))?;
            let info = store
                .info()
                .with_context(|| format!("reading store {}", dir.display()))?;
            print!("{info}");
            if let Some(data) = data {
                print_stale_rows(&store, &data)?;
            }
            if verify {
                verify_store(&store)?;
            }
        }
        Command::Verify { dir } => {
            let store = StoreReader::open(&dir)
                .with_context(|| format!("opening store {}", dir.display()))?;
            verify_store(&store)?;
        }
        Command::Compact { dir, no_wait } => {
            StoreReader::open(&dir).with_context(|| format!("opening store {}", dir.display()))?;
            let lock = StoreLock::acquire(&dir, None, super::extract::lock_wait(no_wait))
                .with_context(|| format!("locking store {}", dir.display()))?;
            let s = lock
                .compact()
                .with_context(|| format!("compacting store {}", dir.display()))?;
            if s.files_out.is_empty() {
                println!("{}: already compact ({} rows)", dir.display(), s.rows);
            } else {
                println!(
                    "{}: merged {} part file(s) into {} ({} rows kept, {} superseded rows dropped)",
                    dir.display(),
                    s.files_in,
                    s.files_out
                        .iter()
                        .map(|p| p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default())
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.rows,
                    s.dropped
                );
            }
            if s.temp_removed > 0 {
                println!(
                    "removed {} temporary file(s) of killed writers",
                    s.temp_removed
                );
            }
        }
    }
    Ok(())
}

//! `xfer store info|compact`: inspect and maintain an embeddings store.

use std::path::PathBuf;

use anyhow::Context;
use xfer_store::StoreReader;

/// Subcommands of `xfer store`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Rows per split, label and model; embedding dimension; size on disk.
    Info {
        /// Store directory.
        #[arg(default_value = "store", value_name = "DIR")]
        dir: PathBuf,
    },
    /// Merge the part files into one file per model and drop superseded rows
    /// (run it when no `xfer extract` is writing to the store).
    Compact {
        /// Store directory.
        #[arg(default_value = "store", value_name = "DIR")]
        dir: PathBuf,
    },
}

/// Runs an `xfer store` subcommand.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Info { dir } => {
            let store = StoreReader::open(&dir)
                .with_context(|| format!("opening store {}", dir.display()))?;
            let info = store
                .info()
                .with_context(|| format!("reading store {}", dir.display()))?;
            print!("{info}");
        }
        Command::Compact { dir } => {
            let store = StoreReader::open(&dir)
                .with_context(|| format!("opening store {}", dir.display()))?;
            let s = store
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

//! `xfer train_graph` (under construction).

/// Arguments of `xfer train_graph`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `xfer train_graph`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`xfer train_graph` is not built yet")
}

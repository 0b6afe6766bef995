//! `xfer finetune` (under construction).

/// Arguments of `xfer finetune`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `xfer finetune`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`xfer finetune` is not built yet")
}

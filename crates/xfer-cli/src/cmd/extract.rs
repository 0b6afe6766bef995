//! `xfer extract` (under construction).

/// Arguments of `xfer extract`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `xfer extract`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`xfer extract` is not built yet")
}

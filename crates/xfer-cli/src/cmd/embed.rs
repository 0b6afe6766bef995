//! `xfer embed` (under construction).

/// Arguments of `xfer embed`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `xfer embed`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`xfer embed` is not built yet")
}

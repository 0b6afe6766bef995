//! `xfer convert` (under construction).

/// Arguments of `xfer convert`.
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Runs `xfer convert`.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("`xfer convert` is not built yet")
}

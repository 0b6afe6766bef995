//! `xfer data` subcommands (under construction).

/// Subcommands of `xfer data`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Describe.
    Info,
}

/// Runs an `xfer data` subcommand.
pub fn run(_command: Command) -> anyhow::Result<()> {
    anyhow::bail!("`xfer data` is not built yet")
}

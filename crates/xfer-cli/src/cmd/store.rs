//! `xfer store` subcommands (under construction).

/// Subcommands of `xfer store`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Describe.
    Info,
}

/// Runs an `xfer store` subcommand.
pub fn run(_command: Command) -> anyhow::Result<()> {
    anyhow::bail!("`xfer store` is not built yet")
}

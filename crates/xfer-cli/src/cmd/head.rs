//! `xfer train-head`, `evaluate`, `export`, `predict` (under construction).

/// Arguments of `xfer train-head`.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {}
/// Arguments of `xfer evaluate`.
#[derive(Debug, clap::Args)]
pub struct EvaluateArgs {}
/// Arguments of `xfer export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {}
/// Arguments of `xfer predict`.
#[derive(Debug, clap::Args)]
pub struct PredictArgs {}

/// Runs `xfer train-head`.
pub fn train(_args: TrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("`xfer train-head` is not built yet")
}
/// Runs `xfer evaluate`.
pub fn evaluate(_args: EvaluateArgs) -> anyhow::Result<()> {
    anyhow::bail!("`xfer evaluate` is not built yet")
}
/// Runs `xfer export`.
pub fn export(_args: ExportArgs) -> anyhow::Result<()> {
    anyhow::bail!("`xfer export` is not built yet")
}
/// Runs `xfer predict`.
pub fn predict(_args: PredictArgs) -> anyhow::Result<()> {
    anyhow::bail!("`xfer predict` is not built yet")
}

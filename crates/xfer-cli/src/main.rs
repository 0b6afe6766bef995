//! `xfer`: image transfer learning and fine-tuning from the command line.
//!
//! This binary only parses arguments, wires the library crates together and
//! reports; every capability lives in a `xfer-*` library crate.

mod args;
mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Image transfer learning and fine-tuning on ONNX Runtime.
#[derive(Debug, Parser)]
#[command(name = "xfer", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Convert a Keras `.keras` model into ONNX plus an xfer manifest.
    Convert(cmd::convert::Args),
    /// Embed images with a backbone and print or save the feature vectors.
    Embed(cmd::embed::Args),
    /// Datasets: import the demo data, describe a dataset folder.
    #[command(subcommand)]
    Data(cmd::data::Command),
    /// Extract embeddings of a dataset into the Parquet store (cached, resumable).
    Extract(cmd::extract::Args),
    /// Inspect and maintain an embeddings store.
    #[command(subcommand)]
    Store(cmd::store::Command),
    /// Train a logistic head on stored embeddings.
    TrainHead(cmd::head::TrainArgs),
    /// Evaluate a trained head (or an exported model) on a split.
    Evaluate(cmd::evaluate::Args),
    /// Export backbone + head as one ONNX model (pixels -> probabilities).
    Export(cmd::export::Args),
    /// Classify images with an exported model.
    Predict(cmd::predict::Args),
    /// Quantize a model folder to int8 (QDQ), calibrated on images decoded as extract does.
    Quantize(cmd::quantize::Args),
    /// Build an ONNX training graph (forward + loss + gradients).
    TrainGraph(cmd::train_graph::Args),
    /// Train a new head on augmented images, then fine-tune the backbone.
    Finetune(cmd::finetune::Args),
    /// Check what a device needs: ONNX Runtime, the provider's libraries, the driver, the GPU.
    Doctor(cmd::doctor::Args),
    /// Write one self-contained report.html about runs of train-head and finetune.
    Report(cmd::report::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Convert(args) => cmd::convert::run(args),
        Command::Embed(args) => cmd::embed::run(args),
        Command::Data(command) => cmd::data::run(command),
        Command::Extract(args) => cmd::extract::run(args),
        Command::Store(command) => cmd::store::run(command),
        Command::TrainHead(args) => cmd::head::train(args),
        Command::Evaluate(args) => cmd::evaluate::run(args),
        Command::Export(args) => cmd::export::run(args),
        Command::Predict(args) => cmd::predict::run(args),
        Command::Quantize(args) => cmd::quantize::run(args),
        Command::TrainGraph(args) => cmd::train_graph::run(args),
        Command::Finetune(args) => cmd::finetune::run(args),
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Report(args) => cmd::report::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // colour only for a terminal: logs piped to a file stay plain text
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

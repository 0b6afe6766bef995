//! `xfer extract`: embeddings of a dataset into the Parquet store, cached and resumable.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use xfer_data::OnError;
use xfer_store::LockWait;
use xfer_store::extract::{ExtractConfig, Shard, extract};

use crate::args::{RuntimeArgs, SplitArgs};

/// Arguments of `xfer extract`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset root: one subfolder per class, or a CSV manifest `path,label`.
    #[arg(long, default_value = "data/cats_vs_dogs", value_name = "DIR")]
    pub data: PathBuf,
    /// Which images go to which split (images in none are not extracted).
    #[command(flatten)]
    pub splits: SplitArgs,
    /// Model folder (model.onnx + model.json).
    #[arg(long, default_value = "models/xception", value_name = "DIR")]
    pub model: PathBuf,
    /// Store directory (created if missing).
    #[arg(long, default_value = "store", value_name = "DIR")]
    pub store: PathBuf,
    /// Images per ONNX Runtime run.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// How the model runs.
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Decoder threads (default: one per core).
    #[arg(long)]
    pub decode_threads: Option<usize>,
    /// Extract only shard I of N (`I/N`, by a hash of the image id) into its own part files.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    /// Move stored rows whose split differs from what --split/--seed give now (e.g. after
    /// images were added) to their new split, keeping their embeddings, instead of refusing.
    #[arg(long)]
    pub retag: bool,
    /// Allow a store that already holds another model's embeddings.
    #[arg(long)]
    pub allow_mixed_models: bool,
    /// Unreadable images: `skip` (report them) or `fail` (stop).
    #[arg(long, default_value = "skip", value_parser = parse_on_error)]
    pub on_error: OnError,
    /// Only N images (a fixed sample across the splits) — for quick runs and benchmarks.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Rows per part file (a killed run loses at most this many rows of work).
    #[arg(long, default_value_t = 256)]
    pub rows_per_part: usize,
    /// Decoded batches queued ahead of inference.
    #[arg(long, default_value_t = 4)]
    pub queue_depth: usize,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Fail at once when another writer holds the store's lock, instead of waiting for it.
    #[arg(long)]
    pub no_wait: bool,
}

/// `--no-wait` as the store lock's wait mode.
pub fn lock_wait(no_wait: bool) -> LockWait {
    if no_wait {
        LockWait::NoWait
    } else {
        LockWait::Wait
    }
}

fn parse_on_error(s: &str) -> Result<OnError, String> {
    s.parse::<OnError>().map_err(|e| e.to_string())
}

/// The extract progress bar: no length (an empty bar) until there is something to do; the
/// rate rounded to one decimal (`16.4/s`).
fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::no_length();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} images ({rate}, ETA {eta}) {msg}",
        )
        .map(|s| {
            s.with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&rate_text(state.per_sec()));
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `16.4/s`: images per second to one decimal.
fn rate_text(per_sec: f64) -> String {
    format!("{per_sec:.1}/s")
}

/// Shows the counts of `p` on `bar`; with nothing to embed the bar stays empty and says so.
fn show_progress(bar: &ProgressBar, p: &xfer_store::extract::ExtractProgress) {
    if p.total > 0 {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
    }
    let counts = format!(
        "embedded {}, cached {}, skipped {}",
        p.embedded, p.cached, p.skipped
    );
    bar.set_message(if p.total == 0 {
        format!("nothing to embed ({counts})")
    } else {
        counts
    });
}

/// Runs `xfer extract`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ExtractConfig::new(&args.data, &args.model, &args.store)?;
    config.splits = args.splits.assignment();
    config.seed = args.splits.seed;
    config.batch_size = args.batch_size;
    config.session = args.runtime.session_options();
    config.shard = args.shard;
    config.allow_mixed_models = args.allow_mixed_models;
    config.retag = args.retag;
    config.on_error = args.on_error;
    config.decode_threads = args.decode_threads;
    config.limit = args.limit;
    config.rows_per_part = args.rows_per_part;
    config.queue_depth = args.queue_depth;
    config.wait = lock_wait(args.no_wait);

    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        progress_bar()
    };
    let result = extract(&config, &mut |p| show_progress(&bar, p));
    bar.finish_and_clear();
    let summary = result.with_context(|| {
        format!(
            "extracting {} with {} into {}",
            config.data.display(),
            config.model_dir.display(),
            config.store.display()
        )
    })?;
    println!("{summary}");
    if summary.changed + summary.retagged > 0 {
        println!(
            "{} image(s) now have a newer row; `xfer store compact {}` drops the old ones",
            summary.changed + summary.retagged,
            config.store.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_has_one_decimal_and_nothing_to_do_is_an_empty_bar() {
        assert_eq!(rate_text(16.414_432), "16.4/s");
        assert_eq!(rate_text(0.0), "0.0/s");
        let bar = ProgressBar::hidden();
        let nothing = xfer_store::extract::ExtractProgress::default();
        show_progress(&bar, &nothing);
        assert_eq!(
            bar.length(),
            None,
            "no length: an empty bar, not a full one at 0/0"
        );
        assert!(
            bar.message().contains("nothing to embed"),
            "{}",
            bar.message()
        );
        let some = xfer_store::extract::ExtractProgress {
            total: 10,
            done: 4,
            ..Default::default()
        };
        show_progress(&bar, &some);
        assert_eq!((bar.length(), bar.position()), (Some(10), 4));
    }
}

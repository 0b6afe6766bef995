//! `xfer report`: one self-contained report.html about runs of `train-head` and `finetune`.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `xfer report`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folders (`xfer train-head --out` or `xfer finetune --out`).
    #[arg(required = true, value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// Dataset folder of runs that do not name one (head-only runs) or whose recorded folder is
    /// not found from here, for the thumbnails of the misclassified images.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Where to write the report (default: report.html in the first run's parent folder).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Runs `xfer report`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let out = match &args.out {
        Some(o) => o.clone(),
        None => args
            .runs
            .first()
            .and_then(|r| r.parent())
            .unwrap_or_else(|| std::path::Path::new("."))
            .join(xfer_report::REPORT_HTML),
    };
    let runs = xfer_report::write_report(&args.runs, args.data.as_deref(), &out)
        .with_context(|| format!("writing {}", out.display()))?;
    for r in &runs {
        let errors = r.test_errors().map_or_else(
            || "no test split".to_owned(),
            |e| format!("{e} test errors"),
        );
        eprintln!("{}: {} ({errors})", r.name, r.kind.describe());
    }
    println!("{}", out.display());
    Ok(())
}

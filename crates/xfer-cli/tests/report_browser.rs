//! `xfer report` in a real browser (issue 17): a head-only run trained in the test (tiny
//! backbone, generated images, a few of them mislabelled so that the test split has errors)
//! and a fine-tuning run's files, written to one report.html, loaded by headless Chromium
//! (Debian's `chromium` package; `just test` installs it). Asserts: no console or script
//! errors, a screenshot that is not blank, and one thumbnail per test error of metrics.json.
//! With XFER_REQUIRE_DEMO set, the demo's runs (`runs/demo/{head,finetune}`) are checked too
//! when `just demo` has written them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{SIZE, fill_store, images, path, tiny_backbone, xfer};
use xfer_data::RgbImage;
use xfer_finetune::{EpochRecord, FinetuneConfig, MetricsLog};

/// The Chromium binary: $XFER_CHROMIUM, or `chromium` / `chromium-browser` on the PATH.
fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("XFER_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| ["chromium", "chromium-browser"].map(|n| d.join(n)))
        .find(|p| p.is_file())
}

/// Chromium's output for `page` with the isolating flags plus `extra`: (stdout, stderr).
fn run_chromium(browser: &Path, page: &Path, extra: &[String]) -> (String, String) {
    let profile = tempfile::tempdir().expect("profile dir");
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(format!("file://{}", page.display()));
    let out = cmd.output().expect("run chromium");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "chromium failed:\n{stderr}");
    (stdout, stderr)
}

/// Test errors of a run's metrics.json: test rows minus the confusion matrix's diagonal.
fn test_errors(run: &Path) -> usize {
    let text = std::fs::read_to_string(run.join("metrics.json")).expect("metrics.json");
    let m: serde_json::Value = serde_json::from_str(&text).expect("json");
    let rows = m["test"]["rows"].as_u64().expect("test rows") as usize;
    let confusion = m["test"]["confusion"].as_array().expect("confusion");
    let right: u64 = confusion
        .iter()
        .enumerate()
        .map(|(i, row)| row[i].as_u64().expect("count"))
        .sum();
    rows - right as usize
}

/// Loads `page` in Chromium and checks it: no console messages, no script errors, one
/// thumbnail per test error of `runs`, a screenshot that is not blank.
fn check_in_browser(browser: &Path, page: &Path, runs: &[&Path]) {
    let (dom, stderr) = run_chromium(browser, page, &["--dump-dom".to_owned()]);
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:#?}");
    assert!(
        dom.contains("data-errors=\"0\""),
        "script errors (or the load handler did not run): {}",
        dom.lines().find(|l| l.contains("<body")).unwrap_or("")
    );
    let expected: usize = runs.iter().map(|r| test_errors(r)).sum();
    let thumbnails = dom.matches("<figure class=\"miss\">").count();
    assert_eq!(thumbnails, expected, "thumbnails vs test errors");
    assert!(
        dom.contains(&format!("data-thumbnails=\"{expected}\"")),
        "the page counted other thumbnails"
    );
    assert_eq!(
        dom.matches("<img src=\"data:image/jpeg;base64,").count(),
        expected,
        "every thumbnail is an embedded image"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let shot = dir.path().join("shot.png");
    run_chromium(
        browser,
        page,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1200,1600".to_owned(),
        ],
    );
    let img = image::open(&shot).expect("screenshot").to_rgb8();
    let (w, h) = img.dimensions();
    let inked = img
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 200))
        .count();
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        inked * 100 > (w * h) as usize && colours.len() > 50,
        "blank screenshot: {inked} inked pixels of {}, {} colours",
        w * h,
        colours.len()
    );
    if let Some(keep) = std::env::var_os("XFER_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("keep screenshot");
    }
}

/// Adds `n` reddish ("cat"-coloured) images to the `dog` class, all in the test split.
fn mislabelled(data: &Path, n: usize) -> Vec<(String, i32, &'static str)> {
    (0..n)
        .map(|i| {
            let raw: Vec<u8> = (0..SIZE * SIZE)
                .flat_map(|k| [150 + (k % 7) as u8, 100, 90 + (i as u8) * 5])
                .collect();
            let img = RgbImage::from_raw(SIZE, SIZE, raw).expect("image");
            let id = format!("dog/odd{i}.png");
            img.save(data.join(&id)).expect("save");
            (id, 1, "test")
        })
        .collect()
}

/// A fine-tuning run's files (config, epoch log, metrics, predictions) for the same images:
/// five epochs, phase 2 from epoch 4, epoch 4 exported.
fn fine_tuning_run(run: &Path, data: &Path, predictions_from: &Path) {
    std::fs::create_dir_all(run).expect("run dir");
    let config = FinetuneConfig {
        data: data.to_path_buf(),
        ..FinetuneConfig::default()
    };
    config.save(run).expect("config");
    let mut log = MetricsLog::create(run).expect("log");
    for e in 1..=5usize {
        let loss = 0.7 / e as f64;
        log.append(EpochRecord {
            phase: if e <= 3 { 1 } else { 2 },
            epoch: if e <= 3 { e } else { e - 3 },
            global_epoch: e,
            step: e as u64 * 4,
            learning_rate: 1e-3,
            train_loss: loss,
            train_accuracy: 1.0 - loss / 2.0,
            val_loss: if e == 5 { 0.2 } else { loss * 1.1 },
            val_accuracy: 1.0 - loss / 3.0,
            images_per_second: 50.0,
            train_seconds: 2.0,
            seconds: 2.5,
            skipped_train: Vec::new(),
            skipped_val: Vec::new(),
        })
        .expect("append");
    }
    let mut metrics: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(predictions_from.join("metrics.json")).expect("metrics"),
    )
    .expect("json");
    let metrics = serde_json::json!({
        "test": metrics["test"].take(),
        "exported": {"choice": "best", "global_epoch": 4, "phase": 2, "val_loss": 0.1925},
    });
    std::fs::write(run.join("metrics.json"), metrics.to_string()).expect("metrics");
    std::fs::copy(
        predictions_from.join("predictions.jsonl"),
        run.join("predictions.jsonl"),
    )
    .expect("predictions");
}

fn require_browser() -> bool {
    ["XFER_REQUIRE_DEMO", "XFER_REQUIRE_BROWSER", "CI"]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
}

#[test]
fn the_report_loads_in_chromium_without_errors_and_shows_every_misclassified_image() {
    let Some(browser) = chromium() else {
        assert!(
            !require_browser(),
            "chromium is not installed (apt-get install -y chromium; `just browser` does it)"
        );
        eprintln!("skipping: chromium is not installed (set XFER_REQUIRE_BROWSER to require it)");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = root.join("data");
    let model_dir = root.join("models/tiny");
    let store = root.join("store");
    let cwd = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tiny_backbone(&model_dir, 0.0);
    let mut rows = images(&data);
    rows.extend(mislabelled(&data, 3));
    fill_store(&store, &model_dir, &data, &rows);

    let head = root.join("runs/head");
    let (ok, stdout, stderr) = xfer(
        &["train-head", "--store", path(&store), "--out", path(&head)],
        &cwd,
    );
    assert!(ok, "train-head failed:\n{stdout}\n{stderr}");
    let errors = test_errors(&head);
    assert!(errors > 0, "the mislabelled images should be test errors");
    let finetune = root.join("runs/finetune");
    fine_tuning_run(&finetune, &data, &head);

    let page = root.join("runs/report.html");
    let (ok, stdout, stderr) = xfer(
        &[
            "report",
            path(&head),
            path(&finetune),
            "--data",
            path(&data),
        ],
        &cwd,
    );
    assert!(ok, "report failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), path(&page), "prints the report's path");
    let html = std::fs::read_to_string(&page).expect("report.html");
    for needle in [
        "Runs side by side",
        "class=\"phase-boundary\"",
        "exported (epoch 4)",
        "class=\"confusion\"",
        "class=\"per-class\"",
        "config.toml",
    ] {
        assert!(html.contains(needle), "report lacks {needle}");
    }
    assert!(
        !html.contains("src=\"http"),
        "the report loads from the network"
    );
    check_in_browser(&browser, &page, &[&head, &finetune]);

    if std::env::var_os("XFER_REQUIRE_DEMO").is_some() {
        let demo = cwd.join("../../runs/demo");
        let runs = [demo.join("head"), demo.join("finetune")];
        if runs.iter().all(|r| r.join("predictions.jsonl").is_file()) {
            let page = demo.join("report.html");
            let (ok, stdout, stderr) = xfer(
                &[
                    "report",
                    path(&runs[0]),
                    path(&runs[1]),
                    "--data",
                    path(&cwd.join("../../data/cats_vs_dogs")),
                    "--out",
                    path(&page),
                ],
                &cwd,
            );
            assert!(ok, "report of the demo failed:\n{stdout}\n{stderr}");
            check_in_browser(&browser, &page, &[&runs[0], &runs[1]]);
        } else {
            eprintln!("runs/demo has no report inputs yet (`just demo` writes them)");
        }
    }
}

//! `xfer train-head`, `evaluate`, `export`, `predict` end to end on a tiny
//! backbone (per-channel mean colour) and generated PNG images, in the real
//! ONNX Runtime.

mod common;

use std::path::{Path, PathBuf};

use common::{fill_store, images, path, tiny_backbone, xfer};

#[test]
fn train_evaluate_export_predict_agree() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = root.join("data");
    let model_dir = root.join("models/tiny");
    let store = root.join("store");
    let run = root.join("runs/head");
    // run from the crate folder so that `.ort/` is found up the tree
    let cwd = PathBuf::from(env!("CARGO_MANIFEST_DIR"));

    tiny_backbone(&model_dir, 0.0);
    let rows = images(&data);
    fill_store(&store, &model_dir, &data, &rows);

    let (ok, stdout, stderr) = xfer(
        &[
            "train-head",
            "--store",
            path(&store),
            "--train",
            "train",
            "--val",
            "val",
            "--test",
            "test",
            "--out",
            path(&run),
        ],
        &cwd,
    );
    assert!(ok, "train-head failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("accuracy") && stdout.contains("test"),
        "{stdout}"
    );
    for f in ["head.json", "head.onnx", "metrics.json"] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).expect("metrics"))
            .expect("json");
    for split in ["train", "val", "test"] {
        assert_eq!(metrics[split]["accuracy"], 1.0, "{split}: {metrics}");
    }
    assert_eq!(metrics["test"]["rows"], 12);

    let predictions = root.join("pred.jsonl");
    let (ok, stdout, stderr) = xfer(
        &[
            "evaluate",
            "--store",
            path(&store),
            "--head",
            path(&run),
            "--split",
            "test",
            "--json",
            "--predictions",
            path(&predictions),
        ],
        &cwd,
    );
    assert!(ok, "evaluate failed:\n{stdout}\n{stderr}");
    let eval: serde_json::Value = serde_json::from_str(&stdout).expect("metrics json");
    assert_eq!(eval["accuracy"], metrics["test"]["accuracy"]);
    assert_eq!(eval["log_loss"], metrics["test"]["log_loss"]);

    let exported = run.join("model.onnx");
    let (ok, stdout, stderr) = xfer(
        &[
            "export",
            "--model",
            path(&model_dir),
            "--head",
            path(&run),
            "--out",
            path(&exported),
        ],
        &cwd,
    );
    assert!(ok, "export failed:\n{stdout}\n{stderr}");

    // predict every test image with the exported model; compare with the store-based predictions
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&predictions)
        .expect("predictions")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 12);
    let mut args = vec![
        "predict".to_owned(),
        "--model".to_owned(),
        path(&exported).to_owned(),
        "--json".to_owned(),
        "--top-k".to_owned(),
        "2".to_owned(),
    ];
    args.extend(
        lines
            .iter()
            .map(|l| path(&data.join(l["id"].as_str().expect("id"))).to_owned()),
    );
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = xfer(&arg_refs, &cwd);
    assert!(ok, "predict failed:\n{stdout}\n{stderr}");
    let predicted: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("predict json");
    assert_eq!(predicted.len(), lines.len());
    for (p, l) in predicted.iter().zip(&lines) {
        assert_eq!(p["label"], l["predicted"], "{p} vs {l}");
        let class = if p["label"] == "cat" { 0 } else { 1 };
        let store_p = l["probabilities"][class].as_f64().expect("p");
        let onnx_p = p["probability"].as_f64().expect("p");
        assert!((store_p - onnx_p).abs() <= 1e-5, "{store_p} vs {onnx_p}");
        assert_eq!(p["top_k"].as_array().expect("top_k").len(), 2);
    }

    // the exported model evaluated on the images themselves agrees with the store-based rows
    let all_predictions = root.join("all.jsonl");
    let (ok, stdout, stderr) = xfer(
        &[
            "evaluate",
            "--model",
            path(&exported),
            "--data",
            path(&data),
            "--splits",
            "all=train[:100%]",
            "--split",
            "all",
            "--json",
            "--predictions",
            path(&all_predictions),
        ],
        &cwd,
    );
    assert!(ok, "evaluate --model failed:\n{stdout}\n{stderr}");
    let eval_images: serde_json::Value = serde_json::from_str(&stdout).expect("metrics json");
    assert_eq!(eval_images["rows"], 60);
    assert_eq!(eval_images["accuracy"], 1.0);
    let by_id: std::collections::HashMap<String, serde_json::Value> =
        std::fs::read_to_string(&all_predictions)
            .expect("predictions")
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                (v["id"].as_str().expect("id").to_owned(), v)
            })
            .collect();
    for l in &lines {
        let from_images = &by_id[l["id"].as_str().expect("id")];
        assert_eq!(from_images["predicted"], l["predicted"]);
        for c in 0..2 {
            let a = from_images["probabilities"][c].as_f64().expect("p");
            let b = l["probabilities"][c].as_f64().expect("p");
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }

    // a head trained for one backbone refuses embeddings of another
    let other_model = root.join("models/other");
    let other_store = root.join("store-other");
    tiny_backbone(&other_model, 0.5);
    fill_store(&other_store, &other_model, &data, &rows);
    let (ok, _, stderr) = xfer(
        &[
            "evaluate",
            "--store",
            path(&other_store),
            "--head",
            path(&run),
            "--split",
            "test",
        ],
        &cwd,
    );
    assert!(!ok);
    assert!(
        stderr.contains("trained on embeddings of model"),
        "{stderr}"
    );
    let (ok, _, stderr) = xfer(
        &[
            "export",
            "--model",
            path(&other_model),
            "--head",
            path(&run),
        ],
        &cwd,
    );
    assert!(!ok);
    assert!(
        stderr.contains("trained on embeddings of model"),
        "{stderr}"
    );

    // predict on something that is not an exported model says so
    let (ok, _, stderr) = xfer(
        &[
            "predict",
            "--model",
            path(&model_dir.join("model.onnx")),
            "x.png",
        ],
        &cwd,
    );
    assert!(!ok);
    assert!(stderr.contains("xfer export"), "{stderr}");
}

/// Trains a head on the tiny backbone's store and exports it; returns the exported model.
fn exported_model(root: &Path, data: &Path, cwd: &Path) -> PathBuf {
    let model_dir = root.join("models/tiny");
    let store = root.join("store");
    let run = root.join("runs/head");
    tiny_backbone(&model_dir, 0.0);
    let rows = images(data);
    fill_store(&store, &model_dir, data, &rows);
    let (ok, stdout, stderr) = xfer(
        &["train-head", "--store", path(&store), "--out", path(&run)],
        cwd,
    );
    assert!(ok, "train-head failed:\n{stdout}\n{stderr}");
    let exported = run.join("model.onnx");
    let (ok, stdout, stderr) = xfer(
        &[
            "export",
            "--model",
            path(&model_dir),
            "--head",
            path(&run),
            "--out",
            path(&exported),
        ],
        cwd,
    );
    assert!(ok, "export failed:\n{stdout}\n{stderr}");
    exported
}

/// Issue 18 item 9: one unreadable image does not abort `predict` or `evaluate --model`;
/// both skip it with a count and its name by default, and stop under `--on-error fail`.
#[test]
fn predict_and_evaluate_skip_an_unreadable_image() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = root.join("data");
    let cwd = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exported = exported_model(root, &data, &cwd);
    let broken = data.join("cat/broken.png");
    std::fs::write(&broken, b"not a png at all").expect("write broken");

    let good = [data.join("cat/000.png"), data.join("dog/000.png")];
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--model", path(&exported)];
        args.extend_from_slice(extra);
        args.extend([path(&good[0]), path(&broken), path(&good[1])]);
        xfer(&args, &cwd)
    };
    let (ok, stdout, stderr) = predict(&[]);
    assert!(ok, "predict with one bad image failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with(path(&good[0])) && lines[0].contains("\tcat\t"));
    assert!(lines[1].starts_with(path(&good[1])) && lines[1].contains("\tdog\t"));
    assert!(
        stderr.contains("broken.png") && stderr.contains("skipped 1"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = predict(&["--json"]);
    assert!(ok, "{stderr}");
    let json: Vec<serde_json::Value> = serde_json::from_str(&stdout).expect("predict json");
    assert_eq!(json.len(), 3, "{stdout}");
    assert_eq!(json[0]["label"], "cat");
    assert!(
        json[1]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{stdout}"
    );
    assert_eq!(json[2]["label"], "dog");
    let (ok, stdout, stderr) = predict(&["--on-error", "fail"]);
    assert!(!ok && stderr.contains("broken.png"), "{stdout}\n{stderr}");

    let evaluate = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--model",
            path(&exported),
            "--data",
            path(&data),
            "--splits",
            "all=train[:100%]",
            "--split",
            "all",
            "--json",
        ];
        args.extend_from_slice(extra);
        xfer(&args, &cwd)
    };
    let (ok, stdout, stderr) = evaluate(&[]);
    assert!(
        ok,
        "evaluate with one bad image failed:\n{stdout}\n{stderr}"
    );
    let metrics: serde_json::Value = serde_json::from_str(&stdout).expect("metrics json");
    assert_eq!(metrics["rows"], 60);
    assert!(
        stderr.contains("broken.png") && stderr.contains("skipped 1"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = evaluate(&["--on-error", "fail"]);
    assert!(!ok && stderr.contains("broken.png"), "{stdout}\n{stderr}");
}

/// `train-head` reports the `test` split by default when the store has one (issue 17, defect 3),
/// and `--test none` turns it off.
#[test]
fn train_head_reports_the_test_split_by_default() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = root.join("data");
    let model_dir = root.join("models/tiny");
    let store = root.join("store");
    let cwd = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    tiny_backbone(&model_dir, 0.0);
    let rows = images(&data);
    fill_store(&store, &model_dir, &data, &rows);

    let metrics_of = |run: &Path, extra: &[&str]| -> (serde_json::Value, String) {
        let mut args = vec!["train-head", "--store", path(&store), "--out", path(run)];
        args.extend_from_slice(extra);
        let (ok, stdout, stderr) = xfer(&args, &cwd);
        assert!(ok, "train-head failed:\n{stdout}\n{stderr}");
        let text = std::fs::read_to_string(run.join("metrics.json")).expect("metrics");
        (serde_json::from_str(&text).expect("json"), stdout)
    };
    let (metrics, stdout) = metrics_of(&root.join("runs/default"), &[]);
    assert_eq!(metrics["test"]["rows"], 12, "{metrics}");
    let predictions = std::fs::read_to_string(root.join("runs/default/predictions.jsonl"))
        .expect("test predictions");
    assert_eq!(predictions.lines().count(), 12);
    assert!(stdout.contains("test"), "{stdout}");
    let (metrics, _) = metrics_of(&root.join("runs/none"), &["--test", "none"]);
    assert!(metrics.get("test").is_none(), "{metrics}");
    assert_eq!(metrics["val"]["rows"], 12, "{metrics}");
}

/// Issue 18 item 12: `evaluate --head` reads stored embeddings; a `--data` beside it was
/// ignored without a word and is now refused.
#[test]
fn evaluate_head_refuses_data() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = root.join("data");
    let cwd = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    exported_model(root, &data, &cwd);
    let (ok, stdout, stderr) = xfer(
        &[
            "evaluate",
            "--store",
            path(&root.join("store")),
            "--head",
            path(&root.join("runs/head")),
            "--data",
            path(&data),
        ],
        &cwd,
    );
    assert!(!ok, "--data was ignored:\n{stdout}");
    assert!(stderr.contains("--data"), "{stderr}");
}

/// Issue 18 item 12: errors about `evaluate --splits` name `--splits`, not extract's `--split`.
#[test]
fn evaluate_splits_errors_name_splits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path();
    let data = root.join("data");
    let cwd = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exported = exported_model(root, &data, &cwd);
    let (ok, stdout, stderr) = xfer(
        &[
            "evaluate",
            "--model",
            path(&exported),
            "--data",
            path(&data),
            "--splits",
            "a=train[:50%],b=train[40%:]",
            "--split",
            "a",
        ],
        &cwd,
    );
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("--splits") && !stderr.contains("--split "),
        "{stderr}"
    );
}

/// Issue 18 item 12: logs written to a pipe or file carry no ANSI colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xfer"))
        .arg("doctor")
        .env("RUST_LOG", "debug")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run xfer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG"), "no log line to check: {stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a pipe: {stderr:?}"
    );
}

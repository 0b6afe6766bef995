//! The runtime flags (`--ort-lib`, `--device`, `--allow-cpu-fallback`, `--threads`) are
//! the same on every subcommand that runs a model, and `evaluate` / `predict` honour
//! them: an unavailable device is refused by name unless the CPU fallback is allowed.

use std::path::{Path, PathBuf};

use xfer_data::RgbImage;

mod common;
use common::{SIZE, path, tiny_exported, xfer_here as xfer};

/// `root/cat/*.png` (red) and `root/dog/*.png` (blue), four each.
fn tiny_dataset(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for (class, rgb) in [("cat", [200u8, 90, 60]), ("dog", [60u8, 90, 200])] {
        std::fs::create_dir_all(root.join(class)).expect("class dir");
        for i in 0..4u8 {
            let raw: Vec<u8> = (0..SIZE * SIZE)
                .flat_map(|_| rgb.map(|v| v.wrapping_add(i)))
                .collect();
            let file = root.join(class).join(format!("{i}.png"));
            RgbImage::from_raw(SIZE, SIZE, raw)
                .expect("image buffer")
                .save(&file)
                .expect("save png");
            files.push(file);
        }
    }
    files
}

#[test]
fn every_model_running_subcommand_lists_the_runtime_flags() {
    for sub in [
        "embed",
        "extract",
        "evaluate",
        "predict",
        "finetune",
        "train-graph",
    ] {
        let (ok, stdout, stderr) = xfer(&[sub, "--help"]);
        assert!(ok, "{sub} --help failed: {stderr}");
        for flag in ["--ort-lib", "--device", "--allow-cpu-fallback", "--threads"] {
            assert!(
                stdout.contains(flag),
                "`xfer {sub} --help` lacks {flag}:\n{stdout}"
            );
        }
        assert!(stdout.contains("ORT_DYLIB_PATH"), "{sub}: {stdout}");
    }
}

#[test]
fn predict_and_evaluate_refuse_an_unavailable_device_unless_falling_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model.onnx");
    tiny_exported(&model);
    let data = tmp.path().join("data");
    let files = tiny_dataset(&data);
    let image = path(&files[0]);

    let (ok, _, stderr) = xfer(&[
        "predict",
        "--model",
        path(&model),
        "--device",
        "cuda",
        image,
    ]);
    assert!(!ok, "cuda must not be available in this build");
    assert!(stderr.contains("not available"), "{stderr}");
    assert!(stderr.contains("--allow-cpu-fallback"), "{stderr}");
    let (ok, stdout, stderr) = xfer(&[
        "predict",
        "--model",
        path(&model),
        "--device",
        "cuda",
        "--allow-cpu-fallback",
        "--threads",
        "1",
        image,
    ]);
    assert!(ok, "predict with fallback failed: {stderr}");
    assert!(stdout.contains("\tcat\t"), "{stdout}");

    let evaluate = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--model",
            path(&model),
            "--data",
            path(&data),
            "--splits",
            "all=train[:100%]",
            "--split",
            "all",
            "--json",
        ];
        args.extend_from_slice(extra);
        xfer(&args)
    };
    let (ok, _, stderr) = evaluate(&["--device", "cuda"]);
    assert!(!ok);
    assert!(stderr.contains("not available"), "{stderr}");
    let (ok, stdout, stderr) =
        evaluate(&["--device", "cuda", "--allow-cpu-fallback", "--threads", "1"]);
    assert!(ok, "evaluate with fallback failed: {stderr}");
    let metrics: serde_json::Value = serde_json::from_str(&stdout).expect("metrics json");
    assert_eq!(metrics["rows"], 8);
    assert_eq!(metrics["accuracy"], 1.0);
}

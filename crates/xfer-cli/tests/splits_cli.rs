//! Every subcommand that takes splits (`data info`, `extract`, `evaluate`, `finetune`)
//! takes them through one type: named splits that share images are refused, naming the
//! splits and how many images they share, and `--stratified` is accepted everywhere.
//! The real binary, a tiny dataset and tiny models written here.

use std::path::{Path, PathBuf};

use xfer_data::RgbImage;
use xfer_onnx::GraphBuilder;

mod common;
use common::{
    BackboneInfo, SIZE, path, pixels_input, publish_backbone, tiny_exported, xfer_here as xfer,
};
/// Images per class: 20 in all, so `train[:60%]` (12) and `train[50%:]` (10) share 2 images.
const PER_CLASS: u8 = 10;
const OVERLAPPING: &str = "a=train[:60%],b=train[50%:]";

/// `root/cat/*.png` (red) and `root/dog/*.png` (blue).
fn tiny_dataset(root: &Path) -> PathBuf {
    for (class, rgb) in [("cat", [200u8, 90, 60]), ("dog", [60u8, 90, 200])] {
        std::fs::create_dir_all(root.join(class)).expect("class dir");
        for i in 0..PER_CLASS {
            let raw: Vec<u8> = (0..SIZE * SIZE)
                .flat_map(|_| rgb.map(|v| v.wrapping_add(i)))
                .collect();
            RgbImage::from_raw(SIZE, SIZE, raw)
                .expect("image buffer")
                .save(root.join(class).join(format!("{i:02}.png")))
                .expect("save png");
        }
    }
    root.to_path_buf()
}

/// A backbone folder: pixels → mean colour (`features` [N, 3]) and its manifest.
fn tiny_backbone(dir: &Path) -> PathBuf {
    let mut g = GraphBuilder::new("tiny");
    pixels_input(&mut g);
    publish_backbone(
        g,
        "pixels",
        dir,
        BackboneInfo {
            image_size: [SIZE, SIZE],
            preprocessing: "none",
            feature_dim: 3,
        },
    );
    dir.to_path_buf()
}

fn assert_refused(
    what: &str,
    (ok, stdout, stderr): (bool, String, String),
    a: &str,
    b: &str,
    shared: usize,
) {
    assert!(
        !ok,
        "{what} accepted overlapping splits:\n{stdout}\n{stderr}"
    );
    let want = format!("`{a}` and `{b}` share {shared} image(s)");
    assert!(stderr.contains(&want), "{what}: no `{want}` in:\n{stderr}");
}

#[test]
fn data_info_refuses_overlapping_splits_and_takes_stratified() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tiny_dataset(&tmp.path().join("data"));
    let result = xfer(&["data", "info", path(&data), "--split", OVERLAPPING]);
    assert_refused("data info", result, "a", "b", 2);

    let (ok, stdout, stderr) = xfer(&["data", "info", path(&data), "--stratified", "--json"]);
    assert!(ok, "{stderr}");
    let info: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    assert_eq!(info["stratified"], true);
    // the default is the demo's 70/15/15, stratified: 7/1/2 of each class
    let totals: Vec<u64> = info["splits"]
        .as_array()
        .expect("splits")
        .iter()
        .map(|s| s["total"].as_u64().expect("total"))
        .collect();
    assert_eq!(totals, [14, 2, 4], "{stdout}");
}

#[test]
fn extract_refuses_overlapping_splits_and_takes_stratified() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tiny_dataset(&tmp.path().join("data"));
    let model = tiny_backbone(&tmp.path().join("model"));
    let store = tmp.path().join("store");
    let extract = |extra: &[&str]| {
        let mut args = vec![
            "extract",
            "--data",
            path(&data),
            "--model",
            path(&model),
            "--store",
            path(&store),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        xfer(&args)
    };
    assert_refused("extract", extract(&["--split", OVERLAPPING]), "a", "b", 2);
    let parquet_files = std::fs::read_dir(&store).map_or(0, |d| {
        d.filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
            .count()
    });
    assert_eq!(parquet_files, 0, "nothing is extracted");

    let (ok, stdout, stderr) = extract(&["--stratified"]);
    assert!(ok, "extract --stratified failed:\n{stdout}\n{stderr}");
    let counts = xfer_store::StoreReader::open(&store)
        .expect("store")
        .info()
        .expect("info");
    let per_split: Vec<(String, usize)> = counts.models[0]
        .per_split
        .iter()
        .map(|(s, n)| (s.clone(), *n))
        .collect();
    assert_eq!(
        per_split,
        [
            ("test".to_owned(), 4),
            ("train".to_owned(), 14),
            ("val".to_owned(), 2)
        ],
        "stratified 70/15/15 of 10 + 10 images"
    );
}

#[test]
fn evaluate_refuses_overlapping_splits_and_takes_stratified() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tiny_dataset(&tmp.path().join("data"));
    let model = tiny_exported(&tmp.path().join("model.onnx"));
    let evaluate = |extra: &[&str]| {
        let mut args = vec![
            "evaluate",
            "--model",
            path(&model),
            "--data",
            path(&data),
            "--json",
        ];
        args.extend_from_slice(extra);
        xfer(&args)
    };
    let result = evaluate(&["--splits", OVERLAPPING, "--split", "a"]);
    assert_refused("evaluate", result, "a", "b", 2);

    let (ok, stdout, stderr) = evaluate(&["--stratified"]);
    assert!(ok, "evaluate --stratified failed:\n{stdout}\n{stderr}");
    let metrics: serde_json::Value = serde_json::from_str(&stdout).expect("metrics json");
    assert_eq!(
        metrics["rows"], 4,
        "the stratified test split: 2 cats, 2 dogs"
    );
    assert_eq!(metrics["per_class"][0]["support"], 2, "{stdout}");
}

#[test]
fn finetune_refuses_overlapping_splits() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tiny_dataset(&tmp.path().join("data"));
    let model = tiny_backbone(&tmp.path().join("model"));
    let out = tmp.path().join("run");
    // the example: test images would leak into training (and the default val
    // split `train[70%:85%]` overlaps both); stratified, each class loses one image to each
    // overlap
    let result = xfer(&[
        "finetune",
        "--data",
        path(&data),
        "--model",
        path(&model),
        "--out",
        path(&out),
        "--train",
        "train[:80%]",
        "--test",
        "train[70%:]",
        "--stratified",
    ]);
    assert_refused("finetune", result.clone(), "train", "test", 2);
    assert_refused("finetune", result, "val", "test", 2);
    assert!(!out.join("checkpoints").exists());
}

//! `xfer extract` / `xfer store` as a user runs them: the real binary, a tiny
//! backbone built here, solid-colour PNGs written here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use xfer_onnx::{Dim, GraphBuilder, attr};
use xfer_runtime::{ModelManifest, ModelSource};
use xfer_store::StoreReader;

const DIM: usize = 8;

fn tiny_backbone(dir: &Path, side: u32) -> PathBuf {
    let mut g = GraphBuilder::new("tiny");
    g.input(
        "pixels",
        &[
            Dim::from("batch"),
            Dim::Fixed(3),
            Dim::from("h"),
            Dim::from("w"),
        ],
    );
    let w: Vec<f32> = (0..3 * DIM).map(|i| (i as f32 - 5.0) / 7.0).collect();
    let w = g.constant_f32("w", &[3, DIM as i64], &w);
    let gap = g.op("GlobalAveragePool", &["pixels"], vec![], "gap");
    let flat = g.op("Flatten", &[&gap], vec![attr::int("axis", 1)], "flat");
    g.node_named("MatMul", &[&flat, &w], &["features"], vec![]);
    g.output("features", &[Dim::from("batch"), Dim::Fixed(DIM as i64)]);
    let bytes = xfer_onnx::write_model_bytes(&g.build_model());
    std::fs::create_dir_all(dir).expect("model dir");
    std::fs::write(dir.join("model.onnx"), &bytes).expect("onnx");
    ModelManifest {
        name: "tiny".into(),
        onnx: "model.onnx".into(),
        training_onnx: None,
        input: "pixels".into(),
        layout: "NCHW".into(),
        channel_order: "RGB".into(),
        value_range: [0.0, 255.0],
        image_size: [side, side],
        preprocessing: "none".into(),
        output: "features".into(),
        feature_dim: DIM,
        classes: None,
        source: ModelSource {
            package: "test".into(),
            file: "tiny".into(),
            sha256: String::new(),
        },
        fingerprint: xfer_runtime::fingerprint(&bytes),
        xfer_version: "test".into(),
    }
    .write(dir)
    .expect("manifest");
    dir.to_path_buf()
}

fn dataset(root: &Path, per_class: usize) -> PathBuf {
    for (c, name) in ["cat", "dog"].iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        for i in 0..per_class {
            let rgb = [(i % 251) as u8, (c * 120) as u8, ((i * 3) % 256) as u8];
            image::RgbImage::from_pixel(16, 16, image::Rgb(rgb))
                .save(dir.join(format!("{i:04}.png")))
                .expect("png");
        }
    }
    root.to_path_buf()
}

fn xfer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_xfer"))
}

fn extract_cmd(data: &Path, model: &Path, store: &Path) -> Command {
    let mut c = xfer();
    c.args([
        "extract",
        "--quiet",
        "--batch-size",
        "8",
        "--rows-per-part",
        "16",
        "--decode-threads",
        "1",
    ])
    .arg("--data")
    .arg(data)
    .arg("--model")
    .arg(model)
    .arg("--store")
    .arg(store);
    c
}

fn live_ids(store: &Path) -> Vec<String> {
    let reader = StoreReader::open(store).expect("every complete file is readable");
    let mut ids: Vec<String> = reader
        .stored_keys()
        .expect("keys")
        .into_iter()
        .map(|k| k.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn kill_9_at_a_random_moment_then_rerun_gives_exactly_the_full_set() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = dataset(&tmp.path().join("data"), 300);
    // A large input size makes the run slow enough to be killed in the middle.
    let model = tiny_backbone(&tmp.path().join("model"), 384);
    let store = tmp.path().join("store");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let extra = Duration::from_millis(u64::from(nanos % 300));

    let mut child = extract_cmd(&data, &model, &store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn xfer");
    // Wait for the first complete part (so the kill lands mid-run), then a random extra delay.
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let parts = std::fs::read_dir(&store)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                    .count()
            })
            .unwrap_or(0);
        if parts > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(extra);
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-9", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = child.wait().expect("wait");
    let before = live_ids(&store);
    eprintln!(
        "killed after +{extra:?}: status {status:?}, {} rows stored before the rerun",
        before.len()
    );
    assert!(
        !before.is_empty(),
        "the first part was complete before the kill"
    );
    if status.code().is_none() {
        assert!(before.len() < 600, "killed mid-run");
    }

    let out = extract_cmd(&data, &model, &store).output().expect("rerun");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "embedded {}, cached {}",
            600 - before.len(),
            before.len()
        )),
        "{stdout}"
    );
    let after = live_ids(&store);
    assert_eq!(after.len(), 600);
    let mut unique = after.clone();
    unique.dedup();
    assert_eq!(unique.len(), 600, "no duplicates");
    let reader = StoreReader::open(&store).expect("open");
    assert!(
        reader.stored_keys().expect("keys").iter().all(|k| k.live),
        "no superseded rows"
    );
    let train = reader.load_split("train", None).expect("train");
    assert_eq!(train.ids.len(), 420);
}

#[test]
fn store_info_and_compact_report_the_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = dataset(&tmp.path().join("data"), 20);
    let model = tiny_backbone(&tmp.path().join("model"), 8);
    let store = tmp.path().join("store");
    let out = extract_cmd(&data, &model, &store)
        .args(["--split", "train=train[:50%],test=train[50%:]"])
        .output()
        .expect("extract");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("embedded 40, cached 0, skipped 0"),
        "{stdout}"
    );

    let info = xfer()
        .args(["store", "info"])
        .arg(&store)
        .output()
        .expect("info");
    assert!(info.status.success());
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("dimension 8"), "{text}");
    assert!(text.contains("rows 40"), "{text}");
    assert!(text.contains("3 part file(s)"), "{text}");
    let test_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("test "))
        .expect("test row");
    assert_eq!(test_line.split_whitespace().nth(1), Some("20"), "{text}");

    let compact = xfer()
        .args(["store", "compact"])
        .arg(&store)
        .output()
        .expect("compact");
    assert!(
        compact.status.success(),
        "{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    assert!(String::from_utf8_lossy(&compact.stdout).contains("merged 3 part file(s)"));
    assert_eq!(StoreReader::open(&store).expect("open").files().len(), 1);
    assert_eq!(live_ids(&store).len(), 40);

    let bad = extract_cmd(&data, &model, &store)
        .args(["--shard", "2/2"])
        .output()
        .expect("bad shard");
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("I/N"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let missing = xfer()
        .args(["store", "info", "/nonexistent/store"])
        .output()
        .expect("missing");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("xfer extract"));
}

/// Issue 18 item 4: entries extract cannot list (a dangling link, a symlink loop) are
/// reported with a count and their names, and fail the run under `--on-error fail`; an
/// empty class folder is a warning.
#[cfg(unix)]
#[test]
fn entries_that_cannot_be_listed_are_reported_and_fail_under_on_error_fail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = dataset(&tmp.path().join("data"), 6);
    std::os::unix::fs::symlink(data.join("nowhere.png"), data.join("cat/gone.png"))
        .expect("dangling link");
    std::os::unix::fs::symlink(data.join("dog/loop.png"), data.join("dog/loop.png"))
        .expect("link loop");
    std::fs::create_dir_all(data.join("bird")).expect("empty class folder");
    let model = tiny_backbone(&tmp.path().join("model"), 8);
    let store = tmp.path().join("store");
    let out = extract_cmd(&data, &model, &store)
        .args(["--split", "train=train[:100%]"])
        .output()
        .expect("extract");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("not listed 2")
            && stdout.contains("gone.png")
            && stdout.contains("loop.png"),
        "{stdout}"
    );
    assert!(
        stdout.contains("no images") && stdout.contains("bird"),
        "{stdout}"
    );
    let out = extract_cmd(&data, &model, &tmp.path().join("store-fail"))
        .args(["--split", "train=train[:100%]", "--on-error", "fail"])
        .output()
        .expect("extract");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("gone.png") && stderr.contains("loop.png"),
        "{stderr}"
    );
}

/// Issue 18 item 12: `--rows-per-part 0` is refused, and a selection with no image does not
/// claim that every image is already in the store.
#[test]
fn zero_rows_per_part_is_refused_and_an_empty_selection_says_so() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = dataset(&tmp.path().join("data"), 4);
    let model = tiny_backbone(&tmp.path().join("model"), 8);
    let store = tmp.path().join("store");
    let out = extract_cmd(&data, &model, &store)
        .args(["--split", "train=train[:100%]", "--limit", "0"])
        .output()
        .expect("extract");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("every image already in the store")
            && stdout.contains("no image selected"),
        "{stdout}"
    );
    let out = extract_cmd(&data, &model, &store)
        .args(["--rows-per-part", "0"])
        .output()
        .expect("extract");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--rows-per-part"),
        "{stderr}"
    );
}

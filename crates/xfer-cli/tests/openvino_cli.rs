//! `--device openvino` on the command line: without onnxruntime-openvino the error names
//! `just setup-openvino`; with it, `xfer extract` records the provider and precision in the
//! store (`xfer store info` shows them) and refuses to add rows of another provider or
//! precision, naming the field.
//!
//! The tests that run OpenVINO need `.ort-openvino/` (`just setup-openvino`): they skip
//! without it unless XFER_REQUIRE_OPENVINO is set (`just test` sets it).

use std::path::Path;
use std::process::Command;

mod common;
use common::{images, path, tiny_backbone, xfer_here as xfer};

fn openvino_fetched() -> bool {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(xfer_runtime::OPENVINO_LIBRARY_DIR)
        .join("libonnxruntime.so.1.24.1");
    if lib.is_file() {
        return true;
    }
    assert!(
        std::env::var_os("XFER_REQUIRE_OPENVINO").is_none(),
        "{} is missing: run `just setup-openvino`",
        lib.display()
    );
    eprintln!(
        "skipped: {} is missing (run `just setup-openvino`)",
        lib.display()
    );
    false
}

#[test]
fn openvino_without_its_library_names_the_recipe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // A copy of the binary far from this checkout: no .ort-openvino/ up its folders or the
    // working directory's.
    let bin = tmp.path().join("xfer");
    std::fs::copy(env!("CARGO_BIN_EXE_xfer"), &bin).expect("copy xfer");
    let model = tmp.path().join("model");
    tiny_backbone(&model, 0.0);
    let data = tmp.path().join("data");
    images(&data);
    let out = Command::new(&bin)
        .args(["extract", "--data", path(&data), "--model", path(&model)])
        .args([
            "--store",
            path(&tmp.path().join("store")),
            "--device",
            "openvino",
        ])
        .args(["--precision", "fp32"])
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("XFER_DEVICE")
        .current_dir(tmp.path())
        .output()
        .expect("run xfer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail without the library");
    assert!(stderr.contains("just setup-openvino"), "{stderr}");
    assert!(stderr.contains(".ort-openvino/"), "{stderr}");

    // The CPU library has no OpenVINO provider: the same recipe is named.
    let cpu_lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(".ort")
        .join(xfer_runtime::LIBRARY_FILE_NAME);
    let out = Command::new(&bin)
        .args(["embed", "--model", path(&model), "--device", "openvino"])
        .args(["--precision", "fp32", "--ort-lib", path(&cpu_lib)])
        .arg(data.join("cat/000.png"))
        .current_dir(tmp.path())
        .output()
        .expect("run xfer");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the CPU library cannot run openvino");
    assert!(stderr.contains("OpenVINOExecutionProvider"), "{stderr}");
    assert!(stderr.contains("just setup-openvino"), "{stderr}");
}

#[test]
fn bf16_on_the_cpu_provider_is_refused_naming_openvino() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model");
    tiny_backbone(&model, 0.0);
    let data = tmp.path().join("data");
    images(&data);
    let (ok, _, stderr) = xfer(&[
        "extract",
        "--data",
        path(&data),
        "--model",
        path(&model),
        "--store",
        path(&tmp.path().join("store")),
        "--device",
        "cpu",
        "--precision",
        "bf16",
    ]);
    assert!(!ok);
    assert!(stderr.contains("--device openvino"), "{stderr}");
    assert!(!tmp.path().join("store").join("part").exists());
}

fn extract(data: &Path, model: &Path, store: &Path, flags: &[&str]) -> (bool, String) {
    let mut args = vec![
        "extract",
        "--quiet",
        "--data",
        path(data),
        "--model",
        path(model),
        "--store",
        path(store),
    ];
    args.extend_from_slice(flags);
    let (ok, _, stderr) = xfer(&args);
    (ok, stderr)
}

#[test]
fn extract_records_provider_and_precision_and_never_mixes_them() {
    if !openvino_fetched() {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("model");
    tiny_backbone(&model, 0.0);
    let data = tmp.path().join("data");
    images(&data);
    // bf16 where this CPU runs it, else fp32 (bf16 is then refused, which is tested too).
    let bf16 = xfer_runtime::cpu_bf16().any();
    let low = if bf16 { "bf16" } else { "fp32" };

    let store = tmp.path().join("ov");
    let (ok, stderr) = extract(
        &data,
        &model,
        &store,
        &["--device", "openvino", "--precision", low],
    );
    assert!(ok, "openvino extract failed: {stderr}");
    let (ok, info, stderr) = xfer(&["store", "info", path(&store)]);
    assert!(ok, "{stderr}");
    assert!(
        info.contains(&format!("precision {low}, provider openvino")),
        "{info}"
    );

    // Rows of ONNX Runtime's own kernels are never added to it.
    let (ok, stderr) = extract(&data, &model, &store, &["--device", "cpu"]);
    assert!(!ok, "cpu rows must not join openvino rows");
    assert!(stderr.contains("provider `openvino`"), "{stderr}");
    assert!(stderr.contains("provider `onnxruntime`"), "{stderr}");
    if bf16 {
        // fp32 rows are never added to a bf16 store, naming the precision.
        let flags = ["--device", "openvino", "--precision", "fp32"];
        let (ok, stderr) = extract(&data, &model, &store, &flags);
        assert!(!ok, "fp32 rows must not join bf16 rows");
        assert!(stderr.contains("precision `bf16`"), "{stderr}");
        assert!(stderr.contains("precision `fp32`"), "{stderr}");
    } else {
        let flags = ["--device", "openvino", "--precision", "bf16"];
        let (ok, stderr) = extract(&data, &model, &store, &flags);
        assert!(!ok, "bf16 without bf16 instructions must be refused");
        assert!(stderr.contains("--precision fp32"), "{stderr}");
    }
    // The same provider and precision again: everything is served from the store.
    let flags = ["--device", "openvino", "--precision", low];
    let (ok, stderr) = extract(&data, &model, &store, &flags);
    assert!(ok, "same identity again: {stderr}");

    // A CPU fp32 store shows its engine and refuses OpenVINO rows.
    let cpu_store = tmp.path().join("cpu");
    let (ok, stderr) = extract(&data, &model, &cpu_store, &["--device", "cpu"]);
    assert!(ok, "{stderr}");
    let (ok, info, stderr) = xfer(&["store", "info", path(&cpu_store)]);
    assert!(ok, "{stderr}");
    assert!(
        info.contains("precision fp32, provider onnxruntime"),
        "{info}"
    );
    let (ok, stderr) = extract(
        &data,
        &model,
        &cpu_store,
        &["--device", "openvino", "--precision", "fp32"],
    );
    assert!(!ok, "openvino rows must not join cpu rows");
    assert!(stderr.contains("provider"), "{stderr}");
}

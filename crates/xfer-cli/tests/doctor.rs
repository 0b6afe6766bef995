//! `xfer doctor` on this machine: the CPU setup is ready (exit 0); `--device cuda` lists every
//! library the CUDA provider needs, found in `.ort-gpu/` after `just fetch-gpu`, and without a
//! driver (or without the cuda feature) exits non-zero saying what to do. `xfer embed
//! --device cuda` fails cleanly, and with `--allow-cpu-fallback` gives the CPU's features.
//! Needs `just setup` (models/xception, photos) and `just fetch-gpu` (`.ort-gpu/`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PHOTO: &str = "models/.source/kitchenware/datasets/kitchenware-data/images";

fn root() -> PathBuf {
    std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .expect("repository root")
}

fn xfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xfer"))
        .args(args)
        .current_dir(root())
        .env_remove("ORT_DYLIB_PATH")
        .env_remove("XFER_TRT_LIB_DIR")
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .expect("run xfer")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `.ort-gpu/`, which `just test` fetches (`just fetch-gpu`) before running the tests.
fn gpu_dir() -> PathBuf {
    let dir = root().join(".ort-gpu");
    assert!(
        dir.join("libonnxruntime.so.1.31.1").is_file(),
        "{} is missing: run `just fetch-gpu`",
        dir.display()
    );
    dir
}

fn has_driver() -> bool {
    xfer_runtime::driver().is_ok()
}

#[test]
fn doctor_on_the_cpu_setup_is_ready() {
    let o = xfer(&["doctor"]);
    let out = stdout(&o);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains("version             1.31.1"), "{out}");
    assert!(out.contains("CPUExecutionProvider"), "{out}");
    assert!(out.contains(".ort/libonnxruntime.so.1.31.1"), "{out}");
    assert!(out.contains("result: cpu is ready"), "{out}");
}

#[test]
fn doctor_cuda_finds_every_library_of_the_fetch_and_says_what_is_missing() {
    let gpu = gpu_dir();
    let o = xfer(&["doctor", "--device", "cuda"]);
    let out = stdout(&o);
    // The GPU build of ONNX Runtime is found by itself, without ORT_DYLIB_PATH.
    assert!(
        out.contains(&format!("{}/libonnxruntime.so.1.31.1", gpu.display())),
        "{out}"
    );
    assert!(out.contains("CUDAExecutionProvider"), "{out}");
    for lib in [
        "libcudart.so.13",
        "libcublasLt.so.13",
        "libcublas.so.13",
        "libcurand.so.10",
        "libcufft.so.12",
        "libnvrtc.so.13",
        "libcudnn.so.9",
        "libonnxruntime_providers_cuda.so",
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!(" {lib} ")))
            .unwrap_or_else(|| panic!("{lib} not listed:\n{out}"));
        assert!(
            line.contains("found") && line.contains(&gpu.display().to_string()),
            "{line}"
        );
    }
    let ready = cfg!(feature = "cuda") && has_driver();
    assert_eq!(o.status.success(), ready, "{out}{}", stderr(&o));
    if !has_driver() {
        assert!(out.contains("MISSING  libcuda.so.1"), "{out}");
        assert!(out.contains("CPU-only machine"), "{out}");
        assert!(out.contains("result: cuda cannot work here"), "{out}");
        assert!(stderr(&o).contains("cannot work here"), "{}", stderr(&o));
    }
    if !cfg!(feature = "cuda") {
        assert!(out.contains("built without the `cuda` feature"), "{out}");
    }
    // With --allow-cpu-fallback the same report exits 0: commands would run on the CPU.
    let fallback = xfer(&["doctor", "--device", "cuda", "--allow-cpu-fallback"]);
    assert!(fallback.status.success(), "{}", stderr(&fallback));
    assert_eq!(stdout(&fallback), out);
    if !ready {
        assert!(
            stderr(&fallback).contains("run on the CPU"),
            "{}",
            stderr(&fallback)
        );
    }
}

#[test]
fn doctor_tensorrt_without_tensorrt_says_how_to_point_at_it() {
    gpu_dir();
    let empty = tempfile::tempdir().expect("tmp");
    let o = xfer(&[
        "doctor",
        "--device",
        "tensorrt",
        "--trt-lib-dir",
        &empty.path().to_string_lossy(),
    ]);
    let out = stdout(&o);
    if out.contains("MISSING  libnvinfer.so.10") {
        assert!(!o.status.success());
        assert!(out.contains("install TensorRT 10"), "{out}");
        assert!(out.contains("--trt-lib-dir"), "{out}");
    }
}

fn photo() -> PathBuf {
    let dir = root().join(PHOTO);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}; run `just setup`", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    files.into_iter().next().expect("a photo")
}

/// The embedding of the first image of an `xfer embed --out X.json` file.
fn embedding(path: &Path) -> Vec<f64> {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read")).expect("json");
    doc["images"][0]["embedding"]
        .as_array()
        .expect("an embedding array")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

#[test]
fn embed_on_cuda_fails_cleanly_and_falls_back_to_the_cpu_when_asked() {
    gpu_dir();
    let image = photo();
    let image = image.to_string_lossy();
    let tmp = tempfile::tempdir().expect("tmp");
    let on_cuda = xfer(&["embed", "--device", "cuda", &image]);
    if !(cfg!(feature = "cuda") && has_driver()) {
        assert_eq!(on_cuda.status.code(), Some(1), "{}", stderr(&on_cuda));
        let err = stderr(&on_cuda);
        assert!(err.contains("--allow-cpu-fallback"), "{err}");
        assert!(
            err.contains("CPU-only machine") || err.contains("built without the `cuda` feature"),
            "{err}"
        );
    }
    let cpu_out = tmp.path().join("cpu.json");
    let fallback_out = tmp.path().join("fallback.json");
    let cpu = xfer(&["embed", "--out", &cpu_out.to_string_lossy(), &image]);
    assert!(cpu.status.success(), "{}", stderr(&cpu));
    let fallback = xfer(&[
        "embed",
        "--device",
        "cuda",
        "--allow-cpu-fallback",
        "--out",
        &fallback_out.to_string_lossy(),
        &image,
    ]);
    assert!(fallback.status.success(), "{}", stderr(&fallback));
    let (a, b) = (embedding(&cpu_out), embedding(&fallback_out));
    assert!(a.len() >= 2048, "{}", a.len());
    assert_eq!(a.len(), b.len());
    let tolerance = if has_driver() { 1e-3 } else { 1e-5 };
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tolerance * (1.0 + x.abs()), "{x} vs {y}");
    }
}

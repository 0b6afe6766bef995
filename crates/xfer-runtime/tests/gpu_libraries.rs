//! The GPU setup on any machine, GPU or not: after `just fetch-gpu` (part of `just setup-gpu`)
//! every library the CUDA provider needs resolves to `.ort-gpu/` and loads, except the
//! driver; without a driver `--device cuda` is a clear error (no crash) and
//! `allow_cpu_fallback` runs on the CPU. With a driver, the same tests check that CUDA works.
//!
//! Needs `.ort-gpu/` (`just fetch-gpu`); `just test` sets XFER_REQUIRE_GPU_LIBS=1 so that
//! its absence fails instead of skipping. Run it with `--features cuda,tensorrt` as well
//! (`just test` does) to go through the provider registration.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{Dim, GraphBuilder};
use xfer_runtime::{Device, Home, Model, SessionOptions};

/// `.ort-gpu/libonnxruntime.so.1.31.1` of this checkout, or `None` (test skipped) when it
/// was not fetched and XFER_REQUIRE_GPU_LIBS is not set.
fn gpu_ort() -> Option<PathBuf> {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(xfer_runtime::GPU_LIBRARY_DIR)
        .join(xfer_runtime::LIBRARY_FILE_NAME);
    if lib.is_file() {
        return Some(std::fs::canonicalize(&lib).expect("absolute path"));
    }
    assert!(
        std::env::var_os("XFER_REQUIRE_GPU_LIBS").is_none(),
        "{} is missing: run `just fetch-gpu`",
        lib.display()
    );
    eprintln!(
        "skipped: {} is missing (run `just fetch-gpu`)",
        lib.display()
    );
    None
}

fn has_driver() -> bool {
    xfer_runtime::driver().is_ok()
}

fn tiny_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("tiny");
    g.input("x", &[Dim::from("batch"), Dim::Fixed(3)]);
    let w = g.constant_f32("w", &[3, 2], &[1.0, -1.0, 2.0, 0.5, -3.0, 1.0]);
    g.node_named("MatMul", &["x", &w], &["y"], vec![]);
    g.output("y", &[Dim::from("batch"), Dim::Fixed(2)]);
    xfer_onnx::write_model_bytes(&g.build_model())
}

#[test]
fn every_cuda_library_but_the_driver_resolves_after_the_fetch() {
    let Some(ort) = gpu_ort() else { return };
    let ort_dir = ort.parent().expect("folder");
    let report = xfer_runtime::doctor(Device::Cuda, Some(&ort), None).expect("doctor");
    println!("{report}");
    assert_eq!(report.ort_version.as_deref(), Ok("1.31.1"));
    assert!(
        report
            .providers
            .iter()
            .any(|p| p == "CUDAExecutionProvider"),
        "{:?}",
        report.providers
    );
    assert!(report.libraries.len() >= 15, "{:?}", report.libraries);
    for s in &report.libraries {
        let path = s
            .path
            .as_ref()
            .unwrap_or_else(|| panic!("{} was not found", s.library.name));
        assert!(
            path.starts_with(ort_dir),
            "{} resolved outside .ort-gpu: {}",
            s.library.name,
            path.display()
        );
        assert!(s.usable(), "{}: {:?}", s.library.name, s.load_error);
    }
    let text = report.to_string();
    if has_driver() {
        assert!(!text.contains("MISSING"), "{text}");
    } else {
        assert!(!report.ok());
        assert!(text.contains("CPU-only machine"), "{text}");
        // The driver is the only thing missing (besides a cuda-featured build).
        let missing: Vec<&str> = text.lines().filter(|l| l.contains("MISSING")).collect();
        assert_eq!(missing.len(), 1, "{text}");
        assert!(missing[0].contains("libcuda.so.1"), "{text}");
    }
}

#[test]
fn tensorrt_without_tensorrt_says_how_to_point_at_it() {
    let Some(ort) = gpu_ort() else { return };
    let empty = tempfile::tempdir().expect("tmp");
    let report =
        xfer_runtime::doctor(Device::TensorRt, Some(&ort), Some(empty.path())).expect("doctor");
    let trt_found = report
        .libraries
        .iter()
        .filter(|s| s.library.home == Home::TensorRt)
        .all(|s| s.path.is_some());
    if !trt_found {
        assert!(!report.ok());
        let text = report.to_string();
        assert!(text.contains("install TensorRT 10"), "{text}");
        assert!(text.contains("--trt-lib-dir"), "{text}");
        assert!(text.contains("XFER_TRT_LIB_DIR"), "{text}");
    }
}

#[test]
fn cuda_session_without_a_driver_fails_cleanly_and_falls_back_when_asked() {
    let Some(ort) = gpu_ort() else { return };
    let cuda = SessionOptions {
        ort_lib: Some(ort.clone()),
        device: Device::Cuda,
        ..Default::default()
    };
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![1.0f32, 2.0, 3.0]).expect("shape");
    let expected = [1.0f32 + 4.0 - 9.0, -1.0 + 1.0 + 3.0];
    match Model::from_bytes(&tiny_model(), "tiny", &cuda) {
        Ok(mut model) => {
            assert!(has_driver(), "CUDA started without a driver");
            assert_eq!(model.device(), Device::Cuda);
            let y = model.run_single("x", x.view()).expect("run on cuda");
            for (a, b) in y.iter().zip(expected) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
        Err(e) => {
            let text = e.to_string();
            if !cfg!(feature = "cuda") {
                assert!(text.contains("--features cuda"), "{text}");
            } else if has_driver() {
                panic!("CUDA is there but the session failed: {text}");
            } else {
                assert!(text.contains("CPU-only machine"), "{text}");
            }
            assert!(text.contains("--allow-cpu-fallback"), "{text}");
        }
    }
    let fallback = SessionOptions {
        allow_cpu_fallback: true,
        ..cuda
    };
    let mut model = Model::from_bytes(&tiny_model(), "tiny", &fallback).expect("fallback");
    if !has_driver() {
        assert_eq!(model.device(), Device::Cpu);
    }
    let y = model.run_single("x", x.view()).expect("run");
    for (a, b) in y.iter().zip(expected) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

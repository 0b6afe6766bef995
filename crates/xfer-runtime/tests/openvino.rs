//! `Device::OpenVino` through the real onnxruntime-openvino library: fp32 matches a direct
//! computation, bf16 really rounds (on a CPU with bf16 instructions) or is refused (on one
//! without), and `xfer doctor` finds everything.
//!
//! Needs `.ort-openvino/` (`just setup-openvino`); `just test` sets XFER_REQUIRE_OPENVINO=1 so
//! that its absence fails instead of skipping. Every test here loads that library (one
//! ONNX Runtime per process).

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{Dim, GraphBuilder};
use xfer_runtime::{Device, Model, Precision, SessionOptions};

/// `.ort-openvino/libonnxruntime.so.1.24.1` of this checkout, or `None` (test skipped) when
/// it was not fetched and XFER_REQUIRE_OPENVINO is not set.
fn openvino_ort() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(xfer_runtime::OPENVINO_LIBRARY_DIR);
    let lib = dir.join("libonnxruntime.so.1.24.1");
    if lib.is_file() {
        return Some(std::fs::canonicalize(&lib).expect("absolute path"));
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
    None
}

/// y = x @ w with x [batch, K], w [K, 4]: a MatMul big enough that OpenVINO runs it on its
/// own kernels.
const K: usize = 64;

fn weights() -> Vec<f32> {
    // Values with more mantissa bits than bf16's 8, so bf16 rounding shows.
    (0..K * 4)
        .map(|i| 1.0 + (i % 7) as f32 / 1024.0 + (i % 5) as f32 / 65536.0)
        .collect()
}

fn matmul_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("matmul");
    g.input("x", &[Dim::from("batch"), Dim::Fixed(K as i64)]);
    let w = g.constant_f32("w", &[K as i64, 4], &weights());
    g.node_named("MatMul", &["x", &w], &["y"], vec![]);
    g.output("y", &[Dim::from("batch"), Dim::Fixed(4)]);
    xfer_onnx::write_model_bytes(&g.build_model())
}

fn input() -> ArrayD<f32> {
    let x: Vec<f32> = (0..2 * K)
        .map(|i| 0.5 + (i % 11) as f32 / 2048.0 + (i % 3) as f32 / 131072.0)
        .collect();
    ArrayD::from_shape_vec(IxDyn(&[2, K]), x).expect("shape")
}

/// x @ w in f64, independently of any runtime.
fn direct(x: &ArrayD<f32>) -> Vec<f64> {
    let w = weights();
    let mut y = vec![0.0f64; 2 * 4];
    for b in 0..2 {
        for j in 0..4 {
            y[b * 4 + j] = (0..K)
                .map(|k| f64::from(x[[b, k]]) * f64::from(w[k * 4 + j]))
                .sum();
        }
    }
    y
}

fn run(precision: Precision, ort: &Path) -> xfer_runtime::Result<(Model, Vec<f64>)> {
    let options = SessionOptions {
        ort_lib: Some(ort.to_path_buf()),
        device: Device::OpenVino,
        precision: Some(precision),
        intra_threads: Some(1),
        ..SessionOptions::default()
    };
    let mut model = Model::from_bytes(&matmul_model(), "matmul", &options)?;
    let y = model.run_single("x", input().view())?;
    Ok((model, y.iter().map(|v| f64::from(*v)).collect()))
}

fn max_rel_error(got: &[f64], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(g, w)| ((g - w) / w).abs())
        .fold(0.0, f64::max)
}

#[test]
fn fp32_matches_the_direct_product_and_bf16_rounds_or_is_refused() {
    let Some(ort) = openvino_ort() else { return };
    let want = direct(&input());
    let (model, fp32) = run(Precision::Fp32, &ort).expect("fp32 session");
    assert_eq!(model.device(), Device::OpenVino);
    assert_eq!(model.precision(), Precision::Fp32);
    let fp32_err = max_rel_error(&fp32, &want);
    assert!(fp32_err < 1e-6, "fp32 relative error {fp32_err}");

    if !xfer_runtime::cpu_bf16().any() {
        let err = run(Precision::Bf16, &ort).expect_err("bf16 without bf16 instructions");
        assert!(err.to_string().contains("--precision fp32"), "{err}");
        return;
    }
    let (model, bf16) = run(Precision::Bf16, &ort).expect("bf16 session");
    assert_eq!(model.precision(), Precision::Bf16);
    let bf16_err = max_rel_error(&bf16, &want);
    // bf16 keeps 8 mantissa bits: each product's inputs are off by up to 2^-9 each.
    assert!(
        bf16_err < 2.0 * 2f64.powi(-8),
        "bf16 relative error {bf16_err}"
    );
    assert!(
        bf16_err > 100.0 * fp32_err.max(1e-9),
        "bf16 ({bf16_err}) should round visibly more than fp32 ({fp32_err}): was bf16 applied?"
    );
}

#[test]
fn bf16_is_refused_on_other_devices_naming_openvino() {
    let options = SessionOptions {
        device: Device::Cpu,
        precision: Some(Precision::Bf16),
        ..SessionOptions::default()
    };
    let err = options.check().expect_err("bf16 on the CPU provider");
    assert!(err.to_string().contains("--device openvino"), "{err}");
    assert_eq!(
        SessionOptions::default().precision(),
        Precision::Fp32,
        "the CPU provider defaults to fp32"
    );
}

#[test]
fn doctor_finds_every_openvino_library() {
    let Some(ort) = openvino_ort() else { return };
    let report = xfer_runtime::doctor(Device::OpenVino, Some(&ort), None).expect("doctor");
    println!("{report}");
    assert_eq!(report.ort_version.as_deref(), Ok("1.24.1"));
    assert!(
        report
            .providers
            .iter()
            .any(|p| p == "OpenVINOExecutionProvider"),
        "{:?}",
        report.providers
    );
    for s in &report.libraries {
        assert!(
            s.usable(),
            "{} not found next to {}",
            s.library.name,
            ort.display()
        );
    }
    assert!(report.ok(), "{report}");
    assert!(report.driver.is_none(), "OpenVINO needs no NVIDIA driver");
}

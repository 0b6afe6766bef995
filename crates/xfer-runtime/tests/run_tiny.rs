//! Runs tiny models built here through the real ONNX Runtime library.

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{Dim, GraphBuilder, attr};
use xfer_runtime::{CpuArena, Model, SessionOptions};

fn tiny_model() -> Vec<u8> {
    let mut g = GraphBuilder::new("tiny");
    g.input("x", &[Dim::from("batch"), Dim::Fixed(3)]);
    let w = g.constant_f32("w", &[3, 2], &[1.0, -1.0, 2.0, 0.5, -3.0, 1.0]);
    let mm = g.op("MatMul", &["x", &w], vec![], "mm");
    g.node_named("Relu", &[&mm], &["y"], vec![]);
    g.node_named(
        "ArgMax",
        &["y"],
        &["k"],
        vec![attr::int("axis", 1), attr::int("keepdims", 0)],
    );
    g.output("y", &[Dim::from("batch"), Dim::Fixed(2)]);
    g.output_typed("k", xfer_onnx::DataType::Int64, &[Dim::from("batch")]);
    xfer_onnx::write_model_bytes(&g.build_model())
}

#[test]
fn matmul_relu_matches_direct_computation() {
    let bytes = tiny_model();
    let mut model = Model::from_bytes(&bytes, "tiny", &SessionOptions::default()).expect("session");
    assert_eq!(model.input_names(), vec!["x"]);
    assert_eq!(model.output_names(), vec!["y", "k"]);
    let x = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 0.25])
        .expect("shape");
    let out = model.run(&[("x", x.view().into())]).expect("run");
    let y = out[0].1.clone().into_f32().expect("f32");
    // Direct: y = relu(x @ w), w = [[1,-1],[2,0.5],[-3,1]].
    let w = [[1.0f32, -1.0], [2.0, 0.5], [-3.0, 1.0]];
    for b in 0..2 {
        for j in 0..2 {
            let mut s = 0.0f32;
            for i in 0..3 {
                s += x[[b, i]] * w[i][j];
            }
            assert!((y[[b, j]] - s.max(0.0)).abs() < 1e-6, "y[{b},{j}]");
        }
    }
    match &out[1].1 {
        xfer_runtime::OutputTensor::I64(k) => assert_eq!(k.shape(), &[2]),
        other => panic!("expected int64 argmax, got {other:?}"),
    }
}

#[test]
fn wrong_input_name_is_a_clear_error() {
    let mut model =
        Model::from_bytes(&tiny_model(), "tiny", &SessionOptions::default()).expect("session");
    let x = ArrayD::<f32>::zeros(IxDyn(&[1, 3]));
    let err = model
        .run(&[("nope", x.view().into())])
        .expect_err("must fail");
    assert!(err.to_string().contains("tiny"), "{err}");
}

#[test]
fn garbage_model_bytes_are_rejected() {
    let err = Model::from_bytes(b"this is not onnx", "garbage", &SessionOptions::default())
        .expect_err("must fail");
    assert!(err.to_string().contains("garbage"), "{err}");
}

#[test]
fn missing_model_file_says_what_to_run() {
    let err = Model::load(
        std::path::Path::new("/nonexistent/model.onnx"),
        &SessionOptions::default(),
    )
    .expect_err("must fail");
    assert!(err.to_string().contains("xfer convert"), "{err}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_without_feature_names_the_feature() {
    use xfer_runtime::Device;
    let opts = SessionOptions {
        device: Device::Cuda,
        ..Default::default()
    };
    let err = Model::from_bytes(&tiny_model(), "tiny", &opts).expect_err("must fail");
    assert!(err.to_string().contains("--features cuda"), "{err}");
    let fallback = SessionOptions {
        device: Device::Cuda,
        allow_cpu_fallback: true,
        ..Default::default()
    };
    let model = Model::from_bytes(&tiny_model(), "tiny", &fallback).expect("fallback");
    assert_eq!(model.device(), Device::Cpu);
}

#[test]
fn low_memory_sessions_give_the_same_outputs_run_after_run() {
    // The exact-growth shared arena, no arena at all, and no memory pattern (issue 15): the
    // same bits as the defaults, on the first run and on later ones (the memory pattern only
    // acts from the second run on), at two batch sizes, with two sessions sharing the arena.
    let bytes = tiny_model();
    let defaults = SessionOptions::default();
    let low = defaults.low_memory();
    assert!(low.cpu_arena == CpuArena::Exact && low.disable_mem_pattern);
    assert!(defaults.cpu_arena == CpuArena::PerSession && !defaults.disable_mem_pattern);
    let off = SessionOptions {
        cpu_arena: CpuArena::Off,
        ..low.clone()
    };
    let mut plain = Model::from_bytes(&bytes, "tiny", &defaults).expect("session");
    let mut lean = [
        Model::from_bytes(&bytes, "tiny lean", &low).expect("lean session"),
        Model::from_bytes(&bytes, "tiny lean 2", &low).expect("second lean session"),
        Model::from_bytes(&bytes, "tiny no arena", &off).expect("no-arena session"),
    ];
    for batch in [4usize, 4, 7, 4] {
        let x = ArrayD::from_shape_fn(IxDyn(&[batch, 3]), |i| (i[0] * 3 + i[1]) as f32 - 5.5);
        let a = plain.run(&[("x", x.view().into())]).expect("run");
        let ya = a[0].1.clone().into_f32().expect("f32");
        assert_eq!(ya.shape(), &[batch, 2]);
        let bits = |y: &ArrayD<f32>| y.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for model in &mut lean {
            let b = model.run(&[("x", x.view().into())]).expect("lean run");
            let yb = b[0].1.clone().into_f32().expect("f32");
            assert_eq!(bits(&ya), bits(&yb), "batch {batch}");
        }
    }
}

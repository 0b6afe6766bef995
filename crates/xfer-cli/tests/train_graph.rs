//! `xfer train-graph` on a tiny model folder built here: the four files appear, graph.json
//! describes the training graph's real inputs, and bad arguments are clear errors.

use std::path::Path;
use std::process::Command;

use xfer_onnx::{Dim, GraphBuilder, TensorProto, attr};

fn model_folder(dir: &Path) {
    model_folder_with(dir, false);
}

/// The tiny model, with a depthwise 3x3 conv (4 channels) after the Relu when `depthwise`.
fn model_folder_with(dir: &Path, depthwise: bool) {
    let mut g = GraphBuilder::new("tiny");
    g.input(
        "pixels",
        &[Dim::from("batch"), 3.into(), Dim::from("h"), Dim::from("w")],
    );
    let w: Vec<f32> = (0..4 * 3 * 3 * 3)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 10.0)
        .collect();
    g.initializer(TensorProto::from_f32("conv.kernel", &[4, 3, 3, 3], &w));
    g.initializer(TensorProto::from_f32(
        "bn.gamma",
        &[4],
        &[1.0, 0.9, 1.1, 1.2],
    ));
    g.initializer(TensorProto::from_f32(
        "bn.beta",
        &[4],
        &[0.0, 0.1, -0.1, 0.2],
    ));
    g.initializer(TensorProto::from_f32("bn.moving_mean", &[4], &[0.0; 4]));
    g.initializer(TensorProto::from_f32("bn.moving_variance", &[4], &[1.0; 4]));
    g.node_named(
        "Conv",
        &["pixels", "conv.kernel"],
        &["c"],
        vec![
            attr::ints("strides", &[2, 2]),
            attr::string("auto_pad", "SAME_UPPER"),
        ],
    );
    g.node_named(
        "BatchNormalization",
        &[
            "c",
            "bn.gamma",
            "bn.beta",
            "bn.moving_mean",
            "bn.moving_variance",
        ],
        &["b"],
        vec![attr::float("epsilon", 1e-3)],
    );
    g.node_named("Relu", &["b"], &["r"], vec![]);
    let pooled = if depthwise {
        let w: Vec<f32> = (0..36).map(|i| ((i * 5 % 7) as f32 - 3.0) / 6.0).collect();
        g.initializer(TensorProto::from_f32("dw.kernel", &[4, 1, 3, 3], &w));
        let attrs = vec![attr::int("group", 4), attr::ints("pads", &[1, 1, 1, 1])];
        g.node_named("Conv", &["r", "dw.kernel"], &["d"], attrs);
        "d"
    } else {
        "r"
    };
    g.node_named("GlobalAveragePool", &[pooled], &["p"], vec![]);
    g.node_named("Flatten", &["p"], &["features"], vec![]);
    g.output("features", &[Dim::from("batch"), 4.into()]);
    xfer_onnx::write_model(&g.build_model(), &dir.join("train.onnx")).expect("write onnx");
    let manifest = serde_json::json!({
        "name": "tiny", "onnx": "train.onnx", "training_onnx": "train.onnx", "input": "pixels",
        "layout": "NCHW", "channel_order": "RGB", "value_range": [0.0, 255.0], "image_size": [9, 9],
        "preprocessing": "none", "output": "features", "feature_dim": 4,
        "source": {"package": "test", "file": "test", "sha256": "0"},
        "fingerprint": "0", "xfer_version": "0.1.0"
    });
    std::fs::write(dir.join("model.json"), manifest.to_string()).expect("write manifest");
}

fn xfer(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xfer"))
        .args(args)
        .output()
        .expect("run xfer")
}

#[test]
fn writes_training_eval_params_and_graph_json() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).expect("mkdir");
    model_folder(&model);
    let out = tmp.path().join("out");
    let o = xfer(&[
        "train-graph",
        "--model",
        model.to_str().expect("utf8"),
        "--head",
        "dense:3:0.5",
        "--trainable",
        "from:bn",
        "--loss",
        "softmax",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in [
        "training.onnx",
        "eval.onnx",
        "params.safetensors",
        "graph.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("graph.json")).expect("read"))
            .expect("json");
    let params: Vec<&str> = spec["parameters"]
        .as_array()
        .expect("array")
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    assert_eq!(params, ["bn.gamma", "bn.beta", "head.kernel", "head.bias"]);
    assert_eq!(
        spec["data_input"]["shape"],
        serde_json::json!([-1, 3, 9, 9])
    );
    assert_eq!(spec["labels"]["dtype"], "int64");
    assert_eq!(
        spec["dropout_masks"][0]["shape"],
        serde_json::json!([-1, 4])
    );
    let training = xfer_onnx::read_model(&out.join("training.onnx")).expect("read training");
    let graph = training.graph.expect("graph");
    let inputs: Vec<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        inputs,
        [
            "pixels",
            "labels",
            "dropout_mask",
            "bn.gamma",
            "bn.beta",
            "head.kernel",
            "head.bias"
        ]
    );
    let outputs: Vec<&str> = graph.output.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        outputs,
        [
            "loss",
            "logits",
            "bn.gamma_grad",
            "bn.beta_grad",
            "head.kernel_grad",
            "head.bias_grad"
        ]
    );
    let stored = xfer_autodiff::load_params(&out.join("params.safetensors")).expect("params");
    let kernel = stored
        .iter()
        .find(|p| p.name == "head.kernel")
        .expect("head.kernel");
    assert_eq!(kernel.shape, vec![4, 3]);
    let gamma = stored.iter().find(|p| p.name == "bn.gamma").expect("gamma");
    assert_eq!(gamma.data, vec![1.0, 0.9, 1.1, 1.2]);
}

#[test]
fn unknown_layer_and_bad_head_are_clear_errors() {
    let tmp = tempfile::tempdir().expect("tmp");
    model_folder(tmp.path());
    let out = tmp.path().join("out");
    let dir = tmp.path().to_str().expect("utf8");
    let o = xfer(&[
        "train-graph",
        "--model",
        dir,
        "--trainable",
        "from:block9",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("block9") && err.contains("conv"), "{err}");
    let o = xfer(&[
        "train-graph",
        "--model",
        dir,
        "--head",
        "dense:x",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("positive integer"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists(), "nothing written on error");
}

/// `--cpu-kernels`: the default graph is standard ONNX; `nchwc` rewrites the depthwise conv
/// (forward and input gradient: the conv below it is trainable) into ONNX Runtime's NCHWc
/// kernels and imports their domain; an unknown value is a clear error.
#[test]
fn cpu_kernels_nchwc_rewrites_the_depthwise_convs_and_portable_is_the_default() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = tmp.path().join("model");
    std::fs::create_dir_all(&model).expect("mkdir");
    model_folder_with(&model, true);
    let nchwc_convs = |kernels: Option<&str>| {
        let out = tmp.path().join(kernels.unwrap_or("default"));
        let mut args = vec![
            "train-graph",
            "--model",
            model.to_str().expect("utf8"),
            "--out",
            out.to_str().expect("utf8"),
        ];
        args.extend(kernels.map(|k| ["--cpu-kernels", k]).into_iter().flatten());
        let o = xfer(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let training = xfer_onnx::read_model(&out.join("training.onnx")).expect("read");
        let domain = "com.microsoft.nchwc";
        let imported = training.opset_import.iter().any(|o| o.domain == domain);
        let graph = training.graph.expect("graph");
        let convs = graph
            .node
            .iter()
            .filter(|n| n.op_type == "Conv" && n.domain == domain)
            .count();
        (convs, imported)
    };
    assert_eq!(nchwc_convs(None), (0, false));
    assert_eq!(nchwc_convs(Some("portable")), (0, false));
    if cfg!(target_arch = "x86_64") {
        assert_eq!(nchwc_convs(Some("nchwc")), (2, true));
    }
    let o = xfer(&["train-graph", "--cpu-kernels", "fast", "--out", "unused"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("auto, portable or nchwc"), "{err}");
}

//! Issue 18 item 12: `xfer embed --size` below the model's minimum input states that minimum
//! instead of a raw ONNX Runtime error.

mod common;

use std::path::Path;

use common::{BackboneInfo, images, path, pixels_input, publish_backbone, xfer_here};
use xfer_onnx::{GraphBuilder, attr};

/// Conv 3x3 stride 2 then conv 3x3, both unpadded (Xception's first two layers), then a
/// global average: the smallest input is 7x7 ((7 - 3) / 2 + 1 = 3, then 3 - 2 = 1).
fn strided_backbone(dir: &Path) {
    let mut g = GraphBuilder::new("strided");
    pixels_input(&mut g);
    let w1 = g.constant_f32("w1", &[2, 3, 3, 3], &[0.01; 54]);
    let w2 = g.constant_f32("w2", &[2, 2, 3, 3], &[0.02; 36]);
    let c1 = g.op(
        "Conv",
        &["pixels", &w1],
        vec![
            attr::ints("kernel_shape", &[3, 3]),
            attr::ints("strides", &[2, 2]),
        ],
        "conv1",
    );
    let c2 = g.op(
        "Conv",
        &[&c1, &w2],
        vec![attr::ints("kernel_shape", &[3, 3])],
        "conv2",
    );
    publish_backbone(
        g,
        &c2,
        dir,
        BackboneInfo {
            image_size: [16, 16],
            preprocessing: "none",
            feature_dim: 2,
        },
    );
}

#[test]
fn a_size_below_the_models_minimum_names_the_minimum() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let model = tmp.path().join("strided");
    strided_backbone(&model);
    let data = tmp.path().join("data");
    let rows = images(&data);
    let image = data.join(&rows[0].0);
    let (ok, stdout, stderr) = xfer_here(&[
        "embed",
        "--model",
        path(&model),
        "--size",
        "1x1",
        path(&image),
    ]);
    assert!(!ok, "1x1 must be refused:\n{stdout}");
    assert!(stderr.contains("its smallest input is 7x7"), "{stderr}");
    let (ok, stdout, stderr) = xfer_here(&[
        "embed",
        "--model",
        path(&model),
        "--size",
        "7x7",
        path(&image),
    ]);
    assert!(ok, "the minimum itself runs:\n{stdout}\n{stderr}");
}

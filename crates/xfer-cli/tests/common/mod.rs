//! Shared fixtures of the CLI tests: a tiny backbone (per-channel mean colour), generated
//! PNG images, a store of their embeddings, and running the `xfer` binary.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use ndarray::{Array2, Array4, Axis};
use xfer_data::RgbImage;
use xfer_head::ModelMetadata;
use xfer_onnx::{Dim, GraphBuilder, attr};
use xfer_runtime::{Backbone, ModelManifest, ModelSource, SessionOptions};
use xfer_store::{EmbeddingRecord, EmbeddingWriter, StoreMetadata, WriterOptions};

pub const SIZE: u32 = 8;

/// Writes `dir/model.onnx` (pixels → per-channel mean / 255, `features` [N, 3]) and its manifest;
/// `bias` changes the graph (hence the fingerprint) without changing the classes.
pub fn tiny_backbone(dir: &Path, bias: f32) -> ModelManifest {
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
    let scale = g.constant_f32("scale", &[], &[1.0 / 255.0]);
    let shift = g.constant_f32("shift", &[], &[bias]);
    let x = g.op("Mul", &["pixels", &scale], vec![], "scaled");
    let x = g.op("Add", &[&x, &shift], vec![], "shifted");
    publish_backbone(
        g,
        &x,
        dir,
        BackboneInfo {
            image_size: [SIZE, SIZE],
            preprocessing: "x/255",
            feature_dim: 3,
        },
    )
}

/// What a tiny test backbone's manifest says beyond its graph.
pub struct BackboneInfo {
    pub image_size: [u32; 2],
    pub preprocessing: &'static str,
    pub feature_dim: usize,
}

/// Ends a test backbone: a global average of `last`, flattened to `features`
/// [N, `feature_dim`], written as `dir/model.onnx` with its manifest (named after the graph).
pub fn publish_backbone(
    mut g: GraphBuilder,
    last: &str,
    dir: &Path,
    info: BackboneInfo,
) -> ModelManifest {
    let pooled = g.op("GlobalAveragePool", &[last], vec![], "pooled");
    g.node_named(
        "Flatten",
        &[&pooled],
        &["features"],
        vec![attr::int("axis", 1)],
    );
    g.output(
        "features",
        &[
            Dim::from("batch"),
            Dim::Fixed(i64::try_from(info.feature_dim).expect("feature dim")),
        ],
    );
    let model = g.build_model();
    let bytes = xfer_onnx::write_model_bytes(&model);
    std::fs::create_dir_all(dir).expect("model dir");
    std::fs::write(dir.join("model.onnx"), &bytes).expect("write model");
    let manifest = ModelManifest {
        name: model
            .graph
            .as_ref()
            .map(|g| g.name.clone())
            .unwrap_or_default(),
        onnx: "model.onnx".to_owned(),
        training_onnx: None,
        input: "pixels".to_owned(),
        layout: "NCHW".to_owned(),
        channel_order: "RGB".to_owned(),
        value_range: [0.0, 255.0],
        image_size: info.image_size,
        preprocessing: info.preprocessing.to_owned(),
        output: "features".to_owned(),
        feature_dim: info.feature_dim,
        classes: None,
        source: ModelSource {
            package: "test".to_owned(),
            file: "test".to_owned(),
            sha256: String::new(),
        },
        fingerprint: xfer_runtime::fingerprint(&bytes),
        xfer_version: "test".to_owned(),
    };
    manifest.write(dir).expect("manifest");
    manifest
}

/// Reddish "cat" and bluish "dog" PNGs with per-pixel noise; returns (relative id, label, split).
pub fn images(root: &Path) -> Vec<(String, i32, &'static str)> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 61) as u8
    };
    let mut out = Vec::new();
    for (label, class) in ["cat", "dog"].iter().enumerate() {
        std::fs::create_dir_all(root.join(class)).expect("class dir");
        for i in 0..30 {
            let (r, b) = if label == 0 { (150, 90) } else { (90, 150) };
            let raw: Vec<u8> = (0..SIZE * SIZE)
                .flat_map(|_| [r + next(), 100 + next(), b + next()])
                .collect();
            let img = RgbImage::from_raw(SIZE, SIZE, raw).expect("image buffer");
            let id = format!("{class}/{i:03}.png");
            img.save(root.join(&id)).expect("save png");
            let split = match i % 5 {
                0 => "val",
                1 => "test",
                _ => "train",
            };
            out.push((id, label as i32, split));
        }
    }
    out
}

/// Embeds the images with the backbone and writes them into a store.
pub fn fill_store(
    store: &Path,
    model_dir: &Path,
    data: &Path,
    rows: &[(String, i32, &'static str)],
) {
    let mut backbone = Backbone::load(model_dir, &SessionOptions::default()).expect("backbone");
    let mut batch = Array4::<f32>::zeros((rows.len(), 3, SIZE as usize, SIZE as usize));
    for (i, (id, _, _)) in rows.iter().enumerate() {
        let img = xfer_data::load_image(&data.join(id), SIZE, SIZE).expect("load");
        batch.index_axis_mut(Axis(0), i).assign(&img);
    }
    let features: Array2<f32> = backbone.embed(batch.view()).expect("embed");
    let meta =
        StoreMetadata::from_manifest(&backbone.manifest, vec!["cat".to_owned(), "dog".to_owned()]);
    let mut writer =
        EmbeddingWriter::create(store, meta, &WriterOptions::default()).expect("writer");
    let records: Vec<EmbeddingRecord> = rows
        .iter()
        .map(|(id, label, split)| EmbeddingRecord {
            id: id.clone(),
            label: *label,
            split: (*split).to_owned(),
            content_hash: xfer_store::content_hash(id.as_bytes()),
        })
        .collect();
    writer.append(&records, features.view()).expect("append");
    writer.finish().expect("finish");
}

pub fn xfer(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_xfer"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run xfer");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Runs the `xfer` binary from the crate folder, so that `.ort/` is found up the tree.
pub fn xfer_here(args: &[&str]) -> (bool, String, String) {
    xfer(args, Path::new(env!("CARGO_MANIFEST_DIR")))
}

/// Declares the NCHW `pixels` input of the tiny test models.
pub fn pixels_input(g: &mut GraphBuilder) {
    g.input(
        "pixels",
        &[
            Dim::from("batch"),
            Dim::Fixed(3),
            Dim::from("h"),
            Dim::from("w"),
        ],
    );
}

/// An exported model as `xfer export` writes it: pixels → mean colour → Gemm → softmax
/// over `cat` (red) and `dog` (blue), with the exported-model metadata.
pub fn tiny_exported(file: &Path) -> std::path::PathBuf {
    let mut g = GraphBuilder::new("tiny_exported");
    pixels_input(&mut g);
    let pooled = g.op("GlobalAveragePool", &["pixels"], vec![], "pooled");
    let flat = g.op("Flatten", &[&pooled], vec![attr::int("axis", 1)], "flat");
    let w = g.constant_f32("w", &[2, 3], &[0.05, 0.0, -0.05, -0.05, 0.0, 0.05]);
    let b = g.constant_f32("b", &[2], &[0.0, 0.0]);
    let logits = g.op(
        "Gemm",
        &[&flat, &w, &b],
        vec![attr::int("transB", 1)],
        "logits",
    );
    g.node_named(
        "Softmax",
        &[&logits],
        &["probabilities"],
        vec![attr::int("axis", 1)],
    );
    g.output("probabilities", &[Dim::from("batch"), Dim::Fixed(2)]);
    let mut model = g.build_model();
    ModelMetadata::new(
        vec!["cat".to_owned(), "dog".to_owned()],
        [SIZE, SIZE],
        "pixels",
        [0.0, 255.0],
        "tiny",
        "test",
    )
    .write_to(&mut model);
    xfer_onnx::write_model(&model, file).expect("write model");
    file.to_path_buf()
}

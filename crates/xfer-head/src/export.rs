//! One ONNX model from a backbone and a head: pixels → class probabilities.

use std::collections::HashMap;

use xfer_onnx::{Dim, GraphBuilder, GraphProto, ModelProto, ValueInfoProto};

use crate::head::Head;
use crate::metadata::ModelMetadata;
use crate::{Error, Result};

/// Name of the output of heads and exported models.
pub const PROBABILITIES_OUTPUT: &str = "probabilities";
/// Metadata key of the class names (a JSON array) in exported models and `head.onnx`.
pub const METADATA_CLASSES: &str = "classes";
/// Metadata key of the input size `[height, width]` (JSON) in exported models.
pub const METADATA_IMAGE_SIZE: &str = "image_size";
/// Metadata key of the pixel input's name in exported models.
pub const METADATA_INPUT: &str = "input";

/// What [`merge`] needs to know about the backbone.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// Name of the backbone's pixel input (kept as is in the merged model).
    pub input: String,
    /// Name of the backbone's feature output (fed to the head).
    pub features_output: String,
    /// Input size `[height, width]` images are resized to, recorded in the metadata.
    pub image_size: [u32; 2],
    /// Range of the pixel values, recorded in the metadata.
    pub value_range: [f32; 2],
    /// Backbone name, recorded in the metadata.
    pub backbone_name: String,
}

/// Merges `backbone` and `head` into one model: `input` (NCHW pixels) → `probabilities`.
/// Every backbone name gets the prefix `backbone/` and every head name `head/`;
/// the metadata holds the classes (JSON), the image size, the input name, the
/// layout and value range, and the backbone fingerprint. The caller checks
/// that the backbone's fingerprint is the head's ([`Head::check_fingerprint`]).
pub fn merge(backbone: &ModelProto, head: &Head, options: &ExportOptions) -> Result<ModelProto> {
    let mut graph = backbone
        .graph
        .clone()
        .ok_or_else(|| Error::Onnx("the backbone model has no graph".to_owned()))?;
    check_backbone(&graph, options)?;
    let features = prefix_backbone_names(&mut graph, options);
    graph.output.clear();
    graph.name = format!(
        "{}_with_head",
        if graph.name.is_empty() {
            "backbone"
        } else {
            &graph.name
        }
    );

    let mut g = GraphBuilder::from_graph(graph);
    let flat = g.op(
        "Flatten",
        &[&features],
        vec![xfer_onnx::attr::int("axis", 1)],
        "head/features",
    );
    let probs = head.append_to(&mut g, &flat, "head/");
    if probs != PROBABILITIES_OUTPUT {
        return Err(Error::Onnx(format!(
            "the backbone already uses the name `{PROBABILITIES_OUTPUT}`"
        )));
    }
    g.output(
        &probs,
        &[Dim::from("batch"), Dim::Fixed(head.num_classes() as i64)],
    );

    let mut model = backbone.clone();
    model.graph = Some(g.build());
    model.producer_name = "xfer".to_owned();
    model.producer_version = env!("CARGO_PKG_VERSION").to_owned();
    model.doc_string = format!(
        "{} backbone + logistic head: {} (NCHW, RGB, values {}..{}) -> {PROBABILITIES_OUTPUT} over {:?}",
        options.backbone_name,
        options.input,
        options.value_range[0],
        options.value_range[1],
        head.classes
    );
    ModelMetadata::new(
        head.classes.clone(),
        options.image_size,
        &options.input,
        options.value_range,
        &options.backbone_name,
        &head.fingerprint,
    )
    .write_to(&mut model);
    Ok(model)
}

/// Refuses a backbone without the pixel input or the feature output, or with
/// control flow (subgraphs).
fn check_backbone(graph: &GraphProto, options: &ExportOptions) -> Result<()> {
    let names = |values: &[ValueInfoProto]| -> Vec<String> {
        values.iter().map(|v| v.name.clone()).collect()
    };
    let inputs = names(&graph.input);
    if !inputs.contains(&options.input) {
        return Err(Error::Onnx(format!(
            "the backbone has no input `{}` (inputs: {inputs:?})",
            options.input
        )));
    }
    let outputs = names(&graph.output);
    if !outputs.contains(&options.features_output) {
        return Err(Error::Onnx(format!(
            "the backbone has no output `{}` (outputs: {outputs:?})",
            options.features_output
        )));
    }
    if let Some(node) = graph.node.iter().find(|n| {
        n.attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
    }) {
        return Err(Error::Onnx(format!(
            "backbone node `{}` ({}) has a subgraph; merging control-flow graphs is not supported",
            node.name, node.op_type
        )));
    }
    Ok(())
}

/// Prefixes every name of the backbone but its pixel input with `backbone/`;
/// returns the new name of the feature output.
fn prefix_backbone_names(graph: &mut GraphProto, options: &ExportOptions) -> String {
    let mut renamed: HashMap<String, String> = HashMap::new();
    let mut rename = |name: &mut String| {
        if name.is_empty() || *name == options.input {
            return;
        }
        let new = renamed
            .entry(name.clone())
            .or_insert_with(|| format!("backbone/{name}"))
            .clone();
        *name = new;
    };
    for node in &mut graph.node {
        node.input.iter_mut().for_each(&mut rename);
        node.output.iter_mut().for_each(&mut rename);
        rename(&mut node.name);
    }
    for t in &mut graph.initializer {
        rename(&mut t.name);
    }
    for v in graph.input.iter_mut().chain(graph.value_info.iter_mut()) {
        rename(&mut v.name);
    }
    let mut features = options.features_output.clone();
    rename(&mut features);
    features
}

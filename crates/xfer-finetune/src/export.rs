//! The fine-tuned model as one ONNX graph: backbone (trained parameters,
//! BatchNorm folded into the convolutions) + Dense head + softmax, pixels →
//! `probabilities`, with the metadata `xfer evaluate` / `xfer predict` read.

use std::collections::BTreeMap;

use xfer_autodiff::Parameter;
use xfer_onnx::{Dim, GraphBuilder, GraphProto, ModelProto, TensorProto, attr};

use crate::{Error, Result};

/// The head's kernel parameter (`[features, units]`).
pub const HEAD_KERNEL: &str = "head.kernel";
/// The head's bias parameter (`[units]`).
pub const HEAD_BIAS: &str = "head.bias";

/// `forward` with every initializer named in `params` replaced by the trained value
/// (the head's parameters, which the forward graph does not have, are ignored).
pub fn trained_forward(
    forward: &ModelProto,
    params: &BTreeMap<String, Parameter>,
) -> Result<ModelProto> {
    let mut model = forward.clone();
    let graph = model.graph.as_mut().ok_or_else(|| Error::Model {
        reason: "the backbone model has no graph".to_owned(),
    })?;
    for init in &mut graph.initializer {
        if let Some(p) = params.get(&init.name) {
            if init.numel() != p.data.len() {
                return Err(Error::Model {
                    reason: format!(
                        "trained parameter `{}` has {} values but the backbone's initializer has dims {:?}",
                        p.name,
                        p.data.len(),
                        init.dims
                    ),
                });
            }
            *init = TensorProto::from_f32(init.name.clone(), &init.dims.clone(), &p.data);
        }
    }
    Ok(model)
}

/// What the exported model records besides its graph.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    /// Name of the pixel input.
    pub input: String,
    /// Name of the backbone's feature output (`[N, D]`).
    pub features: String,
    /// Class names.
    pub classes: Vec<String>,
    /// Input size `[height, width]`.
    pub image_size: [u32; 2],
    /// Range of the pixel values.
    pub value_range: [f32; 2],
    /// Backbone name.
    pub backbone_name: String,
    /// Fingerprint of the backbone the run started from.
    pub fingerprint: String,
}

/// The exported model: trained backbone (BatchNorm folded) + head + softmax.
///
/// A binary head (one logit `z`) becomes two softmax rows `[0, z]`, so
/// `probabilities = [1 − σ(z), σ(z)]`, the layout of `xfer train-head`'s heads.
pub fn export_model(
    forward: &ModelProto,
    params: &BTreeMap<String, Parameter>,
    info: &ExportInfo,
) -> Result<ModelProto> {
    let mut model = trained_forward(forward, params)?;
    let mut graph = model.graph.take().ok_or_else(|| Error::Model {
        reason: "the backbone model has no graph".to_owned(),
    })?;
    xfer_onnx::fold::fold_batch_norms_in_graph(&mut graph)?;
    let head = SoftmaxHead::from_params(params, info.classes.len())?;
    let graph = head.append_to(graph, &info.features)?;
    let mut out = ModelProto::with_graph(graph, model.opset().max(13));
    out.opset_import = model.opset_import.clone();
    out.doc_string = format!(
        "{} fine-tuned by xfer finetune: {} (NCHW, RGB, values {}..{}) -> {} over {:?}",
        info.backbone_name,
        info.input,
        info.value_range[0],
        info.value_range[1],
        xfer_head::PROBABILITIES_OUTPUT,
        info.classes
    );
    let mut metadata = xfer_head::ModelMetadata::new(
        info.classes.clone(),
        info.image_size,
        &info.input,
        info.value_range,
        &info.backbone_name,
        &info.fingerprint,
    );
    metadata.finetuned = true;
    metadata.write_to(&mut out);
    Ok(out)
}

/// The trained head as softmax rows: `[classes, features]` weights and `[classes]` biases.
struct SoftmaxHead {
    rows: Vec<f32>,
    bias: Vec<f32>,
    classes: usize,
    features: usize,
}

impl SoftmaxHead {
    /// The rows of the trained `head.kernel` / `head.bias` for `classes` classes (a
    /// binary head's one logit `z` becomes the rows `[0, z]`).
    fn from_params(params: &BTreeMap<String, Parameter>, classes: usize) -> Result<Self> {
        let head_param = |name: &str| {
            params.get(name).ok_or_else(|| Error::Model {
                reason: format!("no trained `{name}` to export"),
            })
        };
        let kernel = head_param(HEAD_KERNEL)?;
        let bias = head_param(HEAD_BIAS)?;
        let [d, units] = kernel.shape[..] else {
            return Err(Error::Model {
                reason: format!(
                    "{HEAD_KERNEL} has shape {:?}, expected [features, units]",
                    kernel.shape
                ),
            });
        };
        if kernel.data.len() != d * units || bias.data.len() != units {
            return Err(Error::Model {
                reason: format!(
                    "the head has {} kernel values for shape {:?} and {} biases for {units} units",
                    kernel.data.len(),
                    kernel.shape,
                    bias.data.len()
                ),
            });
        }
        let (rows, b) = if units == 1 && classes == 2 {
            let mut rows = vec![0f32; d];
            rows.extend_from_slice(&kernel.data);
            (rows, vec![0.0, bias.data[0]])
        } else if units == classes {
            let mut rows = Vec::with_capacity(classes * d);
            for c in 0..classes {
                rows.extend((0..d).map(|i| kernel.data[i * units + c]));
            }
            (rows, bias.data.clone())
        } else {
            return Err(Error::Model {
                reason: format!("the head has {units} units for {classes} classes"),
            });
        };
        Ok(SoftmaxHead {
            rows,
            bias: b,
            classes,
            features: d,
        })
    }

    /// `graph` with `features → Flatten → Gemm → Softmax → probabilities` as its only output.
    fn append_to(&self, graph: GraphProto, features: &str) -> Result<GraphProto> {
        if !graph
            .node
            .iter()
            .any(|n| n.output.iter().any(|o| o == features))
        {
            return Err(Error::Model {
                reason: format!("no node of the backbone produces the feature output `{features}`"),
            });
        }
        let mut g = GraphBuilder::from_graph(graph);
        g.graph_mut().output.clear();
        let kc = self.classes as i64;
        let w = g.constant_f32("head/weights", &[kc, self.features as i64], &self.rows);
        let bb = g.constant_f32("head/bias", &[kc], &self.bias);
        let flat = g.op(
            "Flatten",
            &[features],
            vec![attr::int("axis", 1)],
            "head/features",
        );
        let logits = g.op(
            "Gemm",
            &[&flat, &w, &bb],
            vec![attr::int("transB", 1)],
            "head/logits",
        );
        let probs = g.unique(xfer_head::PROBABILITIES_OUTPUT);
        if probs != xfer_head::PROBABILITIES_OUTPUT {
            return Err(Error::Model {
                reason: format!(
                    "the backbone already uses the name `{}`",
                    xfer_head::PROBABILITIES_OUTPUT
                ),
            });
        }
        g.node_named("Softmax", &[&logits], &[&probs], vec![attr::int("axis", 1)]);
        g.output(&probs, &[Dim::from("batch"), Dim::Fixed(kc)]);
        Ok(g.build())
    }
}

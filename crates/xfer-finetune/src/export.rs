//! The fine-tuned model as one ONNX graph: backbone (trained parameters,
//! BatchNorm folded into the convolutions) + Dense head + softmax, pixels →
//! `probabilities`, with the metadata `xfer evaluate` / `xfer predict` read.

use std::collections::{BTreeMap, HashMap};

use xfer_autodiff::Parameter;
use xfer_onnx::{Dim, GraphBuilder, ModelProto, TensorProto, attr};

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

/// Folds every `Conv → BatchNormalization` pair (the Conv output used only by the
/// BatchNormalization) into the Conv: `W' = W·γ/√(σ²+ε)`, `b' = (b − μ)·γ/√(σ²+ε) + β`.
/// Returns how many were folded; BatchNormalization nodes that follow anything else stay.
pub fn fold_batch_norms(model: &mut ModelProto) -> Result<usize> {
    let graph = model.graph.as_mut().ok_or_else(|| Error::Model {
        reason: "the model has no graph".to_owned(),
    })?;
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *uses.entry(o.name.clone()).or_default() += 1;
    }
    let producer: HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let inits: HashMap<String, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect();
    let mut removed = vec![false; graph.node.len()];
    let mut new_inits: Vec<TensorProto> = Vec::new();
    let mut folded = 0usize;
    let bn_indices: Vec<usize> = (0..graph.node.len()).collect();
    for bn_index in bn_indices {
        let bn = &graph.node[bn_index];
        if bn.op_type != "BatchNormalization" || bn.output.len() != 1 || bn.input.len() != 5 {
            continue;
        }
        let Some(&conv_index) = producer.get(&bn.input[0]) else {
            continue;
        };
        let conv = &graph.node[conv_index];
        if conv.op_type != "Conv"
            || uses.get(&bn.input[0]).copied() != Some(1)
            || conv.input.len() < 2
        {
            continue;
        }
        let get = |name: &str| -> Option<Vec<f32>> {
            inits
                .get(name)
                .and_then(|&i| graph.initializer[i].to_f32().ok())
        };
        let (Some(w), Some(gamma), Some(beta), Some(mean), Some(var)) = (
            get(&conv.input[1]),
            get(&bn.input[1]),
            get(&bn.input[2]),
            get(&bn.input[3]),
            get(&bn.input[4]),
        ) else {
            continue;
        };
        let w_dims = graph.initializer[inits[&conv.input[1]]].dims.clone();
        let out_channels = w_dims.first().copied().unwrap_or(0).max(0) as usize;
        if out_channels == 0 || gamma.len() != out_channels || w.len() % out_channels != 0 {
            continue;
        }
        let bias = match conv.input.get(2).filter(|s| !s.is_empty()) {
            Some(b) => match get(b) {
                Some(v) if v.len() == out_channels => v,
                _ => continue,
            },
            None => vec![0.0; out_channels],
        };
        let epsilon = f64::from(bn.attr_float("epsilon", 1e-5));
        let per = w.len() / out_channels;
        let mut w2 = w;
        let mut b2 = vec![0f32; out_channels];
        for c in 0..out_channels {
            let scale = f64::from(gamma[c]) / (f64::from(var[c]) + epsilon).sqrt();
            for v in &mut w2[c * per..(c + 1) * per] {
                *v = (f64::from(*v) * scale) as f32;
            }
            b2[c] = ((f64::from(bias[c]) - f64::from(mean[c])) * scale + f64::from(beta[c])) as f32;
        }
        let w_name = format!("{}.folded_kernel", conv.input[1]);
        let b_name = format!("{}.folded_bias", conv.input[1]);
        new_inits.push(TensorProto::from_f32(w_name.clone(), &w_dims, &w2));
        new_inits.push(TensorProto::from_f32(
            b_name.clone(),
            &[out_channels as i64],
            &b2,
        ));
        let bn_out = bn.output[0].clone();
        let conv = &mut graph.node[conv_index];
        conv.input = vec![conv.input[0].clone(), w_name, b_name];
        conv.output = vec![bn_out];
        removed[bn_index] = true;
        folded += 1;
    }
    let mut index = 0;
    graph.node.retain(|_| {
        let keep = !removed[index];
        index += 1;
        keep
    });
    graph.initializer.extend(new_inits);
    // Drop initializers nothing reads any more (the unfolded kernels, BatchNorm vars).
    let used: std::collections::HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .collect();
    let dropped: std::collections::HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| !used.contains(&t.name))
        .map(|t| t.name.clone())
        .collect();
    graph.initializer.retain(|t| !dropped.contains(&t.name));
    graph.input.retain(|v| !dropped.contains(&v.name));
    Ok(folded)
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
    fold_batch_norms(&mut model)?;
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
    let k = info.classes.len();
    let (rows, b): (Vec<f32>, Vec<f32>) = if units == 1 && k == 2 {
        let mut rows = vec![0f32; d];
        rows.extend((0..d).map(|i| kernel.data[i]));
        (rows, vec![0.0, bias.data[0]])
    } else if units == k {
        let mut rows = Vec::with_capacity(k * d);
        for c in 0..k {
            rows.extend((0..d).map(|i| kernel.data[i * units + c]));
        }
        (rows, bias.data.clone())
    } else {
        return Err(Error::Model {
            reason: format!("the head has {units} units for {k} classes"),
        });
    };
    let graph = model.graph.take().ok_or_else(|| Error::Model {
        reason: "the backbone model has no graph".to_owned(),
    })?;
    if !graph.node.iter().any(|n| n.output.contains(&info.features)) {
        return Err(Error::Model {
            reason: format!(
                "no node of the backbone produces the feature output `{}`",
                info.features
            ),
        });
    }
    let mut g = GraphBuilder::from_graph(graph);
    g.graph_mut().output.clear();
    let kc = k as i64;
    let w = g.constant_f32("head/weights", &[kc, d as i64], &rows);
    let bb = g.constant_f32("head/bias", &[kc], &b);
    let flat = g.op(
        "Flatten",
        &[&info.features],
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
    let mut out = ModelProto::with_graph(g.build(), model.opset().max(13));
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

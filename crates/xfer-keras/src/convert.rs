//! Walking a Keras functional graph and emitting ONNX nodes.

use std::collections::{HashMap, HashSet};

use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use xfer_onnx::fold::{self, FloatInitializers, FloatTensor};
use xfer_onnx::{AttributeProto, Dim, GraphBuilder, ModelProto, NodeProto, attr};

use crate::graph::{Functional, Layer, TensorRef};
use crate::{Error, KerasModel, Result};

/// Which part of the Keras model to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Part {
    /// The base only: the nested model (e.g. Xception), globally average-pooled into `features`.
    #[default]
    Base,
    /// The whole model: `features` and the head's `probabilities`.
    WithHead,
}

/// Preprocessing put in front of the graph: `x * scale + offset` on 0..255 pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocessing {
    /// Multiplier.
    pub scale: f32,
    /// Added after scaling.
    pub offset: f32,
    /// In words, for the manifest (`x/127.5 - 1`).
    pub description: String,
}

impl Preprocessing {
    /// Xception / Inception / MobileNet (`keras.applications` "tf" mode): `x/127.5 - 1`.
    pub fn tf() -> Self {
        Preprocessing {
            scale: 1.0 / 127.5,
            offset: -1.0,
            description: "x/127.5 - 1".to_owned(),
        }
    }

    /// No preprocessing (the Keras model takes 0..255 itself).
    pub fn none() -> Self {
        Preprocessing {
            scale: 1.0,
            offset: 0.0,
            description: "none".to_owned(),
        }
    }

    fn is_identity(&self) -> bool {
        self.scale == 1.0 && self.offset == 0.0
    }
}

/// How to convert.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    /// Base only or with the head.
    pub part: Part,
    /// Fold BatchNorm (and the preprocessing) into convolutions: the inference graph.
    /// Off: BatchNorm stays an ONNX `BatchNormalization` op with the Keras variables (the training graph).
    pub fold_batch_norm: bool,
    /// Preprocessing inside the graph.
    pub preprocessing: Preprocessing,
    /// Name of the pixel input.
    pub input_name: String,
    /// Name of the pooled feature output.
    pub features_name: String,
    /// Name of the classifier output (with the head).
    pub probabilities_name: String,
    /// Globally average-pool a 4-d base output into `[N, C]` `features` (on by default).
    /// Off: `features` is the NCHW feature map itself.
    pub pool_features: bool,
}

impl Default for ConvertOptions {
    fn default() -> Self {
        ConvertOptions {
            part: Part::Base,
            fold_batch_norm: true,
            preprocessing: Preprocessing::tf(),
            input_name: "pixels".to_owned(),
            features_name: "features".to_owned(),
            probabilities_name: "probabilities".to_owned(),
            pool_features: true,
        }
    }
}

/// The result of [`convert`].
#[derive(Debug, Clone)]
pub struct Converted {
    /// The ONNX model.
    pub model: ModelProto,
    /// Name of the converted base model (`xception`).
    pub base_name: String,
    /// Length of the `features` vector.
    pub feature_dim: usize,
    /// Number of classes of `probabilities` (with the head).
    pub num_classes: Option<usize>,
    /// Number of Keras variables' elements converted (Xception base: 20,861,480).
    pub parameter_count: usize,
    /// Input channels (3 for RGB).
    pub input_channels: usize,
    /// Input size `[h, w]` the Keras model was built for, if fixed.
    pub input_size: Option<[usize; 2]>,
}

/// A value in the graph being built.
#[derive(Debug, Clone)]
struct Val {
    name: String,
    /// 4 for NCHW images, 2 for `[N, C]`.
    rank: usize,
    /// Channels (last Keras axis), when known.
    channels: Option<usize>,
}

/// Converts a Keras model to ONNX.
pub fn convert(model: &KerasModel, options: &ConvertOptions) -> Result<Converted> {
    let top = Functional::parse(&model.config, "")?;
    let base = Base::of(&top);
    let (channels, input_size) = input_shape(base.functional)?;
    let mut em = Emitter::new(model, options);
    let pixels = Val {
        name: options.input_name.clone(),
        rank: 4,
        channels: Some(channels),
    };
    let x = em.preprocess(&pixels)?;
    let (features, probabilities) = match options.part {
        Part::Base => (em.base_features(&base, x)?, None),
        Part::WithHead => {
            let (features, probabilities) = em.features_and_probabilities(&top, &base, x)?;
            (features, Some(probabilities))
        }
    };
    let feature_dim = features
        .channels
        .ok_or_else(|| Error::Graph("the feature dimension is unknown".to_owned()))?;
    let num_classes = probabilities.as_ref().and_then(|p| p.channels);
    let outputs = graph_outputs(&features, probabilities.as_ref(), options);
    let parameter_count = em.params;
    let (nodes, inits) = em.finish(&outputs)?;
    let onnx = assemble(&base.name, channels, nodes, inits, &outputs, options);
    Ok(Converted {
        model: onnx,
        base_name: base.name,
        feature_dim,
        num_classes,
        parameter_count,
        input_channels: channels,
        input_size,
    })
}

/// The base model: the first nested model of the top model, else the top model itself.
struct Base<'f> {
    /// The layer of the top model holding it (`None`: the top model is the base).
    layer: Option<&'f Layer>,
    functional: &'f Functional,
    name: String,
}

impl<'f> Base<'f> {
    fn of(top: &'f Functional) -> Self {
        let layer = top.layers.iter().find(|l| l.nested.is_some());
        let functional = layer.and_then(|l| l.nested.as_deref()).unwrap_or(top);
        Base {
            layer,
            functional,
            name: functional.name.clone(),
        }
    }
}

/// A graph output: the value computing it, its public name and its dims.
struct GraphOutput {
    value: String,
    name: String,
    dims: Vec<Dim>,
}

/// `features` (`[N, D]`, or `[N, D, H_out, W_out]` unpooled) and, with the head, `probabilities`.
fn graph_outputs(
    features: &Val,
    probabilities: Option<&Val>,
    options: &ConvertOptions,
) -> Vec<GraphOutput> {
    let d = Dim::Fixed(features.channels.unwrap_or(0) as i64);
    let dims = if features.rank == 4 {
        vec![Dim::from("N"), d, Dim::from("H_out"), Dim::from("W_out")]
    } else {
        vec![Dim::from("N"), d]
    };
    let mut outputs = vec![GraphOutput {
        value: features.name.clone(),
        name: options.features_name.clone(),
        dims,
    }];
    if let Some((p, k)) = probabilities.and_then(|p| Some((p, p.channels?))) {
        outputs.push(GraphOutput {
            value: p.name.clone(),
            name: options.probabilities_name.clone(),
            dims: vec![Dim::from("N"), Dim::Fixed(k as i64)],
        });
    }
    outputs
}

/// The model: pixel input, the initializers the nodes read, the nodes, the outputs and
/// the conversion metadata.
fn assemble(
    name: &str,
    channels: usize,
    nodes: Vec<NodeProto>,
    inits: FloatInitializers,
    outputs: &[GraphOutput],
    options: &ConvertOptions,
) -> ModelProto {
    let mut gb = GraphBuilder::new(name);
    gb.input(
        &options.input_name,
        &[
            Dim::from("N"),
            Dim::Fixed(channels as i64),
            Dim::from("H"),
            Dim::from("W"),
        ],
    );
    for t in fold::referenced_initializers(&nodes, inits, Vec::new()) {
        gb.initializer(t);
    }
    gb.graph_mut().node = nodes;
    for o in outputs {
        gb.output(&o.name, &o.dims);
    }
    let mut onnx = gb.build_model();
    onnx.set_metadata("source_format", "keras3");
    onnx.set_metadata("preprocessing", &options.preprocessing.description);
    onnx.set_metadata(
        "batch_norm",
        if options.fold_batch_norm {
            "folded"
        } else {
            "kept"
        },
    );
    onnx
}

fn single(mut outs: Vec<Val>, model: &str) -> Result<Val> {
    if outs.len() != 1 {
        return Err(Error::Config(format!(
            "model `{model}` has {} outputs; xfer converts single-output models",
            outs.len()
        )));
    }
    outs.pop()
        .ok_or_else(|| Error::Config(format!("model `{model}` has no output")))
}

/// Channels and (fixed) size of the first InputLayer of a model.
fn input_shape(f: &Functional) -> Result<(usize, Option<[usize; 2]>)> {
    let input = f
        .inputs
        .first()
        .and_then(|r| f.layers.iter().find(|l| l.name == r.layer))
        .ok_or_else(|| {
            Error::Config(format!(
                "model `{}`: its input layer is not among its layers",
                f.name
            ))
        })?;
    let shape = input
        .config
        .get("batch_shape")
        .or_else(|| input.config.get("batch_input_shape"))
        .and_then(Value::as_array)
        .ok_or_else(|| Error::Config(format!("input layer `{}` has no batch_shape", input.name)))?;
    if shape.len() != 4 {
        return Err(Error::Config(format!(
            "input layer `{}` has shape {:?}; xfer converts image models with [batch, height, width, channels] inputs",
            input.name, shape
        )));
    }
    let channels = shape[3].as_u64().ok_or_else(|| {
        Error::Config(format!(
            "input layer `{}` must have a fixed channel count (shape {:?})",
            input.name, shape
        ))
    })? as usize;
    let size = match (shape[1].as_u64(), shape[2].as_u64()) {
        (Some(h), Some(w)) => Some([h as usize, w as usize]),
        _ => None,
    };
    Ok((channels, size))
}

/// Renames a value everywhere it appears.
fn rename_value(nodes: &mut Vec<NodeProto>, old: &str, new: &str) -> Result<()> {
    if old == new {
        return Ok(());
    }
    if nodes
        .iter()
        .any(|n| n.output.iter().any(|o| o == new) || n.input.iter().any(|i| i == new))
    {
        return Err(Error::Graph(format!(
            "cannot name an output `{new}`: a value of that name exists"
        )));
    }
    if !nodes.iter().any(|n| n.output.iter().any(|o| o == old)) {
        // The value is a graph input (e.g. the model is only Dropout): copy it out.
        nodes.push(NodeProto {
            input: vec![old.to_owned()],
            output: vec![new.to_owned()],
            name: new.to_owned(),
            op_type: "Identity".to_owned(),
            ..Default::default()
        });
        return Ok(());
    }
    for n in nodes.iter_mut() {
        for v in n.input.iter_mut().chain(n.output.iter_mut()) {
            if v == old {
                *v = new.to_owned();
            }
        }
    }
    Ok(())
}

/// Kernel size, strides, dilations and group count of a convolution.
#[derive(Debug, Clone, Copy)]
struct ConvGeometry {
    kernel: [usize; 2],
    strides: [usize; 2],
    dilations: [usize; 2],
    group: usize,
}

struct Emitter<'a> {
    model: &'a KerasModel,
    options: &'a ConvertOptions,
    nodes: Vec<NodeProto>,
    inits: FloatInitializers,
    used: HashSet<String>,
    params: usize,
}

fn cfg_usize_pair(layer: &Layer, key: &str, default: Option<[usize; 2]>) -> Result<[usize; 2]> {
    let v = layer.config.get(key);
    let bad = || Error::Layer {
        layer: layer.name.clone(),
        class: layer.class.clone(),
        reason: format!("config `{key}` must be an integer or a pair of integers, found {v:?}"),
    };
    match v {
        None | Some(Value::Null) => default.ok_or_else(bad),
        Some(Value::Number(n)) => {
            let n = n.as_u64().ok_or_else(bad)? as usize;
            Ok([n, n])
        }
        Some(Value::Array(a)) if a.len() == 2 => {
            let h = a[0].as_u64().ok_or_else(bad)? as usize;
            let w = a[1].as_u64().ok_or_else(bad)? as usize;
            Ok([h, w])
        }
        _ => Err(bad()),
    }
}

fn cfg_str<'v>(layer: &'v Layer, key: &str, default: &'v str) -> &'v str {
    layer
        .config
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or(default)
}

fn cfg_bool(layer: &Layer, key: &str, default: bool) -> bool {
    layer
        .config
        .get(key)
        .and_then(Value::as_bool)
        .unwrap_or(default)
}

fn layer_err(layer: &Layer, reason: impl Into<String>) -> Error {
    Error::Layer {
        layer: layer.name.clone(),
        class: layer.class.clone(),
        reason: reason.into(),
    }
}

impl<'a> Emitter<'a> {
    fn new(model: &'a KerasModel, options: &'a ConvertOptions) -> Self {
        let mut em = Emitter {
            model,
            options,
            nodes: Vec::new(),
            inits: FloatInitializers::new(),
            used: HashSet::new(),
            params: 0,
        };
        em.used.insert(options.input_name.clone());
        em
    }

    /// The base model's output on `x`, globally average-pooled unless
    /// [`ConvertOptions::pool_features`] is off.
    fn base_features(&mut self, base: &Base<'_>, x: Val) -> Result<Val> {
        let out = self.functional(base.functional, std::slice::from_ref(&x))?;
        let out = single(out, &base.name)?;
        if self.options.pool_features {
            self.pool_if_needed(out, &base.name)
        } else {
            Ok(out)
        }
    }

    /// The whole model on `x`: the features (the tapped base output, pooled) and the
    /// head's probabilities.
    fn features_and_probabilities(
        &mut self,
        top: &Functional,
        base: &Base<'_>,
        x: Val,
    ) -> Result<(Val, Val)> {
        let mut taps = HashMap::new();
        let outputs = self.functional_tapped(
            top,
            std::slice::from_ref(&x),
            base.layer.map(|l| l.name.as_str()),
            &mut taps,
        )?;
        let out = single(outputs, &top.name)?;
        if out.rank != 2 {
            return Err(Error::Config(format!(
                "the head of `{}` ends in a {}-d tensor; a classifier head ends in [N, classes]",
                top.name, out.rank
            )));
        }
        let features = match taps.remove("features") {
            Some(f) => f,
            None => match taps.remove("base") {
                Some(b) => self.pool_if_needed(b, &base.name)?,
                None => {
                    return Err(Error::Config(format!(
                        "model `{}` has no nested base model to take features from",
                        top.name
                    )));
                }
            },
        };
        Ok((features, self.probabilities(out)?))
    }

    /// The nodes and initializers, outputs renamed to their public names and, with
    /// [`ConvertOptions::fold_batch_norm`], BatchNorm and preprocessing folded.
    fn finish(self, outputs: &[GraphOutput]) -> Result<(Vec<NodeProto>, FloatInitializers)> {
        let Emitter {
            mut nodes,
            mut inits,
            options,
            ..
        } = self;
        for o in outputs {
            rename_value(&mut nodes, &o.value, &o.name)?;
        }
        if options.fold_batch_norm {
            let names: Vec<String> = outputs.iter().map(|o| o.name.clone()).collect();
            crate::fold::fold_nodes(&mut nodes, &mut inits, &names, &options.input_name)?;
        }
        Ok((nodes, inits))
    }

    fn fresh(&mut self, hint: &str) -> String {
        if self.used.insert(hint.to_owned()) {
            return hint.to_owned();
        }
        let mut i = 1;
        loop {
            let name = format!("{hint}_{i}");
            if self.used.insert(name.clone()) {
                return name;
            }
            i += 1;
        }
    }

    fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<AttributeProto>,
        hint: &str,
    ) -> String {
        let out = self.fresh(hint);
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_owned(),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn init(&mut self, hint: &str, array: ArrayD<f32>) -> String {
        let name = self.fresh(hint);
        let dims = array.shape().iter().map(|&d| d as i64).collect();
        let data = array.iter().copied().collect();
        self.inits
            .insert(name.clone(), FloatTensor::new(dims, data));
        name
    }

    fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.init(hint, ArrayD::from_elem(IxDyn(&[]), v))
    }

    /// The Keras variables of a layer, checked for count.
    fn vars(&mut self, layer: &Layer, want: usize) -> Result<Vec<ArrayD<f32>>> {
        let vars = self.model.vars(&layer.weight_group);
        if vars.len() < want {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "expected {want} variables at `{}/vars/0..{}`, found {} (the config and the weights file do not match)",
                    layer.weight_group,
                    want - 1,
                    vars.len()
                ),
            });
        }
        let vars: Vec<ArrayD<f32>> = vars.into_iter().take(want).cloned().collect();
        self.params += vars.iter().map(|v| v.len()).sum::<usize>();
        Ok(vars)
    }

    fn preprocess(&mut self, x: &Val) -> Result<Val> {
        let p = self.options.preprocessing.clone();
        if p.is_identity() {
            return Ok(x.clone());
        }
        let scale = self.scalar("preprocess.scale", p.scale);
        let offset = self.scalar("preprocess.offset", p.offset);
        let scaled = self.node("Mul", &[&x.name, &scale], vec![], "preprocess/scaled");
        let out = self.node("Add", &[&scaled, &offset], vec![], "preprocess");
        Ok(Val {
            name: out,
            ..x.clone()
        })
    }

    /// Global average pooling of a 4-d value (identity for a 2-d one).
    fn pool_if_needed(&mut self, x: Val, model: &str) -> Result<Val> {
        match x.rank {
            2 => Ok(x),
            4 => {
                let out = self.node(
                    "ReduceMean",
                    &[&x.name],
                    vec![attr::ints("axes", &[2, 3]), attr::int("keepdims", 0)],
                    &format!("{model}/global_average_pool"),
                );
                Ok(Val {
                    name: out,
                    rank: 2,
                    channels: x.channels,
                })
            }
            r => Err(Error::Config(format!(
                "the output of `{model}` has rank {r}; expected 2 or 4"
            ))),
        }
    }

    fn probabilities(&mut self, logits: Val) -> Result<Val> {
        let produced_by = self
            .nodes
            .iter()
            .find(|n| n.output.first() == Some(&logits.name));
        if produced_by.is_some_and(|n| n.op_type == "Softmax" || n.op_type == "Sigmoid") {
            return Ok(logits);
        }
        let k = logits.channels.unwrap_or(0);
        let out = if k == 1 {
            self.node("Sigmoid", &[&logits.name], vec![], "probabilities")
        } else {
            self.node(
                "Softmax",
                &[&logits.name],
                vec![attr::int("axis", -1)],
                "probabilities",
            )
        };
        Ok(Val {
            name: out,
            ..logits
        })
    }

    fn functional(&mut self, f: &Functional, inputs: &[Val]) -> Result<Vec<Val>> {
        let mut taps = HashMap::new();
        self.functional_tapped(f, inputs, None, &mut taps)
    }

    /// Emits a functional model; with `base` (the nested base layer's name), records
    /// `taps["base"]` (its output) and `taps["features"]` (a global pooling applied to it).
    fn functional_tapped(
        &mut self,
        f: &Functional,
        inputs: &[Val],
        base: Option<&str>,
        taps: &mut HashMap<&'static str, Val>,
    ) -> Result<Vec<Val>> {
        if inputs.len() != f.inputs.len() {
            return Err(Error::Config(format!(
                "model `{}` takes {} inputs, called with {}",
                f.name,
                f.inputs.len(),
                inputs.len()
            )));
        }
        let mut values: HashMap<TensorRef, Val> = HashMap::new();
        for (r, v) in f.inputs.iter().zip(inputs) {
            values.insert(r.clone(), v.clone());
        }
        for layer in &f.layers {
            if layer.class == "InputLayer" {
                continue;
            }
            for (node_index, call) in layer.calls.iter().enumerate() {
                let args = call
                    .iter()
                    .map(|r| {
                        values.get(r).cloned().ok_or_else(|| {
                            layer_err(
                                layer,
                                format!(
                                    "its input {}[{}][{}] is not computed before it (is the model config in layer order?)",
                                    r.layer, r.node, r.index
                                ),
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let hint = if layer.calls.len() > 1 {
                    format!("{}:{node_index}", layer.name)
                } else {
                    layer.name.clone()
                };
                let outs = self.layer(layer, &args, &hint)?;
                if let (Some(o), true) = (outs.first(), base == Some(layer.name.as_str())) {
                    taps.insert("base", o.clone());
                }
                let pools_base = layer.class == "GlobalAveragePooling2D"
                    && base.is_some()
                    && call.first().is_some_and(|r| Some(r.layer.as_str()) == base);
                if let (Some(o), true) = (outs.first(), pools_base) {
                    taps.insert("features", o.clone());
                }
                for (index, o) in outs.into_iter().enumerate() {
                    values.insert(
                        TensorRef {
                            layer: layer.name.clone(),
                            node: node_index,
                            index,
                        },
                        o,
                    );
                }
            }
        }
        f.outputs
            .iter()
            .map(|r| {
                values.get(r).cloned().ok_or_else(|| {
                    Error::Config(format!(
                        "output {}[{}][{}] of model `{}` is never computed",
                        r.layer, r.node, r.index, f.name
                    ))
                })
            })
            .collect()
    }

    fn one<'v>(&self, layer: &Layer, args: &'v [Val]) -> Result<&'v Val> {
        match args {
            [x] => Ok(x),
            _ => Err(layer_err(
                layer,
                format!("expected one input, found {}", args.len()),
            )),
        }
    }

    fn image<'v>(&self, layer: &Layer, args: &'v [Val]) -> Result<&'v Val> {
        let x = self.one(layer, args)?;
        if x.rank != 4 {
            return Err(layer_err(
                layer,
                format!("expected a 4-d image tensor, found rank {}", x.rank),
            ));
        }
        if cfg_str(layer, "data_format", "channels_last") != "channels_last" {
            return Err(layer_err(
                layer,
                "only data_format channels_last is supported",
            ));
        }
        Ok(x)
    }

    fn layer(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Vec<Val>> {
        let out = match layer.class.as_str() {
            "Functional" | "Sequential" | "Model" => {
                let nested = layer
                    .nested
                    .as_deref()
                    .ok_or_else(|| layer_err(layer, "nested model without layers"))?;
                return self.functional(nested, args);
            }
            "Conv2D" => self.conv2d(layer, args, hint)?,
            "DepthwiseConv2D" => self.depthwise_conv2d(layer, args, hint)?,
            "SeparableConv2D" => self.separable_conv2d(layer, args, hint)?,
            "BatchNormalization" => self.batch_norm(layer, args, hint)?,
            "Activation" => {
                let x = self.one(layer, args)?.clone();
                let act = cfg_str(layer, "activation", "linear").to_owned();
                self.activation(layer, &act, x, hint)?
            }
            "ReLU" => self.relu_layer(layer, args, hint)?,
            "MaxPooling2D" | "AveragePooling2D" => self.pool(layer, args, hint)?,
            "GlobalAveragePooling2D" | "GlobalMaxPooling2D" => {
                self.global_pool(layer, args, hint)?
            }
            "Add" => self.add(layer, args, hint)?,
            "Dense" => self.dense(layer, args, hint)?,
            "Dropout"
            | "SpatialDropout2D"
            | "GaussianNoise"
            | "GaussianDropout"
            | "ActivityRegularization" => {
                let x = self.one(layer, args)?.clone();
                // Identity at inference: reuse the input value.
                x
            }
            "Rescaling" => self.rescaling(layer, args, hint)?,
            other => {
                return Err(layer_err(
                    layer,
                    format!(
                        "layer class `{other}` is not supported (supported: Conv2D, SeparableConv2D, DepthwiseConv2D, BatchNormalization, Activation, ReLU, MaxPooling2D, AveragePooling2D, Add, GlobalAveragePooling2D, GlobalMaxPooling2D, Dense, Dropout, Rescaling, InputLayer, nested Functional/Sequential)"
                    ),
                ));
            }
        };
        Ok(vec![out])
    }

    fn global_pool(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.image(layer, args)?.clone();
        let keepdims = cfg_bool(layer, "keepdims", false);
        let op = if layer.class == "GlobalAveragePooling2D" {
            "ReduceMean"
        } else {
            "ReduceMax"
        };
        let out = self.node(
            op,
            &[&x.name],
            vec![
                attr::ints("axes", &[2, 3]),
                attr::int("keepdims", i64::from(keepdims)),
            ],
            hint,
        );
        Ok(Val {
            name: out,
            rank: if keepdims { 4 } else { 2 },
            channels: x.channels,
        })
    }

    fn add(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let [first, _, ..] = args else {
            return Err(layer_err(
                layer,
                format!("expected at least 2 inputs, found {}", args.len()),
            ));
        };
        let names: Vec<&str> = args.iter().map(|a| a.name.as_str()).collect();
        let op = if args.len() == 2 { "Add" } else { "Sum" };
        let out = self.node(op, &names, vec![], hint);
        Ok(Val {
            name: out,
            rank: first.rank,
            channels: args.iter().find_map(|a| a.channels),
        })
    }

    fn activation(&mut self, layer: &Layer, act: &str, x: Val, hint: &str) -> Result<Val> {
        let name = match act {
            "linear" | "identity" => return Ok(x),
            "relu" => self.node("Relu", &[&x.name], vec![], hint),
            "sigmoid" => self.node("Sigmoid", &[&x.name], vec![], hint),
            "tanh" => self.node("Tanh", &[&x.name], vec![], hint),
            "elu" => self.node("Elu", &[&x.name], vec![attr::float("alpha", 1.0)], hint),
            "selu" => self.node("Selu", &[&x.name], vec![], hint),
            "softplus" => self.node("Softplus", &[&x.name], vec![], hint),
            "relu6" => {
                let lo = self.scalar(&format!("{hint}.min"), 0.0);
                let hi = self.scalar(&format!("{hint}.max"), 6.0);
                self.node("Clip", &[&x.name, &lo, &hi], vec![], hint)
            }
            "leaky_relu" => self.node(
                "LeakyRelu",
                &[&x.name],
                vec![attr::float("alpha", 0.2)],
                hint,
            ),
            "swish" | "silu" => {
                let s = self.node("Sigmoid", &[&x.name], vec![], &format!("{hint}/sigmoid"));
                self.node("Mul", &[&x.name, &s], vec![], hint)
            }
            "softmax" => {
                let axis = if x.rank == 4 { 1 } else { -1 };
                self.node("Softmax", &[&x.name], vec![attr::int("axis", axis)], hint)
            }
            other => {
                return Err(layer_err(
                    layer,
                    format!("activation `{other}` is not supported"),
                ));
            }
        };
        Ok(Val { name, ..x })
    }

    fn relu_layer(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.one(layer, args)?.clone();
        let num = |k: &str| layer.config.get(k).and_then(Value::as_f64);
        let max_value = num("max_value");
        let slope = num("negative_slope").unwrap_or(0.0);
        let threshold = num("threshold").unwrap_or(0.0);
        if threshold != 0.0 {
            return Err(layer_err(layer, "ReLU with a threshold is not supported"));
        }
        let name = match (max_value, slope) {
            (None, 0.0) => self.node("Relu", &[&x.name], vec![], hint),
            (None, s) => self.node(
                "LeakyRelu",
                &[&x.name],
                vec![attr::float("alpha", s as f32)],
                hint,
            ),
            (Some(m), 0.0) => {
                let lo = self.scalar(&format!("{}.min", layer.name), 0.0);
                let hi = self.scalar(&format!("{}.max", layer.name), m as f32);
                self.node("Clip", &[&x.name, &lo, &hi], vec![], hint)
            }
            _ => {
                return Err(layer_err(
                    layer,
                    "ReLU with both max_value and negative_slope is not supported",
                ));
            }
        };
        Ok(Val { name, ..x })
    }

    /// Padding attributes for a conv or pool: 'valid' → zero pads; 'same' → explicit pads at stride 1, SAME_UPPER otherwise.
    fn padding_attrs(
        layer: &Layer,
        kernel: [usize; 2],
        strides: [usize; 2],
        dilations: [usize; 2],
    ) -> Result<Vec<AttributeProto>> {
        match cfg_str(layer, "padding", "valid") {
            "valid" => Ok(vec![attr::ints("pads", &[0, 0, 0, 0])]),
            "same" if strides == [1, 1] => {
                let total = |i: usize| ((kernel[i] - 1) * dilations[i]) as i64;
                let (th, tw) = (total(0), total(1));
                Ok(vec![attr::ints(
                    "pads",
                    &[th / 2, tw / 2, th - th / 2, tw - tw / 2],
                )])
            }
            "same" => Ok(vec![attr::string("auto_pad", "SAME_UPPER")]),
            other => Err(layer_err(
                layer,
                format!("padding `{other}` is not supported"),
            )),
        }
    }

    fn conv_node(
        &mut self,
        layer: &Layer,
        x: &str,
        weight: &str,
        bias: Option<&str>,
        geometry: ConvGeometry,
        hint: &str,
    ) -> Result<String> {
        let ConvGeometry {
            kernel,
            strides,
            dilations,
            group,
        } = geometry;
        if kernel.contains(&0) || strides.contains(&0) || dilations.contains(&0) {
            return Err(layer_err(
                layer,
                "kernel size, strides and dilation must be positive",
            ));
        }
        if strides != [1, 1] && dilations != [1, 1] {
            return Err(layer_err(
                layer,
                "strides > 1 together with dilation > 1 is not supported (Keras forbids it too)",
            ));
        }
        let mut attrs = vec![
            attr::ints("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
            attr::ints("strides", &[strides[0] as i64, strides[1] as i64]),
            attr::ints("dilations", &[dilations[0] as i64, dilations[1] as i64]),
            attr::int("group", group as i64),
        ];
        attrs.extend(Self::padding_attrs(layer, kernel, strides, dilations)?);
        let mut inputs = vec![x, weight];
        if let Some(b) = bias {
            inputs.push(b);
        }
        Ok(self.node("Conv", &inputs, attrs, hint))
    }

    fn conv_params(layer: &Layer) -> Result<([usize; 2], [usize; 2], [usize; 2])> {
        let kernel = cfg_usize_pair(layer, "kernel_size", None)?;
        let strides = cfg_usize_pair(layer, "strides", Some([1, 1]))?;
        let dilations = cfg_usize_pair(layer, "dilation_rate", Some([1, 1]))?;
        Ok((kernel, strides, dilations))
    }

    fn check_shape(layer: &Layer, what: &str, array: &ArrayD<f32>, want: &[usize]) -> Result<()> {
        if array.shape() != want {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "`{what}` has shape {:?}, expected {:?}",
                    array.shape(),
                    want
                ),
            });
        }
        Ok(())
    }

    fn bias(&mut self, layer: &Layer, var: ArrayD<f32>, n: usize) -> Result<String> {
        Self::check_shape(layer, "bias", &var, &[n])?;
        Ok(self.init(&format!("{}.bias", layer.name), var))
    }

    fn conv2d(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.image(layer, args)?.clone();
        let (kernel, strides, dilations) = Self::conv_params(layer)?;
        let use_bias = cfg_bool(layer, "use_bias", true);
        let groups = layer
            .config
            .get("groups")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize;
        let mut vars = self.vars(layer, 1 + usize::from(use_bias))?.into_iter();
        let k = vars
            .next()
            .ok_or_else(|| layer_err(layer, "missing kernel"))?;
        if k.ndim() != 4 || k.shape()[0] != kernel[0] || k.shape()[1] != kernel[1] {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "kernel has shape {:?}, expected [{}, {}, in, out]",
                    k.shape(),
                    kernel[0],
                    kernel[1]
                ),
            });
        }
        let (cin_g, filters) = (k.shape()[2], k.shape()[3]);
        if let Some(c) = x.channels.filter(|&c| c != cin_g * groups) {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "kernel {:?} with groups {groups} does not fit {c} input channels",
                    k.shape()
                ),
            });
        }
        // HWIO -> OIHW
        let w = k
            .permuted_axes(IxDyn(&[3, 2, 0, 1]))
            .as_standard_layout()
            .to_owned();
        let w = self.init(&format!("{}.kernel", layer.name), w);
        let geometry = ConvGeometry {
            kernel,
            strides,
            dilations,
            group: groups,
        };
        self.conv_bias_activation(layer, &x.name, &w, vars.next(), filters, geometry, hint)
    }

    /// The Conv node of a Conv2D/DepthwiseConv2D layer with its optional bias variable and its
    /// `activation`; `out_channels` sizes the bias and the result.
    #[allow(clippy::too_many_arguments)]
    fn conv_bias_activation(
        &mut self,
        layer: &Layer,
        x: &str,
        weight: &str,
        bias: Option<ArrayD<f32>>,
        out_channels: usize,
        geometry: ConvGeometry,
        hint: &str,
    ) -> Result<Val> {
        let b = match bias {
            Some(v) => Some(self.bias(layer, v, out_channels)?),
            None => None,
        };
        let act = cfg_str(layer, "activation", "linear").to_owned();
        let conv_hint = if act == "linear" {
            hint.to_owned()
        } else {
            format!("{hint}/conv")
        };
        let y = self.conv_node(layer, x, weight, b.as_deref(), geometry, &conv_hint)?;
        let y = Val {
            name: y,
            rank: 4,
            channels: Some(out_channels),
        };
        self.activation(layer, &act, y, hint)
    }

    /// A depthwise kernel (kh, kw, C, M) as an ONNX grouped-conv weight (C*M, 1, kh, kw).
    fn depthwise_weight(
        layer: &Layer,
        k: ArrayD<f32>,
        kernel: [usize; 2],
        channels: Option<usize>,
    ) -> Result<(ArrayD<f32>, usize, usize)> {
        if k.ndim() != 4 || k.shape()[0] != kernel[0] || k.shape()[1] != kernel[1] {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "depthwise kernel has shape {:?}, expected [{}, {}, channels, multiplier]",
                    k.shape(),
                    kernel[0],
                    kernel[1]
                ),
            });
        }
        let (c, m) = (k.shape()[2], k.shape()[3]);
        if channels.is_some_and(|ch| ch != c) {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "depthwise kernel {:?} does not fit {} input channels",
                    k.shape(),
                    channels.unwrap_or(0)
                ),
            });
        }
        // (kh, kw, C, M) -> (C, M, kh, kw) -> (C*M, 1, kh, kw): output channel c*M + m, as TensorFlow orders it.
        let w = k
            .permuted_axes(IxDyn(&[2, 3, 0, 1]))
            .as_standard_layout()
            .to_owned()
            .into_shape_with_order(IxDyn(&[c * m, 1, kernel[0], kernel[1]]))
            .map_err(|e| Error::Weights {
                layer: layer.name.clone(),
                reason: e.to_string(),
            })?;
        Ok((w, c, m))
    }

    fn depthwise_conv2d(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.image(layer, args)?.clone();
        let (kernel, strides, dilations) = Self::conv_params(layer)?;
        let use_bias = cfg_bool(layer, "use_bias", true);
        let mut vars = self.vars(layer, 1 + usize::from(use_bias))?.into_iter();
        let k = vars
            .next()
            .ok_or_else(|| layer_err(layer, "missing kernel"))?;
        let (w, c, m) = Self::depthwise_weight(layer, k, kernel, x.channels)?;
        let w = self.init(&format!("{}.kernel", layer.name), w);
        let geometry = ConvGeometry {
            kernel,
            strides,
            dilations,
            group: c,
        };
        self.conv_bias_activation(layer, &x.name, &w, vars.next(), c * m, geometry, hint)
    }

    fn separable_conv2d(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.image(layer, args)?.clone();
        let (kernel, strides, dilations) = Self::conv_params(layer)?;
        let use_bias = cfg_bool(layer, "use_bias", true);
        let mut vars = self.vars(layer, 2 + usize::from(use_bias))?.into_iter();
        let dk = vars
            .next()
            .ok_or_else(|| layer_err(layer, "missing depthwise kernel"))?;
        let pk = vars
            .next()
            .ok_or_else(|| layer_err(layer, "missing pointwise kernel"))?;
        let (dw, c, m) = Self::depthwise_weight(layer, dk, kernel, x.channels)?;
        if pk.ndim() != 4 || pk.shape()[0] != 1 || pk.shape()[1] != 1 || pk.shape()[2] != c * m {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "pointwise kernel has shape {:?}, expected [1, 1, {}, filters]",
                    pk.shape(),
                    c * m
                ),
            });
        }
        let filters = pk.shape()[3];
        let pw = pk
            .permuted_axes(IxDyn(&[3, 2, 0, 1]))
            .as_standard_layout()
            .to_owned();
        let dw = self.init(&format!("{}.depthwise_kernel", layer.name), dw);
        let pw = self.init(&format!("{}.pointwise_kernel", layer.name), pw);
        let b = match vars.next() {
            Some(v) => Some(self.bias(layer, v, filters)?),
            None => None,
        };
        let d = self.conv_node(
            layer,
            &x.name,
            &dw,
            None,
            ConvGeometry {
                kernel,
                strides,
                dilations,
                group: c,
            },
            &format!("{hint}/depthwise"),
        )?;
        let act = cfg_str(layer, "activation", "linear").to_owned();
        let conv_hint = if act == "linear" {
            hint.to_owned()
        } else {
            format!("{hint}/pointwise")
        };
        let y = self.node(
            "Conv",
            &[
                &[d.as_str(), pw.as_str()][..],
                b.as_deref().map(|b| vec![b]).unwrap_or_default().as_slice(),
            ]
            .concat(),
            vec![
                attr::ints("kernel_shape", &[1, 1]),
                attr::ints("strides", &[1, 1]),
                attr::ints("dilations", &[1, 1]),
                attr::int("group", 1),
                attr::ints("pads", &[0, 0, 0, 0]),
            ],
            &conv_hint,
        );
        let y = Val {
            name: y,
            rank: 4,
            channels: Some(filters),
        };
        self.activation(layer, &act, y, hint)
    }

    fn batch_norm(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.one(layer, args)?.clone();
        let axis = layer
            .config
            .get("axis")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        let last = x.rank as i64 - 1;
        if axis != -1 && axis != last {
            return Err(layer_err(
                layer,
                format!("only the channel axis (-1) is supported, found axis {axis}"),
            ));
        }
        let center = cfg_bool(layer, "center", true);
        let scale = cfg_bool(layer, "scale", true);
        let eps = layer
            .config
            .get("epsilon")
            .and_then(Value::as_f64)
            .unwrap_or(1e-3) as f32;
        let mut vars = self
            .vars(layer, 2 + usize::from(center) + usize::from(scale))?
            .into_iter();
        let mut next = |what: &str| {
            vars.next()
                .ok_or_else(|| layer_err(layer, format!("missing {what}")))
        };
        let gamma = if scale { Some(next("gamma")?) } else { None };
        let beta = if center { Some(next("beta")?) } else { None };
        let mean = next("moving_mean")?;
        let var = next("moving_variance")?;
        let c = mean.len();
        if x.channels.is_some_and(|ch| ch != c) {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!("{c} moving means for {} channels", x.channels.unwrap_or(0)),
            });
        }
        for (what, a) in [("gamma", &gamma), ("beta", &beta)] {
            if let Some(a) = a {
                Self::check_shape(layer, what, a, &[c])?;
            }
        }
        Self::check_shape(layer, "moving_variance", &var, &[c])?;
        let g = match gamma {
            Some(g) => self.init(&format!("{}.gamma", layer.name), g),
            None => self.init(
                &format!("{}.ones", layer.name),
                ArrayD::from_elem(IxDyn(&[c]), 1.0),
            ),
        };
        let b = match beta {
            Some(b) => self.init(&format!("{}.beta", layer.name), b),
            None => self.init(&format!("{}.zeros", layer.name), ArrayD::zeros(IxDyn(&[c]))),
        };
        let m = self.init(
            &format!("{}.moving_mean", layer.name),
            mean.into_shape_with_order(IxDyn(&[c]))
                .map_err(|e| layer_err(layer, e.to_string()))?,
        );
        let v = self.init(&format!("{}.moving_variance", layer.name), var);
        let out = self.node(
            "BatchNormalization",
            &[&x.name, &g, &b, &m, &v],
            vec![attr::float("epsilon", eps)],
            hint,
        );
        Ok(Val { name: out, ..x })
    }

    fn pool(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.image(layer, args)?.clone();
        let kernel = cfg_usize_pair(layer, "pool_size", Some([2, 2]))?;
        let strides = cfg_usize_pair(layer, "strides", Some(kernel))?;
        if kernel.contains(&0) || strides.contains(&0) {
            return Err(layer_err(layer, "pool size and strides must be positive"));
        }
        let mut attrs = vec![
            attr::ints("kernel_shape", &[kernel[0] as i64, kernel[1] as i64]),
            attr::ints("strides", &[strides[0] as i64, strides[1] as i64]),
        ];
        attrs.extend(Self::padding_attrs(layer, kernel, strides, [1, 1])?);
        let op = if layer.class == "MaxPooling2D" {
            "MaxPool"
        } else {
            "AveragePool"
        };
        if op == "AveragePool" {
            // Keras/TF average only over the valid (unpadded) positions.
            attrs.push(attr::int("count_include_pad", 0));
        }
        let out = self.node(op, &[&x.name], attrs, hint);
        Ok(Val { name: out, ..x })
    }

    fn dense(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.one(layer, args)?.clone();
        if x.rank != 2 {
            return Err(layer_err(
                layer,
                format!(
                    "Dense on a rank-{} input is not supported (pool or flatten first)",
                    x.rank
                ),
            ));
        }
        let use_bias = cfg_bool(layer, "use_bias", true);
        let mut vars = self.vars(layer, 1 + usize::from(use_bias))?.into_iter();
        let k = vars
            .next()
            .ok_or_else(|| layer_err(layer, "missing kernel"))?;
        if k.ndim() != 2 || x.channels.is_some_and(|c| c != k.shape()[0]) {
            return Err(Error::Weights {
                layer: layer.name.clone(),
                reason: format!(
                    "kernel has shape {:?} for {:?} inputs",
                    k.shape(),
                    x.channels
                ),
            });
        }
        let units = k.shape()[1];
        let w = self.init(&format!("{}.kernel", layer.name), k);
        let act = cfg_str(layer, "activation", "linear").to_owned();
        let mut y = self.node("MatMul", &[&x.name, &w], vec![], &format!("{hint}/matmul"));
        if let Some(bv) = vars.next() {
            let b = self.bias(layer, bv, units)?;
            let h = if act == "linear" {
                hint.to_owned()
            } else {
                format!("{hint}/linear")
            };
            y = self.node("Add", &[&y, &b], vec![], &h);
        }
        let y = Val {
            name: y,
            rank: 2,
            channels: Some(units),
        };
        self.activation(layer, &act, y, hint)
    }

    fn rescaling(&mut self, layer: &Layer, args: &[Val], hint: &str) -> Result<Val> {
        let x = self.one(layer, args)?.clone();
        let values = |key: &str, default: f32| -> Result<Vec<f32>> {
            match layer.config.get(key) {
                None | Some(Value::Null) => Ok(vec![default]),
                Some(Value::Number(n)) => Ok(vec![n.as_f64().unwrap_or(default as f64) as f32]),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_f64()
                            .map(|f| f as f32)
                            .ok_or_else(|| layer_err(layer, format!("`{key}` must hold numbers")))
                    })
                    .collect(),
                Some(other) => Err(layer_err(
                    layer,
                    format!("`{key}` must be a number or a list, found {other}"),
                )),
            }
        };
        let scale = values("scale", 1.0)?;
        let offset = values("offset", 0.0)?;
        let shaped = |v: Vec<f32>| -> Result<ArrayD<f32>> {
            if v.len() == 1 {
                return Ok(ArrayD::from_elem(IxDyn(&[]), v[0]));
            }
            let shape: Vec<usize> = if x.rank == 4 {
                vec![v.len(), 1, 1]
            } else {
                vec![v.len()]
            };
            ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| layer_err(layer, e.to_string()))
        };
        let s = shaped(scale)?;
        let o = shaped(offset)?;
        let s = self.init(&format!("{}.scale", layer.name), s);
        let o = self.init(&format!("{}.offset", layer.name), o);
        let scaled = self.node("Mul", &[&x.name, &s], vec![], &format!("{hint}/scaled"));
        let out = self.node("Add", &[&scaled, &o], vec![], hint);
        Ok(Val { name: out, ..x })
    }
}

//! Training graphs: forward + head + loss + backward, and the eval graph; and the lower-level
//! [`vjp_model`]. `build` is a sequence of named steps: read the forward model, select the
//! parameters, rewrite the training forward (dropout masks, folded BatchNorm, head), probe the
//! shapes, declare the inputs, emit loss and backward, describe the result.

use std::collections::{HashMap, HashSet};

use xfer_onnx::{DataType, Dim, GraphBuilder, GraphProto, ModelProto, TensorProto, ValueInfoProto};
use xfer_runtime::SessionOptions;

use crate::emit::{Emit, unsupported, zero_fill};
use crate::fold::{ValueShapes, fuse_conv_bn};
use crate::loss::{build_eval, emit_loss};
use crate::nchwc::{CpuKernels, import_nchwc, rewrite_depthwise};
use crate::probe::{data_inputs, probe, probe_input_shapes, unshaped_output, values_of};
use crate::random::{DROPOUT_MASK_RULE, glorot_uniform};
use crate::select::{is_float_initializer, parameter_candidates, select};
use crate::spec::{GraphSpec, HeadSpec, Loss, MaskSpec, Parameter, TensorSpec, Trainable};
use crate::vjp::{input, output};
use crate::{Error, PROBE_BATCH, Result, engine};

/// Name of the head's kernel parameter (`[features, units]`, like Keras).
pub const HEAD_KERNEL: &str = "head.kernel";
/// Name of the head's bias parameter.
pub const HEAD_BIAS: &str = "head.bias";
/// Name of the head's dropout mask input.
pub const HEAD_MASK: &str = "dropout_mask";

/// What [`TrainingGraphBuilder::build`] produces.
#[derive(Debug, Clone)]
pub struct TrainingGraphs {
    /// Inputs: data, `labels`, dropout masks, trainable parameters; outputs: `loss`, `logits`, `<param>_grad`.
    pub training: ModelProto,
    /// Forward + head with dropout off; every parameter (trainable or not) is an initializer holding
    /// its initial value (see [`TrainingGraphs::eval_with`] to store trained values). Output: `logits`.
    pub eval: ModelProto,
    /// Initial values of the trainable parameters, in the training graph's input order.
    pub params: Vec<Parameter>,
    /// The description written as `graph.json`.
    pub spec: GraphSpec,
}

impl TrainingGraphs {
    /// The eval model with these parameter values stored in its initializers.
    pub fn eval_with(&self, params: &[Parameter]) -> Result<ModelProto> {
        let mut model = self.eval.clone();
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| Error::Graph("eval model has no graph".to_owned()))?;
        for p in params {
            let Some(init) = graph.initializer.iter_mut().find(|t| t.name == p.name) else {
                return Err(Error::Optimizer {
                    name: p.name.clone(),
                    reason: "not a parameter of the eval graph".to_owned(),
                });
            };
            if init.numel() != p.data.len() {
                return Err(Error::Optimizer {
                    name: p.name.clone(),
                    reason: format!(
                        "has {} values, the graph needs {:?}",
                        p.data.len(),
                        init.dims
                    ),
                });
            }
            *init = TensorProto::from_f32(p.name.clone(), &init.dims.clone(), &p.data);
        }
        Ok(model)
    }
}

impl TrainingGraphs {
    /// The eval model with the trainable parameters as graph inputs (named and shaped as
    /// [`TrainingGraphs::params`]) instead of initializers: one session serves every set of
    /// parameter values, fed with the data like the training graph's.
    pub fn eval_fed(&self) -> Result<ModelProto> {
        let mut model = self.eval.clone();
        let graph = model
            .graph
            .as_mut()
            .ok_or_else(|| Error::Graph("eval model has no graph".to_owned()))?;
        for p in &self.params {
            let before = graph.initializer.len();
            graph.initializer.retain(|t| t.name != p.name);
            if graph.initializer.len() == before {
                return Err(Error::Optimizer {
                    name: p.name.clone(),
                    reason: "not a parameter of the eval graph".to_owned(),
                });
            }
            let dims: Vec<Dim> = p.shape.iter().map(|&d| Dim::Fixed(d as i64)).collect();
            graph.input.push(ValueInfoProto::tensor(
                p.name.clone(),
                DataType::Float,
                &dims,
            ));
        }
        Ok(model)
    }
}

/// Builds [`TrainingGraphs`] from a forward model.
#[derive(Debug, Clone)]
pub struct TrainingGraphBuilder {
    forward: ModelProto,
    features: Option<String>,
    head: HeadSpec,
    trainable: Trainable,
    loss: Loss,
    example_shape: Option<Vec<i64>>,
    seed: u64,
    session: SessionOptions,
    fold_batch_norm: bool,
    cpu_kernels: CpuKernels,
}

impl TrainingGraphBuilder {
    /// Starts from a forward model; defaults: features = its first output, head Dense(1), all
    /// trainable, binary cross-entropy, seed 0.
    pub fn new(forward: ModelProto) -> Self {
        TrainingGraphBuilder {
            forward,
            features: None,
            head: HeadSpec::Dense {
                units: 1,
                dropout: 0.0,
            },
            trainable: Trainable::All,
            loss: Loss::BinaryCrossEntropyWithLogits,
            example_shape: None,
            seed: 0,
            session: SessionOptions::default(),
            fold_batch_norm: true,
            cpu_kernels: CpuKernels::Portable,
        }
    }

    /// The forward output the head is attached to (or, with [`HeadSpec::Existing`], the logits).
    pub fn features(mut self, name: &str) -> Self {
        self.features = Some(name.to_owned());
        self
    }

    /// The head.
    pub fn head(mut self, head: HeadSpec) -> Self {
        self.head = head;
        self
    }

    /// Which parameters are trained.
    pub fn trainable(mut self, trainable: Trainable) -> Self {
        self.trainable = trainable;
        self
    }

    /// The loss.
    pub fn loss(mut self, loss: Loss) -> Self {
        self.loss = loss;
        self
    }

    /// Shape of one example (without the batch), fixing symbolic input dims (e.g. `[3, 150, 150]`).
    pub fn example_shape(mut self, shape: &[i64]) -> Self {
        self.example_shape = Some(shape.to_vec());
        self
    }

    /// Seed of the head's initialization.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// ONNX Runtime options for the forward run that measures shapes.
    pub fn session_options(mut self, options: SessionOptions) -> Self {
        self.session = options;
        self
    }

    /// Fold trainable `Conv -> BatchNormalization` pairs into one convolution whose kernel and
    /// bias are computed from the parameters at run time (default on; same values and gradients,
    /// fewer full-size passes).
    pub fn fold_batch_norm(mut self, fold: bool) -> Self {
        self.fold_batch_norm = fold;
        self
    }

    /// The kernels the training graph's depthwise convolutions are written for (default
    /// [`CpuKernels::Portable`], standard ONNX that every execution provider runs).
    /// [`CpuKernels::Nchwc`] rewrites each depthwise Conv whose weight is computed in the graph
    /// (forward and input-gradient Convs) into ONNX Runtime's `com.microsoft.nchwc` kernels:
    /// the CPU execution provider only, with the block [`crate::nchwc_block`] found. Measured:
    /// each such Conv 2-3x faster on ONNX Runtime 1.31 CPU (see the `nchwc` module). Inputs,
    /// outputs, parameters and the eval graph are the same either way (the eval graph's weights
    /// are constants, which ONNX Runtime already runs through these kernels by itself).
    pub fn cpu_kernels(mut self, kernels: CpuKernels) -> Self {
        self.cpu_kernels = kernels;
        self
    }

    /// Builds the training and eval graphs.
    pub fn build(self) -> Result<TrainingGraphs> {
        build(self)
    }
}

fn check_opset(model: &ModelProto) -> Result<()> {
    let opset = model.opset();
    if !(13..=xfer_onnx::DEFAULT_OPSET).contains(&opset) {
        return Err(Error::Graph(format!(
            "the model imports opset {opset}; xfer-autodiff handles opsets 13 to {}; re-export the model at opset 13-17",
            xfer_onnx::DEFAULT_OPSET
        )));
    }
    Ok(())
}

/// The model's graph, checked for a supported opset.
fn forward_graph(model: &ModelProto) -> Result<GraphProto> {
    check_opset(model)?;
    model
        .graph
        .clone()
        .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))
}

/// Dims of a value shaped `shape` at the probe batch, with the batch dimension `batch`.
fn declared(shape: &[i64], batch: &Dim) -> Vec<Dim> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 0 { batch.clone() } else { Dim::Fixed(d) })
        .collect()
}

/// A probe shape as written in `graph.json` (`-1` for the batch).
fn spec_shape(shape: &[i64]) -> Vec<i64> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 0 { -1 } else { d })
        .collect()
}

/// Gives each MaxPool among `order` an Indices output (its backward scatters through them).
fn add_maxpool_indices(b: &mut GraphBuilder, order: &[usize]) -> Result<()> {
    for &i in order {
        let Some(node) = b.graph().node.get(i) else {
            continue;
        };
        if node.op_type == "MaxPool" && node.output.len() < 2 {
            let hint = format!("{}_indices", output(node, 0)?);
            let name = b.unique(&hint);
            b.graph_mut().node[i].output.push(name);
        }
    }
    Ok(())
}

/// Claims `name` for the training graph; an error when the forward graph already uses it.
pub(crate) fn reserve(b: &mut GraphBuilder, name: &str) -> Result<()> {
    if b.unique(name) != name {
        return Err(Error::Graph(format!(
            "the forward graph already has a value named `{name}`, which the training graph needs for itself"
        )));
    }
    Ok(())
}

/// Moves an initializer to a graph input (declared with its dims) and returns its values.
fn initializer_to_input(b: &mut GraphBuilder, name: &str) -> Result<Parameter> {
    let g = b.graph_mut();
    let pos = g
        .initializer
        .iter()
        .position(|t| t.name == name)
        .ok_or_else(|| Error::Selection(format!("`{name}` is not an initializer")))?;
    let t = g.initializer.remove(pos);
    g.input.retain(|v| v.name != name);
    let data = t.to_f32()?;
    let dims: Vec<Dim> = t.dims.iter().map(|&d| Dim::Fixed(d)).collect();
    b.input(name, &dims);
    Ok(Parameter {
        name: name.to_owned(),
        shape: t.shape(),
        data,
    })
}

/// A model computing the vector-Jacobian product of `output` with respect to `wrt` (graph inputs
/// or float initializers; initializers become inputs). Inputs: the forward inputs, the `wrt`
/// initializers, and `<output>_grad` (the cotangent, shaped like `output`). Outputs: `output` and
/// `<w>_grad` for each `w` in `wrt`. Dropout nodes act as in inference (identity).
pub fn vjp_model(
    forward: &ModelProto,
    output: &str,
    wrt: &[&str],
    example_shape: Option<&[i64]>,
    session: &SessionOptions,
) -> Result<ModelProto> {
    let graph = forward_graph(forward)?;
    let inputs = probe_input_shapes(&graph, example_shape)?;
    let input_names: HashSet<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
    for w in wrt {
        if !input_names.contains(w) && !is_float_initializer(&graph, w) {
            return Err(Error::Selection(format!(
                "`{w}` is neither a graph input nor a float initializer"
            )));
        }
    }
    let sources: HashSet<String> = wrt.iter().map(|s| (*s).to_owned()).collect();
    let req = engine::requires_grad(&graph.node, &sources);
    let needed = engine::reaches(&graph.node, &[output]);
    let order = engine::backward_nodes(&graph.node, &req, &needed)?;
    let mut want = values_of(&graph.node, &order);
    want.push(output.to_owned());
    let shapes = probe(&graph, forward.opset(), &inputs, &want, session)?;
    let out_shape = shapes
        .get(output)
        .cloned()
        .ok_or_else(|| Error::Graph(format!("`{output}` is not a value of the graph")))?;

    let mut b = GraphBuilder::from_graph(graph.clone());
    b.graph_mut().output.clear();
    add_maxpool_indices(&mut b, &order)?;
    let mut statics: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    for w in wrt {
        if !input_names.contains(w) {
            initializer_to_input(&mut b, w)?;
            statics.insert((*w).to_owned());
        }
    }
    let seed = format!("{output}_grad");
    reserve(&mut b, &seed)?;
    b.input(
        &seed,
        &declared(&out_shape, &Dim::Named("batch".to_owned())),
    );
    let wanted: Vec<String> = wrt.iter().map(|s| (*s).to_owned()).collect();
    let grad_names: Vec<String> = wanted.iter().map(|w| format!("{w}_grad")).collect();
    for n in &grad_names {
        reserve(&mut b, n)?;
    }
    let nodes = b.graph().node.clone();
    let mut e = Emit::new(b, shapes);
    e.static_values = statics;
    let seeds = [(output.to_owned(), seed)];
    let grads = engine::sweep(&mut e, &nodes, &order, &req, &seeds, &wanted)?;
    e.b.graph_mut()
        .output
        .push(unshaped_output(output, DataType::Float));
    for (w, name) in wanted.iter().zip(&grad_names) {
        emit_grad_output(&mut e, w, name, grads.get(w).cloned().flatten())?;
    }
    let mut model = ModelProto::with_graph(e.b.build(), xfer_onnx::DEFAULT_OPSET);
    model.producer_name = "xfer-autodiff".to_owned();
    Ok(model)
}

/// Emits `name` = the gradient of `value` (zeros when it does not reach the loss) as a graph output.
fn emit_grad_output(e: &mut Emit, value: &str, name: &str, grad: Option<String>) -> Result<()> {
    match grad {
        Some(g) => {
            e.b.node_named("Identity", &[&g], &[name], vec![]);
        }
        None => {
            let shape = e.shape_of(value);
            e.b.node_named("ConstantOfShape", &[&shape], &[name], vec![zero_fill()]);
        }
    }
    e.b.graph_mut()
        .output
        .push(unshaped_output(name, DataType::Float));
    Ok(())
}

/// The forward model as the training graph sees it.
struct Forward {
    graph: GraphProto,
    opset: i64,
    /// Probe shapes of the data inputs (exactly one).
    inputs: Vec<(String, Vec<i64>)>,
    /// The data input's name.
    data: String,
    /// The data input's probe shape.
    data_shape: Vec<i64>,
    /// The batch dimension of the data input (fixed, or named `batch`).
    batch: Dim,
    /// The value the head is attached to.
    features: String,
}

impl Forward {
    fn read(cfg: &TrainingGraphBuilder) -> Result<Self> {
        let graph = forward_graph(&cfg.forward)?;
        let inputs = probe_input_shapes(&graph, cfg.example_shape.as_deref())?;
        let [(data, data_shape)] = inputs.as_slice() else {
            return Err(Error::Graph(format!(
                "a training graph needs exactly one data input; this model has {}: {:?}",
                inputs.len(),
                inputs.iter().map(|(n, _)| n).collect::<Vec<_>>()
            )));
        };
        let (data, data_shape) = (data.clone(), data_shape.clone());
        let batch = match data_inputs(&graph)
            .first()
            .and_then(|v| v.dims())
            .and_then(|d| d.first().cloned())
        {
            Some(Dim::Fixed(n)) if n > 0 => Dim::Fixed(n),
            _ => Dim::Named("batch".to_owned()),
        };
        let features = features_of(&graph, cfg.features.as_deref())?;
        Ok(Forward {
            opset: cfg.forward.opset(),
            graph,
            inputs,
            data,
            data_shape,
            batch,
            features,
        })
    }
}

/// The feature output: the one named, or the graph's first output; a node must produce it.
fn features_of(graph: &GraphProto, named: Option<&str>) -> Result<String> {
    let features = match named {
        Some(f) => f.to_owned(),
        None => graph
            .output
            .first()
            .map(|o| o.name.clone())
            .ok_or_else(|| {
                Error::Graph("the model has no outputs; name the feature output".to_owned())
            })?,
    };
    if !graph.node.iter().any(|n| n.output.contains(&features)) {
        return Err(Error::Graph(format!(
            "no node produces the feature output `{features}`"
        )));
    }
    Ok(features)
}

/// The parameters and the trainable selection.
struct Selection {
    /// Backbone parameters, in order of first use.
    candidates: Vec<String>,
    /// The Dense head's units and dropout rate (None: [`HeadSpec::Existing`]).
    dense: Option<(usize, f32)>,
    /// The head's parameters (empty without a Dense head).
    head_params: Vec<String>,
    /// The trained parameters, in the training graph's input order.
    trained: Vec<String>,
    trained_set: HashSet<String>,
}

impl Selection {
    fn new(graph: &GraphProto, head: &HeadSpec, trainable: &Trainable) -> Result<Self> {
        let candidates = parameter_candidates(graph);
        let dense = match *head {
            HeadSpec::Dense { units, dropout } => Some((units, dropout)),
            HeadSpec::Existing => None,
        };
        let head_params: Vec<String> = if dense.is_some() {
            for n in [HEAD_KERNEL, HEAD_BIAS] {
                if graph.initializer(n).is_some() {
                    return Err(Error::Graph(format!(
                        "the forward graph already has an initializer `{n}`"
                    )));
                }
            }
            vec![HEAD_KERNEL.to_owned(), HEAD_BIAS.to_owned()]
        } else {
            Vec::new()
        };
        let trained: Vec<String> = select(trainable, &candidates, &head_params)?;
        if trained.is_empty() {
            return Err(Error::Selection(
                "nothing is trainable with this head and selection".to_owned(),
            ));
        }
        let trained_set = trained.iter().cloned().collect();
        Ok(Selection {
            candidates,
            dense,
            head_params,
            trained,
            trained_set,
        })
    }
}

/// A Dropout node of the forward graph, replaced by `Mul(input, mask)` in the training graph.
struct ForwardDropout {
    index: usize,
    input: String,
    output: String,
    rate: f32,
    /// The mask input that replaces it.
    mask: String,
}

/// The forward's Dropout nodes (their rates must be constants, their mask outputs unused).
fn forward_dropouts(graph: &GraphProto) -> Result<Vec<ForwardDropout>> {
    let mut dropouts = Vec::new();
    for (index, n) in graph.node.iter().enumerate() {
        if n.op_type != "Dropout" {
            continue;
        }
        if n.output.get(1).is_some_and(|m| !m.is_empty()) {
            return Err(unsupported(
                n,
                "Dropout's mask output is used; xfer feeds masks as inputs",
            ));
        }
        let rate = match n.input.get(1).filter(|s| !s.is_empty()) {
            Some(r) => graph
                .initializer(r)
                .and_then(|t| t.to_f32().ok())
                .and_then(|v| v.first().copied())
                .ok_or_else(|| {
                    unsupported(n, "the dropout ratio must be a constant initializer")
                })?,
            None => 0.5,
        };
        dropouts.push(ForwardDropout {
            index,
            input: input(n, 0)?.to_owned(),
            output: output(n, 0)?.to_owned(),
            rate,
            mask: String::new(),
        });
    }
    Ok(dropouts)
}

/// Replaces each Dropout by `Mul(input, <output>_mask)`; records the mask names.
fn mask_dropouts(b: &mut GraphBuilder, dropouts: &mut [ForwardDropout]) {
    for d in dropouts {
        d.mask = b.unique(&format!("{}_mask", d.output));
        let node = &mut b.graph_mut().node[d.index];
        node.op_type = "Mul".to_owned();
        node.attribute.clear();
        node.input = vec![d.input.clone(), d.mask.clone()];
        node.output.truncate(1);
    }
}

/// The head's values in the training graph.
struct Head {
    logits: String,
    /// `features * mask` (a Dense head with dropout).
    dropout: Option<String>,
    /// `input @ head.kernel` (a Dense head).
    matmul: Option<String>,
    /// The head's mask input and its rate.
    mask: Option<(String, f32)>,
}

/// Appends the head to the training forward: `logits = [features * mask] @ kernel + bias`, or
/// `Identity(features)`.
fn append_head(b: &mut GraphBuilder, features: &str, dense: Option<(usize, f32)>) -> Result<Head> {
    let mut head = Head {
        logits: "logits".to_owned(),
        dropout: None,
        matmul: None,
        mask: None,
    };
    let Some((_, rate)) = dense else {
        b.node_named("Identity", &[features], &[&head.logits], vec![]);
        return Ok(head);
    };
    let mut h = features.to_owned();
    if rate > 0.0 {
        reserve(b, HEAD_MASK)?;
        let out = b.unique("head.dropout");
        b.node_named("Mul", &[features, HEAD_MASK], &[&out], vec![]);
        head.mask = Some((HEAD_MASK.to_owned(), rate));
        head.dropout = Some(out.clone());
        h = out;
    }
    let mm = b.unique("head.matmul");
    b.node_named("MatMul", &[&h, HEAD_KERNEL], &[&mm], vec![]);
    b.node_named("Add", &[&mm, HEAD_BIAS], &[&head.logits], vec![]);
    head.matmul = Some(mm);
    Ok(head)
}

/// Which nodes of the training forward need a backward pass.
struct Plan {
    req: HashSet<String>,
    /// Indices of the nodes with a backward pass, in graph order.
    order: Vec<usize>,
    /// The part of `order` in the forward graph (before the head).
    forward_order: Vec<usize>,
}

impl Plan {
    fn new(
        b: &GraphBuilder,
        trained: &HashSet<String>,
        logits: &str,
        forward_len: usize,
    ) -> Result<Self> {
        let nodes = &b.graph().node;
        let req = engine::requires_grad(nodes, trained);
        let needed = engine::reaches(nodes, &[logits]);
        let order = engine::backward_nodes(nodes, &req, &needed)?;
        let forward_order = order.iter().copied().filter(|&i| i < forward_len).collect();
        Ok(Plan {
            req,
            order,
            forward_order,
        })
    }
}

/// Feature width and logit count of the head.
#[derive(Clone, Copy)]
struct HeadDims {
    /// Features per example.
    dim: i64,
    /// Logits per example.
    units: i64,
}

/// Checks the feature shape against the head and loss; records the shapes of the dropout masks
/// and of the head's values (under the names they have in the graph).
fn head_dims(
    shapes: &mut HashMap<String, Vec<i64>>,
    fwd: &Forward,
    dense: Option<(usize, f32)>,
    loss: Loss,
    dropouts: &[ForwardDropout],
    head: &Head,
) -> Result<HeadDims> {
    let features = &fwd.features;
    let feat_shape = shapes
        .get(features)
        .cloned()
        .ok_or_else(|| Error::Graph(format!("could not measure the shape of `{features}`")))?;
    for d in dropouts {
        if let Some(s) = shapes.get(&d.input).cloned() {
            shapes.insert(d.output.clone(), s.clone());
            shapes.insert(d.mask.clone(), s);
        }
    }
    let units = match dense {
        Some((units, _)) => units as i64,
        None => *feat_shape.last().unwrap_or(&0),
    };
    let [_, dim] = feat_shape[..] else {
        return Err(Error::Graph(format!(
            "`{features}` has shape {feat_shape:?}; the head needs [batch, features] (use the pooled output)"
        )));
    };
    if loss == Loss::BinaryCrossEntropyWithLogits && units != 1 {
        return Err(Error::Graph(format!(
            "binary cross-entropy needs one logit per example; the logits have {units} (use dense:1 or --loss softmax)"
        )));
    }
    let pb = PROBE_BATCH;
    shapes.insert(head.logits.clone(), vec![pb, units]);
    if dense.is_some() {
        shapes.insert(HEAD_KERNEL.to_owned(), vec![dim, units]);
        shapes.insert(HEAD_BIAS.to_owned(), vec![units]);
    }
    for (value, shape) in [
        (&head.matmul, vec![pb, units]),
        (&head.dropout, vec![pb, dim]),
    ] {
        if let Some(v) = value {
            shapes.insert(v.clone(), shape);
        }
    }
    if let Some((mask, _)) = &head.mask {
        shapes.insert(mask.clone(), vec![pb, dim]);
    }
    Ok(HeadDims { dim, units })
}

/// Initial values of the head's parameters: Glorot-uniform kernel, zero bias.
fn head_values(dense: bool, d: HeadDims, seed: u64) -> HashMap<String, Vec<f32>> {
    let mut values = HashMap::new();
    if dense {
        values.insert(
            HEAD_KERNEL.to_owned(),
            glorot_uniform(d.dim as usize, d.units as usize, seed),
        );
        values.insert(HEAD_BIAS.to_owned(), vec![0.0; d.units as usize]);
    }
    values
}

/// Declares the data, labels and mask inputs; returns the labels' dtype and the mask specs.
fn declare_data_inputs(
    b: &mut GraphBuilder,
    fwd: &Forward,
    loss: Loss,
    dropouts: &[ForwardDropout],
    head: &Head,
    shapes: &HashMap<String, Vec<i64>>,
    dim: i64,
) -> (&'static str, Vec<MaskSpec>) {
    let batch = &fwd.batch;
    if let Some(v) = b.graph_mut().input.iter_mut().find(|v| v.name == fwd.data) {
        *v = ValueInfoProto::tensor(
            fwd.data.clone(),
            DataType::Float,
            &declared(&fwd.data_shape, batch),
        );
    }
    let (labels_type, labels_spec) = match loss {
        Loss::BinaryCrossEntropyWithLogits => (DataType::Float, "float32"),
        Loss::SoftmaxCrossEntropy => (DataType::Int64, "int64"),
    };
    b.input_typed("labels", labels_type, std::slice::from_ref(batch));
    let mut masks = Vec::new();
    for (k, d) in dropouts.iter().enumerate() {
        let s = shapes.get(&d.mask).cloned().unwrap_or_default();
        b.input(&d.mask, &declared(&s, batch));
        masks.push(MaskSpec {
            name: d.mask.clone(),
            shape: spec_shape(&s),
            rate: d.rate,
            stream: k as u64 + 1,
        });
    }
    if let Some((name, rate)) = &head.mask {
        b.input(name, &declared(&[PROBE_BATCH, dim], batch));
        masks.push(MaskSpec {
            name: name.clone(),
            shape: vec![-1, dim],
            rate: *rate,
            stream: 0,
        });
    }
    (labels_spec, masks)
}

/// Makes the trained parameters graph inputs (backbone initializers move; the head's are new)
/// and the untrained head parameters initializers; returns the trained parameters' values.
fn declare_parameters(
    b: &mut GraphBuilder,
    sel: &Selection,
    head_values: &HashMap<String, Vec<f32>>,
    shapes: &HashMap<String, Vec<i64>>,
) -> Result<Vec<Parameter>> {
    let mut params = Vec::new();
    for p in &sel.trained {
        if let Some(values) = head_values.get(p) {
            let shape = shapes.get(p).cloned().unwrap_or_default();
            b.input(p, &shape.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>());
            params.push(Parameter {
                name: p.clone(),
                shape: shape.iter().map(|&d| d as usize).collect(),
                data: values.clone(),
            });
        } else {
            params.push(initializer_to_input(b, p)?);
        }
    }
    for p in &sel.head_params {
        if !sel.trained_set.contains(p)
            && let Some(values) = head_values.get(p)
        {
            let shape = shapes.get(p).cloned().unwrap_or_default();
            b.initializer(TensorProto::from_f32(p.clone(), &shape, values));
        }
    }
    Ok(params)
}

/// Emits the loss, the backward sweep from the logits to the trained parameters, and the
/// training graph's outputs; returns the training model.
fn emit_training(
    mut e: Emit,
    plan: &Plan,
    sel: &Selection,
    fwd: &Forward,
    cfg: &TrainingGraphBuilder,
    logits: &str,
    units: i64,
) -> Result<ModelProto> {
    let loss = cfg.loss;
    let nodes = e.b.graph().node.clone();
    let dlogits = emit_loss(&mut e, loss, logits, units)?;
    let seeds = [(logits.to_owned(), dlogits)];
    let grads = engine::sweep(&mut e, &nodes, &plan.order, &plan.req, &seeds, &sel.trained)?;
    e.b.graph_mut()
        .output
        .push(ValueInfoProto::tensor("loss", DataType::Float, &[]));
    e.b.output(logits, &[fwd.batch.clone(), Dim::Fixed(units)]);
    for p in &sel.trained {
        emit_grad_output(
            &mut e,
            p,
            &format!("{p}_grad"),
            grads.get(p).cloned().flatten(),
        )?;
    }
    let nchwc = match cfg.cpu_kernels {
        CpuKernels::Portable => false,
        CpuKernels::Nchwc { block } => rewrite_depthwise(&mut e, block)? > 0,
    };
    let mut training = ModelProto::with_graph(e.b.build(), xfer_onnx::DEFAULT_OPSET);
    if nchwc {
        import_nchwc(&mut training);
    }
    training.producer_name = "xfer-autodiff".to_owned();
    training.set_metadata("xfer.graph", "training");
    training.set_metadata("xfer.loss", &loss.to_string());
    Ok(training)
}

/// A float32 tensor in [`GraphSpec`].
fn float_spec(name: &str, shape: Vec<i64>) -> TensorSpec {
    TensorSpec {
        name: name.to_owned(),
        dtype: "float32".to_owned(),
        shape,
    }
}

/// The description written as `graph.json`.
fn graph_spec(
    cfg: &TrainingGraphBuilder,
    fwd: &Forward,
    frozen_parameters: usize,
    labels_dtype: &str,
    dropout_masks: Vec<MaskSpec>,
    params: &[Parameter],
    units: i64,
) -> GraphSpec {
    let param_shape = |p: &Parameter| p.shape.iter().map(|&d| d as i64).collect::<Vec<_>>();
    let logits = float_spec("logits", vec![-1, units]);
    GraphSpec {
        data_input: float_spec(&fwd.data, spec_shape(&fwd.data_shape)),
        labels: TensorSpec {
            name: "labels".to_owned(),
            dtype: labels_dtype.to_owned(),
            shape: vec![-1],
        },
        dropout_masks,
        parameters: params
            .iter()
            .map(|p| float_spec(&p.name, param_shape(p)))
            .collect(),
        frozen_parameters,
        training_outputs: [float_spec("loss", vec![]), logits.clone()]
            .into_iter()
            .chain(
                params
                    .iter()
                    .map(|p| float_spec(&format!("{}_grad", p.name), param_shape(p))),
            )
            .collect(),
        eval_outputs: vec![logits],
        loss: cfg.loss,
        head: cfg.head.clone(),
        features: fwd.features.clone(),
        dropout_mask_rule: DROPOUT_MASK_RULE.to_owned(),
        notes: vec![
            "loss is the mean over the batch; gradients are of that mean".to_owned(),
            "the spatial size is fixed to the data input's shape above; the batch (-1) is free"
                .to_owned(),
            "BatchNormalization runs in inference mode (moving statistics frozen, not parameters)"
                .to_owned(),
            "eval.onnx holds every parameter as an initializer (initial values as written)"
                .to_owned(),
        ],
    }
}

/// Claims the names the training graph adds: `logits`, `loss`, `labels`, `<param>_grad`.
fn reserve_training_names(b: &mut GraphBuilder, trained: &[String]) -> Result<()> {
    for n in ["logits", "loss", "labels"] {
        reserve(b, n)?;
    }
    for p in trained {
        reserve(b, &format!("{p}_grad"))?;
    }
    Ok(())
}

/// The training forward being built.
struct TrainingForward {
    b: GraphBuilder,
    dropouts: Vec<ForwardDropout>,
    head: Head,
    /// Shapes of the values that folding Conv+BN pairs adds.
    folded_shapes: ValueShapes,
    /// Number of nodes before the head.
    forward_len: usize,
}

/// The training forward: Dropout -> Mul(mask), folded Conv+BN pairs, the head.
fn training_forward(
    cfg: &TrainingGraphBuilder,
    fwd: &Forward,
    sel: &Selection,
) -> Result<TrainingForward> {
    let mut b = GraphBuilder::from_graph(fwd.graph.clone());
    b.graph_mut().output.clear();
    let mut dropouts = forward_dropouts(&fwd.graph)?;
    mask_dropouts(&mut b, &mut dropouts);
    let folded_shapes = if cfg.fold_batch_norm {
        fuse_conv_bn(&mut b, &sel.trained_set)?
    } else {
        Vec::new()
    };
    let forward_len = b.graph().node.len();
    reserve_training_names(&mut b, &sel.trained)?;
    let head = append_head(&mut b, &fwd.features, sel.dense)?;
    Ok(TrainingForward {
        b,
        dropouts,
        head,
        folded_shapes,
        forward_len,
    })
}

/// Every value the forward graph defines (node outputs and graph inputs).
fn forward_values(graph: &GraphProto) -> HashSet<String> {
    graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .chain(graph.input.iter().map(|v| v.name.clone()))
        .collect()
}

/// Measures the shapes the backward pass needs (those of forward values, the features, the
/// dropout inputs), plus those of the folded values.
fn measure(
    cfg: &TrainingGraphBuilder,
    fwd: &Forward,
    plan: &Plan,
    nodes: &[xfer_onnx::NodeProto],
    dropouts: &[ForwardDropout],
    folded_shapes: ValueShapes,
) -> Result<HashMap<String, Vec<i64>>> {
    let original_values = forward_values(&fwd.graph);
    let mut want: Vec<String> = values_of(nodes, &plan.forward_order)
        .into_iter()
        .filter(|v| original_values.contains(v))
        .collect();
    want.push(fwd.features.clone());
    want.extend(dropouts.iter().map(|d| d.input.clone()));
    let mut shapes = probe(&fwd.graph, fwd.opset, &fwd.inputs, &want, &cfg.session)?;
    shapes.extend(folded_shapes);
    Ok(shapes)
}

fn build(cfg: TrainingGraphBuilder) -> Result<TrainingGraphs> {
    let fwd = Forward::read(&cfg)?;
    let sel = Selection::new(&fwd.graph, &cfg.head, &cfg.trainable)?;
    let TrainingForward {
        mut b,
        dropouts,
        head,
        folded_shapes,
        forward_len,
    } = training_forward(&cfg, &fwd, &sel)?;
    let plan = Plan::new(&b, &sel.trained_set, &head.logits, forward_len)?;
    let mut shapes = measure(&cfg, &fwd, &plan, &b.graph().node, &dropouts, folded_shapes)?;
    let dims = head_dims(&mut shapes, &fwd, sel.dense, cfg.loss, &dropouts, &head)?;
    let head_values = head_values(sel.dense.is_some(), dims, cfg.seed);

    add_maxpool_indices(&mut b, &plan.forward_order)?;
    let (labels_dtype, masks) =
        declare_data_inputs(&mut b, &fwd, cfg.loss, &dropouts, &head, &shapes, dims.dim);
    let params = declare_parameters(&mut b, &sel, &head_values, &shapes)?;

    let mut e = Emit::new(b, shapes);
    e.static_values = fwd
        .graph
        .initializer
        .iter()
        .map(|t| t.name.clone())
        .collect();
    e.static_values.extend(sel.head_params.iter().cloned());
    let training = emit_training(e, &plan, &sel, &fwd, &cfg, &head.logits, dims.units)?;
    let eval = build_eval(
        &fwd.graph,
        &fwd.features,
        sel.dense.is_some(),
        &head_values,
        dims.dim,
        dims.units,
        &fwd.batch,
    )?;
    let frozen = sel.candidates.len() + sel.head_params.len() - params.len();
    let spec = graph_spec(&cfg, &fwd, frozen, labels_dtype, masks, &params, dims.units);
    Ok(TrainingGraphs {
        training,
        eval,
        params,
        spec,
    })
}

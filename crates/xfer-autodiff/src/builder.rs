//! Training graphs: forward + head + loss + backward, and the eval graph.

use std::collections::{HashMap, HashSet};

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{
    DataType, Dim, GraphBuilder, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto,
    ValueInfoProto, attr, type_proto,
};
use xfer_runtime::{InputTensor, Model, SessionOptions};

use crate::emit::Emit;
use crate::random::{DROPOUT_MASK_RULE, glorot_uniform};
use crate::spec::{GraphSpec, HeadSpec, Loss, MaskSpec, Parameter, TensorSpec, Trainable};
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

    /// Builds the training and eval graphs.
    pub fn build(self) -> Result<TrainingGraphs> {
        build(self)
    }
}

fn is_float_initializer(graph: &GraphProto, name: &str) -> bool {
    graph
        .initializer(name)
        .is_some_and(|t| t.data_type == DataType::Float as i32)
}

/// Float initializers used as parameters (weights, biases, BatchNorm scale/offset), in order of first use.
fn parameter_candidates(graph: &GraphProto) -> Vec<String> {
    let producers: HashMap<&str, &str> = graph
        .node
        .iter()
        .flat_map(|n| {
            n.output
                .iter()
                .map(move |o| (o.as_str(), n.op_type.as_str()))
        })
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for n in &graph.node {
        for (i, v) in n.input.iter().enumerate() {
            let position = match n.op_type.as_str() {
                "Conv" | "ConvTranspose" | "BatchNormalization" | "Gemm" => i == 1 || i == 2,
                "MatMul" => true,
                "PRelu" => i == 1,
                "Add" => n.input.iter().any(|o| {
                    matches!(
                        producers.get(o.as_str()),
                        Some(&("MatMul" | "Conv" | "Gemm"))
                    )
                }),
                _ => false,
            };
            if position && is_float_initializer(graph, v) && seen.insert(v.clone()) {
                out.push(v.clone());
            }
        }
    }
    out
}

/// The Keras layer a parameter belongs to: its name up to the last `.`.
fn layer_of(param: &str) -> &str {
    param.rsplit_once('.').map_or(param, |(l, _)| l)
}

fn data_inputs(graph: &GraphProto) -> Vec<&ValueInfoProto> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|v| !inits.contains(v.name.as_str()))
        .collect()
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

/// Concrete probe shapes of the graph's data inputs.
fn probe_input_shapes(
    graph: &GraphProto,
    example_shape: Option<&[i64]>,
) -> Result<Vec<(String, Vec<i64>)>> {
    let inputs = data_inputs(graph);
    let mut out = Vec::new();
    for v in &inputs {
        let dims = v
            .dims()
            .ok_or_else(|| Error::Graph(format!("input `{}` declares no shape", v.name)))?;
        let mut shape = Vec::with_capacity(dims.len());
        for (i, d) in dims.iter().enumerate() {
            let value = match (d, i) {
                (Dim::Fixed(n), _) if *n > 0 => *n,
                (_, 0) => PROBE_BATCH,
                _ => match example_shape {
                    Some(ex) if inputs.len() == 1 && ex.len() + 1 == dims.len() => ex[i - 1],
                    _ => {
                        return Err(Error::Graph(format!(
                            "input `{}` has a symbolic dimension {i} ({d:?}); give the example shape (e.g. --input-size)",
                            v.name
                        )));
                    }
                },
            };
            shape.push(value);
        }
        if let Some(ex) = example_shape
            && inputs.len() == 1
            && ex.len() + 1 == shape.len()
            && ex != &shape[1..]
        {
            return Err(Error::Graph(format!(
                "input `{}` is fixed at {:?}, which contradicts the example shape {ex:?}",
                v.name,
                &shape[1..]
            )));
        }
        out.push((v.name.clone(), shape));
    }
    Ok(out)
}

fn untyped_float_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: DataType::Float as i32,
                shape: None,
            })),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// Runs the forward graph once (zeros at the probe shapes) and returns the shapes of `values`.
fn probe(
    graph: &GraphProto,
    opset: i64,
    inputs: &[(String, Vec<i64>)],
    values: &[String],
    session: &SessionOptions,
) -> Result<HashMap<String, Vec<i64>>> {
    let mut shapes: HashMap<String, Vec<i64>> = inputs.iter().cloned().collect();
    for t in &graph.initializer {
        shapes.insert(t.name.clone(), t.dims.clone());
    }
    let wanted: Vec<&String> = {
        let mut seen = HashSet::new();
        values
            .iter()
            .filter(|v| !v.is_empty() && !shapes.contains_key(*v) && seen.insert(v.as_str()))
            .collect()
    };
    if wanted.is_empty() {
        return Ok(shapes);
    }
    let mut g = graph.clone();
    g.output = wanted.iter().map(|v| untyped_float_output(v)).collect();
    let mut model = ModelProto::with_graph(g, opset);
    model.producer_name = "xfer-autodiff-probe".to_owned();
    let bytes = xfer_onnx::write_model_bytes(&model);
    let mut session_model =
        Model::from_bytes(&bytes, "shape probe", session).map_err(Error::Probe)?;
    let arrays: Vec<(String, ArrayD<f32>)> = inputs
        .iter()
        .map(|(n, s)| {
            let dims: Vec<usize> = s.iter().map(|&d| d.max(0) as usize).collect();
            (n.clone(), ArrayD::<f32>::zeros(IxDyn(&dims)))
        })
        .collect();
    let feeds: Vec<(&str, InputTensor<'_>)> = arrays
        .iter()
        .map(|(n, a)| (n.as_str(), InputTensor::F32(a.view())))
        .collect();
    let outputs = session_model.run(&feeds).map_err(Error::Probe)?;
    for (name, t) in outputs {
        let dims: Vec<i64> = match &t {
            xfer_runtime::OutputTensor::F32(a) => a.shape().iter().map(|&d| d as i64).collect(),
            xfer_runtime::OutputTensor::I64(a) => a.shape().iter().map(|&d| d as i64).collect(),
        };
        shapes.insert(name, dims);
    }
    Ok(shapes)
}

/// Values whose shapes the backward pass of `order` needs.
fn values_of(nodes: &[NodeProto], order: &[usize]) -> Vec<String> {
    let mut v = Vec::new();
    for &i in order {
        v.extend(nodes[i].input.iter().cloned());
        v.extend(nodes[i].output.iter().take(1).cloned());
    }
    v
}

fn declared(shape: &[i64], batch: &Dim) -> Vec<Dim> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 0 { batch.clone() } else { Dim::Fixed(d) })
        .collect()
}

fn spec_shape(shape: &[i64]) -> Vec<i64> {
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if i == 0 { -1 } else { d })
        .collect()
}

fn add_maxpool_indices(b: &mut GraphBuilder, order: &[usize]) {
    for &i in order {
        if b.graph().node[i].op_type == "MaxPool" && b.graph().node[i].output.len() < 2 {
            let name = b.unique(&format!("{}_indices", b.graph().node[i].output[0]));
            b.graph_mut().node[i].output.push(name);
        }
    }
}

fn reserve(b: &mut GraphBuilder, name: &str) -> Result<()> {
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
    check_opset(forward)?;
    let graph = forward
        .graph
        .clone()
        .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))?;
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
    add_maxpool_indices(&mut b, &order);
    let mut statics: HashSet<String> = graph.initializer.iter().map(|t| t.name.clone()).collect();
    for w in wrt {
        if !input_names.contains(w) {
            initializer_to_input(&mut b, w)?;
            statics.insert((*w).to_owned());
        }
    }
    let seed = format!("{output}_grad");
    reserve(&mut b, &seed)?;
    let batch = Dim::Named("batch".to_owned());
    b.input(&seed, &declared(&out_shape, &batch));
    let grad_names: Vec<String> = wrt.iter().map(|w| format!("{w}_grad")).collect();
    for n in &grad_names {
        reserve(&mut b, n)?;
    }
    let nodes = b.graph().node.clone();
    let mut e = Emit::new(b, shapes);
    e.static_values = statics;
    let wanted: Vec<String> = wrt.iter().map(|s| (*s).to_owned()).collect();
    let grads = engine::sweep(
        &mut e,
        &nodes,
        &order,
        &req,
        &[(output.to_owned(), seed)],
        &wanted,
    )?;
    e.b.output(output, &[]);
    if let Some(o) = e.b.graph_mut().output.last_mut() {
        *o = untyped_float_output(output);
    }
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
            e.b.node_named(
                "ConstantOfShape",
                &[&shape],
                &[name],
                vec![attr::tensor(
                    "value",
                    TensorProto::from_f32("value", &[1], &[0.0]),
                )],
            );
        }
    }
    e.b.graph_mut().output.push(untyped_float_output(name));
    Ok(())
}

/// Rewrites `Conv -> BatchNormalization` pairs that train (the conv weight, the BN scale or
/// offset is trainable) into standard ops that fold the BatchNorm into the convolution at run
/// time: `a = scale * inv_std; W' = W * a; b = B - mean * a; y = Conv(x, W', b)`. Same values
/// as the pair, one full-size pass instead of three, and the generic gradients of Mul, Sub,
/// Reshape and Conv give exactly the BatchNorm gradients (dscale = inv_std * (sum(W * dW') -
/// mean * dB)). Only pairs where the conv has no bias, its output feeds only the BN, and the
/// statistics are initializers. Returns the shapes of the new values.
fn fuse_conv_bn(
    b: &mut GraphBuilder,
    trained: &HashSet<String>,
) -> Result<Vec<(String, Vec<i64>)>> {
    let mut new_shapes = Vec::new();
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &b.graph().node {
        for i in &n.input {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &b.graph().output {
        *uses.entry(o.name.clone()).or_default() += 1;
    }
    let mut bi = 0;
    while bi < b.graph().node.len() {
        let bn = b.graph().node[bi].clone();
        bi += 1;
        if bn.op_type != "BatchNormalization"
            || bn.input.len() < 5
            || bn.output.len() != 1
            || bn.attr_int("training_mode", 0) != 0
        {
            continue;
        }
        let Some(ci) = b
            .graph()
            .node
            .iter()
            .position(|n| n.op_type == "Conv" && n.output.first() == Some(&bn.input[0]))
        else {
            continue;
        };
        let conv = b.graph().node[ci].clone();
        let (x, w) = (conv.input[0].clone(), conv.input[1].clone());
        let has_bias = conv.input.get(2).is_some_and(|s| !s.is_empty());
        let (scale, offset, mean, var) = (&bn.input[1], &bn.input[2], &bn.input[3], &bn.input[4]);
        let trains = trained.contains(&w) || trained.contains(scale) || trained.contains(offset);
        let w_dims = b.graph().initializer(&w).map(|t| t.dims.clone());
        let var_values = b.graph().initializer(var).map(TensorProto::to_f32);
        let mean_is_const = b.graph().initializer(mean).is_some();
        let (Some(w_dims), Some(Ok(var_values))) = (w_dims, var_values) else {
            continue;
        };
        if !trains
            || has_bias
            || !mean_is_const
            || uses.get(&conv.output[0]).copied().unwrap_or(0) != 1
            || w_dims.len() != 4
        {
            continue;
        }
        let c = w_dims[0];
        let eps = f64::from(bn.attr_float("epsilon", 1e-5));
        let inv: Vec<f32> = var_values
            .iter()
            .map(|&v| (1.0 / (f64::from(v) + eps).sqrt()) as f32)
            .collect();
        let base = bn.output[0].clone();
        let inv_std = b.constant_f32(&format!("{base}.fold_inv_std"), &[c], &inv);
        let shape4 = b.constant_i64(&format!("{base}.fold_shape"), &[4], &[c, 1, 1, 1]);
        let names: Vec<String> = [
            "fold_a",
            "fold_a4",
            "fold_kernel",
            "fold_mean_a",
            "fold_bias",
        ]
        .iter()
        .map(|s| b.unique(&format!("{base}.{s}")))
        .collect();
        let mk = |op: &str,
                  inputs: &[&str],
                  out: &str,
                  attribute: Vec<xfer_onnx::AttributeProto>| NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.to_owned()],
            name: format!("{out}_node"),
            op_type: op.to_owned(),
            attribute,
            ..Default::default()
        };
        let mut fused_conv = conv.clone();
        fused_conv.input = vec![x, names[2].clone(), names[4].clone()];
        fused_conv.output = vec![base.clone()];
        fused_conv.name = format!("{}_folded", bn.name);
        let replacement = vec![
            mk("Mul", &[scale, &inv_std], &names[0], vec![]),
            mk("Reshape", &[&names[0], &shape4], &names[1], vec![]),
            mk("Mul", &[&w, &names[1]], &names[2], vec![]),
            mk("Mul", &[mean, &names[0]], &names[3], vec![]),
            mk("Sub", &[offset, &names[3]], &names[4], vec![]),
            fused_conv,
        ];
        new_shapes.extend([
            (inv_std.clone(), vec![c]),
            (names[0].clone(), vec![c]),
            (names[1].clone(), vec![c, 1, 1, 1]),
            (names[2].clone(), w_dims.clone()),
            (names[3].clone(), vec![c]),
            (names[4].clone(), vec![c]),
        ]);
        let nodes = &mut b.graph_mut().node;
        let bn_pos = bi - 1;
        let added = replacement.len();
        nodes.splice(bn_pos..bn_pos + 1, replacement);
        nodes.remove(ci);
        bi = bn_pos + added - 1;
    }
    Ok(new_shapes)
}

struct ForwardDropout {
    index: usize,
    input: String,
    output: String,
    rate: f32,
}

fn build(cfg: TrainingGraphBuilder) -> Result<TrainingGraphs> {
    check_opset(&cfg.forward)?;
    let graph = cfg
        .forward
        .graph
        .clone()
        .ok_or_else(|| Error::Graph("the model has no graph".to_owned()))?;
    let inputs = probe_input_shapes(&graph, cfg.example_shape.as_deref())?;
    let [(data_name, data_shape)] = inputs.as_slice() else {
        return Err(Error::Graph(format!(
            "a training graph needs exactly one data input; this model has {}: {:?}",
            inputs.len(),
            inputs.iter().map(|(n, _)| n).collect::<Vec<_>>()
        )));
    };
    let batch = match data_inputs(&graph)
        .first()
        .and_then(|v| v.dims())
        .and_then(|d| d.first().cloned())
    {
        Some(Dim::Fixed(n)) if n > 0 => Dim::Fixed(n),
        _ => Dim::Named("batch".to_owned()),
    };
    let features = match &cfg.features {
        Some(f) => f.clone(),
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

    // Parameters and the trainable selection.
    let candidates = parameter_candidates(&graph);
    let dense = match cfg.head {
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
    let trained: Vec<String> = select(&cfg.trainable, &candidates, &head_params)?;
    if trained.is_empty() {
        return Err(Error::Selection(
            "nothing is trainable with this head and selection".to_owned(),
        ));
    }
    let trained_set: HashSet<String> = trained.iter().cloned().collect();

    // The training forward: Dropout -> Mul(mask), head, loss.
    let mut b = GraphBuilder::from_graph(graph.clone());
    b.graph_mut().output.clear();
    let mut dropouts = Vec::new();
    for (index, n) in graph.node.iter().enumerate() {
        if n.op_type == "Dropout" {
            if n.output.len() > 1 && !n.output[1].is_empty() {
                return Err(crate::emit::unsupported(
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
                        crate::emit::unsupported(
                            n,
                            "the dropout ratio must be a constant initializer",
                        )
                    })?,
                None => 0.5,
            };
            dropouts.push(ForwardDropout {
                index,
                input: n.input[0].clone(),
                output: n.output[0].clone(),
                rate,
            });
        }
    }
    let original_values: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .chain(graph.input.iter().map(|v| v.name.clone()))
        .collect();
    let mut mask_names = Vec::new();
    for d in &dropouts {
        let mask = b.unique(&format!("{}_mask", d.output));
        let node = &mut b.graph_mut().node[d.index];
        node.op_type = "Mul".to_owned();
        node.attribute.clear();
        node.input = vec![d.input.clone(), mask.clone()];
        node.output.truncate(1);
        mask_names.push(mask);
    }
    let folded_shapes = if cfg.fold_batch_norm {
        fuse_conv_bn(&mut b, &trained_set)?
    } else {
        Vec::new()
    };
    let forward_len = b.graph().node.len();
    for n in ["logits", "loss", "labels"] {
        reserve(&mut b, n)?;
    }
    for p in &trained {
        reserve(&mut b, &format!("{p}_grad"))?;
    }
    let mut head_mask = None;
    let logits = "logits".to_owned();
    if let Some((_, rate)) = dense {
        let mut h = features.clone();
        if rate > 0.0 {
            reserve(&mut b, HEAD_MASK)?;
            let out = b.unique("head.dropout");
            b.node_named("Mul", &[&features, HEAD_MASK], &[&out], vec![]);
            head_mask = Some((HEAD_MASK.to_owned(), rate));
            h = out;
        }
        let mm = b.unique("head.matmul");
        b.node_named("MatMul", &[&h, HEAD_KERNEL], &[&mm], vec![]);
        b.node_named("Add", &[&mm, HEAD_BIAS], &[&logits], vec![]);
    } else {
        b.node_named("Identity", &[&features], &[&logits], vec![]);
    }

    // What needs a backward pass.
    let nodes = b.graph().node.clone();
    let req = engine::requires_grad(&nodes, &trained_set);
    let needed = engine::reaches(&nodes, &[&logits]);
    let order = engine::backward_nodes(&nodes, &req, &needed)?;
    let forward_order: Vec<usize> = order.iter().copied().filter(|&i| i < forward_len).collect();
    let mut want: Vec<String> = values_of(&nodes, &forward_order)
        .into_iter()
        .filter(|v| original_values.contains(v))
        .collect();
    want.push(features.clone());
    want.extend(dropouts.iter().map(|d| d.input.clone()));
    let mut shapes = probe(&graph, cfg.forward.opset(), &inputs, &want, &cfg.session)?;
    shapes.extend(folded_shapes);
    let feat_shape = shapes
        .get(&features)
        .cloned()
        .ok_or_else(|| Error::Graph(format!("could not measure the shape of `{features}`")))?;
    for (d, m) in dropouts.iter().zip(&mask_names) {
        if let Some(s) = shapes.get(&d.input).cloned() {
            shapes.insert(d.output.clone(), s.clone());
            shapes.insert(m.clone(), s);
        }
    }
    let units = match dense {
        Some((units, _)) => units as i64,
        None => *feat_shape.last().unwrap_or(&0),
    };
    if feat_shape.len() != 2 {
        return Err(Error::Graph(format!(
            "`{features}` has shape {feat_shape:?}; the head needs [batch, features] (use the pooled output)"
        )));
    }
    let dim = feat_shape[1];
    if cfg.loss == Loss::BinaryCrossEntropyWithLogits && units != 1 {
        return Err(Error::Graph(format!(
            "binary cross-entropy needs one logit per example; the logits have {units} (use dense:1 or --loss softmax)"
        )));
    }
    let pb = PROBE_BATCH;
    shapes.insert(logits.clone(), vec![pb, units]);
    let mut head_values: HashMap<String, Vec<f32>> = HashMap::new();
    if dense.is_some() {
        shapes.insert(HEAD_KERNEL.to_owned(), vec![dim, units]);
        shapes.insert(HEAD_BIAS.to_owned(), vec![units]);
        shapes.insert("head.matmul".to_owned(), vec![pb, units]);
        shapes.insert("head.dropout".to_owned(), vec![pb, dim]);
        shapes.insert(HEAD_MASK.to_owned(), vec![pb, dim]);
        head_values.insert(
            HEAD_KERNEL.to_owned(),
            glorot_uniform(dim as usize, units as usize, cfg.seed),
        );
        head_values.insert(HEAD_BIAS.to_owned(), vec![0.0; units as usize]);
    }

    // Inputs: data (already there), labels, masks, parameters.
    add_maxpool_indices(&mut b, &forward_order);
    {
        let g = b.graph_mut();
        if let Some(v) = g.input.iter_mut().find(|v| &v.name == data_name) {
            *v = ValueInfoProto::tensor(
                data_name.clone(),
                DataType::Float,
                &declared(data_shape, &batch),
            );
        }
    }
    let labels_spec = match cfg.loss {
        Loss::BinaryCrossEntropyWithLogits => {
            b.input_typed("labels", DataType::Float, std::slice::from_ref(&batch));
            "float32"
        }
        Loss::SoftmaxCrossEntropy => {
            b.input_typed("labels", DataType::Int64, std::slice::from_ref(&batch));
            "int64"
        }
    };
    let mut masks = Vec::new();
    for (k, (d, m)) in dropouts.iter().zip(&mask_names).enumerate() {
        let s = shapes.get(m).cloned().unwrap_or_default();
        b.input(m, &declared(&s, &batch));
        masks.push(MaskSpec {
            name: m.clone(),
            shape: spec_shape(&s),
            rate: d.rate,
            stream: k as u64 + 1,
        });
    }
    if let Some((name, rate)) = &head_mask {
        b.input(name, &declared(&[pb, dim], &batch));
        masks.push(MaskSpec {
            name: name.clone(),
            shape: vec![-1, dim],
            rate: *rate,
            stream: 0,
        });
    }
    let mut params = Vec::new();
    for p in &trained {
        if let Some(values) = head_values.get(p) {
            let shape = shapes.get(p).cloned().unwrap_or_default();
            b.input(p, &shape.iter().map(|&d| Dim::Fixed(d)).collect::<Vec<_>>());
            params.push(Parameter {
                name: p.clone(),
                shape: shape.iter().map(|&d| d as usize).collect(),
                data: values.clone(),
            });
        } else {
            params.push(initializer_to_input(&mut b, p)?);
        }
    }
    for p in &head_params {
        if !trained_set.contains(p) {
            let shape = shapes.get(p).cloned().unwrap_or_default();
            b.initializer(TensorProto::from_f32(p.clone(), &shape, &head_values[p]));
        }
    }

    // Loss and its gradient with respect to the logits.
    let nodes = b.graph().node.clone();
    let mut e = Emit::new(b, shapes);
    e.static_values = graph.initializer.iter().map(|t| t.name.clone()).collect();
    e.static_values.extend(head_params.iter().cloned());
    let dlogits = emit_loss(&mut e, cfg.loss, &logits, units)?;
    let grads = engine::sweep(
        &mut e,
        &nodes,
        &order,
        &req,
        &[(logits.clone(), dlogits)],
        &trained,
    )?;
    e.b.graph_mut()
        .output
        .push(ValueInfoProto::tensor("loss", DataType::Float, &[]));
    e.b.output(&logits, &[batch.clone(), Dim::Fixed(units)]);
    for p in &trained {
        emit_grad_output(
            &mut e,
            p,
            &format!("{p}_grad"),
            grads.get(p).cloned().flatten(),
        )?;
    }
    let mut training = ModelProto::with_graph(e.b.build(), xfer_onnx::DEFAULT_OPSET);
    training.producer_name = "xfer-autodiff".to_owned();
    training.set_metadata("xfer.graph", "training");
    training.set_metadata("xfer.loss", &cfg.loss.to_string());

    let eval = build_eval(
        &graph,
        &features,
        dense.is_some(),
        &head_values,
        dim,
        units,
        &batch,
    )?;

    let spec = GraphSpec {
        data_input: TensorSpec {
            name: data_name.clone(),
            dtype: "float32".to_owned(),
            shape: spec_shape(data_shape),
        },
        labels: TensorSpec {
            name: "labels".to_owned(),
            dtype: labels_spec.to_owned(),
            shape: vec![-1],
        },
        dropout_masks: masks,
        parameters: params
            .iter()
            .map(|p| TensorSpec {
                name: p.name.clone(),
                dtype: "float32".to_owned(),
                shape: p.shape.iter().map(|&d| d as i64).collect(),
            })
            .collect(),
        frozen_parameters: candidates.len() + head_params.len() - params.len(),
        training_outputs: std::iter::once(TensorSpec {
            name: "loss".to_owned(),
            dtype: "float32".to_owned(),
            shape: vec![],
        })
        .chain(std::iter::once(TensorSpec {
            name: logits.clone(),
            dtype: "float32".to_owned(),
            shape: vec![-1, units],
        }))
        .chain(params.iter().map(|p| TensorSpec {
            name: format!("{}_grad", p.name),
            dtype: "float32".to_owned(),
            shape: p.shape.iter().map(|&d| d as i64).collect(),
        }))
        .collect(),
        eval_outputs: vec![TensorSpec {
            name: logits,
            dtype: "float32".to_owned(),
            shape: vec![-1, units],
        }],
        loss: cfg.loss,
        head: cfg.head.clone(),
        features,
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
    };
    Ok(TrainingGraphs {
        training,
        eval,
        params,
        spec,
    })
}

fn select(trainable: &Trainable, candidates: &[String], head: &[String]) -> Result<Vec<String>> {
    Ok(match trainable {
        Trainable::All => candidates.iter().chain(head).cloned().collect(),
        Trainable::Head => head.to_vec(),
        Trainable::From(layer) => {
            let Some(start) = candidates.iter().position(|c| layer_of(c) == layer) else {
                let mut layers: Vec<&str> = Vec::new();
                for c in candidates {
                    if layers.last() != Some(&layer_of(c)) {
                        layers.push(layer_of(c));
                    }
                }
                let shown: Vec<&str> = layers.iter().take(12).copied().collect();
                return Err(Error::Selection(format!(
                    "no layer `{layer}` among the {} layers with parameters (first ones: {}{})",
                    layers.len(),
                    shown.join(", "),
                    if layers.len() > 12 { ", ..." } else { "" }
                )));
            };
            candidates[start..].iter().chain(head).cloned().collect()
        }
        Trainable::Names(names) => {
            let all: Vec<&String> = candidates.iter().chain(head).collect();
            for n in names {
                if !all.contains(&n) {
                    return Err(Error::Selection(format!(
                        "`{n}` is not a parameter (expected an initializer used as a weight, bias or BatchNorm scale/offset, or head.kernel/head.bias)"
                    )));
                }
            }
            all.into_iter()
                .filter(|c| names.contains(*c))
                .cloned()
                .collect()
        }
    })
}

/// Emits the loss (output `loss`) and returns the gradient of the loss with respect to `logits`.
fn emit_loss(e: &mut Emit, loss: Loss, logits: &str, units: i64) -> Result<String> {
    match loss {
        Loss::BinaryCrossEntropyWithLogits => {
            // loss_i = max(z, 0) - z*y + log(1 + exp(-|z|)); dL/dz = (sigmoid(z) - y) / N
            let z = e.reshape(logits, &[-1]);
            let relu = e.op("Relu", &[&z], vec![]);
            let zy = e.op("Mul", &[&z, "labels"], vec![]);
            let abs = e.op("Abs", &[&z], vec![]);
            let neg = e.op("Neg", &[&abs], vec![]);
            let sp = e.op("Softplus", &[&neg], vec![]);
            let d = e.op("Sub", &[&relu, &zy], vec![]);
            let per = e.op("Add", &[&d, &sp], vec![]);
            e.b.node_named(
                "ReduceMean",
                &[&per],
                &["loss"],
                vec![attr::int("keepdims", 0)],
            );
            let sig = e.op("Sigmoid", &[&z], vec![]);
            let diff = e.op("Sub", &[&sig, "labels"], vec![]);
            let n = e.op("Size", &[&z], vec![]);
            let nf = e.cast_f32(&n);
            let dz = e.op("Div", &[&diff, &nf], vec![]);
            Ok(e.reshape(&dz, &[-1, 1]))
        }
        Loss::SoftmaxCrossEntropy => {
            // loss = -mean(log_softmax(z)[label]); dL/dz = (softmax(z) - onehot) / N
            let logp = e.op("LogSoftmax", &[logits], vec![attr::int("axis", 1)]);
            let axis1 = e.i64s(&[1]);
            let lab = e.op("Unsqueeze", &["labels", &axis1], vec![]);
            let picked = e.op("GatherElements", &[&logp, &lab], vec![attr::int("axis", 1)]);
            let mean = e.op("ReduceMean", &[&picked], vec![attr::int("keepdims", 0)]);
            e.b.node_named("Neg", &[&mean], &["loss"], vec![]);
            let p = e.op("Exp", &[&logp], vec![]);
            let classes: Vec<i64> = (0..units).collect();
            let cls = e.b.constant_i64("classes", &[1, units], &classes);
            let eq = e.op("Equal", &[&cls, &lab], vec![]);
            let onehot = e.cast_f32(&eq);
            let d = e.op("Sub", &[&p, &onehot], vec![]);
            let n = e.op("Size", &["labels"], vec![]);
            let nf = e.cast_f32(&n);
            Ok(e.op("Div", &[&d, &nf], vec![]))
        }
    }
}

fn build_eval(
    graph: &GraphProto,
    features: &str,
    dense: bool,
    head_values: &HashMap<String, Vec<f32>>,
    dim: i64,
    units: i64,
    batch: &Dim,
) -> Result<ModelProto> {
    let mut g = graph.clone();
    for n in &mut g.node {
        if n.op_type == "Dropout" {
            n.op_type = "Identity".to_owned();
            n.attribute.clear();
            n.input.truncate(1);
            n.output.truncate(1);
        }
    }
    g.output.clear();
    let mut b = GraphBuilder::from_graph(g);
    reserve(&mut b, "logits")?;
    if dense {
        b.initializer(TensorProto::from_f32(
            HEAD_KERNEL,
            &[dim, units],
            &head_values[HEAD_KERNEL],
        ));
        b.initializer(TensorProto::from_f32(
            HEAD_BIAS,
            &[units],
            &head_values[HEAD_BIAS],
        ));
        let mm = b.unique("head.matmul");
        b.node_named("MatMul", &[features, HEAD_KERNEL], &[&mm], vec![]);
        b.node_named("Add", &[&mm, HEAD_BIAS], &["logits"], vec![]);
    } else {
        b.node_named("Identity", &[features], &["logits"], vec![]);
    }
    b.output("logits", &[batch.clone(), Dim::Fixed(units)]);
    let mut model = ModelProto::with_graph(b.build(), xfer_onnx::DEFAULT_OPSET);
    model.producer_name = "xfer-autodiff".to_owned();
    model.set_metadata("xfer.graph", "eval");
    Ok(model)
}

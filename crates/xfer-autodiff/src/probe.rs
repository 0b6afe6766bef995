//! Measuring shapes: one forward run in ONNX Runtime at the probe batch, with the values whose
//! shapes the backward pass needs declared as extra graph outputs of their real element type.

use std::collections::{HashMap, HashSet};

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{
    AttributeProto, DataType, Dim, GraphProto, ModelProto, NodeProto, TypeProto, ValueInfoProto,
    type_proto,
};
use xfer_runtime::{InputTensor, Model, OutputTensor, SessionOptions};

use crate::{Error, PROBE_BATCH, Result};

/// The graph inputs that are not initializers.
pub(crate) fn data_inputs(graph: &GraphProto) -> Vec<&ValueInfoProto> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .filter(|v| !inits.contains(v.name.as_str()))
        .collect()
}

/// Concrete probe shapes of the graph's data inputs.
pub(crate) fn probe_input_shapes(
    graph: &GraphProto,
    example_shape: Option<&[i64]>,
) -> Result<Vec<(String, Vec<i64>)>> {
    let inputs = data_inputs(graph);
    let single = inputs.len() == 1;
    inputs
        .iter()
        .map(|v| Ok((v.name.clone(), input_shape(v, example_shape, single)?)))
        .collect()
}

/// The probe shape of one data input: fixed dims as declared, the batch at [`PROBE_BATCH`], other
/// symbolic dims from the example shape (only when the graph has a single data input).
fn input_shape(v: &ValueInfoProto, example: Option<&[i64]>, single: bool) -> Result<Vec<i64>> {
    let dims = v
        .dims()
        .ok_or_else(|| Error::Graph(format!("input `{}` declares no shape", v.name)))?;
    let example = example.filter(|ex| single && ex.len() + 1 == dims.len());
    let mut shape = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        let value = match (d, i, example) {
            (Dim::Fixed(n), _, _) if *n > 0 => *n,
            (_, 0, _) => PROBE_BATCH,
            (_, _, Some(ex)) => ex[i - 1],
            _ => {
                return Err(Error::Graph(format!(
                    "input `{}` has a symbolic dimension {i} ({d:?}); give the example shape (e.g. --input-size)",
                    v.name
                )));
            }
        };
        shape.push(value);
    }
    if let Some(ex) = example
        && ex != &shape[1..]
    {
        return Err(Error::Graph(format!(
            "input `{}` is fixed at {:?}, which contradicts the example shape {ex:?}",
            v.name,
            &shape[1..]
        )));
    }
    Ok(shape)
}

/// A graph output of element type `elem` with no declared shape.
pub(crate) fn unshaped_output(name: &str, elem: DataType) -> ValueInfoProto {
    let mut v = ValueInfoProto::tensor(name, elem, &[]);
    if let Some(TypeProto {
        value: Some(type_proto::Value::TensorType(t)),
        ..
    }) = &mut v.r#type
    {
        t.shape = None;
    }
    v
}

/// The element type a value is declared with (graph inputs, outputs, value_info, initializers).
fn declared_types(graph: &GraphProto) -> HashMap<String, i32> {
    let mut types: HashMap<String, i32> = graph
        .initializer
        .iter()
        .map(|t| (t.name.clone(), t.data_type))
        .collect();
    for v in graph
        .input
        .iter()
        .chain(&graph.value_info)
        .chain(&graph.output)
    {
        if let Some(TypeProto {
            value: Some(type_proto::Value::TensorType(t)),
            ..
        }) = &v.r#type
            && t.elem_type != DataType::Undefined as i32
        {
            types.entry(v.name.clone()).or_insert(t.elem_type);
        }
    }
    types
}

/// The element type of a tensor-valued attribute (Constant, ConstantOfShape).
fn attribute_type(a: &AttributeProto) -> Option<i32> {
    match a.name.as_str() {
        "value" => a.t.as_ref().map(|t| t.data_type),
        "value_int" | "value_ints" => Some(DataType::Int64 as i32),
        "value_float" | "value_floats" => Some(DataType::Float as i32),
        _ => None,
    }
}

/// The element type of output `k` of `node`, from its op and the types of its inputs.
fn output_type(node: &NodeProto, k: usize, types: &HashMap<String, i32>) -> Option<i32> {
    let int64 = Some(DataType::Int64 as i32);
    let boolean = Some(DataType::Bool as i32);
    let first_input = || node.input.iter().find_map(|i| types.get(i).copied());
    match (node.op_type.as_str(), k) {
        ("Shape" | "Size" | "NonZero" | "ArgMax" | "ArgMin", _) => int64,
        ("MaxPool" | "TopK", 1) => int64,
        ("Dropout", 1) => boolean,
        (
            "Equal" | "Greater" | "GreaterOrEqual" | "Less" | "LessOrEqual" | "Not" | "And" | "Or"
            | "Xor" | "IsNaN" | "IsInf",
            _,
        ) => boolean,
        ("Cast", _) => node
            .attribute
            .iter()
            .find(|a| a.name == "to")
            .map(|a| a.i as i32),
        ("CastLike", _) => node.input.get(1).and_then(|i| types.get(i).copied()),
        ("Constant", _) => node.attribute.iter().find_map(attribute_type),
        ("ConstantOfShape", _) => Some(
            node.attribute
                .iter()
                .find_map(attribute_type)
                .unwrap_or(DataType::Float as i32),
        ),
        _ => first_input(),
    }
}

/// The element type of every value whose type is declared or follows from its producer.
pub(crate) fn element_types(graph: &GraphProto) -> HashMap<String, i32> {
    let mut types = declared_types(graph);
    for node in &graph.node {
        for (k, o) in node.output.iter().enumerate() {
            if o.is_empty() || types.contains_key(o) {
                continue;
            }
            if let Some(t) = output_type(node, k, &types) {
                types.insert(o.clone(), t);
            }
        }
    }
    types
}

/// Runs the forward graph once (zeros at the probe shapes) and returns the shapes of `values`
/// (and of the inputs and initializers). Values are declared as outputs of their element type;
/// those neither float nor int64 are not measured (no backward formula reads their shapes).
pub(crate) fn probe(
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
    let types = element_types(graph);
    let measurable = |v: &str| {
        let t = types.get(v).copied().unwrap_or(DataType::Float as i32);
        (t == DataType::Float as i32 || t == DataType::Int64 as i32).then_some(t)
    };
    let mut seen = HashSet::new();
    let outputs: Vec<ValueInfoProto> = values
        .iter()
        .filter(|v| !v.is_empty() && !shapes.contains_key(*v) && seen.insert(v.as_str()))
        .filter_map(|v| {
            let t = measurable(v)?;
            let elem = if t == DataType::Int64 as i32 {
                DataType::Int64
            } else {
                DataType::Float
            };
            Some(unshaped_output(v, elem))
        })
        .collect();
    if outputs.is_empty() {
        return Ok(shapes);
    }
    let mut g = graph.clone();
    g.output = outputs;
    let mut model = ModelProto::with_graph(g, opset);
    model.producer_name = "xfer-autodiff-probe".to_owned();
    shapes.extend(run_zeros(&model, inputs, session)?);
    Ok(shapes)
}

/// Runs `model` on zeros of the given input shapes; returns the shapes of its outputs.
fn run_zeros(
    model: &ModelProto,
    inputs: &[(String, Vec<i64>)],
    session: &SessionOptions,
) -> Result<Vec<(String, Vec<i64>)>> {
    let bytes = xfer_onnx::write_model_bytes(model);
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
    Ok(outputs
        .into_iter()
        .map(|(name, t)| {
            let dims = match &t {
                OutputTensor::F32(a) => a.shape().iter().map(|&d| d as i64).collect(),
                OutputTensor::I64(a) => a.shape().iter().map(|&d| d as i64).collect(),
            };
            (name, dims)
        })
        .collect())
}

/// Values whose shapes the backward pass of `order` needs: the inputs and first output of
/// each node.
pub(crate) fn values_of(nodes: &[NodeProto], order: &[usize]) -> Vec<String> {
    let mut v = Vec::new();
    for n in order.iter().filter_map(|&i| nodes.get(i)) {
        v.extend(n.input.iter().cloned());
        v.extend(n.output.iter().take(1).cloned());
    }
    v
}

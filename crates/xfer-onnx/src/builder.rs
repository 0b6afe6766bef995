//! A small builder for ONNX graphs and models.

use std::collections::HashSet;

use crate::proto::{tensor_shape_proto, type_proto};
use crate::{
    AttributeProto, AttributeType, DataType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

/// One dimension of a graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A symbolic (dynamic) size, e.g. `batch`.
    Named(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Named(v.to_owned())
    }
}

impl ValueInfoProto {
    /// A tensor value of element type `elem` and shape `dims`.
    pub fn tensor(name: impl Into<String>, elem: DataType, dims: &[Dim]) -> Self {
        let dim = dims
            .iter()
            .map(|d| tensor_shape_proto::Dimension {
                value: Some(match d {
                    Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                    Dim::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
                }),
                denotation: String::new(),
            })
            .collect();
        ValueInfoProto {
            name: name.into(),
            r#type: Some(TypeProto {
                value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                    elem_type: elem as i32,
                    shape: Some(TensorShapeProto { dim }),
                })),
                denotation: String::new(),
            }),
            doc_string: String::new(),
            ..Default::default()
        }
    }

    /// The dimensions of a tensor value, if declared.
    pub fn dims(&self) -> Option<Vec<Dim>> {
        let Some(TypeProto {
            value: Some(type_proto::Value::TensorType(t)),
            ..
        }) = &self.r#type
        else {
            return None;
        };
        let shape = t.shape.as_ref()?;
        Some(
            shape
                .dim
                .iter()
                .map(|d| match &d.value {
                    Some(tensor_shape_proto::dimension::Value::DimValue(v)) => Dim::Fixed(*v),
                    Some(tensor_shape_proto::dimension::Value::DimParam(s)) => {
                        Dim::Named(s.clone())
                    }
                    None => Dim::Named(String::new()),
                })
                .collect(),
        )
    }
}

/// Constructors for node attributes.
pub mod attr {
    use super::*;

    fn base(name: &str, ty: AttributeType) -> AttributeProto {
        AttributeProto {
            name: name.to_owned(),
            r#type: ty as i32,
            ..Default::default()
        }
    }

    /// An integer attribute.
    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto {
            i: v,
            ..base(name, AttributeType::Int)
        }
    }

    /// A list-of-integers attribute.
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto {
            ints: v.to_vec(),
            ..base(name, AttributeType::Ints)
        }
    }

    /// A float attribute.
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto {
            f: v,
            ..base(name, AttributeType::Float)
        }
    }

    /// A list-of-floats attribute.
    pub fn floats(name: &str, v: &[f32]) -> AttributeProto {
        AttributeProto {
            floats: v.to_vec(),
            ..base(name, AttributeType::Floats)
        }
    }

    /// A string attribute.
    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            s: v.as_bytes().to_vec(),
            ..base(name, AttributeType::String)
        }
    }

    /// A tensor attribute (e.g. `Constant`'s `value`).
    pub fn tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto {
            t: Some(t),
            ..base(name, AttributeType::Tensor)
        }
    }
}

impl NodeProto {
    /// The attribute called `name`, if present.
    pub fn attribute(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }

    /// An integer attribute, or `default`.
    pub fn attr_int(&self, name: &str, default: i64) -> i64 {
        self.attribute(name).map_or(default, |a| a.i)
    }

    /// A float attribute, or `default`.
    pub fn attr_float(&self, name: &str, default: f32) -> f32 {
        self.attribute(name).map_or(default, |a| a.f)
    }

    /// A list-of-integers attribute, if present.
    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attribute(name).map(|a| a.ints.as_slice())
    }

    /// A string attribute, if present (lossy UTF-8).
    pub fn attr_string(&self, name: &str) -> Option<String> {
        self.attribute(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
}

impl GraphProto {
    /// The initializer called `name`, if any.
    pub fn initializer(&self, name: &str) -> Option<&TensorProto> {
        self.initializer.iter().find(|t| t.name == name)
    }
}

impl ModelProto {
    /// A model around `graph`, importing the default ONNX domain at `opset`.
    pub fn with_graph(graph: GraphProto, opset: i64) -> Self {
        ModelProto {
            ir_version: crate::IR_VERSION,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            producer_name: "xfer".to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            graph: Some(graph),
            ..Default::default()
        }
    }

    /// Sets (or replaces) a metadata property.
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        self.metadata_props.retain(|p| p.key != key);
        self.metadata_props.push(StringStringEntryProto {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }

    /// A metadata property, if present.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata_props
            .iter()
            .find(|p| p.key == key)
            .map(|p| p.value.as_str())
    }

    /// The default-domain opset version this model imports (0 if none).
    pub fn opset(&self) -> i64 {
        self.opset_import
            .iter()
            .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
            .map_or(0, |o| o.version)
    }
}

/// Builds a [`GraphProto`] node by node, handing out unique value names.
#[derive(Debug, Default, Clone)]
pub struct GraphBuilder {
    graph: GraphProto,
    used: HashSet<String>,
}

impl GraphBuilder {
    /// An empty graph called `name`.
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: name.to_owned(),
                ..Default::default()
            },
            used: HashSet::new(),
        }
    }

    /// Continues building on an existing graph.
    pub fn from_graph(graph: GraphProto) -> Self {
        let mut used = HashSet::new();
        for n in &graph.node {
            used.extend(n.output.iter().cloned());
            used.insert(n.name.clone());
        }
        used.extend(graph.input.iter().map(|v| v.name.clone()));
        used.extend(graph.initializer.iter().map(|t| t.name.clone()));
        GraphBuilder { graph, used }
    }

    /// A fresh value or node name starting with `prefix`.
    pub fn unique(&mut self, prefix: &str) -> String {
        if self.used.insert(prefix.to_owned()) {
            return prefix.to_owned();
        }
        let mut i = 1usize;
        loop {
            let name = format!("{prefix}_{i}");
            if self.used.insert(name.clone()) {
                return name;
            }
            i += 1;
        }
    }

    /// Declares a float32 graph input.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.input_typed(name, DataType::Float, dims)
    }

    /// Declares a graph input of element type `elem`.
    pub fn input_typed(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> String {
        self.used.insert(name.to_owned());
        self.graph
            .input
            .push(ValueInfoProto::tensor(name, elem, dims));
        name.to_owned()
    }

    /// Declares a float32 graph output.
    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.output_typed(name, DataType::Float, dims);
    }

    /// Declares a graph output of element type `elem`.
    pub fn output_typed(&mut self, name: &str, elem: DataType, dims: &[Dim]) {
        self.graph
            .output
            .push(ValueInfoProto::tensor(name, elem, dims));
    }

    /// Adds an initializer and returns its name.
    pub fn initializer(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        self.used.insert(name.clone());
        self.graph.initializer.push(tensor);
        name
    }

    /// Adds a float32 initializer with a unique name derived from `name`.
    pub fn constant_f32(&mut self, name: &str, dims: &[i64], data: &[f32]) -> String {
        let name = self.unique(name);
        self.initializer(TensorProto::from_f32(name, dims, data))
    }

    /// Adds an int64 initializer with a unique name derived from `name`.
    pub fn constant_i64(&mut self, name: &str, dims: &[i64], data: &[i64]) -> String {
        let name = self.unique(name);
        self.initializer(TensorProto::from_i64(name, dims, data))
    }

    /// Adds a node with explicit output names.
    pub fn node_named(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> &mut NodeProto {
        let name = self.unique(&format!(
            "{}_{}",
            op_type,
            outputs.first().copied().unwrap_or("node")
        ));
        for o in outputs {
            self.used.insert((*o).to_owned());
        }
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: outputs.iter().map(|s| (*s).to_owned()).collect(),
            name,
            op_type: op_type.to_owned(),
            attribute: attributes,
            ..Default::default()
        });
        let last = self.graph.node.len() - 1;
        &mut self.graph.node[last]
    }

    /// Adds a single-output node whose output gets a fresh name from `hint`; returns that name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
        hint: &str,
    ) -> String {
        let out = self.unique(hint);
        self.node_named(op_type, inputs, &[&out], attributes);
        out
    }

    /// The graph built so far.
    pub fn graph(&self) -> &GraphProto {
        &self.graph
    }

    /// Mutable access to the graph built so far.
    pub fn graph_mut(&mut self) -> &mut GraphProto {
        &mut self.graph
    }

    /// Finishes the graph.
    pub fn build(self) -> GraphProto {
        self.graph
    }

    /// Finishes the graph and wraps it in a model at the default opset.
    pub fn build_model(self) -> ModelProto {
        ModelProto::with_graph(self.graph, crate::DEFAULT_OPSET)
    }
}

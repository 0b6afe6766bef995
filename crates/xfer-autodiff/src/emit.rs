//! A thin layer over [`GraphBuilder`] for emitting backward nodes: cached
//! constants, shapes of values, and short helpers for common ops.

use std::collections::HashMap;

use xfer_onnx::{AttributeProto, GraphBuilder, NodeProto, TensorProto, attr};

use crate::{Error, Result};

/// Emits nodes and knows the (probed) shapes of forward values.
pub(crate) struct Emit {
    /// The graph being built.
    pub b: GraphBuilder,
    /// Shapes of forward values at the probe batch.
    pub shapes: HashMap<String, Vec<i64>>,
    /// Values whose shape has no batch dimension (parameters, constants).
    pub static_values: std::collections::HashSet<String>,
    consts_i64: HashMap<Vec<i64>, String>,
    consts_f32: HashMap<u32, String>,
    shape_ops: HashMap<String, String>,
}

impl Emit {
    /// Wraps a builder.
    pub fn new(b: GraphBuilder, shapes: HashMap<String, Vec<i64>>) -> Self {
        Emit {
            b,
            shapes,
            static_values: Default::default(),
            consts_i64: HashMap::new(),
            consts_f32: HashMap::new(),
            shape_ops: HashMap::new(),
        }
    }

    /// The probed shape of a value.
    pub fn shape(&self, node: &NodeProto, value: &str) -> Result<Vec<i64>> {
        self.shapes
            .get(value)
            .cloned()
            .ok_or_else(|| Error::Unsupported {
                node: node_label(node),
                op_type: node.op_type.clone(),
                reason: format!("the shape of `{value}` is unknown (internal: not probed)"),
            })
    }

    /// Adds a single-output node.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attributes: Vec<AttributeProto>,
    ) -> String {
        let hint = format!("grad_{}", op_type.to_ascii_lowercase());
        self.b.op(op_type, inputs, attributes, &hint)
    }

    /// A 1-D int64 constant.
    pub fn i64s(&mut self, values: &[i64]) -> String {
        if let Some(name) = self.consts_i64.get(values) {
            return name.clone();
        }
        let name = self
            .b
            .constant_i64("grad_const_i64", &[values.len() as i64], values);
        self.consts_i64.insert(values.to_vec(), name.clone());
        name
    }

    /// A float32 scalar constant.
    pub fn scalar(&mut self, value: f32) -> String {
        if let Some(name) = self.consts_f32.get(&value.to_bits()) {
            return name.clone();
        }
        let name = self.b.constant_f32("grad_const_f32", &[], &[value]);
        self.consts_f32.insert(value.to_bits(), name.clone());
        name
    }

    /// A float32 constant of any shape.
    pub fn constant(&mut self, hint: &str, dims: &[i64], data: &[f32]) -> String {
        let name = self.b.unique(hint);
        self.b.initializer(TensorProto::from_f32(name, dims, data))
    }

    /// `Shape(x)`, emitted once per value.
    pub fn shape_of(&mut self, x: &str) -> String {
        if let Some(s) = self.shape_ops.get(x) {
            return s.clone();
        }
        let s = self.op("Shape", &[x], vec![]);
        self.shape_ops.insert(x.to_owned(), s.clone());
        s
    }

    /// `Reshape(x, shape_of(like))`, or to a constant shape when `like` is static.
    pub fn reshape_like(&mut self, x: &str, like: &str) -> String {
        let target = match (self.static_values.contains(like), self.shapes.get(like)) {
            (true, Some(dims)) => {
                let dims = dims.clone();
                self.i64s(&dims)
            }
            _ => self.shape_of(like),
        };
        self.op("Reshape", &[x, &target], vec![])
    }

    /// `Reshape(x, dims)` with constant dims.
    pub fn reshape(&mut self, x: &str, dims: &[i64]) -> String {
        let shape = self.i64s(dims);
        self.op("Reshape", &[x, &shape], vec![])
    }

    /// `Transpose(x, perm)`.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr::ints("perm", perm)])
    }

    /// `ReduceSum(x, axes)`.
    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let axes = self.i64s(axes);
        self.op(
            "ReduceSum",
            &[x, &axes],
            vec![attr::int("keepdims", i64::from(keepdims))],
        )
    }

    /// `Slice(x, starts, ends, axes, steps)`.
    pub fn slice(
        &mut self,
        x: &str,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: &[i64],
    ) -> String {
        let s = self.i64s(starts);
        let e = self.i64s(ends);
        let a = self.i64s(axes);
        let st = self.i64s(steps);
        self.op("Slice", &[x, &s, &e, &a, &st], vec![])
    }

    /// `Cast(x, to=float)`.
    pub fn cast_f32(&mut self, x: &str) -> String {
        self.op(
            "Cast",
            &[x],
            vec![attr::int("to", xfer_onnx::DataType::Float as i64)],
        )
    }

    /// Sums gradient contributions (one `Sum` node, or the value itself).
    pub fn sum(&mut self, parts: &[String]) -> String {
        match parts {
            [one] => one.clone(),
            _ => {
                let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
                self.op("Sum", &refs, vec![])
            }
        }
    }

    /// Sums `g` (shaped like `out_shape`) down to the shape of `x` (numpy broadcasting).
    pub fn unbroadcast(&mut self, g: &str, out_shape: &[i64], x: &str, x_shape: &[i64]) -> String {
        if out_shape == x_shape {
            return g.to_owned();
        }
        let lead = out_shape.len().saturating_sub(x_shape.len());
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for (i, &d) in x_shape.iter().enumerate() {
            if d == 1 && out_shape[lead + i] != 1 {
                axes.push((lead + i) as i64);
            }
        }
        let summed = if axes.is_empty() {
            g.to_owned()
        } else {
            self.reduce_sum(g, &axes, true)
        };
        if lead == 0 {
            summed
        } else {
            self.reshape_like(&summed, x)
        }
    }
}

/// The `value` attribute of a `ConstantOfShape` that fills with float zeros.
pub(crate) fn zero_fill() -> AttributeProto {
    attr::tensor("value", TensorProto::from_f32("value", &[1], &[0.0]))
}

/// A node's name for messages (its first output when unnamed).
pub(crate) fn node_label(node: &NodeProto) -> String {
    if node.name.is_empty() {
        node.output.first().cloned().unwrap_or_default()
    } else {
        node.name.clone()
    }
}

/// An "unsupported" error for `node`.
pub(crate) fn unsupported(node: &NodeProto, reason: impl Into<String>) -> Error {
    Error::Unsupported {
        node: node_label(node),
        op_type: node.op_type.clone(),
        reason: reason.into(),
    }
}

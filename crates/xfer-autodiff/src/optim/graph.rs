//! The optimizers' updates as small standard-ONNX graphs, so that a training loop can keep
//! parameters, gradients and optimizer slots on the device: the graph runs in an ordinary
//! inference session on the training session's provider.
//!
//! Each graph computes, node by node, exactly the float32 arithmetic of the Rust
//! [`Optimizer::step`] (same operations in the same order); the step-dependent scalars (Adam's
//! bias-corrected `alpha`, SGD's learning rate) are computed on the host as `step` computes
//! them and fed as scalar inputs ([`GraphOptimizer::update_scalars`]).
//!
//! Names: parameter `p` is input `p`, its gradient `p_grad` (the training graph's output
//! name), each slot input `p.<slot>` (the name in [`Optimizer::state`]); the updated values
//! are outputs `p.next` and `p.<slot>.next`.

use xfer_onnx::{Dim, GraphBuilder, ModelProto};

use super::{Adam, NamedTensor, Optimizer, Sgd};
use crate::Parameter;

/// Suffix of an updated value's output name.
const NEXT: &str = ".next";

/// The input and output names of one parameter's update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateNames {
    /// The parameter (input).
    pub param: String,
    /// Its gradient (input).
    pub grad: String,
    /// The updated parameter (output).
    pub param_next: String,
    /// Per slot: (slot state name `p.<slot>` = its input, updated slot output).
    pub slots: Vec<(String, String)>,
}

/// An optimizer's update over a parameter list, as an ONNX model.
#[derive(Debug, Clone)]
pub struct UpdateGraph {
    /// The model: inputs are the parameters, gradients, slots and scalars; outputs the updated
    /// parameters and slots.
    pub model: ModelProto,
    /// Names, per parameter, in the order of the parameter list.
    pub params: Vec<UpdateNames>,
    /// The scalar inputs, fed each step with [`GraphOptimizer::update_scalars`].
    pub scalars: Vec<String>,
}

/// An optimizer whose update also exists as an [`UpdateGraph`].
pub trait GraphOptimizer: Optimizer {
    /// The update graph of `params` (their names and shapes), with this optimizer's
    /// hyperparameters other than the learning rate baked in.
    fn update_graph(&self, params: &[Parameter]) -> UpdateGraph;
    /// The scalar inputs of the next step's update (from the step count and learning rate).
    fn update_scalars(&self) -> Vec<(String, f32)>;
    /// Records one update done by the graph (the step count [`Optimizer::iterations`]).
    fn count_step(&mut self);
    /// The slots' checkpoint names (`<param>.<slot>` in [`Optimizer::state`]).
    fn slot_names(&self) -> Vec<&'static str>;
}

/// Builds the graph: for each parameter, `update` emits the nodes given the builder, the
/// parameter's value names (param, grad, slot inputs) and returns (param_next, slot nexts).
struct Builder {
    g: GraphBuilder,
    params: Vec<UpdateNames>,
}

impl Builder {
    fn new(name: &str) -> Self {
        Builder {
            g: GraphBuilder::new(name),
            params: Vec::new(),
        }
    }

    fn scalar_input(&mut self, name: &str) -> String {
        self.g.input(name, &[])
    }

    fn constant(&mut self, name: &str, value: f32) -> String {
        self.g.constant_f32(name, &[], &[value])
    }

    /// Declares the inputs of `p` (param, grad, one per slot) and returns their names.
    fn inputs(&mut self, p: &Parameter, slots: &[&str]) -> (String, String, Vec<String>) {
        let dims = dims(p);
        let param = self.g.input(&p.name, &dims);
        let grad = self.g.input(&format!("{}_grad", p.name), &dims);
        let slots = slots
            .iter()
            .map(|s| self.g.input(&format!("{}.{s}", p.name), &dims))
            .collect();
        (param, grad, slots)
    }

    /// Names the final values of `p`'s update as outputs (an Identity per value).
    fn outputs(
        &mut self,
        p: &Parameter,
        grad: String,
        param_next: &str,
        slots: &[(String, String)],
    ) {
        let dims = dims(p);
        let out = format!("{}{NEXT}", p.name);
        self.g
            .node_named("Identity", &[param_next], &[&out], vec![]);
        self.g.output(&out, &dims);
        let mut names = Vec::with_capacity(slots.len());
        for (input, value) in slots {
            let slot_out = format!("{input}{NEXT}");
            self.g
                .node_named("Identity", &[value], &[&slot_out], vec![]);
            self.g.output(&slot_out, &dims);
            names.push((input.clone(), slot_out));
        }
        self.params.push(UpdateNames {
            param: p.name.clone(),
            grad,
            param_next: out,
            slots: names,
        });
    }

    fn op(&mut self, op: &str, a: &str, b: &str, hint: &str) -> String {
        self.g.op(op, &[a, b], vec![], hint)
    }

    fn finish(self, scalars: Vec<String>) -> UpdateGraph {
        UpdateGraph {
            model: self.g.build_model(),
            params: self.params,
            scalars,
        }
    }
}

fn dims(p: &Parameter) -> Vec<Dim> {
    p.shape.iter().map(|&d| Dim::Fixed(d as i64)).collect()
}

/// Scalar input of Adam's bias-corrected step size.
const ADAM_ALPHA: &str = "adam.alpha";
/// Scalar input of SGD's learning rate.
const SGD_LR: &str = "sgd.learning_rate";

impl GraphOptimizer for Adam {
    fn update_graph(&self, params: &[Parameter]) -> UpdateGraph {
        let mut b = Builder::new("adam_update");
        let alpha = b.scalar_input(ADAM_ALPHA);
        let one_b1 = b.constant("adam.one_minus_beta_1", 1.0 - self.beta_1);
        let one_b2 = b.constant("adam.one_minus_beta_2", 1.0 - self.beta_2);
        let eps = b.constant("adam.epsilon", self.epsilon);
        let slots = self.slot_names();
        for p in params {
            let (param, grad, slot_inputs) = b.inputs(p, &slots);
            let (m, v) = (&slot_inputs[0], &slot_inputs[1]);
            // m += (g - m) * (1 - b1)
            let d = b.op("Sub", &grad, m, "g_minus_m");
            let d = b.op("Mul", &d, &one_b1, "m_delta");
            let m_next = b.op("Add", m, &d, "m_next");
            // v += (g * g - v) * (1 - b2)
            let g2 = b.op("Mul", &grad, &grad, "g_squared");
            let d = b.op("Sub", &g2, v, "g2_minus_v");
            let d = b.op("Mul", &d, &one_b2, "v_delta");
            let v_next = b.op("Add", v, &d, "v_next");
            // p -= (m * alpha) / (sqrt(v) + eps)
            let num = b.op("Mul", &m_next, &alpha, "m_alpha");
            let root = b.g.op("Sqrt", &[&v_next], vec![], "sqrt_v");
            let den = b.op("Add", &root, &eps, "sqrt_v_eps");
            let step = b.op("Div", &num, &den, "adam_step");
            let p_next = b.op("Sub", &param, &step, "p_next");
            let slot_values = vec![(m.clone(), m_next), (v.clone(), v_next)];
            b.outputs(p, grad, &p_next, &slot_values);
        }
        b.finish(vec![ADAM_ALPHA.to_owned()])
    }

    fn update_scalars(&self) -> Vec<(String, f32)> {
        vec![(ADAM_ALPHA.to_owned(), self.alpha())]
    }

    fn count_step(&mut self) {
        self.state.iterations += 1;
    }

    fn slot_names(&self) -> Vec<&'static str> {
        self.state.names.to_vec()
    }
}

impl GraphOptimizer for Sgd {
    fn update_graph(&self, params: &[Parameter]) -> UpdateGraph {
        let mut b = Builder::new("sgd_update");
        let lr = b.scalar_input(SGD_LR);
        let momentum = b.constant("sgd.momentum", self.momentum);
        let slots = self.slot_names();
        for p in params {
            let (param, grad, slot_inputs) = b.inputs(p, &slots);
            let g_lr = b.op("Mul", &grad, &lr, "g_lr");
            let Some(m) = slot_inputs.first() else {
                // p -= g * lr
                let p_next = b.op("Sub", &param, &g_lr, "p_next");
                b.outputs(p, grad, &p_next, &[]);
                continue;
            };
            // m = m * momentum - g * lr
            let m_mom = b.op("Mul", m, &momentum, "m_momentum");
            let m_next = b.op("Sub", &m_mom, &g_lr, "m_next");
            let delta = if self.nesterov {
                // p += m * momentum - g * lr
                let m2 = b.op("Mul", &m_next, &momentum, "m_next_momentum");
                b.op("Sub", &m2, &g_lr, "nesterov_delta")
            } else {
                m_next.clone()
            };
            let p_next = b.op("Add", &param, &delta, "p_next");
            b.outputs(p, grad, &p_next, &[(m.clone(), m_next)]);
        }
        b.finish(vec![SGD_LR.to_owned()])
    }

    fn update_scalars(&self) -> Vec<(String, f32)> {
        vec![(SGD_LR.to_owned(), self.learning_rate)]
    }

    fn count_step(&mut self) {
        self.state.iterations += 1;
    }

    fn slot_names(&self) -> Vec<&'static str> {
        // Plain SGD keeps no momentum (its `state` has only the step count).
        if self.momentum == 0.0 {
            Vec::new()
        } else {
            self.state.names.to_vec()
        }
    }
}

/// The optimizer state in [`Optimizer::state`]'s layout from slot values held elsewhere
/// (`slots[i][k]`: slot `k` of parameter `i`) and the step count, for
/// [`Optimizer::load_state`].
pub fn state_tensors(
    optimizer: &dyn GraphOptimizer,
    params: &[Parameter],
    slots: Vec<Vec<Vec<f32>>>,
) -> Vec<NamedTensor> {
    let mut out = vec![super::iterations_tensor(optimizer.iterations())];
    let names = optimizer.slot_names();
    for (k, slot) in names.iter().enumerate() {
        for (p, values) in params.iter().zip(&slots) {
            if let Some(v) = values.get(k) {
                out.push(Parameter {
                    name: format!("{}.{slot}", p.name),
                    shape: p.shape.clone(),
                    data: v.clone(),
                });
            }
        }
    }
    out
}

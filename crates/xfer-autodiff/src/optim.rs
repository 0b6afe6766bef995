//! Optimizers over caller-owned parameter buffers, with Keras's update rules, parallel over
//! parameters (rayon). Their state is exposed as named tensors for checkpoints.

use rayon::prelude::*;

use crate::spec::Parameter;
use crate::{Error, Result};

mod graph;

pub use graph::{GraphOptimizer, UpdateGraph, UpdateNames, state_tensors};

/// A named tensor of optimizer state (same layout as a [`Parameter`]).
pub type NamedTensor = Parameter;

/// Name of the state tensor holding the step count (a float32 scalar).
const ITERATIONS: &str = "optimizer.iterations";

/// An optimizer that updates parameters in place from their gradients.
pub trait Optimizer: Send {
    /// One update: `grads[i]` is the gradient of `params[i]` (same length).
    fn step(&mut self, params: &mut [Parameter], grads: &[&[f32]]) -> Result<()>;
    /// Steps taken so far.
    fn iterations(&self) -> u64;
    /// Sets the learning rate for the next steps.
    fn set_learning_rate(&mut self, lr: f32);
    /// The state as named tensors (`<param>.<slot>`, and `optimizer.iterations`).
    fn state(&self) -> Vec<NamedTensor>;
    /// Restores a state written by [`Optimizer::state`] for these parameters.
    fn load_state(&mut self, params: &[Parameter], state: &[NamedTensor]) -> Result<()>;
}

fn check(params: &[Parameter], grads: &[&[f32]]) -> Result<()> {
    if params.len() != grads.len() {
        return Err(Error::Optimizer {
            name: "*".to_owned(),
            reason: format!("{} parameters but {} gradients", params.len(), grads.len()),
        });
    }
    for (p, g) in params.iter().zip(grads) {
        if p.data.len() != g.len() {
            return Err(Error::Optimizer {
                name: p.name.clone(),
                reason: format!("{} values but its gradient has {}", p.data.len(), g.len()),
            });
        }
    }
    Ok(())
}

/// Per-parameter slots, created as zeros on the first step.
#[derive(Debug, Clone, Default)]
struct Slots {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    values: Vec<Vec<f32>>,
}

impl Slots {
    fn ensure(&mut self, params: &[Parameter]) -> Result<()> {
        if self.values.is_empty() {
            self.names = params.iter().map(|p| p.name.clone()).collect();
            self.shapes = params.iter().map(|p| p.shape.clone()).collect();
            self.values = params.iter().map(|p| vec![0.0; p.data.len()]).collect();
            return Ok(());
        }
        if self.names.len() != params.len()
            || self.names.iter().zip(params).any(|(n, p)| n != &p.name)
        {
            return Err(Error::Optimizer {
                name: params.first().map(|p| p.name.clone()).unwrap_or_default(),
                reason: "the parameter list changed since the optimizer's first step".to_owned(),
            });
        }
        Ok(())
    }

    fn export(&self, slot: &str, out: &mut Vec<NamedTensor>) {
        for ((n, s), v) in self.names.iter().zip(&self.shapes).zip(&self.values) {
            out.push(Parameter {
                name: format!("{n}.{slot}"),
                shape: s.clone(),
                data: v.clone(),
            });
        }
    }

    fn import(params: &[Parameter], slot: &str, state: &[NamedTensor]) -> Result<Slots> {
        let mut slots = Slots::default();
        for p in params {
            let key = format!("{}.{slot}", p.name);
            let t = state
                .iter()
                .find(|t| t.name == key)
                .ok_or_else(|| Error::Optimizer {
                    name: p.name.clone(),
                    reason: format!("the optimizer state has no `{key}`"),
                })?;
            if t.data.len() != p.data.len() {
                return Err(Error::Optimizer {
                    name: p.name.clone(),
                    reason: format!(
                        "state `{key}` has {} values, the parameter {}",
                        t.data.len(),
                        p.data.len()
                    ),
                });
            }
            slots.names.push(p.name.clone());
            slots.shapes.push(p.shape.clone());
            slots.values.push(t.data.clone());
        }
        Ok(slots)
    }
}

fn iterations_tensor(n: u64) -> NamedTensor {
    Parameter {
        name: ITERATIONS.to_owned(),
        shape: vec![],
        data: vec![n as f32],
    }
}

fn read_iterations(state: &[NamedTensor]) -> Result<u64> {
    state
        .iter()
        .find(|t| t.name == ITERATIONS)
        .and_then(|t| t.data.first().copied())
        .map(|v| v as u64)
        .ok_or_else(|| Error::Optimizer {
            name: ITERATIONS.to_owned(),
            reason: "missing from the optimizer state".to_owned(),
        })
}

/// An optimizer's step count and its per-parameter slots, with the slots' checkpoint names.
#[derive(Debug, Clone)]
struct State<const N: usize> {
    iterations: u64,
    names: [&'static str; N],
    slots: [Slots; N],
}

impl<const N: usize> State<N> {
    fn new(names: [&'static str; N]) -> Self {
        State {
            iterations: 0,
            names,
            slots: std::array::from_fn(|_| Slots::default()),
        }
    }

    /// `optimizer.iterations`, then each slot's tensors (`<param>.<slot name>`).
    fn export(&self) -> Vec<NamedTensor> {
        let mut out = vec![iterations_tensor(self.iterations)];
        for (slots, name) in self.slots.iter().zip(self.names) {
            slots.export(name, &mut out);
        }
        out
    }

    /// Restores the step count and, when `with_slots`, the slots of `params` from `state`.
    fn import(
        &mut self,
        params: &[Parameter],
        state: &[NamedTensor],
        with_slots: bool,
    ) -> Result<()> {
        self.iterations = read_iterations(state)?;
        for (slots, name) in self.slots.iter_mut().zip(self.names) {
            *slots = if with_slots {
                Slots::import(params, name, state)?
            } else {
                Slots::default()
            };
        }
        Ok(())
    }
}

/// The [`Optimizer`] methods that only read or set an optimizer's `learning_rate` field and its
/// [`State`] (field `state`), the same for every optimizer.
macro_rules! optimizer_bookkeeping {
    () => {
        fn iterations(&self) -> u64 {
            self.state.iterations
        }

        fn set_learning_rate(&mut self, lr: f32) {
            self.learning_rate = lr;
        }

        fn state(&self) -> Vec<NamedTensor> {
            self.state.export()
        }
    };
}

/// Adam exactly as Keras 3 updates (`keras/src/optimizers/adam.py`, float32 arithmetic):
/// `alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)`; `m += (g - m)(1 - b1)`; `v += (g² - v)(1 - b2)`;
/// `p -= m * alpha / (sqrt(v) + eps)`.
#[derive(Debug, Clone)]
pub struct Adam {
    /// Learning rate.
    pub learning_rate: f32,
    /// Decay of the first moment.
    pub beta_1: f32,
    /// Decay of the second moment.
    pub beta_2: f32,
    /// Added to sqrt(v).
    pub epsilon: f32,
    /// Step count and the first (`adam_m`) and second (`adam_v`) moments.
    state: State<2>,
}

impl Adam {
    /// Adam with Keras's defaults (beta_1 0.9, beta_2 0.999, epsilon 1e-7).
    pub fn new(learning_rate: f32) -> Self {
        Adam {
            learning_rate,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            state: State::new(["adam_m", "adam_v"]),
        }
    }

    /// The bias-corrected step size of the next step:
    /// `lr * sqrt(1 - b2^t) / (1 - b1^t)` at `t` = iterations + 1.
    fn alpha(&self) -> f32 {
        let local_step = (self.state.iterations + 1) as f32;
        let b1_power = self.beta_1.powf(local_step);
        let b2_power = self.beta_2.powf(local_step);
        self.learning_rate * (1.0 - b2_power).sqrt() / (1.0 - b1_power)
    }
}

impl Optimizer for Adam {
    fn step(&mut self, params: &mut [Parameter], grads: &[&[f32]]) -> Result<()> {
        check(params, grads)?;
        let alpha = self.alpha();
        let [m, v] = &mut self.state.slots;
        m.ensure(params)?;
        v.ensure(params)?;
        let (one_b1, one_b2, b_eps) = (1.0 - self.beta_1, 1.0 - self.beta_2, self.epsilon);
        params
            .par_iter_mut()
            .zip(grads.par_iter())
            .zip(m.values.par_iter_mut().zip(v.values.par_iter_mut()))
            .for_each(|((p, g), (m, v))| {
                for i in 0..p.data.len() {
                    let gi = g[i];
                    m[i] += (gi - m[i]) * one_b1;
                    v[i] += (gi * gi - v[i]) * one_b2;
                    p.data[i] -= (m[i] * alpha) / (v[i].sqrt() + b_eps);
                }
            });
        self.state.iterations += 1;
        Ok(())
    }

    optimizer_bookkeeping!();

    fn load_state(&mut self, params: &[Parameter], state: &[NamedTensor]) -> Result<()> {
        self.state.import(params, state, true)
    }
}

/// SGD as Keras 3 updates (`keras/src/optimizers/sgd.py`): with momentum,
/// `m = m * momentum - g * lr`, then `p += m` (Nesterov: `p += m * momentum - g * lr`);
/// without, `p -= g * lr`.
#[derive(Debug, Clone)]
pub struct Sgd {
    /// Learning rate.
    pub learning_rate: f32,
    /// Momentum (0 for plain SGD).
    pub momentum: f32,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// Step count and the momentum (`sgd_momentum`).
    state: State<1>,
}

impl Sgd {
    /// SGD with momentum (Keras defaults: learning rate 0.01, momentum 0, no Nesterov).
    pub fn new(learning_rate: f32, momentum: f32) -> Self {
        Sgd {
            learning_rate,
            momentum,
            nesterov: false,
            state: State::new(["sgd_momentum"]),
        }
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [Parameter], grads: &[&[f32]]) -> Result<()> {
        check(params, grads)?;
        let (lr, mom, nesterov) = (self.learning_rate, self.momentum, self.nesterov);
        if mom == 0.0 {
            params
                .par_iter_mut()
                .zip(grads.par_iter())
                .for_each(|(p, g)| {
                    for (w, gi) in p.data.iter_mut().zip(g.iter()) {
                        *w -= gi * lr;
                    }
                });
        } else {
            let [m] = &mut self.state.slots;
            m.ensure(params)?;
            params
                .par_iter_mut()
                .zip(grads.par_iter())
                .zip(m.values.par_iter_mut())
                .for_each(|((p, g), m)| {
                    for i in 0..p.data.len() {
                        m[i] = m[i] * mom - g[i] * lr;
                        if nesterov {
                            p.data[i] += m[i] * mom - g[i] * lr;
                        } else {
                            p.data[i] += m[i];
                        }
                    }
                });
        }
        self.state.iterations += 1;
        Ok(())
    }

    optimizer_bookkeeping!();

    fn load_state(&mut self, params: &[Parameter], state: &[NamedTensor]) -> Result<()> {
        self.state.import(params, state, self.momentum != 0.0)
    }
}

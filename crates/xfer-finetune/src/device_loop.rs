//! The device-resident training step: parameters, gradients and optimizer slots stay in the
//! training session's device memory between steps (CUDA memory for `--device cuda` /
//! `tensorrt`), bound to the sessions with I/O bindings; the optimizer's update runs as its
//! ONNX graph ([`GraphOptimizer::update_graph`]) in a second session on the same provider.
//!
//! Each step copies only the batch (pixels, labels, dropout masks) to the device and only the
//! loss and the logits back. Parameters and optimizer state come back to the host on
//! [`DeviceLoop::copy_to_host`], which the trainer calls when an epoch ends or stops (for the
//! validation feeds and the checkpoint).
//!
//! The update reads one set of parameter and slot buffers and writes the other; the two sets
//! swap after each step (ONNX Runtime does not update a bound input in place).

use ndarray::ArrayD;
use xfer_autodiff::{GraphOptimizer, Parameter, UpdateGraph, state_tensors};
use xfer_runtime::{Binding, Device, DeviceMemory, DeviceTensor, InputTensor, Model};

use crate::{Error, Result};

/// Where the training state (parameters, gradients, optimizer slots) lives between steps
/// ([`crate::RunOptions::residence`]). Results are the same either way: on the CPU provider
/// the two loops are bit-identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residence {
    /// On the device when the training session runs on a GPU (`cuda`, `tensorrt`), else on
    /// the host.
    #[default]
    Auto,
    /// On the host: every step feeds the parameters and fetches every gradient; the Rust
    /// optimizer updates them.
    Host,
    /// In the training session's device memory, updated there by the optimizer's ONNX
    /// graph; on the CPU provider this is host memory (to test the device loop without a GPU).
    Device,
}

impl std::str::FromStr for Residence {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Residence::Auto),
            "host" => Ok(Residence::Host),
            "device" => Ok(Residence::Device),
            other => Err(format!("`{other}`: expected auto, host or device")),
        }
    }
}

/// Parameters and their optimizer slots in device memory.
struct Resident {
    params: Vec<DeviceTensor>,
    /// `slots[i][k]`: slot `k` of parameter `i`.
    slots: Vec<Vec<DeviceTensor>>,
}

/// The device-resident state of one phase's training and its update session.
pub struct DeviceLoop {
    update: Model,
    graph: UpdateGraph,
    /// What the training session reads and the update reads next.
    current: Resident,
    /// What the next update writes.
    spare: Resident,
    grads: Vec<DeviceTensor>,
    /// Whether the host's parameters and optimizer state are behind the device's.
    host_stale: bool,
}

impl DeviceLoop {
    /// The device loop for a phase whose training session is `session`, when `residence`
    /// asks for one (`Auto`: when the session runs on a GPU); `None` for the host loop.
    pub(crate) fn for_phase(
        residence: Residence,
        session: &Model,
        options: &xfer_runtime::SessionOptions,
        params: &[Parameter],
        optimizer: &dyn GraphOptimizer,
    ) -> Result<Option<Self>> {
        let wanted = match residence {
            Residence::Auto => session.device() != Device::Cpu,
            Residence::Host => false,
            Residence::Device => true,
        };
        if !wanted {
            return Ok(None);
        }
        tracing::info!(
            "training state on the {} device: parameters, gradients and optimizer slots stay there between steps",
            session.device()
        );
        Self::new(session, options, params, optimizer).map(Some)
    }

    /// Uploads `params` and `optimizer`'s slots (zeros before its first step) and builds the
    /// update session on the training session `session`'s device (`options` otherwise).
    pub fn new(
        session: &Model,
        options: &xfer_runtime::SessionOptions,
        params: &[Parameter],
        optimizer: &dyn GraphOptimizer,
    ) -> Result<Self> {
        let memory = session.device_memory()?;
        let graph = optimizer.update_graph(params);
        let update_options = xfer_runtime::SessionOptions {
            device: session.device(),
            allow_cpu_fallback: false,
            ..options.clone()
        };
        let update = Model::from_bytes(
            &xfer_onnx::write_model_bytes(&graph.model),
            "optimizer update graph",
            &update_options,
        )?;
        let current = upload_state(&memory, params, optimizer)?;
        let spare = zeros_like(&memory, &current)?;
        let grads = zeros_like(&memory, &current)?.params;
        Ok(DeviceLoop {
            update,
            graph,
            current,
            spare,
            grads,
            host_stale: false,
        })
    }

    /// One training step on `feeds` (the batch: data, labels, dropout masks) with the
    /// resident parameters, then, when the loss is finite, the optimizer's update. Returns
    /// the loss and the logits, the only values copied back.
    pub fn step(
        &mut self,
        session: &mut Model,
        feeds: &[(&str, InputTensor<'_>)],
        optimizer: &mut dyn GraphOptimizer,
    ) -> Result<(f32, ArrayD<f32>)> {
        let binding = self.training_binding(session, feeds)?;
        let mut outputs = session.run_bound(&binding)?;
        drop(binding);
        let mut take = |name: &str| -> Result<ArrayD<f32>> {
            let at = outputs.iter().position(|(n, _)| n == name);
            at.map(|i| outputs.swap_remove(i).1)
                .and_then(|t| t.into_f32())
                .ok_or_else(|| Error::Model {
                    reason: format!("the training graph did not output `{name}`"),
                })
        };
        let loss = take("loss")?.iter().next().copied().unwrap_or(f32::NAN);
        let logits = take("logits")?;
        if loss.is_finite() {
            self.update(optimizer)?;
        }
        Ok((loss, logits))
    }

    /// The training session's binding: the batch from the host, the resident parameters,
    /// gradients into their device buffers, every other output (loss, logits) to the host.
    fn training_binding(
        &mut self,
        session: &Model,
        feeds: &[(&str, InputTensor<'_>)],
    ) -> Result<Binding> {
        let mut binding = session.binding()?;
        for (name, tensor) in feeds {
            binding.input_host(name, tensor)?;
        }
        for (names, param) in self.graph.params.iter().zip(&self.current.params) {
            binding.input(&names.param, param)?;
        }
        for name in session.output_names() {
            let grad = self.graph.params.iter().position(|n| n.grad == name);
            match grad.and_then(|i| self.grads.get_mut(i)) {
                Some(buffer) => binding.output(&name, buffer)?,
                None => binding.output_host(&name)?,
            }
        }
        Ok(binding)
    }

    /// The update graph from the current buffers into the spare ones, then the swap.
    fn update(&mut self, optimizer: &mut dyn GraphOptimizer) -> Result<()> {
        let mut binding = self.update.binding()?;
        for (name, value) in optimizer.update_scalars() {
            let scalar = ArrayD::from_elem(ndarray::IxDyn(&[]), value);
            binding.input_host(&name, &InputTensor::F32(scalar.view()))?;
        }
        let (current, spare) = (&self.current, &mut self.spare);
        for (i, names) in self.graph.params.iter().enumerate() {
            binding.input(&names.param, &current.params[i])?;
            binding.input(&names.grad, &self.grads[i])?;
            binding.output(&names.param_next, &mut spare.params[i])?;
            for (k, (input, output)) in names.slots.iter().enumerate() {
                binding.input(input, &current.slots[i][k])?;
                binding.output(output, &mut spare.slots[i][k])?;
            }
        }
        self.update.run_bound(&binding)?;
        drop(binding);
        std::mem::swap(&mut self.current, &mut self.spare);
        optimizer.count_step();
        self.host_stale = true;
        Ok(())
    }

    /// Copies the parameters into `params` and the optimizer slots into `optimizer` (both
    /// as the host loop would hold them after the same steps), when they changed.
    pub fn copy_to_host(
        &mut self,
        params: &mut [Parameter],
        optimizer: &mut dyn GraphOptimizer,
    ) -> Result<()> {
        if !self.host_stale {
            return Ok(());
        }
        for (p, resident) in params.iter_mut().zip(&self.current.params) {
            p.data = resident.download()?;
        }
        let slots = self
            .current
            .slots
            .iter()
            .map(|s| s.iter().map(DeviceTensor::download).collect())
            .collect::<xfer_runtime::Result<Vec<Vec<Vec<f32>>>>>()?;
        let state = state_tensors(optimizer, params, slots);
        optimizer.load_state(params, &state)?;
        self.host_stale = false;
        Ok(())
    }
}

/// `params` and `optimizer`'s slots (from its state; zeros where it has none yet) on the device.
fn upload_state(
    memory: &DeviceMemory,
    params: &[Parameter],
    optimizer: &dyn GraphOptimizer,
) -> Result<Resident> {
    let state = optimizer.state();
    let slot_names = optimizer.slot_names();
    let mut resident = Resident {
        params: Vec::with_capacity(params.len()),
        slots: Vec::with_capacity(params.len()),
    };
    for p in params {
        resident.params.push(memory.upload(&p.shape, &p.data)?);
        let mut slots = Vec::with_capacity(slot_names.len());
        for slot in &slot_names {
            let key = format!("{}.{slot}", p.name);
            slots.push(match state.iter().find(|t| t.name == key) {
                Some(t) => memory.upload(&p.shape, &t.data)?,
                None => memory.zeros(&p.shape)?,
            });
        }
        resident.slots.push(slots);
    }
    Ok(resident)
}

/// Zero buffers of the shapes of `like`.
fn zeros_like(memory: &DeviceMemory, like: &Resident) -> Result<Resident> {
    let zeros = |t: &DeviceTensor| memory.zeros(t.shape());
    Ok(Resident {
        params: like.params.iter().map(zeros).collect::<Result<_, _>>()?,
        slots: like
            .slots
            .iter()
            .map(|s| s.iter().map(zeros).collect::<Result<_, _>>())
            .collect::<Result<_, _>>()?,
    })
}

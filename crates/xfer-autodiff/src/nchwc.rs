//! ONNX Runtime's NCHWc CPU kernels for the training graph's depthwise convolutions: an option
//! of [`crate::TrainingGraphBuilder`] ([`CpuKernels`]), never the default.
//!
//! In the training graph every trainable weight is a graph input, so ONNX Runtime cannot
//! pre-pack it, and a depthwise (`group == C`) Conv falls back to the generic grouped im2col
//! path, one tiny GEMM per channel. ONNX Runtime's contrib domain `com.microsoft.nchwc` has a
//! direct depthwise kernel that reads its weight as ordinary data once it is in the blocked
//! layout. The rewrite reorders the weight *inside the graph* with standard ops (`Pad` to a
//! block multiple, `Reshape`, `Transpose`, `Reshape`) and wraps the Conv in `ReorderInput` /
//! `ReorderOutput`, so the graph's inputs, outputs and parameters are unchanged. Measured on
//! ONNX Runtime 1.31.1 CPU (2 threads, batch 32, AVX-512, block 16), one depthwise 3x3 Conv
//! including both reorders: 72x72x128 69.4 -> 32.4 ms, 36x36x256 38.8 -> 18.8 ms, 18x18x728
//! 34.4 -> 10.8 ms, 9x9x728 7.7 -> 3.5 ms, equal to 1.6e-7 relative. On Xception's whole
//! all-layers step the layout changes give most of that back: 3.816 -> 3.658 s at batch 32
//! (1.04x), for about 0.3 GB more at the step's peak, hence not the default.
//!
//! The contrib ops exist only in ONNX Runtime's CPU execution provider (CUDA, TensorRT and
//! OpenVINO do not have them), and the block size is the CPU's (16 with AVX-512, 8 with AVX2):
//! a graph built for the wrong block computes wrong numbers silently, so the block comes from
//! [`nchwc_block`], which runs the rewrite against a standard Conv on the loaded library.

use std::sync::OnceLock;

use ndarray::{ArrayD, IxDyn};
use xfer_onnx::{
    Dim, GraphBuilder, ModelProto, NodeProto, OperatorSetIdProto, attr, write_model_bytes,
};
use xfer_runtime::{Device, InputTensor, Model, SessionOptions};

use crate::emit::Emit;
use crate::{Error, Result};

/// ONNX Runtime's contrib domain of the NCHWc kernels.
pub const NCHWC_DOMAIN: &str = "com.microsoft.nchwc";

/// The NCHWc block sizes ONNX Runtime's CPU kernels use (AVX-512, AVX2), in the order probed.
pub const NCHWC_BLOCKS: [i64; 2] = [16, 8];

/// Which CPU kernels the training graph's depthwise convolutions are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKernels {
    /// Standard ONNX `Conv`: every execution provider runs it (the default).
    #[default]
    Portable,
    /// ONNX Runtime's `com.microsoft.nchwc` depthwise kernel with this channel block (take it
    /// from [`nchwc_block`]): CPU execution provider only, 2-3x faster per depthwise Conv.
    Nchwc {
        /// Channels per block: 16 (AVX-512) or 8 (AVX2).
        block: i64,
    },
}

/// A depthwise Conv the rewrite supports: 2-D, explicit pads, weight `[C, 1, kh, kw]` computed
/// in the graph (a graph input or a value), `group == C`.
struct Depthwise<'a> {
    node: &'a NodeProto,
    x: &'a str,
    w: &'a str,
    bias: Option<&'a str>,
    y: &'a str,
    channels: i64,
    kernel: [i64; 2],
}

impl<'a> Depthwise<'a> {
    /// `node` as a supported depthwise Conv, or `None` (the node stays as it is).
    fn of(e: &Emit, node: &'a NodeProto) -> Option<Self> {
        if node.op_type != "Conv" || !node.domain.is_empty() {
            return None;
        }
        let group = node.attr_int("group", 1);
        let explicit = matches!(
            node.attr_string("auto_pad").as_deref(),
            None | Some("") | Some("NOTSET")
        );
        let (x, w) = (node.input.first()?, node.input.get(1)?);
        let y = node.output.first()?;
        let constant = e.b.graph().initializer.iter().any(|t| &t.name == w);
        let [c, 1, kh, kw] = e.shapes.get(w)?[..] else {
            return None;
        };
        if group < 2 || c != group || !explicit || constant || x.is_empty() || y.is_empty() {
            return None;
        }
        Some(Depthwise {
            node,
            x,
            w,
            bias: node
                .input
                .get(2)
                .map(String::as_str)
                .filter(|b| !b.is_empty()),
            y,
            channels: c,
            kernel: [kh, kw],
        })
    }
}

/// `c` rounded up to a multiple of `block`.
fn padded_channels(c: i64, block: i64) -> i64 {
    (c + block - 1) / block * block
}

/// A node of the NCHWc domain with one fresh output.
fn nchwc_op(
    e: &mut Emit,
    op: &str,
    inputs: &[&str],
    attributes: Vec<xfer_onnx::AttributeProto>,
) -> String {
    let out = e.b.unique(&format!("nchwc_{}", op.to_ascii_lowercase()));
    e.b.node_named(op, inputs, &[&out], attributes).domain = NCHWC_DOMAIN.to_owned();
    out
}

/// Zero-pads axis 0 of `v` (rank `rank`) from `c` to `cp` entries.
fn pad_channels(e: &mut Emit, v: &str, rank: usize, c: i64, cp: i64) -> String {
    if cp == c {
        return v.to_owned();
    }
    let mut pads = vec![0; 2 * rank];
    pads[rank] = cp - c;
    let pads = e.i64s(&pads);
    e.b.op("Pad", &[v, &pads], vec![], "nchwc_pad")
}

/// The weight `[C, 1, kh, kw]` in the blocked layout the NCHWc depthwise kernel reads:
/// `[Cp/B, B, 1, kh, kw] -> [Cp/B, 1, kh, kw, B] -> [Cp, 1, kh, kw]`.
fn blocked_weight(e: &mut Emit, d: &Depthwise<'_>, block: i64) -> String {
    let (c, [kh, kw]) = (d.channels, d.kernel);
    let cp = padded_channels(c, block);
    let wp = pad_channels(e, d.w, 4, c, cp);
    let w5 = e.reshape(&wp, &[cp / block, block, 1, kh, kw]);
    let w5t = e.transpose(&w5, &[0, 2, 3, 4, 1]);
    e.reshape(&w5t, &[cp, 1, kh, kw])
}

/// Emits `ReorderInput -> nchwc Conv -> ReorderOutput` computing `d`'s output under its name.
fn emit_nchwc(e: &mut Emit, d: &Depthwise<'_>, block: i64) {
    let cp = padded_channels(d.channels, block);
    let w = blocked_weight(e, d, block);
    let bias = d.bias.map(|b| pad_channels(e, b, 1, d.channels, cp));
    let xc = nchwc_op(e, "ReorderInput", &[d.x], vec![]);
    let mut attributes = vec![
        attr::int("group", cp),
        attr::ints("kernel_shape", &d.kernel),
    ];
    for name in ["pads", "strides", "dilations"] {
        if let Some(v) = d.node.attr_ints(name) {
            attributes.push(attr::ints(name, v));
        }
    }
    let mut inputs = vec![xc.as_str(), w.as_str()];
    inputs.extend(bias.as_deref());
    let yc = nchwc_op(e, "Conv", &inputs, attributes);
    e.b.node_named(
        "ReorderOutput",
        &[&yc],
        &[d.y],
        vec![attr::int("channels", d.channels)],
    )
    .domain = NCHWC_DOMAIN.to_owned();
}

/// Rewrites every supported depthwise Conv of the graph being built into the NCHWc form for
/// `block`, in place (node order stays topological); returns how many were rewritten.
pub(crate) fn rewrite_depthwise(e: &mut Emit, block: i64) -> Result<usize> {
    if !NCHWC_BLOCKS.contains(&block) {
        return Err(Error::Graph(format!(
            "NCHWc block {block} is not one ONNX Runtime uses ({NCHWC_BLOCKS:?}); take it from nchwc_block()"
        )));
    }
    let nodes = std::mem::take(&mut e.b.graph_mut().node);
    let mut rewritten = 0;
    for node in &nodes {
        match Depthwise::of(e, node) {
            Some(d) => {
                emit_nchwc(e, &d, block);
                rewritten += 1;
            }
            None => e.b.graph_mut().node.push(node.clone()),
        }
    }
    Ok(rewritten)
}

/// Declares the NCHWc domain among the model's operator sets.
pub(crate) fn import_nchwc(model: &mut ModelProto) {
    if !model.opset_import.iter().any(|o| o.domain == NCHWC_DOMAIN) {
        model.opset_import.push(OperatorSetIdProto {
            domain: NCHWC_DOMAIN.to_owned(),
            version: 1,
        });
    }
}

/// Channels of the probe's depthwise Conv: a multiple of both blocks, so that a wrong block runs
/// (ONNX Runtime logs no error) and gives different numbers (channels read other channels'
/// weights); channel padding is the builder's own arithmetic, tested at 8 and 24 channels.
const PROBE_CHANNELS: i64 = 32;

/// A depthwise 3x3 Conv (`x` `[2, 32, 7, 7]`, weight `w` an input) as the builder writes it for
/// `kernels`.
fn probe_model(kernels: CpuKernels) -> Result<ModelProto> {
    let c = PROBE_CHANNELS;
    let mut b = GraphBuilder::new("nchwc_probe");
    b.input("x", &[2, c, 7, 7].map(Dim::Fixed));
    b.input("w", &[c, 1, 3, 3].map(Dim::Fixed));
    let conv = [attr::int("group", c), attr::ints("pads", &[1, 1, 1, 1])];
    b.node_named("Conv", &["x", "w"], &["y"], conv.to_vec());
    b.output("y", &[2, c, 7, 7].map(Dim::Fixed));
    let shapes = [("w".to_owned(), vec![c, 1, 3, 3])].into_iter().collect();
    let mut e = Emit::new(b, shapes);
    if let CpuKernels::Nchwc { block } = kernels {
        rewrite_depthwise(&mut e, block)?;
    }
    let mut model = ModelProto::with_graph(e.b.build(), xfer_onnx::DEFAULT_OPSET);
    import_nchwc(&mut model);
    Ok(model)
}

/// Runs the probe model for `kernels` on fixed, irregular inputs; returns its output.
fn run_probe(kernels: CpuKernels, options: &SessionOptions) -> Result<Vec<f32>> {
    let model = probe_model(kernels)?;
    let value = |i: usize| ((i * 37 % 101) as f32 - 50.0) / 25.0;
    let c = PROBE_CHANNELS as usize;
    let x = ArrayD::from_shape_fn(IxDyn(&[2, c, 7, 7]), |i| {
        value(i[0] * 997 + i[1] * 49 + i[2] * 7 + i[3])
    });
    let w = ArrayD::from_shape_fn(IxDyn(&[c, 1, 3, 3]), |i| {
        value(i[0] * 13 + i[2] * 3 + i[3] + 5)
    });
    let bytes = write_model_bytes(&model);
    let mut session = Model::from_bytes(&bytes, "NCHWc probe", options).map_err(Error::Probe)?;
    let feeds = [
        ("x", InputTensor::F32(x.view())),
        ("w", InputTensor::F32(w.view())),
    ];
    let y = session.run(&feeds).map_err(Error::Probe)?;
    y.into_iter()
        .next()
        .and_then(|(_, t)| t.into_f32())
        .map(|a| a.iter().copied().collect())
        .ok_or_else(|| Error::Graph("the NCHWc probe returned no float output".to_owned()))
}

/// Whether the NCHWc form for `block` reproduces `reference` (the standard Conv's output) to
/// 1e-5 of its largest magnitude; a form that fails to run does not.
fn block_matches(reference: &[f32], block: i64, options: &SessionOptions) -> bool {
    match run_probe(CpuKernels::Nchwc { block }, options) {
        Ok(y) => {
            let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = reference
                .iter()
                .zip(&y)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            let ok = y.len() == reference.len() && err <= 1e-5 * scale;
            tracing::debug!(block, err, scale, ok, "NCHWc probe");
            ok
        }
        Err(err) => {
            tracing::debug!(block, %err, "NCHWc probe: the form does not run");
            false
        }
    }
}

/// The CPU options the probe runs under: `options`' library and threads on the CPU provider.
fn cpu_options(options: &SessionOptions) -> SessionOptions {
    SessionOptions {
        device: Device::Cpu,
        allow_cpu_fallback: false,
        precision: None,
        static_input: None,
        ..options.clone()
    }
}

/// Whether ONNX Runtime's NCHWc depthwise kernel with channel block `block` computes a standard
/// depthwise Conv exactly (to 1e-5 relative) on the library `options` load. Not cached.
pub fn nchwc_block_matches(options: &SessionOptions, block: i64) -> Result<bool> {
    let cpu = cpu_options(options);
    let reference = run_probe(CpuKernels::Portable, &cpu)?;
    Ok(block_matches(&reference, block, &cpu))
}

/// The NCHWc channel block of the loaded ONNX Runtime on this CPU, found by running a depthwise
/// Conv through the NCHWc form for each of [`NCHWC_BLOCKS`] against a standard Conv; `None`
/// when none matches (the portable graph is then the only choice). Cached for the process (one
/// process loads one library). An error only when the standard Conv itself cannot run.
pub fn nchwc_block(options: &SessionOptions) -> Result<Option<i64>> {
    static BLOCK: OnceLock<Option<i64>> = OnceLock::new();
    if let Some(block) = BLOCK.get() {
        return Ok(*block);
    }
    let cpu = cpu_options(options);
    let reference = run_probe(CpuKernels::Portable, &cpu)?;
    let found = NCHWC_BLOCKS
        .into_iter()
        .find(|&b| block_matches(&reference, b, &cpu));
    if found.is_none() {
        tracing::debug!("no NCHWc block reproduces a standard depthwise Conv; portable kernels");
    }
    Ok(*BLOCK.get_or_init(|| found))
}

/// What a user asks for (`--cpu-kernels auto|portable|nchwc`), resolved into [`CpuKernels`] for
/// the session options the training graph will run under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CpuKernelChoice {
    /// NCHWc on the CPU provider when [`nchwc_block`] finds a block; portable otherwise and on
    /// every other device.
    Auto,
    /// Standard ONNX only (the default: NCHWc's layout changes hold about 0.3 GB more at the
    /// all-layers step's peak for a 4 % faster step, measured on Xception at batch 32).
    #[default]
    Portable,
    /// NCHWc; an error on another device or where no block reproduces a standard Conv.
    Nchwc,
}

impl std::fmt::Display for CpuKernelChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CpuKernelChoice::Auto => "auto",
            CpuKernelChoice::Portable => "portable",
            CpuKernelChoice::Nchwc => "nchwc",
        })
    }
}

impl std::str::FromStr for CpuKernelChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(CpuKernelChoice::Auto),
            "portable" => Ok(CpuKernelChoice::Portable),
            "nchwc" => Ok(CpuKernelChoice::Nchwc),
            other => Err(format!(
                "unknown CPU kernels `{other}`; expected auto, portable or nchwc"
            )),
        }
    }
}

impl CpuKernelChoice {
    /// The kernels for a training graph run under `options` (probing the block when needed).
    pub fn resolve(self, options: &SessionOptions) -> Result<CpuKernels> {
        let on_cpu = options.device == Device::Cpu;
        match self {
            CpuKernelChoice::Portable => Ok(CpuKernels::Portable),
            CpuKernelChoice::Auto if !on_cpu => Ok(CpuKernels::Portable),
            CpuKernelChoice::Nchwc if !on_cpu => Err(Error::Graph(format!(
                "NCHWc kernels run on ONNX Runtime's CPU provider only, not --device {}; use --cpu-kernels portable",
                options.device
            ))),
            CpuKernelChoice::Auto => Ok(nchwc_block(options)?
                .map_or(CpuKernels::Portable, |block| CpuKernels::Nchwc { block })),
            CpuKernelChoice::Nchwc => match nchwc_block(options)? {
                Some(block) => Ok(CpuKernels::Nchwc { block }),
                None => Err(Error::Graph(
                    "this ONNX Runtime library's NCHWc kernels do not reproduce a standard depthwise Conv at any block size (8, 16) on this CPU; use --cpu-kernels portable"
                        .to_owned(),
                )),
            },
        }
    }
}

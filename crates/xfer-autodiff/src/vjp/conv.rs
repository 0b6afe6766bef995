//! Convolution: the gradients of Conv's input, weight and bias, and the geometry that the
//! convolution and pooling backward passes share.

use xfer_onnx::{NodeProto, attr};

use super::Vjp;
use crate::Result;
use crate::emit::{Emit, unsupported};

/// Widest (padded) map for the diagonal depthwise weight gradient: its MatMuls do `Wp` times the
/// necessary work, which stops paying off against the grouped Conv somewhere past Xception's 74.
const DIAGONAL_MAX_WIDTH: i64 = 128;

/// Output maps at least this large (H*W) use the batched-MatMul 1x1 weight gradient.
const LARGE_MAP: i64 = 1024;

/// The geometry of a 2-D convolution or pooling window (NCHW), at the probe batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ConvGeometry {
    /// Input shape `[N, C, H, W]`.
    pub x: [i64; 4],
    /// Weight shape `[O, C / group, kh, kw]` (pooling: `[C, 1, kh, kw]`).
    pub w: [i64; 4],
    /// Output shape `[N, O, Ho, Wo]`.
    pub y: [i64; 4],
    /// Groups.
    pub group: i64,
    /// Strides `[h, w]`.
    pub strides: [i64; 2],
    /// Dilations `[h, w]`.
    pub dilations: [i64; 2],
    /// Explicit pads `[top, left, bottom, right]`.
    pub pads: [i64; 4],
}

impl ConvGeometry {
    /// The geometry of a Conv node.
    pub fn conv(e: &Emit, v: &Vjp<'_>) -> Result<Self> {
        let (x, w, y) = (v.input(0)?, v.input(1)?, v.output(0)?);
        let (xs, ws, ys) = (v.shape(e, x)?, v.shape(e, w)?, v.shape(e, y)?);
        let (Ok(x), Ok(w), Ok(y)) = (
            <[i64; 4]>::try_from(xs),
            <[i64; 4]>::try_from(ws),
            <[i64; 4]>::try_from(ys),
        ) else {
            return Err(v.unsupported("only 2-D convolutions (NCHW) are supported"));
        };
        Self::with_window(v.node, x, w, y, v.node.attr_int("group", 1))
    }

    /// The geometry of a pooling node: a depthwise window of `kernel_shape` over each channel.
    pub fn pool(e: &Emit, v: &Vjp<'_>) -> Result<Self> {
        let (x, y) = (v.input(0)?, v.output(0)?);
        let (xs, ys) = (v.shape(e, x)?, v.shape(e, y)?);
        let (Ok(x), Ok(y)) = (<[i64; 4]>::try_from(xs), <[i64; 4]>::try_from(ys)) else {
            return Err(v.unsupported("only 2-D pooling (NCHW) is supported"));
        };
        let k = v
            .node
            .attr_ints("kernel_shape")
            .ok_or_else(|| v.unsupported("kernel_shape is required"))?;
        let [kh, kw] = <[i64; 2]>::try_from(k)
            .map_err(|_| v.unsupported("kernel_shape must have 2 values"))?;
        Self::with_window(v.node, x, [x[1], 1, kh, kw], y, x[1])
    }

    fn with_window(
        node: &NodeProto,
        x: [i64; 4],
        w: [i64; 4],
        y: [i64; 4],
        group: i64,
    ) -> Result<Self> {
        let strides = pair(node, "strides")?;
        let dilations = pair(node, "dilations")?;
        let kernel = [w[2], w[3]];
        let pads = explicit_pads(node, &x[2..], &y[2..], &kernel, &strides, &dilations)?;
        let pads = <[i64; 4]>::try_from(pads)
            .map_err(|p| unsupported(node, format!("pads {p:?} must have 4 values")))?;
        Ok(ConvGeometry {
            x,
            w,
            y,
            group,
            strides,
            dilations,
            pads,
        })
    }

    /// Input channels.
    pub fn c_in(&self) -> i64 {
        self.x[1]
    }

    /// Output channels.
    pub fn c_out(&self) -> i64 {
        self.w[0]
    }

    /// Kernel size `[kh, kw]`.
    pub fn kernel(&self) -> [i64; 2] {
        [self.w[2], self.w[3]]
    }

    /// One group per input channel, one input channel per group.
    pub fn depthwise(&self) -> bool {
        self.group == self.c_in() && self.w[1] == 1
    }

    /// Stride 1 and dilation 1 on both axes.
    pub fn unit(&self) -> bool {
        self.strides == [1, 1] && self.dilations == [1, 1]
    }

    /// The `output_padding` of a ConvTranspose with this geometry that restores the exact
    /// input size.
    pub fn output_padding(&self) -> [i64; 2] {
        let k = self.kernel();
        let p = &self.pads;
        [0, 1].map(|i| {
            self.x[2 + i] + p[i] + p[i + 2]
                - ((self.y[2 + i] - 1) * self.strides[i] + (k[i] - 1) * self.dilations[i] + 1)
        })
    }
}

/// A two-value attribute (strides, dilations), `[1, 1]` when absent.
fn pair(node: &NodeProto, name: &str) -> Result<[i64; 2]> {
    match node.attr_ints(name) {
        None => Ok([1, 1]),
        Some(v) => <[i64; 2]>::try_from(v)
            .map_err(|_| unsupported(node, format!("`{name}` must have 2 values, found {v:?}"))),
    }
}

/// Explicit `[begin_h, begin_w, end_h, end_w]` pads of a conv or pool node.
fn explicit_pads(
    node: &NodeProto,
    in_hw: &[i64],
    out_hw: &[i64],
    kernel: &[i64],
    strides: &[i64],
    dilations: &[i64],
) -> Result<Vec<i64>> {
    let nd = in_hw.len();
    let auto_pad = node.attr_string("auto_pad").unwrap_or_default();
    match auto_pad.as_str() {
        "" | "NOTSET" => Ok(node
            .attr_ints("pads")
            .map_or_else(|| vec![0; 2 * nd], <[i64]>::to_vec)),
        "VALID" => Ok(vec![0; 2 * nd]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut begin = vec![0; nd];
            let mut end = vec![0; nd];
            for i in 0..nd {
                let total = ((out_hw[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                    - in_hw[i])
                    .max(0);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    begin[i] = small;
                    end[i] = total - small;
                } else {
                    end[i] = small;
                    begin[i] = total - small;
                }
            }
            begin.extend(end);
            Ok(begin)
        }
        other => Err(unsupported(node, format!("unknown auto_pad `{other}`"))),
    }
}

/// Conv: gradients of X (input 0), W (input 1) and B (input 2).
pub(super) fn conv(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let (x, w) = (v.input(0)?, v.input(1)?);
    let geo = ConvGeometry::conv(e, v)?;
    if v.wants(0) {
        out[0] = Some(input_grad(e, v, w, &geo)?);
    }
    if v.wants(1) {
        out[1] = Some(weight_grad(e, x, v.g, &geo));
    }
    if v.wants(2) {
        out[2] = Some(e.reduce_sum(v.g, &[0, 2, 3], false));
    }
    Ok(())
}

/// The gradient of Conv's input.
fn input_grad(e: &mut Emit, v: &Vjp<'_>, w: &str, geo: &ConvGeometry) -> Result<String> {
    let (k, pads) = (geo.kernel(), &geo.pads);
    let fits = (0..2).all(|i| pads[i] < k[i] && pads[i + 2] < k[i]);
    let plain = geo.group == 1 || (geo.depthwise() && geo.c_out() == geo.c_in());
    if geo.unit() && fits && plain {
        return Ok(flipped_kernel_conv(e, v.g, w, geo));
    }
    // ConvTranspose with the forward geometry; output_padding restores the exact input size.
    let output_padding = geo.output_padding();
    if output_padding.iter().any(|&p| p < 0) {
        return Err(v.unsupported("inconsistent conv geometry (negative output padding)"));
    }
    Ok(e.op(
        "ConvTranspose",
        &[v.g, w],
        vec![
            attr::int("group", geo.group),
            attr::ints("strides", &geo.strides),
            attr::ints("dilations", &geo.dilations),
            attr::ints("pads", &geo.pads),
            attr::ints("output_padding", &output_padding),
        ],
    ))
}

/// Stride 1: the input gradient is a Conv with the kernel flipped 180 degrees (and I/O swapped
/// for group 1).
fn flipped_kernel_conv(e: &mut Emit, g: &str, w: &str, geo: &ConvGeometry) -> String {
    let (k, pads) = (geo.kernel(), &geo.pads);
    let flipped = if k == [1, 1] {
        w.to_owned()
    } else {
        e.slice(w, &[-1, -1], &[i64::MIN, i64::MIN], &[2, 3], &[-1, -1])
    };
    let wt = if geo.group == 1 {
        e.transpose(&flipped, &[1, 0, 2, 3])
    } else {
        // Its shape, for the NCHWc rewrite, which recognizes depthwise Convs by their weight.
        e.shapes
            .entry(flipped.clone())
            .or_insert_with(|| geo.w.to_vec());
        flipped
    };
    let p = [
        k[0] - 1 - pads[0],
        k[1] - 1 - pads[1],
        k[0] - 1 - pads[2],
        k[1] - 1 - pads[3],
    ];
    e.op(
        "Conv",
        &[g, &wt],
        vec![attr::int("group", geo.group), attr::ints("pads", &p)],
    )
}

/// The gradient of Conv's weight: the formulation measured fastest for each kind of conv.
fn weight_grad(e: &mut Emit, x: &str, g: &str, geo: &ConvGeometry) -> String {
    let [kh, kw] = geo.kernel();
    if geo.group == 1 && kh == 1 && kw == 1 && geo.pads.iter().all(|&p| p == 0) {
        return pointwise_weight_grad(e, x, g, geo);
    }
    let padded_width = geo.x[3] + geo.pads[1] + geo.pads[3];
    if geo.depthwise()
        && geo.c_out() == geo.c_in()
        && geo.unit()
        && padded_width <= DIAGONAL_MAX_WIDTH
    {
        return depthwise_weight_grad_unit_stride(e, x, g, geo);
    }
    if geo.depthwise() {
        return depthwise_weight_grad(e, x, g, geo);
    }
    if geo.group == 1 {
        return full_weight_grad_im2col(e, x, g, geo);
    }
    grouped_weight_grad(e, x, g, geo)
}

/// 1x1 kernel, group 1, no padding: one matrix product per batch (large maps) or over the batch.
fn pointwise_weight_grad(e: &mut Emit, x: &str, g: &str, geo: &ConvGeometry) -> String {
    let (c_in, c_out, ys, strides) = (geo.c_in(), geo.c_out(), &geo.y, &geo.strides);
    let xsub = if *strides == [1, 1] {
        x.to_owned()
    } else {
        let ends = [(ys[2] - 1) * strides[0] + 1, (ys[3] - 1) * strides[1] + 1];
        e.slice(x, &[0, 0], &ends, &[2, 3], strides)
    };
    let area = ys[2] * ys[3];
    if area >= LARGE_MAP {
        // Large maps: batched MatMul [N,O,HW] x [N,HW,I] (ONNX Runtime fuses the Transpose
        // into the MatMul), then a sum over the batch of the small [N,O,I] result.
        let g3 = e.reshape(g, &[0, c_out, area]);
        let x3 = e.reshape(&xsub, &[0, c_in, area]);
        let x3t = e.transpose(&x3, &[0, 2, 1]);
        let per = e.op("MatMul", &[&g3, &x3t], vec![]);
        let dw = e.reduce_sum(&per, &[0], false);
        return e.reshape(&dw, &[c_out, c_in, 1, 1]);
    }
    // Small maps, many channels: channel-first matrices and one Gemm with transB.
    let gt = e.transpose(g, &[1, 0, 2, 3]);
    let g2 = e.reshape(&gt, &[c_out, -1]);
    let xt = e.transpose(&xsub, &[1, 0, 2, 3]);
    let x2 = e.reshape(&xt, &[c_in, -1]);
    let dw = e.op("Gemm", &[&g2, &x2], vec![attr::int("transB", 1)]);
    e.reshape(&dw, &[c_out, c_in, 1, 1])
}

/// Conv of the batch-transposed input with the batch-transposed output gradient as the kernel:
/// the sum over the batch happens inside the convolution, so no batch-sized group attribute and
/// no separate reduction is needed. Forward strides become dilations and vice versa.
fn batch_transposed_conv(e: &mut Emit, geo: &ConvGeometry, xt: &str, gt: &str, grp: i64) -> String {
    let [kh, kw] = geo.kernel();
    let r = e.op(
        "Conv",
        &[xt, gt],
        vec![
            attr::int("group", grp),
            attr::ints("strides", &geo.dilations),
            attr::ints("dilations", &geo.strides),
            attr::ints("pads", &geo.pads),
        ],
    );
    e.slice(&r, &[0, 0], &[kh, kw], &[2, 3], &[1, 1])
}

/// Depthwise weight gradient (strided, dilated or wide maps): one grouped Conv over the
/// batch-transposed input.
fn depthwise_weight_grad(e: &mut Emit, x: &str, g: &str, geo: &ConvGeometry) -> String {
    let [kh, kw] = geo.kernel();
    let (h, w) = (geo.x[2], geo.x[3]);
    let xt = e.transpose(x, &[1, 0, 2, 3]); // [C, N, H, W]
    let x1 = e.reshape(&xt, &[1, -1, h, w]); // [1, C*N, H, W], channel c*N + n
    let gt = e.transpose(g, &[1, 0, 2, 3]); // [C*m, N, Ho, Wo]
    let r = batch_transposed_conv(e, geo, &x1, &gt, geo.c_in()); // [1, C*m, kh, kw]
    e.reshape(&r, &[geo.c_out(), 1, kh, kw])
}

/// Grouped (not depthwise) weight gradient: one full weight gradient per group, concatenated
/// over O.
fn grouped_weight_grad(e: &mut Emit, x: &str, g: &str, geo: &ConvGeometry) -> String {
    let xt = e.transpose(x, &[1, 0, 2, 3]); // [C, N, H, W]: C images of N channels
    let gt = e.transpose(g, &[1, 0, 2, 3]); // [O, N, Ho, Wo]: O kernels
    let group = geo.group;
    let (ci, co) = (geo.c_in() / group, geo.c_out() / group);
    let mut parts = Vec::new();
    for j in 0..group {
        let xj = e.slice(&xt, &[j * ci], &[(j + 1) * ci], &[0], &[1]);
        let gj = e.slice(&gt, &[j * co], &[(j + 1) * co], &[0], &[1]);
        let r = batch_transposed_conv(e, geo, &xj, &gj, 1);
        parts.push(e.transpose(&r, &[1, 0, 2, 3]));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    e.op("Concat", &refs, vec![attr::int("axis", 0)])
}

/// Weight gradient of a full (group 1) convolution: im2col by one strided Slice per tap, then one
/// MatMul per example and a sum over the batch.
///
/// `cols[n, t*C + c, p] = Xpad[n, c, ...tap t at output position p]`, `dW[o, c, t] = sum_n
/// G[n, o, :] . cols[n, t*C + c, :]`. Measured on ONNX Runtime 1.31 CPU for Xception's
/// block1_conv2 (batch 32, 32->64 channels, 74->72): 97 ms, against 175 ms for the Conv that
/// uses the batch-transposed output gradient as its kernel (a GEMM with only kh*kw columns).
fn full_weight_grad_im2col(e: &mut Emit, x: &str, g: &str, geo: &ConvGeometry) -> String {
    let (c_in, c_out, [kh, kw]) = (geo.c_in(), geo.c_out(), geo.kernel());
    let (ho, wo) = (geo.y[2], geo.y[3]);
    let (strides, dilations) = (&geo.strides, &geo.dilations);
    let xp = zero_pad_spatial(e, x, &geo.pads);
    let mut taps = Vec::new();
    for i in 0..kh {
        for j in 0..kw {
            let (r0, c0) = (i * dilations[0], j * dilations[1]);
            let ends = [
                r0 + (ho - 1) * strides[0] + 1,
                c0 + (wo - 1) * strides[1] + 1,
            ];
            taps.push(e.slice(&xp, &[r0, c0], &ends, &[2, 3], strides)); // [N, C, Ho, Wo]
        }
    }
    let refs: Vec<&str> = taps.iter().map(String::as_str).collect();
    let cols = e.op("Concat", &refs, vec![attr::int("axis", 1)]); // [N, T*C, Ho, Wo]
    let cols = e.reshape(&cols, &[0, kh * kw * c_in, ho * wo]);
    let cols_t = e.transpose(&cols, &[0, 2, 1]); // fused into the MatMul by ONNX Runtime
    let g3 = e.reshape(g, &[0, c_out, ho * wo]);
    let per = e.op("MatMul", &[&g3, &cols_t], vec![]); // [N, O, T*C]
    let dw = e.reduce_sum(&per, &[0], false); // [O, T*C]
    let dw = e.reshape(&dw, &[c_out, kh * kw, c_in]);
    let dw = e.transpose(&dw, &[0, 2, 1]); // [O, C, T]
    e.reshape(&dw, &[c_out, c_in, kh, kw])
}

/// Depthwise weight gradient for stride 1 as per-channel MatMuls whose diagonals are the taps.
///
/// `dW[c,i,j] = sum_{n,h,w} G[n,c,h,w] * Xpad[n,c,h+i,w+j]`. For each kernel row `i`, one batched
/// MatMul over channels `[C, Wo, N*Ho] x [C, N*Ho, Wp]` gives `M[c,w,v] = sum_{n,h} G[n,c,h,w] *
/// Xpad[n,c,h+i,v]`, and tap `j` is the sum of the diagonal `M[c,w,w+j]` over `w`. It does about
/// `Wp` times the necessary multiply-adds, but as dense GEMMs; measured faster on ONNX Runtime
/// 1.31 CPU than the grouped-Conv form (whose im2col copies the input once per tap and runs one
/// tiny GEMM per channel) at every Xception map size: batch 32, 9x9x728 12 vs 22 ms, 18x18x728
/// 54 vs 91 ms, 36x36x256 80 vs 93 ms, 72x72x128 162 vs 243 ms.
fn depthwise_weight_grad_unit_stride(e: &mut Emit, x: &str, g: &str, geo: &ConvGeometry) -> String {
    let (c, [kh, kw]) = (geo.c_in(), geo.kernel());
    let (ho, wo) = (geo.y[2], geo.y[3]);
    let wp = geo.x[3] + geo.pads[1] + geo.pads[3];
    let xt = e.transpose(x, &[1, 0, 2, 3]); // [C, N, H, W]
    let xp = zero_pad_spatial(e, &xt, &geo.pads);
    // [C, Wo, N*Ho] as a transposed view: ONNX Runtime fuses the last-axes Transpose into the
    // MatMul (FusedMatMul transA), which is ~2x faster than materializing a [1,3,0,2] Transpose.
    let gt = e.transpose(g, &[1, 0, 2, 3]); // [C, N, Ho, Wo]
    let g3 = e.reshape(&gt, &[c, -1, wo]); // [C, N*Ho, Wo]
    let g3 = e.transpose(&g3, &[0, 2, 1]); // [C, Wo, N*Ho]
    // Flat positions of the diagonals M[w, w+j] in a row-major [Wo, Wp] block, ordered (w, j).
    let diagonals: Vec<i64> = (0..wo)
        .flat_map(|w| (0..kw).map(move |j| w * wp + w + j))
        .collect();
    let diagonals = e.i64s(&diagonals);
    let mut rows = Vec::new();
    for i in 0..kh {
        let xr = e.slice(&xp, &[i], &[i + ho], &[2], &[1]); // [C, N, Ho, Wp]
        let x3 = e.reshape(&xr, &[c, -1, wp]); // [C, N*Ho, Wp]
        let m = e.op("MatMul", &[&g3, &x3], vec![]); // [C, Wo, Wp]
        let flat = e.reshape(&m, &[c, wo * wp]);
        let taps = e.op("Gather", &[&flat, &diagonals], vec![attr::int("axis", 1)]);
        let taps = e.reshape(&taps, &[c, wo, kw]);
        rows.push(e.reduce_sum(&taps, &[1], true)); // [C, 1, kw]
    }
    let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
    let dw = e.op("Concat", &refs, vec![attr::int("axis", 1)]); // [C, kh, kw]
    e.reshape(&dw, &[c, 1, kh, kw])
}

/// Zero-pads the last two axes of a 4-D value by ONNX `pads` `[top, left, bottom, right]`
/// (the value itself when all are 0).
fn zero_pad_spatial(e: &mut Emit, x: &str, pads: &[i64; 4]) -> String {
    if pads.iter().all(|&p| p == 0) {
        return x.to_owned();
    }
    let p = e.i64s(&[0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]);
    e.op("Pad", &[x, &p], vec![])
}

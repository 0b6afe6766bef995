//! Pooling: AveragePool, GlobalAveragePool, MaxPool.

use xfer_onnx::attr;

use super::Vjp;
use super::conv::ConvGeometry;
use crate::Result;
use crate::emit::{Emit, zero_fill};

/// AveragePool: divide by each window's count, then spread with a depthwise ConvTranspose of ones.
pub(super) fn average_pool(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    if v.node.attr_int("ceil_mode", 0) != 0 {
        return Err(v.unsupported("ceil_mode=1 is not supported"));
    }
    let geo = ConvGeometry::pool(e, v)?;
    if geo.dilations != [1, 1] {
        return Err(v.unsupported("dilated AveragePool is not supported"));
    }
    let (c, k) = (geo.c_in(), geo.kernel());
    let include_pad = v.node.attr_int("count_include_pad", 0) != 0;
    let scaled = if include_pad || geo.pads.iter().all(|&p| p == 0) {
        let inv = e.scalar(1.0 / (k[0] * k[1]) as f32);
        e.op("Mul", &[v.g, &inv], vec![])
    } else {
        let counts = inverse_window_counts(&geo);
        let counts = e.constant("avgpool_inv_count", &[1, 1, geo.y[2], geo.y[3]], &counts);
        e.op("Mul", &[v.g, &counts], vec![])
    };
    let ones = e.constant(
        "avgpool_ones",
        &[c, 1, k[0], k[1]],
        &vec![1.0; (c * k[0] * k[1]) as usize],
    );
    out[0] = Some(e.op(
        "ConvTranspose",
        &[&scaled, &ones],
        vec![
            attr::int("group", c),
            attr::ints("strides", &geo.strides),
            attr::ints("pads", &geo.pads),
            attr::ints("output_padding", &geo.output_padding()),
        ],
    ));
    Ok(())
}

/// `1 / (number of input cells in the window)` at each output position (pads excluded).
fn inverse_window_counts(geo: &ConvGeometry) -> Vec<f32> {
    let (xs, ys, k, strides, pads) = (&geo.x, &geo.y, geo.kernel(), &geo.strides, &geo.pads);
    let (ho, wo) = (ys[2], ys[3]);
    let mut inv = Vec::with_capacity((ho * wo).max(0) as usize);
    for oh in 0..ho {
        for ow in 0..wo {
            let h0 = oh * strides[0] - pads[0];
            let w0 = ow * strides[1] - pads[1];
            let hn = (h0 + k[0]).min(xs[2]) - h0.max(0);
            let wn = (w0 + k[1]).min(xs[3]) - w0.max(0);
            inv.push(1.0 / (hn * wn).max(1) as f32);
        }
    }
    inv
}

/// GlobalAveragePool: the gradient divided by the area, expanded over it.
pub(super) fn global_average_pool(
    e: &mut Emit,
    v: &Vjp<'_>,
    out: &mut [Option<String>],
) -> Result<()> {
    let x = v.input(0)?;
    let xs = v.shape(e, x)?;
    let area: i64 = xs.iter().skip(2).product();
    let inv = e.scalar(1.0 / area as f32);
    let scaled = e.op("Mul", &[v.g, &inv], vec![]);
    let shape = e.shape_of(x);
    out[0] = Some(e.op("Expand", &[&scaled, &shape], vec![]));
    Ok(())
}

/// MaxPool: the Indices output (added to the training forward) and ScatterElements(add) of the
/// gradient into a flat zero tensor.
pub(super) fn max_pool(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let Some(indices) = v.node.output.get(1).filter(|s| !s.is_empty()) else {
        return Err(v.unsupported("internal: MaxPool has no Indices output in the training graph"));
    };
    let x = v.input(0)?;
    let size = e.op("Size", &[x], vec![]);
    let size1 = e.reshape(&size, &[1]);
    let zeros = e.op("ConstantOfShape", &[&size1], vec![zero_fill()]);
    let flat_idx = e.reshape(indices, &[-1]);
    let flat_g = e.reshape(v.g, &[-1]);
    let scattered = e.op(
        "ScatterElements",
        &[&zeros, &flat_idx, &flat_g],
        vec![attr::int("axis", 0), attr::string("reduction", "add")],
    );
    out[0] = Some(e.reshape_like(&scattered, x));
    Ok(())
}

//! Ops that reduce along axes: Softmax, LogSoftmax, ReduceMean.

use super::Vjp;
use crate::Result;
use crate::emit::Emit;

/// The (non-negative) softmax axis of a Softmax/LogSoftmax node.
fn softmax_axis(e: &Emit, v: &Vjp<'_>) -> Result<i64> {
    let rank = v.shape(e, v.output(0)?)?.len() as i64;
    Ok(v.axis("axis", -1, rank))
}

/// Softmax: `dx = y * (g - sum(g * y))`.
pub(super) fn softmax(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let (g, y) = (v.g, v.output(0)?);
    let axis = softmax_axis(e, v)?;
    let gy_ = e.op("Mul", &[g, y], vec![]);
    let s = e.reduce_sum(&gy_, &[axis], true);
    let d = e.op("Sub", &[g, &s], vec![]);
    out[0] = Some(e.op("Mul", &[y, &d], vec![]));
    Ok(())
}

/// LogSoftmax: `dx = g - exp(y) * sum(g)`.
pub(super) fn log_softmax(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let (g, y) = (v.g, v.output(0)?);
    let axis = softmax_axis(e, v)?;
    let p = e.op("Exp", &[y], vec![]);
    let s = e.reduce_sum(g, &[axis], true);
    let ps = e.op("Mul", &[&p, &s], vec![]);
    out[0] = Some(e.op("Sub", &[g, &ps], vec![]));
    Ok(())
}

/// ReduceMean (axes as an attribute): the gradient scaled by 1/count and expanded back.
pub(super) fn reduce_mean(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let (g, x, y) = (v.g, v.input(0)?, v.output(0)?);
    let xs = v.shape(e, x)?;
    let rank = xs.len() as i64;
    if v.node.input.len() > 1 {
        return Err(v.unsupported("ReduceMean with axes as an input (opset 18) is not supported"));
    }
    let axes: Vec<i64> = match v.node.attr_ints("axes") {
        Some(a) => a
            .iter()
            .map(|&a| if a < 0 { a + rank } else { a })
            .collect(),
        None => (0..rank).collect(),
    };
    let keep = v.node.attr_int("keepdims", 1) != 0;
    let g_full = if keep || axes.len() as i64 == rank {
        g.to_owned()
    } else {
        let mut sorted = axes.clone();
        sorted.sort_unstable();
        let ax = e.i64s(&sorted);
        e.op("Unsqueeze", &[g, &ax], vec![])
    };
    // 1/count as Size(y)/Size(x), so a reduction over the batch stays right.
    let sx = e.op("Size", &[x], vec![]);
    let sy = e.op("Size", &[y], vec![]);
    let fx = e.cast_f32(&sx);
    let fy = e.cast_f32(&sy);
    let scale = e.op("Div", &[&fy, &fx], vec![]);
    let scaled = e.op("Mul", &[&g_full, &scale], vec![]);
    let shape = e.shape_of(x);
    out[0] = Some(e.op("Expand", &[&scaled, &shape], vec![]));
    Ok(())
}

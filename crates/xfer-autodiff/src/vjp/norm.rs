//! Normalization: BatchNormalization in inference mode.

use xfer_onnx::TensorProto;

use super::Vjp;
use crate::Result;
use crate::emit::Emit;

/// BatchNormalization with frozen statistics: gradients of X, scale and B.
pub(super) fn batch_norm(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let node = v.node;
    if node.attr_int("training_mode", 0) != 0 || node.output.len() > 1 {
        return Err(v.unsupported(
            "BatchNormalization in training mode is not supported; xfer keeps BatchNorm in inference mode (frozen statistics), as Keras does with training=False",
        ));
    }
    if v.wants(3) || v.wants(4) {
        return Err(v.unsupported("moving mean/variance are statistics, not trainable parameters"));
    }
    let g = v.g;
    let x = v.input(0)?;
    let (scale, mean, var) = (v.input(1)?, v.input(3)?, v.input(4)?);
    let eps = node.attr_float("epsilon", 1e-5);
    let xs = v.shape(e, x)?;
    let c = xs
        .get(1)
        .copied()
        .ok_or_else(|| v.unsupported("input must have a channel axis"))?;
    let mut bshape = vec![1i64; xs.len()];
    bshape[1] = c;
    let reduce_axes: Vec<i64> = (0..xs.len() as i64).filter(|&a| a != 1).collect();
    let inv_std = inv_std(e, var, eps, c);
    if v.wants(0) {
        let a = e.op("Mul", &[scale, &inv_std], vec![]);
        let a = e.reshape(&a, &bshape);
        out[0] = Some(e.op("Mul", &[g, &a], vec![]));
    }
    if v.wants(2) {
        out[2] = Some(e.reduce_sum(g, &reduce_axes, false));
    }
    if v.wants(1) {
        // dscale = sum(g * (x - mean)) * inv_std
        let mean_b = e.reshape(mean, &bshape);
        let centered = e.op("Sub", &[x, &mean_b], vec![]);
        let prod = e.op("Mul", &[g, &centered], vec![]);
        let s = e.reduce_sum(&prod, &reduce_axes, false);
        out[1] = Some(e.op("Mul", &[&s, &inv_std], vec![]));
    }
    Ok(())
}

/// `1 / sqrt(var + eps)`: a constant when the variance is an initializer.
fn inv_std(e: &mut Emit, var: &str, eps: f32, c: i64) -> String {
    match e.b.graph().initializer(var).map(TensorProto::to_f32) {
        Some(Ok(v)) => {
            let data = inv_std_values(&v, eps);
            e.constant("bn_inv_std", &[c], &data)
        }
        _ => {
            let epsc = e.scalar(eps);
            let ve = e.op("Add", &[var, &epsc], vec![]);
            let sd = e.op("Sqrt", &[&ve], vec![]);
            e.op("Reciprocal", &[&sd], vec![])
        }
    }
}

/// `1 / sqrt(var + eps)` of each variance, computed in f64.
pub(crate) fn inv_std_values(var: &[f32], eps: f32) -> Vec<f32> {
    var.iter()
        .map(|&v| (1.0 / (f64::from(v) + f64::from(eps)).sqrt()) as f32)
        .collect()
}

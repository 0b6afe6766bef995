//! Matrix products: Gemm and MatMul.

use xfer_onnx::attr;

use super::Vjp;
use crate::Result;
use crate::emit::Emit;

/// `alpha * Gemm(lhs, rhs)` with one transpose flag, transposed back when the forward operand
/// was transposed.
fn operand_grad(
    e: &mut Emit,
    inputs: [&str; 2],
    alpha: f32,
    flag: (&str, bool),
    transposed: bool,
) -> String {
    let d = e.op(
        "Gemm",
        &inputs,
        vec![
            attr::float("alpha", alpha),
            attr::int(flag.0, i64::from(flag.1)),
        ],
    );
    if transposed {
        e.transpose(&d, &[1, 0])
    } else {
        d
    }
}

/// Gemm: `Y = alpha * A' @ B' + beta * C`.
pub(super) fn gemm(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let g = v.g;
    let (a, b) = (v.input(0)?, v.input(1)?);
    let alpha = v.node.attr_float("alpha", 1.0);
    let beta = v.node.attr_float("beta", 1.0);
    let ta = v.node.attr_int("transA", 0) != 0;
    let tb = v.node.attr_int("transB", 0) != 0;
    if v.wants(0) {
        // dA' = alpha * g @ B'^T
        out[0] = Some(operand_grad(e, [g, b], alpha, ("transB", !tb), ta));
    }
    if v.wants(1) {
        // dB' = alpha * A'^T @ g
        out[1] = Some(operand_grad(e, [a, g], alpha, ("transA", !ta), tb));
    }
    if v.wants(2) {
        let c = v.input(2)?;
        let ys = v.shape(e, v.output(0)?)?;
        let cs = v.shape(e, c)?;
        let scaled = if beta == 1.0 {
            g.to_owned()
        } else {
            let s = e.scalar(beta);
            e.op("Mul", &[g, &s], vec![])
        };
        out[2] = Some(e.unbroadcast(&scaled, &ys, c, &cs));
    }
    Ok(())
}

/// The permutation that swaps the last two axes of a value of rank `rank`.
fn swap_last(rank: usize) -> Vec<i64> {
    let mut p: Vec<i64> = (0..rank as i64).collect();
    p.swap(rank - 1, rank - 2);
    p
}

/// MatMul (operands of rank >= 2, numpy broadcasting of the leading dims).
pub(super) fn matmul(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let g = v.g;
    let (a, b) = (v.input(0)?, v.input(1)?);
    let a_s = v.shape(e, a)?;
    let b_s = v.shape(e, b)?;
    let ys = v.shape(e, v.output(0)?)?;
    if a_s.len() < 2 || b_s.len() < 2 || ys.len() < 2 {
        return Err(v.unsupported("MatMul with a 1-D operand is not supported; reshape it to 2-D"));
    }
    if v.wants(0) {
        let bt = e.transpose(b, &swap_last(b_s.len()));
        let da = e.op("MatMul", &[g, &bt], vec![]);
        let mut da_shape = ys.clone();
        let n = da_shape.len();
        da_shape[n - 1] = a_s[a_s.len() - 1];
        out[0] = Some(e.unbroadcast(&da, &da_shape, a, &a_s));
    }
    if v.wants(1) {
        out[1] = Some(matmul_rhs_grad(e, g, a, b, &a_s, &b_s, &ys));
    }
    Ok(())
}

/// The gradient of MatMul's right operand.
fn matmul_rhs_grad(
    e: &mut Emit,
    g: &str,
    a: &str,
    b: &str,
    a_s: &[i64],
    b_s: &[i64],
    ys: &[i64],
) -> String {
    if b_s.len() == 2 {
        // [.., M, K] x [K, N]: flatten the leading dims, one Gemm with transA.
        let k = a_s[a_s.len() - 1];
        let n = b_s[1];
        let a2 = e.reshape(a, &[-1, k]);
        let g2 = e.reshape(g, &[-1, n]);
        return e.op("Gemm", &[&a2, &g2], vec![attr::int("transA", 1)]);
    }
    let at = e.transpose(a, &swap_last(a_s.len()));
    let db = e.op("MatMul", &[&at, g], vec![]);
    let mut db_shape = ys.to_vec();
    let n = db_shape.len();
    db_shape[n - 2] = b_s[b_s.len() - 2];
    e.unbroadcast(&db, &db_shape, b, b_s)
}

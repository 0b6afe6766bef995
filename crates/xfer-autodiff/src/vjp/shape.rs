//! Ops that move values without changing them: Identity, Dropout (inference), Flatten,
//! Reshape, Transpose, Concat.

use super::Vjp;
use crate::Result;
use crate::emit::Emit;

/// Identity and Dropout (in inference mode, or masked by the training graph): the gradient itself.
pub(super) fn identity(_: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    out[0] = Some(v.g.to_owned());
    Ok(())
}

/// Flatten and Reshape: the gradient reshaped like the input.
pub(super) fn reshape(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    out[0] = Some(e.reshape_like(v.g, v.input(0)?));
    Ok(())
}

/// Transpose: the gradient transposed by the inverse permutation.
pub(super) fn transpose(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let rank = v.shape(e, v.input(0)?)?.len();
    let perm: Vec<i64> = match v.node.attr_ints("perm") {
        Some(p) => p.to_vec(),
        None => (0..rank as i64).rev().collect(),
    };
    let mut inverse = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        let slot = usize::try_from(p)
            .ok()
            .and_then(|p| inverse.get_mut(p))
            .ok_or_else(|| v.unsupported(format!("perm {perm:?} is not a permutation")))?;
        *slot = i as i64;
    }
    out[0] = Some(e.transpose(v.g, &inverse));
    Ok(())
}

/// Concat (not along the batch): one Slice of the gradient per input.
pub(super) fn concat(e: &mut Emit, v: &Vjp<'_>, out: &mut [Option<String>]) -> Result<()> {
    let rank = v.shape(e, v.output(0)?)?.len() as i64;
    let axis = v.axis("axis", 0, rank);
    if axis == 0 {
        return Err(v.unsupported("concatenation along the batch axis is not supported"));
    }
    let mut offset = 0i64;
    for (i, slot) in out.iter_mut().enumerate() {
        let shape = v.shape(e, v.input(i)?)?;
        let size = *shape
            .get(axis as usize)
            .ok_or_else(|| v.unsupported(format!("axis {axis} is out of range")))?;
        if v.wants(i) {
            *slot = Some(e.slice(v.g, &[offset], &[offset + size], &[axis], &[1]));
        }
        offset += size;
    }
    Ok(())
}

//! Shape checks shared by every backend, so the CPU reference and the GPU launchers reject the same
//! inputs with the same messages.
use crate::error::{Error, Result};
use crate::tensor::Tensor;

pub fn same_shape(
    op: &'static str,
    a_name: &str,
    a: &Tensor,
    b_name: &str,
    b: &Tensor,
) -> Result<()> {
    if a.shape != b.shape {
        return Err(Error::shape(
            op,
            format!("{a_name} {:?} and {b_name} {:?} differ", a.shape, b.shape),
        ));
    }
    Ok(())
}

/// Saved tensor with batch B dividing the gradient batch N and the same per-item shape.
pub fn broadcast_batch(
    op: &'static str,
    saved_name: &str,
    saved: &Tensor,
    grad_name: &str,
    grad: &Tensor,
) -> Result<usize> {
    let b = saved.batch();
    let n = grad.batch();
    if saved.shape.len() != grad.shape.len()
        || saved.shape[1..] != grad.shape[1..]
        || b == 0
        || n % b != 0
    {
        return Err(Error::shape(
            op,
            format!(
                "{saved_name} {:?} must have the per-item shape of {grad_name} {:?} and a batch dividing its batch",
                saved.shape, grad.shape
            ),
        ));
    }
    Ok(b)
}

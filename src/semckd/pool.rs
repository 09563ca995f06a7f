//! PyTorch's adaptive average pooling (`docs/losses.md §4.3`), on the CPU in f64.

use ndarray::{Array4, ArrayView4};

use crate::dtype::HostFloat;
use crate::error::{KdError, Result};

/// The input window `[start, end)` of output position `o` of `out` positions over `len` inputs:
/// `start = floor(o * len / out)`, `end = ceil((o + 1) * len / out)`.
pub fn pool_window(o: usize, len: usize, out: usize) -> (usize, usize) {
    (o * len / out, ((o + 1) * len).div_ceil(out))
}

fn check(x: &[usize], out_h: usize, out_w: usize) -> Result<()> {
    if x.contains(&0) || out_h == 0 || out_w == 0 {
        return Err(KdError::EmptyInput { what: "adaptive_avg_pool", shape: vec![x[0], x[1], out_h, out_w] });
    }
    Ok(())
}

/// `adaptive_avg_pool2d(x, (out_h, out_w))` for `x` of shape `[N, C, H, W]`.
pub fn adaptive_avg_pool<T: HostFloat>(x: ArrayView4<'_, T>, out_h: usize, out_w: usize) -> Result<Array4<f64>> {
    let [n, c, h, w] = [x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]];
    check(x.shape(), out_h, out_w)?;
    let mut out = Array4::<f64>::zeros((n, c, out_h, out_w));
    for ((b, ch, oy, ox), v) in out.indexed_iter_mut() {
        let (y0, y1) = pool_window(oy, h, out_h);
        let (x0, x1) = pool_window(ox, w, out_w);
        let mut sum = 0.0;
        for y in y0..y1 {
            for xx in x0..x1 {
                sum += x[[b, ch, y, xx]].to_f64();
            }
        }
        *v = sum / ((y1 - y0) * (x1 - x0)) as f64;
    }
    Ok(out)
}

/// The backward of [`adaptive_avg_pool`]: d / d x of `sum(grad_out * pool(x))`, for an input of `in_h` x `in_w`.
pub fn adaptive_avg_pool_backward(grad_out: ArrayView4<'_, f64>, in_h: usize, in_w: usize) -> Result<Array4<f64>> {
    let [n, c, oh, ow] = [grad_out.shape()[0], grad_out.shape()[1], grad_out.shape()[2], grad_out.shape()[3]];
    check(&[n, c, in_h, in_w], oh, ow)?;
    let mut grad = Array4::<f64>::zeros((n, c, in_h, in_w));
    for ((b, ch, oy, ox), &g) in grad_out.indexed_iter() {
        let (y0, y1) = pool_window(oy, in_h, oh);
        let (x0, x1) = pool_window(ox, in_w, ow);
        let share = g / ((y1 - y0) * (x1 - x0)) as f64;
        for y in y0..y1 {
            for xx in x0..x1 {
                grad[[b, ch, y, xx]] += share;
            }
        }
    }
    Ok(grad)
}

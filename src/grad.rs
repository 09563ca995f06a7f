//! How a call writes its gradients: the options every loss's backward entry points take.

use crate::error::Result;
use crate::validate;

/// How a call writes its gradients. The default overwrites them, unscaled.
///
/// With both, a training step that adds the distillation gradient into the gradient its task loss already
/// wrote, under an AMP loss scale, is one launch: `GradOptions { scale: amp_scale, accumulate: true }`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradOptions {
    /// A factor on every gradient, known on the host (an AMP loss scale, a schedule weight); finite. The
    /// loss itself is never scaled. Default 1. A factor known only on the device is `backward`'s upstream
    /// scalar; both may be given.
    pub scale: f64,
    /// Add the gradients into their buffers (`grad += dL/dx`, cuBLAS's beta = 1) instead of overwriting them.
    /// Default off.
    pub accumulate: bool,
}

impl Default for GradOptions {
    fn default() -> Self {
        GradOptions { scale: 1.0, accumulate: false }
    }
}

impl GradOptions {
    /// Overwrite, scale 1 (the default).
    pub const OVERWRITE: GradOptions = GradOptions { scale: 1.0, accumulate: false };

    /// Add into the gradient buffers, scale 1.
    pub const ACCUMULATE: GradOptions = GradOptions { scale: 1.0, accumulate: true };

    /// Checks `scale`.
    pub fn validate(&self) -> Result<()> {
        validate::finite("GradOptions::scale", self.scale)
    }
}

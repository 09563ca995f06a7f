//! Checks of configuration values shared by the losses' configs.

use crate::error::{KdError, Result};

/// `tau` must be finite and strictly positive: it divides the logits.
pub(crate) fn temperature(tau: f64) -> Result<()> {
    if tau.is_finite() && tau > 0.0 {
        Ok(())
    } else {
        Err(KdError::InvalidParameter { name: "tau", value: tau.to_string(), requirement: "finite and > 0" })
    }
}

/// A loss weight must be finite (zero and negative weights are allowed: schedules use them).
pub(crate) fn finite(name: &'static str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(KdError::InvalidParameter { name, value: value.to_string(), requirement: "finite" })
    }
}

/// A scaling factor the GPU path passes as f32 must not overflow or flush to zero there.
pub(crate) fn representable_f32(name: &'static str, value: f64) -> Result<()> {
    let narrowed = value as f32;
    if narrowed.is_finite() && (value == 0.0 || narrowed != 0.0) {
        Ok(())
    } else {
        Err(KdError::InvalidParameter {
            name,
            value: value.to_string(),
            requirement: "representable in f32 (|x| between 1e-38 and 3e38, or 0)",
        })
    }
}

//! Pixel KD on the GPU: one launch of `pixel_kd_{dtype}` (kernels/pixel_kd.cu) on the caller's stream.

use std::sync::Arc;

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop};

use super::PixelKdConfig;
use crate::cuda::{self, Family, Kernels, Workspace, BLOCK_THREADS};
use crate::dtype::KdFloat;
use crate::error::{KdError, Result};
use crate::ffi::{self, KdPixelKdParams};
use crate::shape::Nchw;
use crate::validate;

const OP_PIXEL_KD: usize = 0;
/// One wave of resident 256-thread blocks per SM; threads then stride over the remaining pixels.
const BLOCKS_PER_SM: usize = 8;

/// Blocks for `pixels` pixels: one pixel per thread up to one full wave of the GPU.
pub(crate) fn grid_for(pixels: usize, sm_count: usize) -> usize {
    pixels.div_ceil(BLOCK_THREADS as usize).clamp(1, sm_count * BLOCKS_PER_SM)
}

/// Pixel KD on the GPU, with the same surface as [`super::PixelKdCpu`].
#[derive(Debug)]
pub struct PixelKdCuda {
    config: PixelKdConfig,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    workspace: Workspace,
}

impl PixelKdCuda {
    /// Validates `config`, probes for a driver, and loads the kernels into `stream`'s context.
    pub fn new(stream: Arc<CudaStream>, config: PixelKdConfig) -> Result<Self> {
        config.validate()?;
        let kernels = Kernels::load(&stream, Family::PixelKd, &["pixel_kd"])?;
        let workspace = Workspace::new(&stream)?;
        Ok(PixelKdCuda { config, stream, kernels, workspace })
    }

    /// The configuration.
    pub fn config(&self) -> &PixelKdConfig {
        &self.config
    }

    /// The stream every launch goes to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Writes the loss into `loss[0]` (f32).
    pub fn forward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), None, None)
    }

    /// The training-step call: loss and d loss / d student in one launch.
    pub fn forward_backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: &mut dyn DevicePtrMut<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, Some(loss), Some(grad_student), None)
    }

    /// d loss / d student times the upstream gradient `upstream[0]` (a device f32), without the loss.
    pub fn backward<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        upstream: &dyn DevicePtr<f32>,
        grad_student: &mut dyn DevicePtrMut<T>,
    ) -> Result<()> {
        self.launch(shape, student, teacher, None, Some(grad_student), Some(upstream))
    }

    fn launch<T: KdFloat>(
        &mut self,
        shape: &[usize],
        student: &dyn DevicePtr<T>,
        teacher: &dyn DevicePtr<T>,
        loss: Option<&mut dyn DevicePtrMut<f32>>,
        grad_student: Option<&mut dyn DevicePtrMut<T>>,
        upstream: Option<&dyn DevicePtr<f32>>,
    ) -> Result<()> {
        let shape = Nchw::from_dims("student", shape)?;
        if shape.c > i32::MAX as usize {
            return Err(KdError::TooLarge {
                what: "student",
                detail: format!("{} channels; at most 2^31 - 1", shape.c),
            });
        }
        let numel = shape.numel();
        let pixels = shape.n * shape.plane();
        let blocks = grid_for(pixels, self.kernels.sm_count as usize);
        let grid = cuda::grid_blocks("student", blocks)?;
        let loss_scale = self.config.loss_scale(&shape);
        let grad_scale = self.config.grad_scale(&shape);
        validate::representable_f32("loss_weight * [tau^2] / divisor", loss_scale)?;
        validate::representable_f32("loss_weight * [tau^2] / divisor / tau", grad_scale)?;

        let mut flags = 0;
        if loss.is_some() {
            flags |= ffi::KdOutputFlags_KD_WANT_LOSS;
        }
        if grad_student.is_some() {
            flags |= ffi::KdOutputFlags_KD_WANT_GRAD_STUDENT;
        }
        if upstream.is_some() {
            flags |= ffi::KdOutputFlags_KD_SCALE_BY_UPSTREAM;
        }
        let params = KdPixelKdParams {
            pixels: pixels as i64,
            plane: shape.plane() as i64,
            channels: shape.c as i32,
            flags: flags as i32,
            log2e_over_tau: (std::f64::consts::LOG2_E / self.config.tau) as f32,
            loss_scale: loss_scale as f32,
            grad_scale: grad_scale as f32,
            reserved: 0.0,
        };

        let stream = &self.stream;
        let mut guards: Vec<SyncOnDrop<'_>> = Vec::with_capacity(8);
        let (s, t) = cuda::input_pair(student, teacher, numel, stream, &mut guards)?;
        let loss_ptr = match loss {
            Some(l) => cuda::output("loss", l, 1, stream, &mut guards)?,
            None => 0,
        };
        let gs = match grad_student {
            Some(g) => cuda::output("grad_student", g, numel, stream, &mut guards)?,
            None => 0,
        };
        let up = match upstream {
            Some(u) => cuda::input("upstream", u, 1, stream, &mut guards)?,
            None => 0,
        };
        let (block_totals, counter) = self.workspace.floats_and_counter(stream, blocks, &mut guards)?;
        let function = self.kernels.get(OP_PIXEL_KD, T::DTYPE);
        let cfg = LaunchConfig { grid_dim: (grid, 1, 1), block_dim: (BLOCK_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the argument list matches `pixel_kd_*` in kernels/pixel_kd.cu; every pointer was checked to
        // hold the elements the kernel touches; null pointers only for outputs the flags turn off.
        unsafe {
            stream
                .launch_builder(function)
                .arg(&s)
                .arg(&t)
                .arg(&block_totals)
                .arg(&counter)
                .arg(&loss_ptr)
                .arg(&gs)
                .arg(&up)
                .arg(&params)
                .launch(cfg)
                .map_err(|e| KdError::cuda("launch pixel_kd", e))?;
        }
        drop(guards);
        Ok(())
    }
}

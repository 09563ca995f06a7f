//! One SemCKD call from device addresses: checks, plan (grid sizes, Gram chunking, workspace layout, the
//! argument block with every layer and pair table inside it), launches. Shared by the CUDA raw layer and the
//! host emulation. Six launches whatever the layout (`kernels/semckd.cu`).

use std::ffi::c_void;

use super::layers::{SemckdLayers, MAX_LAYERS};
use super::{Semckd, SemckdConfig};
use crate::dtype::DType;
use crate::error::{KdError, Result};
use crate::family::{Family, KernelFile, RawCall, Sizing};
use crate::ffi::{self, KdSemckdArgs, KdSemckdParams};
use crate::grad::GradOptions;
use crate::launch::{self, Launch, Launcher, Machine, BLOCK_THREADS};
use crate::validate;

pub(crate) const GRAM: &str = "semckd_gram";
pub(crate) const EMBED: &str = "semckd_embed";
pub(crate) const ATTEND: &str = "semckd_attend";
pub(crate) const PAIRS: &str = "semckd_pairs";
pub(crate) const FINISH: &str = "semckd_finish";
pub(crate) const GRAM_BACK: &str = "semckd_gram_back";
/// Every entry point of kernels/semckd.cu.
pub(crate) const KERNELS: [&str; 6] = [GRAM, EMBED, ATTEND, PAIRS, FINISH, GRAM_BACK];

/// Columns of X one Gram block reduces at least.
const MIN_CHUNK: usize = 2048;
/// At most this many chunks per layer (the combine in `semckd_embed` reads them all).
const MAX_CHUNKS: usize = 64;

/// The device addresses of one SemCKD call (`CUdeviceptr`s). Inputs are required; the loss, the attention
/// and the gradients are written where their addresses are non-zero. Gradients come all together: either
/// every gradient address is set (`grad_student`, `grad_proj`, `grad_query`, `grad_key`) or none is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SemckdRawBuffers {
    /// `S` student maps `[B, Cs_i, Hs_i, Ws_i]`.
    pub student: Vec<u64>,
    /// `T` teacher maps.
    pub teacher: Vec<u64>,
    /// `S * T` regressor outputs `[B, Ct_j, h, h]`, pair (i, j) at `i * T + j`.
    pub proj: Vec<u64>,
    /// `S` query MLPs: `[linear1.weight, linear1.bias, linear2.weight, linear2.bias]`, f32.
    pub query: Vec<[u64; 4]>,
    /// `T` key MLPs, f32.
    pub key: Vec<[u64; 4]>,
    /// One f32.
    pub loss: u64,
    /// `[B, S, T]` f32, optional.
    pub attention: u64,
    /// `S` gradients of the student maps (Gram path), or empty.
    pub grad_student: Vec<u64>,
    /// `S * T` gradients of the regressor outputs, or empty.
    pub grad_proj: Vec<u64>,
    /// `S` query MLP gradients (f32), or empty.
    pub grad_query: Vec<[u64; 4]>,
    /// `T` key MLP gradients (f32), or empty.
    pub grad_key: Vec<[u64; 4]>,
    /// One f32 read by the kernels: d total / d loss (scales every gradient).
    pub upstream: u64,
}

fn count_err(what: &'static str, expected: usize, got: usize) -> KdError {
    KdError::ShapeMismatch { what, expected: vec![expected], got: vec![got] }
}

impl SemckdRawBuffers {
    /// Checks counts and presence; returns whether gradients are wanted.
    fn check(&self, layers: &SemckdLayers) -> Result<bool> {
        let (s, t) = (layers.students(), layers.teachers());
        for (what, n, want) in [
            ("student buffers", self.student.len(), s),
            ("teacher buffers", self.teacher.len(), t),
            ("proj buffers (S * T)", self.proj.len(), s * t),
            ("query MLPs", self.query.len(), s),
            ("key MLPs", self.key.len(), t),
        ] {
            if n != want {
                return Err(count_err(what, want, n));
            }
        }
        let inputs = self.student.iter().chain(&self.teacher).chain(&self.proj).copied();
        let params = self.query.iter().chain(&self.key).flatten().copied();
        if inputs.chain(params).any(|a| a == 0) {
            return Err(KdError::OutputMismatch { what: "inputs", fix: "every input needs a device address" });
        }
        let grads = !(self.grad_student.is_empty()
            && self.grad_proj.is_empty()
            && self.grad_query.is_empty()
            && self.grad_key.is_empty());
        if grads {
            for (what, n, want) in [
                ("grad_student buffers", self.grad_student.len(), s),
                ("grad_proj buffers (S * T)", self.grad_proj.len(), s * t),
                ("grad_query MLPs", self.grad_query.len(), s),
                ("grad_key MLPs", self.grad_key.len(), t),
            ] {
                if n != want {
                    return Err(count_err(what, want, n));
                }
            }
            let all = self.grad_student.iter().chain(&self.grad_proj).copied();
            let mlps = self.grad_query.iter().chain(&self.grad_key).flatten().copied();
            if all.chain(mlps).any(|a| a == 0) {
                return Err(KdError::OutputMismatch {
                    what: "gradients",
                    fix: "gradients come together: give every gradient an address, or none",
                });
            }
        } else if self.upstream != 0 {
            return Err(KdError::OutputMismatch { what: "upstream", fix: "an upstream scalar needs the gradients" });
        }
        if !grads && self.loss == 0 && self.attention == 0 {
            return Err(KdError::OutputMismatch { what: "loss", fix: "nothing to compute: give the loss an address" });
        }
        Ok(grads)
    }
}

/// The plan of a call: parameter block, workspace layout (float offsets) and launches.
#[derive(Debug, Clone)]
pub(crate) struct SemckdPlan {
    pub params: KdSemckdParams,
    pub launches: Vec<Launch>,
    /// Offsets in floats: gram_partials, gram, hidden, embedding, norm, alpha, mse, dy, dz, du, dgram.
    pub offsets: [usize; 11],
    pub workspace_floats: usize,
}

/// Plans a call on `layers`.
pub(crate) fn plan(
    config: &SemckdConfig,
    layers: &SemckdLayers,
    want_grad: bool,
    flags: i32,
    scale: f64,
) -> Result<SemckdPlan> {
    layers.validate()?;
    let (b, d, s, t) = (layers.batch, layers.embed_dim, layers.students(), layers.teachers());
    let loss_scale = config.loss_weight / (b * s) as f64;
    validate::representable_f32("loss_weight / (B*S)", loss_scale)?;
    validate::representable_f32("loss_weight / (B*S) * GradOptions::scale", loss_scale * scale)?;
    // SAFETY: plain old data (integers and floats); all-zero is a valid value.
    let mut p: KdSemckdParams = unsafe { std::mem::zeroed() };
    p.batch = b as i32;
    p.embed = d as i32;
    p.students = s as i32;
    p.teachers = t as i32;
    let tile = ffi::KD_SEMCKD_GRAM_TILE as usize;
    let gram_tiles = b.div_ceil(tile);
    p.gram_tiles = gram_tiles as i32;
    p.flags = flags;
    p.loss_scale = loss_scale as f32;
    p.grad_scale = (loss_scale * scale) as f32;
    p.eps = config.eps.unwrap_or(0.0) as f32;
    let all: Vec<[usize; 3]> = layers.student.iter().chain(&layers.teacher).copied().collect();
    let mut gram_blocks = 0usize;
    let mut partial_floats = 0usize;
    for (l, &[c, h, w]) in all.iter().enumerate() {
        let dim = c * h * w;
        let chunks = dim.div_ceil(MIN_CHUNK).clamp(1, MAX_CHUNKS);
        let chunk_len = dim.div_ceil(chunks).next_multiple_of(ffi::KD_SEMCKD_GRAM_K as usize);
        let chunks = dim.div_ceil(chunk_len);
        p.dim[l] = dim as i64;
        p.chunk_len[l] = chunk_len as i64;
        p.gram_offset[l] = partial_floats as i64;
        p.gram_first[l] = i32::try_from(gram_blocks).map_err(|_| too_large("gram blocks"))?;
        p.chunks[l] = chunks as i32;
        p.channels[l] = c as i32;
        p.height[l] = h as i32;
        p.width[l] = w as i32;
        gram_blocks += chunks * gram_tiles * gram_tiles;
        partial_floats += chunks * b * b;
    }
    p.gram_first[all.len()] = i32::try_from(gram_blocks).map_err(|_| too_large("gram blocks"))?;
    let rows = ffi::KD_SEMCKD_BACK_ROWS as usize;
    let mut back_blocks = 0usize;
    for i in 0..s {
        p.back_first[i] = i32::try_from(back_blocks).map_err(|_| too_large("gram_back blocks"))?;
        back_blocks += b.div_ceil(rows) * (p.dim[i] as usize).div_ceil(BLOCK_THREADS as usize);
    }
    p.back_first[s] = i32::try_from(back_blocks).map_err(|_| too_large("gram_back blocks"))?;
    let nl = s + t;
    let sizes = [
        partial_floats,
        nl * b * b,
        nl * b * 2 * d,
        nl * b * d,
        nl * b,
        b * s * t,
        b * s * t,
        nl * b * d,
        nl * b * d,
        nl * b * 2 * d,
        s * b * b,
    ];
    let mut offsets = [0usize; 11];
    let mut at = 0usize;
    for (o, size) in offsets.iter_mut().zip(sizes) {
        *o = at;
        at += size.next_multiple_of(64);
    }
    let mut launches = vec![
        Launch::new(GRAM, launch::grid_blocks("semckd Gram", gram_blocks)?),
        Launch::new(EMBED, nl as u32),
        Launch::new(ATTEND, 1),
        Launch::new(PAIRS, launch::grid_blocks("semckd pairs", s * t * b)?),
    ];
    if want_grad {
        launches.push(Launch::new(FINISH, nl as u32));
        launches.push(Launch::new(GRAM_BACK, launch::grid_blocks("semckd gram_back", back_blocks)?));
    } else {
        launches.push(Launch::new(FINISH, 1));
    }
    Ok(SemckdPlan { params: p, launches, offsets, workspace_floats: at })
}

fn too_large(what: &'static str) -> KdError {
    KdError::TooLarge { what, detail: "more than 2^31 - 1 thread blocks".into() }
}

/// The workspace floats any call on `layers` needs.
pub(crate) fn workspace_bound(config: &SemckdConfig, layers: &SemckdLayers) -> Result<usize> {
    Ok(plan(config, layers, true, 0, 1.0)?.workspace_floats)
}

pub(crate) const POOL: &str = "semckd_pool";
pub(crate) const POOL_BACK: &str = "semckd_pool_back";
/// The pooling entry points of kernels/semckd.cu.
pub(crate) const POOL_KERNELS: [&str; 2] = [POOL, POOL_BACK];

/// Adaptive average pooling of an NCHW tensor `input_shape` to `out_hw` (`backward` = `None`), or its
/// backward (`Some(options)`: `input` is the gradient of the pooled tensor, `output` the gradient of the input,
/// of shape `input_shape`).
///
/// # Safety
/// `input` and `output` hold the tensors the shapes say, in `dtype`, where `launcher`'s kernels reach them.
pub(crate) unsafe fn run_pool(
    dtype: DType,
    input_shape: &[usize],
    out_hw: [usize; 2],
    input: u64,
    output: u64,
    backward: Option<GradOptions>,
    launcher: &mut dyn Launcher,
) -> Result<()> {
    let shape = crate::shape::Nchw::from_dims("adaptive_avg_pool input", input_shape)?;
    if out_hw.contains(&0) {
        return Err(KdError::EmptyInput {
            what: "adaptive_avg_pool output",
            shape: vec![shape.n, shape.c, out_hw[0], out_hw[1]],
        });
    }
    let big = |v: usize| v > i32::MAX as usize / 2;
    if big(shape.h) || big(shape.w) || big(out_hw[0]) || big(out_hw[1]) {
        return Err(KdError::TooLarge { what: "adaptive_avg_pool", detail: "a spatial size beyond 2^30".into() });
    }
    if input == 0 || output == 0 {
        return Err(KdError::OutputMismatch { what: "adaptive_avg_pool", fix: "both buffers need an address" });
    }
    let planes = shape.n * shape.c;
    let (kernel, elements, flags, scale) = match backward {
        None => (POOL, planes * out_hw[0] * out_hw[1], 0, 1.0),
        Some(options) => {
            options.validate()?;
            validate::representable_f32("GradOptions::scale", options.scale)?;
            let flags = if options.accumulate { ffi::KdOutputFlags_KD_ACCUMULATE_GRAD as i32 } else { 0 };
            (POOL_BACK, shape.numel(), flags, options.scale)
        }
    };
    let args = ffi::KdPoolArgs {
        input,
        output,
        planes: planes as i64,
        in_h: shape.h as i32,
        in_w: shape.w as i32,
        out_h: out_hw[0] as i32,
        out_w: out_hw[1] as i32,
        flags,
        scale: scale as f32,
    };
    let blocks = launch::grid_blocks("adaptive_avg_pool", elements.div_ceil(BLOCK_THREADS as usize))?;
    // SAFETY: `args` is the block the pooling kernels take; the caller vouches for the addresses.
    unsafe { launcher.launch(&Launch::new(kernel, blocks), dtype, (&args as *const ffi::KdPoolArgs).cast::<c_void>()) }
        .map_err(|e| e.into_error())
}

impl Family for Semckd {
    const FILE: KernelFile = KernelFile::new("semckd", &KERNELS);
    type Config = SemckdConfig;
    type Shape = SemckdLayers;
    type RawBuffers = SemckdRawBuffers;
    type Path = ();

    fn workspace_bound(at: Sizing<'_, Self>) -> Result<(usize, usize)> {
        Ok((workspace_bound(at.config, at.shape)?, 1))
    }

    unsafe fn run(call: RawCall<'_, Self>, mut on: Machine<'_>) -> Result<()> {
        call.check()?;
        let RawCall { config, shape: layers, dtype, buffers, options, .. } = call;
        layers.validate()?;
        debug_assert!(layers.students() <= MAX_LAYERS && layers.teachers() <= MAX_LAYERS);
        let want_grad = buffers.check(layers)?;
        let mut flags = 0u32;
        if buffers.loss != 0 {
            flags |= ffi::KdOutputFlags_KD_WANT_LOSS;
        }
        if want_grad {
            flags |= ffi::KdOutputFlags_KD_WANT_GRAD_STUDENT;
            if options.accumulate {
                flags |= ffi::KdOutputFlags_KD_ACCUMULATE_GRAD;
            }
            if buffers.upstream != 0 {
                flags |= ffi::KdOutputFlags_KD_SCALE_BY_UPSTREAM;
            }
        }
        let plan = plan(config, layers, want_grad, flags as i32, options.scale)?;
        let (floats, _) = on.scratch.prepare(plan.workspace_floats, 0)?;
        let ws = |k: usize| floats + 4 * plan.offsets[k] as u64;
        let s = layers.students();
        let t = layers.teachers();
        // SAFETY: plain old data; zero addresses are "absent".
        let mut args: KdSemckdArgs = unsafe { std::mem::zeroed() };
        for (l, &a) in buffers.student.iter().chain(&buffers.teacher).enumerate() {
            args.features[l] = a;
        }
        for (l, m) in buffers.query.iter().chain(&buffers.key).enumerate() {
            args.mlp[4 * l..4 * l + 4].copy_from_slice(m);
        }
        args.proj[..s * t].copy_from_slice(&buffers.proj);
        if want_grad {
            args.grad_student[..s].copy_from_slice(&buffers.grad_student);
            args.grad_proj[..s * t].copy_from_slice(&buffers.grad_proj);
            for (l, m) in buffers.grad_query.iter().chain(&buffers.grad_key).enumerate() {
                args.grad_mlp[4 * l..4 * l + 4].copy_from_slice(m);
            }
        }
        args.loss = buffers.loss;
        args.attention = buffers.attention;
        args.upstream = buffers.upstream;
        args.gram_partials = ws(0);
        args.gram = ws(1);
        args.hidden = ws(2);
        args.embedding = ws(3);
        args.norm = ws(4);
        args.alpha = ws(5);
        args.mse = ws(6);
        args.dy = ws(7);
        args.dz = ws(8);
        args.du = ws(9);
        args.dgram = ws(10);
        args.p = plan.params;
        // SAFETY: `args` is the block semckd.cu's kernels take; addresses from the caller and the workspace.
        unsafe { on.launch_all(&plan.launches, dtype, &args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(s: usize, t: usize, batch: usize) -> SemckdLayers {
        SemckdLayers { batch, embed_dim: batch / 4, student: vec![[64, 32, 32]; s], teacher: vec![[256, 8, 8]; t] }
    }

    #[test]
    fn launch_count_does_not_grow_with_pairs() {
        let config = SemckdConfig::default();
        for (s, t) in [(1, 1), (3, 3), (2, 3), (8, 8)] {
            let p = plan(&config, &layers(s, t, 64), true, 0, 1.0).unwrap();
            assert_eq!(p.launches.len(), 6, "{s} x {t}");
            assert_eq!(plan(&config, &layers(s, t, 64), false, 0, 1.0).unwrap().launches.len(), 5);
        }
    }

    #[test]
    fn argument_block_fits_the_portable_limit() {
        assert!(std::mem::size_of::<KdSemckdArgs>() <= 4096, "{}", std::mem::size_of::<KdSemckdArgs>());
    }

    #[test]
    fn more_than_eight_layers_is_too_large() {
        let r = plan(&SemckdConfig::default(), &layers(9, 1, 8), true, 0, 1.0);
        assert!(matches!(r, Err(KdError::TooLarge { .. })), "{r:?}");
    }

    #[test]
    fn gram_chunks_cover_every_column() {
        let p = plan(&SemckdConfig::default(), &layers(3, 2, 70), true, 0, 1.0).unwrap().params;
        for l in 0..5 {
            let (dim, len, chunks) = (p.dim[l], p.chunk_len[l], p.chunks[l] as i64);
            assert!(chunks * len >= dim && (chunks - 1) * len < dim, "layer {l}");
            assert_eq!(len % ffi::KD_SEMCKD_GRAM_K as i64, 0);
        }
        assert_eq!(p.gram_tiles, 2);
    }
}

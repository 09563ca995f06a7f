//! CWT benchmarks: `CwtCuda::forward_backward` and `forward` on the GPU in f32 and bf16, and the f64 CPU
//! reference's `forward_backward` on the smallest shape only (it is a naive triple loop, slow by design).
//!
//! Shapes (student -> teacher, hidden width = teacher channels, `docs/losses.md §5.5`):
//! segmentation 8x512x64x64 -> 2048 channels, detection FPN 2x256x100x152 -> 256, classification
//! 64x512x7x7 -> 512.
//!
//! ```text
//! cargo bench --bench losses -- cwt
//! cargo bench --bench losses -- cwt_bf16/gpu_forward_backward
//! ```
//!
//! Paths: bf16 runs the tensor-core tiles (bf16 operand pairs, three products per product), f32 the exact SIMT
//! tiles; a forward + backward takes the fused kernels (`cwt_forward_store`, `cwt_grad_input`) on chunks with
//! at least as many 64-pixel tiles as SMs, else a block per tile (`docs/losses.md §5.8` lists which shape takes
//! which on a 132-SM GPU; the workspace is one hidden-activation tensor at most, so bf16 runs in more chunks).
//!
//! Baseline: `cublas_gemms_*` times only the GEMMs an unfused cuBLAS implementation must run (2 for a
//! forward, 6 for a forward and backward, strided-batched over the images, weight gradients accumulated
//! image by image with beta = 1), without its elementwise passes (bias, ReLU, the error, its reduction) and
//! their extra traffic: a lower bound for any cuBLAS-based CWT, loaded at run time through cudarc's `cublas`.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use kd_kernels::cwt::{CwtConfig, CwtCpu, CwtCuda, CwtParamBuffers, CwtParamGrads, CwtShapes, MlpParams};
use kd_kernels::half::bf16;
use kd_kernels::ndarray::{Array1, Array2, Array4};
use kd_kernels::testing::SplitMix64;
use kd_kernels::KdFloat;

/// (name, student [N, Cs, H, W], teacher channels).
const SHAPES: [(&str, [usize; 4], usize); 3] = [
    ("segmentation", [8, 512, 64, 64], 2048),
    ("detection_fpn", [2, 256, 100, 152], 256),
    ("classification", [64, 512, 7, 7], 512),
];

/// Uniform in [-1, 1) with 24 random bits, times `scale`.
fn uniform_vec(rng: &mut SplitMix64, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale).collect()
}

struct Inputs {
    student: Vec<f32>,
    teacher: Vec<f32>,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
}

fn inputs(dims: [usize; 4], shapes: CwtShapes) -> Inputs {
    let mut r = SplitMix64::new(8);
    let [n, cs, h, w] = dims;
    let CwtShapes { ch, ct, .. } = shapes;
    Inputs {
        student: uniform_vec(&mut r, n * cs * h * w, 1.0),
        teacher: uniform_vec(&mut r, n * ct * h * w, 1.0),
        w1: uniform_vec(&mut r, ch * cs, 1.0 / (cs as f32).sqrt()),
        b1: uniform_vec(&mut r, ch, 0.1),
        w2: uniform_vec(&mut r, ct * ch, 1.0 / (ch as f32).sqrt()),
        b2: uniform_vec(&mut r, ct, 0.1),
    }
}

pub fn run() {
    let mut c = Criterion::default().configure_from_args();
    let config = CwtConfig::default();
    let stream = match kd_kernels::cuda::default_stream(0) {
        Ok(s) => Some(s),
        Err(e) => {
            println!("cwt: GPU benches skipped: {e}");
            None
        }
    };
    for (name, dims, ct) in SHAPES {
        let shapes = CwtShapes::new(dims[1], ct);
        let data = inputs(dims, shapes);
        if let Some(stream) = &stream {
            if let Err(e) = gpu::<f32>(&mut c, stream, config, name, dims, shapes, &data) {
                println!("cwt f32 {name}: GPU bench failed: {e}");
            }
            if let Err(e) = gpu::<bf16>(&mut c, stream, config, name, dims, shapes, &data) {
                println!("cwt bf16 {name}: GPU bench failed: {e}");
            }
            if let Err(e) = cublas_gemms::<f32>(&mut c, stream, name, dims, shapes) {
                println!("cwt f32 {name}: cuBLAS baseline failed: {e}");
            }
            if let Err(e) = cublas_gemms::<bf16>(&mut c, stream, name, dims, shapes) {
                println!("cwt bf16 {name}: cuBLAS baseline failed: {e}");
            }
        }
        if name == "classification" {
            cpu(&mut c, config, name, dims, shapes, &data);
        }
    }
    c.final_summary();
}

fn gpu<T: KdFloat>(
    c: &mut Criterion,
    stream: &std::sync::Arc<kd_kernels::cudarc::driver::CudaStream>,
    config: CwtConfig,
    name: &str,
    dims: [usize; 4],
    shapes: CwtShapes,
    data: &Inputs,
) -> Result<(), Box<dyn std::error::Error>> {
    let to_t = |v: &[f32]| v.iter().map(|&x| T::from_f32(x)).collect::<Vec<T>>();
    let s = stream.clone_htod(&to_t(&data.student))?;
    let t = stream.clone_htod(&to_t(&data.teacher))?;
    let (w1, b1) = (stream.clone_htod(&data.w1)?, stream.clone_htod(&data.b1)?);
    let (w2, b2) = (stream.clone_htod(&data.w2)?, stream.clone_htod(&data.b2)?);
    let mut gs = stream.alloc_zeros::<T>(data.student.len())?;
    let (mut gw1, mut gb1) = (stream.alloc_zeros::<f32>(w1.len())?, stream.alloc_zeros::<f32>(b1.len())?);
    let (mut gw2, mut gb2) = (stream.alloc_zeros::<f32>(w2.len())?, stream.alloc_zeros::<f32>(b2.len())?);
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    let mut cwt = CwtCuda::with_shapes(stream.clone(), config, shapes)?;
    cwt.reserve(&dims, T::DTYPE)?;
    let params = CwtParamBuffers { w1: &w1, b1: &b1, w2: &w2, b2: &b2 };
    let pixels = (dims[0] * dims[2] * dims[3]) as u64;
    let flops = 2 * pixels * (shapes.cs * shapes.ch + shapes.ch * shapes.ct) as u64;
    let mut group = c.benchmark_group(format!("cwt_{}", T::DTYPE));
    group.measurement_time(Duration::from_secs(3)).sample_size(10);
    group.throughput(Throughput::Elements(3 * flops));
    group.bench_function(BenchmarkId::new("gpu_forward_backward", name), |b| {
        b.iter(|| {
            let grads = CwtParamGrads { w1: &mut gw1, b1: &mut gb1, w2: &mut gw2, b2: &mut gb2 };
            cwt.forward_backward(&dims, &s, &t, &params, &mut loss, &mut gs, grads).expect("forward_backward");
            stream.synchronize().expect("synchronize");
        })
    });
    group.throughput(Throughput::Elements(flops));
    group.bench_function(BenchmarkId::new("gpu_forward", name), |b| {
        b.iter(|| {
            cwt.forward(&dims, &s, &t, &params, &mut loss).expect("forward");
            stream.synchronize().expect("synchronize");
        })
    });
    group.finish();
    Ok(())
}

fn cpu(c: &mut Criterion, config: CwtConfig, name: &str, dims: [usize; 4], shapes: CwtShapes, data: &Inputs) {
    let cpu = CwtCpu::new(config).expect("valid configuration");
    let teacher_dims = [dims[0], shapes.ct, dims[2], dims[3]];
    let s = Array4::from_shape_vec(dims, data.student.clone()).expect("shape");
    let t = Array4::from_shape_vec(teacher_dims, data.teacher.clone()).expect("shape");
    let w1 = Array2::from_shape_vec((shapes.ch, shapes.cs), data.w1.clone()).expect("shape");
    let w2 = Array2::from_shape_vec((shapes.ct, shapes.ch), data.w2.clone()).expect("shape");
    let (b1, b2) = (Array1::from_vec(data.b1.clone()), Array1::from_vec(data.b2.clone()));
    let params = MlpParams { w1: w1.view(), b1: b1.view(), w2: w2.view(), b2: b2.view() };
    let mut group = c.benchmark_group("cwt_f32");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function(BenchmarkId::new("cpu_forward_backward", name), |b| {
        b.iter(|| cpu.forward_backward(s.view(), t.view(), &params).expect("CPU reference"))
    });
    group.finish();
}

/// The GEMMs of an unfused forward (2) and forward + backward (6) through cuBLAS, column-major views of the
/// NCHW tensors: per image, a `[C, H*W]` row-major matrix is the column-major `(H*W x C)` with ld = H*W, and a
/// weight `[out, in]` row-major is the column-major `(in x out)`, i.e. its transpose.
fn cublas_gemms<T: KdFloat>(
    c: &mut Criterion,
    stream: &std::sync::Arc<kd_kernels::cudarc::driver::CudaStream>,
    name: &str,
    dims: [usize; 4],
    shapes: CwtShapes,
) -> Result<(), Box<dyn std::error::Error>>
where
    cudarc::cublas::CudaBlas: cudarc::cublas::Gemm<T>,
{
    use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
    use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};

    let blas = CudaBlas::new(stream.clone())?;
    let [n, cs, h, w] = dims;
    let CwtShapes { ch, ct, .. } = shapes;
    let hw = h * w;
    let buf = |len: usize| stream.alloc_zeros::<T>(len);
    let (x, mut a, mut y) = (buf(n * cs * hw)?, buf(n * ch * hw)?, buf(n * ct * hw)?);
    let (w1, w2) = (buf(ch * cs)?, buf(ct * ch)?);
    let (mut gx, mut gw1, mut gw2) = (buf(n * cs * hw)?, buf(ch * cs)?, buf(ct * ch)?);
    let (one, zero) = (T::from_f32(1.0), T::from_f32(0.0));
    let i = |v: usize| v as i32;
    // C_n (hw x cols) = A_n (hw x k) * op(B) for every image n.
    let batched =
        |m_cols: usize, k: usize, ldb: usize, transb, stride_a: usize, stride_c: usize| StridedBatchedConfig {
            gemm: GemmConfig {
                transa: CUBLAS_OP_N,
                transb,
                m: i(hw),
                n: i(m_cols),
                k: i(k),
                alpha: one,
                lda: i(hw),
                ldb: i(ldb),
                beta: zero,
                ldc: i(hw),
            },
            batch_size: i(n),
            stride_a: stride_a as i64,
            stride_b: 0,
            stride_c: stride_c as i64,
        };
    let forward = |a: &mut kd_kernels::cudarc::driver::CudaSlice<T>,
                   y: &mut kd_kernels::cudarc::driver::CudaSlice<T>|
     -> Result<(), cudarc::cublas::result::CublasError> {
        // SAFETY: every buffer holds the elements the configurations address.
        unsafe {
            blas.gemm_strided_batched(batched(ch, cs, cs, CUBLAS_OP_N, cs * hw, ch * hw), &x, &w1, a)?;
            blas.gemm_strided_batched(batched(ct, ch, ch, CUBLAS_OP_N, ch * hw, ct * hw), &*a, &w2, y)
        }
    };
    let backward = |a: &mut kd_kernels::cudarc::driver::CudaSlice<T>,
                    y: &kd_kernels::cudarc::driver::CudaSlice<T>,
                    gx: &mut kd_kernels::cudarc::driver::CudaSlice<T>,
                    gw1: &mut kd_kernels::cudarc::driver::CudaSlice<T>,
                    gw2: &mut kd_kernels::cudarc::driver::CudaSlice<T>|
     -> Result<(), cudarc::cublas::result::CublasError> {
        // SAFETY: as above; `y` stands for dY and `a` for Z, then dA (the values do not matter here).
        unsafe {
            // dW2, column-major (ch x ct), summed over the images: op_T(Z_n (hw x ch)) * dY_n (hw x ct).
            for img in 0..n {
                let cfg = |rows: usize, cols: usize, beta| GemmConfig {
                    transa: CUBLAS_OP_T,
                    transb: CUBLAS_OP_N,
                    m: i(rows),
                    n: i(cols),
                    k: i(hw),
                    alpha: one,
                    lda: i(hw),
                    ldb: i(hw),
                    beta,
                    ldc: i(rows),
                };
                let beta = if img == 0 { zero } else { one };
                let z = a.slice(img * ch * hw..(img + 1) * ch * hw);
                let dy = y.slice(img * ct * hw..(img + 1) * ct * hw);
                blas.gemm(cfg(ch, ct, beta), &z, &dy, gw2)?;
            }
            // dZ^T (hw x ch) = dY^T (hw x ct) * W2 (ct x ch): op_T of W2's column-major (ch x ct).
            blas.gemm_strided_batched(batched(ch, ct, ch, CUBLAS_OP_T, ct * hw, ch * hw), y, &w2, a)?;
            for img in 0..n {
                let cfg = GemmConfig {
                    transa: CUBLAS_OP_T,
                    transb: CUBLAS_OP_N,
                    m: i(cs),
                    n: i(ch),
                    k: i(hw),
                    alpha: one,
                    lda: i(hw),
                    ldb: i(hw),
                    beta: if img == 0 { zero } else { one },
                    ldc: i(cs),
                };
                let xs = x.slice(img * cs * hw..(img + 1) * cs * hw);
                let da = a.slice(img * ch * hw..(img + 1) * ch * hw);
                blas.gemm(cfg, &xs, &da, gw1)?;
            }
            // dX^T (hw x cs) = dA^T (hw x ch) * W1 (ch x cs): op_T of W1's column-major (cs x ch).
            blas.gemm_strided_batched(batched(cs, ch, cs, CUBLAS_OP_T, ch * hw, cs * hw), &*a, &w1, gx)
        }
    };
    let mut group = c.benchmark_group(format!("cwt_{}", T::DTYPE));
    group.measurement_time(Duration::from_secs(3)).sample_size(10);
    group.bench_function(BenchmarkId::new("cublas_gemms_forward", name), |b| {
        b.iter(|| {
            forward(&mut a, &mut y).expect("cuBLAS");
            stream.synchronize().expect("synchronize");
        })
    });
    group.bench_function(BenchmarkId::new("cublas_gemms_forward_backward", name), |b| {
        b.iter(|| {
            forward(&mut a, &mut y).expect("cuBLAS");
            backward(&mut a, &y, &mut gx, &mut gw1, &mut gw2).expect("cuBLAS");
            stream.synchronize().expect("synchronize");
        })
    });
    group.finish();
    Ok(())
}

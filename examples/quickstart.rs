//! Quickstart: run each loss of kd-kernels on the GPU when one is present, else on the CPU reference.
//!
//! ```text
//! cargo run --release --example quickstart
//! ```
//!
//! For every loss and shape it prints the backend, the loss, the L2 norm of d loss / d student, the time per
//! call, the effective bandwidth (student and teacher read once and the gradient written once: the least any
//! implementation must move), and, when the GPU ran, its distance to the f64 CPU reference.

use std::error::Error;
use std::sync::Arc;
use std::time::Instant;

use kd_kernels::cudarc::driver::CudaStream;
use kd_kernels::cwd::{CwdConfig, CwdCpu, CwdCuda};
use kd_kernels::icsd::{IcsdConfig, IcsdCpu, IcsdCuda};
use kd_kernels::ndarray::Array4;
use kd_kernels::pixel_kd::{PixelKdConfig, PixelKdCpu, PixelKdCuda};
use kd_kernels::testing::SplitMix64;
use kd_kernels::{CpuOutput, DType};

type Res<T> = Result<T, Box<dyn Error>>;

/// GPU calls averaged, after `GPU_WARMUP` untimed ones.
const GPU_WARMUP: u32 = 3;
const GPU_CALLS: u32 = 20;

/// A loss with its configuration; the GPU and CPU objects are built from the same config.
#[derive(Debug, Clone, Copy)]
enum Loss {
    Cwd(CwdConfig),
    PixelKd(PixelKdConfig),
    Icsd(IcsdConfig),
}

struct Case {
    label: &'static str,
    loss: Loss,
    /// NCHW.
    shape: [usize; 4],
}

fn main() -> Res<()> {
    let cases = [
        // The paper's setting on Cityscapes-like logits at 1/8 resolution (19 classes).
        Case { label: "cwd logits, tau 4, w 3", loss: Loss::Cwd(CwdConfig::default()), shape: [8, 19, 64, 128] },
        // CWD on a 256-channel feature map, with the mm* configs' tau of 1.
        Case {
            label: "cwd features, tau 1, w 3",
            loss: Loss::Cwd(CwdConfig { tau: 1.0, ..CwdConfig::default() }),
            shape: [8, 256, 64, 128],
        },
        // The official pixel-wise KD: tau 1, mean over all elements, weight 10.
        Case { label: "pixel_kd, tau 1, w 10", loss: Loss::PixelKd(PixelKdConfig::default()), shape: [8, 19, 64, 128] },
        // ICSD, official variant (softmax along H, weight 9500), on Pascal-like logits (21 classes), small.
        Case { label: "icsd official, w 9500", loss: Loss::Icsd(IcsdConfig::default()), shape: [6, 21, 65, 65] },
    ];

    // `default_stream` checks for compiled kernels, a driver and a device, and says which is missing instead
    // of panicking; without them the CPU reference, which has the same surface, still runs.
    let stream = match kd_kernels::cuda::default_stream(0) {
        Ok(stream) => {
            println!("GPU: {} (device 0); the CPU reference (f64) checks every result", stream.context().name()?);
            Some(stream)
        }
        Err(e) => {
            if !kd_kernels::cuda::KERNELS_COMPILED && kd_kernels::cuda::gpu_present() {
                println!(
                    "a GPU is present, but this build has no GPU kernels (nvcc was not found when it was built): \
                     run scripts/quickstart, or scripts/install-nvcc and rebuild"
                );
            }
            println!("no GPU: {e}");
            println!("running the CPU reference (f64) only");
            None
        }
    };
    println!();
    println!(
        "{:<26} {:<14} {:<9} {:>12} {:>12} {:>10} {:>8} {:>9} {:>9}  kernel",
        "loss", "shape", "backend", "loss value", "|grad|_2", "ms/call", "GB/s", "grad err", "loss err"
    );

    for (i, case) in cases.iter().enumerate() {
        let (student, teacher) = inputs(case.shape, i as u64);
        // The minimal traffic of one training call, in f32.
        let bytes = 3.0 * student.len() as f64 * 4.0;
        let shape = format!("{}x{}x{}x{}", case.shape[0], case.shape[1], case.shape[2], case.shape[3]);
        let row = |backend: &str, loss: f64, grad_norm: f64, secs: f64, errors: Option<(f64, f64)>, kernel: &str| {
            let (grad_err, loss_err) = match errors {
                Some((g, l)) => (format!("{g:.1e}"), format!("{l:.1e}")),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:<26} {:<14} {:<9} {:>12.6} {:>12.4e} {:>10.3} {:>8.1} {:>9} {:>9}  {kernel}",
                case.label,
                shape,
                backend,
                loss,
                grad_norm,
                secs * 1e3,
                bytes / secs / 1e9,
                grad_err,
                loss_err
            );
        };

        // The CPU reference: one call, timed as it is (it is synchronous).
        let start = Instant::now();
        let cpu = run_cpu(case.loss, &student, &teacher)?;
        let cpu_secs = start.elapsed().as_secs_f64();
        let cpu_norm = cpu.grad_student.iter().map(|g| g * g).sum::<f64>().sqrt();

        if let Some(stream) = &stream {
            let gpu = run_gpu(stream, case, &student, &teacher)?;
            let gpu_norm = gpu.grad.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt();
            // Max abs error of the gradient relative to its largest magnitude, and relative error of the loss.
            let max_grad = cpu.grad_student.iter().fold(0.0f64, |m, g| m.max(g.abs()));
            let max_err =
                gpu.grad.iter().zip(cpu.grad_student.iter()).fold(0.0f64, |m, (&g, c)| m.max((f64::from(g) - c).abs()));
            let loss_err = (f64::from(gpu.loss) - cpu.loss).abs() / cpu.loss.abs().max(f64::MIN_POSITIVE);
            let errors = Some((max_err / max_grad, loss_err));
            row("cuda f32", f64::from(gpu.loss), gpu_norm, gpu.secs_per_call, errors, &gpu.kernel);
        }
        row("cpu f64", cpu.loss, cpu_norm, cpu_secs, None, "reference");
    }
    if stream.is_some() {
        println!();
        println!("GPU ms/call: mean of {GPU_CALLS} calls after {GPU_WARMUP} warm-up ones; CPU: one call");
    }
    Ok(())
}

/// Student logits `2 * N(0, 1)`, teacher = student + `N(0, 1)`: related like a trained pair, so the loss is
/// neither 0 nor the loss of unrelated maps.
fn inputs(shape: [usize; 4], seed: u64) -> (Array4<f32>, Array4<f32>) {
    let mut rng = SplitMix64::new(seed);
    let student = Array4::from_shape_simple_fn(shape, || 2.0 * rng.normal_pair().0 as f32);
    let teacher = student.mapv(|s| s + rng.normal_pair().0 as f32);
    (student, teacher)
}

/// Loss and d loss / d student from the CPU reference (f64 inside, any input dtype).
fn run_cpu(loss: Loss, student: &Array4<f32>, teacher: &Array4<f32>) -> Res<CpuOutput> {
    Ok(match loss {
        Loss::Cwd(config) => CwdCpu::new(config)?.forward_backward(student.view(), teacher.view())?,
        Loss::PixelKd(config) => PixelKdCpu::new(config)?.forward_backward(student.view(), teacher.view())?,
        Loss::Icsd(config) => {
            let r = IcsdCpu::new(config)?.forward_backward(student.view(), teacher.view())?;
            CpuOutput { loss: r.loss, grad_student: r.grad_student, grad_teacher: None }
        }
    })
}

struct GpuResult {
    loss: f32,
    grad: Vec<f32>,
    secs_per_call: f64,
    /// Which of the loss's kernels ran (`Auto` picks the one that reads the logits once where it applies).
    kernel: String,
}

fn run_gpu(stream: &Arc<CudaStream>, case: &Case, student: &Array4<f32>, teacher: &Array4<f32>) -> Res<GpuResult> {
    let shape = case.shape;
    // Inputs and outputs are device buffers the caller owns (in a training loop: the model's activations and
    // the gradient buffer autograd hands back); the losses read and write them on the loss's stream.
    let s = stream.clone_htod(student.as_slice().expect("a fresh array is contiguous"))?;
    let t = stream.clone_htod(teacher.as_slice().expect("a fresh array is contiguous"))?;
    let mut grad = stream.alloc_zeros::<f32>(s.len())?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;

    // Build a loss object once and reuse it: construction loads the kernels, and the object keeps a device
    // workspace, so steady-state calls allocate nothing.
    let (secs_per_call, kernel) = match case.loss {
        Loss::Cwd(config) => {
            let mut cwd = CwdCuda::new(stream.clone(), config)?;
            let kernel = format!("{:?}", cwd.resolved_path(&shape, DType::F32)?);
            // `None`: no teacher gradient, as `config.teacher_grad` is off (a frozen teacher).
            (time_gpu(stream, || cwd.forward_backward(&shape, &s, &t, &mut loss, &mut grad))?, kernel)
        }
        Loss::PixelKd(config) => {
            let mut kd = PixelKdCuda::new(stream.clone(), config)?;
            let kernel = format!("{:?}", kd.resolved_path(&shape, DType::F32)?);
            (time_gpu(stream, || kd.forward_backward(&shape, &s, &t, &mut loss, &mut grad))?, kernel)
        }
        Loss::Icsd(config) => {
            let mut icsd = IcsdCuda::new(stream.clone(), config)?;
            (time_gpu(stream, || icsd.forward_backward(&shape, &s, &t, &mut loss, &mut grad))?, "icsd".to_string())
        }
    };

    // The loss stays on the device (a training step would feed it on without a host round trip); copy it and
    // the gradient back here only to print and check them.
    let loss = stream.clone_dtoh(&loss)?;
    let grad = stream.clone_dtoh(&grad)?;
    stream.synchronize()?;
    Ok(GpuResult { loss: loss[0], grad, secs_per_call, kernel })
}

/// Mean seconds per call. The calls only queue work on the stream, so the clock is read after a synchronize.
fn time_gpu(stream: &CudaStream, mut call: impl FnMut() -> kd_kernels::Result<()>) -> Res<f64> {
    for _ in 0..GPU_WARMUP {
        call()?;
    }
    stream.synchronize()?;
    let start = Instant::now();
    for _ in 0..GPU_CALLS {
        call()?;
    }
    stream.synchronize()?;
    Ok(start.elapsed().as_secs_f64() / f64::from(GPU_CALLS))
}

//! CIRKD benchmarks: `CirkdCuda::forward_backward` (tau 0.1, weight 1) on the GPU, in f32 and bf16, on the
//! issue's features, student and teacher 8x256x64x128 as `python-reference/bench_skd_cirkd.py` times them for
//! PyTorch (CIRKD's official mini-batch module): pooled (a 4x4 average pool, ceil mode: the official pool
//! layer, forced, since the official rule would pool only from 256x256 up; P = 512, 64 image pairs) and
//! unpooled (P = 8192, what the official rule does at this size). The f64 CPU reference's
//! `forward_backward` runs on the quick shape of that script, 2x8x16x12 (pooled and unpooled).
//!
//! ```text
//! cargo bench --bench losses -- cirkd
//! cargo bench --bench losses -- cirkd_unpooled --quick
//! ```
//!
//! Besides the time, each case prints its workspace: the bytes the loss object reserves for the call (its
//! stated bound, `docs/losses.md` §10.2a), and on a GPU the device memory that reservation took (the
//! `peak_mib` of the Python script counts PyTorch's whole step instead). The GPU part is skipped without a
//! GPU. `gbps` counts the minimal traffic of the other benches (3 tensors); CIRKD is compute-bound (B^2 P^2 C
//! multiply-adds), so that figure is only for the table.

use std::time::Duration;

use crate::common::{shape_name, Harness, Inputs, Pass};
use criterion::{BenchmarkId, Criterion, SamplingMode};
use kd_kernels::cirkd::{check_shapes, Cirkd, CirkdConfig, CirkdCpu, CirkdCuda, CirkdPool};
use kd_kernels::family::{Family, Sizing};
use kd_kernels::half::bf16;
use kd_kernels::launch::DeviceInfo;
use kd_kernels::{DType, KdFloat};

/// The features (student and teacher channels as in `bench_skd_cirkd.py`: 256 each).
const GPU_SHAPE: [usize; 4] = [8, 256, 64, 128];
/// bench_skd_cirkd.py's quick shape, for the CPU reference.
const CPU_SHAPE: [usize; 4] = [2, 8, 16, 12];

/// (loss name in the ids and the JSON lines, pooling), the names of bench_skd_cirkd.py's cases.
const CASES: [(&str, CirkdPool); 2] = [("cirkd_pooled", CirkdPool::Avg(4)), ("cirkd_unpooled", CirkdPool::None)];

fn config(pool: CirkdPool) -> CirkdConfig {
    CirkdConfig { pool, ..CirkdConfig::default() }
}

/// The device facts CIRKD's plan reads: none (its geometry depends on the shapes only), so any answer does.
struct AnyDevice;

impl DeviceInfo for AnyDevice {
    fn sm_count(&self) -> usize {
        1
    }
    fn cooperative(&self) -> bool {
        false
    }
    fn resident_blocks(&self, _: &'static str, _: DType, _: usize) -> kd_kernels::Result<usize> {
        Ok(1)
    }
    fn max_dynamic_smem(&self, _: &'static str) -> usize {
        0
    }
}

/// The workspace bytes a training call on `shape` reserves (the plan's bound: an accumulating call's, with
/// the fp32 accumulator, which an overwriting f32 call without pooling does without; the one u32 counter it
/// also takes lives in a separate allocation).
fn workspace_bytes(pool: CirkdPool, shape: [usize; 4]) -> kd_kernels::Result<usize> {
    let shapes = check_shapes(&shape, &shape)?;
    let at = Sizing { config: &config(pool), shape: &shapes, dtype: DType::F32, device: &AnyDevice };
    let (floats, _counters) = Cirkd::workspace_bound(at)?;
    Ok(4 * floats)
}

fn gpu_case<T: KdFloat>(h: &mut Harness, cirkd: &mut CirkdCuda, inputs: &Inputs) -> crate::common::Res<()> {
    let shape = GPU_SHAPE;
    if !h.wants("gpu", Pass::ForwardBackward, &shape, T::DTYPE) {
        return Ok(());
    }
    let stream = h.stream().expect("the GPU object exists only with a GPU").clone();
    let (student, teacher) = inputs.to_dtype::<T>();
    let s = stream.clone_htod(student.as_slice().expect("standard layout"))?;
    let t = stream.clone_htod(teacher.as_slice().expect("standard layout"))?;
    let mut grad = stream.alloc_zeros::<T>(s.len())?;
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    let shapes = check_shapes(&shape, &shape)?;
    stream.synchronize()?;
    let free_before = stream.context().mem_get_info()?.0;
    cirkd.reserve(&shapes, T::DTYPE)?;
    stream.synchronize()?;
    let free_after = stream.context().mem_get_info()?.0;
    println!(
        "{} gpu {} {}: the workspace reservation took {:.1} MiB of device memory",
        h.loss,
        T::DTYPE,
        shape_name(&shape),
        free_before.saturating_sub(free_after) as f64 / (1 << 20) as f64
    );
    h.gpu_bench::<T>(Pass::ForwardBackward, shape, || cirkd.forward_backward(&shapes, &s, &t, &mut loss, &mut grad));
    stream.synchronize()?;
    Ok(())
}

fn gpu_benches() {
    for (name, pool) in CASES {
        match workspace_bytes(pool, GPU_SHAPE) {
            Ok(bytes) => println!(
                "{name} {}: workspace {bytes} bytes ({:.1} MiB) per forward_backward call",
                shape_name(&GPU_SHAPE),
                bytes as f64 / (1 << 20) as f64
            ),
            Err(e) => println!("{name} {}: no workspace bound: {e}", shape_name(&GPU_SHAPE)),
        }
        let mut h = Harness::new(name);
        if let Some(mut cirkd) = h.open_gpu(|stream| CirkdCuda::new(stream, config(pool))) {
            let inputs = Inputs::generate(GPU_SHAPE);
            for r in [gpu_case::<f32>(&mut h, &mut cirkd, &inputs), gpu_case::<bf16>(&mut h, &mut cirkd, &inputs)] {
                if let Err(e) = r {
                    println!("{name} {}: GPU benches failed: {e}", shape_name(&GPU_SHAPE));
                }
            }
        }
        h.finish();
    }
}

/// The CPU reference on the quick shape, through criterion directly: the harness sizes CPU runs from a
/// per-element cost, which CIRKD's cost (quadratic in the pixels) does not have.
fn cpu_benches() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("cirkd_cpu");
    group.sample_size(10).sampling_mode(SamplingMode::Flat).measurement_time(Duration::from_secs(2));
    let inputs = Inputs::generate(CPU_SHAPE);
    for (name, pool) in CASES {
        let cpu = CirkdCpu::new(config(pool)).expect("a valid configuration");
        if let Ok(bytes) = workspace_bytes(pool, CPU_SHAPE) {
            println!("{name} {}: workspace {bytes} bytes on the GPU path", shape_name(&CPU_SHAPE));
        }
        let id = BenchmarkId::new(format!("{name}/f32/forward_backward"), shape_name(&CPU_SHAPE));
        group.bench_function(id, |b| {
            b.iter(|| cpu.forward_backward(inputs.student.view(), inputs.teacher.view()).expect("CPU reference"))
        });
    }
    group.finish();
    criterion.final_summary();
}

pub fn run() {
    gpu_benches();
    cpu_benches();
}

//! What the loss benches share: the shapes, seeded input data, the criterion set-up, the GPU timing (criterion
//! batches with a stream synchronize, and CUDA-event kernel times outside criterion), the copy-bandwidth
//! yardstick, and the JSON-lines report that sits next to `python-reference/bench_torch.py`'s.
//!
//! Each family's bench module holds the calls of its loss; [`Harness`] does the rest.
//!
//! Run modes follow criterion's: `--bench` (what `cargo bench` and the GPU host pass) benchmarks every shape
//! and writes the JSON lines; without it (`cargo test --benches`) every bench runs once, on the smallest shape
//! only, since test builds are unoptimised; `--list` lists.

// Each bench binary compiles this module on its own and uses a different subset of it.
#![allow(dead_code)]

use std::error::Error;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use kd_kernels::cuda::LossCuda;
use kd_kernels::cudarc::driver::sys::CUevent_flags;
use kd_kernels::cudarc::driver::{CudaEvent, CudaSlice, CudaStream};
use kd_kernels::family::PairFamily;
use kd_kernels::half::bf16;
use kd_kernels::ndarray::{Array4, ArrayView4};
use kd_kernels::testing::SplitMix64;
use kd_kernels::{CpuOutput, DType, KdFloat};

/// Errors of the set-up code: driver errors and [`kd_kernels::KdError`]s alike.
pub type Res<T> = Result<T, Box<dyn Error>>;

/// The benchmarked shapes (NCHW), the same as `bench_torch.py`'s `DEFAULT_SHAPES`: Cityscapes-like logits at
/// 1/8 resolution, the same at full 512x1024 resolution, and a 256-channel feature map.
pub const SHAPES: [[usize; 4]; 3] = [[8, 19, 64, 128], [8, 19, 512, 1024], [8, 256, 64, 128]];

/// Above this estimated time for one call, the CPU reference is not benchmarked on a shape.
const CPU_CALL_LIMIT: Duration = Duration::from_secs(10);
/// Warm-up and timed calls of the CUDA-event measurement in `--bench` mode (`bench_torch.py` uses 10 and 50).
const EVENT_WARMUP: usize = 10;
const EVENT_ITERS: usize = 50;
/// Size of each of the two buffers copied into each other to keep the GPU busy while the timed calls are
/// queued (see [`Gpu::time_events`]).
const BALLAST_BYTES: usize = 256 << 20;

/// `NxCxHxW`, the spelling of shapes in benchmark ids and in the tables.
pub fn shape_name(shape: &[usize; 4]) -> String {
    format!("{}x{}x{}x{}", shape[0], shape[1], shape[2], shape[3])
}

pub fn numel(shape: &[usize; 4]) -> usize {
    shape.iter().product()
}

/// Which entry point is measured. Its minimal traffic: student and teacher read once, plus the gradient
/// written once for the training call, all in the input dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// `forward_backward`: loss and gradient, the training-step call.
    ForwardBackward,
    /// `forward_backward` on CWD's two-pass kernels (`CwdPath::TwoPass`), for comparison with the default.
    TwoPassForwardBackward,
    /// `forward_backward` on pixel KD's per-pixel kernel (`PixelKdPath::PerPixel`), likewise.
    PerPixelForwardBackward,
    /// `forward`: the loss alone.
    Forward,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::ForwardBackward => "forward_backward",
            Pass::TwoPassForwardBackward => "forward_backward_two_pass",
            Pass::PerPixelForwardBackward => "forward_backward_per_pixel",
            Pass::Forward => "forward",
        }
    }

    /// `3 * numel * size` for the training call, `2 * numel * size` for the loss alone.
    pub fn minimal_bytes(self, numel: usize, dtype: DType) -> u64 {
        let tensors = match self {
            Pass::ForwardBackward | Pass::TwoPassForwardBackward | Pass::PerPixelForwardBackward => 3,
            Pass::Forward => 2,
        };
        (tensors * numel * dtype.size()) as u64
    }
}

/// `scale * N(0, 1)` values in an NCHW array, as `bench_torch.py` draws its inputs (`randn * 3`).
pub fn random_normal(shape: [usize; 4], scale: f64, seed: u64) -> Array4<f32> {
    let mut rng = SplitMix64::new(seed);
    let n = numel(&shape);
    let mut values = Vec::with_capacity(n + 1);
    while values.len() < n {
        let (a, b) = rng.normal_pair();
        values.push((scale * a) as f32);
        values.push((scale * b) as f32);
    }
    values.truncate(n);
    Array4::from_shape_vec(shape, values).expect("the length is the shape's element count")
}

/// The inputs of one shape: student and teacher drawn independently as `3 * N(0, 1)`, like `bench_torch.py`.
pub struct Inputs {
    pub student: Array4<f32>,
    pub teacher: Array4<f32>,
}

impl Inputs {
    pub fn generate(shape: [usize; 4]) -> Self {
        Inputs { student: random_normal(shape, 3.0, 1), teacher: random_normal(shape, 3.0, 2) }
    }

    /// The same values rounded to `T`.
    pub fn to_dtype<T: KdFloat>(&self) -> (Array4<T>, Array4<T>) {
        (self.student.mapv(T::from_f32), self.teacher.mapv(T::from_f32))
    }
}

/// Criterion's run mode and name filter, read from the command line criterion itself parses, so set-up work
/// (generating 80M-element inputs, the event timings) is skipped for benchmarks criterion will skip.
#[derive(Debug, Clone)]
pub struct Args {
    pub bench: bool,
    pub list: bool,
    pub quick: bool,
    filter: Filter,
}

#[derive(Debug, Clone)]
enum Filter {
    All,
    Substring(String),
    Exact(String),
    None,
}

/// Criterion's options that take a value: their value is not the positional FILTER.
const VALUE_OPTIONS: &[&str] = &[
    "-c",
    "--color",
    "--colour",
    "-s",
    "--save-baseline",
    "-b",
    "--baseline",
    "--baseline-lenient",
    "--format",
    "--profile-time",
    "--load-baseline",
    "--sample-size",
    "--warm-up-time",
    "--measurement-time",
    "--nresamples",
    "--noise-threshold",
    "--confidence-level",
    "--significance-level",
    "--plotting-backend",
    "--output-format",
];

impl Args {
    pub fn from_env() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let has = |flag: &str| args.iter().any(|a| a == flag);
        let mut positional = None;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            if VALUE_OPTIONS.contains(&arg.as_str()) {
                it.next();
            } else if !arg.starts_with('-') {
                positional = Some(arg.clone());
                break;
            }
        }
        let filter = match positional {
            _ if has("--ignored") => Filter::None,
            None => Filter::All,
            Some(f) if has("--exact") => Filter::Exact(f),
            // A regular expression: let criterion decide.
            Some(f) if f.contains(|ch: char| "\\.+*?()|[]{}^$".contains(ch)) => Filter::All,
            Some(f) => Filter::Substring(f),
        };
        let list = has("--list");
        Args { bench: has("--bench") && !has("--test") && !list, list, quick: has("--quick"), filter }
    }

    /// Whether the benches of the family `name` may run: every benchmark id starts with its family's name, so
    /// a filter that names one family (`cwd`, or `cwd_bf16/...`) rules out every other family's set-up.
    pub fn wants_family(&self, name: &str, families: &[&str]) -> bool {
        let names = |f: &str, family: &str| f == family || f.starts_with(&format!("{family}_"));
        match &self.filter {
            Filter::Substring(f) | Filter::Exact(f) => {
                match families.iter().filter(|&&n| names(f, n)).max_by_key(|n| n.len()) {
                    Some(&named) => named == name,
                    None => true,
                }
            }
            Filter::None => false,
            Filter::All => true,
        }
    }

    /// Whether criterion would run the benchmark `id`.
    pub fn wants(&self, id: &str) -> bool {
        match &self.filter {
            Filter::All => true,
            Filter::Substring(f) => id.contains(f.as_str()),
            Filter::Exact(f) => id == f,
            Filter::None => false,
        }
    }

    /// Every shape of `all` (smallest first) when benchmarking or listing; only the smallest in test mode
    /// (one unoptimised call each).
    pub fn shapes<'a>(&self, all: &'a [[usize; 4]]) -> &'a [[usize; 4]] {
        if self.bench || self.list {
            all
        } else {
            &all[..1]
        }
    }
}

/// The criterion id of one benchmark: `{loss}_{dtype}/{backend}_{pass}/{shape}`.
pub fn bench_id(loss: &str, dtype: DType, backend: &str, pass: Pass, shape: &[usize; 4]) -> String {
    format!("{loss}_{dtype}/{backend}_{}/{}", pass.name(), shape_name(shape))
}

/// A median time over `iters` calls timed with CUDA events.
#[derive(Debug, Clone, Copy)]
pub struct EventTiming {
    pub median_ms: f64,
    pub iters: usize,
    /// Whether every timed call was queued before the GPU reached the first one, so the events saw the
    /// kernels back to back rather than the host's launch rate.
    pub queued_ahead: bool,
}

/// The open device: its stream, name, and the ballast buffers of [`Gpu::time_events`].
pub struct Gpu {
    pub stream: Arc<CudaStream>,
    pub device: String,
    ballast: Option<(CudaSlice<u8>, CudaSlice<u8>)>,
}

impl Gpu {
    /// Synchronizes, then runs `call` `iters` times and synchronizes again: the time criterion records for one
    /// batch, so it covers the GPU work and not only the asynchronous launches.
    pub fn batch(stream: &CudaStream, iters: u64, call: &mut impl FnMut() -> kd_kernels::Result<()>) -> Duration {
        stream.synchronize().expect("stream synchronize");
        let start = Instant::now();
        for _ in 0..iters {
            call().expect("GPU call failed");
        }
        stream.synchronize().expect("stream synchronize");
        start.elapsed()
    }

    /// The median device time of one `call`, each bracketed by its own pair of CUDA events (as `bench_torch.py`
    /// does with `torch.cuda.Event`).
    ///
    /// Small shapes run faster on the GPU than the host can launch them; timed as they come, the events would
    /// measure the launch rate. So the GPU is first given a long copy between two ballast buffers, the timed
    /// calls are queued behind it, and the measurement is repeated with more ballast until the host has queued
    /// every call before the ballast is done.
    pub fn time_events<E: Error + 'static>(
        &mut self,
        warmup: usize,
        iters: usize,
        mut call: impl FnMut() -> Result<(), E>,
    ) -> Res<EventTiming> {
        let stream = self.stream.clone();
        for _ in 0..warmup {
            call()?;
        }
        stream.synchronize()?;
        let ctx = stream.context();
        let timed = || ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT));
        let events: Vec<(CudaEvent, CudaEvent)> =
            (0..iters).map(|_| Ok::<_, Box<dyn Error>>((timed()?, timed()?))).collect::<Res<_>>()?;
        if self.ballast.is_none() {
            // SAFETY: the ballast's contents are never read, only copied into each other.
            let pair = unsafe { (stream.alloc::<u8>(BALLAST_BYTES)?, stream.alloc::<u8>(BALLAST_BYTES)?) };
            self.ballast = Some(pair);
        }
        let (src, dst) = self.ballast.as_mut().expect("allocated above");
        let mut copies = 2;
        loop {
            for _ in 0..copies {
                stream.memcpy_dtod(src, dst)?;
            }
            let ballast_done = stream.record_event(None)?;
            for (start, end) in &events {
                start.record(&stream)?;
                call()?;
                end.record(&stream)?;
            }
            let queued_ahead = !ballast_done.try_is_complete()?;
            stream.synchronize()?;
            // 256 copies of 2 x 256 MiB take over 40 ms even on an H200: far more than 50 launches.
            if queued_ahead || copies >= 256 {
                let mut times =
                    events.iter().map(|(s, e)| s.elapsed_ms(e).map(f64::from)).collect::<Result<Vec<_>, _>>()?;
                times.sort_by(f64::total_cmp);
                return Ok(EventTiming { median_ms: median(&times), iters, queued_ahead });
            }
            copies *= 4;
        }
    }

    /// Device-to-device copy of `2 * numel` elements of `T` (as large as student + teacher), timed like the
    /// losses. Its bandwidth is `2 * bytes / time`: a copy reads and writes every byte.
    pub fn copy_bandwidth<T: KdFloat>(&mut self, numel: usize, warmup: usize, iters: usize) -> Res<(EventTiming, f64)> {
        let stream = self.stream.clone();
        let src = stream.alloc_zeros::<T>(2 * numel)?;
        let mut dst = stream.alloc_zeros::<T>(2 * numel)?;
        let bytes = (2 * numel * T::DTYPE.size()) as f64;
        let timing = self.time_events(warmup, iters, || stream.memcpy_dtod(&src, &mut dst))?;
        Ok((timing, 2.0 * bytes / (timing.median_ms * 1e-3) / 1e9))
    }
}

/// One GPU measurement, as printed and written to the JSON lines.
#[derive(Debug, Clone)]
pub struct GpuRecord {
    pub loss: &'static str,
    pub pass: Pass,
    pub shape: [usize; 4],
    pub dtype: DType,
    pub timing: EventTiming,
    pub bytes: u64,
    pub gbps: f64,
    pub copy: EventTiming,
    pub copy_gbps: f64,
    pub device: String,
}

impl GpuRecord {
    pub fn copy_share(&self) -> f64 {
        self.gbps / self.copy_gbps
    }

    /// A JSON object with `bench_torch.py`'s fields (`loss`, `shape`, `dtype`, `impl`, `median_ms`, `gbps`,
    /// `copy_gbps`, `iters`, `device`, `date`) and a few of its own: `pass` (bench_torch times
    /// `forward_backward` only), `bytes` (the minimal traffic `gbps` counts), `copy_ms`, `copy_share`
    /// (`gbps / copy_gbps`), `queued_ahead` (see [`EventTiming`]) and the crate version.
    pub fn json(&self, date: &str) -> String {
        // A non-finite number becomes null (JSON has no NaN).
        serde_json::json!({
            "loss": self.loss,
            "shape": self.shape,
            "dtype": self.dtype.name(),
            "impl": "kd-kernels",
            "pass": self.pass.name(),
            "median_ms": self.timing.median_ms,
            "gbps": self.gbps,
            "bytes": self.bytes,
            "copy_ms": self.copy.median_ms,
            "copy_gbps": self.copy_gbps,
            "copy_share": self.copy_share(),
            "iters": self.timing.iters,
            "queued_ahead": self.timing.queued_ahead && self.copy.queued_ahead,
            "device": self.device,
            "kd_kernels": env!("CARGO_PKG_VERSION"),
            "date": date,
        })
        .to_string()
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// The current UTC time as `bench_torch.py` writes it: `2025-01-31T12:34:56+00:00`.
pub fn utc_now_iso() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Where the JSON lines go: `$OUT/bench_results.jsonl` when `OUT` is set, else `target/bench_results.jsonl`.
pub fn results_path() -> PathBuf {
    match std::env::var_os("OUT") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("bench_results.jsonl"),
        _ => PathBuf::from("target").join("bench_results.jsonl"),
    }
}

/// Runs one loss's benchmarks: owns criterion, the device, the report and the CPU cost estimate.
pub struct Harness {
    pub loss: &'static str,
    pub args: Args,
    criterion: Criterion,
    gpu: Option<Gpu>,
    date: String,
    records: Vec<GpuRecord>,
    /// Per (shape, dtype): the copy bandwidth measured for it, shared by the passes of that pair.
    copy_cache: Vec<([usize; 4], DType, EventTiming, f64)>,
    /// Seconds per element of one CPU `forward_backward`, measured on the smallest shape.
    cpu_secs_per_elem: Option<f64>,
}

impl Harness {
    /// The last GPU measurement recorded (for a family's derived figures).
    pub fn last_record(&self) -> Option<&GpuRecord> {
        self.records.last()
    }

    /// Parses the command line and opens GPU 0, printing one line on why the GPU benches are skipped if it
    /// cannot be used.
    pub fn new(loss: &'static str) -> Self {
        let args = Args::from_env();
        let criterion = Criterion::default().configure_from_args();
        let gpu = match kd_kernels::cuda::default_stream(0) {
            Ok(stream) => {
                let device = stream.context().name().unwrap_or_else(|e| format!("unknown CUDA device ({e})"));
                Some(Gpu { stream, device, ballast: None })
            }
            Err(e) => {
                println!("{loss}: GPU benches skipped: {e}");
                None
            }
        };
        Harness {
            loss,
            args,
            criterion,
            gpu,
            date: utc_now_iso(),
            records: Vec::new(),
            copy_cache: Vec::new(),
            cpu_secs_per_elem: None,
        }
    }

    /// Builds the loss's GPU object on the device's stream; on failure prints why and drops the GPU benches.
    pub fn open_gpu<L>(&mut self, make: impl FnOnce(Arc<CudaStream>) -> kd_kernels::Result<L>) -> Option<L> {
        let stream = self.gpu.as_ref()?.stream.clone();
        match make(stream) {
            Ok(l) => Some(l),
            Err(e) => {
                println!("{}: GPU benches skipped: {e}", self.loss);
                self.gpu = None;
                None
            }
        }
    }

    pub fn stream(&self) -> Option<&Arc<CudaStream>> {
        self.gpu.as_ref().map(|g| &g.stream)
    }

    /// Whether any benchmark of `shape` will run, so its inputs are worth generating.
    pub fn wants_shape(&self, shape: &[usize; 4], gpu_passes: &[Pass]) -> bool {
        [DType::F32, DType::BF16].iter().any(|&dtype| {
            self.args.wants(&bench_id(self.loss, dtype, "cpu", Pass::ForwardBackward, shape))
                || (self.gpu.is_some()
                    && gpu_passes.iter().any(|&p| self.args.wants(&bench_id(self.loss, dtype, "gpu", p, shape))))
        })
    }

    pub fn wants(&self, backend: &str, pass: Pass, shape: &[usize; 4], dtype: DType) -> bool {
        self.args.wants(&bench_id(self.loss, dtype, backend, pass, shape))
    }

    /// Benchmarks one GPU entry point: a criterion benchmark whose batches end with a stream synchronize, then
    /// (not in list mode) the CUDA-event kernel time and the copy bandwidth, printed and recorded.
    pub fn gpu_bench<T: KdFloat>(
        &mut self,
        pass: Pass,
        shape: [usize; 4],
        mut call: impl FnMut() -> kd_kernels::Result<()>,
    ) {
        let dtype = T::DTYPE;
        if self.gpu.is_none() || !self.wants("gpu", pass, &shape, dtype) {
            return;
        }
        let stream = self.gpu.as_ref().expect("checked above").stream.clone();
        let n = numel(&shape);
        let bytes = pass.minimal_bytes(n, dtype);
        let mut group = self.criterion.benchmark_group(format!("{}_{dtype}", self.loss));
        group.throughput(Throughput::BytesDecimal(bytes)).warm_up_time(Duration::from_secs(1));
        group.measurement_time(Duration::from_secs(3));
        group.bench_function(BenchmarkId::new(format!("gpu_{}", pass.name()), shape_name(&shape)), |b| {
            b.iter_custom(|iters| Gpu::batch(&stream, iters, &mut call))
        });
        group.finish();

        if self.args.list {
            return;
        }
        if let Err(e) = self.event_record::<T>(pass, shape, bytes, &mut call) {
            println!("{} {} {dtype} {}: event timing failed: {e}", self.loss, pass.name(), shape_name(&shape));
        }
    }

    fn event_record<T: KdFloat>(
        &mut self,
        pass: Pass,
        shape: [usize; 4],
        bytes: u64,
        call: &mut impl FnMut() -> kd_kernels::Result<()>,
    ) -> Res<()> {
        let (warmup, iters) = match (self.args.bench, self.args.quick) {
            (true, false) => (EVENT_WARMUP, EVENT_ITERS),
            (true, true) => (3, 10),
            (false, _) => (1, 3),
        };
        let dtype = T::DTYPE;
        let gpu = self.gpu.as_mut().expect("present when called");
        let cached = self.copy_cache.iter().find(|c| c.0 == shape && c.1 == dtype).map(|c| (c.2, c.3));
        let (copy, copy_gbps) = match cached {
            Some(c) => c,
            None => {
                let c = gpu.copy_bandwidth::<T>(numel(&shape), warmup, iters)?;
                self.copy_cache.push((shape, dtype, c.0, c.1));
                c
            }
        };
        let timing = gpu.time_events(warmup, iters, call)?;
        let record = GpuRecord {
            loss: self.loss,
            pass,
            shape,
            dtype,
            timing,
            bytes,
            gbps: bytes as f64 / (timing.median_ms * 1e-3) / 1e9,
            copy,
            copy_gbps,
            device: gpu.device.clone(),
        };
        println!(
            "events: {} {} {dtype} {}: {:.4} ms/call, {:.1} GB/s; copy {:.1} GB/s; {:.1}% of copy{}",
            self.loss,
            pass.name(),
            shape_name(&shape),
            timing.median_ms,
            record.gbps,
            copy_gbps,
            100.0 * record.copy_share(),
            if timing.queued_ahead { "" } else { " (launch-bound: the host could not queue ahead)" },
        );
        // Test-mode numbers (3 calls) are a smoke test, not results.
        if self.args.bench {
            let path = results_path();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
            writeln!(file, "{}", record.json(&self.date))?;
        }
        self.records.push(record);
        Ok(())
    }

    /// Benchmarks the CPU reference's `forward_backward` (`sample_size(10)`, flat sampling, measurement time
    /// from an estimate of one call), skipping shapes where one call is estimated above ten seconds.
    pub fn cpu_bench<T: KdFloat>(
        &mut self,
        shape: [usize; 4],
        student: &Array4<T>,
        teacher: &Array4<T>,
        mut call: impl FnMut(ArrayView4<'_, T>, ArrayView4<'_, T>) -> kd_kernels::Result<CpuOutput>,
    ) {
        let dtype = T::DTYPE;
        let pass = Pass::ForwardBackward;
        if !self.wants("cpu", pass, &shape, dtype) {
            return;
        }
        let mut measurement = Duration::from_secs(2);
        if self.args.bench {
            let per_elem = *self.cpu_secs_per_elem.get_or_insert_with(|| {
                // One call on the smallest shape; the reference's cost is linear in the element count.
                let small = SHAPES[0];
                let (s, t) = Inputs::generate(small).to_dtype::<T>();
                let start = Instant::now();
                call(s.view(), t.view()).expect("CPU reference failed");
                start.elapsed().as_secs_f64() / numel(&small) as f64
            });
            let estimate = Duration::from_secs_f64(per_elem * numel(&shape) as f64);
            if estimate > CPU_CALL_LIMIT {
                println!(
                    "{}: cpu {dtype} {} skipped: one call is estimated at {:.1} s (from {:.1} ns/element on {}), \
                     over the {} s limit",
                    self.loss,
                    shape_name(&shape),
                    estimate.as_secs_f64(),
                    per_elem * 1e9,
                    shape_name(&SHAPES[0]),
                    CPU_CALL_LIMIT.as_secs()
                );
                return;
            }
            // Ten samples of one call at least, plus a margin, so criterion does not warn.
            measurement = measurement.max(estimate.mul_f64(12.0));
        }
        let mut group = self.criterion.benchmark_group(format!("{}_{dtype}", self.loss));
        group
            .throughput(Throughput::BytesDecimal(pass.minimal_bytes(numel(&shape), dtype)))
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(measurement);
        group.bench_function(BenchmarkId::new("cpu_forward_backward", shape_name(&shape)), |b| {
            b.iter(|| call(student.view(), teacher.view()).expect("CPU reference failed"))
        });
        group.finish();
    }

    /// Prints the table of CUDA-event results and criterion's summary.
    pub fn finish(self) {
        if !self.args.bench && !self.args.list {
            println!("{}: test mode (no --bench): every bench ran once, on its smallest shape only", self.loss);
        }
        if !self.records.is_empty() {
            println!();
            println!("{}: kernel time per call from CUDA events, on {}", self.loss, self.records[0].device);
            println!(
                "{:<18} {:<16} {:<5} {:>10} {:>9} {:>10} {:>7}",
                "pass", "shape", "dtype", "median ms", "GB/s", "copy GB/s", "% copy"
            );
            for r in &self.records {
                println!(
                    "{:<18} {:<16} {:<5} {:>10.4} {:>9.1} {:>10.1} {:>6.1}%{}",
                    r.pass.name(),
                    shape_name(&r.shape),
                    r.dtype.name(),
                    r.timing.median_ms,
                    r.gbps,
                    r.copy_gbps,
                    100.0 * r.copy_share(),
                    if r.timing.queued_ahead { "" } else { "  launch-bound" },
                );
            }
            if self.args.bench {
                println!("JSON lines appended to {}", results_path().display());
            }
        }
        self.criterion.final_summary();
    }
}

/// The benches of a loss on a same-shape pair of logits (CWD, pixel KD, ICSD, DIST), written once over the
/// family contract: the loss object's `forward_backward` / `forward` on the GPU, one object per kernel path
/// measured, and the f64 reference's `forward_backward` on the CPU.
pub struct PairBench<F: PairFamily> {
    /// The loss's configuration.
    pub config: F::Config,
    /// The shapes, smallest first (test mode runs only the first).
    pub shapes: &'static [[usize; 4]],
    /// The GPU passes, in this order, each with the kernel path it runs on.
    pub gpu_passes: Vec<(Pass, F::Path)>,
    /// Whether the CPU reference is benchmarked on a shape (above the ten-second estimate it never is).
    pub cpu_on: fn(&[usize; 4]) -> bool,
}

impl<F: PairFamily> PairBench<F> {
    /// The training call and the loss alone on the default path, on [`SHAPES`], the CPU on every shape.
    pub fn new(config: F::Config) -> Self {
        let path = F::Path::default();
        PairBench {
            config,
            shapes: &SHAPES,
            gpu_passes: vec![(Pass::ForwardBackward, path), (Pass::Forward, path)],
            cpu_on: |_| true,
        }
    }

    /// Benchmarks every shape of the run mode, in f32 then bf16: the GPU passes (where a GPU is present), then
    /// the CPU reference; prints the results.
    pub fn run(self) {
        let mut h = Harness::new(F::NAME);
        let mut gpu = h.open_gpu(|stream| {
            let path_object = |&(_, path): &(Pass, F::Path)| {
                LossCuda::<F>::new(stream.clone(), self.config.clone()).map(|l| l.with_path(path))
            };
            self.gpu_passes.iter().map(path_object).collect::<kd_kernels::Result<Vec<_>>>()
        });
        for &shape in h.args.shapes(self.shapes) {
            let passes: Vec<Pass> = self.gpu_passes.iter().map(|&(pass, _)| pass).collect();
            if !h.wants_shape(&shape, &passes) {
                continue;
            }
            let inputs = Inputs::generate(shape);
            self.bench_dtype(&mut h, gpu.as_deref_mut(), shape, &inputs.student, &inputs.teacher);
            let (student, teacher) = inputs.to_dtype::<bf16>();
            drop(inputs);
            self.bench_dtype(&mut h, gpu.as_deref_mut(), shape, &student, &teacher);
        }
        h.finish();
    }

    fn bench_dtype<T: KdFloat>(
        &self,
        h: &mut Harness,
        gpu: Option<&mut [LossCuda<F>]>,
        shape: [usize; 4],
        student: &Array4<T>,
        teacher: &Array4<T>,
    ) {
        if let Some(gpu) = gpu {
            if let Err(e) = self.bench_gpu::<T>(h, gpu, shape, student, teacher) {
                println!("{} {} {}: GPU benches failed: {e}", h.loss, T::DTYPE, shape_name(&shape));
            }
        }
        if (self.cpu_on)(&shape) {
            h.cpu_bench(shape, student, teacher, |s, t| F::cpu(&self.config, s, t));
        }
    }

    fn bench_gpu<T: KdFloat>(
        &self,
        h: &mut Harness,
        gpu: &mut [LossCuda<F>],
        shape: [usize; 4],
        student: &Array4<T>,
        teacher: &Array4<T>,
    ) -> Res<()> {
        if !self.gpu_passes.iter().any(|&(p, _)| h.wants("gpu", p, &shape, T::DTYPE)) {
            return Ok(());
        }
        let stream = h.stream().expect("the GPU objects exist only with a GPU").clone();
        let s = stream.clone_htod(student.as_slice().expect("standard layout"))?;
        let t = stream.clone_htod(teacher.as_slice().expect("standard layout"))?;
        let mut grad = stream.alloc_zeros::<T>(s.len())?;
        let mut loss = stream.alloc_zeros::<f32>(1)?;
        for (object, &(pass, _)) in gpu.iter_mut().zip(&self.gpu_passes) {
            object.reserve(&shape, T::DTYPE)?;
            h.gpu_bench::<T>(pass, shape, || match pass {
                Pass::Forward => object.forward(&shape, &s, &t, &mut loss),
                _ => object.forward_backward(&shape, &s, &t, &mut loss, &mut grad),
            });
        }
        stream.synchronize()?;
        Ok(())
    }
}

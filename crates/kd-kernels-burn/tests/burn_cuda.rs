//! The burn ops on burn's CUDA backend (feature `cuda`; burn's `Cuda` with fusion, with and without
//! autodiff) against burn's own autograd of the same losses written in burn ops
//! (`kd_kernels_burn::reference`) on the same device, in f32, f16 and bf16 (CWT in f32; SemCKD's maps in
//! each, its MLPs in f32), plus the ordering
//! against cubecl's lazy queue. Under a small harness of its own (`harness = false`): built without
//! `cuda`, without kernels, or with no GPU, every test is reported `skipped` with the reason and the
//! binary exits 0; otherwise every test runs and the binary exits 1 if any failed.
//!
//! The reference runs in f32 on the f16/bf16 inputs cast up (burn's own f16 ops would be the less
//! accurate side); ours returns the loss rounded to the input dtype, so the loss is held to the crate's
//! loss tolerance or that dtype's rounding, whichever is larger.

#[cfg(feature = "cuda")]
mod burn_support;
#[path = "../../gpu_test_harness.rs"]
mod gpu_test_harness;

#[cfg(feature = "cuda")]
mod gpu {
    use super::burn_support::{cwt_outputs, logits, tensor, values, CWT_OUTPUTS};
    use burn::tensor::{DType, Device, Int, Tensor, TensorData};
    use kd_kernels::cirkd::{CirkdConfig, CirkdPool};
    use kd_kernels::cwd::CwdConfig;
    use kd_kernels::cwt::{CwtConfig, CwtNormalize};
    use kd_kernels::dist::DistConfig;
    use kd_kernels::icsd::{AicsdConfig, IcsdConfig, IcsdVariant};
    use kd_kernels::ifvd::IfvdConfig;
    use kd_kernels::pixel_kd::{PixelKdConfig, Reduction};
    use kd_kernels::pkd::PkdConfig;
    use kd_kernels::semckd::SemckdConfig;
    use kd_kernels::skd::{SkdConfig, SkdPool};
    use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
    use kd_kernels_burn::{
        aicsd_loss, cirkd_loss, cwd_loss, cwt_loss, dist_loss, icsd_loss, ifvd_loss, pixel_kd_loss, pkd_loss,
        reference, semckd_loss, skd_loss, CwtMlp, SemckdMlp,
    };

    pub type TestResult = Result<(), String>;

    const DTYPES: [DType; 3] = [DType::F32, DType::F16, DType::BF16];

    fn kernel_dtype(dtype: DType) -> kd_kernels::DType {
        match dtype {
            DType::F16 => kd_kernels::DType::F16,
            DType::BF16 => kd_kernels::DType::BF16,
            _ => kd_kernels::DType::F32,
        }
    }

    /// The crate's tolerance; a loss stored in a 16-bit dtype also carries that dtype's rounding.
    fn limit(dtype: DType, kind: OutputKind) -> f64 {
        let rounding = match dtype {
            DType::F16 => 2f64.powi(-10),
            DType::BF16 => 2f64.powi(-7),
            _ => 0.0,
        };
        let base = tolerance(kernel_dtype(dtype), kind);
        if kind == OutputKind::Loss {
            base.max(rounding)
        } else {
            base
        }
    }

    fn check_close(what: &str, got: Vec<f64>, want: Vec<f64>, limit: f64) -> TestResult {
        if got.len() != want.len() {
            return Err(format!("{what}: {} values, want {}", got.len(), want.len()));
        }
        let cmp = Comparison::of(got, want);
        if cmp.max_rel_err <= limit {
            Ok(())
        } else {
            Err(format!("{what}: max_rel_err {} > {limit} ({cmp:?})", cmp.max_rel_err))
        }
    }

    type PairFn<'a> = &'a dyn Fn(Tensor<4>, Tensor<4>) -> Tensor<1>;

    /// A run's loss, student gradient and (where asked) teacher gradient.
    type PairRun = (Vec<f64>, Vec<f64>, Option<Vec<f64>>);

    /// Loss and gradients (student; teacher when `teacher_grad`) of ours and of the reference, each dtype.
    /// `case`: the name, the shape of both inputs, whether the teacher gets a gradient too.
    fn compare_pair(
        device: &Device,
        (name, shape, teacher_grad): (&str, [usize; 4], bool),
        ours: PairFn<'_>,
        theirs: PairFn<'_>,
    ) -> TestResult {
        compare_shapes(device, name, [shape, shape], teacher_grad, ours, theirs)
    }

    /// [`compare_pair`] with a teacher of its own shape.
    fn compare_shapes(
        device: &Device,
        name: &str,
        [shape, teacher_shape]: [[usize; 4]; 2],
        teacher_grad: bool,
        ours: PairFn<'_>,
        theirs: PairFn<'_>,
    ) -> TestResult {
        for dtype in DTYPES {
            let (s, t) = (logits(shape, 1, 6.0), logits(teacher_shape, 2, 6.0));
            let run = |f: PairFn<'_>, upcast: bool| -> Result<PairRun, String> {
                let student = tensor(s.clone(), shape, device, dtype).require_grad();
                let mut teacher = tensor(t.clone(), teacher_shape, device, dtype);
                if teacher_grad {
                    teacher = teacher.require_grad();
                }
                let (s_in, t_in) = if upcast {
                    (student.clone().cast(DType::F32), teacher.clone().cast(DType::F32))
                } else {
                    (student.clone(), teacher.clone())
                };
                let loss = f(s_in, t_in);
                if !upcast && loss.dtype() != dtype {
                    return Err(format!("{name}: loss is {:?}, the input {dtype:?}", loss.dtype()));
                }
                let grads = loss.backward();
                let gs = student.grad(&grads).ok_or("the student has no gradient")?;
                if gs.dtype() != dtype {
                    return Err(format!("{name}: gradient is {:?}, the input {dtype:?}", gs.dtype()));
                }
                let gt = match teacher_grad {
                    true => Some(values(teacher.grad(&grads).ok_or("the teacher has no gradient")?)),
                    false => None,
                };
                Ok((values(loss), values(gs), gt))
            };
            let (loss, gs, gt) = run(ours, false)?;
            let (ref_loss, ref_gs, ref_gt) = run(theirs, dtype != DType::F32)?;
            let tag = format!("{name} {dtype:?} {shape:?}");
            check_close(&format!("{tag} loss"), loss, ref_loss, limit(dtype, OutputKind::Loss))?;
            check_close(&format!("{tag} d/d student"), gs, ref_gs, limit(dtype, OutputKind::Tensor))?;
            if let (Some(gt), Some(ref_gt)) = (gt, ref_gt) {
                check_close(&format!("{tag} d/d teacher"), gt, ref_gt, limit(dtype, OutputKind::Tensor))?;
            }
        }
        Ok(())
    }

    const SHAPES: [[usize; 4]; 3] = [[2, 19, 16, 32], [1, 7, 33, 65], [3, 1, 1, 6]];

    pub fn check_cwd(device: &Device) -> TestResult {
        for (shape, config) in SHAPES.into_iter().zip([
            CwdConfig::default(),
            CwdConfig { tau: 1.0, loss_weight: 5.0, teacher_grad: false },
            CwdConfig { tau: 2.5, loss_weight: 0.5, teacher_grad: false },
        ]) {
            compare_pair(
                device,
                ("cwd", shape, false),
                &|s, t| cwd_loss(s, t, &config).expect("valid input"),
                &|s, t| reference::cwd_loss(s, t, &config),
            )?;
        }
        let config = CwdConfig { tau: 2.0, loss_weight: 3.0, teacher_grad: true };
        compare_pair(
            device,
            ("cwd teacher_grad", [2, 3, 5, 4], true),
            &|s, t| cwd_loss(s, t, &config).expect("valid input"),
            &|s, t| reference::cwd_loss(s, t, &config),
        )
    }

    pub fn check_pixel_kd(device: &Device) -> TestResult {
        for (i, reduction) in
            [Reduction::Mean, Reduction::BatchMean, Reduction::Sum, Reduction::PixelMean].into_iter().enumerate()
        {
            let config = PixelKdConfig { tau: 1.0 + i as f64, loss_weight: 10.0, reduction, scale_tau2: i % 2 == 1 };
            compare_pair(
                device,
                ("pixel_kd", SHAPES[i % SHAPES.len()], false),
                &|s, t| pixel_kd_loss(s, t, &config).expect("valid input"),
                &|s, t| reference::pixel_kd_loss(s, t, &config),
            )?;
        }
        Ok(())
    }

    pub fn check_dist(device: &Device) -> TestResult {
        let config = DistConfig { tau: 2.0, beta: 1.5, gamma: 0.5, loss_weight: 3.0 };
        compare_pair(
            device,
            ("dist", [2, 19, 9, 11], false),
            &|s, t| dist_loss(s, t, &config).expect("valid input"),
            &|s, t| reference::dist_loss(s, t, &config),
        )
    }

    /// SKD and CIRKD, teacher channels other than the student's, odd sides.
    pub fn check_skd_cirkd(device: &Device) -> TestResult {
        let shapes = [[2, 5, 9, 11], [2, 3, 9, 11]];
        let compare = |name: String, ours: PairFn<'_>, theirs: PairFn<'_>| {
            compare_shapes(device, &name, shapes, false, ours, theirs)
        };
        for config in [SkdConfig::default(), SkdConfig { loss_weight: 10.0, pool: SkdPool::None }] {
            let ours = |s, t| skd_loss(s, t, &config).expect("valid input");
            compare(format!("skd {config:?}"), &ours, &|s, t| reference::skd_loss(s, t, &config))?;
        }
        let base = CirkdConfig::default();
        for config in [base, CirkdConfig { tau: 0.5, loss_weight: 2.0, pool: CirkdPool::Avg(3) }] {
            let ours = |s, t| cirkd_loss(s, t, &config).expect("valid input");
            compare(format!("cirkd {config:?}"), &ours, &|s, t| reference::cirkd_loss(s, t, &config))?;
        }
        Ok(())
    }

    /// One level through the pair comparison (the several-level packing is the NdArray tests').
    pub fn check_pkd(device: &Device) -> TestResult {
        let config = PkdConfig { loss_weight: 6.0 };
        compare_pair(
            device,
            ("pkd", [2, 7, 9, 11], false),
            &|s, t| pkd_loss(&[s], &[t], &config).expect("valid input"),
            &|s, t| reference::pkd_loss(&[s], &[t], &config),
        )
    }

    /// Labels at another resolution, classes 0..5 and 255 (ignored).
    pub fn check_ifvd(device: &Device) -> TestResult {
        let config = IfvdConfig::new(5);
        let dims = [2, 13, 17];
        let values: Vec<i64> = (0..dims.iter().product::<usize>()).map(|k| [0, 3, 255, 1, 4, 2][k % 6]).collect();
        let labels = Tensor::<3, Int>::from_data(TensorData::new(values, dims), device);
        compare_pair(
            device,
            ("ifvd", [2, 6, 9, 11], false),
            &|s, t| ifvd_loss(s, t, labels.clone(), &config).expect("valid input"),
            &|s, t| reference::ifvd_loss(s, t, labels.clone(), &config),
        )
    }

    pub fn check_icsd(device: &Device) -> TestResult {
        for variant in [IcsdVariant::Official, IcsdVariant::Paper] {
            let config = IcsdConfig { variant, ..IcsdConfig::default() };
            compare_pair(
                device,
                (&format!("icsd {variant:?}"), [2, 5, 9, 11], false),
                &|s, t| icsd_loss(s, t, &config).expect("valid input"),
                &|s, t| reference::icsd_loss(s, t, &config),
            )?;
        }
        let config = AicsdConfig::default();
        let alpha = config.alpha(3.0).map_err(|e| e.to_string())?;
        compare_pair(
            device,
            ("aicsd epoch 3", [2, 4, 6, 5], false),
            &|s, t| aicsd_loss(s, t, 3.0, &config).expect("valid input"),
            &|s, t| {
                reference::icsd_loss(s.clone(), t.clone(), &config.icsd) * alpha
                    + reference::pixel_kd_loss(s, t, &config.kd) * (1.0 - alpha)
            },
        )
    }

    fn param<const D: usize>(values: Vec<f64>, shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::from_data(TensorData::new(values, shape), (device, DType::F32)).require_grad()
    }

    pub fn check_cwt(device: &Device) -> TestResult {
        for (n, cs, ch, ct, h, w, normalize) in
            [(2, 5, 4, 3, 3, 4, CwtNormalize::Batch), (2, 16, 32, 19, 9, 17, CwtNormalize::Mean)]
        {
            let config = CwtConfig { loss_weight: 0.3, normalize };
            let run = |f: &dyn Fn(Tensor<4>, Tensor<4>, &CwtMlp) -> Tensor<1>| {
                let student = tensor(logits([n, cs, h, w], 11, 2.0), [n, cs, h, w], device, DType::F32).require_grad();
                let teacher = tensor(logits([n, ct, h, w], 12, 2.0), [n, ct, h, w], device, DType::F32);
                let small = |len: usize, seed| logits([1, 1, 1, len], seed, 0.5);
                let mlp = CwtMlp {
                    w1: param(small(ch * cs, 13), [ch, cs], device),
                    b1: param(small(ch, 14), [ch], device),
                    w2: param(small(ct * ch, 15), [ct, ch], device),
                    b2: param(small(ct, 16), [ct], device),
                };
                cwt_outputs(f(student.clone(), teacher, &mlp), &student, &mlp)
            };
            let ours = run(&|s, t, mlp| cwt_loss(s, t, mlp, &config).expect("valid input"));
            let theirs = run(&|s, t, mlp| reference::cwt_loss(s, t, mlp, &config));
            for ((name, got), want) in CWT_OUTPUTS.into_iter().zip(ours).zip(theirs) {
                let kind = if name == "loss" { OutputKind::Loss } else { OutputKind::Tensor };
                check_close(&format!("cwt {name} n{n} cs{cs} ch{ch} ct{ct}"), got, want, limit(DType::F32, kind))?;
            }
        }
        Ok(())
    }

    /// One embedding MLP (`[2d, B]`, `[2d]`, `[d, 2d]`, `[d]`), f32, tracked.
    fn semckd_mlp(batch: usize, d: usize, seed: u64, device: &Device) -> SemckdMlp {
        let weight = |rows: usize, cols: usize, seed| {
            Tensor::<2>::from_data(
                TensorData::new(logits([1, 1, rows, cols], seed, 0.5), [rows, cols]),
                (device, DType::F32),
            )
        };
        let bias = |len: usize, seed| {
            Tensor::<1>::from_data(TensorData::new(logits([1, 1, 1, len], seed, 0.5), [len]), (device, DType::F32))
        };
        SemckdMlp {
            linear1_weight: weight(2 * d, batch, seed),
            linear1_bias: bias(2 * d, seed + 1),
            linear2_weight: weight(d, 2 * d, seed + 2),
            linear2_bias: bias(d, seed + 3),
        }
        .require_grad()
    }

    type SemckdFn<'a> =
        &'a dyn Fn(&[Tensor<4>], &[Tensor<4>], &[Vec<Tensor<4>>], &[SemckdMlp], &[SemckdMlp]) -> Tensor<1>;

    /// SemCKD through the packed primitives on CUDA (fusion and cubecl): the loss and the gradients of
    /// every student map, regressor output and MLP parameter, against burn's autograd of the reference
    /// (in f32 on the f16/bf16 inputs cast up), two student and two teacher layers, one of them pooled.
    pub fn check_semckd(device: &Device) -> TestResult {
        let (batch, d) = (8, 2);
        let students = [[6, 8, 8], [12, 4, 4]];
        let teachers = [[8, 8, 8], [16, 4, 4]];
        let config = SemckdConfig::default();
        for dtype in DTYPES {
            let run = |f: SemckdFn<'_>, upcast: bool| -> Result<Vec<Vec<f64>>, String> {
                let map = |[c, h, w]: [usize; 3], seed: u64| {
                    tensor(logits([batch, c, h, w], seed, 1.0), [batch, c, h, w], device, dtype)
                };
                let student: Vec<Tensor<4>> =
                    students.iter().zip(20..).map(|(s, seed)| map(*s, seed).require_grad()).collect();
                let teacher: Vec<Tensor<4>> = teachers.iter().zip(40..).map(|(t, seed)| map(*t, seed)).collect();
                let proj: Vec<Vec<Tensor<4>>> = students
                    .iter()
                    .zip(0u64..)
                    .map(|(s, i)| {
                        let row = teachers.iter().zip(0u64..);
                        row.map(|(t, j)| map([t[0], s[1].min(t[1]), s[1].min(t[1])], 60 + 10 * i + j).require_grad())
                            .collect()
                    })
                    .collect();
                let query: Vec<SemckdMlp> = (0..2).map(|i| semckd_mlp(batch, d, 80 + 4 * i, device)).collect();
                let key: Vec<SemckdMlp> = (0..2).map(|j| semckd_mlp(batch, d, 100 + 4 * j, device)).collect();
                let cast = |maps: &[Tensor<4>]| -> Vec<Tensor<4>> {
                    maps.iter().map(|m| if upcast { m.clone().cast(DType::F32) } else { m.clone() }).collect()
                };
                let proj_in: Vec<Vec<Tensor<4>>> = proj.iter().map(|row| cast(row)).collect();
                let loss = f(&cast(&student), &cast(&teacher), &proj_in, &query, &key);
                if !upcast && loss.dtype() != dtype {
                    return Err(format!("semckd: loss is {:?}, the maps {dtype:?}", loss.dtype()));
                }
                let grads = loss.backward();
                let mut out = vec![values(loss)];
                for map in student.iter().chain(proj.iter().flatten()) {
                    out.push(values(map.grad(&grads).ok_or("a map has no gradient")?));
                }
                for mlp in query.iter().chain(&key) {
                    out.push(values(mlp.linear1_weight.grad(&grads).ok_or("linear1.weight has no gradient")?));
                    out.push(values(mlp.linear1_bias.grad(&grads).ok_or("linear1.bias has no gradient")?));
                    out.push(values(mlp.linear2_weight.grad(&grads).ok_or("linear2.weight has no gradient")?));
                    out.push(values(mlp.linear2_bias.grad(&grads).ok_or("linear2.bias has no gradient")?));
                }
                Ok(out)
            };
            let ours = run(&|s, t, p, q, k| semckd_loss(s, t, p, q, k, &config).expect("valid input"), false)?;
            let theirs = run(&|s, t, p, q, k| reference::semckd_loss(s, t, p, q, k, &config), dtype != DType::F32)?;
            for (i, (got, want)) in ours.into_iter().zip(theirs).enumerate() {
                let kind = if i == 0 { OutputKind::Loss } else { OutputKind::Tensor };
                check_close(&format!("semckd {dtype:?} output {i}"), got, want, limit(dtype, kind))?;
            }
        }
        Ok(())
    }

    /// A cubecl op writes the student right before the loss and the loss and its gradient are consumed by
    /// cubecl ops right after, in a loop over buffers large enough that a missing wait would read stale or
    /// half-written data: every step must equal the reference, and the untracked (no autodiff) path too.
    pub fn check_ordering(device: &Device) -> TestResult {
        let shape = [8, 19, 64, 128];
        let config = CwdConfig::default();
        let base = tensor(logits(shape, 5, 3.0), shape, device, DType::F32);
        let teacher = tensor(logits(shape, 6, 3.0), shape, device, DType::F32);
        for step in 0..6 {
            let scale = 0.5 + step as f64 * 0.25;
            let run = |f: PairFn<'_>| -> (Vec<f64>, Vec<f64>) {
                let weight = base.clone().require_grad();
                // Written by cubecl just before the loss reads it (queued, not yet run).
                let student = (weight.clone() * scale).tanh() * 4.0 + step as f64;
                let loss = f(student, teacher.clone());
                // Consumed by cubecl right after.
                let total = loss * 3.0 + 1.0;
                let grads = total.backward();
                let g = weight.grad(&grads).expect("the parameter has a gradient");
                (values(total), values(g))
            };
            let (ours, ours_g) = run(&|s, t| cwd_loss(s, t, &config).expect("valid input"));
            let (theirs, theirs_g) = run(&|s, t| reference::cwd_loss(s, t, &config));
            check_close(&format!("ordering step {step} loss"), ours, theirs, limit(DType::F32, OutputKind::Loss))?;
            check_close(
                &format!("ordering step {step} grad"),
                ours_g,
                theirs_g,
                limit(DType::F32, OutputKind::Tensor),
            )?;
        }
        let plain = device.clone().inner();
        let s = tensor(logits(shape, 7, 3.0), shape, &plain, DType::F32);
        let t = tensor(logits(shape, 8, 3.0), shape, &plain, DType::F32);
        let kd = PixelKdConfig::default();
        let ours = values(pixel_kd_loss((s.clone() * 2.0).exp().log(), t.clone(), &kd).expect("valid") * 2.0);
        let theirs = values(reference::pixel_kd_loss((s * 2.0).exp().log(), t, &kd) * 2.0);
        check_close("untracked pixel kd", ours, theirs, limit(DType::F32, OutputKind::Loss))
    }

    /// Inputs the kernels cannot take on CUDA are typed errors before anything runs.
    pub fn check_errors(device: &Device) -> TestResult {
        let shape = [2, 3, 4, 4];
        let s = tensor(logits(shape, 1, 1.0), shape, device, DType::F32);
        let t = tensor(logits(shape, 2, 1.0), shape, device, DType::F32);
        if cwd_loss(s.clone(), t.clone().require_grad(), &CwdConfig::default()).is_ok() {
            return Err("a tracked teacher without teacher_grad was accepted".into());
        }
        if pixel_kd_loss(s, t.cast(DType::F16), &PixelKdConfig::default()).is_ok() {
            return Err("a teacher of another dtype was accepted".into());
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
type Check = fn(&burn::tensor::Device) -> gpu::TestResult;

#[cfg(feature = "cuda")]
const TESTS: &[(&str, Check)] = &[
    ("cwd_matches_burn_autograd", gpu::check_cwd),
    ("pixel_kd_matches_burn_autograd", gpu::check_pixel_kd),
    ("icsd_and_aicsd_match_burn_autograd", gpu::check_icsd),
    ("dist_matches_burn_autograd", gpu::check_dist),
    ("skd_and_cirkd_match_burn_autograd", gpu::check_skd_cirkd),
    ("pkd_matches_burn_autograd", gpu::check_pkd),
    ("ifvd_matches_burn_autograd", gpu::check_ifvd),
    ("cwt_matches_burn_autograd_into_every_parameter", gpu::check_cwt),
    ("semckd_matches_burn_autograd_into_every_input", gpu::check_semckd),
    ("ordered_against_cubecl_lazy_queue", gpu::check_ordering),
    ("misuse_is_an_error", gpu::check_errors),
];

#[cfg(not(feature = "cuda"))]
const TESTS: &[(&str, ())] = &[
    ("cwd_matches_burn_autograd", ()),
    ("pixel_kd_matches_burn_autograd", ()),
    ("icsd_and_aicsd_match_burn_autograd", ()),
    ("dist_matches_burn_autograd", ()),
    ("skd_and_cirkd_match_burn_autograd", ()),
    ("pkd_matches_burn_autograd", ()),
    ("ifvd_matches_burn_autograd", ()),
    ("cwt_matches_burn_autograd_into_every_parameter", ()),
    ("semckd_matches_burn_autograd_into_every_input", ()),
    ("ordered_against_cubecl_lazy_queue", ()),
    ("misuse_is_an_error", ()),
];

/// The autodiff CUDA device, or why the tests cannot run.
fn device() -> Result<burn::tensor::Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("built without the `cuda` feature".into());
    }
    if !kd_kernels::cuda::KERNELS_COMPILED {
        return Err("the crate was built without nvcc, so it has no kernels".into());
    }
    kd_kernels::cuda::probe().map_err(|e| e.to_string())?;
    #[cfg(feature = "cuda")]
    {
        std::panic::catch_unwind(|| burn::tensor::Device::cuda(0).autodiff())
            .map_err(|_| "burn could not open CUDA device 0".to_string())
    }
    #[cfg(not(feature = "cuda"))]
    unreachable!("returned above")
}

fn main() {
    match device() {
        #[cfg(feature = "cuda")]
        Ok(device) => gpu_test_harness::run_all("burn_cuda", TESTS, &device),
        #[cfg(not(feature = "cuda"))]
        Ok(_) => unreachable!("device() refuses a build without `cuda`"),
        Err(reason) => gpu_test_harness::skip_all("burn_cuda", TESTS.iter().map(|t| t.0), &reason),
    }
}

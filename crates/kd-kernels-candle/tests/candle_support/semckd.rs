//! SemCKD for the candle tests: the loss written in candle's own ops (`docs/losses.md` §4.2: batch Grams,
//! the query / key embeddings, the attention softmax over teacher layers, the attention-weighted per-sample
//! MSE against the adaptively pooled teacher), and the checks of `kd_kernels_candle::Semckd` against its
//! autograd.

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::semckd::SemckdConfig;
use kd_kernels::tolerance::OutputKind;
use kd_kernels_candle::{Semckd, SemckdTensors};

use super::{compare, dtypes, log_softmax, logits, scalar, verdict, OrMsg, TestResult, DTYPES};

/// PyTorch's adaptive-average-pooling windows as a `[out, inp]` averaging matrix (§4.3:
/// `start = floor(o * In / Out)`, `end = ceil((o + 1) * In / Out)`).
fn pool_matrix(out: usize, inp: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f64; out * inp];
    for o in 0..out {
        let (start, end) = (o * inp / out, ((o + 1) * inp).div_ceil(out));
        for i in start..end {
            m[o * inp + i] = 1.0 / (end - start) as f64;
        }
    }
    Tensor::from_vec(m, (out, inp), device)?.to_dtype(dtype)
}

/// `adaptive_avg_pool2d(x, (h, h))` of `[B, C, H, W]` as two matrix products (square output from `H`,
/// §4.2 step 4).
fn adaptive_pool(x: &Tensor, h: usize) -> candle_core::Result<Tensor> {
    let (b, c, hin, win) = x.dims4()?;
    let rows = pool_matrix(h, hin, x.dtype(), x.device())?.broadcast_as((b, c, h, hin))?.contiguous()?;
    let cols = pool_matrix(h, win, x.dtype(), x.device())?.t()?.broadcast_as((b, c, win, h))?.contiguous()?;
    rows.matmul(&x.contiguous()?)?.matmul(&cols)
}

/// SemCKD in candle ops, in f32 (f64 for f64 inputs); the teacher is a constant.
pub fn semckd_reference(x: &SemckdTensors<'_>, cfg: &SemckdConfig) -> candle_core::Result<Tensor> {
    let dt = if x.student[0].dtype() == DType::F64 { DType::F64 } else { DType::F32 };
    let b = x.student[0].dim(0)?;
    let s_n = x.student.len();
    let embed = |f: &Tensor, [w1, b1, w2, b2]: &[Tensor; 4]| -> candle_core::Result<Tensor> {
        let xm = f.to_dtype(dt)?.reshape((b, ()))?;
        let gram = xm.matmul(&xm.t()?)?;
        let u = gram.matmul(&w1.to_dtype(dt)?.t()?)?.broadcast_add(&b1.to_dtype(dt)?)?;
        let z = u.relu()?.matmul(&w2.to_dtype(dt)?.t()?)?.broadcast_add(&b2.to_dtype(dt)?)?;
        let mut norm = z.sqr()?.sum_keepdim(1)?.sqrt()?;
        if let Some(eps) = cfg.eps {
            norm = norm.maximum(eps)?;
        }
        z.broadcast_div(&norm)
    };
    let q = x.student.iter().zip(x.query).map(|(f, m)| embed(f, m)).collect::<candle_core::Result<Vec<_>>>()?;
    let k = x.teacher.iter().zip(x.key).map(|(f, m)| embed(&f.detach(), m)).collect::<candle_core::Result<Vec<_>>>()?;
    let mut total = Tensor::zeros((), dt, x.student[0].device())?;
    for (i, qi) in q.iter().enumerate() {
        let e = k.iter().map(|kj| (qi * kj)?.sum(1)).collect::<candle_core::Result<Vec<_>>>()?;
        let alpha = log_softmax(&Tensor::stack(&e, 1)?, 1)?.exp()?; // [B, T]
        for (j, t) in x.teacher.iter().enumerate() {
            let p = x.proj[i][j].to_dtype(dt)?;
            let target = adaptive_pool(&t.detach().to_dtype(dt)?, p.dim(2)?)?;
            let mse = (p - target)?.sqr()?.reshape((b, ()))?.mean(1)?; // [B]
            total = (total + (alpha.narrow(1, j, 1)?.squeeze(1)? * mse)?.sum_all()?)?;
        }
    }
    total.affine(cfg.loss_weight / (b * s_n) as f64, 0.0)
}

/// One SemCKD problem: the student maps, the regressor outputs and the embeddings as variables, the teacher
/// maps as constants.
pub struct Case {
    pub student: Vec<Var>,
    pub teacher: Vec<Tensor>,
    pub proj: Vec<Vec<Var>>,
    pub query: Vec<[Var; 4]>,
    pub key: Vec<[Var; 4]>,
}

/// Odd shapes: B = 8 (d = 2), two student and two teacher layers, compared sizes 5 (teacher 6 -> 5, windows
/// that overlap) and 3, non-square maps (the pooling reads H only).
pub const STUDENT: [[usize; 4]; 2] = [[8, 3, 5, 7], [8, 4, 3, 3]];
pub const TEACHER: [[usize; 4]; 2] = [[8, 5, 6, 5], [8, 2, 3, 4]];

impl Case {
    pub fn new(
        student: &[[usize; 4]],
        teacher: &[[usize; 4]],
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Case> {
        let mut seed = 20;
        let mut next = |shape: &[usize], scale: f64, dt: DType| -> candle_core::Result<Tensor> {
            seed += 1;
            logits(shape, seed, device).affine(scale, 0.0)?.to_dtype(dt)
        };
        let b = student[0][0];
        let d = b / 4;
        let mut mlp = || -> candle_core::Result<[Var; 4]> {
            Ok([
                Var::from_tensor(&next(&[2 * d, b], 0.1, DType::F32)?)?,
                Var::from_tensor(&next(&[2 * d], 0.3, DType::F32)?)?,
                Var::from_tensor(&next(&[d, 2 * d], 0.3, DType::F32)?)?,
                Var::from_tensor(&next(&[d], 0.3, DType::F32)?)?,
            ])
        };
        let query = student.iter().map(|_| mlp()).collect::<candle_core::Result<Vec<_>>>()?;
        let key = teacher.iter().map(|_| mlp()).collect::<candle_core::Result<Vec<_>>>()?;
        let student_vars =
            student.iter().map(|s| Var::from_tensor(&next(s, 0.3, dtype)?)).collect::<candle_core::Result<Vec<_>>>()?;
        let teacher_maps = teacher.iter().map(|t| next(t, 0.3, dtype)).collect::<candle_core::Result<Vec<_>>>()?;
        let mut proj = Vec::new();
        for s in student {
            let mut row = Vec::new();
            for t in teacher {
                let h = s[2].min(t[2]);
                row.push(Var::from_tensor(&next(&[b, t[1], h, h], 0.3, dtype)?)?);
            }
            proj.push(row);
        }
        Ok(Case { student: student_vars, teacher: teacher_maps, proj, query, key })
    }

    /// The case's tensors as plain tensors (the variables' own tensors).
    pub fn tensors(&self) -> Tensors {
        let mlp = |m: &[Var; 4]| [0, 1, 2, 3].map(|k| m[k].as_tensor().clone());
        Tensors {
            student: self.student.iter().map(|v| v.as_tensor().clone()).collect(),
            teacher: self.teacher.clone(),
            proj: self.proj.iter().map(|r| r.iter().map(|v| v.as_tensor().clone()).collect()).collect(),
            query: self.query.iter().map(mlp).collect(),
            key: self.key.iter().map(mlp).collect(),
        }
    }

    /// Every variable with its name and the dtype whose tolerance row applies to its gradient.
    pub fn vars(&self, dtype: DType) -> Vec<(String, &Var, DType)> {
        let mut out = Vec::new();
        for (i, v) in self.student.iter().enumerate() {
            out.push((format!("student[{i}]"), v, dtype));
        }
        for (i, row) in self.proj.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                out.push((format!("proj[{i}][{j}]"), v, dtype));
            }
        }
        for (side, list) in [("query", &self.query), ("key", &self.key)] {
            for (k, m) in list.iter().enumerate() {
                for (name, v) in ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"].iter().zip(m) {
                    out.push((format!("{side}[{k}].{name}"), v, DType::F32));
                }
            }
        }
        out
    }
}

/// Owned tensors behind a [`SemckdTensors`] (the training example's type).
pub type Tensors = super::train::SemckdStep;

/// Loss and gradients of `got` against `want`, both losses of `case`, under an upstream gradient of 3.
fn compare_all(what: &str, case: &Case, dtype: DType, got: &Tensor, want: &Tensor) -> Result<Vec<String>, String> {
    let mut failures = Vec::new();
    if got.dtype() != DType::F32 || !got.dims().is_empty() {
        failures.push(format!("{what}: the loss is {:?} {:?}, not an f32 scalar", got.dtype(), got.dims()));
    }
    failures.extend(compare(&format!("{what} loss"), got, want, dtype, OutputKind::Loss).err());
    let g_got = got.affine(3.0, 0.0).and_then(|l| l.backward()).or_msg(what)?;
    let g_want = want.affine(3.0, 0.0).and_then(|l| l.backward()).or_msg(what)?;
    for (name, var, dt) in case.vars(dtype) {
        match (g_got.get(var.as_tensor()), g_want.get(var.as_tensor())) {
            (Some(a), Some(b)) => failures
                .extend(compare(&format!("{what} grad {name} (upstream 3)"), a, b, dt, OutputKind::Tensor).err()),
            (a, b) => {
                failures.push(format!("{what}: gradient of {name} in op {} / reference {}", a.is_some(), b.is_some()))
            }
        }
    }
    for (j, t) in case.teacher.iter().enumerate() {
        if g_got.get(t).is_some() {
            failures.push(format!("{what}: teacher[{j}] got a gradient; it is a constant"));
        }
    }
    Ok(failures)
}

/// SemCKD's loss and every gradient (student maps, regressor outputs, both embeddings' parameters) equal
/// the autograd of the loss in candle ops, every dtype, with and without the normalisation's epsilon.
pub fn check_semckd(device: &Device) -> TestResult {
    let mut failures = Vec::new();
    for cfg in [SemckdConfig { loss_weight: 4.0, eps: None }, SemckdConfig { loss_weight: 5000.0, eps: Some(1e3) }] {
        let op = Semckd::new(cfg).or_msg("Semckd::new")?;
        for dtype in dtypes(device) {
            let what = format!("semckd {dtype:?} eps {:?}", cfg.eps);
            let case = Case::new(&STUDENT, &TEACHER, dtype, device).or_msg(&what)?;
            let tensors = case.tensors();
            let got = op.loss(&tensors.view()).or_msg(&what)?;
            let want = semckd_reference(&tensors.view(), &cfg).or_msg(&what)?;
            if cfg.eps.is_some() {
                // The epsilon must clamp (else this repeats the case without it).
                let plain = semckd_reference(&tensors.view(), &SemckdConfig { eps: None, ..cfg }).or_msg(&what)?;
                if (scalar(&plain)? - scalar(&want)?).abs() < 1e-3 * scalar(&want)?.abs() {
                    failures.push(format!("{what}: the epsilon clamps no embedding; the case tests nothing"));
                }
            }
            // The graph nodes that hand out the gradients pass the loss through bit for bit: the loss of the
            // same values with no input tracking a gradient (one call of the forward alone) is the same number.
            let detach = |m: &[Tensor; 4]| m.clone().map(|t| t.detach());
            let constant = Tensors {
                student: tensors.student.iter().map(Tensor::detach).collect(),
                teacher: tensors.teacher.clone(),
                proj: tensors.proj.iter().map(|r| r.iter().map(Tensor::detach).collect()).collect(),
                query: tensors.query.iter().map(detach).collect(),
                key: tensors.key.iter().map(detach).collect(),
            };
            let constant = op.loss(&constant.view()).or_msg(&what)?;
            if device.is_cpu() && scalar(&constant)? != scalar(&got)? {
                failures.push(format!("{what}: loss {} with gradients, {} without", scalar(&got)?, scalar(&constant)?));
            }
            // On the GPU the forward alone and the forward + backward are different launches; equal to the
            // loss's tolerance.
            failures.extend(
                compare(&format!("{what} loss without gradients"), &constant, &got, dtype, OutputKind::Loss).err(),
            );
            failures.extend(compare_all(&what, &case, dtype, &got, &want)?);
        }
    }
    // The student also reaches the loss through a regressor: `proj` computed from it in the graph. The op's
    // student gradient is then the Gram path plus what autograd brings back through `proj`.
    let op = Semckd::new(SemckdConfig::default()).or_msg("Semckd::new")?;
    for dtype in DTYPES {
        let what = format!("semckd regressor path {dtype:?}");
        let case = Case::new(&[[4, 3, 4, 4]], &[[4, 2, 4, 4]], dtype, device).or_msg(&what)?;
        let mut tensors = case.tensors();
        let s = case.student[0].as_tensor();
        tensors.proj[0][0] = s.narrow(1, 1, 2).and_then(|p| p.affine(0.7, 0.1)).or_msg(&what)?;
        let got = op.loss(&tensors.view()).or_msg(&what)?;
        let want = semckd_reference(&tensors.view(), &SemckdConfig::default()).or_msg(&what)?;
        failures.extend(compare(&format!("{what} loss"), &got, &want, dtype, OutputKind::Loss).err());
        let g_got = got.backward().or_msg(&what)?;
        let g_want = want.backward().or_msg(&what)?;
        match (g_got.get(s), g_want.get(s)) {
            (Some(a), Some(b)) => {
                failures.extend(compare(&format!("{what} grad student"), a, b, dtype, OutputKind::Tensor).err())
            }
            _ => failures.push(format!("{what}: no student gradient")),
        }
    }
    verdict(failures)
}

/// A strided student map, a regressor output at an offset in its storage and a transposed embedding weight
/// give the loss and gradients of the same values laid out contiguously, the gradients in the originals'
/// layouts and nothing leaking outside the offset view.
pub fn check_semckd_layouts(device: &Device) -> TestResult {
    let op = Semckd::new(SemckdConfig::default()).or_msg("Semckd::new")?;
    let mut failures = Vec::new();
    for dtype in DTYPES {
        let what = format!("semckd layouts {dtype:?}");
        let case = Case::new(&STUDENT, &TEACHER, dtype, device).or_msg(&what)?;
        let base_tensors = case.tensors();
        let base = op.loss(&base_tensors.view()).or_msg(&what)?;
        let base_grads = base.backward().or_msg(&what)?;
        let base_grad = |v: &Var| base_grads.get(v.as_tensor()).cloned().ok_or(format!("{what}: no base grad"));

        // student[0] stored as [B, H, C, W], proj[1][0] the second half of a [2B, ...] tensor, key[1]'s
        // linear1.weight stored transposed.
        let s0 = case.student[0].as_tensor();
        let stored = Var::from_tensor(&s0.transpose(1, 2).and_then(|x| x.contiguous()).or_msg(&what)?).or_msg(&what)?;
        let s_view = stored.as_tensor().transpose(1, 2).or_msg(&what)?;
        let p10 = case.proj[1][0].as_tensor();
        let both =
            Var::from_tensor(&Tensor::cat(&[&p10.ones_like().or_msg(&what)?, p10], 0).or_msg(&what)?).or_msg(&what)?;
        let b = p10.dim(0).or_msg(&what)?;
        let p_view = both.as_tensor().narrow(0, b, b).or_msg(&what)?;
        let w = case.key[1][0].as_tensor();
        let w_stored = Var::from_tensor(&w.t().and_then(|x| x.contiguous()).or_msg(&what)?).or_msg(&what)?;
        let w_view = w_stored.as_tensor().t().or_msg(&what)?;
        if s_view.is_contiguous() || w_view.is_contiguous() || p_view.layout().start_offset() == 0 {
            failures.push(format!("{what}: the views are not strided / offset; the test tests nothing"));
        }
        let mut tensors = case.tensors();
        tensors.student[0] = s_view;
        tensors.proj[1][0] = p_view;
        tensors.key[1][0] = w_view;
        let loss = op.loss(&tensors.view()).or_msg(&what)?;
        failures.extend(compare(&format!("{what} loss"), &loss, &base, dtype, OutputKind::Loss).err());
        let grads = loss.backward().or_msg(&what)?;
        let get = |v: &Var| grads.get(v.as_tensor()).cloned().ok_or(format!("{what}: no grad"));
        let gs = get(&stored)?.transpose(1, 2).or_msg(&what)?;
        failures.extend(
            compare(
                &format!("{what} strided student grad"),
                &gs,
                &base_grad(&case.student[0])?,
                dtype,
                OutputKind::Tensor,
            )
            .err(),
        );
        let gp = get(&both)?;
        let (first, second) = (gp.narrow(0, 0, b).or_msg(&what)?, gp.narrow(0, b, b).or_msg(&what)?);
        failures.extend(
            compare(
                &format!("{what} offset proj grad"),
                &second,
                &base_grad(&case.proj[1][0])?,
                dtype,
                OutputKind::Tensor,
            )
            .err(),
        );
        let leaked = first.abs().and_then(|x| x.to_dtype(DType::F32)).and_then(|x| x.max_all()).or_msg(&what)?;
        if scalar(&leaked)? != 0.0 {
            failures.push(format!("{what}: gradient leaked into the other half of the proj storage"));
        }
        let gw = get(&w_stored)?.t().or_msg(&what)?;
        failures.extend(
            compare(
                &format!("{what} transposed key weight grad"),
                &gw,
                &base_grad(&case.key[1][0])?,
                DType::F32,
                OutputKind::Tensor,
            )
            .err(),
        );
    }
    verdict(failures)
}

/// Misuse of the SemCKD op is an error whose message says what to fix, never a panic.
pub fn check_semckd_errors(device: &Device) -> TestResult {
    let op = Semckd::new(SemckdConfig::default()).or_msg("Semckd::new")?;
    let case = Case::new(&STUDENT, &TEACHER, DType::F32, device).or_msg("case")?;
    let mut failures = Vec::new();
    let mut expect = |what: &str, t: &Tensors, needle: &str| match op.loss(&t.view()) {
        Ok(_) => failures.push(format!("{what}: accepted")),
        Err(e) if e.to_string().contains(needle) => {}
        Err(e) => failures.push(format!("{what}: error {e} does not mention {needle:?}")),
    };
    let mut t = case.tensors();
    t.student.clear();
    t.proj.clear();
    t.query.clear();
    expect("no student layer", &t, "student layers");
    let mut t = case.tensors();
    t.proj[1].pop();
    expect("a missing regressor output", &t, "proj");
    let mut t = case.tensors();
    t.key.pop();
    expect("a missing key MLP", &t, "key MLPs");
    let mut t = case.tensors();
    t.proj[0][0] = logits(&[8, 5, 6, 6], 3, device);
    expect("a regressor output of the teacher's size, not the compared one", &t, "proj[i][j]");
    let mut t = case.tensors();
    t.query[1][0] = t.query[1][0].to_dtype(DType::F16).or_msg("f16")?;
    expect("an f16 embedding weight", &t, "F32");
    let mut t = case.tensors();
    t.query[0][2] = logits(&[2, 3], 3, device);
    expect("a wrong embedding shape", &t, "linear2.weight");
    let mut t = case.tensors();
    t.teacher[1] = t.teacher[1].to_dtype(DType::BF16).or_msg("bf16")?;
    expect("a teacher of another dtype", &t, "teacher");
    let mut t = case.tensors();
    t.teacher[0] = logits(&[7, 5, 6, 5], 3, device);
    expect("a teacher with another batch", &t, "batch");
    let mut t = case.tensors();
    t.student[1] = logits(&[8, 4, 3], 3, device);
    expect("a rank-3 student", &t, "rank-4");
    let mut t = case.tensors();
    for x in t.student.iter_mut().chain(&mut t.teacher).chain(t.proj.iter_mut().flatten()) {
        *x = x.to_dtype(DType::U32).or_msg("u32")?;
    }
    expect("integer maps", &t, "unsupported dtype");
    if !device.is_cpu() {
        let mut t = case.tensors();
        for x in t.student.iter_mut().chain(&mut t.teacher).chain(t.proj.iter_mut().flatten()) {
            *x = x.to_dtype(DType::F64).or_msg("f64")?;
        }
        expect("f64 maps on the GPU (the kernels take f32, f16, bf16)", &t, "unsupported dtype");
    }
    // Four samples make d = 1; three make d = 0, which the embedding widths cannot express.
    let small = Case::new(&[[3, 2, 2, 2]], &[[3, 2, 2, 2]], DType::F32, device).or_msg("B = 3")?;
    expect("B = 3 (d = floor(B / 4) = 0)", &small.tensors(), "d >= 1");
    if Semckd::new(SemckdConfig { loss_weight: f64::NAN, eps: None }).is_ok() {
        failures.push("a NaN loss weight was accepted".into());
    }
    verdict(failures)
}

candle_tests! {
    semckd_matches_candle_autograd_into_every_input => check_semckd,
    semckd_strided_and_offset_inputs_are_handled => check_semckd_layouts,
    semckd_misuse_is_an_error_that_says_what_to_fix => check_semckd_errors,
}

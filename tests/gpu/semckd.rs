//! SemCKD on the GPU: the kernels against the f64 CPU reference on random layouts in every dtype,
//! determinism, accumulation, and typed errors. Listed in `tests/gpu/main.rs`'s table by the lead.

use kd_kernels::half::{bf16, f16};
use kd_kernels::ndarray::{ArrayView1, ArrayView2, ArrayView4};
use kd_kernels::semckd::{
    EmbedParamGrads, EmbedParams, EmbedWeights, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdCuda, SemckdGrads,
    SemckdInputs, SemckdLayers,
};
use kd_kernels::tolerance::{tolerance, Comparison, OutputKind};
use kd_kernels::{DType, GradOptions, KdError, KdFloat};

use crate::harness::{download, ensure, gpu_tests, upload, OrMsg, Stream, TestFn, TestResult};

pub(crate) const TESTS: &[(&str, TestFn)] =
    gpu_tests![semckd_matches_cpu_every_dtype, semckd_deterministic_and_accumulates, semckd_errors,];

/// Batch, student maps, teacher maps.
type Layout = (usize, Vec<[usize; 3]>, Vec<[usize; 3]>);

struct Case {
    layers: SemckdLayers,
    student: Vec<Vec<f32>>,
    teacher: Vec<Vec<f32>>,
    proj: Vec<Vec<f32>>,
    mlps: Vec<[Vec<f32>; 4]>, // queries then keys
}

fn case(seed: u64, batch: usize, student: &[[usize; 3]], teacher: &[[usize; 3]]) -> Case {
    let mut state = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    let mut next = move |n: usize, scale: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // multiples of 2^-10, exact in bf16 for |x| < 0.25 * scale ... rounded below per dtype.
                (((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale * 1024.0).round() / 1024.0
            })
            .collect()
    };
    let layers = SemckdLayers { batch, embed_dim: batch / 4, student: student.to_vec(), teacher: teacher.to_vec() };
    let t = layers.teachers();
    let numels = layers.embed_numels();
    let mlps = (0..layers.students() + t).map(|_| [0, 1, 2, 3].map(|k| next(numels[k], 0.25))).collect();
    Case {
        student: (0..layers.students()).map(|i| next(layers.student_shape(i).iter().product(), 1.0)).collect(),
        teacher: (0..t).map(|j| next(layers.teacher_shape(j).iter().product(), 1.0)).collect(),
        proj: (0..layers.students() * t).map(|p| next(layers.pair_numel(p / t, p % t), 1.0)).collect(),
        mlps,
        layers,
    }
}

fn rounded<T: KdFloat>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

struct GpuOut {
    loss: f32,
    attention: Vec<f32>,
    grads: Vec<Vec<f64>>, // student, proj, then every MLP parameter
}

fn run_gpu<T: KdFloat>(
    stream: &Stream,
    c: &Case,
    options: GradOptions,
    initial: Option<&GpuOut>,
) -> Result<GpuOut, String> {
    let l = &c.layers;
    let s = c.student.iter().map(|v| upload(stream, &rounded::<T>(v))).collect::<Result<Vec<_>, _>>()?;
    let t = c.teacher.iter().map(|v| upload(stream, &rounded::<T>(v))).collect::<Result<Vec<_>, _>>()?;
    let p = c.proj.iter().map(|v| upload(stream, &rounded::<T>(v))).collect::<Result<Vec<_>, _>>()?;
    let m = c
        .mlps
        .iter()
        .map(|m| m.iter().map(|v| upload(stream, v)).collect::<Result<Vec<_>, _>>())
        .collect::<Result<Vec<_>, _>>()?;
    let init = |k: usize, n: usize| -> Vec<f64> { initial.map_or(vec![0.0; n], |i| i.grads[k].clone()) };
    let mut k = 0;
    let mut gs = Vec::new();
    for v in &c.student {
        gs.push(upload(stream, &init(k, v.len()).iter().map(|&x| T::from_f64(x)).collect::<Vec<_>>())?);
        k += 1;
    }
    let mut gp = Vec::new();
    for v in &c.proj {
        gp.push(upload(stream, &init(k, v.len()).iter().map(|&x| T::from_f64(x)).collect::<Vec<_>>())?);
        k += 1;
    }
    let mut gm = Vec::new();
    for mm in &c.mlps {
        let mut four = Vec::new();
        for v in mm {
            four.push(upload(stream, &init(k, v.len()).iter().map(|&x| x as f32).collect::<Vec<_>>())?);
            k += 1;
        }
        gm.push(four);
    }
    let mut loss = upload(stream, &[0f32])?;
    let mut attention = upload(stream, &vec![0f32; l.batch * l.students() * l.teachers()])?;

    let sr: Vec<&dyn kd_kernels::cudarc::driver::DevicePtr<T>> = s.iter().map(|x| x as _).collect();
    let tr: Vec<&dyn kd_kernels::cudarc::driver::DevicePtr<T>> = t.iter().map(|x| x as _).collect();
    let pr: Vec<&dyn kd_kernels::cudarc::driver::DevicePtr<T>> = p.iter().map(|x| x as _).collect();
    let mp: Vec<EmbedParams<'_>> = m.iter().map(|v| embed_params(v)).collect();
    let (qp, kp) = mp.split_at(l.students());
    let inputs = SemckdInputs { student: &sr, teacher: &tr, proj: &pr, query: qp, key: kp };
    {
        let mut mlp_grads: Vec<EmbedParamGrads<'_>> = gm.iter_mut().map(|v| embed_grads(v)).collect();
        let key = mlp_grads.split_off(l.students());
        let mut grads = SemckdGrads {
            student: gs.iter_mut().map(|x| x as &mut dyn kd_kernels::cudarc::driver::DevicePtrMut<T>).collect(),
            proj: gp.iter_mut().map(|x| x as &mut dyn kd_kernels::cudarc::driver::DevicePtrMut<T>).collect(),
            query: mlp_grads,
            key,
        };
        let mut semckd = SemckdCuda::new(stream.clone(), SemckdConfig::default()).or_msg("SemckdCuda::new")?;
        semckd
            .forward_backward(l, &inputs, &mut loss, Some(&mut attention), Some(&mut grads), options)
            .or_msg("forward_backward")?;
    }
    let mut grads = Vec::new();
    for g in gs.iter().chain(&gp) {
        grads.push(download(stream, g)?.iter().map(|x: &T| x.to_f64()).collect());
    }
    for four in &gm {
        for g in four {
            grads.push(download(stream, g)?.iter().map(|&x: &f32| x as f64).collect());
        }
    }
    Ok(GpuOut { loss: download(stream, &loss)?[0], attention: download(stream, &attention)?, grads })
}

fn reference(c: &Case, dtype_round: impl Fn(&[f32]) -> Vec<f32>) -> (f64, Vec<f64>, Vec<Vec<f64>>) {
    let l = &c.layers;
    let t = l.teachers();
    let s: Vec<Vec<f32>> = c.student.iter().map(|v| dtype_round(v)).collect();
    let te: Vec<Vec<f32>> = c.teacher.iter().map(|v| dtype_round(v)).collect();
    let p: Vec<Vec<f32>> = c.proj.iter().map(|v| dtype_round(v)).collect();
    let w = |m| weights(l, m);

    let inputs = SemckdCpuInputs {
        student: (0..l.students()).map(|i| ArrayView4::from_shape(l.student_shape(i), &s[i][..]).unwrap()).collect(),
        teacher: (0..t).map(|j| ArrayView4::from_shape(l.teacher_shape(j), &te[j][..]).unwrap()).collect(),
        proj: (0..l.students())
            .map(|i| (0..t).map(|j| ArrayView4::from_shape(l.pair_shape(i, j), &p[i * t + j][..]).unwrap()).collect())
            .collect(),
        query: c.mlps[..l.students()].iter().map(w).collect(),
        key: c.mlps[l.students()..].iter().map(w).collect(),
    };
    let r = SemckdCpu::new(SemckdConfig::default()).unwrap().forward_backward(&inputs).unwrap();
    let mut grads: Vec<Vec<f64>> = r.grad_student.iter().map(|g| g.iter().copied().collect()).collect();
    for row in &r.grad_proj {
        for g in row {
            grads.push(g.iter().copied().collect());
        }
    }
    for g in r.grad_query.iter().chain(&r.grad_key) {
        grads.push(g.linear1_weight.iter().copied().collect());
        grads.push(g.linear1_bias.to_vec());
        grads.push(g.linear2_weight.iter().copied().collect());
        grads.push(g.linear2_bias.to_vec());
    }
    (r.loss, r.attention.iter().copied().collect(), grads)
}

fn check<T: KdFloat>(stream: &Stream, c: &Case) -> TestResult {
    let got = run_gpu::<T>(stream, c, GradOptions::OVERWRITE, None)?;
    let (loss, attention, grads) = reference(c, |v| rounded::<T>(v).iter().map(|x| x.to_f64() as f32).collect());
    let cmp = Comparison::of([got.loss as f64], [loss]);
    ensure(cmp.passes(tolerance(T::DTYPE, OutputKind::Loss)), || format!("{}: loss {cmp:?}", T::DTYPE))?;
    let cmp = Comparison::of(got.attention.iter().map(|&x| x as f64), attention);
    ensure(cmp.passes(1e-4), || format!("{}: attention {cmp:?}", T::DTYPE))?;
    for (k, (g, r)) in got.grads.iter().zip(&grads).enumerate() {
        let cmp = Comparison::of(g.iter().copied(), r.iter().copied());
        ensure(cmp.passes(tolerance(T::DTYPE, OutputKind::Tensor)), || format!("{}: gradient {k} {cmp:?}", T::DTYPE))?;
    }
    Ok(())
}

fn semckd_matches_cpu_every_dtype(stream: &Stream) -> TestResult {
    let layouts: [Layout; 3] = [
        (64, vec![[16, 32, 32], [32, 16, 16], [64, 8, 8]], vec![[16, 32, 32], [32, 16, 16], [64, 8, 8]]),
        (8, vec![[3, 6, 6], [5, 3, 5]], vec![[6, 7, 7], [4, 5, 9], [8, 2, 2]]),
        (70, vec![[2, 48, 48]], vec![[3, 16, 16], [1, 4, 4]]),
    ];
    for (seed, (b, s, t)) in layouts.iter().enumerate() {
        let c = case(seed as u64 + 1, *b, s, t);
        check::<f32>(stream, &c)?;
        check::<f16>(stream, &c)?;
        check::<bf16>(stream, &c)?;
    }
    Ok(())
}

fn semckd_deterministic_and_accumulates(stream: &Stream) -> TestResult {
    let c = case(9, 32, &[[8, 16, 16], [16, 8, 8]], &[[8, 16, 16], [16, 8, 8], [32, 4, 4]]);
    let a = run_gpu::<f32>(stream, &c, GradOptions::OVERWRITE, None)?;
    let b = run_gpu::<f32>(stream, &c, GradOptions::OVERWRITE, None)?;
    ensure(a.loss.to_bits() == b.loss.to_bits(), || "loss differs between runs".to_string())?;
    for (x, y) in a.grads.iter().zip(&b.grads) {
        ensure(x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()), || {
            "gradients differ between runs".to_string()
        })?;
    }
    let acc = run_gpu::<f32>(stream, &c, GradOptions { scale: 2.0, accumulate: true }, Some(&a))?;
    for (k, (x, y)) in a.grads.iter().zip(&acc.grads).enumerate() {
        let want: Vec<f64> = x.iter().map(|v| 3.0 * v).collect();
        let cmp = Comparison::of(y.iter().copied(), want);
        ensure(cmp.passes(1e-4), || format!("accumulate + scale, gradient {k}: {cmp:?}"))?;
    }
    Ok(())
}

fn semckd_errors(stream: &Stream) -> TestResult {
    let mut semckd = SemckdCuda::new(stream.clone(), SemckdConfig::default()).or_msg("SemckdCuda::new")?;
    let too_many = SemckdLayers { batch: 8, embed_dim: 2, student: vec![[1, 2, 2]; 9], teacher: vec![[1, 2, 2]] };
    ensure(matches!(semckd.reserve(&too_many, DType::F32), Err(KdError::TooLarge { .. })), || {
        "9 student layers: TooLarge".to_string()
    })?;
    let no_embed = SemckdLayers { batch: 3, embed_dim: 0, student: vec![[1, 2, 2]], teacher: vec![[1, 2, 2]] };
    ensure(semckd.reserve(&no_embed, DType::F32).is_err(), || "B = 3: no embedding width".to_string())?;
    Ok(())
}

fn embed_params(v: &[kd_kernels::cudarc::driver::CudaSlice<f32>]) -> EmbedParams<'_> {
    EmbedParams { linear1_weight: &v[0], linear1_bias: &v[1], linear2_weight: &v[2], linear2_bias: &v[3] }
}

fn embed_grads(v: &mut [kd_kernels::cudarc::driver::CudaSlice<f32>]) -> EmbedParamGrads<'_> {
    let [a, b, c, d] = v else { unreachable!("four parameters") };
    EmbedParamGrads { linear1_weight: a, linear1_bias: b, linear2_weight: c, linear2_bias: d }
}

fn weights<'a>(l: &SemckdLayers, m: &'a [Vec<f32>; 4]) -> EmbedWeights<'a> {
    let [w1, b1, w2, b2] = l.embed_shapes();
    EmbedWeights {
        linear1_weight: ArrayView2::from_shape((w1[0], w1[1]), &m[0][..]).unwrap(),
        linear1_bias: ArrayView1::from_shape(b1[0], &m[1][..]).unwrap(),
        linear2_weight: ArrayView2::from_shape((w2[0], w2[1]), &m[2][..]).unwrap(),
        linear2_bias: ArrayView1::from_shape(b2[0], &m[3][..]).unwrap(),
    }
}

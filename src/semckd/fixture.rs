//! SemCKD fixtures (`docs/fixtures.md`): parameters `loss_weight`, `num_student_layers`, `num_teacher_layers`;
//! inputs `student.{i}`, `teacher.{j}`, `student_proj.{i}.{j}`, `query.{i}.linear*.*`, `key.{j}.linear*.*`;
//! outputs `loss`, `attention`, `grad.student.{i}`, `grad.student_proj.{i}.{j}`, `grad.query.{i}.*`,
//! `grad.key.{j}.*`.

use ndarray::{ArrayView1, ArrayView2, ArrayView4};

use super::cpu::{EmbedGrads, EmbedWeights};
use super::{
    EmbedParamGrads, EmbedParams, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdCuda, SemckdGrads, SemckdInputs,
    SemckdLayers,
};
use crate::dtype::KdFloat;
use crate::error::KdError;
use crate::fixture::{err, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, Output};
use crate::fixture::{ExampleInput, ExampleSpec};
use crate::fixture::{Typed, TypedCase};
use crate::grad::GradOptions;

pub(crate) struct SemckdFixtures;

const PARAMS: [&str; 4] = ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"];

fn count(fixture: &Fixture, param: &str, prefix: &str) -> Result<usize, FixtureError> {
    let mut n = 0;
    while fixture.has(&format!("{prefix}.{n}")) {
        n += 1;
    }
    let given = fixture.param_f64(param, n as f64)?;
    if given < 1.0 || given.fract() != 0.0 || given > 64.0 {
        return err(format!("parameter `{param}` = {given} is not a layer count"));
    }
    Ok(given as usize)
}

impl FixtureFamily for SemckdFixtures {
    fn example(&self, small: bool) -> ExampleSpec {
        // A CIFAR-style ResNet pair: three stages, the teacher four times as wide.
        let (batch, student, teacher) = if small {
            (4, vec![[3, 5, 5], [4, 3, 3]], vec![[5, 5, 5], [2, 2, 2]])
        } else {
            (16, vec![[64, 32, 32], [128, 16, 16], [256, 8, 8]], vec![[256, 32, 32], [512, 16, 16], [1024, 8, 8]])
        };
        let layers = SemckdLayers { batch, embed_dim: batch / 4, student, teacher };
        let (s, t) = (layers.students(), layers.teachers());
        let mut spec = ExampleSpec::new("resnet stages, batch 16");
        for i in 0..s {
            spec = spec.input(format!("student.{i}"), ExampleInput::float(&layers.student_shape(i)));
            for j in 0..t {
                spec = spec.input(format!("student_proj.{i}.{j}"), ExampleInput::float(&layers.pair_shape(i, j)));
            }
        }
        for j in 0..t {
            spec = spec.input(format!("teacher.{j}"), ExampleInput::float(&layers.teacher_shape(j)));
        }
        let mlps = (0..s).map(|i| format!("query.{i}")).chain((0..t).map(|j| format!("key.{j}")));
        for mlp in mlps {
            for (param, shape) in PARAMS.iter().zip(layers.embed_shapes()) {
                let scale = if shape.len() == 2 { (shape[1] as f64).recip().sqrt() } else { 0.1 };
                spec = spec.input(format!("{mlp}.{param}"), ExampleInput::Float { shape, scale });
            }
        }
        spec
    }

    fn extra_outputs(&self) -> &'static [&'static str] {
        &["attention"]
    }

    fn case(&self, fixture: &Fixture) -> Result<Box<dyn FixtureCase>, FixtureError> {
        let config = SemckdConfig {
            loss_weight: fixture.param_f64("loss_weight", SemckdConfig::default().loss_weight)?,
            eps: None,
        };
        config.validate()?;
        let students = count(fixture, "num_student_layers", "student")?;
        let teachers = count(fixture, "num_teacher_layers", "teacher")?;
        let dtype = fixture.input_dtype("student.0")?;
        let names = (0..students)
            .map(|i| format!("student.{i}"))
            .chain((0..teachers).map(|j| format!("teacher.{j}")))
            .chain((0..students).flat_map(|i| (0..teachers).map(move |j| format!("student_proj.{i}.{j}"))));
        for name in names {
            let got = fixture.input_dtype(&name)?;
            if got != dtype {
                return err(format!("input `{name}` is {got} but `student.0` is {dtype}"));
            }
        }
        Ok(Typed::boxed(SemckdCase { config, students, teachers }, dtype))
    }
}

struct SemckdCase {
    config: SemckdConfig,
    students: usize,
    teachers: usize,
}

/// A fixture tensor as `T` (maps) with its shape.
struct Tensor<T> {
    shape: Vec<usize>,
    values: Vec<T>,
}

impl<T> Tensor<T> {
    fn view4(&self, name: &str) -> Result<ArrayView4<'_, T>, FixtureError> {
        let s: [usize; 4] = self
            .shape
            .as_slice()
            .try_into()
            .map_err(|_| FixtureError(format!("tensor `{name}` has shape {:?}; expected rank 4", self.shape)))?;
        ArrayView4::from_shape(s, &self.values).map_err(|e| FixtureError(format!("tensor `{name}`: {e}")))
    }
}

/// One MLP's parameters in f32 (stored in any float dtype; fixture values are exact in f32).
pub(crate) struct MlpTensors {
    pub shapes: [Vec<usize>; 4],
    pub values: [Vec<f32>; 4],
}

impl MlpTensors {
    pub(crate) fn load(fixture: &Fixture, prefix: &str) -> Result<Self, FixtureError> {
        let mut shapes: [Vec<usize>; 4] = Default::default();
        let mut values: [Vec<f32>; 4] = Default::default();
        for (k, p) in PARAMS.iter().enumerate() {
            let (s, v) = fixture.input_f64(&format!("{prefix}.{p}"))?;
            shapes[k] = s;
            values[k] = v.into_iter().map(|x| x as f32).collect();
        }
        Ok(MlpTensors { shapes, values })
    }

    fn weights(&self, prefix: &str) -> Result<EmbedWeights<'_>, FixtureError> {
        let bad = |p: &str| FixtureError(format!("tensor `{prefix}.{p}` has the wrong rank"));
        let two = |k: usize| -> Result<ArrayView2<'_, f32>, FixtureError> {
            let s = &self.shapes[k];
            if s.len() != 2 {
                return Err(bad(PARAMS[k]));
            }
            ArrayView2::from_shape((s[0], s[1]), &self.values[k]).map_err(|_| bad(PARAMS[k]))
        };
        let one = |k: usize| -> Result<ArrayView1<'_, f32>, FixtureError> {
            if self.shapes[k].len() != 1 {
                return Err(bad(PARAMS[k]));
            }
            Ok(ArrayView1::from(&self.values[k][..]))
        };
        Ok(EmbedWeights {
            linear1_weight: two(0)?,
            linear1_bias: one(1)?,
            linear2_weight: two(2)?,
            linear2_bias: one(3)?,
        })
    }
}

fn insert_mlp(out: &mut Computed, prefix: &str, g: &EmbedGrads) {
    out.insert(format!("grad.{prefix}.linear1.weight"), Output::array(&g.linear1_weight));
    out.insert(format!("grad.{prefix}.linear1.bias"), Output::array(&g.linear1_bias));
    out.insert(format!("grad.{prefix}.linear2.weight"), Output::array(&g.linear2_weight));
    out.insert(format!("grad.{prefix}.linear2.bias"), Output::array(&g.linear2_bias));
}

/// `f` of each item with its name in the file, `{prefix}.{index}`.
fn each_named<'a, X, Y>(
    items: &'a [X],
    prefix: &str,
    f: impl Fn(&'a X, &str) -> Result<Y, FixtureError>,
) -> Result<Vec<Y>, FixtureError> {
    items.iter().enumerate().map(|(i, x)| f(x, &format!("{prefix}.{i}"))).collect()
}

impl TypedCase for SemckdCase {
    fn run<T: KdFloat>(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        let SemckdCase { config, students, teachers } = *self;
        let load = |name: String| -> Result<Tensor<T>, FixtureError> {
            let (shape, values) = fixture.input::<T>(&name)?;
            Ok(Tensor { shape, values })
        };
        let student: Vec<Tensor<T>> = (0..students).map(|i| load(format!("student.{i}"))).collect::<Result<_, _>>()?;
        let teacher: Vec<Tensor<T>> = (0..teachers).map(|j| load(format!("teacher.{j}"))).collect::<Result<_, _>>()?;
        let proj: Vec<Vec<Tensor<T>>> = (0..students)
            .map(|i| (0..teachers).map(|j| load(format!("student_proj.{i}.{j}"))).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()?;
        let query: Vec<MlpTensors> =
            (0..students).map(|i| MlpTensors::load(fixture, &format!("query.{i}"))).collect::<Result<_, _>>()?;
        let key: Vec<MlpTensors> =
            (0..teachers).map(|j| MlpTensors::load(fixture, &format!("key.{j}"))).collect::<Result<_, _>>()?;
        let mut out = Computed::new();
        match backend {
            Backend::Cpu => {
                let inputs = SemckdCpuInputs {
                    student: each_named(&student, "student", Tensor::view4)?,
                    teacher: each_named(&teacher, "teacher", Tensor::view4)?,
                    proj: proj
                        .iter()
                        .map(|row| row.iter().map(|t| t.view4("student_proj")).collect::<Result<Vec<_>, _>>())
                        .collect::<Result<_, _>>()?,
                    query: each_named(&query, "query", MlpTensors::weights)?,
                    key: each_named(&key, "key", MlpTensors::weights)?,
                };
                let r = SemckdCpu::new(config)?.forward_backward(&inputs)?;
                out.insert("loss".into(), Output::scalar(r.loss));
                out.insert("attention".into(), Output::array(&r.attention));
                for (i, g) in r.grad_student.iter().enumerate() {
                    out.insert(format!("grad.student.{i}"), Output::array(g));
                }
                for (i, row) in r.grad_proj.iter().enumerate() {
                    for (j, g) in row.iter().enumerate() {
                        out.insert(format!("grad.student_proj.{i}.{j}"), Output::array(g));
                    }
                }
                for (i, g) in r.grad_query.iter().enumerate() {
                    insert_mlp(&mut out, &format!("query.{i}"), g);
                }
                for (j, g) in r.grad_key.iter().enumerate() {
                    insert_mlp(&mut out, &format!("key.{j}"), g);
                }
            }
            Backend::Cuda(stream) => {
                let dev = |e| KdError::cuda("fixture transfer", e);
                let shapes = |v: &[Tensor<T>]| v.iter().map(|t| t.shape.clone()).collect::<Vec<_>>();
                let (ss, ts) = (shapes(&student), shapes(&teacher));
                let s_refs: Vec<&[usize]> = ss.iter().map(|v| v.as_slice()).collect();
                let t_refs: Vec<&[usize]> = ts.iter().map(|v| v.as_slice()).collect();
                let mut layers = SemckdLayers::from_shapes(&s_refs, &t_refs)?;
                layers.embed_dim = query[0].shapes[3].first().copied().unwrap_or(0);
                layers.validate()?;
                let up = |v: &[T]| stream.clone_htod(v).map_err(dev);
                let upf = |v: &[f32]| stream.clone_htod(v).map_err(dev);
                let s_dev = student.iter().map(|t| up(&t.values)).collect::<Result<Vec<_>, _>>()?;
                let t_dev = teacher.iter().map(|t| up(&t.values)).collect::<Result<Vec<_>, _>>()?;
                let p_dev = proj.iter().flatten().map(|t| up(&t.values)).collect::<Result<Vec<_>, _>>()?;
                let mlp_dev = |m: &MlpTensors| -> Result<Vec<_>, KdError> { m.values.iter().map(|v| upf(v)).collect() };
                let q_dev = query.iter().map(mlp_dev).collect::<Result<Vec<_>, _>>()?;
                let k_dev = key.iter().map(mlp_dev).collect::<Result<Vec<_>, _>>()?;
                let params = embed_params;
                let sr: Vec<&dyn cudarc::driver::DevicePtr<T>> = s_dev.iter().map(|x| x as _).collect();
                let tr: Vec<&dyn cudarc::driver::DevicePtr<T>> = t_dev.iter().map(|x| x as _).collect();
                let pr: Vec<&dyn cudarc::driver::DevicePtr<T>> = p_dev.iter().map(|x| x as _).collect();
                let qp: Vec<EmbedParams<'_>> = q_dev.iter().map(|v| params(v)).collect();
                let kp: Vec<EmbedParams<'_>> = k_dev.iter().map(|v| params(v)).collect();
                let inputs = SemckdInputs { student: &sr, teacher: &tr, proj: &pr, query: &qp, key: &kp };
                let zeros_t = |n: usize| stream.alloc_zeros::<T>(n).map_err(dev);
                let zeros_f = |n: usize| stream.alloc_zeros::<f32>(n).map_err(dev);
                let numels = layers.embed_numels();
                let mut gs = (0..students)
                    .map(|i| zeros_t(layers.student_shape(i).iter().product()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut gp = (0..students * teachers)
                    .map(|p| zeros_t(layers.pair_numel(p / teachers, p % teachers)))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut gq = (0..students)
                    .map(|_| numels.iter().map(|&n| zeros_f(n)).collect::<Result<Vec<_>, _>>())
                    .collect::<Result<Vec<_>, _>>()?;
                let mut gk = (0..teachers)
                    .map(|_| numels.iter().map(|&n| zeros_f(n)).collect::<Result<Vec<_>, _>>())
                    .collect::<Result<Vec<_>, _>>()?;
                let mut loss = zeros_f(1)?;
                let mut attention = zeros_f(layers.batch * students * teachers)?;
                {
                    let grads_of = embed_grads;
                    let mut grads = SemckdGrads {
                        student: gs.iter_mut().map(|x| x as &mut dyn cudarc::driver::DevicePtrMut<T>).collect(),
                        proj: gp.iter_mut().map(|x| x as &mut dyn cudarc::driver::DevicePtrMut<T>).collect(),
                        query: gq.iter_mut().map(|v| grads_of(v)).collect(),
                        key: gk.iter_mut().map(|v| grads_of(v)).collect(),
                    };
                    let mut cuda = SemckdCuda::new(stream.clone(), config)?;
                    cuda.forward_backward(
                        &layers,
                        &inputs,
                        &mut loss,
                        Some(&mut attention),
                        Some(&mut grads),
                        GradOptions::OVERWRITE,
                    )?;
                }
                let down_t = |x: &cudarc::driver::CudaSlice<T>| {
                    stream.clone_dtoh(x).map_err(dev).map(|v| crate::fixture::to_f64(&v))
                };
                let down_f = |x: &cudarc::driver::CudaSlice<f32>| {
                    stream.clone_dtoh(x).map_err(dev).map(|v| v.into_iter().map(f64::from).collect::<Vec<_>>())
                };
                out.insert("loss".into(), Output::scalar(down_f(&loss)?[0]));
                out.insert(
                    "attention".into(),
                    Output::tensor(&[layers.batch, students, teachers], down_f(&attention)?),
                );
                for (i, g) in gs.iter().enumerate() {
                    out.insert(format!("grad.student.{i}"), Output::tensor(&layers.student_shape(i), down_t(g)?));
                }
                for (p, g) in gp.iter().enumerate() {
                    let (i, j) = (p / teachers, p % teachers);
                    out.insert(
                        format!("grad.student_proj.{i}.{j}"),
                        Output::tensor(&layers.pair_shape(i, j), down_t(g)?),
                    );
                }
                let shapes4 = layers.embed_shapes();
                for (side, list) in [("query", &gq), ("key", &gk)] {
                    for (l, m) in list.iter().enumerate() {
                        for (k, name) in PARAMS.iter().enumerate() {
                            out.insert(format!("grad.{side}.{l}.{name}"), Output::tensor(&shapes4[k], down_f(&m[k])?));
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

fn embed_params(v: &[cudarc::driver::CudaSlice<f32>]) -> EmbedParams<'_> {
    EmbedParams { linear1_weight: &v[0], linear1_bias: &v[1], linear2_weight: &v[2], linear2_bias: &v[3] }
}

fn embed_grads(v: &mut [cudarc::driver::CudaSlice<f32>]) -> EmbedParamGrads<'_> {
    let [a, b, c, d] = v else { unreachable!("four parameters") };
    EmbedParamGrads { linear1_weight: a, linear1_bias: b, linear2_weight: c, linear2_bias: d }
}

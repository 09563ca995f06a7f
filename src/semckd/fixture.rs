//! SemCKD fixtures (`docs/fixtures.md`): parameters `loss_weight`, `num_student_layers`, `num_teacher_layers`;
//! inputs `student.{i}`, `teacher.{j}`, `student_proj.{i}.{j}`, `query.{i}.linear*.*`, `key.{j}.linear*.*`;
//! outputs `loss`, `attention`, `grad.student.{i}`, `grad.student_proj.{i}.{j}`, `grad.query.{i}.*`,
//! `grad.key.{j}.*`.

use ndarray::{ArrayView1, ArrayView2, ArrayView4};

use super::cpu::{EmbedGrads, EmbedWeights};
use super::{SemckdConfig, SemckdCpu, SemckdCpuInputs};
use crate::dtype::{self, DType, KdFloat, PerDtype};
use crate::fixture::{err, Backend, Computed, Fixture, FixtureCase, FixtureError, FixtureFamily, LossKind, Output};

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
    fn loss(&self) -> LossKind {
        LossKind::Semckd
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
        Ok(Box::new(SemckdCase { config, students, teachers, dtype }))
    }
}

struct SemckdCase {
    config: SemckdConfig,
    students: usize,
    teachers: usize,
    dtype: DType,
}

impl FixtureCase for SemckdCase {
    fn dtype(&self) -> DType {
        self.dtype
    }

    fn run(&self, fixture: &Fixture, backend: &Backend) -> Result<Computed, FixtureError> {
        dtype::dispatch(self.dtype, Run { case: self, fixture, backend })
    }
}

struct Run<'a> {
    case: &'a SemckdCase,
    fixture: &'a Fixture,
    backend: &'a Backend,
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
    let t = |a: &[usize], v: Vec<f64>| Output::tensor(a, v);
    out.insert(
        format!("grad.{prefix}.linear1.weight"),
        t(g.linear1_weight.shape(), g.linear1_weight.iter().copied().collect()),
    );
    out.insert(format!("grad.{prefix}.linear1.bias"), t(g.linear1_bias.shape(), g.linear1_bias.to_vec()));
    out.insert(
        format!("grad.{prefix}.linear2.weight"),
        t(g.linear2_weight.shape(), g.linear2_weight.iter().copied().collect()),
    );
    out.insert(format!("grad.{prefix}.linear2.bias"), t(g.linear2_bias.shape(), g.linear2_bias.to_vec()));
}

impl PerDtype for Run<'_> {
    type Out = Result<Computed, FixtureError>;

    fn run<T: KdFloat>(self) -> Self::Out {
        let SemckdCase { config, students, teachers, .. } = *self.case;
        let load = |name: String| -> Result<Tensor<T>, FixtureError> {
            let (shape, values) = self.fixture.input::<T>(&name)?;
            Ok(Tensor { shape, values })
        };
        let student: Vec<Tensor<T>> = (0..students).map(|i| load(format!("student.{i}"))).collect::<Result<_, _>>()?;
        let teacher: Vec<Tensor<T>> = (0..teachers).map(|j| load(format!("teacher.{j}"))).collect::<Result<_, _>>()?;
        let proj: Vec<Vec<Tensor<T>>> = (0..students)
            .map(|i| (0..teachers).map(|j| load(format!("student_proj.{i}.{j}"))).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()?;
        let query: Vec<MlpTensors> =
            (0..students).map(|i| MlpTensors::load(self.fixture, &format!("query.{i}"))).collect::<Result<_, _>>()?;
        let key: Vec<MlpTensors> =
            (0..teachers).map(|j| MlpTensors::load(self.fixture, &format!("key.{j}"))).collect::<Result<_, _>>()?;
        let mut out = Computed::new();
        match self.backend {
            Backend::Cpu => {
                let inputs = SemckdCpuInputs {
                    student: student
                        .iter()
                        .enumerate()
                        .map(|(i, t)| t.view4(&format!("student.{i}")))
                        .collect::<Result<_, _>>()?,
                    teacher: teacher
                        .iter()
                        .enumerate()
                        .map(|(j, t)| t.view4(&format!("teacher.{j}")))
                        .collect::<Result<_, _>>()?,
                    proj: proj
                        .iter()
                        .map(|row| row.iter().map(|t| t.view4("student_proj")).collect::<Result<Vec<_>, _>>())
                        .collect::<Result<_, _>>()?,
                    query: query
                        .iter()
                        .enumerate()
                        .map(|(i, m)| m.weights(&format!("query.{i}")))
                        .collect::<Result<_, _>>()?,
                    key: key
                        .iter()
                        .enumerate()
                        .map(|(j, m)| m.weights(&format!("key.{j}")))
                        .collect::<Result<_, _>>()?,
                };
                let r = SemckdCpu::new(config)?.forward_backward(&inputs)?;
                out.insert("loss".into(), Output::scalar(r.loss));
                out.insert(
                    "attention".into(),
                    Output::tensor(r.attention.shape(), r.attention.iter().copied().collect()),
                );
                for (i, g) in r.grad_student.iter().enumerate() {
                    out.insert(format!("grad.student.{i}"), Output::tensor(g.shape(), g.iter().copied().collect()));
                }
                for (i, row) in r.grad_proj.iter().enumerate() {
                    for (j, g) in row.iter().enumerate() {
                        out.insert(
                            format!("grad.student_proj.{i}.{j}"),
                            Output::tensor(g.shape(), g.iter().copied().collect()),
                        );
                    }
                }
                for (i, g) in r.grad_query.iter().enumerate() {
                    insert_mlp(&mut out, &format!("query.{i}"), g);
                }
                for (j, g) in r.grad_key.iter().enumerate() {
                    insert_mlp(&mut out, &format!("key.{j}"), g);
                }
            }
            Backend::Cuda(_) => {
                return err("semckd on CUDA is not wired into the fixture verifier yet (CPU reference only)");
            }
        }
        Ok(out)
    }
}

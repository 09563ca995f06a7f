//! A training step in candle with the crate's losses as candle ops: a small convolutional student learns
//! from a fixed teacher's logits (CWD + pixel KD + ICSD), from its features (CWT, whose MLP trains with the
//! student) and across layers (SemCKD: the student's two layers against the teacher's two, through 1x1
//! regressors and query / key embeddings that train with it), by plain SGD, for a few dozen steps; the loss
//! falls.
//!
//! ```sh
//! cargo run --release --example train_candle -p kd-kernels-candle            # candle's CPU device
//! cargo run --release --example train_candle -p kd-kernels-candle --features cuda       # the GPU, where one is present
//! ```

use candle_core::{DType, Device, Tensor, Var};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::cwt::{CwtConfig, CwtNormalize, CwtShapes};
use kd_kernels::icsd::IcsdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::semckd::SemckdConfig;
use kd_kernels_candle::{Cwd, Cwt, Icsd, PixelKd, Semckd, SemckdTensors};

/// Batch, input channels, classes, student and teacher feature channels, height, width.
pub const N: usize = 4;
pub const C_IN: usize = 3;
pub const CLASSES: usize = 6;
pub const C_STUDENT: usize = 8;
pub const C_TEACHER: usize = 12;
pub const H: usize = 12;
pub const W: usize = 16;

/// SemCKD's embedding width `d`: officially `N / 4` = 1, whose unit "embeddings" are +-1; 2 gives the
/// attention something to choose.
pub const EMBED: usize = 2;

/// SemCKD compares square maps (`docs/losses.md` §4.2 step 4): the left `H x H` square of every map.
pub const SQUARE: usize = H;

/// Plain SGD's step size (steady descent on this problem; 1.0 already oscillates).
pub const LEARNING_RATE: f64 = 0.3;

/// The loss configurations of the step (also what a test recomputes step 0 with).
pub fn configs() -> (CwdConfig, PixelKdConfig, IcsdConfig, CwtConfig, SemckdConfig) {
    (
        CwdConfig { tau: 4.0, loss_weight: 3.0, teacher_grad: false },
        PixelKdConfig { loss_weight: 10.0, ..PixelKdConfig::default() },
        IcsdConfig::default(),
        CwtConfig { loss_weight: 2.0, normalize: CwtNormalize::Mean },
        SemckdConfig { loss_weight: SEMCKD_WEIGHT, eps: None },
    )
}

/// SemCKD's `w`.
pub const SEMCKD_WEIGHT: f64 = 1.0;

fn seeded(shape: &[usize], seed: u64, scale: f64, device: &Device) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale as f32
        })
        .collect();
    Tensor::from_vec(values, shape, device)
}

/// Two 3x3 convolutions: `features = relu(conv(x))`, `logits = conv(features)`.
pub struct ConvNet {
    pub w1: Var,
    pub b1: Var,
    pub w2: Var,
    pub b2: Var,
}

impl ConvNet {
    pub fn new(c_feat: usize, seed: u64, device: &Device) -> candle_core::Result<Self> {
        let s1 = 1.0 / ((C_IN * 9) as f64).sqrt();
        let s2 = 1.0 / ((c_feat * 9) as f64).sqrt();
        Ok(ConvNet {
            w1: Var::from_tensor(&seeded(&[c_feat, C_IN, 3, 3], seed, s1, device)?)?,
            b1: Var::zeros(c_feat, DType::F32, device)?,
            w2: Var::from_tensor(&seeded(&[CLASSES, c_feat, 3, 3], seed + 1, s2, device)?)?,
            b2: Var::zeros(CLASSES, DType::F32, device)?,
        })
    }

    /// `(features, logits)`, both `[N, *, H, W]`.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let bias = |b: &Var| b.as_tensor().reshape((1, (), 1, 1));
        let f = x.conv2d(self.w1.as_tensor(), 1, 1, 1, 1)?.broadcast_add(&bias(&self.b1)?)?.relu()?;
        let logits = f.conv2d(self.w2.as_tensor(), 1, 1, 1, 1)?.broadcast_add(&bias(&self.b2)?)?;
        Ok((f, logits))
    }

    pub fn vars(&self) -> Vec<&Var> {
        vec![&self.w1, &self.b1, &self.w2, &self.b2]
    }
}

/// What one step saw.
pub struct StepLog {
    pub total: f64,
    pub cwd: f64,
    pub pixel_kd: f64,
    pub icsd: f64,
    pub cwt: f64,
    pub semckd: f64,
}

/// Everything the run needs: data, the fixed teacher's outputs, the student, the CWT MLP, the losses.
pub struct Setup {
    pub input: Tensor,
    pub teacher_features: Tensor,
    pub teacher_logits: Tensor,
    pub student: ConvNet,
    pub mlp: [Var; 4],
    /// SemCKD's 1x1 regressors `[Ct_j, Cs_i, 1, 1]`, student layer `i` (features, logits) to teacher layer
    /// `j` (features, logits).
    pub regressors: Vec<Vec<Var>>,
    /// SemCKD's query (one per student layer) and key (one per teacher layer) embeddings.
    pub query: Vec<[Var; 4]>,
    pub key: Vec<[Var; 4]>,
}

/// SemCKD's inputs at one step, owned.
pub struct SemckdStep {
    pub student: Vec<Tensor>,
    pub teacher: Vec<Tensor>,
    pub proj: Vec<Vec<Tensor>>,
    pub query: Vec<[Tensor; 4]>,
    pub key: Vec<[Tensor; 4]>,
}

impl SemckdStep {
    /// The student's two layers (features, logits) and the teacher's, cut to their left squares, the
    /// regressors' outputs, and the embeddings' parameters.
    pub fn new(run: &Setup, features: &Tensor, logits: &Tensor) -> candle_core::Result<Self> {
        let square = |x: &Tensor| x.narrow(3, 0, SQUARE);
        let student = vec![square(features)?, square(logits)?];
        let teacher = vec![square(&run.teacher_features)?, square(&run.teacher_logits)?];
        let proj = student
            .iter()
            .zip(&run.regressors)
            .map(|(s, row)| row.iter().map(|r| s.conv2d(r.as_tensor(), 0, 1, 1, 1)).collect())
            .collect::<candle_core::Result<Vec<Vec<_>>>>()?;
        let params = |m: &[Var; 4]| [0, 1, 2, 3].map(|k| m[k].as_tensor().clone());
        Ok(SemckdStep {
            student,
            teacher,
            proj,
            query: run.query.iter().map(params).collect(),
            key: run.key.iter().map(params).collect(),
        })
    }

    pub fn view(&self) -> SemckdTensors<'_> {
        SemckdTensors {
            student: &self.student,
            teacher: &self.teacher,
            proj: &self.proj,
            query: &self.query,
            key: &self.key,
        }
    }
}

pub fn setup(device: &Device) -> candle_core::Result<Setup> {
    let input = seeded(&[N, C_IN, H, W], 1, 1.0, device)?;
    let teacher = ConvNet::new(C_TEACHER, 100, device)?;
    let (tf, tl) = teacher.forward(&input)?;
    // Sharper teacher logits, so that there is something to learn.
    let teacher_logits = tl.affine(4.0, 0.0)?.detach();
    let student = ConvNet::new(C_STUDENT, 200, device)?;
    let mlp = [
        Var::from_tensor(&seeded(&[C_TEACHER, C_STUDENT], 300, 0.3, device)?)?,
        Var::zeros(C_TEACHER, DType::F32, device)?,
        Var::from_tensor(&seeded(&[C_TEACHER, C_TEACHER], 301, 0.3, device)?)?,
        Var::zeros(C_TEACHER, DType::F32, device)?,
    ];
    let (c_s, c_t) = ([C_STUDENT, CLASSES], [C_TEACHER, CLASSES]);
    let mut regressors = Vec::new();
    for (i, cs) in c_s.iter().enumerate() {
        let row = c_t.iter().enumerate().map(|(j, ct)| {
            Var::from_tensor(&seeded(
                &[*ct, *cs, 1, 1],
                400 + 10 * i as u64 + j as u64,
                1.0 / (*cs as f64).sqrt(),
                device,
            )?)
        });
        regressors.push(row.collect::<candle_core::Result<Vec<_>>>()?);
    }
    let embed = |seed: u64| -> candle_core::Result<[Var; 4]> {
        Ok([
            // Random biases, as `nn.Linear`'s: with zero ones, a sample whose hidden units are all off embeds
            // to z = 0, and the official normalisation (no epsilon) makes that NaN.
            Var::from_tensor(&seeded(&[2 * EMBED, N], seed, 0.5, device)?)?,
            Var::from_tensor(&seeded(&[2 * EMBED], seed + 1, 0.5, device)?)?,
            Var::from_tensor(&seeded(&[EMBED, 2 * EMBED], seed + 2, 0.5, device)?)?,
            Var::from_tensor(&seeded(&[EMBED], seed + 3, 0.5, device)?)?,
        ])
    };
    let query = vec![embed(500)?, embed(510)?];
    let key = vec![embed(520)?, embed(530)?];
    Ok(Setup { input, teacher_features: tf.detach(), teacher_logits, student, mlp, regressors, query, key })
}

impl Setup {
    /// Everything SGD updates: the student, the CWT MLP, SemCKD's regressors and embeddings.
    pub fn vars(&self) -> Vec<&Var> {
        let semckd = self.regressors.iter().flatten().chain(self.query.iter().chain(&self.key).flatten());
        self.student.vars().into_iter().chain(self.mlp.iter()).chain(semckd).collect()
    }
}

/// `steps` SGD steps of the student (and the CWT MLP) on the sum of the four losses, logits in `dtype`.
pub fn train(device: &Device, dtype: DType, steps: usize, lr: f64) -> candle_core::Result<Vec<StepLog>> {
    let (cwd_cfg, kd_cfg, icsd_cfg, cwt_cfg, semckd_cfg) = configs();
    let cwd = Cwd::new(cwd_cfg)?;
    let kd = PixelKd::new(kd_cfg)?;
    let icsd = Icsd::new(icsd_cfg)?;
    let cwt = Cwt::new(cwt_cfg, CwtShapes::new(C_STUDENT, C_TEACHER))?;
    let semckd = Semckd::new(semckd_cfg)?;
    let run = setup(device)?;
    let teacher_logits = run.teacher_logits.to_dtype(dtype)?;
    let teacher_features = run.teacher_features.to_dtype(dtype)?;
    let mut log = Vec::with_capacity(steps);
    for _ in 0..steps {
        let (features, logits) = run.student.forward(&run.input)?;
        let logits = logits.to_dtype(dtype)?;
        let [w1, b1, w2, b2] = &run.mlp;
        let l_cwd = cwd.loss(&logits, &teacher_logits)?;
        let l_kd = kd.loss(&logits, &teacher_logits)?;
        let l_icsd = icsd.loss(&logits, &teacher_logits)?;
        let l_cwt = cwt.loss(
            &features.to_dtype(dtype)?,
            &teacher_features,
            w1.as_tensor(),
            b1.as_tensor(),
            w2.as_tensor(),
            b2.as_tensor(),
        )?;
        let l_semckd = semckd.loss(&SemckdStep::new(&run, &features, &logits.to_dtype(DType::F32)?)?.view())?;
        let total = ((((&l_cwd + &l_kd)? + &l_icsd)? + &l_cwt)? + &l_semckd)?;
        let grads = total.backward()?;
        for var in run.vars() {
            if let Some(g) = grads.get(var.as_tensor()) {
                var.set(&(var.as_tensor() - g.affine(lr, 0.0)?)?)?;
            }
        }
        let value = |t: &Tensor| t.to_scalar::<f32>().map(f64::from);
        log.push(StepLog {
            total: value(&total)?,
            cwd: value(&l_cwd)?,
            pixel_kd: value(&l_kd)?,
            icsd: value(&l_icsd)?,
            cwt: value(&l_cwt)?,
            semckd: value(&l_semckd)?,
        });
    }
    Ok(log)
}

/// candle's CUDA device where this build can use it, else its CPU.
pub fn pick_device() -> Device {
    if cfg!(feature = "cuda") && kd_kernels::cuda::probe().is_ok() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    Device::Cpu
}

#[allow(dead_code)]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let device = pick_device();
    let dtype = if device.is_cuda() { DType::BF16 } else { DType::F32 };
    println!("train_candle: device {:?}, logits {dtype:?}", device.location());
    let log = train(&device, dtype, 40, LEARNING_RATE)?;
    for (step, s) in log.iter().enumerate() {
        if step % 5 == 0 || step + 1 == log.len() {
            println!(
                "step {step:3}  loss {:9.5}  (cwd {:.5}, pixel kd {:.5}, icsd {:.5}, cwt {:.5}, semckd {:.5})",
                s.total, s.cwd, s.pixel_kd, s.icsd, s.cwt, s.semckd
            );
        }
    }
    let (first, last) = (log[0].total, log[log.len() - 1].total);
    println!("loss {first:.5} -> {last:.5} ({:.1}% lower)", 100.0 * (1.0 - last / first));
    Ok(())
}

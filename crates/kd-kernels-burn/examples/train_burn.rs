//! A real training step with burn: a small convolutional student learns a fixed teacher's logits through
//! CWD plus pixel-wise KD (`kd_kernels_burn`), with Adam, on burn's NdArray CPU backend (on its CUDA
//! backend with `cuda` and a GPU); then a student with two feature layers learns a teacher's two
//! through SemCKD, its regressors and embeddings trained with it.
//!
//! ```sh
//! cargo run --release -p kd-kernels-burn --example train_burn            # 30 steps
//! cargo run --release -p kd-kernels-burn --example train_burn -- 100     # 100 steps
//! cargo run --release -p kd-kernels-burn --features cuda --example train_burn       # on burn's CUDA backend, with a GPU
//! ```
//!
//! It prints the loss at every step, and at step 0 the same loss written in burn's own tensor operations
//! (`kd_kernels_burn::reference`), which must agree. `tests/burn_train.rs` runs `train` and
//! `train_semckd` and asserts both.
// burn 0.22 deprecates NdArray in favour of Flex; NdArray is the CPU backend this crate covers.
#![allow(deprecated)]

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Distribution, Tensor};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::semckd::{default_embed_dim, SemckdConfig};
use kd_kernels::KdError;
use kd_kernels_burn::{cwd_loss, pixel_kd_loss, reference, semckd_loss, SemckdMlp};

/// Classes of the toy segmentation task (channels of the logits).
pub const CLASSES: usize = 6;
/// Images per batch, channels, height, width.
pub const INPUT: [usize; 4] = [2, 3, 12, 12];

/// Two convolutions: 3x3 to a hidden width, ReLU, 1x1 to the class logits.
#[derive(Module, Debug)]
pub struct ConvNet {
    features: Conv2d,
    activation: Relu,
    classifier: Conv2d,
}

impl ConvNet {
    /// A network of `hidden` channels, initialised from the device's random generator.
    pub fn new(hidden: usize, device: &Device) -> Self {
        ConvNet {
            features: Conv2dConfig::new([INPUT[1], hidden], [3, 3]).with_padding(PaddingConfig2d::Same).init(device),
            activation: Relu::new(),
            classifier: Conv2dConfig::new([hidden, CLASSES], [1, 1]).init(device),
        }
    }

    /// NCHW logits at the input's resolution.
    pub fn forward(&self, images: Tensor<4>) -> Tensor<4> {
        self.classifier.forward(self.activation.forward(self.features.forward(images)))
    }
}

/// What [`train`] measured.
pub struct TrainReport {
    /// The distillation loss before each optimiser step, computed by the crate's ops.
    pub losses: Vec<f64>,
    /// Step 0's loss written in burn's own tensor operations, on the same logits.
    pub step0_burn_formula: f64,
}

/// Distils a fixed teacher into a fresh student for `steps` Adam steps on `device` (an autodiff device).
pub fn train(steps: usize, device: &Device, verbose: bool) -> Result<TrainReport, KdError> {
    device.seed(7);
    let images = Tensor::<4>::random(INPUT, Distribution::Normal(0.0, 1.0), device);
    // The teacher: a wider network, fixed; its logits are computed once and carry no gradient.
    let teacher = ConvNet::new(32, device);
    let teacher_logits = (teacher.forward(images.clone()) * 4.0).detach();

    let mut student = ConvNet::new(8, device);
    let mut optimizer = AdamConfig::new().init();
    let cwd = CwdConfig::default(); // tau 4, weight 3: the paper's setting
    let kd = PixelKdConfig::default(); // tau 1, weight 10, mean: TorchDistiller's CriterionKD

    let mut losses = Vec::with_capacity(steps);
    let mut step0_burn_formula = f64::NAN;
    for step in 0..steps {
        let logits = student.forward(images.clone());
        if step == 0 {
            let (s, t) = (logits.clone().detach(), teacher_logits.clone());
            let formula = reference::cwd_loss(s.clone(), t.clone(), &cwd) + reference::pixel_kd_loss(s, t, &kd);
            step0_burn_formula = formula.into_scalar::<f64>();
        }
        let loss = cwd_loss(logits.clone(), teacher_logits.clone(), &cwd)?
            + pixel_kd_loss(logits, teacher_logits.clone(), &kd)?;
        let value = loss.clone().into_scalar::<f64>();
        record(&mut losses, verbose, (step, "loss"), value, step0_burn_formula);
        let grads = GradientsParams::from_grads(loss.backward(), &student);
        student = optimizer.step(1e-2, student, grads);
    }
    Ok(TrainReport { losses, step0_burn_formula })
}

/// SemCKD's images: a batch of 8 (the embeddings' input width; `d = 2`), 3 channels, 8 x 8.
pub const SEMCKD_INPUT: [usize; 4] = [8, 3, 8, 8];

/// Two feature layers: a 3x3 convolution at full resolution, then a strided 3x3 one at half.
#[derive(Module, Debug)]
pub struct TwoStage {
    stage1: Conv2d,
    stage2: Conv2d,
    activation: Relu,
}

impl TwoStage {
    /// Stages of `widths[0]` and `widths[1]` channels.
    pub fn new(widths: [usize; 2], device: &Device) -> Self {
        let conv = |c_in, c_out, stride| {
            Conv2dConfig::new([c_in, c_out], [3, 3])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        TwoStage {
            stage1: conv(SEMCKD_INPUT[1], widths[0], 1),
            stage2: conv(widths[0], widths[1], 2),
            activation: Relu::new(),
        }
    }

    /// Both stages' feature maps.
    pub fn forward(&self, images: Tensor<4>) -> [Tensor<4>; 2] {
        let first = self.activation.forward(self.stage1.forward(images));
        let second = self.activation.forward(self.stage2.forward(first.clone()));
        [first, second]
    }
}

/// An embedding MLP (`MLPEmbed`): Linear `B -> 2d`, ReLU, Linear `2d -> d` (the normalisation is the loss's).
#[derive(Module, Debug)]
pub struct Embed {
    linear1: Linear,
    linear2: Linear,
}

impl Embed {
    fn new(batch: usize, d: usize, device: &Device) -> Self {
        Embed {
            linear1: LinearConfig::new(batch, 2 * d).init(device),
            linear2: LinearConfig::new(2 * d, d).init(device),
        }
    }

    /// The parameters as SemCKD reads them (burn's `Linear` stores `[in, out]`, PyTorch's layout is `[out, in]`).
    fn weights(&self) -> SemckdMlp {
        let bias = |l: &Linear| l.bias.as_ref().expect("Linear has a bias by default").val();
        SemckdMlp {
            linear1_weight: self.linear1.weight.val().transpose(),
            linear1_bias: bias(&self.linear1),
            linear2_weight: self.linear2.weight.val().transpose(),
            linear2_bias: bias(&self.linear2),
        }
    }
}

/// What SemCKD trains beside the student's layers: a regressor per (student, teacher) layer pair (a 1x1
/// convolution, a small `AAEmbed`) and the query and key embeddings.
#[derive(Module, Debug)]
pub struct SemckdHead {
    regressors: Vec<Conv2d>,
    query: Vec<Embed>,
    key: Vec<Embed>,
}

/// The student and everything SemCKD trains, one module for the optimiser.
#[derive(Module, Debug)]
pub struct SemckdStudent {
    backbone: TwoStage,
    head: SemckdHead,
}

/// Student widths, teacher widths.
const STUDENT_WIDTHS: [usize; 2] = [4, 8];
const TEACHER_WIDTHS: [usize; 2] = [8, 16];

impl SemckdStudent {
    fn new(device: &Device) -> Self {
        let (batch, d) = (SEMCKD_INPUT[0], default_embed_dim(SEMCKD_INPUT[0]));
        let regressors = STUDENT_WIDTHS
            .iter()
            .flat_map(|&cs| TEACHER_WIDTHS.map(|ct| Conv2dConfig::new([cs, ct], [1, 1]).init(device)))
            .collect();
        let embeds = |n| (0..n).map(|_| Embed::new(batch, d, device)).collect();
        SemckdStudent {
            backbone: TwoStage::new(STUDENT_WIDTHS, device),
            head: SemckdHead { regressors, query: embeds(2), key: embeds(2) },
        }
    }

    /// The student's maps and the regressor outputs `proj[i][j]`: the student map pooled to the compared
    /// size `min(Hs_i, Ht_j)` when it is larger, then the pair's regressor.
    fn forward(&self, images: Tensor<4>, teacher: &[Tensor<4>]) -> (Vec<Tensor<4>>, Vec<Vec<Tensor<4>>>) {
        let student = self.backbone.forward(images).to_vec();
        let proj = student
            .iter()
            .enumerate()
            .map(|(i, s)| {
                teacher
                    .iter()
                    .enumerate()
                    .map(|(j, t)| {
                        let (hs, ht) = (s.dims()[2], t.dims()[2]);
                        let input = if hs > ht { adaptive_avg_pool2d(s.clone(), [ht, ht]) } else { s.clone() };
                        self.head.regressors[i * teacher.len() + j].forward(input)
                    })
                    .collect()
            })
            .collect();
        (student, proj)
    }
}

/// Distils a fixed two-stage teacher into a two-stage student through SemCKD for `steps` Adam steps on
/// `device` (an autodiff device), training the student, its regressors and the embeddings.
pub fn train_semckd(steps: usize, device: &Device, verbose: bool) -> Result<TrainReport, KdError> {
    device.seed(11);
    let images = Tensor::<4>::random(SEMCKD_INPUT, Distribution::Normal(0.0, 1.0), device);
    let teacher: Vec<Tensor<4>> =
        TwoStage::new(TEACHER_WIDTHS, device).forward(images.clone()).into_iter().map(|t| t.detach()).collect();
    let mut model = SemckdStudent::new(device);
    let mut optimizer = AdamConfig::new().init();
    let config = SemckdConfig::default(); // weight 400, the CIFAR-100 setting

    let mut losses = Vec::with_capacity(steps);
    let mut step0_burn_formula = f64::NAN;
    for step in 0..steps {
        let (student, proj) = model.forward(images.clone(), &teacher);
        let query: Vec<SemckdMlp> = model.head.query.iter().map(Embed::weights).collect();
        let key: Vec<SemckdMlp> = model.head.key.iter().map(Embed::weights).collect();
        if step == 0 {
            let formula = reference::semckd_loss(&student, &teacher, &proj, &query, &key, &config);
            step0_burn_formula = formula.into_scalar::<f64>();
        }
        let loss = semckd_loss(&student, &teacher, &proj, &query, &key, &config)?;
        let value = loss.clone().into_scalar::<f64>();
        record(&mut losses, verbose, (step, "SemCKD"), value, step0_burn_formula);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-2, model, grads);
    }
    Ok(TrainReport { losses, step0_burn_formula })
}

/// Keeps a step's loss and, with `verbose`, prints it as `what` (with burn's own formula at step 0, where
/// both must agree).
fn record(losses: &mut Vec<f64>, verbose: bool, (step, what): (usize, &str), value: f64, step0_formula: f64) {
    losses.push(value);
    if verbose {
        if step == 0 {
            println!("step {step:3}  {what} {value:.6}  (burn's own formula: {step0_formula:.6})");
        } else {
            println!("step {step:3}  {what} {value:.6}");
        }
    }
}

/// burn's CUDA device (fusion and autodiff) where this build has the `cuda` feature and a GPU answers, else
/// NdArray's, with the reason printed.
fn training_device() -> Device {
    #[cfg(feature = "cuda")]
    match kd_kernels::cuda::probe() {
        Ok(()) => return Device::cuda(0).autodiff(),
        Err(e) => println!("no CUDA device for burn ({e}); training on the CPU"),
    }
    Device::ndarray().autodiff()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("the step count {arg:?} is not a number: {e}"))?,
        None => 30,
    };
    let device = training_device();
    println!("distilling a {CLASSES}-class teacher into a small conv student on {device:?}, CWD + pixel KD");
    let report = train(steps, &device, true)?;
    if let (Some(first), Some(last)) = (report.losses.first(), report.losses.last()) {
        println!("loss {first:.6} -> {last:.6} in {steps} steps");
    }
    println!("SemCKD: two student stages against two teacher stages, regressors and embeddings trained");
    let report = train_semckd(steps, &device, true)?;
    if let (Some(first), Some(last)) = (report.losses.first(), report.losses.last()) {
        println!("SemCKD {first:.6} -> {last:.6} in {steps} steps");
    }
    Ok(())
}

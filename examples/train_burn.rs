//! A real training step with burn: a small convolutional student learns a fixed teacher's logits through
//! CWD plus pixel-wise KD (`kd_kernels::burn`), with Adam, on burn's NdArray CPU backend.
//!
//! ```sh
//! cargo run --release --features burn --example train_burn            # 30 steps
//! cargo run --release --features burn --example train_burn -- 100     # 100 steps
//! ```
//!
//! It prints the loss at every step, and at step 0 the same loss written in burn's own tensor operations
//! (`kd_kernels::burn::reference`), which must agree. `tests/burn_train.rs` runs `train` and asserts both.
// burn 0.22 deprecates NdArray in favour of Flex; NdArray is the CPU backend the `burn` feature covers.
#![allow(deprecated)]

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{PaddingConfig2d, Relu};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Distribution, Tensor};
use kd_kernels::burn::{cwd_loss, pixel_kd_loss, reference};
use kd_kernels::cwd::CwdConfig;
use kd_kernels::pixel_kd::PixelKdConfig;
use kd_kernels::KdError;

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
        losses.push(value);
        if verbose {
            if step == 0 {
                println!("step {step:3}  loss {value:.6}  (burn's own formula: {step0_burn_formula:.6})");
            } else {
                println!("step {step:3}  loss {value:.6}");
            }
        }
        let grads = GradientsParams::from_grads(loss.backward(), &student);
        student = optimizer.step(1e-2, student, grads);
    }
    Ok(TrainReport { losses, step0_burn_formula })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps = match std::env::args().nth(1) {
        Some(arg) => arg.parse().map_err(|e| format!("the step count {arg:?} is not a number: {e}"))?,
        None => 30,
    };
    let device = Device::ndarray().autodiff();
    println!("distilling a {CLASSES}-class teacher into a small conv student on {device:?}, CWD + pixel KD");
    let report = train(steps, &device, true)?;
    if let (Some(first), Some(last)) = (report.losses.first(), report.losses.last()) {
        println!("loss {first:.6} -> {last:.6} in {steps} steps");
    }
    Ok(())
}

//! Pixel KD through the C ABI, official defaults, checked against the formula written out here.

use kd::ndarray::Array4;
use kd::pixel_kd::{PixelKdConfig, PixelKdCpu};

use crate::support::{numbers, status, Lines, SHAPE};

pub fn check(lines: &Lines, student: &Array4<f32>, teacher: &Array4<f32>) {
    assert_eq!(status(lines, "pixel_kd_cpu").0, 0);
    let pixel = PixelKdCpu::new(PixelKdConfig::default()).unwrap().forward(student.view(), teacher.view()).unwrap();
    let mut kl = 0.0;
    for n in 0..SHAPE[0] {
        for h in 0..SHAPE[2] {
            for w in 0..SHAPE[3] {
                let logp = |x: &Array4<f32>| {
                    let z: Vec<f64> = (0..SHAPE[1]).map(|c| f64::from(x[[n, c, h, w]])).collect();
                    let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
                    z.into_iter().map(move |v| v - lse).collect::<Vec<_>>()
                };
                let (ls, lt) = (logp(student), logp(teacher));
                kl += lt.iter().zip(&ls).map(|(t, s)| t.exp() * (t - s)).sum::<f64>();
            }
        }
    }
    let formula = 10.0 * kl / SHAPE.iter().product::<usize>() as f64;
    let got = numbers(&lines["pixel_kd_loss"])[0];
    assert_eq!(got, pixel);
    assert!((got - formula).abs() <= 1e-12 * formula, "{got} vs the formula's {formula}");
}

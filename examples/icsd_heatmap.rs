//! Heatmaps of ICSD's row-normalised class-similarity matrices (`docs/losses.md §3.4`): the teacher's `Mh_T`,
//! the student's `Mh_S` and their difference, labelled with class indices, written as one PNG.
//!
//! ```text
//! cargo run --release --example icsd_heatmap [-- OUT.png]      # default docs/images/icsd_similarity.png
//! ```
//!
//! The logits are synthetic (21 classes, smooth per-class spatial blobs; the student is the teacher plus noise
//! and a blur of two classes into each other). The matrices come from the GPU when one is present
//! (`IcsdCuda::forward_matrices`), else from the f64 CPU reference.

#[path = "support/heatmap.rs"]
mod heatmap;

use std::error::Error;
use std::path::PathBuf;

use heatmap::{write_png, Panel};
use kd_kernels::icsd::{IcsdConfig, IcsdCpu, IcsdCuda};
use kd_kernels::ndarray::Array4;
use kd_kernels::testing::SplitMix64;

const SHAPE: [usize; 4] = [2, 21, 33, 33];

fn synthetic() -> (Array4<f32>, Array4<f32>) {
    let [n, c, h, w] = SHAPE;
    let mut rng = SplitMix64::new(0x5eed);
    let mut noise = move || rng.uniform() - 0.5;
    let teacher = Array4::from_shape_fn((n, c, h, w), |(b, k, y, x)| {
        // Class k peaks around a point that moves with k; nearby classes overlap.
        let cy = ((k * 7 + b * 3) % h) as f64;
        let cx = ((k * 11 + b * 5) % w) as f64;
        let d2 = ((y as f64 - cy).powi(2) + (x as f64 - cx).powi(2)) / 60.0;
        (4.0 * (-d2).exp()) as f32
    });
    let student = Array4::from_shape_fn((n, c, h, w), |(b, k, y, x)| {
        let blur = if k == 3 || k == 4 {
            0.5 * (teacher[[b, 3, y, x]] + teacher[[b, 4, y, x]])
        } else {
            teacher[[b, k, y, x]]
        };
        blur + 0.6 * noise() as f32
    });
    (student, teacher)
}

fn main() -> Result<(), Box<dyn Error>> {
    let out =
        std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("docs/images/icsd_similarity.png"));
    let (student, teacher) = synthetic();
    let c = SHAPE[1];
    let config = IcsdConfig::default();
    let (sim_s, sim_t, backend) = match gpu_matrices(config, &student, &teacher) {
        Ok(Some((s, t))) => (s, t, "gpu"),
        Ok(None) | Err(_) => {
            let r = IcsdCpu::new(config)?.forward(student.view(), teacher.view())?;
            (r.sim_student.iter().copied().collect(), r.sim_teacher.iter().copied().collect(), "cpu")
        }
    };
    let labels: Vec<String> = (0..c).map(|i| i.to_string()).collect();
    let panel = |title: &str, values: Vec<f64>| Panel {
        title: title.to_string(),
        rows: c,
        cols: c,
        values,
        row_labels: labels.clone(),
        col_labels: labels.clone(),
    };
    let diff: Vec<f64> = sim_s.iter().zip(&sim_t).map(|(a, b)| a - b).collect();
    let panels = [panel("TEACHER MH_T", sim_t), panel("STUDENT MH_S", sim_s), panel("MH_S - MH_T", diff)];
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_png(&out, &panels)?;
    println!("wrote {} (matrices from the {backend})", out.display());
    Ok(())
}

type Matrices = (Vec<f64>, Vec<f64>);

fn gpu_matrices(
    config: IcsdConfig,
    student: &Array4<f32>,
    teacher: &Array4<f32>,
) -> Result<Option<Matrices>, Box<dyn Error>> {
    if !kd_kernels::cuda::gpu_present() {
        return Ok(None);
    }
    let stream = kd_kernels::cuda::default_stream(0)?;
    let s = stream.clone_htod(student.as_slice().ok_or("layout")?)?;
    let t = stream.clone_htod(teacher.as_slice().ok_or("layout")?)?;
    let cc = SHAPE[1] * SHAPE[1];
    let mut loss = stream.alloc_zeros::<f32>(1)?;
    let mut ms = stream.alloc_zeros::<f32>(cc)?;
    let mut mt = stream.alloc_zeros::<f32>(cc)?;
    IcsdCuda::new(stream.clone(), config)?.forward_matrices(&SHAPE, &s, &t, &mut loss, &mut ms, &mut mt)?;
    let widen = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    Ok(Some((widen(stream.clone_dtoh(&ms)?), widen(stream.clone_dtoh(&mt)?))))
}

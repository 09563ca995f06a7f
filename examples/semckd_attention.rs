//! The SemCKD attention `alpha[b, i, j]` (how much teacher layer j counts for student layer i, per sample)
//! from the CPU reference on a CIFAR-like 3 x 3 layout, drawn as heatmaps: the batch average and the first
//! samples.
//!
//! ```text
//! cargo run --release --example semckd_attention -- [OUT.png]
//! ```

#[path = "support/heatmap.rs"]
mod heatmap;

use std::path::PathBuf;

use heatmap::Panel;
use kd_kernels::ndarray::{Array1, Array2, Array4};
use kd_kernels::semckd::{EmbedWeights, SemckdConfig, SemckdCpu, SemckdCpuInputs, SemckdLayers};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "semckd_attention.png".into()));
    let maps = vec![[8, 16, 16], [16, 8, 8], [32, 4, 4]];
    let layers = SemckdLayers { batch: 16, embed_dim: 4, student: maps.clone(), teacher: maps };
    let mut state = 7u64;
    let mut rand = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let (s, t) = (layers.students(), layers.teachers());
    let student: Vec<Array4<f32>> =
        (0..s).map(|i| Array4::from_shape_fn(layers.student_shape(i), |_| rand())).collect();
    let teacher: Vec<Array4<f32>> =
        (0..t).map(|j| Array4::from_shape_fn(layers.teacher_shape(j), |_| rand())).collect();
    let proj: Vec<Vec<Array4<f32>>> =
        (0..s).map(|i| (0..t).map(|j| Array4::from_shape_fn(layers.pair_shape(i, j), |_| rand())).collect()).collect();
    let [w1, b1, w2, b2] = layers.embed_shapes();
    let mut mlp = || {
        (
            Array2::from_shape_fn((w1[0], w1[1]), |_| rand() * 0.5),
            Array1::from_shape_fn(b1[0], |_| rand() * 0.5),
            Array2::from_shape_fn((w2[0], w2[1]), |_| rand()),
            Array1::from_shape_fn(b2[0], |_| rand()),
        )
    };
    let mlps: Vec<_> = (0..s + t).map(|_| mlp()).collect();

    let inputs = SemckdCpuInputs {
        student: student.iter().map(|x| x.view()).collect(),
        teacher: teacher.iter().map(|x| x.view()).collect(),
        proj: proj.iter().map(|row| row.iter().map(|x| x.view()).collect()).collect(),
        query: mlps[..s].iter().map(weights).collect(),
        key: mlps[s..].iter().map(weights).collect(),
    };
    let r = SemckdCpu::new(SemckdConfig::default())?.forward(&inputs)?;
    let labels = |side: &str, n: usize| (0..n).map(|k| format!("{side}{k}")).collect::<Vec<_>>();
    let mut panels = vec![Panel {
        title: "batch mean".into(),
        rows: s,
        cols: t,
        values: r.attention.mean_axis(kd_kernels::ndarray::Axis(0)).unwrap().iter().copied().collect(),
        row_labels: labels("student ", s),
        col_labels: labels("teacher ", t),
    }];
    for b in 0..4 {
        panels.push(Panel {
            title: format!("sample {b}"),
            rows: s,
            cols: t,
            values: r.attention.index_axis(kd_kernels::ndarray::Axis(0), b).iter().copied().collect(),
            row_labels: labels("student ", s),
            col_labels: labels("teacher ", t),
        });
    }
    for p in &panels {
        println!("{} (rows {:?}, columns {:?}):", p.title, p.row_labels, p.col_labels);
        for row in p.values.chunks(p.cols) {
            println!("  {}", row.iter().map(|v| format!("{v:.3}")).collect::<Vec<_>>().join(" "));
        }
    }
    heatmap::write_png(&out, &panels)?;
    println!("loss {:.4}; wrote {}", r.loss, out.display());
    Ok(())
}

type Mlp = (Array2<f32>, Array1<f32>, Array2<f32>, Array1<f32>);

fn weights(m: &Mlp) -> EmbedWeights<'_> {
    EmbedWeights {
        linear1_weight: m.0.view(),
        linear1_bias: m.1.view(),
        linear2_weight: m.2.view(),
        linear2_bias: m.3.view(),
    }
}

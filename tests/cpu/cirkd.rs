//! The CIRKD CPU reference (`docs/losses.md §10`): the recorded fixtures, central differences of the loss,
//! the tiled online softmax against the `P x P` logits built directly, exact zeros for identical inputs, the
//! pooling rule, symmetries, typed errors, and its memory: unpooled at B = 2, C = 8, 200x200 (where the
//! official code's similarity matrices alone would take 25.6 GB) it stays within tens of MB.

use crate::common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::relation::{
    self, assert_calls_agree, assert_exactly_zero, central_differences, dot, fixtures_pass, normal4, pixels, rel_err,
    Scenario,
};
use common::SplitMix64;
use kd_kernels::cirkd::{CirkdConfig, CirkdCpu, CirkdPool, AUTO_POOL_MIN_SIDE, AUTO_POOL_WINDOW};
use kd_kernels::{half, DType, KdError};
use ndarray::{Array4, Axis};

// ---------------------------------------------------------------------------------------------------------
// Heap accounting per thread (the test harness runs tests on parallel threads): the live bytes this thread
// allocated and not freed, and their peak.

struct Tracking;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            note(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        note(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            note(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

/// `f`'s result and the most heap it held at once on this thread beyond what was live before it ran.
fn peak_heap_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    (r, (PEAK.with(Cell::get) - start).max(0) as usize)
}

// ---------------------------------------------------------------------------------------------------------
// The loss as the spec writes it, on the P x P logits (small P only).

fn window(config: &CirkdConfig, h: usize, w: usize) -> usize {
    match config.pool {
        CirkdPool::Auto if h >= 256 && w >= 256 => 4,
        CirkdPool::Auto | CirkdPool::None => 1,
        CirkdPool::Avg(k) => k,
    }
}

fn log_softmax(z: &[f64]) -> Vec<f64> {
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

/// `sum_q pt (log pt - log ps)` of row `p` of pair `(i, j)`, from pooled and normalised pixels.
fn direct_row(ps: (&[Vec<f64>], &[Vec<f64>]), pt: (&[Vec<f64>], &[Vec<f64>]), p: usize, tau: f64) -> f64 {
    let ls: Vec<f64> = ps.1.iter().map(|q| dot(&ps.0[p], q) / tau).collect();
    let lt: Vec<f64> = pt.1.iter().map(|q| dot(&pt.0[p], q) / tau).collect();
    let (ls, lt) = (log_softmax(&ls), log_softmax(&lt));
    lt.iter().zip(&ls).map(|(t, s)| t.exp() * (t - s)).sum()
}

fn direct_loss(s: &Array4<f64>, t: &Array4<f64>, config: &CirkdConfig) -> f64 {
    let (b, h, w) = (s.shape()[0], s.shape()[2], s.shape()[3]);
    let k = window(config, h, w);
    let fs: Vec<_> = (0..b).map(|n| pixels(s, n, k, false)).collect();
    let ft: Vec<_> = (0..b).map(|n| pixels(t, n, k, false)).collect();
    let p = fs[0].len();
    let mut sum = 0.0;
    for i in 0..b {
        for j in 0..b {
            for row in 0..p {
                sum += direct_row((&fs[i], &fs[j]), (&ft[i], &ft[j]), row, config.tau);
            }
        }
    }
    config.loss_weight * sum / (p * b * b) as f64
}

// ---------------------------------------------------------------------------------------------------------

#[test]
fn fixtures_pass_on_the_cpu_reference() {
    let fixtures = fixtures_pass("cirkd_");
    assert!(fixtures.len() >= 9, "expected the recorded cirkd fixtures, found {}", fixtures.len());
    let dtypes: Vec<DType> = fixtures.iter().map(|(_, f)| f.tensors["student"].dtype.unwrap()).collect();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        assert!(dtypes.contains(&dtype), "no {dtype} fixture");
    }
    let pools: Vec<&str> = fixtures.iter().map(|(_, f)| f.metadata["pool"].as_str()).collect();
    for pool in ["auto", "none", "4", "3"] {
        assert!(pools.contains(&pool), "no fixture with pool {pool}");
    }
    // The official switch: a 256x256 map that auto pools.
    assert!(fixtures.iter().any(|(_, f)| {
        let s = &f.tensors["student"].shape;
        f.metadata["pool"] == "auto" && s[2] >= AUTO_POOL_MIN_SIDE && s[3] >= AUTO_POOL_MIN_SIDE
    }));
}

fn scenarios() -> Vec<Scenario<CirkdConfig>> {
    let unpooled = |tau| CirkdConfig { tau, loss_weight: 1.0, pool: CirkdPool::None };
    let avg3 = CirkdConfig { tau: 0.2, loss_weight: -2.0, pool: CirkdPool::Avg(3) };
    let (official, tiles) = (CirkdConfig::default(), unpooled(0.3));
    relation::scenarios(
        &mut SplitMix64::new(0xc1_4c),
        [
            ("pool none, B 2, Cs 3 != Ct 4", [2, 3, 4, 5], [2, 4, 4, 5], unpooled(0.5)),
            ("3x3 average pool (ceil) on 5x4, B 3, negative weight", [3, 2, 5, 4], [3, 3, 5, 4], avg3),
            ("the official tau 0.1 and pool auto (none below 256), B 1", [1, 4, 3, 3], [1, 2, 3, 3], official),
            ("P = 323: several row tiles and a partial second column tile", [1, 2, 17, 19], [1, 3, 17, 19], tiles),
        ],
    )
}

#[test]
fn tiled_online_softmax_equals_the_direct_logits() {
    for sc in scenarios() {
        let cpu = CirkdCpu::new(sc.config).unwrap();
        let got = cpu.forward(sc.student.view(), sc.teacher.view()).unwrap();
        let want = direct_loss(&sc.student, &sc.teacher, &sc.config);
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{}: {got} vs {want}", sc.name);
        assert!(got * sc.config.loss_weight.signum() > 0.0, "{}: a KL is positive", sc.name);
    }
}

#[test]
fn the_loss_is_the_sum_of_the_row_divergences() {
    let sc = &scenarios()[1];
    let cpu = CirkdCpu::new(sc.config).unwrap();
    let (b, h, w) = (sc.student.shape()[0], sc.student.shape()[2], sc.student.shape()[3]);
    let (ph, pw) = sc.config.pooled_dims(h, w);
    let p = ph * pw;
    let mut sum = 0.0;
    for i in 0..b {
        for j in 0..b {
            sum += cpu.row_divergences(sc.student.view(), sc.teacher.view(), (i, j), 0..p).unwrap().iter().sum::<f64>();
        }
    }
    let loss = cpu.forward(sc.student.view(), sc.teacher.view()).unwrap();
    let from_rows = sc.config.loss_weight * sum / (p * b * b) as f64;
    assert!((loss - from_rows).abs() <= 1e-14 * loss.abs(), "{loss} vs {from_rows}");
}

#[test]
fn gradient_matches_central_differences() {
    for sc in scenarios() {
        let cpu = CirkdCpu::new(sc.config).unwrap();
        let out = cpu.forward_backward(sc.student.view(), sc.teacher.view()).unwrap();
        assert!(out.grad_teacher.is_none());
        // Every element on the small maps; 48 spread elements of the tiled one.
        let n = sc.student.len();
        let at: Option<Vec<[usize; 4]>> = (n > 200).then(|| {
            let dims = sc.student.shape().to_vec();
            (0..48)
                .map(|e| {
                    let mut flat = (e * 7919 + 13) % n;
                    let mut idx = [0; 4];
                    for d in (0..4).rev() {
                        idx[d] = flat % dims[d];
                        flat /= dims[d];
                    }
                    idx
                })
                .collect()
        });
        // The tiled map's gradient entries are ~1/P of the loss: a larger step keeps the differences' rounding
        // (~1e-16 * loss / h) below them.
        let h = if at.is_some() { 3e-5 } else { 1e-6 };
        let numeric =
            central_differences(&sc.student, at.as_deref(), h, |s| cpu.forward(s, sc.teacher.view()).unwrap());
        let analytic: Vec<f64> = match &at {
            Some(at) => at.iter().map(|&i| out.grad_student[i]).collect(),
            None => out.grad_student.iter().copied().collect(),
        };
        let err = rel_err(&analytic, &numeric);
        assert!(err < 1e-7, "{}: relative gradient error {err:e}", sc.name);
    }
}

#[test]
fn identical_inputs_give_exactly_zero() {
    let mut rng = SplitMix64::new(12);
    for (dims, pool) in
        [([2, 5, 7, 9], CirkdPool::None), ([3, 3, 6, 5], CirkdPool::Avg(2)), ([1, 2, 17, 17], CirkdPool::None)]
    {
        let x = normal4(&mut rng, dims);
        let x16 = x.mapv(half::bf16::from_f64);
        let cpu = CirkdCpu::new(CirkdConfig { pool, ..CirkdConfig::default() }).unwrap();
        for out in
            [cpu.forward_backward(x.view(), x.view()).unwrap(), cpu.forward_backward(x16.view(), x16.view()).unwrap()]
        {
            assert_exactly_zero(&format!("{dims:?}"), &out);
        }
    }
}

#[test]
fn forward_backward_and_backward_agree() {
    for sc in scenarios() {
        let cpu = CirkdCpu::new(sc.config).unwrap();
        let (s, t) = (sc.student.view(), sc.teacher.view());
        let (f, fb, b) =
            (cpu.forward(s, t).unwrap(), cpu.forward_backward(s, t).unwrap(), cpu.backward(s, t, 0.25).unwrap());
        assert_calls_agree(sc.name, f, &fb, &b, 0.25);
    }
}

fn flat(a: &Array4<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

#[test]
fn image_order_pixel_order_pixel_scale_and_channel_order_do_not_matter() {
    // Every ordered pair is summed, so reordering the images (the same way for student and teacher) reorders
    // the gradient; without pooling a row's KL runs over all columns, so the same permutation of the pixels of
    // both maps (here: a flip of H and W) permutes the gradient; a positive scale per pixel leaves the
    // normalised features unchanged and divides the gradient; the teacher's channel order does not enter.
    let sc = &scenarios()[0];
    let cpu = CirkdCpu::new(sc.config).unwrap();
    let (s, t) = (&sc.student, &sc.teacher);
    let base = cpu.forward_backward(s.view(), t.view()).unwrap();
    let close = |a: f64| (a - base.loss).abs() <= 1e-13 * base.loss;
    for axes in [vec![Axis(0)], vec![Axis(2), Axis(3)]] {
        let (mut s2, mut t2) = (s.clone(), t.clone());
        for &ax in &axes {
            s2.invert_axis(ax);
            t2.invert_axis(ax);
        }
        let moved = cpu.forward_backward(s2.view(), t2.view()).unwrap();
        assert!(close(moved.loss), "{axes:?}");
        let mut g = moved.grad_student.clone();
        for &ax in &axes {
            g.invert_axis(ax);
        }
        assert!(rel_err(&flat(&g), &flat(&base.grad_student)) <= 1e-12, "{axes:?}");
    }
    let scale = Array4::from_shape_fn([2, 1, 4, 5], |(n, _, h, w)| 0.5 + (n + 2 * h + 3 * w) as f64 * 0.1);
    let scaled = cpu.forward_backward((s * &scale).view(), (t * &scale).view()).unwrap();
    assert!(close(scaled.loss));
    assert!(rel_err(&flat(&scaled.grad_student), &flat(&(&base.grad_student / &scale))) <= 1e-12);
    let mut permuted = t.clone();
    permuted.invert_axis(Axis(1));
    assert!(close(cpu.forward(s.view(), permuted.view()).unwrap()));
    // Moving the teacher's pixels alone is not a symmetry (a check that the comparisons above can fail).
    let mut flipped = t.clone();
    flipped.invert_axis(Axis(3));
    assert!(!close(cpu.forward(s.view(), flipped.view()).unwrap()));
}

#[test]
fn pooling_rule() {
    let auto = CirkdConfig::default();
    assert_eq!(auto.pool, CirkdPool::Auto);
    assert_eq!((AUTO_POOL_MIN_SIDE, AUTO_POOL_WINDOW), (256, 4));
    assert_eq!(auto.pooled_dims(255, 512), (255, 512));
    assert_eq!(auto.pooled_dims(512, 255), (512, 255));
    assert_eq!(auto.pooled_dims(256, 256), (64, 64));
    assert_eq!(auto.pooled_dims(257, 258), (65, 65));
    assert_eq!(CirkdConfig { pool: CirkdPool::None, ..auto }.pooled_dims(512, 1024), (512, 1024));
    assert_eq!(CirkdConfig { pool: CirkdPool::Avg(3), ..auto }.pooled_dims(10, 7), (4, 3));
    assert_eq!(CirkdPool::parse("auto"), Ok(CirkdPool::Auto));
    assert_eq!(CirkdPool::parse("none"), Ok(CirkdPool::None));
    assert_eq!(CirkdPool::parse("4"), Ok(CirkdPool::Avg(4)));
    // A 1x1 pool is no pooling, and auto below 256 is none: bitwise the same outputs.
    let sc = &scenarios()[0];
    let run = |pool| {
        CirkdCpu::new(CirkdConfig { pool, ..sc.config })
            .unwrap()
            .forward_backward(sc.student.view(), sc.teacher.view())
            .unwrap()
    };
    let none = run(CirkdPool::None);
    for pool in [CirkdPool::Avg(1), CirkdPool::Auto] {
        let other = run(pool);
        assert_eq!(other.loss.to_bits(), none.loss.to_bits(), "{pool:?}");
        assert_eq!(other.grad_student, none.grad_student, "{pool:?}");
    }
    // At 256x256 auto is the 4x4 pool (compared on some rows: the whole loss would take seconds here).
    let mut rng = SplitMix64::new(256);
    let (s, t) = (normal4(&mut rng, [2, 2, 256, 256]), normal4(&mut rng, [2, 3, 256, 256]));
    let rows = |pool| {
        let cpu = CirkdCpu::new(CirkdConfig { pool, ..auto }).unwrap();
        cpu.row_divergences(s.view(), t.view(), (1, 0), 4000..4096).unwrap()
    };
    let pooled = rows(CirkdPool::Avg(4));
    assert_eq!(rows(CirkdPool::Auto), pooled);
    assert!(rel_err(&rows(CirkdPool::Avg(2)), &pooled) > 1e-3);
}

#[test]
fn bad_input_gives_typed_errors() {
    for bad in ["0", "-1", "two", "", "4294967296"] {
        let e = CirkdPool::parse(bad).unwrap_err();
        assert!(matches!(e, KdError::InvalidParameter { name: "pool", .. }), "{bad}: {e}");
    }
    let e = CirkdCpu::new(CirkdConfig { pool: CirkdPool::Avg(0), ..CirkdConfig::default() }).unwrap_err();
    assert!(matches!(e, KdError::InvalidParameter { name: "pool", .. }), "{e}");
    for tau in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        let e = CirkdCpu::new(CirkdConfig { tau, ..CirkdConfig::default() }).unwrap_err();
        assert!(matches!(e, KdError::InvalidParameter { name: "tau", .. }), "{tau}: {e}");
    }
    let e = CirkdCpu::new(CirkdConfig { loss_weight: f64::NAN, ..CirkdConfig::default() }).unwrap_err();
    assert!(matches!(e, KdError::InvalidParameter { name: "loss_weight", .. }), "{e}");
    let cpu = CirkdCpu::new(CirkdConfig::default()).unwrap();
    let s = Array4::<f32>::zeros((2, 3, 4, 5));
    for bad in [[2, 3, 4, 4], [3, 3, 4, 5]] {
        let t = Array4::<f32>::zeros(bad);
        let e = cpu.forward(s.view(), t.view()).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{bad:?}: {e}");
        let e = cpu.row_divergences(s.view(), t.view(), (0, 0), 0..1).unwrap_err();
        assert!(matches!(e, KdError::ShapeMismatch { .. }), "{bad:?}: {e}");
    }
    let empty = Array4::<f32>::zeros((0, 3, 4, 5));
    let e = cpu.forward_backward(empty.view(), empty.view()).unwrap_err();
    assert!(matches!(e, KdError::EmptyInput { what: "student", .. }), "{e}");
    let t = Array4::<f32>::zeros((2, 6, 4, 5));
    for (pair, rows) in
        [((2, 0), 0..1), ((0, 2), 0..1), ((0, 1), 0..21), ((1, 1), std::ops::Range { start: 5, end: 4 })]
    {
        let e = cpu.row_divergences(s.view(), t.view(), pair, rows.clone()).unwrap_err();
        assert!(matches!(e, KdError::InvalidParameter { .. }), "{pair:?} {rows:?}: {e}");
    }
    assert_eq!(cpu.row_divergences(s.view(), t.view(), (1, 0), 20..20).unwrap(), Vec::<f64>::new());
}

// ---------------------------------------------------------------------------------------------------------
// Memory.

#[test]
fn unpooled_200x200_rows_in_tens_of_mb() {
    // B = 2, C = 8, 200x200, pool none: P = 40,000 pixels per image. The official code would hold B^2 = 4
    // pairs of P x P fp32 logits per network (25.6 GB for the student's alone). The whole loss at this size
    // is 4 * P^2 = 6.4e9 logit pairs, minutes on a CPU core, so this checks rows of every pair (the first, a
    // block across a row-tile boundary, the last) through the loss's own tiled pass (`row_divergences`),
    // each row over all 40,000 columns, against rows computed directly, and measures the heap it holds.
    let (b, c, h, w) = (2, 8, 200, 200);
    let p = h * w;
    let mut rng = SplitMix64::new(0x200);
    let student = Array4::from_shape_fn([b, c, h, w], |_| rng.normal() as f32);
    let teacher = Array4::from_shape_fn([b, c, h, w], |_| rng.normal() as f32);
    let config = CirkdConfig { pool: CirkdPool::None, ..CirkdConfig::default() };
    let cpu = CirkdCpu::new(config).unwrap();
    let blocks = [0..3, 20_030..20_036, p - 2..p];
    let (rows, peak) = peak_heap_during(|| {
        let mut rows = Vec::new();
        for i in 0..b {
            for j in 0..b {
                for block in &blocks {
                    rows.push((
                        (i, j),
                        block.clone(),
                        cpu.row_divergences(student.view(), teacher.view(), (i, j), block.clone()).unwrap(),
                    ));
                }
            }
        }
        rows
    });
    let official_student_bytes = (b * b * p * p * 4) as f64;
    eprintln!(
        "peak heap {:.1} MB (the official's student logits: {:.1} GB)",
        peak as f64 / 1e6,
        official_student_bytes / 1e9
    );
    assert!(peak < 64 << 20, "peak heap {peak} bytes");
    let (s64, t64) = (student.mapv(f64::from), teacher.mapv(f64::from));
    let fs: Vec<_> = (0..b).map(|n| pixels(&s64, n, 1, false)).collect();
    let ft: Vec<_> = (0..b).map(|n| pixels(&t64, n, 1, false)).collect();
    for ((i, j), block, got) in rows {
        assert_eq!(got.len(), block.len());
        let want: Vec<f64> =
            block.clone().map(|row| direct_row((&fs[i], &fs[j]), (&ft[i], &ft[j]), row, config.tau)).collect();
        assert!(want.iter().all(|&v| v > 0.0));
        assert!(rel_err(&got, &want) <= 1e-12, "pair ({i}, {j}) rows {block:?}: {got:?} vs {want:?}");
    }
}

#[test]
fn forward_backward_never_holds_a_p_by_p_matrix() {
    // The whole loss and gradient, unpooled, at P = 1600: one P x P f64 matrix is 20 MB, the official's 8
    // (student and teacher logits of 4 pairs) 82 MB in fp32; the reference holds the normalised features (a few
    // times the inputs' size in f64), row statistics and tiles.
    let (b, c, h, w) = (2, 8, 40, 40);
    let p = h * w;
    let mut rng = SplitMix64::new(0x48);
    let student = Array4::from_shape_fn([b, c, h, w], |_| rng.normal() as f32);
    let teacher = Array4::from_shape_fn([b, c, h, w], |_| rng.normal() as f32);
    let cpu = CirkdCpu::new(CirkdConfig { pool: CirkdPool::None, ..CirkdConfig::default() }).unwrap();
    let started = std::time::Instant::now();
    let (out, peak) = peak_heap_during(|| cpu.forward_backward(student.view(), teacher.view()).unwrap());
    let seconds = started.elapsed().as_secs_f64();
    let inputs_f64_bytes = b * 2 * c * p * 8;
    let matrix_bytes = p * p * 8;
    eprintln!(
        "peak heap {:.2} MB beyond the inputs (inputs in f64 {:.2} MB, one P x P matrix {:.1} MB); {seconds:.2} s",
        peak as f64 / 1e6,
        inputs_f64_bytes as f64 / 1e6,
        matrix_bytes as f64 / 1e6
    );
    assert!(peak < 8 * inputs_f64_bytes && peak < matrix_bytes / 4, "peak heap {peak} bytes");
    assert!(out.loss > 0.0 && out.grad_student.iter().all(|g| g.is_finite()));
}

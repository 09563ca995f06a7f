//! Heatmaps of small matrices as one PNG: panels side by side, each with its colour map (diverging blue-white-red
//! symmetric about 0 when the panel has both signs, else sequential yellow-teal-blue over its range), a colour
//! bar with its range, row and column labels, and a title.
//!
//! Shared by the examples through `#[path = "support/heatmap.rs"] mod heatmap;`. Text is drawn with a tiny
//! built-in 3x5 bitmap font (digits, capital letters, a few signs; lower case is drawn as upper case), and the
//! image is encoded by the `png` crate (a dev-dependency): a small, pure-Rust, widely used encoder, so the
//! examples need no system font or graphics library (plotters' text rendering needs fontconfig/freetype).

#![allow(dead_code)]

use std::error::Error;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

/// One heatmap: `rows x cols` values, row-major.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
}

const SCALE: usize = 2; // font pixels per glyph pixel
const GLYPH_W: usize = 3 * SCALE;
const GLYPH_H: usize = 5 * SCALE;
const ADVANCE: usize = GLYPH_W + SCALE;
const MARGIN: usize = 16;
const BAR_W: usize = 14;
const BG: [u8; 3] = [255, 255, 255];
const INK: [u8; 3] = [20, 20, 20];

/// Five rows of three bits (left bit first) per glyph.
fn glyph(ch: char) -> [u8; 5] {
    match ch.to_ascii_uppercase() {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '-' => [0, 0, 7, 0, 0],
        '+' => [0, 2, 7, 2, 0],
        '.' => [0, 0, 0, 0, 2],
        ',' => [0, 0, 0, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        '=' => [0, 7, 0, 7, 0],
        '(' => [2, 4, 4, 4, 2],
        ')' => [2, 1, 1, 1, 2],
        '/' => [1, 1, 2, 4, 4],
        '_' => [0, 0, 0, 0, 7],
        _ => [0; 5],
    }
}

struct Canvas {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Canvas { width, height, rgb: BG.iter().copied().cycle().take(width * height * 3).collect() }
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, colour: [u8; 3]) {
        for yy in y..(y + h).min(self.height) {
            for xx in x..(x + w).min(self.width) {
                let i = (yy * self.width + xx) * 3;
                self.rgb[i..i + 3].copy_from_slice(&colour);
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, text: &str) {
        for (n, ch) in text.chars().enumerate() {
            for (row, bits) in glyph(ch).iter().enumerate() {
                for col in 0..3 {
                    if bits >> (2 - col) & 1 == 1 {
                        self.fill(x + n * ADVANCE + col * SCALE, y + row * SCALE, SCALE, SCALE, INK);
                    }
                }
            }
        }
    }
}

fn text_width(text: &str) -> usize {
    text.chars().count() * ADVANCE
}

/// Blue (-1) to white (0) to red (+1).
fn diverging(t: f64) -> [u8; 3] {
    let t = if t.is_finite() { t.clamp(-1.0, 1.0) } else { 0.0 };
    let (r, g, b) = if t < 0.0 {
        let s = -t;
        (1.0 - 0.8 * s, 1.0 - 0.6 * s, 1.0 - 0.1 * s)
    } else {
        (1.0 - 0.1 * t, 1.0 - 0.75 * t, 1.0 - 0.8 * t)
    };
    [(r * 255.0) as u8, (g * 255.0) as u8, (b * 255.0) as u8]
}

/// Light yellow (0) through teal to dark blue (1): for panels whose values all have one sign.
fn sequential(t: f64) -> [u8; 3] {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let stops = [[255.0, 255.0, 217.0], [65.0, 182.0, 196.0], [8.0, 29.0, 88.0]];
    let (a, b, u) = if t < 0.5 { (stops[0], stops[1], 2.0 * t) } else { (stops[1], stops[2], 2.0 * t - 1.0) };
    [0, 1, 2].map(|i| (a[i] + (b[i] - a[i]) * u) as u8)
}

/// The panel's colour map: diverging about 0 when it has both signs, else sequential over its range.
/// Returns the colour of `v` and the values at the top and bottom of the colour bar.
struct ColourMap {
    lo: f64,
    hi: f64,
    diverging: bool,
}

impl ColourMap {
    fn of(p: &Panel) -> Self {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for &v in p.values.iter().filter(|v| v.is_finite()) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            return ColourMap { lo: -1.0, hi: 1.0, diverging: true };
        }
        if lo < 0.0 && hi > 0.0 {
            let span = lo.abs().max(hi);
            ColourMap { lo: -span, hi: span, diverging: true }
        } else if hi > lo {
            ColourMap { lo, hi, diverging: false }
        } else {
            ColourMap { lo: lo - 1.0, hi: hi + 1.0, diverging: false }
        }
    }

    fn colour(&self, v: f64) -> [u8; 3] {
        let t = (v - self.lo) / (self.hi - self.lo);
        if self.diverging {
            diverging(2.0 * t - 1.0)
        } else {
            sequential(t)
        }
    }
}

fn format_value(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

/// Writes `panels` side by side into a PNG at `path`.
pub fn write_png(path: &Path, panels: &[Panel]) -> Result<(), Box<dyn Error>> {
    if panels.is_empty() {
        return Err("no panel to draw".into());
    }
    for p in panels {
        if p.values.len() != p.rows * p.cols || p.rows == 0 || p.cols == 0 {
            return Err(format!("panel `{}`: {} values for {}x{}", p.title, p.values.len(), p.rows, p.cols).into());
        }
    }
    // Geometry per panel: row labels | cells | gap | colour bar | bar labels.
    struct Layout {
        cell: usize,
        label_w: usize,
        bar_label_w: usize,
        width: usize,
    }
    let layouts: Vec<Layout> = panels
        .iter()
        .map(|p| {
            let cell = (360 / p.rows.max(p.cols)).clamp(6, 40);
            let label_w = p.row_labels.iter().map(|l| text_width(l)).max().unwrap_or(0) + 4;
            let map = ColourMap::of(p);
            let (lo, hi) = (map.lo, map.hi);
            let bar_label_w = text_width(&format_value(lo)).max(text_width(&format_value(hi))) + 4;
            let width = label_w + p.cols * cell + 8 + BAR_W + 4 + bar_label_w;
            let width = width.max(text_width(&p.title));
            Layout { cell, label_w, bar_label_w, width }
        })
        .collect();
    let title_h = GLYPH_H + 8;
    let col_label_h = GLYPH_H + 4;
    let body_h = panels.iter().zip(&layouts).map(|(p, l)| p.rows * l.cell).max().unwrap_or(0);
    let width = MARGIN + layouts.iter().map(|l| l.width + MARGIN).sum::<usize>();
    let height = MARGIN + title_h + col_label_h + body_h + MARGIN;
    let mut canvas = Canvas::new(width, height);

    let mut x0 = MARGIN;
    for (p, l) in panels.iter().zip(&layouts) {
        canvas.text(x0, MARGIN, &p.title);
        let top = MARGIN + title_h + col_label_h;
        let left = x0 + l.label_w;
        let map = ColourMap::of(p);
        for r in 0..p.rows {
            for c in 0..p.cols {
                let colour = map.colour(p.values[r * p.cols + c]);
                canvas.fill(left + c * l.cell, top + r * l.cell, l.cell, l.cell, colour);
            }
        }
        // Labels: every row/column when they fit, else every k-th.
        let every = ((GLYPH_H + 2) / l.cell.max(1)).max(1);
        for (r, label) in p.row_labels.iter().enumerate().take(p.rows).step_by(every) {
            let y = top + r * l.cell + l.cell.saturating_sub(GLYPH_H) / 2;
            canvas.text(left.saturating_sub(text_width(label) + 4), y, label);
        }
        for (c, label) in p.col_labels.iter().enumerate().take(p.cols) {
            let w = text_width(label);
            if c % every.max((w + 4).div_ceil(l.cell.max(1)).max(1)) == 0 {
                let x = (left + c * l.cell + l.cell / 2).saturating_sub(w / 2);
                canvas.text(x, top - col_label_h, label);
            }
        }
        // Colour bar from the map's top value down to its bottom value, labelled with both.
        let bar_x = left + p.cols * l.cell + 8;
        let bar_h = p.rows * l.cell;
        for y in 0..bar_h {
            let v = map.hi - (map.hi - map.lo) * (y as f64 + 0.5) / bar_h as f64;
            canvas.fill(bar_x, top + y, BAR_W, 1, map.colour(v));
        }
        canvas.text(bar_x + BAR_W + 4, top, &format_value(map.hi));
        canvas.text(bar_x + BAR_W + 4, top + bar_h.saturating_sub(GLYPH_H), &format_value(map.lo));
        let _ = l.bar_label_w;
        x0 += l.width + MARGIN;
    }

    let file = BufWriter::new(File::create(path)?);
    let mut encoder = png::Encoder::new(file, width as u32, height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Best);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&canvas.rgb)?;
    writer.finish()?;
    Ok(())
}

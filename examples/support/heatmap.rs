//! Minimal heatmap panels written as a PNG, with no dependency (stored deflate blocks). The shared plotting
//! module of the examples; this version draws the cells only (titles and labels go to stdout).
#![allow(dead_code)]

use std::error::Error;
use std::path::Path;

/// One heatmap: `rows x cols` values in row-major order.
pub struct Panel {
    pub title: String,
    pub rows: usize,
    pub cols: usize,
    pub values: Vec<f64>,
    pub row_labels: Vec<String>,
    pub col_labels: Vec<String>,
}

const CELL: usize = 24;
const GAP: usize = 12;

fn color(t: f64) -> [u8; 3] {
    // A dark-blue to yellow ramp.
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let lerp = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    [lerp(20.0, 250.0), lerp(30.0, 220.0), lerp(110.0, 40.0)]
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn zlib_stored(raw: &[u8]) -> Vec<u8> {
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (k, block) in blocks.iter().enumerate() {
        z.push(u8::from(k + 1 == blocks.len()));
        let len = block.len() as u16;
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in raw {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    z
}

/// Writes the panels side by side, each scaled to its own value range, as an RGB PNG.
pub fn write_png(path: &Path, panels: &[Panel]) -> Result<(), Box<dyn Error>> {
    if panels.is_empty() {
        return Err("no panel to draw".into());
    }
    let height = GAP * 2 + CELL * panels.iter().map(|p| p.rows).max().unwrap_or(1);
    let width = GAP + panels.iter().map(|p| p.cols * CELL + GAP).sum::<usize>();
    let mut pixels = vec![255u8; width * height * 3];
    let mut x0 = GAP;
    for p in panels {
        if p.values.len() != p.rows * p.cols {
            return Err(format!("panel `{}`: {} values for {} x {}", p.title, p.values.len(), p.rows, p.cols).into());
        }
        let lo = p.values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = p.values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        for r in 0..p.rows {
            for c in 0..p.cols {
                let rgb = color((p.values[r * p.cols + c] - lo) / span);
                for y in 0..CELL - 1 {
                    for x in 0..CELL - 1 {
                        let at = ((GAP + r * CELL + y) * width + x0 + c * CELL + x) * 3;
                        pixels[at..at + 3].copy_from_slice(&rgb);
                    }
                }
            }
        }
        x0 += p.cols * CELL + GAP;
    }
    let mut raw = Vec::with_capacity((width * 3 + 1) * height);
    for row in pixels.chunks(width * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&(width as u32).to_be_bytes());
    header.extend_from_slice(&(height as u32).to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &header);
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    std::fs::write(path, png)?;
    Ok(())
}

//! Colour maps: probabilities in [0, 1] to RGB, and the blending of a probability grid onto an
//! image.
//!
//! In: a probability (or a grid of them, cells of `cell` image pixels, negative where no patch
//! was analysed). Out: 8-bit or float RGB colours; [`overlay_cpu`] returns the blended image.
//! These are the CPU definitions the overlay shader (`shaders/overlay.wgsl`, [`crate::gpu`])
//! reproduces, and the colours of the report's overlays and charts and of the viewer's tiles.
//! Coordinates: pixels of the image blended onto.

use image::RgbImage;

/// A colour map of the overlay shader and of the viewer's heatmap tiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmap {
    /// matplotlib's viridis (9 stops, linear between them).
    Viridis = 0,
    /// MATLAB's jet.
    Jet = 1,
    /// Moreland's cool-warm (blue, light grey, red; linear in RGB).
    Coolwarm = 2,
}

impl Cmap {
    /// By name: `viridis`, `jet` or `coolwarm`.
    pub fn parse(s: &str) -> Option<Cmap> {
        match s {
            "viridis" => Some(Cmap::Viridis),
            "jet" => Some(Cmap::Jet),
            "coolwarm" => Some(Cmap::Coolwarm),
            _ => None,
        }
    }

    /// The 8-bit colour of `v` in [0, 1]: viridis exactly as the report's overlays
    /// ([`viridis`]), the others as the shader computes them, rounded.
    pub fn rgb8(self, v: f32) -> [u8; 3] {
        match self {
            Cmap::Viridis => viridis(v),
            _ => colour(self, v).map(|c| c.round() as u8),
        }
    }
}

/// Viridis at 9 stops (matplotlib's), interpolated linearly (also the overlay shader's).
pub const VIRIDIS: [[f32; 3]; 9] = [
    [68.0, 1.0, 84.0],
    [71.0, 44.0, 122.0],
    [59.0, 81.0, 139.0],
    [44.0, 113.0, 142.0],
    [33.0, 144.0, 141.0],
    [39.0, 173.0, 129.0],
    [92.0, 200.0, 99.0],
    [170.0, 220.0, 50.0],
    [253.0, 231.0, 37.0],
];

/// The viridis colour of `p` in [0, 1].
pub fn viridis(p: f32) -> [u8; 3] {
    let x = p.clamp(0.0, 1.0) * 8.0;
    let i = (x.floor() as usize).min(7);
    let f = x - i as f32;
    let (a, b) = (VIRIDIS[i], VIRIDIS[i + 1]);
    [0, 1, 2].map(|c| (a[c] + (b[c] - a[c]) * f).round() as u8)
}

/// A distinct colour for class `i` of `n` (used when the model names no colours).
pub fn palette(i: usize, n: usize) -> [u8; 3] {
    viridis(if n <= 1 {
        1.0
    } else {
        i as f32 / (n - 1) as f32
    })
}

fn mix(a: [f32; 3], b: [f32; 3], t: f32) -> [f32; 3] {
    [0, 1, 2].map(|c| a[c] * (1.0 - t) + b[c] * t)
}

/// The colour of `v` in [0, 1], 0–255 as floats (the shader's `colour`).
pub fn colour(cmap: Cmap, v: f32) -> [f32; 3] {
    let x = v.clamp(0.0, 1.0);
    match cmap {
        Cmap::Jet => {
            let f = |m: f32| (1.5 - (4.0 * x - m).abs()).clamp(0.0, 1.0) * 255.0;
            [f(3.0), f(2.0), f(1.0)]
        }
        Cmap::Coolwarm => {
            if x < 0.5 {
                mix([59.0, 76.0, 192.0], [221.0, 221.0, 221.0], x * 2.0)
            } else {
                mix([221.0, 221.0, 221.0], [180.0, 4.0, 38.0], (x - 0.5) * 2.0)
            }
        }
        Cmap::Viridis => {
            let s = x * 8.0;
            let i = (s.floor() as usize).min(7);
            mix(VIRIDIS[i], VIRIDIS[i + 1], s - i as f32)
        }
    }
}

/// Blends a probability grid onto `base` — the CPU twin of the overlay shader. `grid` holds
/// `grid_size.0 × grid_size.1` values, row by row, negative where no patch was analysed; a
/// cell spans `cell` pixels of `base`.
pub fn overlay_cpu(
    base: &RgbImage,
    grid: &[f32],
    grid_size: (u32, u32),
    cell: f32,
    threshold: f32,
    alpha: f32,
    cmap: Cmap,
) -> RgbImage {
    let (gw, gh) = grid_size;
    let at = |cx: i32, cy: i32| -> f32 {
        if cx < 0 || cy < 0 || cx >= gw as i32 || cy >= gh as i32 {
            -1.0
        } else {
            grid[(cy as u32 * gw + cx as u32) as usize]
        }
    };
    let mut out = base.clone();
    for (x, y, px) in out.enumerate_pixels_mut() {
        let rgb = px.0.map(|v| v as f32);
        let gx = (x as f32 + 0.5) / cell - 0.5;
        let gy = (y as f32 + 0.5) / cell - 0.5;
        let (x0, y0) = (gx.floor() as i32, gy.floor() as i32);
        let (fx, fy) = (gx - x0 as f32, gy - y0 as f32);
        let (mut sum, mut wsum) = (0f32, 0f32);
        for j in 0..2 {
            for i in 0..2 {
                let v = at(x0 + i, y0 + j);
                let wx = if i == 1 { fx } else { 1.0 - fx };
                let wy = if j == 1 { fy } else { 1.0 - fy };
                let w = wx * wy;
                if v >= 0.0 && w > 0.0 {
                    sum += w * v;
                    wsum += w;
                }
            }
        }
        let mut o = rgb;
        let own = at(
            ((x as f32 + 0.5) / cell).floor() as i32,
            ((y as f32 + 0.5) / cell).floor() as i32,
        );
        if wsum > 0.0 && own >= 0.0 {
            let v = sum / wsum;
            if v >= threshold {
                let c = colour(cmap, v);
                o = [0, 1, 2].map(|k| rgb[k] * (1.0 - alpha) + c[k] * alpha);
            }
        }
        px.0 = o.map(|v| (v.clamp(0.0, 255.0) + 0.5).floor() as u8);
    }
    out
}

//! Charts and overlays drawn as inline SVG (no JavaScript, printable).
//!
//! In: probabilities, the tissue mask and region positions. Out: SVG text. Overlays use
//! level-0 pixel coordinates in their viewBox, so they line up with any image of the whole
//! slide stretched to the same box.

use std::fmt::Write;

use crate::imaging::colour::viridis;

/// Escapes text for SVG/HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// Bin counts of `values` in `[0, 1]` over `bins` equal bins (1.0 falls in the last).
pub fn bin_counts(values: &[f32], bins: usize) -> Vec<usize> {
    let mut counts = vec![0usize; bins.max(1)];
    for &v in values {
        if v.is_finite() {
            let i = ((v.clamp(0.0, 1.0) * counts.len() as f32) as usize).min(counts.len() - 1);
            counts[i] += 1;
        }
    }
    counts
}

/// A histogram of one class's patch probabilities, with the threshold marked.
pub fn histogram(class: &str, values: &[f32], threshold: f32, color: [u8; 3]) -> String {
    const W: f64 = 340.0;
    const H: f64 = 170.0;
    let (left, right, top, bottom) = (40.0, 10.0, 22.0, 34.0);
    let (pw, ph) = (W - left - right, H - top - bottom);
    let counts = bin_counts(values, 20);
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="hist" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="Histogram of {c} probabilities"><title>Patch probabilities: {c}</title>"#,
        c = esc(class)
    );
    let _ = write!(
        s,
        r##"<text x="{left}" y="14" font-size="12" font-weight="600" fill="#1d1d1f">{} <tspan font-weight="400" fill="#5b5b66">({} patches)</tspan></text>"##,
        esc(class),
        values.len()
    );
    let bw = pw / counts.len() as f64;
    for (i, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let h = ph * n as f64 / max as f64;
        let _ = write!(
            s,
            r#"<rect x="{:.2}" y="{:.2}" width="{:.2}" height="{:.2}" fill="{}"><title>{:.2}–{:.2}: {n}</title></rect>"#,
            left + i as f64 * bw + 0.5,
            top + ph - h,
            bw - 1.0,
            h,
            hex(color),
            i as f64 / counts.len() as f64,
            (i + 1) as f64 / counts.len() as f64,
        );
    }
    // Axes, ticks and labels.
    let _ = write!(
        s,
        r##"<path d="M{left} {top}V{b}H{r}" fill="none" stroke="#5b5b66" stroke-width="1"/>"##,
        b = top + ph,
        r = left + pw
    );
    for t in [0.0, 0.25, 0.5, 0.75, 1.0] {
        let x = left + pw * t;
        let _ = write!(
            s,
            r##"<path d="M{x:.2} {y0}v4" stroke="#5b5b66"/><text x="{x:.2}" y="{y1}" font-size="10" text-anchor="middle" fill="#5b5b66">{t}</text>"##,
            y0 = top + ph,
            y1 = top + ph + 15.0
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.2}" y="{}" font-size="10" text-anchor="middle" fill="#5b5b66">probability</text>"##,
        left + pw / 2.0,
        H - 4.0
    );
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" font-size="10" text-anchor="end" fill="#5b5b66">{max}</text><text x="{}" y="{}" font-size="10" text-anchor="end" fill="#5b5b66">0</text>"##,
        left - 4.0,
        top + 8.0,
        left - 4.0,
        top + ph
    );
    let tx = left + pw * threshold.clamp(0.0, 1.0) as f64;
    let _ = write!(
        s,
        r##"<path d="M{tx:.2} {top}V{b}" stroke="#c62828" stroke-width="1.5" stroke-dasharray="4 3"/><text x="{tx:.2}" y="{ty}" font-size="10" text-anchor="middle" fill="#c62828">threshold {threshold}</text>"##,
        b = top + ph,
        ty = top - 2.0
    );
    s.push_str("</svg>");
    s
}

/// The colour scale of the heatmap overlays, with the threshold marked.
pub fn legend(class: &str, threshold: f32) -> String {
    const W: f64 = 420.0;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="legend" viewBox="0 0 {W} 44" width="{W}" height="44" role="img" aria-label="Colour scale"><defs><linearGradient id="viridis">"#
    );
    for i in 0..=8 {
        let p = i as f32 / 8.0;
        let _ = write!(
            s,
            r#"<stop offset="{}" stop-color="{}"/>"#,
            p,
            hex(viridis(p))
        );
    }
    let (x0, w) = (10.0, 260.0);
    let _ = write!(
        s,
        r##"</linearGradient></defs><rect x="{x0}" y="4" width="{w}" height="12" fill="url(#viridis)" stroke="#5b5b66" stroke-width="0.5"/>"##
    );
    for (v, label) in [(0.0f32, "0".to_string()), (1.0, "1".to_string())] {
        let x = x0 + w * v as f64;
        let _ = write!(
            s,
            r##"<path d="M{x} 16v4" stroke="#5b5b66"/><text x="{x}" y="31" font-size="10" text-anchor="middle" fill="#5b5b66">{label}</text>"##
        );
    }
    let tx = x0 + w * threshold.clamp(0.0, 1.0) as f64;
    let _ = write!(
        s,
        r##"<path d="M{tx:.2} 1v19" stroke="#c62828" stroke-width="1.5"/><text x="{tx:.2}" y="31" font-size="10" text-anchor="middle" fill="#c62828">threshold {threshold}</text>"##
    );
    let _ = write!(
        s,
        r##"<text x="{x0}" y="42" font-size="10" fill="#1d1d1f">probability of {}</text>"##,
        esc(class)
    );
    // Key for the outlines.
    let _ = write!(
        s,
        r##"<rect x="290" y="5" width="14" height="10" fill="none" stroke="#ffffff" stroke-width="2" style="outline:1px solid #5b5b66"/><text x="310" y="14" font-size="10" fill="#1d1d1f">patches ≥ threshold</text><path d="M290 31h14" stroke="#1565c0" stroke-width="2" stroke-dasharray="3 2"/><text x="310" y="35" font-size="10" fill="#1d1d1f">tissue outline</text>"##
    );
    s.push_str("</svg>");
    s
}

/// Outline of a binary mask (`on` is row-major, `w × h`, each cell `scale` level-0 pixels) as
/// an SVG path in level-0 pixels: every cell side between tissue and background, horizontal
/// and vertical runs merged.
pub fn mask_outline(on: &[bool], w: usize, h: usize, scale: f64) -> String {
    let at = |x: isize, y: isize| -> bool {
        x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h && on[y as usize * w + x as usize]
    };
    let mut d = String::new();
    let p = |v: usize| (v as f64 * scale).round() as i64;
    // Horizontal edges: between rows y-1 and y.
    for y in 0..=h {
        let mut x = 0;
        while x < w {
            let edge = |x: usize| at(x as isize, y as isize - 1) != at(x as isize, y as isize);
            if edge(x) {
                let start = x;
                while x < w && edge(x) {
                    x += 1;
                }
                let _ = write!(d, "M{} {}H{}", p(start), p(y), p(x));
            } else {
                x += 1;
            }
        }
    }
    // Vertical edges: between columns x-1 and x.
    for x in 0..=w {
        let mut y = 0;
        while y < h {
            let edge = |y: usize| at(x as isize - 1, y as isize) != at(x as isize, y as isize);
            if edge(y) {
                let start = y;
                while y < h && edge(y) {
                    y += 1;
                }
                let _ = write!(d, "M{} {}V{}", p(x), p(start), p(y));
            } else {
                y += 1;
            }
        }
    }
    d
}

/// A numbered marker on the thumbnail for a top region: its crop box and its rank.
pub fn marker(rank: usize, x: f64, y: f64, side: f64, view_w: f64) -> String {
    let r = view_w * 0.018;
    let sw = view_w * 0.003;
    let (cx, cy) = (x + side / 2.0, y + side / 2.0);
    // The number sits outside the box's top-left corner, kept inside the picture.
    let (nx, ny) = ((x - r).max(r), (y - r).max(r));
    format!(
        r##"<rect x="{x:.0}" y="{y:.0}" width="{side:.0}" height="{side:.0}" fill="none" stroke="#ffffff" stroke-width="{w2:.1}"/><rect x="{x:.0}" y="{y:.0}" width="{side:.0}" height="{side:.0}" fill="none" stroke="#111111" stroke-width="{sw:.1}"/><circle cx="{nx:.0}" cy="{ny:.0}" r="{r:.0}" fill="#111111" stroke="#ffffff" stroke-width="{sw:.1}"/><text x="{nx:.0}" y="{ty:.0}" font-size="{fs:.0}" font-weight="700" text-anchor="middle" fill="#ffffff">{rank}</text><title>Region {rank}: centre ({cx:.0}, {cy:.0}) level-0 px</title>"##,
        w2 = sw * 2.5,
        ty = ny + r * 0.42,
        fs = r * 1.25,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_cover_the_closed_interval() {
        assert_eq!(
            bin_counts(&[0.0, 0.04, 0.05, 0.999, 1.0, f32::NAN], 20)[..2],
            [2, 1]
        );
        let c = bin_counts(&[0.0, 0.04, 0.05, 0.999, 1.0], 20);
        assert_eq!(c[19], 2);
        assert_eq!(c.iter().sum::<usize>(), 5);
    }

    #[test]
    fn one_cell_outline_is_its_four_sides() {
        let d = mask_outline(&[false, false, false, false, true, false], 3, 2, 10.0);
        // Cell (1, 1): top edge y=10, bottom y=20, left x=10, right x=20.
        assert_eq!(d, "M10 10H20M10 20H20M10 10V20M20 10V20");
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc(r#"<a href="x">&'"#),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert!(histogram("<b>", &[0.5], 0.5, [0, 0, 0]).contains("&lt;b&gt;"));
    }
}

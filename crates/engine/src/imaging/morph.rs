//! Binary-image helpers for the tissue and QC stages: 4-neighbours, connected components,
//! hysteresis growth, dilation, opening and a chamfer distance.
//!
//! In and out: row-major `bool` masks of `w × h` pixels, in whatever raster the caller works in
//! (the tissue mask's). Connectivity is 4-neighbour throughout.

/// The 4-neighbours of pixel `i` in a `w × h` raster (fewer at its border).
pub fn neighbours4(i: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = (i % w, i / w);
    [
        (x > 0).then(|| i - 1),
        (x + 1 < w).then(|| i + 1),
        (y > 0).then(|| i - w),
        (y + 1 < h).then(|| i + w),
    ]
    .into_iter()
    .flatten()
}

/// Labels the 4-connected components of `m`: one label per pixel (`u32::MAX` outside) and the
/// size of each component.
pub fn components(m: &[bool], w: usize, h: usize) -> (Vec<u32>, Vec<usize>) {
    let mut label = vec![u32::MAX; m.len()];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    for start in 0..m.len() {
        if !m[start] || label[start] != u32::MAX {
            continue;
        }
        let id = sizes.len() as u32;
        let mut n = 0usize;
        label[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            n += 1;
            for j in neighbours4(i, w, h) {
                if m[j] && label[j] == u32::MAX {
                    label[j] = id;
                    stack.push(j);
                }
            }
        }
        sizes.push(n);
    }
    (label, sizes)
}

/// `m` without its components smaller than `min_px` pixels. Needs a byte per pixel beside the
/// result (no label image), so that large thumbnails stay cheap.
pub fn drop_small(m: &[bool], w: usize, h: usize, min_px: usize) -> Vec<bool> {
    let mut out = m.to_vec();
    if min_px <= 1 {
        return out;
    }
    let mut seen = vec![false; m.len()];
    let (mut stack, mut comp) = (Vec::new(), Vec::new());
    for start in 0..m.len() {
        if !m[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        comp.clear();
        while let Some(i) = stack.pop() {
            comp.push(i);
            for j in neighbours4(i, w, h) {
                if m[j] && !seen[j] {
                    seen[j] = true;
                    stack.push(j);
                }
            }
        }
        if comp.len() < min_px {
            for &i in &comp {
                out[i] = false;
            }
        }
    }
    out
}

/// Hysteresis: `seed` grown through the pixels of `weak`, at most `steps` pixels away from it
/// (4-neighbour steps). Seeds are kept whether or not they are weak.
pub fn grow(seed: &[bool], weak: &[bool], w: usize, h: usize, steps: usize) -> Vec<bool> {
    let mut m = seed.to_vec();
    let mut front: Vec<usize> = (0..m.len()).filter(|&i| m[i]).collect();
    for _ in 0..steps {
        let mut next = Vec::new();
        for &i in &front {
            for j in neighbours4(i, w, h) {
                if weak[j] && !m[j] {
                    m[j] = true;
                    next.push(j);
                }
            }
        }
        if next.is_empty() {
            break;
        }
        front = next;
    }
    m
}

/// Dilation by a `(2r+1)²` square.
pub fn dilate(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    if r == 0 || w == 0 || h == 0 {
        return m.to_vec();
    }
    // Separable: rows, then columns, each a running count of the set pixels in the window
    // (O(1) per pixel whatever `r`; the column pass walks rows, so memory is read in order).
    let mut rows = vec![false; m.len()];
    for (line, out) in m.chunks_exact(w).zip(rows.chunks_exact_mut(w)) {
        let mut count = line[..=r.min(w - 1)].iter().filter(|&&v| v).count();
        for x in 0..w {
            out[x] = count > 0;
            if x >= r && line[x - r] {
                count -= 1;
            }
            if x + r + 1 < w && line[x + r + 1] {
                count += 1;
            }
        }
    }
    let mut counts = vec![0u32; w];
    for row in rows.chunks_exact(w).take(r + 1) {
        for (c, &v) in counts.iter_mut().zip(row) {
            *c += v as u32;
        }
    }
    let mut out = vec![false; m.len()];
    for y in 0..h {
        for (o, &c) in out[y * w..(y + 1) * w].iter_mut().zip(&counts) {
            *o = c > 0;
        }
        if y >= r {
            for (c, &v) in counts.iter_mut().zip(&rows[(y - r) * w..(y - r + 1) * w]) {
                *c -= v as u32;
            }
        }
        if y + r + 1 < h {
            let next = &rows[(y + r + 1) * w..(y + r + 2) * w];
            for (c, &v) in counts.iter_mut().zip(next) {
                *c += v as u32;
            }
        }
    }
    out
}

/// Erosion by a `(2r+1)²` square (pixels beyond the border count as set).
pub fn erode(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    let inv: Vec<bool> = m.iter().map(|&v| !v).collect();
    dilate(&inv, w, h, r).iter().map(|&v| !v).collect()
}

/// Opening (erosion, then dilation) by a `(2r+1)²` square: removes structures thinner than
/// `2r+1` pixels.
pub fn open(m: &[bool], w: usize, h: usize, r: usize) -> Vec<bool> {
    dilate(&erode(m, w, h, r), w, h, r)
}

/// Chamfer (3-4) distance of every set pixel to the nearest unset pixel or the border, in
/// pixels (0 outside the mask).
pub fn distance(m: &[bool], w: usize, h: usize) -> Vec<f32> {
    let big = u32::MAX / 4;
    let mut d: Vec<u32> = m.iter().map(|&v| if v { big } else { 0 }).collect();
    let at = |d: &Vec<u32>, x: isize, y: isize| -> u32 {
        if x < 0 || y < 0 || x >= w as isize || y >= h as isize {
            0
        } else {
            d[y as usize * w + x as usize]
        }
    };
    for y in 0..h as isize {
        for x in 0..w as isize {
            let i = y as usize * w + x as usize;
            if d[i] == 0 {
                continue;
            }
            let v = (at(&d, x - 1, y) + 3)
                .min(at(&d, x, y - 1) + 3)
                .min(at(&d, x - 1, y - 1) + 4)
                .min(at(&d, x + 1, y - 1) + 4);
            d[i] = d[i].min(v);
        }
    }
    for y in (0..h as isize).rev() {
        for x in (0..w as isize).rev() {
            let i = y as usize * w + x as usize;
            if d[i] == 0 {
                continue;
            }
            let v = (at(&d, x + 1, y) + 3)
                .min(at(&d, x, y + 1) + 3)
                .min(at(&d, x + 1, y + 1) + 4)
                .min(at(&d, x - 1, y + 1) + 4);
            d[i] = d[i].min(v);
        }
    }
    d.iter().map(|&v| v as f32 / 3.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilation_is_the_square_window_maximum_for_every_radius() {
        let (w, h) = (23usize, 17usize);
        let mut x = 0x2545_f491u32;
        let m: Vec<bool> = (0..w * h)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x % 29 == 0
            })
            .collect();
        for r in 0..=25 {
            let got = dilate(&m, w, h, r);
            for y in 0..h {
                for x in 0..w {
                    let want = (y.saturating_sub(r)..=(y + r).min(h - 1)).any(|yy| {
                        (x.saturating_sub(r)..=(x + r).min(w - 1)).any(|xx| m[yy * w + xx])
                    });
                    assert_eq!(got[y * w + x], want, "r {r} at ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn components_growth_and_distance() {
        // Two blobs: 3 pixels and 1 pixel.
        let m = [
            true, true, false, false, //
            true, false, false, true, //
        ];
        let (_, sizes) = components(&m, 4, 2);
        assert_eq!(sizes, vec![3, 1]);
        assert_eq!(drop_small(&m, 4, 2, 2).iter().filter(|&&v| v).count(), 3);
        let seed = [true, false, false, false];
        let weak = [false, true, true, true];
        assert_eq!(grow(&seed, &weak, 4, 1, 2), [true, true, true, false]);
        // A 5 × 5 block in a 7 × 7 image: its centre is 3 pixels from the outside.
        let block: Vec<bool> = (0..49)
            .map(|i| (1..6).contains(&(i % 7)) && (1..6).contains(&(i / 7)))
            .collect();
        assert_eq!(distance(&block, 7, 7)[3 * 7 + 3], 3.0);
        assert_eq!(distance(&block, 7, 7)[7 + 1], 1.0);
        let band = [false, true, true, true, true, true, false];
        assert_eq!(open(&band, 7, 1, 1), band);
        assert!(!open(&[false, true, false], 3, 1, 1)[1]);
    }
}

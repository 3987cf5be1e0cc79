//! The baseline JPEG decoder's AVX2 kernels: the inverse DCT, the chroma upsampling filter and
//! the YCbCr to RGB conversion, with the same i32/i16 arithmetic as the scalar code in
//! [`super`] (tests compare them).
//!
//! In: dequantized coefficient blocks, 8-bit sample rows. Out: 8-bit samples and RGB pixels,
//! in the tile's pixel coordinates. Compiled for x86-64 only and called only after runtime
//! feature detection has found AVX2; the unsafe blocks are the intrinsics themselves, on
//! bounds-checked slices and fixed-size arrays.

use super::{F0_298, F0_390, F0_541, F0_765, F0_899, F1_175};
use super::{F1_501, F1_847, F1_961, F2_053, F2_562, F3_072};
use std::arch::x86_64::*;

/// `pshufb` masks that interleave 16 R, 16 G and 16 B bytes into 48 RGB bytes: for each
/// 16-byte output block, one mask per channel (0x80 writes 0).
const fn interleave_masks() -> [[[u8; 16]; 3]; 3] {
    let mut m = [[[0x80u8; 16]; 3]; 3];
    let mut j = 0;
    while j < 48 {
        m[j / 16][j % 3][j % 16] = (j / 3) as u8;
        j += 1;
    }
    m
}
const MASKS: [[[u8; 16]; 3]; 3] = interleave_masks();

/// [`super::pairs`] sixteen columns (32 output bytes) at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pairs(ext: &[i16], up: &mut [u8], shift: u32, even: i16, odd: i16) {
    let m = (up.len() / 2).min(ext.len().saturating_sub(2));
    let mut i = 0;
    // SAFETY: the caller guarantees AVX2; the loads read 16 values at `i`, `i + 1` and
    // `i + 2` of `ext`, which holds at least `m + 2 >= i + 18`; the store writes 32 bytes
    // at `2 * i` of `up`, which holds at least `2 * m >= 2 * i + 32`.
    unsafe {
        let (e, o) = (_mm256_set1_epi16(even), _mm256_set1_epi16(odd));
        let count = _mm_cvtsi32_si128(shift as i32);
        while i + 16 <= m {
            let at = |k: usize| _mm256_loadu_si256(ext.as_ptr().add(i + k).cast());
            let (w0, w1, w2) = (at(0), at(1), at(2));
            let t = _mm256_add_epi16(_mm256_add_epi16(w1, w1), w1);
            let ev = _mm256_srl_epi16(_mm256_add_epi16(_mm256_add_epi16(t, w0), e), count);
            let od = _mm256_srl_epi16(_mm256_add_epi16(_mm256_add_epi16(t, w2), o), count);
            // Per 128-bit lane, unpack and pack keep the columns in order.
            let lo = _mm256_unpacklo_epi16(ev, od);
            let hi = _mm256_unpackhi_epi16(ev, od);
            _mm256_storeu_si256(
                up.as_mut_ptr().add(2 * i).cast(),
                _mm256_packus_epi16(lo, hi),
            );
            i += 16;
        }
    }
    super::pairs(&ext[i..], &mut up[2 * i..2 * m], shift, even, odd);
}

/// Transposes eight rows of eight i32.
///
/// # Safety
/// The CPU must have AVX2.
// Intrinsics need `unsafe` before Rust 1.87 (the declared MSRV is 1.85).
#[allow(unused_unsafe)]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn transpose(r: [__m256i; 8]) -> [__m256i; 8] {
    // SAFETY: register-only AVX2 operations; the caller guarantees AVX2.
    unsafe {
        let t: [__m256i; 8] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_epi32(a, b)
            } else {
                _mm256_unpackhi_epi32(a, b)
            }
        });
        // u[4h + j]: column j (and j + 4 in the high half) of rows 4h..4h + 4.
        let u: [__m256i; 8] = std::array::from_fn(|i| {
            let (h, j) = (i / 4, i % 4);
            let (a, b) = (t[4 * h + j / 2], t[4 * h + 2 + j / 2]);
            if j % 2 == 0 {
                _mm256_unpacklo_epi64(a, b)
            } else {
                _mm256_unpackhi_epi64(a, b)
            }
        });
        std::array::from_fn(|c| {
            if c < 4 {
                _mm256_permute2x128_si256::<0x20>(u[c], u[4 + c])
            } else {
                _mm256_permute2x128_si256::<0x31>(u[c - 4], u[c])
            }
        })
    }
}

/// [`super::idct_1d`] on eight lanes of i32, with wrapping arithmetic as there.
///
/// # Safety
/// The CPU must have AVX2.
// Intrinsics need `unsafe` before Rust 1.87 (the declared MSRV is 1.85).
#[allow(unused_unsafe)]
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn idct_1d(v: [__m256i; 8], bias: i32, round: i32, shift: i32) -> [__m256i; 8] {
    // SAFETY: register-only AVX2 operations; the caller guarantees AVX2.
    unsafe {
        let add = |a, b| _mm256_add_epi32(a, b);
        let sub = |a, b| _mm256_sub_epi32(a, b);
        let mul = |a, m: i32| _mm256_mullo_epi32(a, _mm256_set1_epi32(m));
        let z1 = mul(add(v[2], v[6]), F0_541);
        let tmp2 = add(z1, mul(v[6], -F1_847));
        let tmp3 = add(z1, mul(v[2], F0_765));
        let z2 = add(v[0], _mm256_set1_epi32(bias));
        let tmp0 = _mm256_slli_epi32::<13>(add(z2, v[4]));
        let tmp1 = _mm256_slli_epi32::<13>(sub(z2, v[4]));
        let (tmp10, tmp13) = (add(tmp0, tmp3), sub(tmp0, tmp3));
        let (tmp11, tmp12) = (add(tmp1, tmp2), sub(tmp1, tmp2));

        let (t0, t1, t2, t3) = (v[7], v[5], v[3], v[1]);
        let z5 = mul(add(add(t0, t2), add(t1, t3)), F1_175);
        let z1 = mul(add(t0, t3), -F0_899);
        let z2 = mul(add(t1, t2), -F2_562);
        let z3 = add(mul(add(t0, t2), -F1_961), z5);
        let z4 = add(mul(add(t1, t3), -F0_390), z5);
        let t0 = add(add(mul(t0, F0_298), z1), z3);
        let t1 = add(add(mul(t1, F2_053), z2), z4);
        let t2 = add(add(mul(t2, F3_072), z2), z3);
        let t3 = add(add(mul(t3, F1_501), z1), z4);

        let r = _mm256_set1_epi32(round);
        let count = _mm_cvtsi32_si128(shift);
        let d = |x| _mm256_sra_epi32(add(x, r), count);
        [
            d(add(tmp10, t3)),
            d(add(tmp11, t2)),
            d(add(tmp12, t1)),
            d(add(tmp13, t0)),
            d(sub(tmp13, t0)),
            d(sub(tmp12, t1)),
            d(sub(tmp11, t2)),
            d(sub(tmp10, t3)),
        ]
    }
}

/// [`super::idct_corner`]`::<8>` (the islow IDCT of a whole block) in AVX2 registers.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn idct(c: &[i32; 64], out: &mut [u8], stride: usize) {
    let out = &mut out[..7 * stride + 8];
    // SAFETY: the caller guarantees AVX2; each load reads row k (8 values) of `c`.
    unsafe {
        let rows: [__m256i; 8] =
            std::array::from_fn(|k| _mm256_loadu_si256(c.as_ptr().add(8 * k).cast()));
        // Pass 1 on the columns (lane = column), then pass 2 on the rows (lane = row).
        let ws = idct_1d(rows, 0, 1 << 10, 11);
        let px = transpose(idct_1d(transpose(ws), 1 << 4, 0, 18));
        // +128 and saturation to 0..=255, as the scalar clamp (the values are far inside
        // i16 after the shift by 18).
        let c128 = _mm256_set1_epi16(128);
        let pair = |a, b| {
            let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            _mm256_adds_epi16(w, c128)
        };
        for h in 0..2 {
            // Rows 4h, 4h + 2 in the low lane, 4h + 1, 4h + 3 in the high one.
            let v = _mm256_packus_epi16(
                pair(px[4 * h], px[4 * h + 1]),
                pair(px[4 * h + 2], px[4 * h + 3]),
            );
            let lanes = [
                _mm256_extract_epi64::<0>(v),
                _mm256_extract_epi64::<2>(v),
                _mm256_extract_epi64::<1>(v),
                _mm256_extract_epi64::<3>(v),
            ];
            for (i, q) in lanes.into_iter().enumerate() {
                let r = 4 * h + i;
                out[r * stride..r * stride + 8].copy_from_slice(&q.to_le_bytes());
            }
        }
    }
}

/// [`super::ycc_to_rgb`] sixteen pixels at a time.
///
/// # Safety
/// The CPU must have AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    let n = y.len().min(cb.len()).min(cr.len()).min(out.len() / 3);
    let mut i = 0;
    // SAFETY: the caller guarantees AVX2; every load reads 16 bytes at `i` of slices
    // holding at least `n >= i + 16` bytes, and every store writes 48 bytes at `3 * i` of
    // `out`, which holds at least `3 * n` bytes; the masks are 16-byte arrays.
    unsafe {
        let half = _mm256_set1_epi32(1 << 15);
        let mask = |b: usize, c: usize| _mm_loadu_si128(MASKS[b][c].as_ptr().cast());
        let masks = [
            [mask(0, 0), mask(0, 1), mask(0, 2)],
            [mask(1, 0), mask(1, 1), mask(1, 2)],
            [mask(2, 0), mask(2, 1), mask(2, 2)],
        ];
        // `(v * m + 32768) >> 16` exactly, in 16-bit lanes: the high half of the product
        // plus the rounding bit, bit 15 of the low half.
        let fix = |v: __m256i, m: i16| {
            let m = _mm256_set1_epi16(m);
            _mm256_add_epi16(
                _mm256_mulhi_epi16(v, m),
                _mm256_srli_epi16::<15>(_mm256_mullo_epi16(v, m)),
            )
        };
        let c128 = _mm256_set1_epi16(128);
        let widen =
            |s: &[u8], at: usize| _mm256_cvtepu8_epi16(_mm_loadu_si128(s.as_ptr().add(at).cast()));
        // Sixteen i16 lanes to sixteen saturated u8.
        let to_u8 = |v: __m256i| {
            _mm_packus_epi16(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v))
        };
        // Green's two products go to 32 bits as pairs (Cb, Cr) · (-22554, 18734).
        let g_mul = _mm256_set1_epi32((18734 << 16) | (-22554i32 & 0xffff));
        while i + 16 <= n {
            let y = widen(y, i);
            let cb = _mm256_sub_epi16(widen(cb, i), c128);
            let cr = _mm256_sub_epi16(widen(cr, i), c128);
            // 91881 = 65536 + 26345, 116130 = 2 * 65536 - 14942 and
            // -46802 = -65536 + 18734: the whole multiples of 65536 are exact, so only
            // the rest is rounded, as in the 32-bit formulas.
            let red = _mm256_add_epi16(_mm256_add_epi16(y, cr), fix(cr, 26345));
            let blue = _mm256_add_epi16(
                _mm256_add_epi16(y, _mm256_add_epi16(cb, cb)),
                fix(cb, -14942),
            );
            let g = |pairs: __m256i| {
                _mm256_srai_epi32::<16>(_mm256_add_epi32(_mm256_madd_epi16(pairs, g_mul), half))
            };
            // Unpacking and packing both work per 128-bit lane, so the order comes back.
            let green = _mm256_packs_epi32(
                g(_mm256_unpacklo_epi16(cb, cr)),
                g(_mm256_unpackhi_epi16(cb, cr)),
            );
            let green = _mm256_add_epi16(_mm256_sub_epi16(y, cr), green);
            let ch = [to_u8(red), to_u8(green), to_u8(blue)];
            let o = out.as_mut_ptr().add(3 * i);
            for (k, m) in masks.iter().enumerate() {
                let v = _mm_or_si128(
                    _mm_or_si128(_mm_shuffle_epi8(ch[0], m[0]), _mm_shuffle_epi8(ch[1], m[1])),
                    _mm_shuffle_epi8(ch[2], m[2]),
                );
                _mm_storeu_si128(o.add(16 * k).cast(), v);
            }
            i += 16;
        }
    }
    super::ycc_to_rgb(&y[i..n], &cb[i..n], &cr[i..n], &mut out[3 * i..3 * n]);
}

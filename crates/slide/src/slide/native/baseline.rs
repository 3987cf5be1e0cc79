//! A baseline JPEG decoder for the common slide tile, able to decode part of a tile.
//!
//! In: one JPEG stream (JPEGTables already spliced in), the tile size the TIFF promises, and a
//! rectangle of the tile in level pixels. Out: that rectangle's pixels, RGB8 or the raw samples,
//! written into the caller's buffer at the caller's row stride.
//!
//! It decodes what most slide tiles are: 8-bit sequential Huffman JPEG, three components in one
//! interleaved scan, luma sampled 1×1, 2×1 or 2×2 and both chroma components 1×1, with or
//! without restart markers. Anything else returns `Ok(false)` and is left to the general
//! decoder. With restart markers, each interval is decoded on its own (predictors reset, its
//! bits bounded by its marker), as libjpeg does, and a rectangle's decoding starts at the
//! interval holding its first row rather than at the top of the tile; markers out of sequence, bytes left in an
//! interval or a missing marker are errors, as libjpeg's warnings are to OpenSlide.
//!
//! The arithmetic is libjpeg's defaults, which OpenSlide uses: the accurate integer IDCT
//! (`jpeg_idct_islow`), "fancy" triangle upsampling (`h2v1`/`h2v2_fancy_upsample`) and the
//! fixed-point YCbCr conversion of `jdcolor.c`, samples saturated to 0–255 as libjpeg-turbo's
//! SIMD code does. Part of a tile costs less than all of it: entropy decoding stops after the
//! last needed MCU row, blocks outside the rectangle are parsed without being stored, and only
//! the needed blocks go through the IDCT (with one MCU of margin where chroma upsampling reads
//! its neighbours, so a rectangle's pixels equal the same pixels of a whole-tile decode).
//!
//! Strictness follows OpenSlide, which makes every libjpeg warning fatal: a scan that needs bits
//! past its data, a missing EOI, and (when the whole tile is decoded) leftover bytes after the
//! last MCU are errors. Sizes are checked against the TIFF before anything is allocated. One
//! difference remains by design: a partial decode stops at the last row it needs, so on a tile
//! whose data is damaged further down it returns the (correct) rows before the damage, where a
//! whole-tile decode, and OpenSlide, report the tile as corrupt; with restart markers it also
//! starts at the interval holding its first row, so damage in earlier intervals goes unseen.

use std::cell::RefCell;
use std::rc::Rc;

/// A rectangle of a tile, in the tile's pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub x: usize,
    /// Top row.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

const FAST_BITS: u32 = 10;
/// The run field of an end-of-block entry in [`Huffman::fast_ac`].
const EOB_RUN: i32 = 255;
/// Bits of lookahead in [`Huffman::skip`].
const SKIP_BITS: u32 = 13;
/// The end-of-block flag of a [`Huffman::skip`] entry.
const SKIP_EOB: u16 = 1 << 11;
/// AC decoding steps per refill of the bit buffer. A refill leaves at least 56 bits, and a step
/// takes at most 13 (a [`Huffman::skip`] entry) or 10 (a [`Huffman::fast_ac`] entry); the
/// long-code path, which may take 32, refills before and after itself. Testing the buffer
/// before every step instead mispredicted often (whenever it needed a refill, about every fifth
/// step): parsing a tissue tile took 64.5 µs that way against 60.7 µs, a whole decode 176
/// against 168 µs.
const REFILL_STEPS: usize = 4;

/// One Huffman table: a lookahead table and the canonical decoding tables behind it.
struct Huffman {
    /// `len << 8 | symbol` for codes of up to `FAST_BITS` bits, 0 for longer ones.
    fast: [u16; 1 << FAST_BITS],
    /// For AC tables: `value << 16 | run << 8 | total length` when the code and its extra bits
    /// fit in the lookahead, [`EOB_RUN`]` << 8 | length` for end-of-block, else 0.
    fast_ac: [i32; 1 << FAST_BITS],
    maxcode: [i32; 18],
    valoff: [i32; 17],
    vals: [u8; 256],
    /// Set when the table is taken from the per-thread cache: [`Huffman::skip`] pays off only
    /// for tables that come back.
    reused: std::cell::Cell<bool>,
    /// For AC tables that are reused, built when first needed: for each `SKIP_BITS`-bit
    /// lookahead, the whole coefficients (code and extra bits, runs of 16 included) that fit in
    /// it, for blocks that are parsed only: `bits | advance << 4`, where `advance` is how far
    /// they move the zig-zag index, with [`SKIP_EOB`] set when they end with end-of-block; 0
    /// when not even one fits.
    skip: std::cell::OnceCell<Box<[u16; 1 << SKIP_BITS]>>,
}

impl Huffman {
    fn new(counts: &[u8], vals: &[u8]) -> Result<Huffman, String> {
        let mut h = Huffman {
            fast: [0; 1 << FAST_BITS],
            fast_ac: [0; 1 << FAST_BITS],
            maxcode: [-1; 18],
            valoff: [0; 17],
            vals: [0; 256],
            reused: std::cell::Cell::new(false),
            skip: std::cell::OnceCell::new(),
        };
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        if total > 256 || total != vals.len() {
            return Err("JPEG: malformed Huffman table".into());
        }
        h.vals[..total].copy_from_slice(vals);
        let mut code = 0i32;
        let mut k = 0usize;
        for l in 1..=16usize {
            let n = counts[l - 1] as i32;
            h.valoff[l] = k as i32 - code;
            // As libjpeg: the codes of each length must fit, and none may be all ones.
            if code + n >= (1 << l) {
                return Err("JPEG: Huffman table with more codes than bits".into());
            }
            for _ in 0..n {
                if l as u32 <= FAST_BITS {
                    let shift = FAST_BITS - l as u32;
                    let first = (code as usize) << shift;
                    let entry = ((l as u16) << 8) | u16::from(vals[k]);
                    h.fast[first..first + (1 << shift)].fill(entry);
                }
                code += 1;
                k += 1;
            }
            h.maxcode[l] = if n > 0 { code - 1 } else { -1 };
            code <<= 1;
        }
        // Reachable only with all 16 bits read: a sentinel that ends the search.
        h.maxcode[17] = i32::MAX;
        for (i, &f) in h.fast.iter().enumerate() {
            if f == 0 {
                continue;
            }
            let len = u32::from(f >> 8);
            let (run, size) = (u32::from(f as u8 >> 4), u32::from(f as u8 & 15));
            if size == 0 && run == 0 {
                h.fast_ac[i] = (EOB_RUN << 8) | len as i32;
                continue;
            }
            if size == 0 || len + size > FAST_BITS {
                continue;
            }
            let bits = (i as u32 >> (FAST_BITS - len - size)) & ((1 << size) - 1);
            h.fast_ac[i] = (extend(bits, size) << 16) | (run << 8) as i32 | (len + size) as i32;
        }
        Ok(h)
    }
}

impl Huffman {
    /// The symbol whose code starts `window` (left-aligned in 16 bits), if that code has at
    /// most `avail` bits; and its length.
    fn code_within(&self, window: u32, avail: u32) -> Option<(u32, u8)> {
        let f = self.fast[(window >> (16 - FAST_BITS)) as usize];
        if f != 0 {
            let l = u32::from(f >> 8);
            return (l <= avail).then_some((l, f as u8));
        }
        (FAST_BITS + 1..=avail.min(16)).find_map(|l| {
            let code = (window >> (16 - l)) as i32;
            (code <= self.maxcode[l as usize]).then(|| {
                (
                    l,
                    self.vals[(self.valoff[l as usize] + code) as usize & 255],
                )
            })
        })
    }

    /// [`Huffman::skip`], built on first use (whole-tile decodes never need it), for tables
    /// that have been reused: building it takes ~50 µs, most of what parsing a tissue tile
    /// takes (66 µs), which tiles that carry their own tables would pay each time.
    fn skip_table(&self) -> Option<&[u16; 1 << SKIP_BITS]> {
        if !self.reused.get() {
            return None;
        }
        Some(self.skip.get_or_init(|| {
            let mut t = Box::new([0u16; 1 << SKIP_BITS]);
            for (i, e) in t.iter_mut().enumerate() {
                let window = (i as u32) << (16 - SKIP_BITS);
                let (mut used, mut advance) = (0u32, 0u32);
                while let Some((l, sym)) =
                    self.code_within(window << used & 0xffff, SKIP_BITS - used)
                {
                    let (run, size) = (u32::from(sym >> 4), u32::from(sym & 15));
                    if size == 0 && run < 15 {
                        *e = (used + l) as u16 | (advance << 4) as u16 | SKIP_EOB;
                        break;
                    }
                    let (bits, step) = if size == 0 {
                        (l, 16)
                    } else {
                        (l + size, run + 1)
                    };
                    // Past 62 the entry could never be taken (it must leave the index below 64).
                    if used + bits > SKIP_BITS || advance + step > 62 {
                        break;
                    }
                    used += bits;
                    advance += step;
                    *e = used as u16 | (advance << 4) as u16;
                }
            }
            t
        }))
    }
}

/// JPEG's sign extension of an `s`-bit magnitude category value.
#[inline(always)]
fn extend(v: u32, s: u32) -> i32 {
    // Without branches (the sign of a DC difference is as good as random), as libjpeg's
    // HUFF_EXTEND: values below 2^(s-1) are negative. For s = 0, v is 0 and so is the result.
    let v = v as i32;
    v + ((v - ((1 << s) >> 1)) >> 31 & ((-1i32 << s) + 1))
}

/// MSB-first bit reader over unstuffed scan data followed by zero padding. `fetched` bits have
/// been loaded; `n` of them are still in `buf`.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    buf: u64,
    n: u32,
}

impl Bits<'_> {
    /// At least 56 bits in `buf` afterwards.
    #[inline(always)]
    fn refill(&mut self) {
        let v = match self.data.get(self.pos..self.pos + 8) {
            Some(b) => u64::from_be_bytes(b.try_into().unwrap_or([0; 8])),
            None => {
                let mut b = [0u8; 8];
                for (i, x) in b.iter_mut().enumerate() {
                    *x = self.data.get(self.pos + i).copied().unwrap_or(0);
                }
                u64::from_be_bytes(b)
            }
        };
        self.buf |= v >> self.n;
        self.pos += ((63 - self.n) >> 3) as usize;
        self.n |= 56;
    }

    #[inline(always)]
    fn peek(&self, k: u32) -> u32 {
        (self.buf >> (64 - k)) as u32
    }

    #[inline(always)]
    fn consume(&mut self, k: u32) {
        self.buf <<= k;
        self.n -= k;
    }

    /// Bits consumed so far.
    fn consumed(&self) -> usize {
        self.pos * 8 - self.n as usize
    }

    /// One Huffman symbol; needs 16 bits in `buf`.
    #[inline(always)]
    fn symbol(&mut self, h: &Huffman) -> Result<u8, String> {
        let f = h.fast[self.peek(FAST_BITS) as usize];
        if f != 0 {
            self.consume(u32::from(f >> 8));
            return Ok(f as u8);
        }
        let bits = self.peek(16) as i32;
        for l in FAST_BITS + 1..=16 {
            let code = bits >> (16 - l);
            if code <= h.maxcode[l as usize] {
                self.consume(l);
                return Ok(h.vals[(h.valoff[l as usize] + code) as usize & 255]);
            }
        }
        Err("JPEG: bad Huffman code".into())
    }

    /// An `s`-bit extended value; needs `s` bits in `buf`.
    #[inline(always)]
    fn value(&mut self, s: u32) -> i32 {
        // `buf >> (64 - s)` without the undefined shift by 64 when s = 0.
        let v = ((self.buf >> 1) >> (63 - s)) as u32;
        self.consume(s);
        extend(v, s)
    }
}

/// Natural-order index of each zig-zag position (and 15 more, for corrupt runs past 63).
static ZIGZAG: [u8; 80] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 63,
    63, 63, 63, 63, 63, 63,
];

/// Decodes one block's coefficients into `coef` (dequantized, natural order) when `STORE`, or
/// only parses them (leaving `coef` alone) otherwise. Returns the zig-zag index of the last
/// coefficient written (0: only DC).
#[inline(always)]
fn block<const STORE: bool>(
    b: &mut Bits,
    dc: &Huffman,
    ac: &Huffman,
    pred: &mut i32,
    q: &[i32; 64],
    coef: &mut [i32; 64],
) -> Result<usize, String> {
    b.refill();
    let s = u32::from(b.symbol(dc)?);
    if s > 15 {
        return Err("JPEG: DC difference category past 15".into());
    }
    *pred = pred.wrapping_add(b.value(s));
    if STORE {
        *coef = [0; 64];
        coef[0] = i32::from(*pred as i16).wrapping_mul(q[0]);
    }
    let mut k = 1usize;
    let mut last = 0;
    let skip = if STORE { None } else { ac.skip_table() };
    'block: while k < 64 {
        b.refill();
        for _ in 0..REFILL_STEPS {
            if k >= 64 {
                break 'block;
            }
            // Parsing only: as many coefficients as one lookup covers, unless they could take
            // the index to 64 or past (then one at a time, as below).
            if let Some(skip) = skip {
                let e = skip[b.peek(SKIP_BITS) as usize];
                let advance = usize::from(e >> 4 & 127);
                if e != 0 && k + advance < 64 {
                    b.consume(u32::from(e & 15));
                    k += advance;
                    if e & SKIP_EOB != 0 {
                        break 'block;
                    }
                    continue;
                }
            }
            // The run before the next coefficient and its value (zero when not stored).
            let (run, v) = match ac.fast_ac[b.peek(FAST_BITS) as usize] {
                0 => {
                    b.refill();
                    let sym = u32::from(b.symbol(ac)?);
                    let (r, s) = (sym >> 4, sym & 15);
                    if s == 0 && r < 15 {
                        break 'block;
                    }
                    // No bits to read when s = 0.
                    let v = if STORE {
                        b.value(s)
                    } else {
                        b.consume(s);
                        0
                    };
                    b.refill();
                    if s == 0 {
                        // A run of sixteen zeros.
                        k += 16;
                        continue;
                    }
                    (r as usize, v)
                }
                f => {
                    b.consume((f & 255) as u32);
                    let run = (f >> 8) & 255;
                    if run == EOB_RUN {
                        break 'block;
                    }
                    (run as usize, f >> 16)
                }
            };
            k += run;
            if STORE {
                let z = ZIGZAG[k.min(79)] as usize;
                coef[z] = v.wrapping_mul(q[z]);
                last = k;
            }
            k += 1;
        }
    }
    // A run past coefficient 63 (corrupt data) wrote to 63 and ended the block, as in libjpeg,
    // which neither stops nor warns.
    Ok(last)
}

/// What the headers say.
struct Frame {
    width: usize,
    height: usize,
    /// Luma sampling (h, v); chroma is 1×1.
    hv: (usize, usize),
    /// Quantization table per component, natural order.
    quant: [[i32; 64]; 3],
    /// Huffman tables per component.
    dc: [Rc<Huffman>; 3],
    ac: [Rc<Huffman>; 3],
    /// Offset of the entropy-coded data.
    data: usize,
    /// MCUs per restart interval (DRI); 0: no restart markers.
    restart: usize,
}

/// A frame component: id, horizontal and vertical sampling, quantization table.
type Component = (u8, usize, usize, usize);

fn parse(stream: &[u8]) -> Result<Option<Frame>, String> {
    if !stream.starts_with(&[0xFF, 0xD8]) {
        return Err("JPEG: no SOI".into());
    }
    let mut qt: [Option<[i32; 64]>; 4] = [None; 4];
    let mut tables_dc: [Option<Rc<Huffman>>; 4] = Default::default();
    let mut tables_ac: [Option<Rc<Huffman>>; 4] = Default::default();
    let mut sof: Option<(usize, usize, [Component; 3])> = None;
    let mut restart = 0usize;
    for segment in super::markers::segments(stream) {
        let Ok((marker, seg, end)) = segment else {
            return Err("JPEG: bytes where a marker should be".into());
        };
        if end > stream.len() {
            return Err("JPEG: a marker segment runs past the data".into());
        }
        match marker {
            0xDB => {
                let mut s = seg;
                while let Some(&pq_tq) = s.first() {
                    let (precision, id) = (pq_tq >> 4, (pq_tq & 15) as usize);
                    let size = if precision == 0 { 64 } else { 128 };
                    if precision > 1 || id > 3 || s.len() < 1 + size {
                        return Err("JPEG: malformed quantization table".into());
                    }
                    let mut t = [0i32; 64];
                    for (k, &z) in ZIGZAG[..64].iter().enumerate() {
                        t[z as usize] = if precision == 0 {
                            i32::from(s[1 + k])
                        } else {
                            // libjpeg-turbo's SIMD IDCT multiplies by 16-bit signed values.
                            i32::from(i16::from_be_bytes([s[1 + 2 * k], s[2 + 2 * k]]))
                        };
                    }
                    qt[id] = Some(t);
                    s = &s[1 + size..];
                }
            }
            0xC4 => {
                let mut s = seg;
                while let Some(&tc_th) = s.first() {
                    let (class, id) = (tc_th >> 4, (tc_th & 15) as usize);
                    if class > 1 || id > 3 || s.len() < 17 {
                        return Err("JPEG: malformed Huffman table".into());
                    }
                    let n: usize = s[1..17].iter().map(|&c| c as usize).sum();
                    let bytes = s.get(1..17 + n).ok_or("JPEG: malformed Huffman table")?;
                    let table = huffman_cached(bytes)?;
                    if class == 0 {
                        tables_dc[id] = Some(table);
                    } else {
                        tables_ac[id] = Some(table);
                    }
                    s = &s[17 + n..];
                }
            }
            0xC0 | 0xC1 => {
                if seg.len() < 6 || seg[0] != 8 || seg[5] != 3 || seg.len() < 15 {
                    return Ok(None);
                }
                let height = u16::from_be_bytes([seg[1], seg[2]]) as usize;
                let width = u16::from_be_bytes([seg[3], seg[4]]) as usize;
                let mut comps = [(0u8, 0usize, 0usize, 0usize); 3];
                for (i, c) in comps.iter_mut().enumerate() {
                    let b = &seg[6 + 3 * i..9 + 3 * i];
                    *c = (
                        b[0],
                        (b[1] >> 4) as usize,
                        (b[1] & 15) as usize,
                        b[2] as usize,
                    );
                }
                sof = Some((width, height, comps));
            }
            // Progressive, lossless, arithmetic, hierarchical: the general decoder's.
            0xC2 | 0xC3 | 0xC5..=0xC7 | 0xC9..=0xCB | 0xCD..=0xCF => return Ok(None),
            0xDD => {
                if seg.len() != 2 {
                    return Err("JPEG: malformed restart interval".into());
                }
                restart = usize::from(u16::from_be_bytes([seg[0], seg[1]]));
            }
            0xDA => {
                let Some((width, height, comps)) = sof else {
                    return Err("JPEG: scan before frame header".into());
                };
                let hv = (comps[0].1, comps[0].2);
                // libjpeg upsamples a chroma plane of 2 columns or fewer by replication, not
                // the triangle filter this decoder implements: such images are the other's.
                if !matches!(hv, (1, 1) | (2, 1) | (2, 2))
                    || hv.0 == 2 && width.div_ceil(2) <= 2
                    || comps[1..].iter().any(|c| (c.1, c.2) != (1, 1))
                    || width == 0
                    || height == 0
                {
                    return Ok(None);
                }
                if seg.len() != 10 || seg[0] != 3 || seg[7] != 0 || seg[8] != 63 || seg[9] != 0 {
                    return Ok(None);
                }
                let mut quant = [[0i32; 64]; 3];
                let mut dc: [Option<Rc<Huffman>>; 3] = Default::default();
                let mut ac: [Option<Rc<Huffman>>; 3] = Default::default();
                for i in 0..3 {
                    if seg[1 + 2 * i] != comps[i].0 {
                        return Ok(None);
                    }
                    let t = seg[2 + 2 * i];
                    let (d, a) = ((t >> 4) as usize, (t & 15) as usize);
                    dc[i] = tables_dc.get(d).cloned().flatten();
                    ac[i] = tables_ac.get(a).cloned().flatten();
                    quant[i] = qt
                        .get(comps[i].3)
                        .copied()
                        .flatten()
                        .ok_or("JPEG: component uses an undefined quantization table")?;
                }
                let (Some(dc), Some(ac)) = (all(dc), all(ac)) else {
                    return Err("JPEG: scan uses an undefined Huffman table".into());
                };
                return Ok(Some(Frame {
                    width,
                    height,
                    hv,
                    quant,
                    dc,
                    ac,
                    data: end,
                    restart,
                }));
            }
            _ => {}
        }
    }
    Err("JPEG: no scan".into())
}

/// All three, or `None` when one is missing.
fn all<T>([a, b, c]: [Option<T>; 3]) -> Option<[T; 3]> {
    Some([a?, b?, c?])
}

/// Copies the entropy-coded data without its stuffing into `out` (cleared first) and returns
/// whether it ended at EOI. Each restart marker, which must come in sequence (RST0, RST1, …
/// RST7, RST0, …), ends an interval: `bounds` (cleared first) gets the offset in `out` where
/// each interval after the first starts. Any other marker ends the data (not at EOI).
fn unstuff(data: &[u8], out: &mut Vec<u8>, bounds: &mut Vec<usize>) -> bool {
    out.clear();
    bounds.clear();
    let mut at = 0;
    while let Some(p) = memchr::memchr(0xFF, &data[at..]) {
        out.extend_from_slice(&data[at..at + p + 1]);
        // Fill bytes (0xFF) may precede the 0x00 of stuffing or a marker, as libjpeg reads it.
        let mut q = at + p + 1;
        while data.get(q) == Some(&0xFF) {
            q += 1;
        }
        match data.get(q) {
            Some(0x00) => at = q + 1,
            Some(&m) if (0xD0..=0xD7).contains(&m) && usize::from(m - 0xD0) == bounds.len() % 8 => {
                out.pop();
                bounds.push(out.len());
                at = q + 1;
            }
            next => {
                out.pop();
                return next == Some(&0xD9);
            }
        }
    }
    out.extend_from_slice(&data[at..]);
    false
}

/// One component's decoded samples over a range of whole blocks.
struct Plane {
    /// First block column and row covered.
    bx: usize,
    by: usize,
    /// Width in samples (a multiple of 8) and rows.
    w: usize,
    samples: Vec<u8>,
}

impl Plane {
    #[inline(always)]
    fn row(&self, y: usize) -> &[u8] {
        let start = (y - self.by * 8) * self.w;
        &self.samples[start..start + self.w]
    }
}

/// How many Huffman tables each thread keeps built (a slide's tiles share a few).
const TABLE_CACHE: usize = 8;

thread_local! {
    static TABLES: RefCell<Vec<(Vec<u8>, Rc<Huffman>)>> = const { RefCell::new(Vec::new()) };
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Buffers reused from tile to tile on one thread.
#[derive(Default)]
struct Scratch {
    scan: Vec<u8>,
    /// Where each restart interval after the first starts in `scan`.
    bounds: Vec<usize>,
    planes: [Vec<u8>; 3],
}

/// The Huffman table for `bytes` (16 counts, then the symbols), built once per thread: the
/// tiles of a slide repeat the same few tables, and building one costs more than decoding a
/// background tile.
fn huffman_cached(bytes: &[u8]) -> Result<Rc<Huffman>, String> {
    TABLES.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((_, t)) = cache.iter().find(|(k, _)| k == bytes) {
            t.reused.set(true);
            return Ok(t.clone());
        }
        let t = Rc::new(Huffman::new(&bytes[..16], &bytes[16..])?);
        if cache.len() == TABLE_CACHE {
            cache.remove(0);
        }
        cache.push((bytes.to_vec(), t.clone()));
        Ok(t)
    })
}

/// Unstuffed scan data and where its restart intervals start.
struct Scan<'a> {
    data: &'a [u8],
    /// Start of each interval after the first.
    bounds: &'a [usize],
}

impl<'a> Scan<'a> {
    /// The entropy-coded bytes of interval `k` (`None` past the last).
    fn interval(&self, k: usize) -> Option<&'a [u8]> {
        let start = if k == 0 { 0 } else { *self.bounds.get(k - 1)? };
        let end = self.bounds.get(k).copied().unwrap_or(self.data.len());
        Some(&self.data[start..end])
    }

    fn intervals(&self) -> usize {
        self.bounds.len() + 1
    }
}

/// Decodes `rect` of `stream` into `out` (rows `stride` bytes apart; 3 bytes per pixel). The
/// samples are converted from YCbCr to RGB when `ycbcr` is set and written as stored otherwise.
/// `Ok(false)`: a stream this decoder does not take (nothing written).
pub fn decode(
    stream: &[u8],
    width: usize,
    height: usize,
    rect: Rect,
    ycbcr: bool,
    out: &mut [u8],
    stride: usize,
) -> Result<bool, String> {
    let Some(f) = parse(stream)? else {
        return Ok(false);
    };
    if (f.width, f.height) != (width, height) {
        return Err(format!(
            "JPEG is {} × {}, the tile is {width} × {height}",
            f.width, f.height
        ));
    }
    let fits = |start: usize, len: usize, size: usize| {
        len > 0 && start.checked_add(len).is_some_and(|end| end <= size)
    };
    let needed = (rect.h.saturating_sub(1))
        .checked_mul(stride)
        .and_then(|v| v.checked_add(rect.w.saturating_mul(3)));
    if !fits(rect.x, rect.w, width)
        || !fits(rect.y, rect.h, height)
        || needed.is_none_or(|n| out.len() < n)
    {
        return Err(format!(
            "JPEG: region {rect:?} is outside the tile or the buffer"
        ));
    }
    SCRATCH.with(|scratch| {
        let Scratch {
            scan,
            bounds,
            planes,
        } = &mut *scratch.borrow_mut();
        if !unstuff(&stream[f.data..], scan, bounds) {
            return Err(
                "JPEG: the scan does not end at EOI (truncated, or a marker out of place)".into(),
            );
        }
        let scan = Scan { data: scan, bounds };
        // As many intervals as the MCUs make (one without a restart interval), counted before
        // anything is decoded, so that a partial decode starting further down reads the right
        // one; a marker with nothing after it past the last MCU is let through, as libjpeg does.
        let mcus = f.width.div_ceil(8 * f.hv.0) * f.height.div_ceil(8 * f.hv.1);
        let expected = mcus
            .checked_div(f.restart)
            .map_or(1, |_| mcus.div_ceil(f.restart));
        let have = scan.intervals();
        if have < expected {
            return Err(format!(
                "JPEG: {have} restart intervals where {} MCUs in intervals of {} make {expected}",
                mcus, f.restart
            ));
        }
        if (expected..have).any(|k| scan.interval(k).is_some_and(|d| !d.is_empty())) {
            return Err("JPEG: scan data in restart intervals after the last MCU".into());
        }
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("bmi2") {
            // SAFETY: the CPU supports the features the function is compiled for.
            return unsafe { decode_avx2(&f, &scan, planes, rect, ycbcr, out, stride) };
        }
        decode_frame::<false>(&f, &scan, planes, rect, ycbcr, out, stride)
    })?;
    Ok(true)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,bmi2")]
unsafe fn decode_avx2(
    f: &Frame,
    scan: &Scan<'_>,
    buffers: &mut [Vec<u8>; 3],
    rect: Rect,
    ycbcr: bool,
    out: &mut [u8],
    stride: usize,
) -> Result<(), String> {
    decode_frame::<true>(f, scan, buffers, rect, ycbcr, out, stride)
}

/// `AVX2`: compiled into [`decode_avx2`], where the CPU has AVX2.
#[inline(always)]
fn decode_frame<const AVX2: bool>(
    f: &Frame,
    scan: &Scan<'_>,
    buffers: &mut [Vec<u8>; 3],
    rect: Rect,
    ycbcr: bool,
    out: &mut [u8],
    stride: usize,
) -> Result<(), String> {
    let (hs, vs) = f.hv;
    let (mcu_w, mcu_h) = (8 * hs, 8 * vs);
    let mcus_across = f.width.div_ceil(mcu_w);
    let mcus_down = f.height.div_ceil(mcu_h);
    // MCUs holding the rectangle's luma, and those holding the chroma samples its
    // upsampling reads: an even output column (row) reads the chroma column (row) before its
    // own, an odd one the one after, clamped to the image.
    let (mx0, mx1) = (rect.x / mcu_w, (rect.x + rect.w - 1) / mcu_w);
    let (my0, my1) = (rect.y / mcu_h, (rect.y + rect.h - 1) / mcu_h);
    let (chroma_w, chroma_h) = (f.width.div_ceil(hs), f.height.div_ceil(vs));
    let reads = |first: usize, last: usize, factor: usize, size: usize| {
        if factor == 1 {
            return (first / 8, last / 8);
        }
        let lo = if first % 2 == 0 {
            (first / 2).saturating_sub(1)
        } else {
            first / 2
        };
        let hi = if last % 2 == 1 {
            (last / 2 + 1).min(size - 1)
        } else {
            last / 2
        };
        (lo / 8, hi / 8)
    };
    let (cx0, cx1) = reads(rect.x, rect.x + rect.w - 1, hs, chroma_w);
    let (cy0, cy1) = reads(rect.y, rect.y + rect.h - 1, vs, chroma_h);
    let whole = rect.x == 0 && rect.y == 0 && rect.w == f.width && rect.h == f.height;

    // Every block of a plane is written by the IDCT below, so reused buffers need no clearing.
    let [b0, b1, b2] = buffers;
    let take = |buf: &mut Vec<u8>, bx: usize, by: usize, blocks_w: usize, blocks_h: usize| {
        let mut samples = std::mem::take(buf);
        samples.resize(blocks_w * 8 * blocks_h * 8, 0);
        Plane {
            bx,
            by,
            w: blocks_w * 8,
            samples,
        }
    };
    let mut planes = [
        take(
            b0,
            mx0 * hs,
            my0 * vs,
            (mx1 - mx0 + 1) * hs,
            (my1 - my0 + 1) * vs,
        ),
        take(b1, cx0, cy0, cx1 - cx0 + 1, cy1 - cy0 + 1),
        take(b2, cx0, cy0, cx1 - cx0 + 1, cy1 - cy0 + 1),
    ];
    // With restart markers, decoding starts at the interval holding the first MCU row the
    // rectangle needs (each interval stands alone), not at the top of the tile.
    let first_row = my0.min(cy0);
    let mut interval = (first_row * mcus_across)
        .checked_div(f.restart)
        .unwrap_or(0);
    let start = interval * f.restart;
    let mut seg = scan
        .interval(interval)
        .ok_or_else(|| format!("JPEG: restart marker {interval} is missing"))?;
    let mut b = Bits {
        data: seg,
        pos: 0,
        buf: 0,
        n: 0,
    };
    let mut mcu = start;
    let dc: [&Huffman; 3] = std::array::from_fn(|i| &*f.dc[i]);
    let ac: [&Huffman; 3] = std::array::from_fn(|i| &*f.ac[i]);
    let mut pred = [0i32; 3];
    // One MCU's stored blocks (at most 4 luma and 2 chroma): all of them are entropy decoded
    // before any goes through the IDCT, whose vector loads would otherwise wait for the
    // coefficient stores just made.
    let mut coefs = [[0i32; 64]; 6];
    let mut lasts = [0usize; 6];
    let last_row = my1.max(cy1);
    for my in start / mcus_across..=last_row {
        let luma_row = (my0..=my1).contains(&my);
        let chroma_row = (cy0..=cy1).contains(&my);
        // The last row stops after the last MCU it needs.
        let across = if my == last_row {
            let luma_end = if luma_row { mx1 + 1 } else { 0 };
            let chroma_end = if chroma_row { cx1 + 1 } else { 0 };
            luma_end.max(chroma_end)
        } else {
            mcus_across
        };
        let from = if my == start / mcus_across {
            start % mcus_across
        } else {
            0
        };
        for mx in from..across {
            if f.restart > 0 && mcu > start && mcu % f.restart == 0 {
                // The interval must have held exactly its MCUs: no bits wanted past it, no
                // whole byte left (libjpeg skips them with a warning, which OpenSlide fails on).
                if b.consumed() > seg.len() * 8 || seg.len() * 8 - b.consumed() >= 8 {
                    return Err(format!(
                        "JPEG: restart interval {interval} does not hold its {} MCUs",
                        f.restart
                    ));
                }
                interval += 1;
                seg = scan
                    .interval(interval)
                    .ok_or_else(|| format!("JPEG: restart marker {interval} is missing"))?;
                b = Bits {
                    data: seg,
                    pos: 0,
                    buf: 0,
                    n: 0,
                };
                pred = [0; 3];
            }
            mcu += 1;
            let luma = luma_row && (mx0..=mx1).contains(&mx);
            let chroma = chroma_row && (cx0..=cx1).contains(&mx);
            let mut n = 0;
            for _ in 0..vs * hs {
                if luma {
                    lasts[n] = block::<true>(
                        &mut b,
                        dc[0],
                        ac[0],
                        &mut pred[0],
                        &f.quant[0],
                        &mut coefs[n],
                    )?;
                    n += 1;
                } else {
                    block::<false>(
                        &mut b,
                        dc[0],
                        ac[0],
                        &mut pred[0],
                        &f.quant[0],
                        &mut coefs[0],
                    )?;
                }
            }
            for c in 1..3 {
                if chroma {
                    lasts[n] = block::<true>(
                        &mut b,
                        dc[c],
                        ac[c],
                        &mut pred[c],
                        &f.quant[c],
                        &mut coefs[n],
                    )?;
                    n += 1;
                } else {
                    block::<false>(
                        &mut b,
                        dc[c],
                        ac[c],
                        &mut pred[c],
                        &f.quant[c],
                        &mut coefs[0],
                    )?;
                }
            }
            let mut n = 0;
            if luma {
                let p = &mut planes[0];
                for v in 0..vs {
                    for h in 0..hs {
                        let x = (mx * hs + h - p.bx) * 8;
                        let y = (my * vs + v - p.by) * 8;
                        idct::<AVX2>(&coefs[n], lasts[n], &mut p.samples[y * p.w + x..], p.w);
                        n += 1;
                    }
                }
            }
            if chroma {
                for p in &mut planes[1..] {
                    let x = (mx - p.bx) * 8;
                    let y = (my - p.by) * 8;
                    idct::<AVX2>(&coefs[n], lasts[n], &mut p.samples[y * p.w + x..], p.w);
                    n += 1;
                }
            }
        }
        if b.consumed() > seg.len() * 8 {
            return Err(
                "JPEG: the scan ends before its last MCU (corrupt or truncated data)".into(),
            );
        }
    }
    if whole && last_row + 1 == mcus_down && seg.len() * 8 - b.consumed() >= 8 {
        return Err(format!(
            "JPEG: {} bytes of scan data after the last MCU",
            (seg.len() * 8 - b.consumed()) / 8
        ));
    }

    // Upsample and convert, one output row at a time.
    let n = rect.w;
    let mut cb = vec![0u8; n];
    let mut cr = vec![0u8; n];
    let mut ext = Vec::with_capacity(n / 2 + 4);
    let mut up = Vec::with_capacity(n + 4);
    for (row, y) in (rect.y..rect.y + rect.h).enumerate() {
        let luma = &planes[0].row(y)[rect.x - planes[0].bx * 8..][..n];
        for (c, dst) in [(1, &mut cb), (2, &mut cr)] {
            let p = &planes[c];
            match (hs, vs) {
                (1, 1) => dst.copy_from_slice(&p.row(y)[rect.x - p.bx * 8..][..n]),
                (2, 1) => {
                    let r = p.row(y);
                    upsample_across::<AVX2>(
                        r,
                        None,
                        p.bx * 8,
                        chroma_w,
                        rect.x,
                        dst,
                        &mut ext,
                        &mut up,
                    );
                }
                _ => {
                    let cy = y / 2;
                    let far = if y % 2 == 0 {
                        cy.saturating_sub(1)
                    } else {
                        (cy + 1).min(chroma_h - 1)
                    };
                    let (a, b) = (p.row(cy), Some(p.row(far)));
                    upsample_across::<AVX2>(
                        a,
                        b,
                        p.bx * 8,
                        chroma_w,
                        rect.x,
                        dst,
                        &mut ext,
                        &mut up,
                    );
                }
            }
        }
        let o = &mut out[row * stride..row * stride + n * 3];
        if ycbcr {
            #[cfg(target_arch = "x86_64")]
            if AVX2 {
                // SAFETY: AVX2 is set only in `decode_avx2`, called where the CPU has AVX2.
                unsafe { simd::ycc_to_rgb(luma, &cb, &cr, o) };
                continue;
            }
            ycc_to_rgb(luma, &cb, &cr, o);
        } else {
            for (((px, &y), &b), &r) in o.chunks_exact_mut(3).zip(luma).zip(&cb).zip(&cr) {
                px.copy_from_slice(&[y, b, r]);
            }
        }
    }
    for (buf, p) in [b0, b1, b2].into_iter().zip(planes) {
        *buf = p.samples;
    }
    Ok(())
}

/// libjpeg's fancy upsampling by 2 across (`h2v1_fancy_upsample`, or `h2v2_fancy_upsample` when
/// `far` is given), for output columns `x0..x0 + dst.len()`. `near` is the output row's chroma
/// row and `far` the one above (even rows) or below (odd rows); both start at chroma column
/// `first`; `cw` is the image's chroma width. The columns past the image edges replicate the
/// edge column, which turns libjpeg's first- and last-column cases into the general formula.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn upsample_across<const AVX2: bool>(
    near: &[u8],
    far: Option<&[u8]>,
    first: usize,
    cw: usize,
    x0: usize,
    dst: &mut [u8],
    ext: &mut Vec<i16>,
    up: &mut Vec<u8>,
) {
    let c0 = x0 / 2;
    let last = x0 + dst.len() - 1;
    let c1 = last / 2;
    // At most 4 × 255: the sums and the filter below fit in 16 bits.
    let sum = |c: usize| match far {
        Some(b) => i16::from(near[c - first]) * 3 + i16::from(b[c - first]),
        None => i16::from(near[c - first]),
    };
    // The chroma columns either side are read only where an output column needs them (and
    // exist); elsewhere the edge column stands in.
    ext.clear();
    ext.push(sum(if x0 % 2 == 0 && c0 > 0 { c0 - 1 } else { c0 }));
    let a = &near[c0 - first..=c1 - first];
    match far {
        Some(b) => {
            let b = &b[c0 - first..=c1 - first];
            ext.extend(
                a.iter()
                    .zip(b)
                    .map(|(&a, &b)| i16::from(a) * 3 + i16::from(b)),
            );
        }
        None => ext.extend(a.iter().map(|&a| i16::from(a))),
    }
    ext.push(sum(if last % 2 == 1 && c1 + 1 < cw {
        c1 + 1
    } else {
        c1
    }));
    let (shift, even, odd) = if far.is_some() { (4, 8, 7) } else { (2, 1, 2) };
    up.clear();
    up.resize(2 * (c1 - c0 + 1), 0);
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: AVX2 is set only in `decode_avx2`, called where the CPU has AVX2.
        unsafe { simd::pairs(ext, up, shift, even, odd) };
        dst.copy_from_slice(&up[x0 - 2 * c0..][..dst.len()]);
        return;
    }
    pairs(ext, up, shift, even, odd);
    dst.copy_from_slice(&up[x0 - 2 * c0..][..dst.len()]);
}

/// The filter of [`upsample_across`]: for each window `w` of three column values, the even
/// output `(3 w[1] + w[0] + even) >> shift` and the odd one `(3 w[1] + w[2] + odd) >> shift`.
#[inline(always)]
fn pairs(ext: &[i16], up: &mut [u8], shift: u32, even: i16, odd: i16) {
    for (o, w) in up.chunks_exact_mut(2).zip(ext.windows(3)) {
        o[0] = ((w[1] * 3 + w[0] + even) >> shift) as u8;
        o[1] = ((w[1] * 3 + w[2] + odd) >> shift) as u8;
    }
}

/// `jdcolor.c`'s `ycc_rgb_convert` arithmetic, saturated.
#[inline(always)]
fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    const ONE_HALF: i32 = 1 << 15;
    for (((px, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        let (y, cb, cr) = (i32::from(y), i32::from(cb) - 128, i32::from(cr) - 128);
        let r = y + ((91881 * cr + ONE_HALF) >> 16);
        let g = y + ((-22554 * cb + ONE_HALF - 46802 * cr) >> 16);
        let b = y + ((116130 * cb + ONE_HALF) >> 16);
        px[0] = r.clamp(0, 255) as u8;
        px[1] = g.clamp(0, 255) as u8;
        px[2] = b.clamp(0, 255) as u8;
    }
}

/// AVX2 versions of the per-pixel loops, with the same arithmetic as the scalar ones.
#[cfg(target_arch = "x86_64")]
mod simd;

/// `jpeg_idct_islow` of one dequantized block into 8 rows of `out`, `stride` apart. `last` is
/// the zig-zag index of the last nonzero coefficient: blocks whose coefficients all lie in the
/// top-left 2×2 or 4×4 corner (most of a slide's) take the same arithmetic with the zero terms
/// left out.
#[inline(always)]
fn idct<const AVX2: bool>(c: &[i32; 64], last: usize, out: &mut [u8], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if AVX2 && last > 0 {
        // SAFETY: AVX2 is set only in `decode_avx2`, called where the CPU has AVX2.
        return unsafe { simd::idct(c, out, stride) };
    }
    if last == 0 {
        let v = ((c[0].wrapping_shl(2).wrapping_add(16)) >> 5)
            .wrapping_add(128)
            .clamp(0, 255) as u8;
        for r in 0..8 {
            out[r * stride..r * stride + 8].fill(v);
        }
        return;
    }
    // Zig-zag positions 0..=2 lie in rows and columns 0..2, 0..=9 in 0..4.
    if last <= 2 {
        idct_corner::<2>(c, out, stride)
    } else if last <= 9 {
        idct_corner::<4>(c, out, stride)
    } else {
        idct_corner::<8>(c, out, stride)
    }
}

/// The islow IDCT of a block whose nonzero coefficients lie in rows and columns `0..N`.
#[inline(always)]
fn idct_corner<const N: usize>(c: &[i32; 64], out: &mut [u8], stride: usize) {
    const CB: u32 = 13;
    const P1: u32 = 2;
    // Pass 1: columns, all eight at once (lane = column); rows from N on are zero.
    let ws = idct_1d(
        std::array::from_fn(|k| std::array::from_fn(|l| if k < N { c[k * 8 + l] } else { 0 })),
        0,
        CB - P1,
    );
    // Transpose: lane = row; columns from N on are zero.
    let t: [[i32; 8]; 8] =
        std::array::from_fn(|k| std::array::from_fn(|l| if k < N { ws[l][k] } else { 0 }));
    let res = idct_1d(t, 1 << (P1 + 2), CB + P1 + 3);
    // res[k][l]: row l, column k.
    for r in 0..8 {
        let o = &mut out[r * stride..r * stride + 8];
        for (k, px) in o.iter_mut().enumerate() {
            *px = res[k][r].wrapping_add(128).clamp(0, 255) as u8;
        }
    }
}

/// `jidctint.c`'s constants: `FIX(x)` = round(x · 2^13).
const F0_298: i32 = 2446;
const F0_390: i32 = 3196;
const F0_541: i32 = 4433;
const F0_765: i32 = 6270;
const F0_899: i32 = 7373;
const F1_175: i32 = 9633;
const F1_501: i32 = 12299;
const F1_847: i32 = 15137;
const F1_961: i32 = 16069;
const F2_053: i32 = 16819;
const F2_562: i32 = 20995;
const F3_072: i32 = 25172;

/// One 1-D pass of the islow IDCT over 8 lanes: `v[k]` is coefficient k of each lane. `bias` is
/// added to the DC term (pass 2's rounding), and the results are shifted right by `shift`
/// (pass 1 rounds with DESCALE; pass 2's rounding is the bias).
#[inline(always)]
fn idct_1d(v: [[i32; 8]; 8], bias: i32, shift: u32) -> [[i32; 8]; 8] {
    let round = if bias == 0 { 1 << (shift - 1) } else { 0 };
    let mut out = [[0i32; 8]; 8];
    for l in 0..8 {
        let z2 = v[2][l];
        let z3 = v[6][l];
        let z1 = z2.wrapping_add(z3).wrapping_mul(F0_541);
        let tmp2 = z1.wrapping_add(z3.wrapping_mul(-F1_847));
        let tmp3 = z1.wrapping_add(z2.wrapping_mul(F0_765));
        let z2 = v[0][l].wrapping_add(bias);
        let z3 = v[4][l];
        let tmp0 = z2.wrapping_add(z3).wrapping_shl(13);
        let tmp1 = z2.wrapping_sub(z3).wrapping_shl(13);
        let tmp10 = tmp0.wrapping_add(tmp3);
        let tmp13 = tmp0.wrapping_sub(tmp3);
        let tmp11 = tmp1.wrapping_add(tmp2);
        let tmp12 = tmp1.wrapping_sub(tmp2);

        let (t0, t1, t2, t3) = (v[7][l], v[5][l], v[3][l], v[1][l]);
        let z1 = t0.wrapping_add(t3);
        let z2 = t1.wrapping_add(t2);
        let z3 = t0.wrapping_add(t2);
        let z4 = t1.wrapping_add(t3);
        let z5 = z3.wrapping_add(z4).wrapping_mul(F1_175);
        let t0 = t0.wrapping_mul(F0_298);
        let t1 = t1.wrapping_mul(F2_053);
        let t2 = t2.wrapping_mul(F3_072);
        let t3 = t3.wrapping_mul(F1_501);
        let z1 = z1.wrapping_mul(-F0_899);
        let z2 = z2.wrapping_mul(-F2_562);
        let z3 = z3.wrapping_mul(-F1_961).wrapping_add(z5);
        let z4 = z4.wrapping_mul(-F0_390).wrapping_add(z5);
        let t0 = t0.wrapping_add(z1).wrapping_add(z3);
        let t1 = t1.wrapping_add(z2).wrapping_add(z4);
        let t2 = t2.wrapping_add(z2).wrapping_add(z3);
        let t3 = t3.wrapping_add(z1).wrapping_add(z4);

        let d = |x: i32| x.wrapping_add(round) >> shift;
        out[0][l] = d(tmp10.wrapping_add(t3));
        out[7][l] = d(tmp10.wrapping_sub(t3));
        out[1][l] = d(tmp11.wrapping_add(t2));
        out[6][l] = d(tmp11.wrapping_sub(t2));
        out[2][l] = d(tmp12.wrapping_add(t1));
        out[5][l] = d(tmp12.wrapping_sub(t1));
        out[3][l] = d(tmp13.wrapping_add(t0));
        out[4][l] = d(tmp13.wrapping_sub(t0));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

    /// A deterministic test image with edges, gradients and colour.
    fn image(w: usize, h: usize) -> Vec<u8> {
        (0..w * h)
            .flat_map(|i| {
                let (x, y) = (i % w, i / w);
                let r = if (x / 9 + y / 7) % 2 == 0 { 230 } else { 40 };
                [r, (x * 255 / w) as u8, ((x * 7 + y * 13) % 256) as u8]
            })
            .collect()
    }

    fn encode(
        w: usize,
        h: usize,
        sampling: SamplingFactor,
        setup: impl Fn(&mut Encoder<&mut Vec<u8>>),
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut e = Encoder::new(&mut out, 85);
        e.set_sampling_factor(sampling);
        setup(&mut e);
        e.encode(&image(w, h), w as u16, h as u16, ColorType::Rgb)
            .expect("encodes");
        out
    }

    fn whole(stream: &[u8], w: usize, h: usize) -> Result<Option<Vec<u8>>, String> {
        let mut out = vec![0u8; w * h * 3];
        let rect = Rect { x: 0, y: 0, w, h };
        Ok(decode(stream, w, h, rect, true, &mut out, w * 3)?.then_some(out))
    }

    fn zune(stream: &[u8]) -> Vec<u8> {
        use zune_jpeg::zune_core::{bytestream::ZCursor, options::DecoderOptions};
        let mut d = zune_jpeg::JpegDecoder::new_with_options(
            ZCursor::new(stream),
            DecoderOptions::default().set_strict_mode(true),
        );
        d.decode().expect("zune decodes the test image")
    }

    #[test]
    fn matches_the_general_decoder_and_every_crop_equals_the_whole() {
        for (w, h) in [(256, 256), (100, 75), (33, 200)] {
            for sampling in [
                SamplingFactor::R_4_2_0,
                SamplingFactor::R_4_2_2,
                SamplingFactor::R_4_4_4,
            ] {
                let j = encode(w, h, sampling, |_| {});
                let full = whole(&j, w, h)
                    .unwrap()
                    .expect("a baseline stream is taken");
                // zune-jpeg rounds a little differently from libjpeg, and where the size is not
                // a whole number of MCUs it upsamples the last column and row from the padding
                // (libjpeg, and this decoder, replicate the last real ones; checked against
                // libjpeg-turbo 2.1.5 on such images): compare the rest.
                let z = zune(&j);
                let max = (0..w * h)
                    .filter(|i| i % w < w - 1 && i / w < h - 1)
                    .flat_map(|i| (0..3).map(move |c| 3 * i + c))
                    .map(|i| full[i].abs_diff(z[i]))
                    .max();
                assert!(
                    max.is_some_and(|m| m <= 8),
                    "{w}×{h} {sampling:?}: max difference {max:?}"
                );
                let rects = [
                    Rect {
                        x: 0,
                        y: 0,
                        w: 1,
                        h: 1,
                    },
                    Rect {
                        x: w - 1,
                        y: h - 1,
                        w: 1,
                        h: 1,
                    },
                    Rect {
                        x: 17,
                        y: 3,
                        w: w - 17,
                        h: 9,
                    },
                    Rect {
                        x: 0,
                        y: h / 2,
                        w,
                        h: h - h / 2,
                    },
                    Rect {
                        x: w / 3,
                        y: h / 3,
                        w: w / 3,
                        h: h / 3,
                    },
                    Rect {
                        x: 15,
                        y: 15,
                        w: 2,
                        h: 2,
                    },
                    Rect {
                        x: 16,
                        y: 16,
                        w: w - 16,
                        h: h - 16,
                    },
                ];
                for r in rects {
                    // Rows farther apart than the rectangle is wide.
                    let stride = r.w * 3 + 6;
                    let mut part = vec![7u8; (r.h - 1) * stride + r.w * 3];
                    assert!(decode(&j, w, h, r, true, &mut part, stride).unwrap());
                    for row in 0..r.h {
                        let src = ((r.y + row) * w + r.x) * 3;
                        assert_eq!(
                            &part[row * stride..row * stride + r.w * 3],
                            &full[src..src + r.w * 3],
                            "{w}×{h} {sampling:?} {r:?} row {row}"
                        );
                    }
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_avx2_colour_conversion_equals_the_scalar_one() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        // Every (Cb, Cr) pair, with luma sweeping its range; 37 pixels a row: two SIMD blocks
        // and a scalar tail.
        let n = 37;
        let (mut a, mut b) = (vec![0u8; n * 3], vec![0u8; n * 3]);
        for cb in 0..=255u8 {
            for cr in 0..=255u8 {
                let y: Vec<u8> = (0..n)
                    .map(|i| (i * 7 + cb as usize * 3 + cr as usize) as u8)
                    .collect();
                let cbs: Vec<u8> = (0..n).map(|i| cb.wrapping_add(i as u8 / 16)).collect();
                let crs: Vec<u8> = (0..n).map(|i| cr.wrapping_sub(i as u8 / 16)).collect();
                ycc_to_rgb(&y, &cbs, &crs, &mut a);
                // SAFETY: checked above that the CPU has AVX2.
                unsafe { simd::ycc_to_rgb(&y, &cbs, &crs, &mut b) };
                assert_eq!(a, b, "Cb {cb}, Cr {cr}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn extend_is_the_sign_extension_of_the_standard() {
        // JPEG F.2.2.1: an s-bit value below 2^(s-1) stands for v - 2^s + 1.
        assert_eq!(extend(0, 0), 0);
        for s in 1..=16u32 {
            for v in 0..1u32 << s {
                let want = if v < 1 << (s - 1) {
                    v as i32 - (1 << s) + 1
                } else {
                    v as i32
                };
                assert_eq!(extend(v, s), want, "{v} in {s} bits");
            }
        }
    }

    #[test]
    fn the_avx2_idct_equals_the_scalar_one() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut seed = 11u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            seed >> 33
        };
        for case in 0..20_000 {
            // Blocks of every length in zig-zag order (the scalar code takes the 2×2, 4×4 and
            // 8×8 paths by it), from slide-like values to ones far past valid JPEG, where both
            // must wrap alike.
            let last = 1 + (next() % 63) as usize;
            let scale = [16i64, 256, 2048, 32768, 1 << 31][case % 5];
            let mut c = [0i32; 64];
            for z in 0..=last {
                if z == last || next() % 3 != 0 {
                    c[ZIGZAG[z] as usize] = ((next() as i64 % (2 * scale)) - scale) as i32;
                }
            }
            // Rows 7 bytes wider than the block, to catch writes past it.
            let (mut a, mut b) = (vec![9u8; 8 * 15], vec![9u8; 8 * 15]);
            idct::<false>(&c, last, &mut a, 15);
            // SAFETY: checked above that the CPU has AVX2.
            unsafe { simd::idct(&c, &mut b, 15) };
            assert_eq!(a, b, "block {case}: {c:?}");
        }
    }

    #[test]
    fn the_avx2_upsampling_filter_equals_the_scalar_one() {
        if !std::is_x86_feature_detected!("avx2") {
            eprintln!("skipped: this CPU has no AVX2");
            return;
        }
        let mut seed = 7u64;
        for len in [1usize, 15, 16, 17, 31, 32, 33, 130] {
            for _ in 0..200 {
                // Values over the whole range of each filter: 0..=1020 (h2v2), 0..=255 (h2v1).
                for (max, shift, even, odd) in [(1020, 4, 8, 7), (255, 2, 1, 2)] {
                    let ext: Vec<i16> = (0..len + 2)
                        .map(|_| {
                            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                            ((seed >> 33) % (max + 1)) as i16
                        })
                        .collect();
                    let (mut a, mut b) = (vec![0u8; 2 * len], vec![0u8; 2 * len]);
                    pairs(&ext, &mut a, shift, even, odd);
                    // SAFETY: checked above that the CPU has AVX2.
                    unsafe { simd::pairs(&ext, &mut b, shift, even, odd) };
                    assert_eq!(a, b, "{len} columns, shift {shift}");
                }
            }
        }
    }

    #[test]
    fn streams_it_does_not_take_are_left_to_the_general_decoder() {
        let progressive = encode(64, 64, SamplingFactor::R_4_2_0, |e| e.set_progressive(true));
        assert_eq!(whole(&progressive, 64, 64), Ok(None));
    }

    /// Restart markers change the entropy coding, not the coefficients: every interval length
    /// gives the pixels of the same image without markers, whole and in part.
    #[test]
    fn restart_intervals_decode_to_the_same_pixels() {
        for (w, h) in [(256, 256), (100, 75)] {
            for sampling in [
                SamplingFactor::R_4_2_0,
                SamplingFactor::R_4_2_2,
                SamplingFactor::R_4_4_4,
            ] {
                let plain = whole(&encode(w, h, sampling, |_| {}), w, h)
                    .unwrap()
                    .unwrap();
                for interval in [1, 2, 5, 16] {
                    let j = encode(w, h, sampling, |e| e.set_restart_interval(interval));
                    let full = whole(&j, w, h)
                        .unwrap()
                        .expect("a stream with restart markers is taken");
                    assert!(full == plain, "{w}×{h} {sampling:?} interval {interval}");
                    let r = Rect {
                        x: w / 3,
                        y: h / 2,
                        w: w / 3,
                        h: h / 4,
                    };
                    let mut part = vec![0u8; r.w * r.h * 3];
                    assert!(decode(&j, w, h, r, true, &mut part, r.w * 3).unwrap());
                    for row in 0..r.h {
                        let src = ((r.y + row) * w + r.x) * 3;
                        assert_eq!(&part[row * r.w * 3..][..r.w * 3], &full[src..src + r.w * 3]);
                    }
                }
            }
        }
    }

    #[test]
    fn restart_markers_out_of_sequence_or_missing_are_errors() {
        let j = encode(64, 64, SamplingFactor::R_4_2_0, |e| {
            e.set_restart_interval(2)
        });
        let at = |m: u8| {
            j.windows(2)
                .position(|p| p == [0xFF, m])
                .expect("the marker is there")
        };
        let err = |j: &[u8]| whole(j, 64, 64).unwrap_err();
        // RST1 written as RST2: out of sequence.
        let mut wrong = j.clone();
        wrong[at(0xD1) + 1] = 0xD2;
        assert!(err(&wrong).contains("EOI"), "{}", err(&wrong));
        // The interval declared longer than the encoder made them: data left after the MCUs.
        let mut longer = j.clone();
        let dri = at(0xDD);
        longer[dri + 5] = 3;
        assert!(
            err(&longer).contains("after the last MCU"),
            "{}",
            err(&longer)
        );
        // Shorter: fewer intervals than the MCUs need.
        let mut shorter = j.clone();
        shorter[dri + 5] = 1;
        assert!(
            err(&shorter).contains("restart intervals where"),
            "{}",
            err(&shorter)
        );
        // A byte of junk before RST1, the sequence intact.
        let mut junk = j.clone();
        junk.insert(at(0xD1), 0x5A);
        assert!(err(&junk).contains("does not hold"), "{}", err(&junk));
        // No restart interval declared, markers in the scan.
        let mut none = j.clone();
        none[dri + 5] = 0;
        assert!(err(&none).contains("after the last MCU"), "{}", err(&none));
        // A DRI segment of the wrong length.
        let mut malformed = j.clone();
        malformed[dri + 3] = 5;
        assert!(
            err(&malformed).contains("restart interval"),
            "{}",
            err(&malformed)
        );
        // Too few intervals for the MCUs: found before anything is decoded, also by a
        // rectangle at the bottom of the tile.
        let eoi = j.len() - 2;
        let last = j[..eoi]
            .windows(2)
            .rposition(|p| p[0] == 0xFF && (0xD0..=0xD7).contains(&p[1]))
            .unwrap();
        let mut cut = j[..last].to_vec();
        cut.extend_from_slice(&[0xFF, 0xD9]);
        let mut part = vec![0u8; 8 * 8 * 3];
        let r = Rect {
            x: 56,
            y: 56,
            w: 8,
            h: 8,
        };
        let e = decode(&cut, 64, 64, r, true, &mut part, 24).unwrap_err();
        assert!(e.contains("restart intervals where"), "{e}");
        // An empty interval after the last MCU (a marker just before EOI) is let through.
        let mut trailing = j[..eoi].to_vec();
        // 16 MCUs in intervals of 2: RST0 to RST6 are used; RST7 comes next.
        trailing.extend_from_slice(&[0xFF, 0xD7, 0xFF, 0xD9]);
        assert_eq!(
            whole(&trailing, 64, 64).unwrap(),
            whole(&j, 64, 64).unwrap()
        );
    }

    /// Where the scan data starts: just past the SOS segment.
    fn scan_start(j: &[u8]) -> usize {
        let sos = j
            .windows(2)
            .position(|w| w == [0xFF, 0xDA])
            .expect("has SOS");
        sos + 2 + u16::from_be_bytes([j[sos + 2], j[sos + 3]]) as usize
    }

    #[test]
    fn a_scan_cut_short_or_with_bytes_left_over_is_an_error() {
        let j = encode(128, 128, SamplingFactor::R_4_2_0, |_| {});
        let start = scan_start(&j);
        let data_end = j.len() - 2;
        // Cut in the middle and closed with a fresh EOI: libjpeg warns, OpenSlide fails.
        let mut cut = j[..start + (data_end - start) / 2].to_vec();
        if cut.last() == Some(&0xFF) {
            cut.pop();
        }
        cut.extend_from_slice(&[0xFF, 0xD9]);
        let err = whole(&cut, 128, 128).unwrap_err();
        assert!(err.contains("ends before its last MCU"), "{err}");
        // The rows before the cut are still readable in part.
        let mut top = vec![0u8; 128 * 3];
        let r = Rect {
            x: 0,
            y: 0,
            w: 128,
            h: 1,
        };
        assert_eq!(decode(&cut, 128, 128, r, true, &mut top, 128 * 3), Ok(true));
        // No EOI at all.
        let err = whole(&j[..data_end], 128, 128).unwrap_err();
        assert!(err.contains("EOI"), "{err}");
        // Bytes between the last MCU and EOI.
        let mut extra = j[..data_end].to_vec();
        extra.extend_from_slice(&[0x12, 0x34, 0x56, 0xFF, 0xD9]);
        let err = whole(&extra, 128, 128).unwrap_err();
        assert!(err.contains("after the last MCU"), "{err}");
        // A marker inside the scan.
        let mut marker = j.clone();
        marker.splice(start + 10..start + 10, [0xFF, 0xFE, 0x00, 0x02]);
        assert!(whole(&marker, 128, 128).is_err());
    }

    #[test]
    fn fill_bytes_before_stuffing_are_read_as_libjpeg_reads_them() {
        let j = encode(96, 64, SamplingFactor::R_4_2_0, |_| {});
        let start = scan_start(&j);
        let stuffed = start
            + j[start..]
                .windows(2)
                .position(|w| w == [0xFF, 0x00])
                .expect("the scan has a stuffed 0xFF");
        let mut filled = j.clone();
        filled.insert(stuffed, 0xFF);
        assert_eq!(whole(&filled, 96, 64), whole(&j, 96, 64));
    }

    #[test]
    fn huffman_tables_with_an_all_ones_code_or_too_many_codes_are_errors() {
        let mut counts = [0u8; 16];
        counts[0] = 2; // codes 0 and 1: "1" is all ones
        assert!(Huffman::new(&counts, &[0, 1]).is_err());
        counts[0] = 1;
        counts[1] = 2; // 0, 10, 11: "11" is all ones
        assert!(Huffman::new(&counts, &[0, 1, 2]).is_err());
        counts[1] = 1; // 0, 10
        assert!(Huffman::new(&counts, &[0, 1]).is_ok());
        assert!(
            Huffman::new(&counts, &[0]).is_err(),
            "fewer symbols than codes"
        );
    }

    #[test]
    fn images_libjpeg_upsamples_by_replication_are_left_to_the_general_decoder() {
        for w in [1, 3, 4] {
            let j = encode(w, 16, SamplingFactor::R_4_2_0, |_| {});
            assert_eq!(whole(&j, w, 16), Ok(None), "width {w}");
        }
        let j = encode(5, 16, SamplingFactor::R_4_2_0, |_| {});
        assert!(whole(&j, 5, 16).unwrap().is_some());
    }

    #[test]
    fn wrong_sizes_and_regions_are_errors() {
        let j = encode(64, 48, SamplingFactor::R_4_2_0, |_| {});
        assert!(whole(&j, 64, 64).unwrap_err().contains("64 × 48"));
        let mut out = vec![0u8; 64 * 48 * 3];
        for r in [
            Rect {
                x: 0,
                y: 0,
                w: 0,
                h: 1,
            },
            Rect {
                x: 60,
                y: 0,
                w: 5,
                h: 1,
            },
            Rect {
                x: 0,
                y: 47,
                w: 1,
                h: 2,
            },
        ] {
            assert!(
                decode(&j, 64, 48, r, true, &mut out, 64 * 3).is_err(),
                "{r:?}"
            );
        }
        let r = Rect {
            x: 0,
            y: 0,
            w: 64,
            h: 48,
        };
        assert!(decode(&j, 64, 48, r, true, &mut out[..100], 64 * 3).is_err());
        // Sizes that overflow are errors, not panics.
        let huge = Rect {
            x: usize::MAX,
            y: 0,
            w: 2,
            h: 1,
        };
        assert!(decode(&j, 64, 48, huge, true, &mut out, 64 * 3).is_err());
        assert!(decode(&j, 64, 48, r, true, &mut out, usize::MAX).is_err());
        // Every prefix of the stream fails cleanly or is left to the general decoder.
        for n in 0..j.len() {
            let _ = whole(&j[..n], 64, 48);
        }
    }
}

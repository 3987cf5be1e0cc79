// Patch preprocessing for a whole batch in one dispatch: resize each RGB8 pidx to the model's
// input (area averaging when shrinking an axis, bilinear when enlarging it, as batch::resize),
// scale to [0, 1] if asked, normalise per channel, and write float32 NCHW or NHWC.
// One invocation per output value's pixel; the CPU twin is gpu::preprocess_cpu (same maths).

struct Params {
    n: u32,
    sw: u32,
    sh: u32,
    dw: u32,
    dh: u32,
    nchw: u32,
    to_unit: u32,
    pad: u32,
    mean: vec4<f32>,
    sdev: vec4<f32>,
};

@group(0) @binding(0) var<uniform> p: Params;
// RGB8 bytes, packed four to a word (little endian).
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

fn byte(i: u32) -> f32 {
    let w = src[i / 4u];
    return f32((w >> ((i % 4u) * 8u)) & 255u);
}

// Tap k of output position o on an axis of `len` source pixels: (source index, weight);
// weight 0 past the last tap.
fn tap(o: u32, len: u32, out_len: u32, k: u32) -> vec2<f32> {
    let scale = f32(len) / f32(out_len);
    if (scale >= 1.0) {
        let a = f32(o) * scale;
        let b = f32(o + 1u) * scale;
        let i = u32(floor(a)) + k;
        if (f32(i) >= b || i >= len) {
            return vec2<f32>(0.0, 0.0);
        }
        let overlap = max(min(b, f32(i) + 1.0) - max(a, f32(i)), 0.0);
        return vec2<f32>(f32(i), overlap / scale);
    }
    let x = max((f32(o) + 0.5) * scale - 0.5, 0.0);
    let i = min(u32(floor(x)), len - 1u);
    let j = min(i + 1u, len - 1u);
    let f = x - f32(i);
    if (k == 0u) {
        if (i == j) {
            return vec2<f32>(f32(i), 1.0);
        }
        return vec2<f32>(f32(i), 1.0 - f);
    }
    if (k == 1u && i != j) {
        return vec2<f32>(f32(j), f);
    }
    return vec2<f32>(0.0, 0.0);
}

fn taps(len: u32, out_len: u32) -> u32 {
    let scale = f32(len) / f32(out_len);
    if (scale >= 1.0) {
        return u32(ceil(scale)) + 1u;
    }
    return 2u;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let per = p.dw * p.dh;
    let g = id.x + id.y * 65535u * 64u;
    if (g >= p.n * per) {
        return;
    }
    let pidx = g / per;
    let pix = g % per;
    let ox = pix % p.dw;
    let oy = pix / p.dw;
    let base = pidx * p.sw * p.sh * 3u;
    var acc = vec3<f32>(0.0, 0.0, 0.0);
    let ky = taps(p.sh, p.dh);
    let kx = taps(p.sw, p.dw);
    for (var l = 0u; l < ky; l = l + 1u) {
        let ty = tap(oy, p.sh, p.dh, l);
        if (ty.y == 0.0) {
            continue;
        }
        for (var k = 0u; k < kx; k = k + 1u) {
            let tx = tap(ox, p.sw, p.dw, k);
            if (tx.y == 0.0) {
                continue;
            }
            let w = tx.y * ty.y;
            let at = base + (u32(ty.x) * p.sw + u32(tx.x)) * 3u;
            acc = acc + w * vec3<f32>(byte(at), byte(at + 1u), byte(at + 2u));
        }
    }
    var div = 1.0;
    if (p.to_unit == 1u) {
        div = 255.0;
    }
    for (var c = 0u; c < 3u; c = c + 1u) {
        let v = (acc[c] / div - p.mean[c]) / p.sdev[c];
        var at: u32;
        if (p.nchw == 1u) {
            at = pidx * per * 3u + c * per + pix;
        } else {
            at = pidx * per * 3u + pix * 3u + c;
        }
        dst[at] = v;
    }
}

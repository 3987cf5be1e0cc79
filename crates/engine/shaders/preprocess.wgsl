// Patch preprocessing for a whole batch in one submission: optionally Reinhard stain
// normalisation (entry point `stats_main`: each patch's Lab means and standard deviations, one
// workgroup per patch), then (`main`) resize each RGB8 patch to the model's input (area
// averaging when shrinking an axis, bilinear when enlarging it, as batch::resize), each source
// pixel moved to the stain target first, scale to [0, 1] if asked, normalise per channel, and
// write float32 NCHW or NHWC. `main` has one invocation per output pixel. The CPU twins are
// gpu::preprocess_cpu and the stain module (same maths, same order of sums).

struct Params {
    n: u32,
    sw: u32,
    sh: u32,
    dw: u32,
    dh: u32,
    nchw: u32,
    to_unit: u32,
    stain: u32,
    mean: vec4<f32>,
    sdev: vec4<f32>,
    // Reinhard target: Lab means and standard deviations.
    tmean: vec4<f32>,
    tstd: vec4<f32>,
};

@group(0) @binding(0) var<uniform> p: Params;
// RGB8 bytes, packed four to a word (little endian).
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
// Per patch: Lab mean (xyz, w unused), then Lab standard deviation.
@group(0) @binding(3) var<storage, read_write> stats: array<vec4<f32>>;

var<workgroup> lanes: array<vec3<f32>, 64>;

fn byte(i: u32) -> f32 {
    let w = src[i / 4u];
    return f32((w >> ((i % 4u) * 8u)) & 255u);
}

fn to_linear(c: f32) -> f32 {
    if (c <= 0.04045) {
        return c / 12.92;
    }
    return pow((c + 0.055) / 1.055, 2.4);
}

fn to_srgb(c: f32) -> f32 {
    if (c <= 0.0031308) {
        return 12.92 * c;
    }
    return 1.055 * pow(c, 1.0 / 2.4) - 0.055;
}

fn f_lab(t: f32) -> f32 {
    if (t > 0.008856) {
        return pow(t, 1.0 / 3.0);
    }
    return 7.787 * t + 16.0 / 116.0;
}

fn f_inv(f: f32) -> f32 {
    if (f > 0.206893) {
        return f * f * f;
    }
    return (f - 16.0 / 116.0) / 7.787;
}

// RGB 0-255 -> Lab (OpenCV's float RGB2Lab: sRGB gamma, D65).
fn rgb_to_lab(rgb: vec3<f32>) -> vec3<f32> {
    let r = to_linear(rgb.x / 255.0);
    let g = to_linear(rgb.y / 255.0);
    let b = to_linear(rgb.z / 255.0);
    let x = (0.412453 * r + 0.357580 * g + 0.180423 * b) / 0.950456;
    let y = 0.212671 * r + 0.715160 * g + 0.072169 * b;
    let z = (0.019334 * r + 0.119193 * g + 0.950227 * b) / 1.088754;
    let fx = f_lab(x);
    let fy = f_lab(y);
    let fz = f_lab(z);
    var l: f32;
    if (y > 0.008856) {
        l = 116.0 * fy - 16.0;
    } else {
        l = 903.3 * y;
    }
    return vec3<f32>(l, 500.0 * (fx - fy), 200.0 * (fy - fz));
}

// Lab -> RGB 0-255, clipped.
fn lab_to_rgb(lab: vec3<f32>) -> vec3<f32> {
    var y: f32;
    var fy: f32;
    if (lab.x <= 7.9996) {
        y = lab.x / 903.3;
        fy = 7.787 * y + 16.0 / 116.0;
    } else {
        fy = (lab.x + 16.0) / 116.0;
        y = fy * fy * fy;
    }
    let x = f_inv(lab.y / 500.0 + fy) * 0.950456;
    let z = f_inv(fy - lab.z / 200.0) * 1.088754;
    let r = 3.240479 * x - 1.537150 * y - 0.498535 * z;
    let g = -0.969256 * x + 1.875991 * y + 0.041556 * z;
    let b = 0.055648 * x - 0.204043 * y + 1.057311 * z;
    return vec3<f32>(
        clamp(to_srgb(clamp(r, 0.0, 1.0)), 0.0, 1.0) * 255.0,
        clamp(to_srgb(clamp(g, 0.0, 1.0)), 0.0, 1.0) * 255.0,
        clamp(to_srgb(clamp(b, 0.0, 1.0)), 0.0, 1.0) * 255.0,
    );
}

fn pixel(at: u32) -> vec3<f32> {
    return vec3<f32>(byte(at), byte(at + 1u), byte(at + 2u));
}

// Adds the 64 lanes as a tree (32, 16, ... 1); lane 0 holds the sum. Every invocation calls it.
fn reduce(t: u32) -> vec3<f32> {
    for (var s = 32u; s > 0u; s = s / 2u) {
        workgroupBarrier();
        if (t < s) {
            lanes[t] = lanes[t] + lanes[t + s];
        }
    }
    workgroupBarrier();
    let total = lanes[0];
    workgroupBarrier();
    return total;
}

// One workgroup per patch: Lab mean, then standard deviation (population), pixel i in lane
// i % 64 (the CPU twin, stain::patch_stats, sums in the same order).
@compute @workgroup_size(64)
fn stats_main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let pidx = wg.x;
    let npix = p.sw * p.sh;
    let base = pidx * npix * 3u;
    var acc = vec3<f32>(0.0, 0.0, 0.0);
    for (var i = t; i < npix; i = i + 64u) {
        acc = acc + rgb_to_lab(pixel(base + i * 3u));
    }
    lanes[t] = acc;
    let mean = reduce(t) / f32(npix);
    acc = vec3<f32>(0.0, 0.0, 0.0);
    for (var i = t; i < npix; i = i + 64u) {
        let d = rgb_to_lab(pixel(base + i * 3u)) - mean;
        acc = acc + d * d;
    }
    lanes[t] = acc;
    let sd = sqrt(reduce(t) / f32(npix));
    if (t == 0u) {
        stats[pidx * 2u] = vec4<f32>(mean, 0.0);
        stats[pidx * 2u + 1u] = vec4<f32>(sd, 0.0);
    }
}

// Source pixel `at` of patch `pidx`, stain-normalised when asked (stain::Reinhard::normalise).
fn source(at: u32, pidx: u32) -> vec3<f32> {
    let rgb = pixel(at);
    if (p.stain == 0u) {
        return rgb;
    }
    let m = stats[pidx * 2u].xyz;
    let sd = stats[pidx * 2u + 1u].xyz;
    let lab = rgb_to_lab(rgb);
    var out: vec3<f32>;
    for (var c = 0u; c < 3u; c = c + 1u) {
        var ratio = 1.0;
        // stain::FLAT: a flat channel is shifted, not scaled.
        if (sd[c] > 0.01) {
            ratio = p.tstd[c] / sd[c];
        }
        out[c] = (lab[c] - m[c]) * ratio + p.tmean[c];
    }
    return lab_to_rgb(out);
}

// Tap k of output position o on an axis of `len` source pixels: (source index, weight);
// weight 0 past the last tap. Integer numerators, as preprocess::tap: the twins then agree on
// every tap, and on its weight up to one division (f32 division is not exact on every GPU).
// Sides are patch sizes: (2·out_len)·len stays far below 2^32.
fn tap(o: u32, len: u32, out_len: u32, k: u32) -> vec2<f32> {
    if (len >= out_len) {
        let a = o * len;
        let b = a + len;
        let i = a / out_len + k;
        if (i * out_len >= b || i >= len) {
            return vec2<f32>(0.0, 0.0);
        }
        let overlap = min(b, (i + 1u) * out_len) - max(a, i * out_len);
        return vec2<f32>(f32(i), f32(overlap) / f32(len));
    }
    let den = 2u * out_len;
    let c = (2u * o + 1u) * len;
    var num = 0u;
    if (c > out_len) {
        num = c - out_len;
    }
    let i = min(num / den, len - 1u);
    let j = min(i + 1u, len - 1u);
    let f = f32(num - i * den) / f32(den);
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
    if (len >= out_len) {
        return (len + out_len - 1u) / out_len + 1u;
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
            acc = acc + w * source(at, pidx);
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

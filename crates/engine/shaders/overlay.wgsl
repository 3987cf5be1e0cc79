// Heatmap overlay: a probability grid (one value per patch cell; negative where no patch was
// analysed) upsampled bilinearly onto an RGB image, colour-mapped (viridis, jet, coolwarm),
// thresholded and alpha-blended. Only pixels whose own cell was analysed are coloured; the
// bilinear weights use the analysed neighbours only. One invocation per output pixel; the CPU twin is
// gpu::overlay_cpu (same maths, rounding with floor(x + 0.5)).

struct Params {
    w: u32,
    h: u32,
    gw: u32,
    gh: u32,
    cell: f32,
    threshold: f32,
    alpha: f32,
    cmap: u32,
};

@group(0) @binding(0) var<uniform> p: Params;
// RGBA8 pixels of the base image, one word each (alpha ignored).
@group(0) @binding(1) var<storage, read> base: array<u32>;
@group(0) @binding(2) var<storage, read> grid: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst: array<u32>;

const VIRIDIS = array<vec3<f32>, 9>(
    vec3<f32>(68.0, 1.0, 84.0),
    vec3<f32>(71.0, 44.0, 122.0),
    vec3<f32>(59.0, 81.0, 139.0),
    vec3<f32>(44.0, 113.0, 142.0),
    vec3<f32>(33.0, 144.0, 141.0),
    vec3<f32>(39.0, 173.0, 129.0),
    vec3<f32>(92.0, 200.0, 99.0),
    vec3<f32>(170.0, 220.0, 50.0),
    vec3<f32>(253.0, 231.0, 37.0),
);

fn colour(v: f32) -> vec3<f32> {
    let x = clamp(v, 0.0, 1.0);
    if (p.cmap == 1u) {
        // jet
        let r = clamp(1.5 - abs(4.0 * x - 3.0), 0.0, 1.0);
        let g = clamp(1.5 - abs(4.0 * x - 2.0), 0.0, 1.0);
        let b = clamp(1.5 - abs(4.0 * x - 1.0), 0.0, 1.0);
        return vec3<f32>(r, g, b) * 255.0;
    }
    if (p.cmap == 2u) {
        // cool-warm: blue, light grey, red
        if (x < 0.5) {
            return mix(vec3<f32>(59.0, 76.0, 192.0), vec3<f32>(221.0, 221.0, 221.0), x * 2.0);
        }
        return mix(vec3<f32>(221.0, 221.0, 221.0), vec3<f32>(180.0, 4.0, 38.0), (x - 0.5) * 2.0);
    }
    let s = x * 8.0;
    let i = min(u32(floor(s)), 7u);
    return mix(VIRIDIS[i], VIRIDIS[i + 1u], s - f32(i));
}

fn cell(cx: i32, cy: i32) -> f32 {
    if (cx < 0 || cy < 0 || cx >= i32(p.gw) || cy >= i32(p.gh)) {
        return -1.0;
    }
    return grid[u32(cy) * p.gw + u32(cx)];
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let g = id.x + id.y * 65535u * 64u;
    if (g >= p.w * p.h) {
        return;
    }
    let x = g % p.w;
    let y = g / p.w;
    let b = base[g];
    let rgb = vec3<f32>(f32(b & 255u), f32((b >> 8u) & 255u), f32((b >> 16u) & 255u));
    // Bilinear between cell centres, over the cells that hold a value.
    let gx = (f32(x) + 0.5) / p.cell - 0.5;
    let gy = (f32(y) + 0.5) / p.cell - 0.5;
    let x0 = i32(floor(gx));
    let y0 = i32(floor(gy));
    let fx = gx - f32(x0);
    let fy = gy - f32(y0);
    var sum = 0.0;
    var wsum = 0.0;
    for (var j = 0; j < 2; j = j + 1) {
        for (var i = 0; i < 2; i = i + 1) {
            let v = cell(x0 + i, y0 + j);
            var wx = 1.0 - fx;
            if (i == 1) {
                wx = fx;
            }
            var wy = 1.0 - fy;
            if (j == 1) {
                wy = fy;
            }
            let w = wx * wy;
            if (v >= 0.0 && w > 0.0) {
                sum = sum + w * v;
                wsum = wsum + w;
            }
        }
    }
    var out = rgb;
    let own = cell(i32(floor((f32(x) + 0.5) / p.cell)), i32(floor((f32(y) + 0.5) / p.cell)));
    if (wsum > 0.0 && own >= 0.0) {
        let v = sum / wsum;
        if (v >= p.threshold) {
            out = rgb * (1.0 - p.alpha) + colour(v) * p.alpha;
        }
    }
    let o = vec3<u32>(floor(clamp(out, vec3<f32>(0.0), vec3<f32>(255.0)) + 0.5));
    dst[g] = o.x | (o.y << 8u) | (o.z << 16u) | (255u << 24u);
}

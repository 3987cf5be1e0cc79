//! The wgpu device: the preprocess and overlay compute pipelines built from
//! `shaders/*.wgsl`, and their dispatch, validation and read-back (the `gpu` feature).
//!
//! In: RGB8 patches or a base image with a probability grid. Out: the model's float32 input,
//! or the blended overlay; `Err` with wgpu's own description when the device refuses.
//! Coordinates: image pixels of the patch or of the base image.

use std::sync::OnceLock;

use image::RgbImage;
use wgpu::util::DeviceExt;

use crate::imaging::colour::Cmap;
use crate::imaging::preprocess::{Layout, Preprocess};
use crate::imaging::stain::Reinhard;

/// A wgpu device with the two pipelines.
pub struct Gpu {
    device: wgpu::Device,
    queue: wgpu::Queue,
    preprocess: wgpu::ComputePipeline,
    stats: wgpu::ComputePipeline,
    overlay: wgpu::ComputePipeline,
    /// The adapter: name, backend, device type.
    pub adapter: String,
    /// A software adapter (lavapipe): correct, but slower than Tessera's own CPU code.
    pub is_cpu: bool,
}

const WORKGROUP: u32 = 64;
const MAX_GROUPS: u32 = 65535;

fn dispatch_size(items: u32) -> (u32, u32) {
    let groups = items.div_ceil(WORKGROUP).max(1);
    (groups.min(MAX_GROUPS), groups.div_ceil(MAX_GROUPS))
}

impl Gpu {
    /// The process's GPU context, created on first use; `Err` says why there is none.
    pub fn shared() -> Result<&'static Gpu, String> {
        static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
        GPU.get_or_init(Gpu::new).as_ref().map_err(Clone::clone)
    }

    /// Finds an adapter (a GPU, or a software Vulkan such as lavapipe) and builds the
    /// pipelines.
    pub fn new() -> Result<Gpu, String> {
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            force_fallback_adapter: false,
            compatible_surface: None,
            ..Default::default()
        }))
        .map_err(|e| {
            format!(
                "no GPU adapter ({e}); without a GPU, Mesa's lavapipe provides one: \
                 apt-get install mesa-vulkan-drivers libvulkan1"
            )
        })?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("tessera"),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| format!("{}: cannot open the device: {e}", info.name))?;
        // Validation errors become values, not panics: the pipelines are checked here, and
        // every dispatch in `run`.
        device.on_uncaptured_error(std::sync::Arc::new(|_e: wgpu::Error| {}));
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let make = |name: &str, source: &str, entry: &str| {
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: Default::default(),
                cache: None,
            })
        };
        let pre_src = include_str!("../../shaders/preprocess.wgsl");
        let preprocess = make("preprocess", pre_src, "main");
        let stats = make("stain statistics", pre_src, "stats_main");
        let overlay = make(
            "overlay",
            include_str!("../../shaders/overlay.wgsl"),
            "main",
        );
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!(
                "{}: the shaders do not build: {}",
                info.name,
                describe(&e)
            ));
        }
        Ok(Gpu {
            adapter: format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type),
            is_cpu: info.device_type == wgpu::DeviceType::Cpu,
            device,
            queue,
            preprocess,
            stats,
            overlay,
        })
    }

    /// Runs `f` with wgpu's validation errors turned into an `Err` (they would otherwise be
    /// reported only to the device's error handler).
    fn validated<T>(&self, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let result = f();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(format!("GPU validation: {}", describe(&e)));
        }
        result
    }

    /// A bind group of `pipeline`'s group 0 with each (binding, buffer).
    fn bind(
        &self,
        pipeline: &wgpu::ComputePipeline,
        bindings: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = bindings
            .iter()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: *i,
                resource: b.as_entire_binding(),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        })
    }

    /// Records one compute pass of `pipeline` over `groups` workgroups (x, y).
    fn record(
        enc: &mut wgpu::CommandEncoder,
        pipeline: &wgpu::ComputePipeline,
        group: &wgpu::BindGroup,
        (x, y): (u32, u32),
    ) {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, group, &[]);
        pass.dispatch_workgroups(x, y, 1);
    }

    /// Runs `pipeline` over `items` invocations with the uniform at binding 0, `inputs` at the
    /// next bindings and the output after them, and reads the output back (`out_bytes` long).
    fn dispatch(
        &self,
        pipeline: &wgpu::ComputePipeline,
        uniform: &[u8],
        inputs: &[&[u8]],
        out_bytes: u64,
        items: u32,
    ) -> Result<Vec<u8>, String> {
        let u = self.buffer(uniform, wgpu::BufferUsages::UNIFORM)?;
        let ins = inputs
            .iter()
            .map(|b| self.buffer(b, wgpu::BufferUsages::STORAGE))
            .collect::<Result<Vec<_>, _>>()?;
        let out = self.scratch(out_bytes)?;
        let bindings: Vec<(u32, &wgpu::Buffer)> = std::iter::once(&u)
            .chain(&ins)
            .chain([&out])
            .enumerate()
            .map(|(i, b)| (i as u32, b))
            .collect();
        let group = self.bind(pipeline, &bindings);
        let mut enc = self.device.create_command_encoder(&Default::default());
        Self::record(&mut enc, pipeline, &group, dispatch_size(items));
        self.read_back(enc, &out, out_bytes)
    }

    /// [`preprocess_cpu`] on the GPU: one submission for the batch (one dispatch, two with
    /// stain normalisation).
    pub fn preprocess(
        &self,
        pixels: &[u8],
        n: usize,
        src: (u32, u32),
        pre: &Preprocess,
    ) -> Result<Vec<f32>, String> {
        let (sh, sw) = src;
        let (dh, dw) = pre.input;
        if pixels.len() != n * (sh * sw * 3) as usize || n == 0 || dh == 0 || dw == 0 {
            return Err("pixels do not match the batch size".into());
        }
        let mut u = Vec::with_capacity(96);
        for v in [
            n as u32,
            sw,
            sh,
            dw,
            dh,
            (pre.layout == Layout::Nchw) as u32,
            pre.to_unit as u32,
            pre.stain.is_some() as u32,
        ] {
            u.extend_from_slice(&v.to_le_bytes());
        }
        let target = pre.stain.unwrap_or(Reinhard {
            mean: [0.0; 3],
            std: [1.0; 3],
        });
        for v in [pre.mean, pre.std, target.mean, target.std] {
            for x in v.iter().chain([&0.0]) {
                u.extend_from_slice(&x.to_le_bytes());
            }
        }
        let values = n as u64 * (dh * dw * 3) as u64;
        let items = u32::try_from(n as u64 * (dh * dw) as u64).map_err(|e| e.to_string())?;
        if pre.stain.is_some() && n > MAX_GROUPS as usize {
            return Err(format!("{n} patches: at most {MAX_GROUPS} per batch"));
        }
        let stain = pre.stain.is_some();
        let bytes = self
            .validated(|| self.preprocess_passes(&u, pixels, n as u32, stain, values * 4, items))?;
        Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect())
    }

    /// The preprocess submission: the stain statistics pass when `stain`, then the
    /// resize/normalise pass; returns the output buffer's bytes.
    fn preprocess_passes(
        &self,
        uniform: &[u8],
        pixels: &[u8],
        n: u32,
        stain: bool,
        out_bytes: u64,
        items: u32,
    ) -> Result<Vec<u8>, String> {
        let u = self.buffer(uniform, wgpu::BufferUsages::UNIFORM)?;
        let src = self.buffer(pixels, wgpu::BufferUsages::STORAGE)?;
        let stats = self.scratch(if stain { n as u64 * 32 } else { 32 })?;
        let out = self.scratch(out_bytes)?;
        let mut enc = self.device.create_command_encoder(&Default::default());
        if stain {
            let g = self.bind(&self.stats, &[(0, &u), (1, &src), (3, &stats)]);
            Self::record(&mut enc, &self.stats, &g, (n, 1));
        }
        let bindings = [(0, &u), (1, &src), (2, &out), (3, &stats)];
        let g = self.bind(&self.preprocess, &bindings);
        Self::record(&mut enc, &self.preprocess, &g, dispatch_size(items));
        self.read_back(enc, &out, out_bytes)
    }

    /// `Err` when a buffer of `bytes` exceeds what the device binds.
    fn fits(&self, bytes: u64) -> Result<(), String> {
        let limit = self.device.limits().max_storage_buffer_binding_size;
        if bytes > limit {
            return Err(format!(
                "a buffer exceeds the device's limit of {limit} bytes"
            ));
        }
        Ok(())
    }

    /// A buffer holding `bytes` (padded to whole 32-bit words, as shaders read them).
    fn buffer(&self, bytes: &[u8], usage: wgpu::BufferUsages) -> Result<wgpu::Buffer, String> {
        self.fits(bytes.len() as u64)?;
        let mut v = bytes.to_vec();
        v.resize(v.len().div_ceil(4).max(1) * 4, 0);
        Ok(self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: &v,
                usage,
            }))
    }

    /// A storage buffer of `bytes` that shaders write and that can be copied out.
    fn scratch(&self, bytes: u64) -> Result<wgpu::Buffer, String> {
        self.fits(bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        }))
    }

    /// Submits `enc` with a copy of `out` appended, waits, and returns its first `bytes`.
    fn read_back(
        &self,
        mut enc: wgpu::CommandEncoder,
        out: &wgpu::Buffer,
        bytes: u64,
    ) -> Result<Vec<u8>, String> {
        let d = &self.device;
        let read = d.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        enc.copy_buffer_to_buffer(out, 0, &read, 0, bytes.max(4));
        self.queue.submit([enc.finish()]);
        let slice = read.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        d.poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| e.to_string())?;
        rx.recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let data = slice.get_mapped_range().map_err(|e| e.to_string())?[..bytes as usize].to_vec();
        read.unmap();
        Ok(data)
    }

    /// [`overlay_cpu`] on the GPU.
    #[allow(clippy::too_many_arguments)]
    pub fn overlay(
        &self,
        base: &RgbImage,
        grid: &[f32],
        grid_size: (u32, u32),
        cell: f32,
        threshold: f32,
        alpha: f32,
        cmap: Cmap,
    ) -> Result<RgbImage, String> {
        let (w, h) = base.dimensions();
        let (gw, gh) = grid_size;
        if grid.len() != (gw * gh) as usize || cell.is_nan() || cell <= 0.0 {
            return Err("the grid does not match its size".into());
        }
        let mut u = Vec::with_capacity(32);
        for v in [w, h, gw, gh] {
            u.extend_from_slice(&v.to_le_bytes());
        }
        for v in [cell, threshold, alpha] {
            u.extend_from_slice(&v.to_le_bytes());
        }
        u.extend_from_slice(&(cmap as u32).to_le_bytes());
        let rgba: Vec<u8> = base
            .pixels()
            .flat_map(|p| [p.0[0], p.0[1], p.0[2], 255])
            .collect();
        let g: Vec<u8> = grid.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = self.validated(|| {
            self.dispatch(
                &self.overlay,
                &u,
                &[&rgba, &g],
                w as u64 * h as u64 * 4,
                w * h,
            )
        })?;
        let rgb: Vec<u8> = bytes
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect();
        RgbImage::from_raw(w, h, rgb).ok_or_else(|| "bad output size".into())
    }
}

/// wgpu's error with its details (its `Display` is only "Validation Error").
fn describe(e: &wgpu::Error) -> String {
    match e {
        wgpu::Error::Validation { description, .. } => description.trim().to_string(),
        other => other.to_string(),
    }
}

//! wgpu compute shaders (`shaders/*.wgsl`) for patch preprocessing and heatmap overlays, each
//! with a CPU twin in [`crate::imaging`] that computes the same values; the CPU twin runs where
//! no adapter exists.
//!
//! - [`Gpu::preprocess`] / [`crate::imaging::preprocess::preprocess_cpu`]: a batch of RGB8 patches (`n × sh × sw × 3`) →
//!   float32 model input (`n × 3 × dh × dw` or `n × dh × dw × 3`): resized (area averaging when
//!   shrinking an axis, bilinear when enlarging, as [`crate::imaging::resize`] but without
//!   rounding to 8 bits in between), optionally Reinhard stain-normalised first
//!   ([`crate::imaging::stain`]),
//!   scaled to [0, 1] if the model asks, normalised per channel. One submission per batch.
//! - [`Gpu::overlay`] / [`crate::imaging::colour::overlay_cpu`]: a probability grid (cells of `cell` image pixels;
//!   negative = no patch) upsampled bilinearly onto an RGB image, colour-mapped, thresholded
//!   and alpha-blended where the pixel's own cell was analysed; 8-bit output rounded with
//!   `floor(x + 0.5)`. The report's overlay PNGs are made this way
//!   ([`crate::output::overlay::overlay`]).
//!
//! Coordinates: image pixels of the patch (preprocess) or of the base image (overlay).
//! The adapter is wgpu's choice on this machine: a GPU when there is one, Mesa's lavapipe
//! (Vulkan on the CPU) otherwise when installed; [`Gpu::shared`] finds it once per process.
//!
//! The wgpu device ([`Gpu`]) exists with the engine's `gpu` feature (on by default); without it
//! [`Gpu::shared`] says so, every `--gpu-preprocess auto` runs the CPU twins and `on` is an
//! error. Where preprocessing runs is decided by [`GpuPreprocess::resolve`] either way.

#[cfg(feature = "gpu")]
mod device;
#[cfg(feature = "gpu")]
pub use device::Gpu;

#[cfg(not(feature = "gpu"))]
mod absent;
#[cfg(not(feature = "gpu"))]
pub use absent::Gpu;

/// Is there a GPU device node (NVIDIA's, or a DRM render node)? Elsewhere than Linux: assume so.
fn gpu_device_present() -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    std::path::Path::new("/dev/nvidia0").exists()
        || std::fs::read_dir("/dev/dri").is_ok_and(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
        })
}

/// `--gpu-preprocess`: where patches are resized and normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpuPreprocess {
    /// Resolves to a real GPU when there is one (a software Vulkan adapter such as lavapipe is
    /// not used: it is slower than the CPU code), which the analysis then passes over for
    /// patch preprocessing, recording why: on an NVIDIA H200 the shader was slower end to end
    /// than the CPU (BENCHMARKS.md).
    #[default]
    Auto,
    /// On whatever adapter wgpu finds, lavapipe included; an error if there is none.
    On,
    /// On the CPU.
    Off,
}

/// Where [`GpuPreprocess::resolve`] decided preprocessing runs, and why not on a GPU when that
/// was possible to ask for.
#[derive(Clone, Copy)]
pub struct Resolved {
    /// The adapter, or `None` for the CPU.
    pub gpu: Option<&'static Gpu>,
    /// Why `auto` did not take a GPU (`None` when it did, or for `off`).
    pub not_used: Option<&'static str>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("gpu", &self.gpu.map(|g| g.adapter.as_str()))
            .field("not_used", &self.not_used)
            .finish()
    }
}

impl GpuPreprocess {
    /// `auto`, `on` or `off`, as the option is spelled.
    pub fn label(self) -> &'static str {
        match self {
            GpuPreprocess::Auto => "auto",
            GpuPreprocess::On => "on",
            GpuPreprocess::Off => "off",
        }
    }

    /// The adapter to preprocess on (or the CPU), with the reason `auto` passed a GPU over;
    /// `Err` when `On` finds no adapter.
    pub fn resolve(self) -> Result<Resolved, String> {
        let cpu = |why: &'static str| Resolved {
            gpu: None,
            not_used: Some(why),
        };
        match self {
            GpuPreprocess::Off => Ok(Resolved {
                gpu: None,
                not_used: None,
            }),
            // Without a GPU device node there is no GPU to find: skip probing (which would
            // only find a software adapter, and makes Mesa print warnings).
            GpuPreprocess::Auto if !gpu_device_present() => Ok(cpu(
                "no GPU device node (/dev/nvidia0 or /dev/dri/renderD*): preprocessing on the CPU",
            )),
            GpuPreprocess::Auto => Ok(match Gpu::shared() {
                Ok(g) if !g.is_cpu => Resolved {
                    gpu: Some(g),
                    not_used: None,
                },
                Ok(_) => cpu("only a software adapter was found (slower than the CPU code)"),
                Err(_) => cpu("no usable GPU adapter: preprocessing on the CPU"),
            }),
            GpuPreprocess::On => Gpu::shared().map(|g| Resolved {
                gpu: Some(g),
                not_used: None,
            }),
        }
    }
}

//! The ONNX Runtime backend, through `ort` with `load-dynamic`: nothing is linked at build time.
//!
//! In: a model folder. Out: a shared model whose sessions each own an ORT session.
//! The library is found without the user's help ([`OnnxRuntime::find`]): `ORT_DYLIB_PATH`;
//! `capi/libonnxruntime.so.*` inside the `onnxruntime` (or `onnxruntime-gpu`) Python package,
//! located through `python3`; then the system's `libonnxruntime.so`. ORT allows one environment
//! per process, so it is initialised once and shared.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::Session as OrtSession;
use ort::value::{Tensor, ValueType};

use super::InputTensor;
use super::{check_shapes, Backend, Device, DeviceOptions, Model, ModelFolder, Placement, Session};
use crate::error::{Error, Result};

/// ONNX Runtime, loaded.
#[derive(Debug, Clone)]
pub struct OnnxRuntime {
    /// The library file.
    pub library: PathBuf,
    version: String,
}

/// The process-wide environment and the library it came from, or why it failed.
static ENV: OnceLock<std::result::Result<(PathBuf, Arc<ort::environment::Environment>), String>> =
    OnceLock::new();

fn candidates() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        c.push(PathBuf::from(p));
        return c;
    }
    for pkg in ["onnxruntime"] {
        if let Ok(dir) = crate::slide::openslide::python_package_dir(pkg) {
            if let Ok(entries) = std::fs::read_dir(dir.join("capi")) {
                let mut libs: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                    })
                    .collect();
                libs.sort();
                // The most specific name (libonnxruntime.so.1.32.0) last: take it.
                if let Some(l) = libs.pop() {
                    c.push(l);
                }
            }
        }
    }
    c.push(PathBuf::from("libonnxruntime.so"));
    c
}

/// "1.32.0" from "libonnxruntime.so.1.32.0".
fn version_from_name(p: &Path) -> String {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .unwrap_or("unknown")
        .to_string()
}

impl OnnxRuntime {
    /// Finds and initialises ONNX Runtime (once per process).
    pub fn find() -> Result<OnnxRuntime> {
        let env = ENV.get_or_init(|| {
            let mut tried = Vec::new();
            for lib in candidates() {
                match ort::init_from(&lib) {
                    Ok(builder) => {
                        return builder
                            .with_name("tessera")
                            .build()
                            .map(|env| (lib, Arc::new(env)))
                            .map_err(|e| e.to_string());
                    }
                    Err(e) => tried.push(format!("{}: {e}", lib.display())),
                }
            }
            Err(format!(
                "ONNX Runtime not found (tried {})",
                tried.join("; ")
            ))
        });
        match env {
            Ok((lib, _)) => Ok(OnnxRuntime {
                version: version_from_name(lib),
                library: lib.clone(),
            }),
            Err(message) => Err(Error::Model {
                path: PathBuf::from("libonnxruntime.so"),
                backend: "onnxruntime".into(),
                message: message.clone(),
            }),
        }
    }
}

struct OrtModel {
    onnx: PathBuf,
    threads: usize,
    device: Device,
    options: DeviceOptions,
    fallbacks: Vec<String>,
}

struct OrtSessionBox {
    session: Mutex<OrtSession>,
    input: String,
    /// The graph's fixed batch size, if it has one (batches are split and padded to it).
    fixed_batch: Option<usize>,
    path: PathBuf,
    /// On a GPU: page-locked host memory the input is copied into, so that the copy to the
    /// device runs at the bus's speed instead of through a pageable bounce buffer (on an H200
    /// the plain copy of float32 batches took most of the model's time).
    pinned: Option<Pinned>,
}

/// A page-locked input tensor, reused while batches keep its shape.
struct Pinned {
    allocator: ort::memory::Allocator,
    staging: Option<([usize; 4], Tensor<f32>)>,
}

impl Pinned {
    /// The CUDA provider's page-locked allocator for `session` on GPU `device_id`, or `None`
    /// where it has none (the plain copy is then used).
    fn new(session: &OrtSession, device_id: u32) -> Option<Pinned> {
        use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
        let info = MemoryInfo::new(
            AllocationDevice::CUDA_PINNED,
            device_id as i32,
            AllocatorType::Device,
            MemoryType::CPUInput,
        )
        .ok()?;
        let allocator = Allocator::new(session, info).ok()?;
        Some(Pinned {
            allocator,
            staging: None,
        })
    }

    /// `input` copied (in parallel) into the staging tensor, allocated anew when the shape
    /// changed (the last, partial batch).
    fn fill(&mut self, input: &InputTensor) -> ort::Result<&Tensor<f32>> {
        use rayon::prelude::*;
        if self.staging.as_ref().map(|(shape, _)| *shape) != Some(input.shape) {
            self.staging = None;
            let t = Tensor::<f32>::new(&self.allocator, input.shape)?;
            self.staging = Some((input.shape, t));
        }
        let Some((_, t)) = self.staging.as_mut() else {
            unreachable!("allocated above")
        };
        let ptr = t.data_ptr_mut().cast::<f32>();
        if ptr.is_null() {
            return Err(ort::Error::new("the page-locked input tensor has no data"));
        }
        // SAFETY: the tensor was allocated above with `input.shape`, that is exactly
        // `input.data.len()` float32 elements, in page-locked host memory, which the CPU
        // addresses directly (ort's checked accessor refuses it only because ONNX Runtime
        // 1.23 and later file CUDA_PINNED under the GPU device type); `t` is borrowed
        // mutably for as long as `data` lives.
        let data = unsafe { std::slice::from_raw_parts_mut(ptr, input.data.len()) };
        const CHUNK: usize = 1 << 18;
        data.par_chunks_mut(CHUNK)
            .zip(input.data.par_chunks(CHUNK))
            .for_each(|(d, s)| d.copy_from_slice(s));
        Ok(&*t)
    }
}

fn dims(t: &ValueType) -> Vec<Option<usize>> {
    match t {
        ValueType::Tensor { shape, .. } => shape
            .iter()
            .map(|&d| (d >= 0).then_some(d as usize))
            .collect(),
        _ => Vec::new(),
    }
}

/// The libraries ONNX Runtime's CUDA and TensorRT providers need, from the `nvidia-*` and
/// `tensorrt-*` Python packages beside the `onnxruntime-gpu` one, loaded once with RTLD_GLOBAL so
/// that the providers find them without LD_LIBRARY_PATH. Returns the libraries not found
/// (the system's loader may still have them).
fn preload_gpu_libraries() -> &'static Vec<String> {
    static MISSING: OnceLock<Vec<String>> = OnceLock::new();
    MISSING.get_or_init(|| {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Ok(ort_dir) = crate::slide::openslide::python_package_dir("onnxruntime") {
            if let Some(site) = ort_dir.parent() {
                // nvidia/<component>/lib (CUDA 12 layout) and nvidia/cu13/lib (CUDA 13).
                for root in [site.join("nvidia"), site.join("tensorrt_libs")] {
                    dirs.push(root.clone());
                    if let Ok(rd) = std::fs::read_dir(&root) {
                        for e in rd.filter_map(|e| e.ok()) {
                            dirs.push(e.path().join("lib"));
                        }
                    }
                }
            }
        }
        let wanted = ort::ep::cuda::CUDA_DYLIBS
            .iter()
            .chain(ort::ep::cuda::CUDNN_DYLIBS)
            .chain(&[
                "libnvinfer.so.10",
                "libnvinfer_plugin.so.10",
                "libnvonnxparser.so.10",
            ]);
        let mut missing = Vec::new();
        for name in wanted {
            let Some(path) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) else {
                missing.push(name.to_string());
                continue;
            };
            if crate::sys::load_library_globally(&path).is_err() {
                missing.push(name.to_string());
            }
        }
        missing
    })
}

/// Opens a session on `device` (never silently elsewhere).
fn open_session(
    onnx: &Path,
    threads: usize,
    device: Device,
    options: &DeviceOptions,
) -> std::result::Result<OrtSession, String> {
    let Some(Ok((lib, env))) = ENV.get() else {
        return Err("ONNX Runtime is not initialised".into());
    };
    let mut builder = OrtSession::builder(env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads.max(1))
        .map_err(|e| e.to_string())?;
    let gpu_hint = |what: &str| {
        format!(
            "{} has no {what} execution provider ({}); install the GPU one: pip install \
             onnxruntime-gpu plus the nvidia-* packages (see the README)",
            lib.display(),
            super::CPU_ONLY_PACKAGE
        )
    };
    let ep = match device {
        Device::Cpu | Device::Auto => None,
        Device::Cuda(n) => {
            use ort::ep::ExecutionProvider;
            if !ort::ep::CUDA::is_available().unwrap_or(false) {
                return Err(gpu_hint("CUDA"));
            }
            let _ = preload_gpu_libraries();
            Some(ort::ep::CUDA::default().with_device_id(n as i32).build())
        }
        Device::TensorRt(n) => {
            use ort::ep::ExecutionProvider;
            if !ort::ep::TensorRT::is_available().unwrap_or(false) {
                return Err(gpu_hint("TensorRT"));
            }
            // Without TensorRT's own library, registering the provider fails; and on an H200
            // that failed registration left CUDA unusable for the `auto` fallback that
            // followed (cuDNN: "operation failed due to a previous error"). Check first.
            if preload_gpu_libraries()
                .iter()
                .any(|m| m == "libnvinfer.so.10")
            {
                crate::sys::load_library_globally(Path::new("libnvinfer.so.10")).map_err(|e| {
                    format!(
                        "TensorRT's libnvinfer.so.10 is neither in the Python packages \
                             nor found by the system's loader ({e}); pip install the \
                             tensorrt-cu13-libs package, or use --device cuda"
                    )
                })?;
            }
            let mut trt = ort::ep::TensorRT::default()
                .with_device_id(n as i32)
                .with_fp16(options.fp16);
            if let Some(dir) = &options.trt_cache {
                std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display());
            }
            Some(trt.build())
        }
    };
    if let Some(ep) = ep {
        builder = builder
            .with_execution_providers([ep.error_on_failure()])
            .map_err(|e| {
                let missing = preload_gpu_libraries();
                if missing.is_empty() {
                    e.to_string()
                } else {
                    format!(
                        "{e} (not found in the Python packages: {})",
                        missing.join(", ")
                    )
                }
            })?;
    }
    builder.commit_from_file(onnx).map_err(|e| e.to_string())
}

impl Backend for OnnxRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn load(
        &self,
        model: &ModelFolder,
        threads: usize,
        options: &DeviceOptions,
    ) -> Result<Arc<dyn Model>> {
        let fail = |message: String| Error::Model {
            path: model.onnx.clone(),
            backend: "onnxruntime".into(),
            message,
        };
        // `auto`: the first device that opens the model; each one skipped is recorded.
        let tries = match options.device {
            Device::Auto => vec![Device::TensorRt(0), Device::Cuda(0), Device::Cpu],
            d => vec![d],
        };
        let mut fallbacks = Vec::new();
        for device in tries {
            // Open once to check the graph against the configuration.
            let s = match open_session(&model.onnx, 1, device, options) {
                Ok(s) => s,
                Err(why) if device == Device::Cpu => return Err(fail(why)),
                Err(why) if options.device == Device::Auto => {
                    fallbacks.push(format!("{}: {why}", device.label()));
                    continue;
                }
                Err(why) => {
                    return Err(Error::Device {
                        device: format!("--device {}", device.label()),
                        message: why,
                    })
                }
            };
            let (Some(i), Some(o)) = (s.inputs().first(), s.outputs().first()) else {
                return Err(fail("the graph has no input or no output".into()));
            };
            check_shapes(
                model,
                "onnxruntime",
                (i.name(), &dims(i.dtype())),
                (o.name(), &dims(o.dtype())),
            )?;
            return Ok(Arc::new(OrtModel {
                onnx: model.onnx.clone(),
                threads,
                device,
                options: options.clone(),
                fallbacks,
            }));
        }
        Err(fail("no device could run the model".into()))
    }
}

impl Model for OrtModel {
    fn sessions_wanted(&self) -> usize {
        match self.device {
            Device::Cuda(_) | Device::TensorRt(_) => 2,
            Device::Cpu | Device::Auto => 1,
        }
    }

    fn placement(&self) -> Placement {
        Placement {
            device: self.device.label(),
            fallbacks: self.fallbacks.clone(),
        }
    }

    fn session(&self) -> Result<Box<dyn Session>> {
        let session = open_session(&self.onnx, self.threads, self.device, &self.options).map_err(
            |message| Error::Model {
                path: self.onnx.clone(),
                backend: "onnxruntime".into(),
                message,
            },
        )?;
        let first = session.inputs().first();
        let input = first.map(|i| i.name().to_string()).unwrap_or_default();
        let fixed_batch = first
            .and_then(|i| dims(i.dtype()).first().copied().flatten())
            .filter(|&n| n > 0);
        let pinned = match self.device {
            Device::Cuda(n) | Device::TensorRt(n) => Pinned::new(&session, n),
            Device::Cpu | Device::Auto => None,
        };
        Ok(Box::new(OrtSessionBox {
            session: Mutex::new(session),
            input,
            fixed_batch,
            path: self.onnx.clone(),
            pinned,
        }))
    }
}

impl Session for OrtSessionBox {
    fn run(&mut self, input: InputTensor) -> Result<Vec<Vec<f32>>> {
        let Some(fixed) = self.fixed_batch else {
            return self.run_exact(input);
        };
        // A graph with a fixed batch size: run chunks of that size, padding the last with
        // zeros whose rows are dropped.
        let per = input.patch_len();
        let n = input.patches();
        let mut rows = Vec::with_capacity(n);
        for start in (0..n).step_by(fixed) {
            let take = fixed.min(n - start);
            let mut data = input.data[start * per..(start + take) * per].to_vec();
            data.resize(fixed * per, 0.0);
            let mut shape = input.shape;
            shape[0] = fixed;
            let padded = InputTensor { shape, data };
            rows.extend(self.run_exact(padded)?.into_iter().take(take));
        }
        Ok(rows)
    }
}

impl OrtSessionBox {
    fn run_exact(&mut self, input: InputTensor) -> Result<Vec<Vec<f32>>> {
        let fail = |message: String| Error::Inference {
            path: self.path.clone(),
            backend: "onnxruntime".into(),
            message,
        };
        let n = input.patches();
        let session = self.session.get_mut().unwrap_or_else(|e| e.into_inner());
        let outputs = match self.pinned.as_mut().map(|p| p.fill(&input)) {
            Some(Ok(staged)) => session.run(ort::inputs![self.input.as_str() => staged]),
            // No page-locked memory (or none left): the plain copy, from now on.
            unpinned => {
                if unpinned.is_some() {
                    self.pinned = None;
                }
                let tensor = Tensor::from_array((input.shape, input.data))
                    .map_err(|e| fail(e.to_string()))?;
                session.run(ort::inputs![self.input.as_str() => tensor])
            }
        }
        .map_err(|e| fail(e.to_string()))?;
        let (_, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        super::split_rows(values, n).map_err(fail)
    }
}

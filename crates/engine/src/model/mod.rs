//! Patch classifiers: the model folder, and the inference backends that run it.
//!
//! In: a model folder (`model.onnx` + `config.json`: WSInfer's model configuration plus an
//! optional `tessera` object) and an [`InputTensor`] (a batch of preprocessed patches, made by
//! [`crate::batch`] with [`crate::imaging::preprocess`]). Out: per-patch class probabilities.
//!
//! Backends are split by lifetime, as tract does: a [`Backend`] finds its runtime and loads a
//! model once into a [`Model`] (shared by all workers, `Send + Sync`), which opens one
//! [`Session`] per worker (`run(&mut self, InputTensor)`): the model layer takes tensors, never
//! a domain type. Two backends exist: ONNX Runtime through
//! `ort` (loaded at run time; see [`ort_backend`]) and `tract`, pure Rust, always available.
//! `auto` takes ONNX Runtime when it loads and tract otherwise, and says which it chose.

pub mod bundled;
pub mod config;
#[cfg(feature = "ort")]
pub mod ort_backend;
#[cfg(feature = "tract")]
pub mod tract_backend;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use serde::Serialize;

use crate::error::{Error, Result};
use config::ModelConfig;

/// A model on disk.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Its validated configuration.
    pub config: ModelConfig,
    /// `model.onnx`.
    pub onnx: PathBuf,
    /// SHA-256 of `model.onnx`, hex.
    pub sha256: String,
    /// The folder's name.
    pub name: String,
}

impl ModelFolder {
    /// Reads and validates a model folder.
    pub fn load(dir: &Path) -> Result<ModelFolder> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let onnx = dir.join("model.onnx");
        let bytes = std::fs::read(&onnx).map_err(|e| Error::from_io(&onnx, e))?;
        let sha256 = format!("{:x}", Sha256::digest(&bytes));
        let name = dir
            .canonicalize()
            .unwrap_or_else(|_| dir.to_path_buf())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        Ok(ModelFolder {
            dir: dir.into(),
            config,
            onnx,
            sha256,
            name,
        })
    }
}

/// Which inference backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InferenceChoice {
    /// ONNX Runtime when it can be loaded, tract otherwise.
    #[default]
    Auto,
    /// ONNX Runtime (error if it cannot be loaded).
    Ort,
    /// tract (pure Rust, always available, slower).
    Tract,
}

/// Where inference runs (`--device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// TensorRT, then CUDA, then the CPU: the first that works; each fallback is recorded.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// ONNX Runtime's CUDA execution provider on GPU N.
    Cuda(u32),
    /// ONNX Runtime's TensorRT execution provider on GPU N.
    TensorRt(u32),
}

impl Device {
    /// `auto`, `cpu`, `cuda`, `cuda:N`, `tensorrt`, `tensorrt:N`.
    pub fn parse(s: &str) -> Option<Device> {
        let (kind, n) = match s.split_once(':') {
            Some((k, n)) => (k, Some(n.parse::<u32>().ok()?)),
            None => (s, None),
        };
        match (kind, n) {
            ("auto", None) => Some(Device::Auto),
            ("cpu", None) => Some(Device::Cpu),
            ("cuda", n) => Some(Device::Cuda(n.unwrap_or(0))),
            ("tensorrt", n) => Some(Device::TensorRt(n.unwrap_or(0))),
            _ => None,
        }
    }

    /// "CPU", "CUDA:0", "TensorRT:1", "auto".
    pub fn label(self) -> String {
        match self {
            Device::Auto => "auto".into(),
            Device::Cpu => "CPU".into(),
            Device::Cuda(n) => format!("CUDA:{n}"),
            Device::TensorRt(n) => format!("TensorRT:{n}"),
        }
    }

    /// `--device`: one device, or several GPUs of one kind, `cuda:0,1` or `tensorrt:0,2`
    /// (each holds its own copy of the model; patches are shared among them).
    pub fn parse_list(s: &str) -> Option<Vec<Device>> {
        let Some((kind, ids)) = s.split_once(':').filter(|(_, ids)| ids.contains(',')) else {
            return Device::parse(s).map(|d| vec![d]);
        };
        let devices = ids
            .split(',')
            .map(|n| Device::parse(&format!("{kind}:{}", n.trim())))
            .collect::<Option<Vec<_>>>()?;
        let mut seen = std::collections::BTreeSet::new();
        let gpus = devices
            .iter()
            .all(|d| matches!(d, Device::Cuda(_) | Device::TensorRt(_)));
        (gpus && devices.iter().all(|d| seen.insert(d.label()))).then_some(devices)
    }
}

/// The device asked for, and its options.
///
/// Serialized into the run key: only `fp16` can change results (the devices agree within the
/// backends' tolerance, and result.json records which ran).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeviceOptions {
    /// The device (the first, when there are several).
    #[serde(skip)]
    pub device: Device,
    /// Further devices, each with its own copy of the model and its own sessions; the
    /// workers' sessions alternate between the devices, so the patches of a slide are shared
    /// among them (`--device cuda:0,1`). Usually empty.
    #[serde(skip)]
    pub more: Vec<Device>,
    /// TensorRT in FP16.
    pub fp16: bool,
    /// Where TensorRT keeps built engines, so that the next run starts fast.
    #[serde(skip)]
    pub trt_cache: Option<PathBuf>,
}

/// Where a loaded model runs, and why not elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Placement {
    /// "CPU", "CUDA:0", "TensorRT:0".
    pub device: String,
    /// For `auto`: each device tried before, with the reason it was not used.
    pub fallbacks: Vec<String>,
}

/// An inference runtime.
pub trait Backend: Send + Sync {
    /// "onnxruntime" or "tract".
    fn name(&self) -> &'static str;
    /// The runtime's version.
    fn version(&self) -> String;
    /// Loads a model on `device`; `threads` bounds the runtime's own parallelism per session.
    /// A device named explicitly that cannot be used is an [`Error::Device`].
    fn load(
        &self,
        model: &ModelFolder,
        threads: usize,
        device: &DeviceOptions,
    ) -> Result<Arc<dyn Model>>;
}

/// How a fallback names the reason "this ONNX Runtime has no GPU providers at all", the
/// expected case on a CPU machine (logged in one short line; recorded in full).
pub const CPU_ONLY_PACKAGE: &str = "it is the CPU-only package";

/// A loaded model, shared by workers.
pub trait Model: Send + Sync {
    /// A session for one worker.
    fn session(&self) -> Result<Box<dyn Session>>;
    /// Where its sessions run.
    fn placement(&self) -> Placement;
    /// Devices it runs on: a run opens at least this many sessions, so that each is used.
    fn devices(&self) -> usize {
        1
    }
    /// Sessions a run opens at least: one per device, and two per GPU, so that one is fed
    /// (packed, copied to the device) while the other computes.
    fn sessions_wanted(&self) -> usize {
        self.devices()
    }
}

/// Loads `model` on the device of `opts` and on each of `opts.more` (an error for any that
/// cannot be used); with several, sessions are opened on the devices in turn.
pub fn load_on_devices(
    backend: &dyn Backend,
    model: &ModelFolder,
    threads: usize,
    opts: &DeviceOptions,
) -> Result<Arc<dyn Model>> {
    if opts.more.is_empty() {
        return backend.load(model, threads, opts);
    }
    let models = std::iter::once(opts.device)
        .chain(opts.more.iter().copied())
        .map(|device| {
            let one = DeviceOptions {
                device,
                more: Vec::new(),
                ..opts.clone()
            };
            backend.load(model, threads, &one)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Arc::new(Devices {
        models,
        next: std::sync::atomic::AtomicUsize::new(0),
    }))
}

/// A model loaded on several devices: sessions are opened on each in turn.
struct Devices {
    models: Vec<Arc<dyn Model>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Model for Devices {
    fn session(&self) -> Result<Box<dyn Session>> {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.models[i % self.models.len()].session()
    }

    fn placement(&self) -> Placement {
        let all: Vec<Placement> = self.models.iter().map(|m| m.placement()).collect();
        Placement {
            device: all
                .iter()
                .map(|p| p.device.as_str())
                .collect::<Vec<_>>()
                .join(" + "),
            fallbacks: all.into_iter().flat_map(|p| p.fallbacks).collect(),
        }
    }

    fn devices(&self) -> usize {
        self.models.len()
    }

    fn sessions_wanted(&self) -> usize {
        self.models.iter().map(|m| m.sessions_wanted()).sum()
    }
}

/// A model's input: float32 values of `shape[0]` patches, `[n, 3, h, w]` (NCHW) or
/// `[n, h, w, 3]` (NHWC), already scaled and normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    /// The tensor's shape; the first dimension is the number of patches.
    pub shape: [usize; 4],
    /// `shape`'s product of values, row-major.
    pub data: Vec<f32>,
}

impl InputTensor {
    /// Patches in the tensor.
    pub fn patches(&self) -> usize {
        self.shape[0]
    }

    /// Values per patch.
    pub fn patch_len(&self) -> usize {
        self.shape[1..].iter().product()
    }
}

/// One worker's inference session.
pub trait Session: Send {
    /// Runs a batch and returns the raw outputs, one row of `num_classes` values per patch.
    fn run(&mut self, input: InputTensor) -> Result<Vec<Vec<f32>>>;
}

/// The chosen backend and, for `auto`, why.
pub struct Chosen {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// Why the backend asked for first was not used (`auto` without ONNX Runtime), recorded
    /// among result.json's inference fallbacks.
    pub fallback: Option<String>,
    /// A line for the user: which backend runs, and how to get the faster one.
    pub note: String,
}

/// Picks a backend.
pub fn choose(choice: InferenceChoice) -> Result<Chosen> {
    match choice {
        InferenceChoice::Tract => tract(None, "inference: tract (pure Rust), as requested".into()),
        InferenceChoice::Ort => onnx_runtime(),
        InferenceChoice::Auto => match onnx_runtime() {
            Ok(chosen) => Ok(chosen),
            Err(e) => tract(
                Some(format!("ONNX Runtime: {e}; tract ran instead")),
                format!(
                    "inference: tract (pure Rust). ONNX Runtime runs several times faster: \
                     `pip install onnxruntime` or set ORT_DYLIB_PATH ({e})"
                ),
            ),
        },
    }
}

/// ONNX Runtime, when this build has it and it loads.
fn onnx_runtime() -> Result<Chosen> {
    #[cfg(feature = "ort")]
    {
        let b = ort_backend::OnnxRuntime::find()?;
        Ok(Chosen {
            fallback: None,
            note: format!(
                "inference: ONNX Runtime {} ({})",
                b.version(),
                b.library.display()
            ),
            backend: Arc::new(b),
        })
    }
    #[cfg(not(feature = "ort"))]
    Err(Error::NotBuilt {
        feature: "ort",
        what: "ONNX Runtime".into(),
    })
}

/// tract, when this build has it.
fn tract(fallback: Option<String>, note: String) -> Result<Chosen> {
    #[cfg(feature = "tract")]
    {
        Ok(Chosen {
            backend: Arc::new(tract_backend::Tract),
            fallback,
            note,
        })
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = (fallback, note);
        Err(Error::NotBuilt {
            feature: "tract",
            what: "tract (and ONNX Runtime did not load)".into(),
        })
    }
}

/// Runs any single-input ONNX graph once on `input` (shape `shape`) and returns its first
/// output as floats: for auxiliary models such as a tissue segmenter (tract, pure Rust).
pub fn run_once(onnx: &Path, input: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
    #[cfg(feature = "tract")]
    {
        tract_backend::run_once(onnx, input, shape)
    }
    #[cfg(not(feature = "tract"))]
    {
        let _ = (input, shape);
        Err(Error::NotBuilt {
            feature: "tract",
            what: format!("tract, which runs the auxiliary model {}", onnx.display()),
        })
    }
}

/// Splits a batch's flat output into one row per patch.
#[cfg(any(feature = "ort", feature = "tract"))]
pub(crate) fn split_rows(values: &[f32], n: usize) -> std::result::Result<Vec<Vec<f32>>, String> {
    if n == 0 || values.len() % n != 0 {
        return Err(format!("{} outputs for {n} patches", values.len()));
    }
    Ok(values
        .chunks(values.len() / n)
        .map(<[f32]>::to_vec)
        .collect())
}

/// Turns raw model outputs into probabilities: softmax over several outputs, sigmoid for one
/// (WSInfer's rule), unless the configuration says the graph already outputs probabilities.
pub fn to_probabilities(config: &ModelConfig, raw: Vec<f32>) -> Vec<f32> {
    if config.tessera.outputs_probabilities {
        return raw;
    }
    if raw.len() == 1 {
        return vec![1.0 / (1.0 + (-raw[0]).exp())];
    }
    let max = raw.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = raw.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Checks a graph's declared input and output shapes against the configuration. Dimensions
/// that are dynamic (`None`) match anything.
pub fn check_shapes(
    model: &ModelFolder,
    backend: &str,
    input: (&str, &[Option<usize>]),
    output: (&str, &[Option<usize>]),
) -> Result<()> {
    check_input(model, backend, input)?;
    check_output(model, backend, output)
}

/// The input half of [`check_shapes`]: a batch of images in the config's layout and size.
pub fn check_input(
    model: &ModelFolder,
    backend: &str,
    (in_name, input): (&str, &[Option<usize>]),
) -> Result<()> {
    let bad = |message: String| Error::Model {
        path: model.onnx.clone(),
        backend: backend.into(),
        message,
    };
    let (h, w) = model.config.input_size();
    let expected: [Option<usize>; 3] = match model.config.tessera.layout {
        config::Layout::Nchw => [Some(3), Some(h as usize), Some(w as usize)],
        config::Layout::Nhwc => [Some(h as usize), Some(w as usize), Some(3)],
    };
    if input.len() != 4 {
        return Err(bad(format!(
            "input {in_name:?} has rank {}, expected 4 (a batch of images)",
            input.len()
        )));
    }
    for (got, want) in input[1..].iter().zip(expected) {
        if let (Some(g), Some(wnt)) = (got, want) {
            if *g != wnt {
                return Err(bad(format!(
                    "input {in_name:?} has shape {}, which does not match {:?} {h}×{w} from \
                     config.json",
                    shape_text(input),
                    model.config.tessera.layout
                )));
            }
        }
    }
    Ok(())
}

/// The output half of [`check_shapes`]: one value per class per patch, or a dense model's
/// `[batch, classes, height, width]`.
fn check_output(
    model: &ModelFolder,
    backend: &str,
    (out_name, output): (&str, &[Option<usize>]),
) -> Result<()> {
    let bad = |message: String| Error::Model {
        path: model.onnx.clone(),
        backend: backend.into(),
        message,
    };
    let classes = model.config.num_classes;
    if model.config.tessera.dense.is_some() {
        return match output {
            [_, c, _, _] if c.is_none_or(|c| c == classes) => Ok(()),
            _ => Err(bad(format!(
                "output {out_name:?} has shape {}; a dense model (tessera.dense in config.json) \
                 must output [batch, {classes} classes, height, width]",
                shape_text(output)
            ))),
        };
    }
    if output.len() > 2 {
        return Err(bad(format!(
            "output {out_name:?} has shape {}: a dense (per-pixel) output, but config.json \
             declares a patch classifier (one vector of {classes} class values per patch); \
             declare tessera.dense to run it as a dense model (docs/models.md)",
            shape_text(output)
        )));
    }
    match output.last() {
        Some(Some(c)) if *c != classes && !(classes == 1 && *c == 1) => Err(bad(format!(
            "output {out_name:?} has shape {}: {c} values per patch, config.json names \
             {classes} classes",
            shape_text(output)
        ))),
        None => Err(bad(format!("output {out_name:?} is a scalar"))),
        _ => Ok(()),
    }
}

/// A shape as `[?, 3, 224, 224]` (`?` where symbolic or unknown).
fn shape_text(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_sigmoid() {
        let c = ModelConfig::parse(
            Path::new("c.json"),
            r#"{"spec_version":"1.0","architecture":"x","num_classes":2,"class_names":["a","b"],
               "patch_size_pixels":8,"spacing_um_px":1,"transform":[]}"#,
        )
        .unwrap();
        let p = to_probabilities(&c, vec![1.0, 1.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        let p = to_probabilities(&c, vec![0.0, 1000.0]);
        assert_eq!(p, vec![0.0, 1.0]);
        assert_eq!(to_probabilities(&c, vec![0.0]), vec![0.5]);
    }

    #[test]
    fn device_lists_name_distinct_gpus_of_one_kind() {
        assert_eq!(
            Device::parse_list("cuda:0,1"),
            Some(vec![Device::Cuda(0), Device::Cuda(1)])
        );
        assert_eq!(
            Device::parse_list("tensorrt:2, 0"),
            Some(vec![Device::TensorRt(2), Device::TensorRt(0)])
        );
        assert_eq!(Device::parse_list("cuda:1"), Some(vec![Device::Cuda(1)]));
        assert_eq!(Device::parse_list("auto"), Some(vec![Device::Auto]));
        for bad in [
            "cuda:0,0", "cpu:0,1", "auto:0,1", "cuda:0,x", "cuda:0,", "cuda,1",
        ] {
            assert_eq!(Device::parse_list(bad), None, "{bad}");
        }
    }
}

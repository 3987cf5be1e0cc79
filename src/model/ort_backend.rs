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

use super::{check_shapes, Backend, Model, ModelFolder, Session};
use crate::batch::PatchBatch;
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
}

struct OrtSessionBox {
    session: Mutex<OrtSession>,
    input: String,
    /// The graph's fixed batch size, if it has one (batches are split and padded to it).
    fixed_batch: Option<usize>,
    path: PathBuf,
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

fn open_session(onnx: &Path, threads: usize) -> std::result::Result<OrtSession, String> {
    let Some(Ok((_, env))) = ENV.get() else {
        return Err("ONNX Runtime is not initialised".into());
    };
    OrtSession::builder(env)
        .map_err(|e| e.to_string())?
        .with_intra_threads(threads.max(1))
        .map_err(|e| e.to_string())?
        .commit_from_file(onnx)
        .map_err(|e| e.to_string())
}

impl Backend for OnnxRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn version(&self) -> String {
        self.version.clone()
    }

    fn load(&self, model: &ModelFolder, threads: usize) -> Result<Arc<dyn Model>> {
        let fail = |message: String| Error::Model {
            path: model.onnx.clone(),
            backend: "onnxruntime".into(),
            message,
        };
        // Open once to check the graph against the configuration.
        let s = open_session(&model.onnx, 1).map_err(fail)?;
        let (Some(i), Some(o)) = (s.inputs().first(), s.outputs().first()) else {
            return Err(fail("the graph has no input or no output".into()));
        };
        check_shapes(model, "onnxruntime", &dims(i.dtype()), &dims(o.dtype()))?;
        Ok(Arc::new(OrtModel {
            onnx: model.onnx.clone(),
            threads,
        }))
    }
}

impl Model for OrtModel {
    fn session(&self) -> Result<Box<dyn Session>> {
        let session = open_session(&self.onnx, self.threads).map_err(|message| Error::Model {
            path: self.onnx.clone(),
            backend: "onnxruntime".into(),
            message,
        })?;
        let first = session.inputs().first();
        let input = first.map(|i| i.name().to_string()).unwrap_or_default();
        let fixed_batch = first
            .and_then(|i| dims(i.dtype()).first().copied().flatten())
            .filter(|&n| n > 0);
        Ok(Box::new(OrtSessionBox {
            session: Mutex::new(session),
            input,
            fixed_batch,
            path: self.onnx.clone(),
        }))
    }
}

impl Session for OrtSessionBox {
    fn run(&mut self, batch: &PatchBatch) -> Result<Vec<Vec<f32>>> {
        let Some(fixed) = self.fixed_batch else {
            return self.run_exact(batch);
        };
        // A graph with a fixed batch size: run chunks of that size, padding the last with
        // black patches whose rows are dropped.
        let per = batch.pre.patch_len();
        let mut rows = Vec::with_capacity(batch.indices.len());
        for (k, idx) in batch.indices.chunks(fixed).enumerate() {
            let start = k * fixed * per;
            let mut pixels = batch.pixels[start..start + idx.len() * per].to_vec();
            pixels.resize(fixed * per, 0);
            let padded = PatchBatch {
                indices: (0..fixed).map(|i| idx[i.min(idx.len() - 1)]).collect(),
                pixels,
                pre: batch.pre.clone(),
            };
            rows.extend(self.run_exact(&padded)?.into_iter().take(idx.len()));
        }
        Ok(rows)
    }
}

impl OrtSessionBox {
    fn run_exact(&mut self, batch: &PatchBatch) -> Result<Vec<Vec<f32>>> {
        let fail = |message: String| Error::Inference {
            path: self.path.clone(),
            backend: "onnxruntime".into(),
            message,
        };
        let n = batch.indices.len();
        let tensor =
            Tensor::from_array((batch.shape(), batch.tensor())).map_err(|e| fail(e.to_string()))?;
        let session = self.session.get_mut().unwrap_or_else(|e| e.into_inner());
        let outputs = session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| fail(e.to_string()))?;
        let (_, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| fail(e.to_string()))?;
        super::split_rows(values, n).map_err(fail)
    }
}

//! The tract backend: pure Rust ONNX inference, always available.
//!
//! In: a model folder. Out: a shared optimised plan with a symbolic batch dimension; each
//! session runs batches on it, split across the threads it was given (tract runs a plan on one
//! core, so a batch of n patches becomes up to `threads` sub-batches run side by side, and
//! their rows are put back in order).
//!
//! Loading ignores the file's intermediate shape annotations (`value_info`) and its declared
//! output shape: exporters name symbolic dimensions freely (`batch_size`, `N`, `s0`…), and
//! tract would refuse to unify them with the input fact Tessera sets. The shapes that matter
//! are inferred from the graph and checked against the config afterwards.

use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use super::InputTensor;
use super::{check_shapes, Backend, Device, DeviceOptions, Model, ModelFolder, Placement, Session};
use crate::error::{Error, Result};

/// The tract backend.
pub struct Tract;

struct TractModel {
    plan: Arc<TypedRunnableModel>,
    path: std::path::PathBuf,
    fallbacks: Vec<String>,
    threads: usize,
}

struct TractSession {
    plan: Arc<TypedRunnableModel>,
    path: std::path::PathBuf,
    threads: usize,
}

/// The default-domain opsets Tessera gives to tract: from the oldest tract reads reliably to
/// the newest the ONNX standard defines (onnx 1.23: 28). tract itself is tested on 9–18 and
/// warns, not fails, outside them; an opset outside this range is refused with a typed error.
pub const TRACT_OPSETS: std::ops::RangeInclusive<i64> = 7..=28;

/// Parses an ONNX file with tract, lenient about annotations that only repeat (or contradict)
/// what the graph itself says, strict about the opset. Weights in an external file (e.g.
/// `model.onnx.data`) are read from the file's folder.
fn read_graph(path: &std::path::Path) -> std::result::Result<InferenceModel, String> {
    let onnx = tract_onnx::onnx()
        .with_ignore_value_info(true)
        .with_ignore_output_shapes(true);
    let proto = onnx
        .proto_model_for_path(path)
        .map_err(|e| format!("{e:#}"))?;
    let opset = proto
        .opset_import
        .iter()
        .find(|i| i.domain.is_empty() || i.domain == "ai.onnx")
        .map(|i| i.version)
        .unwrap_or(0);
    if !TRACT_OPSETS.contains(&opset) {
        return Err(format!(
            "ONNX opset {opset} (default domain) is outside {}–{}, the opsets tract is given",
            TRACT_OPSETS.start(),
            TRACT_OPSETS.end()
        ));
    }
    let dir = path.parent().and_then(|d| d.to_str());
    let parsed = onnx.parse(&proto, dir).map_err(|e| format!("{e:#}"))?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(format!(
            "inputs that no tensor provides: {}",
            parsed.unresolved_inputs.join(", ")
        ));
    }
    Ok(parsed.model)
}

/// Declared dimensions (`None` where symbolic or unknown); empty when the rank is unknown.
fn dims(fact: &InferenceFact) -> Vec<Option<usize>> {
    if fact.shape.is_open() {
        return Vec::new();
    }
    fact.shape
        .dims()
        .map(|d| {
            d.concretize()
                .and_then(|v| v.to_i64().ok())
                .map(|v| v as usize)
        })
        .collect()
}

impl Backend for Tract {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn version(&self) -> String {
        "0.23".into()
    }

    fn load(
        &self,
        model: &ModelFolder,
        threads: usize,
        device: &DeviceOptions,
    ) -> Result<Arc<dyn Model>> {
        let fallbacks = match device.device {
            Device::Cpu => Vec::new(),
            Device::Auto => vec![
                "TensorRT, CUDA: not tried: tract runs on the CPU only (ONNX Runtime, which has \
                 the GPU providers, is not in use)"
                    .to_string(),
            ],
            d => {
                return Err(Error::Device {
                    device: format!("--device {}", d.label()),
                    message: "inference runs on tract, which has no GPU support; ONNX Runtime \
                              with CUDA is needed (see the README: pip install onnxruntime-gpu \
                              and the nvidia-* packages, then --inference ort)"
                        .into(),
                })
            }
        };
        let fail = |message: String| Error::Model {
            path: model.onnx.clone(),
            backend: "tract".into(),
            message,
        };
        let mut graph = read_graph(&model.onnx).map_err(fail)?;
        let input = graph
            .input_fact(0)
            .map_err(|e| fail(format!("{e:#}")))?
            .clone();
        let output = graph
            .output_fact(0)
            .map_err(|e| fail(format!("{e:#}")))?
            .clone();
        let declared_input = dims(&input);
        // The file's names for the input and output, for errors.
        let name = |outlet: Option<&OutletId>| {
            outlet.map_or_else(String::new, |o| graph.node(o.node).name.clone())
        };
        let (in_name, out_name) = (
            name(graph.input_outlets().ok().and_then(|o| o.first())),
            name(graph.output_outlets().ok().and_then(|o| o.first())),
        );
        let _ = output;
        // The declared input against the config first: a mismatch is named as such, not as
        // whichever operator first fails to take the wrong shape.
        if !declared_input.is_empty() {
            super::check_input(model, "tract", (&in_name, &declared_input))?;
        }
        // A symbolic batch: the same plan serves full and partial batches.
        let (h, w) = model.config.input_size();
        let n: TDim = graph.symbols.sym("N").into();
        let (c, h, w) = (TDim::from(3), TDim::from(h as i64), TDim::from(w as i64));
        let shape: TVec<TDim> = match model.config.tessera.layout {
            super::config::Layout::Nchw => tvec![n, c, h, w],
            super::config::Layout::Nhwc => tvec![n, h, w, c],
        };
        graph
            .set_input_fact(0, f32::fact(shape).into())
            .map_err(|e| fail(format!("{e:#}")))?;
        let layout = model.config.tessera.layout;
        let optimized = graph.into_optimized().map_err(|e| {
            fail(format!(
                "the graph does not take a {layout:?} batch of {}×{} images (config.json): {e:#}",
                model.config.input_size().0,
                model.config.input_size().1
            ))
        })?;
        // The typed output shape, with the batch symbolic: checks the class count.
        let out_dims: Vec<Option<usize>> = optimized
            .output_fact(0)
            .map_err(|e| fail(format!("{e:#}")))?
            .shape
            .iter()
            .map(|d| d.to_i64().ok().map(|v| v as usize))
            .collect();
        let in_dims = if declared_input.is_empty() {
            vec![None; 4]
        } else {
            declared_input
        };
        check_shapes(model, "tract", (&in_name, &in_dims), (&out_name, &out_dims))?;
        let plan = optimized
            .into_runnable()
            .map_err(|e| fail(format!("{e:#}")))?;
        Ok(Arc::new(TractModel {
            plan,
            path: model.onnx.clone(),
            fallbacks,
            threads: threads.max(1),
        }))
    }
}

impl Model for TractModel {
    fn placement(&self) -> Placement {
        Placement {
            device: "CPU".into(),
            fallbacks: self.fallbacks.clone(),
        }
    }

    fn session(&self) -> Result<Box<dyn Session>> {
        Ok(Box::new(TractSession {
            plan: self.plan.clone(),
            path: self.path.clone(),
            threads: self.threads,
        }))
    }
}

impl TractSession {
    /// Runs one (sub-)batch: `shape` with `data`, returns its output values.
    fn run_part(&self, shape: [usize; 4], data: Vec<f32>) -> Result<Vec<f32>> {
        let fail = |message: String| Error::Inference {
            path: self.path.clone(),
            backend: "tract".into(),
            message,
        };
        let x = tract_ndarray::Array4::from_shape_vec(shape, data)
            .map_err(|e| fail(e.to_string()))?
            .into_tensor();
        let out = self
            .plan
            .run(tvec!(x.into()))
            .map_err(|e| fail(format!("{e:#}")))?;
        let t = out.first().ok_or_else(|| fail("no output".into()))?;
        t.try_as_plain_ram()
            .and_then(|r| r.as_slice::<f32>())
            .map(<[f32]>::to_vec)
            .map_err(|e| fail(format!("{e:#}")))
    }
}

impl Session for TractSession {
    fn run(&mut self, input: InputTensor) -> Result<Vec<Vec<f32>>> {
        let n = input.patches();
        let parts = self.threads.min(n).max(1);
        let per_patch = input.data.len() / n.max(1);
        let values = if parts == 1 {
            self.run_part(input.shape, input.data)?
        } else {
            // Contiguous sub-batches, as even as possible; joined back in order.
            let base = n / parts;
            let extra = n % parts;
            let mut chunks = Vec::with_capacity(parts);
            let mut at = 0;
            for p in 0..parts {
                let len = base + usize::from(p < extra);
                let mut shape = input.shape;
                shape[0] = len;
                chunks.push((
                    shape,
                    input.data[at * per_patch..(at + len) * per_patch].to_vec(),
                ));
                at += len;
            }
            let this = &*self;
            let results: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
                let handles: Vec<_> = chunks
                    .into_iter()
                    .map(|(shape, data)| s.spawn(move || this.run_part(shape, data)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(Error::Panicked {
                                path: this.path.clone(),
                                thread: "tract inference thread",
                            })
                        })
                    })
                    .collect()
            });
            let mut all = Vec::new();
            for r in results {
                all.extend(r?);
            }
            all
        };
        super::split_rows(&values, n).map_err(|message| Error::Inference {
            path: self.path.clone(),
            backend: "tract".into(),
            message,
        })
    }
}

/// Runs any single-input ONNX graph once on `input` (shape `shape`) with tract and returns its
/// first output as floats. Used for auxiliary models such as a tissue segmenter.
pub fn run_once(onnx: &std::path::Path, input: Vec<f32>, shape: &[usize]) -> Result<Vec<f32>> {
    let fail = |message: String| Error::Model {
        path: onnx.into(),
        backend: "tract".into(),
        message,
    };
    let mut graph = read_graph(onnx).map_err(fail)?;
    let plan = graph
        .set_input_fact(0, f32::fact(shape).into())
        .and_then(|_| graph.into_optimized()?.into_runnable())
        .map_err(|e| fail(format!("{e:#}")))?;
    let x = Tensor::from_shape(shape, &input).map_err(|e| fail(format!("{e:#}")))?;
    let out = plan
        .run(tvec!(x.into()))
        .map_err(|e| fail(format!("{e:#}")))?;
    let t = out.first().ok_or_else(|| fail("no output".into()))?;
    t.try_as_plain_ram()
        .and_then(|r| r.as_slice::<f32>())
        .map(<[f32]>::to_vec)
        .map_err(|e| fail(format!("{e:#}")))
}

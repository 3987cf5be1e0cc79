//! The tract backend: pure Rust ONNX inference, always available.
//!
//! In: a model folder. Out: a shared optimised plan with a symbolic batch dimension; each
//! session runs batches on it.

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
}

struct TractSession {
    plan: Arc<TypedRunnableModel>,
    path: std::path::PathBuf,
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
        _threads: usize,
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
        let mut graph = tract_onnx::onnx()
            .model_for_path(&model.onnx)
            .map_err(|e| fail(format!("{e:#}")))?;
        let input = graph
            .input_fact(0)
            .map_err(|e| fail(format!("{e:#}")))?
            .clone();
        let output = graph
            .output_fact(0)
            .map_err(|e| fail(format!("{e:#}")))?
            .clone();
        let declared_input = dims(&input);
        let _ = output;
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
        let optimized = graph.into_optimized().map_err(|e| fail(format!("{e:#}")))?;
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
        check_shapes(model, "tract", &in_dims, &out_dims)?;
        let plan = optimized
            .into_runnable()
            .map_err(|e| fail(format!("{e:#}")))?;
        Ok(Arc::new(TractModel {
            plan,
            path: model.onnx.clone(),
            fallbacks,
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
        }))
    }
}

impl Session for TractSession {
    fn run(&mut self, input: InputTensor) -> Result<Vec<Vec<f32>>> {
        let fail = |message: String| Error::Inference {
            path: self.path.clone(),
            backend: "tract".into(),
            message,
        };
        let n = input.patches();
        let x = tract_ndarray::Array4::from_shape_vec(input.shape, input.data)
            .map_err(|e| fail(e.to_string()))?
            .into_tensor();
        let out = self
            .plan
            .run(tvec!(x.into()))
            .map_err(|e| fail(format!("{e:#}")))?;
        let t = out.first().ok_or_else(|| fail("no output".into()))?;
        let values: &[f32] = t
            .try_as_plain_ram()
            .and_then(|r| r.as_slice::<f32>())
            .map_err(|e| fail(format!("{e:#}")))?;
        super::split_rows(values, n).map_err(fail)
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
    let plan = tract_onnx::onnx()
        .model_for_path(onnx)
        .and_then(|mut m| {
            m.set_input_fact(0, f32::fact(shape).into())?;
            m.into_optimized()?.into_runnable()
        })
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

//! Patch classifiers: the model folder and its configuration.
//!
//! In: a model folder (`model.onnx` + `config.json`, WSInfer's model configuration plus an
//! optional `tessera` object). Out: a validated [`config::ModelConfig`]. Inference backends
//! (ONNX Runtime, tract) build on this.

pub mod config;

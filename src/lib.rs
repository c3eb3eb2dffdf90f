//! weightcast: serve an ONNX model's weights over HTTP.
//!
//! The modules follow the data's path: [`onnx`] reads a model file,
//! [`runtime`] opens an ONNX Runtime session on it, [`store`] keeps the loaded
//! models with their versions and digests, [`encode`] turns tensors into bytes
//! on the wire, and [`http`] answers requests. [`config`] is the TOML file and
//! [`demo`] the built-in demo model.

pub mod config;
pub mod demo;
pub mod encode;
pub mod http;
pub mod onnx;
pub mod runtime;
pub mod store;

#![warn(clippy::undocumented_unsafe_blocks)]
//! weightcast: serve an ONNX model's weights over HTTP.
//!
//! The modules follow the data's path: [`onnx`] reads a model file,
//! [`runtime`] opens an ONNX Runtime session on it, [`store`] keeps the loaded
//! models with their versions and digests, [`encode`] turns tensors into bytes
//! on the wire, and [`http`] answers requests. [`wire`] is the contract the
//! server and [`updater`] (`weightcast pull`) share: protobuf types, header
//! names, the version formula, where tensors lie outside the hub. [`config`]
//! is the TOML file and [`demo`] the built-in demo model.

pub mod config;
pub mod demo;
pub mod encode;
pub mod http;
pub mod updater;
// Tensor bytes are little-endian on the wire and in ONNX files, and are
// served from memory as they lie: a big-endian host would need a byte swap
// everywhere. Every host weightcast targets (x86-64, aarch64) is little-endian.
#[cfg(target_endian = "big")]
compile_error!("weightcast serves tensor bytes as they lie in memory and needs a little-endian host");

pub mod onnx;
pub mod publish;
pub mod runtime;
pub mod store;
pub mod wire;

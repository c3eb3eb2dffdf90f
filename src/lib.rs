#![warn(missing_docs, unreachable_pub, clippy::undocumented_unsafe_blocks)]
//! weightcast: serve an ONNX model's weights over HTTP, and keep a device's
//! copy of them current (`weightcast pull`).
//!
//! # Layout
//!
//! The server's modules follow a byte from the model file to the socket;
//! each uses only those above it:
//!
//! - [`onnx`]: reads a model file (memory-mapped) into tensors; rewrites it
//!   for `/graph`; casts to f16/bf16.
//! - [`wire`]: the contract hub and clients share — protobuf types, header
//!   names, the version formula, where tensors lie outside the hub.
//! - [`runtime`]: opens an ONNX Runtime session on a model, with the
//!   configured execution providers.
//! - [`store`]: the loaded models — versions, digests, sessions — and the
//!   byte-bounded cache of derived bytes.
//! - [`encode`]: a selection of tensors as the bytes of a response (formats,
//!   zstd, casts), streamed in chunks.
//! - [`prepare`]: prepares encodings in the background and reloads replaced
//!   model files.
//! - [`fleet`]: the devices' reports (the fleet table, in SQLite) and each
//!   model's staged rollout: which version each device is offered.
//! - [`http`]: routes, negotiation, errors, the connection loop.
//!
//! A pulled tensor goes from the socket to the device's disk through
//! [`updater`] alone, which uses only [`wire`], [`onnx`] and the client
//! side: manifest → plan → fetch and verify → write the version → check and
//! switch. The client side: [`net`] (the HTTP client: TLS, credentials,
//! bounded bodies) and [`oci`] (OCI registries: the artifact a version
//! becomes, the distribution API). [`push`] publishes a loaded model to a
//! registry.
//!
//! Beside them: [`config`] (the TOML file) and [`demo`] (the built-in demo
//! model).
//!
//! Each module is a folder of rooms with one job each, named in its own
//! opening comment (`http`: server, routes, documents, tensors, conditional,
//! …; `store`: model, load, reload, cache; `updater`: source, fetch, write,
//! layout, record, health, rollback, status, …). The `weightcast` binary
//! (`src/bin/weightcast/`) parses the command line and dispatches: one file
//! per command, the work here. `scripts/check-layers.py` keeps the layers.

// Tensor bytes are little-endian on the wire and in ONNX files, and are
// served from memory as they lie: a big-endian host would need a byte swap
// everywhere. Every host weightcast targets (x86-64, aarch64) is little-endian.
#[cfg(target_endian = "big")]
compile_error!("weightcast serves tensor bytes as they lie in memory and needs a little-endian host");

pub mod config;
pub mod demo;
pub mod encode;
pub mod fleet;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod net;
pub mod oci;
pub mod onnx;
pub mod prepare;
pub mod push;
pub mod runtime;
pub mod store;
pub mod updater;
pub mod wire;

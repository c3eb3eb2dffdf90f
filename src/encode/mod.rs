//! Turning tensors into bytes on the wire: casts, compression, and the
//! representations (protobuf records, JSON).

pub mod cast;

//! Turning tensors into bytes on the wire: casts ([`cast`]), the protobuf
//! tensor records of `weightcast.v1` ([`records`]), JSON ([`json`]), the
//! manifest and listing documents ([`manifest`]), and zstd.
//!
//! A representation is chosen by [`Format`] (what the bytes mean) and
//! [`Encoding`] (how they are compressed); adding a format is a variant here
//! and one small module beside these.

pub mod cast;
pub mod json;
pub mod manifest;
pub mod records;

/// Messages of `proto/weightcast/v1/weightcast.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/weightcast.v1.rs"));
}

/// What a response body means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Protobuf,
    Json,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::Protobuf, Format::Json];

    pub fn media_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }

    /// The `?format=` name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Protobuf => "protobuf",
            Format::Json => "json",
        }
    }

    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// How a response body is compressed (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Identity,
    Zstd,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Zstd => "zstd",
        }
    }
}

/// Compresses one independent zstd frame. A body made of several frames is
/// still one valid zstd stream (frames concatenate), which lets records be
/// compressed once each, cached, and streamed one after another.
pub fn zstd_frame(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, level)
}

/// One zstd frame of several pieces, without joining them first (a record's
/// header and its payload straight from the memory map).
pub fn zstd_frame_of(pieces: &[bytes::Bytes], level: i32) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    let mut encoder = zstd::stream::Encoder::new(Vec::with_capacity(total / 2 + 64), level)?;
    encoder.set_pledged_src_size(Some(total as u64))?;
    for p in pieces {
        encoder.write_all(p)?;
    }
    encoder.finish()
}

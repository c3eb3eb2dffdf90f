//! Turning tensors into bytes on the wire.
//!
//! A response is chosen by [`Format`] (what the bytes mean) and [`Encoding`]
//! (how they are compressed). Each format module lays a body out as
//! [`Piece`]s — small bytes it makes itself, ranges of a tensor's data, and
//! work that can only run when the reader gets there — and [`body`] turns
//! them into [`Chunk`]s: stored data stays a zero-copy view of the model's
//! memory map; casts and zstd frames of tensor data are computed once per
//! model version and shared through the store's cache. Adding a format is a
//! variant here and one small module.

pub mod bytegroup;
pub mod inspect;
pub mod json;
pub mod manifest;
pub mod npy;
pub mod records;
pub mod safetensors;

use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;

use crate::onnx::{cast, DataType, TensorData};
use crate::store::{CacheKey, Found, Model, Representation, TensorMeta, View, WHOLE_MODEL};

/// What a response body means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// `weightcast.v1` protobuf records.
    Protobuf,
    /// JSON, tensor data in base64.
    Json,
    /// A numpy `.npz` archive.
    Npz,
    /// One numpy `.npy` array.
    Npy,
    /// A Hugging Face safetensors file.
    Safetensors,
    /// One tensor's bytes alone (`application/octet-stream`): what a `Range`
    /// request indexes, and what `pull` fetches large tensors as.
    Raw,
}

impl Format {
    /// In order of preference when a client accepts several equally.
    pub const ALL: [Format; 6] =
        [Format::Protobuf, Format::Json, Format::Npz, Format::Npy, Format::Safetensors, Format::Raw];
    /// Formats for manifests and listings.
    pub const DOCUMENTS: &'static [Format] = &[Format::Protobuf, Format::Json];
    /// Formats for several tensors.
    pub const BUNDLES: &'static [Format] = &[Format::Protobuf, Format::Json, Format::Npz, Format::Safetensors];
    /// Formats for one tensor.
    pub const TENSOR: &'static [Format] = &Format::ALL;

    /// Its `Content-Type`.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
            Format::Npz => "application/x-npz",
            Format::Npy => "application/x-npy",
            Format::Safetensors => "application/x-safetensors",
            Format::Raw => "application/octet-stream",
        }
    }

    /// The `?format=` name.
    pub fn name(self) -> &'static str {
        match self {
            Format::Protobuf => "protobuf",
            Format::Json => "json",
            Format::Npz => "npz",
            Format::Npy => "npy",
            Format::Safetensors => "safetensors",
            Format::Raw => "raw",
        }
    }

    /// The format a `?format=` value names.
    pub fn from_name(name: &str) -> Option<Format> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// How a response body is compressed (`Content-Encoding`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// As is.
    Identity,
    /// A sequence of zstd frames.
    Zstd,
}

impl Encoding {
    /// Its `Content-Encoding` name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Zstd => "zstd",
        }
    }
}

/// Work that yields bytes of a body when the reader reaches it.
pub type Compute = Box<dyn FnOnce() -> io::Result<Bytes> + Send + Sync + 'static>;

/// A piece of a body as a format lays it out.
pub enum Piece {
    /// Small bytes the format made (headers, directories).
    Inline(Bytes),
    /// Bytes `range` of a tensor's data in the selection's representation.
    Data {
        /// Index into the model's tensors.
        tensor: usize,
        /// Bytes of its data.
        range: Range<usize>,
    },
    /// Bytes that can only be made when the reader gets here.
    Deferred(Compute),
}

/// A piece of a body, ready to stream.
pub enum Chunk {
    /// Bytes to send as they are.
    Ready(Bytes),
    /// Computed when the reader gets near it; its length is not known before.
    Later(Compute),
    /// Computed when the reader gets near it, with a length known now (so the
    /// body can still carry a Content-Length; a mismatch aborts the body).
    Sized(usize, Compute),
}

/// The tensors a response carries, in one representation.
#[derive(Clone)]
pub struct Selection {
    /// The model the tensors belong to.
    pub model: Arc<Model>,
    /// The representation's per-tensor facts.
    pub view: Arc<View>,
    /// As stored, or cast.
    pub repr: Representation,
    /// Indices into the model's tensors, in model order.
    pub tensors: Vec<usize>,
    /// One tensor from the tensor route (some formats answer it differently).
    pub single: bool,
    /// Tensor data in byte planes (`?codec=bytegroup`; protobuf only).
    pub bytegroup: bool,
}

impl Selection {
    /// Tensor `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.model.tensors[i].name
    }

    /// Tensor `i`'s dims.
    pub fn dims(&self, i: usize) -> &[i64] {
        &self.model.tensors[i].dims
    }

    /// Tensor `i` as this representation serves it.
    pub fn meta(&self, i: usize) -> &TensorMeta {
        &self.view.tensors[i]
    }

    /// The tensor's data in this representation (casts computed on a miss:
    /// call from a blocking thread).
    pub fn data(&self, i: usize) -> TensorData {
        self.model.data(i, self.repr)
    }

    /// The data of a numeric tensor as bytes (empty for STRING), in byte
    /// planes where the selection asks for them.
    pub fn bytes(&self, i: usize) -> Bytes {
        let data = match self.data(i) {
            TensorData::Bytes(b) => b,
            TensorData::Strings(_) => return Bytes::new(),
        };
        match self.element_size(i) {
            None => data,
            Some(k) => {
                let rotate = bytegroup::rotated(self.meta(i).dtype);
                let key = self.model.cache_key(i, format!("bytegroup-{:?}", self.repr));
                self.model.cache().get_or_compute(key, || Ok(bytegroup::split(&data, k, rotate).into())).unwrap_or(data)
            }
        }
    }

    /// Bytes `range` of [`Selection::bytes`], computing only that window
    /// where the whole is not cached (or small): casts cast the window's
    /// elements; byte planes gather the window's bytes from the elements
    /// they come from, a stride at a time.
    pub fn bytes_range(&self, i: usize, range: Range<usize>) -> Bytes {
        let Some(k) = self.element_size(i) else { return self.model.data_range(i, self.repr, range) };
        let key = self.model.cache_key(i, format!("bytegroup-{:?}", self.repr));
        let len = self.meta(i).nbytes as usize;
        if let Some(planes) = self.model.cache().get_range(&key, range.clone()) {
            return planes;
        }
        if self.model.cache().holds_whole(len as u64) {
            return self.bytes(i).slice(range);
        }
        let rotate = bytegroup::rotated(self.meta(i).dtype);
        bytegroup::split_range(len, k, rotate, range, |r| self.model.data_range(i, self.repr, r)).into()
    }

    /// The bytegroup element size of tensor `i`, if the codec applies to it:
    /// asked for, a dtype it knows, and data of at least [`FRAME_ALONE`]
    /// bytes (on less, a frame per byte plane costs more than it saves).
    pub fn element_size(&self, i: usize) -> Option<usize> {
        if self.bytegroup && self.meta(i).nbytes >= FRAME_ALONE as u64 {
            bytegroup::element_size(self.meta(i).dtype)
        } else {
            None
        }
    }

    /// Whether `format` can carry every selected tensor's dtype; the error
    /// names those it cannot.
    pub fn expressible(&self, format: Format, can: impl Fn(DataType) -> bool) -> Result<(), EncodeError> {
        let bad: Vec<(String, DataType)> = self
            .tensors
            .iter()
            .filter(|&&i| !can(self.meta(i).dtype))
            .map(|&i| (self.name(i).to_string(), self.meta(i).dtype))
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(EncodeError::Unexpressible { format, tensors: bad })
        }
    }

    fn is_stored_bytes(&self, i: usize) -> bool {
        self.repr.is_none_or(|t| !cast::applies(self.model.tensors[i].dtype, t)) && self.element_size(i).is_none()
    }
}

/// Why a selection cannot be written in a format.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum EncodeError {
    #[error("{} cannot express {}; leave them out with ?names=, ask for ?dtype=f16 where they are float, or use protobuf (which carries every ONNX dtype)", .format.name(), describe(.tensors))]
    Unexpressible { format: Format, tensors: Vec<(String, DataType)> },
    #[error("{total} bytes of tensor data exceed the JSON limit of {limit} bytes (json_max_bytes); ask for application/x-protobuf (the default), application/x-npz or application/x-safetensors, which stream any size, or fewer tensors with ?names=")]
    TooLarge { total: u64, limit: u64 },
    #[error("{} holds one tensor: use GET /v1/models/{{model}}/tensors/{{name}}, or npz for several", .0.name())]
    SingleOnly(Format),
    #[error("codec=bytegroup is declared in protobuf tensor records only; {} has no place for it", .0.name())]
    CodecNeedsProtobuf(Format),
}

fn describe(tensors: &[(String, DataType)]) -> String {
    let mut parts: Vec<String> = tensors.iter().take(5).map(|(n, d)| format!("'{n}' ({d})")).collect();
    if tensors.len() > 5 {
        parts.push(format!("and {} more", tensors.len() - 5));
    }
    parts.join(", ")
}

/// Encoding choices from the config and the request.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// zstd level of compressed answers (1–22).
    pub zstd_level: i32,
    /// Most tensor bytes one JSON answer may carry.
    pub json_max_bytes: u64,
    /// npz members deflated (`?compress=1`), like `numpy.savez_compressed`.
    pub deflate: bool,
}

/// The body of a tensor response as chunks to stream.
pub fn body(sel: &Selection, format: Format, encoding: Encoding, options: Options) -> Result<Vec<Chunk>, EncodeError> {
    if sel.bytegroup && format != Format::Protobuf {
        return Err(EncodeError::CodecNeedsProtobuf(format));
    }
    let pieces = match format {
        Format::Protobuf => records::pieces(sel),
        Format::Json => json::pieces(sel, options.json_max_bytes)?,
        Format::Npz => npy::npz_pieces(sel, options.deflate)?,
        Format::Npy => npy::npy_pieces(sel)?,
        Format::Safetensors => safetensors::pieces(sel)?,
        Format::Raw => raw_pieces(sel)?,
    };
    Ok(match encoding {
        Encoding::Identity => pieces.into_iter().flat_map(|p| identity_chunks(sel, p)).collect(),
        Encoding::Zstd => zstd_chunks(sel, pieces, options.zstd_level),
    })
}

/// One tensor's bytes in the selection's representation, nothing around them.
fn raw_pieces(sel: &Selection) -> Result<Vec<Piece>, EncodeError> {
    if sel.tensors.len() != 1 || !sel.single {
        return Err(EncodeError::SingleOnly(Format::Raw));
    }
    sel.expressible(Format::Raw, |d| d != DataType::String)?;
    let i = sel.tensors[0];
    Ok(vec![Piece::Data { tensor: i, range: 0..sel.meta(i).nbytes as usize }])
}

/// Computed tensor data (casts) is made a window at a time, as the reader
/// gets there: a request holds [`WINDOW`] bytes of it, not the tensor.
pub const WINDOW: usize = 4 << 20;

/// Bytes of computed data an identity body makes at a time: smaller than a
/// zstd frame's window (which gains from its size), since a response holds
/// two (the one sent and the next being made): 8 f16 downloads of a 1 GB
/// model peaked at +68 MiB with 4 MiB pieces.
const PIECE: usize = 1 << 20;

/// `range` in windows of at most `size` bytes.
fn windows(range: Range<usize>, size: usize) -> impl Iterator<Item = Range<usize>> {
    (range.start..range.end).step_by(size).map(move |a| a..(a + size).min(range.end))
}

fn identity_chunks(sel: &Selection, piece: Piece) -> Vec<Chunk> {
    match piece {
        Piece::Inline(b) if b.is_empty() => vec![],
        Piece::Data { range, .. } if range.is_empty() => vec![],
        Piece::Inline(b) => vec![Chunk::Ready(b)],
        Piece::Data { tensor, range } if sel.is_stored_bytes(tensor) => match &sel.model.tensors[tensor].data {
            TensorData::Bytes(b) => vec![Chunk::Ready(b.slice(range))],
            TensorData::Strings(_) => vec![],
        },
        Piece::Data { tensor, range } => windows(range, PIECE)
            .map(|w| {
                let sel = sel.clone();
                Chunk::Sized(w.len(), Box::new(move || Ok(sel.bytes_range(tensor, w))))
            })
            .collect(),
        Piece::Deferred(f) => vec![Chunk::Later(f)],
    }
}

/// Tensor data at least this long is a zstd frame of its own, compressed
/// once per version and cached; everything between such frames (record
/// headers, small tensors, zip headers) is compressed together, a frame per
/// run of up to [`GROUP_MAX`] bytes. One frame per small piece would cost a
/// frame header each and compress tiny inputs badly: a model of many small
/// tensors came out larger than uncompressed.
pub const FRAME_ALONE: usize = 64 << 10;
const GROUP_MAX: usize = 1 << 20;

/// A body of at most this many bytes of tensor data is one zstd frame, so
/// one-shot decoders (python-zstandard's `decompress()` stops after the
/// first frame) read all of it. It costs one compression of about this much
/// per distinct body, cached like any group frame (bodies with parts made
/// per request — JSON, deflated npz — are compressed per request anyway); a
/// larger body reuses each tensor's cached frames instead of compressing it
/// again per request. Byte-grouped bodies keep a frame per byte plane: that
/// is their codec.
pub const ONE_FRAME_MAX: usize = WINDOW;

/// The zstd body: one frame when small (see [`ONE_FRAME_MAX`]), else large
/// data frames and grouped frames of the rest; each frame from the cache
/// when computed before (so the body keeps a Content-Length), else computed
/// when the reader gets there, and cached. A piece only known when computed
/// (a deflated npz member, a JSON document) is a frame of its own, so a
/// request holds one such piece at a time.
fn zstd_chunks(sel: &Selection, pieces: Vec<Piece>, level: i32) -> Vec<Chunk> {
    let data: u64 = sel.tensors.iter().map(|&i| sel.meta(i).nbytes).sum();
    if !sel.bytegroup && data <= ONE_FRAME_MAX as u64 {
        return group_chunk(sel, pieces, level).into_iter().collect();
    }
    let mut out = Vec::new();
    let mut group: Vec<Piece> = Vec::new();
    let mut group_len = 0;
    for piece in pieces {
        let len = match &piece {
            Piece::Inline(b) => b.len(),
            Piece::Data { range, .. } => range.len(),
            Piece::Deferred(_) => 0,
        };
        if len == 0 && !matches!(piece, Piece::Deferred(_)) {
            continue;
        }
        match piece {
            Piece::Deferred(_) => {
                out.extend(group_chunk(sel, std::mem::take(&mut group), level));
                group_len = 0;
                out.extend(group_chunk(sel, vec![piece], level));
            }
            Piece::Data { tensor, range } if len >= FRAME_ALONE => {
                out.extend(group_chunk(sel, std::mem::take(&mut group), level));
                group_len = 0;
                // A frame per window: a request compresses (and holds) a
                // window at a time; frames are cached per window.
                for w in windows(range, WINDOW) {
                    out.extend(frame_chunks(sel, tensor, w, level));
                }
            }
            piece => {
                if group_len + len > GROUP_MAX && !group.is_empty() {
                    out.extend(group_chunk(sel, std::mem::take(&mut group), level));
                    group_len = 0;
                }
                group_len += len;
                group.push(piece);
            }
        }
    }
    out.extend(group_chunk(sel, group, level));
    out
}

/// One zstd frame of a run of small pieces. Cached under a key made of what
/// the pieces are (their bytes or tensor ranges), unless a piece is only
/// known when computed.
fn group_chunk(sel: &Selection, group: Vec<Piece>, level: i32) -> Option<Chunk> {
    if group.is_empty() {
        return None;
    }
    let key = group_key(sel, &group, level);
    let found = key.as_ref().and_then(|k| sel.model.cache().lookup(k));
    let sel = sel.clone();
    Some(chunk_of(
        found,
        Box::new(move || {
            let compute = || -> Result<Bytes, String> {
                let mut raw = Vec::new();
                for piece in group {
                    match piece {
                        Piece::Inline(b) => raw.extend_from_slice(&b),
                        Piece::Data { tensor, range } => raw.extend_from_slice(&sel.bytes_range(tensor, range)),
                        Piece::Deferred(f) => raw.extend_from_slice(&f().map_err(|e| e.to_string())?),
                    }
                }
                zstd_frame(&raw, level).map(Bytes::from).map_err(|e| e.to_string())
            };
            match key {
                Some(key) => sel.model.cache().get_or_compute(key, compute),
                None => compute(),
            }
            .map_err(io::Error::other)
        }),
    ))
}

/// Bytes of a disk frame read per chunk: a response holds this much of a
/// frame (twice: the piece sent and the next one read), not the frame.
const DISK_READ: usize = 1 << 20;

/// The chunks of a tensor window's zstd frame: the frame in memory; a frame
/// on disk read [`DISK_READ`] bytes at a time as the reader gets there (made
/// again should the file be gone); a frame not cached made when the reader
/// gets there.
fn frame_chunks(sel: &Selection, tensor: usize, w: Range<usize>, level: i32) -> Vec<Chunk> {
    let key = zstd_key(sel, tensor, &w, level);
    let make = {
        let sel = sel.clone();
        move || zstd_data(&sel, tensor, w.clone(), level).map_err(io::Error::other)
    };
    let len = match sel.model.cache().lookup(&key) {
        None => return vec![Chunk::Later(Box::new(make))],
        Some(Found::Memory(frame)) => return vec![Chunk::Ready(frame)],
        Some(Found::Disk(len)) => len,
    };
    let make = Arc::new(make);
    (0..len)
        .step_by(DISK_READ)
        .map(|at| {
            let part = at..(at + DISK_READ).min(len);
            let (sel, key, make) = (sel.clone(), key.clone(), make.clone());
            Chunk::Sized(
                part.len(),
                Box::new(move || match sel.model.cache().get_range(&key, part.clone()) {
                    Some(bytes) => Ok(bytes),
                    None => make().map(|frame| frame.slice(part.start.min(frame.len())..part.end.min(frame.len()))),
                }),
            )
        })
        .collect()
}

/// A cached frame's chunk: bytes in memory as they are; a frame on disk read
/// when the reader gets there (`make` reads it through the cache, or makes it
/// again should the file be gone), with its length known now so the body
/// keeps a Content-Length; a frame not cached made when the reader gets there.
fn chunk_of(found: Option<Found>, make: Compute) -> Chunk {
    match found {
        Some(Found::Memory(frame)) => Chunk::Ready(frame),
        Some(Found::Disk(len)) => Chunk::Sized(len, make),
        None => Chunk::Later(make),
    }
}

fn group_key(sel: &Selection, group: &[Piece], level: i32) -> Option<CacheKey> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for piece in group {
        match piece {
            Piece::Inline(b) => {
                h.update([0]);
                h.update((b.len() as u64).to_le_bytes());
                h.update(b);
            }
            Piece::Data { tensor, range } => {
                h.update([1]);
                for n in [*tensor, range.start, range.end] {
                    h.update((n as u64).to_le_bytes());
                }
            }
            Piece::Deferred(_) => return None,
        }
    }
    Some(sel.model.cache_key(
        WHOLE_MODEL,
        format!("zstd{level}-group-{:?}-{}-{}", sel.repr, sel.bytegroup, hex::encode(h.finalize())),
    ))
}

/// The zstd frame of bytes `range` of a tensor's data in the selection's
/// representation: from the cache, or compressed once (concurrent requesters
/// wait for that one compression).
pub fn zstd_data(sel: &Selection, tensor: usize, range: Range<usize>, level: i32) -> Result<Bytes, String> {
    let key = zstd_key(sel, tensor, &range, level);
    sel.model.cache().get_or_compute(key, || {
        let window = sel.bytes_range(tensor, range.clone());
        let compressed = match sel.element_size(tensor) {
            Some(k) => zstd_planes(&window, sel.meta(tensor).nbytes as usize / k, range.start, level),
            None => zstd_frame(&window, level),
        };
        compressed.map(Bytes::from).map_err(|e| e.to_string())
    })
}

/// zstd of byte planes: one frame per plane (each zstd block then holds one
/// plane's statistics, not a mix of noisy mantissa and tidy exponent bytes),
/// with matching tuned down so the exponent plane is entropy-coded as
/// literals. `data` starts at byte `offset` of planes `plane` bytes long.
pub fn zstd_planes(data: &[u8], plane: usize, offset: usize, level: i32) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::{CParameter, Strategy};
    let mut c = zstd::bulk::Compressor::new(level)?;
    for p in [
        CParameter::Strategy(Strategy::ZSTD_fast),
        CParameter::WindowLog(17),
        CParameter::HashLog(6),
        CParameter::MinMatch(7),
        CParameter::SearchLog(1),
    ] {
        c.set_parameter(p)?;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut at = 0;
    while at < data.len() {
        let to_boundary = plane.max(1) - (offset + at) % plane.max(1);
        let end = (at + to_boundary).min(data.len());
        out.extend(c.compress(&data[at..end])?);
        at = end;
    }
    Ok(out)
}

fn zstd_key(sel: &Selection, tensor: usize, range: &Range<usize>, level: i32) -> CacheKey {
    sel.model.cache_key(tensor, format!("zstd{level}-{:?}-{}-{}-{}", sel.repr, sel.bytegroup, range.start, range.end))
}

/// Data larger than this is compressed by several zstd worker threads.
const ZSTD_MT_FROM: usize = 4 << 20;

/// Compresses one independent zstd frame. A body made of several frames is
/// still one valid zstd stream (frames concatenate), which lets each tensor's
/// data be compressed once, cached, and streamed between other frames.
pub fn zstd_frame(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    if data.len() < ZSTD_MT_FROM {
        return zstd::bulk::compress(data, level);
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(workers))?;
    c.compress(data)
}

/// A representation to prepare in the background after load (`prepare` in
/// the config): e.g. `zstd`, `f16+zstd`, `bf16`, `zstd+bytegroup`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    /// As stored, or cast.
    pub repr: Representation,
    /// zstd frames.
    pub zstd: bool,
    /// Byte planes (`codec=bytegroup`).
    pub bytegroup: bool,
}

impl std::fmt::Display for Prepared {
    /// As written in the config: `identity`, `zstd`, `f16+zstd`, `zstd+bytegroup`, …
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<&str> = Vec::new();
        if let Some(target) = self.repr {
            parts.push(target.name());
        }
        if self.zstd {
            parts.push("zstd");
        }
        if self.bytegroup {
            parts.push("bytegroup");
        }
        if parts.is_empty() {
            parts.push("identity");
        }
        f.write_str(&parts.join("+"))
    }
}

/// A `prepare` entry with a part weightcast does not know.
#[derive(Debug, thiserror::Error)]
#[error("'{part}' in prepare entry '{entry}' is not one of: identity, zstd, f16, bf16, bytegroup")]
pub struct UnknownPrepare {
    /// The part not understood.
    pub part: String,
    /// The whole entry.
    pub entry: String,
}

impl std::str::FromStr for Prepared {
    type Err = UnknownPrepare;

    fn from_str(s: &str) -> Result<Prepared, UnknownPrepare> {
        let mut p = Prepared { repr: None, zstd: false, bytegroup: false };
        for token in s.split('+') {
            match token.trim() {
                "identity" | "f32" => {}
                "zstd" => p.zstd = true,
                "bytegroup" => p.bytegroup = true,
                other => match other.parse::<cast::Target>() {
                    Ok(target) => p.repr = Some(target),
                    Err(_) => return Err(UnknownPrepare { part: other.to_string(), entry: s.to_string() }),
                },
            }
        }
        Ok(p)
    }
}

/// The work a whole-model protobuf body in `what` needs before its first
/// request can be served from the cache: each computation whose result the
/// cache keeps (casts, byte planes, zstd frames: the very frames a `GET
/// …/weights` streams), in body order, with the body's input bytes. Running
/// them (on which threads, within which budget) is the caller's choice.
pub fn preparation(model: &Arc<Model>, what: Prepared, level: i32) -> (u64, Vec<Compute>) {
    let sel = Selection {
        model: model.clone(),
        view: model.view(what.repr),
        repr: what.repr,
        tensors: (0..model.tensors.len()).collect(),
        single: false,
        bytegroup: what.bytegroup,
    };
    let pieces = records::pieces(&sel);
    let input = pieces
        .iter()
        .map(|p| match p {
            Piece::Inline(b) => b.len() as u64,
            Piece::Data { range, .. } => range.len() as u64,
            Piece::Deferred(_) => 0,
        })
        .sum();
    let chunks = match what.zstd {
        true => zstd_chunks(&sel, pieces, level),
        false => pieces.into_iter().flat_map(|p| identity_chunks(&sel, p)).collect(),
    };
    let work = chunks
        .into_iter()
        .filter_map(|c| match c {
            Chunk::Later(f) | Chunk::Sized(_, f) => Some(f),
            Chunk::Ready(_) => None,
        })
        .collect();
    (input, work)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::cast::Target;
    use crate::store::{Cache, ModelSpec};

    #[test]
    fn byte_planes_too_large_for_the_cache_are_made_a_window_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("demo.onnx");
        crate::demo::write(&path).unwrap();
        let cache = Arc::new(Cache::new(1 << 20)); // an eighth: 128 KiB
        let model =
            Arc::new(crate::store::load(&ModelSpec { name: "demo".into(), path }, None, cache.clone()).unwrap());
        let (i, _) = model.tensors.iter().enumerate().max_by_key(|(_, t)| t.nbytes()).unwrap();
        for repr in [None, Some(Target::F16)] {
            let view = model.view(repr);
            let sel = Selection { model: model.clone(), view, repr, tensors: vec![i], single: true, bytegroup: true };
            let k = sel.element_size(i).expect("a float tensor over 64 KiB");
            let TensorData::Bytes(data) = sel.data(i) else { panic!() };
            let whole = bytegroup::split(&data, k, bytegroup::rotated(sel.meta(i).dtype));
            assert!(
                whole.len() as u64 > cache.budget() / 8,
                "the test needs planes larger than an eighth of the cache"
            );
            let used = cache.used();
            for range in [0..whole.len(), 1..4097, 777..whole.len() - 3, 65536..65538, 5..5] {
                assert_eq!(&sel.bytes_range(i, range.clone())[..], &whole[range.clone()], "{repr:?} {range:?}");
            }
            assert_eq!(cache.used(), used, "windows are not cached whole");
        }
    }
}

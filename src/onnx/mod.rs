//! Reading an ONNX model file: every weight tensor it holds, as bytes.
//!
//! The file is memory-mapped and decoded with prost into views of the map, so
//! raw and external tensor data are never copied. A tensor comes out as the
//! little-endian, contiguous bytes that `onnx.numpy_helper.to_array` would give
//! (sub-byte types packed as ONNX packs them), whatever storage form the model
//! used: `raw_data`, the typed fields, external data, a sparse initializer, or a
//! `Constant` node's value. Every tensor is checked against its dims here, so
//! later stages can trust lengths.

pub mod cast;
pub mod dtype;
mod external;
pub mod graph;
pub mod mmap;
pub mod stats;
mod typed;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use prost::Message;

pub use dtype::DataType;
use external::ExternalFiles;

/// Messages of the ONNX schema subset in `proto/onnx.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Why a model could not be read.
#[derive(Debug, thiserror::Error)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum OnnxError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid ONNX model (protobuf decode failed: {source}); is the file truncated?", path.display())]
    Decode { path: PathBuf, source: prost::DecodeError },
    #[error("{} is empty", path.display())]
    Empty { path: PathBuf },
    #[error("{} has no graph", path.display())]
    NoGraph { path: PathBuf },
    #[error("tensor '{tensor}': {problem}")]
    Tensor { tensor: String, problem: String },
}

impl OnnxError {
    fn tensor(tensor: &str, problem: impl Into<String>) -> OnnxError {
        OnnxError::Tensor { tensor: tensor.to_string(), problem: problem.into() }
    }
}

/// How the model file holds a tensor's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// `raw_data` inside the model file.
    Raw,
    /// One of the typed repeated fields (`float_data`, `int32_data`, …).
    Typed,
    /// A separate file next to the model (`data_location = EXTERNAL`).
    External,
    /// A `sparse_initializer`, densified.
    Sparse,
}

impl Storage {
    /// Its name in the manifest (`raw`, `typed`, `external`, `sparse`).
    pub fn name(self) -> &'static str {
        match self {
            Storage::Raw => "raw",
            Storage::Typed => "typed",
            Storage::External => "external",
            Storage::Sparse => "sparse",
        }
    }
}

/// A tensor's elements.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// Little-endian contiguous element bytes; often a view into the file map.
    Bytes(Bytes),
    /// The elements of a STRING tensor.
    Strings(Vec<Bytes>),
}

/// One weight tensor of a model.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Initializer name; for a subgraph's tensors `node/attribute/name`; for a
    /// Constant node its output's name.
    pub name: String,
    /// Its element type.
    pub dtype: DataType,
    /// Its shape; empty for a scalar.
    pub dims: Vec<i64>,
    /// Its elements.
    pub data: TensorData,
    /// How the file holds it.
    pub storage: Storage,
    /// The value of a `Constant` node rather than an initializer.
    pub constant: bool,
}

impl TensorData {
    /// The bytes of a numeric tensor; empty for STRING.
    pub fn bytes(self) -> Bytes {
        match self {
            TensorData::Bytes(b) => b,
            TensorData::Strings(_) => Bytes::new(),
        }
    }
}

impl Tensor {
    /// Byte length of the data (for strings: the sum of element lengths).
    pub fn nbytes(&self) -> u64 {
        match &self.data {
            TensorData::Bytes(b) => b.len() as u64,
            TensorData::Strings(s) => s.iter().map(|e| e.len() as u64).sum(),
        }
    }
}

/// A graph input or output as the model declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueInfo {
    /// The input's or output's name.
    pub name: String,
    /// ONNX type name (`FLOAT`, …) or a description for non-tensor values.
    pub dtype: String,
    /// -1 where the dimension is symbolic or unknown.
    pub dims: Vec<i64>,
}

/// Facts about a model besides its tensors.
#[derive(Debug, Clone, Default)]
pub struct ModelInfo {
    /// ONNX IR version.
    pub ir_version: i64,
    /// The exporter (`pytorch`, `tf2onnx`, …).
    pub producer_name: String,
    /// The exporter's version.
    pub producer_version: String,
    /// (domain, opset version) pairs.
    pub opset_imports: Vec<(String, i64)>,
    /// `metadata_props`, in order.
    pub metadata: Vec<(String, String)>,
    /// Graph inputs that are not initializers.
    pub inputs: Vec<ValueInfo>,
    /// Graph outputs.
    pub outputs: Vec<ValueInfo>,
}

/// A model file, read.
#[derive(Debug)]
pub struct OnnxModel {
    /// Where it was read from.
    pub path: PathBuf,
    /// The whole file (a view of its memory map).
    pub bytes: Bytes,
    /// Facts besides the tensors.
    pub info: ModelInfo,
    /// Every weight tensor, in file order (main graph, then subgraphs).
    pub tensors: Vec<Tensor>,
    /// The external data files it read (a model is all of these files).
    pub external_files: Vec<PathBuf>,
    /// The private snapshot `bytes` maps, where there is one: tensors are
    /// copied out of it in the kernel ([`OnnxModel::align_tensors`]).
    snapshot: Option<std::fs::File>,
}

impl OnnxModel {
    /// Reads the model at `path` and its external data, each from a private
    /// snapshot ([`mmap::snapshot`]) mapped into memory: changing or
    /// truncating the files afterwards, even in place, changes nothing here.
    pub fn open(path: &Path) -> Result<OnnxModel, OnnxError> {
        let io = |source| OnnxError::Io { path: path.to_path_buf(), source };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let file = mmap::open_regular(path).map_err(io)?;
        let private = mmap::snapshot(&file, dir).map_err(io)?;
        // SAFETY: `private` is an unnamed file only this process holds, so
        // nothing can truncate or rewrite it under the map.
        let bytes = unsafe { mmap::map(&private) }.map_err(io)?;
        if bytes.is_empty() {
            return Err(OnnxError::Empty { path: path.to_path_buf() });
        }
        let mut model = Self::from_bytes(path, bytes, dir)?;
        model.snapshot = Some(private);
        Ok(model)
    }

    /// Reads a model from bytes already in memory; external data is looked up
    /// in `dir` and read from private snapshots, like [`OnnxModel::open`].
    pub fn from_bytes(path: &Path, bytes: Bytes, dir: &Path) -> Result<OnnxModel, OnnxError> {
        Self::read(path, bytes, ExternalFiles::new(dir))
    }

    /// Reads a model whose external data files are given in memory
    /// (location → bytes): the fuzz target's way, with no disk.
    pub(crate) fn from_memory(bytes: Bytes, files: HashMap<String, Bytes>) -> Result<OnnxModel, OnnxError> {
        Self::read(Path::new("fuzz.onnx"), bytes, ExternalFiles::in_memory(files))
    }

    fn read(path: &Path, bytes: Bytes, external: ExternalFiles) -> Result<OnnxModel, OnnxError> {
        let model = proto::ModelProto::decode(bytes.clone())
            .map_err(|source| OnnxError::Decode { path: path.to_path_buf(), source })?;
        let graph = model.graph.as_ref().ok_or_else(|| OnnxError::NoGraph { path: path.to_path_buf() })?;
        let mut reader = Reader::new(Some(external), bytes.len() as u64);
        reader.graph(graph, "")?;
        let info = model_info(&model, graph);
        let external_files = reader.external.map(|e| e.files()).unwrap_or_default();
        Ok(OnnxModel { path: path.to_path_buf(), bytes, info, tensors: reader.tensors, external_files, snapshot: None })
    }
}

impl OnnxModel {
    /// Moves into one private file (`O_TMPFILE` in `dir`, as snapshots) the
    /// tensors whose bytes are not aligned to their element size — `raw_data`
    /// lies wherever protobuf put it — and those decoded into memory (typed
    /// fields, sparse), each at a 64-byte boundary, and maps it. Afterwards
    /// every numeric tensor's bytes are naturally aligned and file-backed, so
    /// ONNX Runtime can use them in place (a kernel may assume alignment) and
    /// they cost page cache the kernel can reclaim, not anonymous memory.
    /// Returns the bytes moved.
    pub fn align_tensors(&mut self, dir: &Path) -> Result<u64, OnnxError> {
        let moved: Vec<usize> = (0..self.tensors.len()).filter(|&i| self.needs_moving(i)).collect();
        if moved.is_empty() {
            return Ok(0);
        }
        let io = |source| OnnxError::Io { path: self.path.clone(), source };
        let mut offsets = Vec::with_capacity(moved.len());
        let mut end = 0usize;
        for &i in &moved {
            let start = end.next_multiple_of(64);
            end = start + self.tensors[i].nbytes() as usize;
            offsets.push(start..end);
        }
        let file = mmap::private_file(dir).map_err(io)?;
        file.set_len(end as u64).map_err(io)?;
        for (&i, range) in moved.iter().zip(&offsets) {
            if let TensorData::Bytes(b) = &self.tensors[i].data {
                self.copy_out(b, &file, range.start as u64).map_err(io)?;
            }
        }
        // SAFETY: `file` is an unnamed file only this process holds, and it
        // is not written after this point.
        let aligned = unsafe { mmap::map(&file) }.map_err(io)?;
        for (&i, range) in moved.iter().zip(offsets) {
            self.tensors[i].data = TensorData::Bytes(aligned.slice(range));
        }
        Ok(end as u64)
    }

    /// Writes `data` at `at` in `to`: in the kernel from the snapshot when
    /// `data` lies in it (its pages are then never read into this process),
    /// else from memory.
    fn copy_out(&self, data: &[u8], to: &std::fs::File, at: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let base = self.bytes.as_ptr() as usize;
        let start = data.as_ptr() as usize;
        let inside = start >= base && start + data.len() <= base + self.bytes.len();
        let Some(snapshot) = self.snapshot.as_ref().filter(|_| inside) else { return to.write_all_at(data, at) };
        let (mut from, mut into, mut left) = ((start - base) as u64, at, data.len());
        while left > 0 {
            match rustix::fs::copy_file_range(snapshot, Some(&mut from), to, Some(&mut into), left) {
                Ok(0) => return Err(std::io::Error::other("the snapshot ended early")),
                Ok(n) => left -= n,
                // Another file system (EXDEV) or no support: from memory.
                Err(_) => return to.write_all_at(&data[data.len() - left..], into),
            }
        }
        Ok(())
    }

    fn needs_moving(&self, i: usize) -> bool {
        let t = &self.tensors[i];
        let TensorData::Bytes(b) = &t.data else { return false };
        let align = t.dtype.bits().map_or(1, |bits| (bits / 8).max(1)) as usize;
        !b.is_empty()
            && (!(b.as_ptr() as usize).is_multiple_of(align) || matches!(t.storage, Storage::Typed | Storage::Sparse))
    }
}

/// A model as a client receives it from `/graph`: the tensors it carries
/// inline (read and checked like any model's tensors, named as the server
/// names them) and, for the others, where their external data lies. No file
/// is opened.
#[derive(Debug)]
pub struct GraphParts {
    /// The tensors whose data the graph carries.
    pub inline: Vec<Tensor>,
    /// (tensor name, `location`) of every tensor held as external data.
    pub external: Vec<(String, String)>,
}

/// Reads a `/graph` answer into its [`GraphParts`].
pub fn graph_parts(model: Bytes) -> Result<GraphParts, OnnxError> {
    let path = Path::new("graph");
    let file_len = model.len() as u64;
    let model = proto::ModelProto::decode(model).map_err(|source| OnnxError::Decode { path: path.into(), source })?;
    let graph = model.graph.as_ref().ok_or_else(|| OnnxError::NoGraph { path: path.into() })?;
    let mut reader = Reader::new(None, file_len);
    reader.graph(graph, "")?;
    Ok(GraphParts { inline: reader.tensors, external: reader.elsewhere })
}

fn model_info(model: &proto::ModelProto, graph: &proto::GraphProto) -> ModelInfo {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
    ModelInfo {
        ir_version: model.ir_version(),
        producer_name: model.producer_name().to_string(),
        producer_version: model.producer_version().to_string(),
        opset_imports: model.opset_import.iter().map(|o| (o.domain().to_string(), o.version())).collect(),
        metadata: model.metadata_props.iter().map(|p| (p.key().to_string(), p.value().to_string())).collect(),
        inputs: graph.input.iter().filter(|v| !initializers.contains(v.name())).map(value_info).collect(),
        outputs: graph.output.iter().map(value_info).collect(),
    }
}

fn value_info(v: &proto::ValueInfoProto) -> ValueInfo {
    use proto::tensor_shape_proto::dimension::Value as Dim;
    use proto::type_proto::Value;
    let (dtype, dims) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Value::TensorType(t)) => {
            let dtype = DataType::from_onnx(t.elem_type())
                .map_or_else(|| format!("type {}", t.elem_type()), |d| d.name().to_string());
            let dims = t.shape.as_ref().map_or_else(Vec::new, |s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Dim::DimValue(n)) => n,
                        _ => -1,
                    })
                    .collect()
            });
            (dtype, dims)
        }
        Some(Value::SequenceType(_)) => ("sequence".to_string(), Vec::new()),
        Some(Value::MapType(_)) => ("map".to_string(), Vec::new()),
        Some(Value::OptionalType(_)) => ("optional".to_string(), Vec::new()),
        Some(Value::SparseTensorType(_)) => ("sparse_tensor".to_string(), Vec::new()),
        None => ("unknown".to_string(), Vec::new()),
    };
    ValueInfo { name: v.name().to_string(), dtype, dims }
}

/// The most bytes a sparse tensor may densify to, for a model file of
/// `file_len` bytes: 64× the file, at least 1 GiB, at most a quarter of
/// the machine's memory. A few bytes of file must not make the server try
/// to allocate terabytes.
fn dense_limit(file_len: u64) -> u64 {
    let memory = rustix::system::sysinfo();
    let quarter = (memory.totalram as u64).saturating_mul(memory.mem_unit.max(1) as u64) / 4;
    (file_len.saturating_mul(64)).max(1 << 30).min(quarter.max(64 << 20))
}

/// Walks a graph and its subgraphs, collecting tensors.
struct Reader {
    /// Where external data is read from; `None`: not read, but noted in
    /// `elsewhere`.
    external: Option<ExternalFiles>,
    tensors: Vec<Tensor>,
    names: HashSet<String>,
    elsewhere: Vec<(String, String)>,
    /// Bytes of the model file (bounds what a sparse tensor may densify to).
    file_len: u64,
}

/// What reading a tensor's data gave.
enum Read {
    Data(TensorData, Storage),
    /// External data left unread (at this location).
    Elsewhere(String),
}

impl Reader {
    fn new(external: Option<ExternalFiles>, file_len: u64) -> Reader {
        Reader { external, tensors: Vec::new(), names: HashSet::new(), elsewhere: Vec::new(), file_len }
    }

    /// Keeps a tensor read from the model, or notes where it lies.
    fn keep(&mut self, name: String, t: &proto::TensorProto, read: Read, constant: bool) -> Result<(), OnnxError> {
        match read {
            Read::Data(data, storage) => self.push(name, t, data, storage, constant),
            Read::Elsewhere(location) => {
                known_dtype(t, &name)?;
                if !self.names.insert(name.clone()) {
                    return Err(OnnxError::tensor(&name, "two tensors have this name"));
                }
                self.elsewhere.push((name, location));
                Ok(())
            }
        }
    }

    /// The data of a tensor that must be in hand (a sparse tensor's parts).
    fn data_here(&mut self, t: &proto::TensorProto, name: &str) -> Result<(TensorData, Storage), OnnxError> {
        match self.tensor_data(t, name)? {
            Read::Data(data, storage) => Ok((data, storage)),
            Read::Elsewhere(_) => {
                Err(OnnxError::tensor(name, "sparse tensor parts as external data are not supported here"))
            }
        }
    }

    fn graph(&mut self, graph: &proto::GraphProto, scope: &str) -> Result<(), OnnxError> {
        for t in &graph.initializer {
            let name = format!("{scope}{}", t.name());
            let read = self.tensor_data(t, &name)?;
            self.keep(name, t, read, false)?;
        }
        for s in &graph.sparse_initializer {
            let values =
                s.values.as_ref().ok_or_else(|| OnnxError::tensor(scope, "sparse initializer without values"))?;
            let name = format!("{scope}{}", values.name());
            let (dtype, data) = self.densify(s, &name)?;
            self.push_data(name, dtype, s.dims.clone(), data, Storage::Sparse, false)?;
        }
        for (index, node) in graph.node.iter().enumerate() {
            if node.op_type() == "Constant" && matches!(node.domain(), "" | "ai.onnx") {
                self.constant(node, scope)?;
            }
            let label =
                if node.name().is_empty() { format!("{}{index}", node.op_type()) } else { node.name().to_string() };
            for attr in &node.attribute {
                if let Some(g) = &attr.g {
                    self.graph(g, &format!("{scope}{label}/{}/", attr.name()))?;
                }
                for (i, g) in attr.graphs.iter().enumerate() {
                    self.graph(g, &format!("{scope}{label}/{}.{i}/", attr.name()))?;
                }
            }
        }
        Ok(())
    }

    fn constant(&mut self, node: &proto::NodeProto, scope: &str) -> Result<(), OnnxError> {
        let Some(output) = node.output.first() else { return Ok(()) };
        let name = format!("{scope}{output}");
        let Some(attr) = node.attribute.iter().find(|a| a.name().starts_with("value") || a.name() == "sparse_value")
        else {
            return Err(OnnxError::tensor(&name, "Constant node without a value attribute"));
        };
        let (dtype, dims, data) = match attr.name() {
            "value" => {
                let t = attr.t.as_ref().ok_or_else(|| OnnxError::tensor(&name, "Constant 'value' holds no tensor"))?;
                let read = self.tensor_data(t, &name)?;
                return self.keep(name, t, read, true);
            }
            "sparse_value" => {
                let s = attr
                    .sparse_tensor
                    .as_ref()
                    .ok_or_else(|| OnnxError::tensor(&name, "Constant 'sparse_value' holds no tensor"))?;
                let (dtype, data) = self.densify(s, &name)?;
                return self.push_data(name, dtype, s.dims.clone(), data, Storage::Sparse, true);
            }
            "value_float" => (DataType::Float, vec![], TensorData::Bytes(le_bytes(&[attr.f()], f32::to_le_bytes))),
            "value_floats" => (
                DataType::Float,
                vec![attr.floats.len() as i64],
                TensorData::Bytes(le_bytes(&attr.floats, f32::to_le_bytes)),
            ),
            "value_int" => (DataType::Int64, vec![], TensorData::Bytes(le_bytes(&[attr.i()], i64::to_le_bytes))),
            "value_ints" => (
                DataType::Int64,
                vec![attr.ints.len() as i64],
                TensorData::Bytes(le_bytes(&attr.ints, i64::to_le_bytes)),
            ),
            "value_string" => (DataType::String, vec![], TensorData::Strings(vec![attr.s.clone().unwrap_or_default()])),
            "value_strings" => {
                (DataType::String, vec![attr.strings.len() as i64], TensorData::Strings(attr.strings.clone()))
            }
            other => {
                return Err(OnnxError::tensor(
                    &name,
                    format!("Constant attribute '{other}' is not an ONNX Constant value"),
                ))
            }
        };
        self.push_data(name, dtype, dims, data, Storage::Typed, true)
    }

    fn push(
        &mut self,
        name: String,
        t: &proto::TensorProto,
        data: TensorData,
        storage: Storage,
        constant: bool,
    ) -> Result<(), OnnxError> {
        let dtype = known_dtype(t, &name)?;
        self.push_data(name, dtype, t.dims.clone(), data, storage, constant)
    }

    fn push_data(
        &mut self,
        name: String,
        dtype: DataType,
        dims: Vec<i64>,
        data: TensorData,
        storage: Storage,
        constant: bool,
    ) -> Result<(), OnnxError> {
        let count = element_count(&dims, &name)?;
        match &data {
            TensorData::Strings(s) if s.len() as u64 != count => {
                return Err(OnnxError::tensor(&name, format!("dims {dims:?} need {count} strings, found {}", s.len())));
            }
            TensorData::Bytes(b) => {
                let want = dtype.byte_len(count).ok_or_else(|| OnnxError::tensor(&name, "tensor is too large"))?;
                if b.len() as u64 != want {
                    return Err(OnnxError::tensor(
                        &name,
                        format!("{dtype} dims {dims:?} need {want} bytes of data, found {}", b.len()),
                    ));
                }
            }
            _ => {}
        }
        if !self.names.insert(name.clone()) {
            return Err(OnnxError::tensor(&name, "two tensors have this name"));
        }
        self.tensors.push(Tensor { name, dtype, dims, data, storage, constant });
        Ok(())
    }

    /// The tensor's bytes in whichever form the model stores them.
    fn tensor_data(&mut self, t: &proto::TensorProto, name: &str) -> Result<Read, OnnxError> {
        let dtype = known_dtype(t, name)?;
        if t.segment.is_some() {
            return Err(OnnxError::tensor(name, "segmented tensors are not supported"));
        }
        let external = t.data_location() == proto::tensor_proto::DataLocation::External;
        if external {
            if dtype == DataType::String {
                return Err(OnnxError::tensor(name, "STRING tensors cannot use external data"));
            }
            let Some(files) = self.external.as_mut() else {
                let location = t.external_data.iter().find(|e| e.key() == "location").map(|e| e.value());
                let location = location.ok_or_else(|| OnnxError::tensor(name, "external data without a location"))?;
                return Ok(Read::Elsewhere(location.to_string()));
            };
            return Ok(Read::Data(TensorData::Bytes(files.read(t, name)?), Storage::External));
        }
        if dtype == DataType::String {
            return Ok(Read::Data(TensorData::Strings(t.string_data.clone()), Storage::Typed));
        }
        if let Some(raw) = &t.raw_data {
            return Ok(Read::Data(TensorData::Bytes(raw.clone()), Storage::Raw));
        }
        let count = element_count(&t.dims, name)?;
        let bytes = typed::to_bytes(t, dtype, count).map_err(|p| OnnxError::tensor(name, p))?;
        Ok(Read::Data(TensorData::Bytes(bytes), Storage::Typed))
    }

    /// A sparse tensor as dense bytes: zeros, with the values scattered in.
    fn densify(&mut self, s: &proto::SparseTensorProto, name: &str) -> Result<(DataType, TensorData), OnnxError> {
        let values = s.values.as_ref().ok_or_else(|| OnnxError::tensor(name, "sparse tensor without values"))?;
        let indices = s.indices.as_ref().ok_or_else(|| OnnxError::tensor(name, "sparse tensor without indices"))?;
        let dtype = known_dtype(values, name)?;
        let elem = match dtype.bits() {
            Some(b) if b % 8 == 0 => (b / 8) as usize,
            _ => return Err(OnnxError::tensor(name, format!("sparse {dtype} tensors are not supported"))),
        };
        let (TensorData::Bytes(vals), _) = self.data_here(values, name)? else {
            return Err(OnnxError::tensor(name, "sparse values are not numeric"));
        };
        let nnz = element_count(&values.dims, name)?;
        if vals.len() as u64 != nnz * elem as u64 {
            return Err(OnnxError::tensor(name, format!("sparse values: {} bytes for {nnz} values", vals.len())));
        }
        if known_dtype(indices, name)? != DataType::Int64 {
            return Err(OnnxError::tensor(name, "sparse indices must be INT64"));
        }
        let (TensorData::Bytes(idx), _) = self.data_here(indices, name)? else {
            return Err(OnnxError::tensor(name, "sparse indices are not numeric"));
        };
        let idx: Vec<i64> = idx.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect();
        let count = element_count(&s.dims, name)?;
        let total = count
            .checked_mul(elem as u64)
            .filter(|n| *n <= isize::MAX as u64)
            .ok_or_else(|| OnnxError::tensor(name, "sparse tensor is too large"))?;
        // Indices are either linear ([NNZ]) or coordinates ([NNZ, rank]).
        let linear: Vec<u64> = if indices.dims.len() == 1 && idx.len() as u64 == nnz {
            idx.iter().map(|&i| i as u64).collect()
        } else if indices.dims.len() == 2 && idx.len() as u64 == nnz * s.dims.len() as u64 {
            idx.chunks(s.dims.len().max(1))
                .map(|c| {
                    c.iter()
                        .zip(&s.dims)
                        .try_fold(0u64, |acc, (&i, &d)| (i >= 0 && i < d).then(|| acc * d as u64 + i as u64))
                        .unwrap_or(u64::MAX)
                })
                .collect()
        } else {
            return Err(OnnxError::tensor(
                name,
                format!("sparse indices dims {:?} do not fit {nnz} values", indices.dims),
            ));
        };
        let limit = dense_limit(self.file_len);
        if total > limit {
            return Err(OnnxError::tensor(
                name,
                format!("sparse tensor of dims {:?} densifies to {total} bytes, over the limit of {limit} (64× the model file, at least 1 GiB, at most a quarter of this machine's memory)", s.dims),
            ));
        }
        let mut dense = Vec::new();
        dense
            .try_reserve_exact(total as usize)
            .map_err(|_| OnnxError::tensor(name, format!("cannot allocate {total} bytes to densify it")))?;
        dense.resize(total as usize, 0u8);
        for (k, &i) in linear.iter().enumerate() {
            if i >= count {
                return Err(OnnxError::tensor(name, format!("sparse index {} is outside dims {:?}", idx[k], s.dims)));
            }
            let at = i as usize * elem;
            dense[at..at + elem].copy_from_slice(&vals[k * elem..(k + 1) * elem]);
        }
        Ok((dtype, TensorData::Bytes(Bytes::from(dense))))
    }
}

fn known_dtype(t: &proto::TensorProto, name: &str) -> Result<DataType, OnnxError> {
    DataType::from_onnx(t.data_type()).ok_or_else(|| match t.data_type() {
        0 => OnnxError::tensor(name, "data type is UNDEFINED"),
        n => OnnxError::tensor(name, format!("unknown data type {n} (newer than this weightcast build knows)")),
    })
}

fn element_count(dims: &[i64], name: &str) -> Result<u64, OnnxError> {
    dims.iter().try_fold(1u64, |acc, &d| {
        if d < 0 {
            return Err(OnnxError::tensor(name, format!("negative dimension in {dims:?}")));
        }
        acc.checked_mul(d as u64).ok_or_else(|| OnnxError::tensor(name, format!("dims {dims:?} overflow")))
    })
}

fn le_bytes<T: Copy, const N: usize>(values: &[T], f: fn(T) -> [u8; N]) -> Bytes {
    values.iter().flat_map(|v| f(*v)).collect::<Vec<u8>>().into()
}

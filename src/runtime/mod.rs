//! ONNX Runtime: opening a session per model with the configured execution
//! providers, and a warm-up inference; [`library`] finds libonnxruntime.
//!
//! weightcast serves weights; the session is there to prove the model loads
//! where it will run, to tell which execution providers really work on this
//! host, and to report the model's inputs and outputs as ORT sees them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::ep;
use ort::session::{builder::SessionBuilder, Session};
use ort::value::{Tensor, TensorElementType, ValueType};
use serde::Deserialize;

use crate::onnx::ValueInfo;

mod library;
pub use library::{find_library, LibrarySearch};

/// The ONNX Runtime version whose library `scripts/fetch-ort.sh` fetches and
/// whose C API the `ort` crate is built against.
pub const ORT_VERSION: &str = "1.31.1";

/// Why the runtime or a session could not be used.
#[derive(Debug, thiserror::Error, Clone)]
#[allow(missing_docs)] // each variant and field is told by its #[error] message
pub enum RuntimeError {
    #[error("ONNX Runtime library (libonnxruntime.so) not found; looked in: {}. \
             Get it with `scripts/fetch-ort.sh` (takes it from the onnxruntime=={ORT_VERSION} PyPI wheel), \
             or `pip install onnxruntime=={ORT_VERSION}`, or point --ort-lib / ORT_DYLIB_PATH / [runtime] ort_lib at it; \
             or serve without it: --runtime none", .searched.join(", "))]
    NotFound { searched: Vec<String> },
    #[error("cannot load ONNX Runtime from {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("ONNX Runtime cannot load the model: {0}")]
    Session(String),
    #[error("warm-up inference failed: {0}")]
    Warmup(String),
}

/// An execution provider, in the names the config uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// TensorRT (NVIDIA GPUs, Jetson).
    Tensorrt,
    /// CUDA (NVIDIA GPUs).
    Cuda,
    /// ONNX Runtime's own CPU kernels; always there.
    Cpu,
}

impl Provider {
    /// Its name in the config and the manifest.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

/// Options of the CUDA execution provider (`[runtime.cuda]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CudaOptions {
    /// GPU to use (`device_id`).
    pub device_id: Option<i32>,
    /// Upper bound of the CUDA memory arena in bytes (`gpu_mem_limit`); on a
    /// Jetson the GPU shares the board's RAM with everything else.
    pub gpu_mem_limit: Option<usize>,
    /// How the arena grows: "next_power_of_two" (default) or
    /// "same_as_requested" (tighter on shared-memory boards).
    pub arena_extend_strategy: Option<ArenaStrategy>,
}

/// `[runtime.cuda] arena_extend_strategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArenaStrategy {
    /// Grow by doubling (fewer, larger allocations).
    NextPowerOfTwo,
    /// Grow by what is asked (tighter memory, Jetson).
    SameAsRequested,
}

/// Options of the TensorRT execution provider (`[runtime.tensorrt]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorrtOptions {
    /// GPU to use (`device_id`).
    pub device_id: Option<i32>,
    /// Build fp16 engines (`trt_fp16_enable`): the Jetson's tensor cores.
    pub fp16: Option<bool>,
    /// Keep built engines on disk (`trt_engine_cache_enable`): building one
    /// takes minutes on a Jetson; a cached one loads in seconds.
    pub engine_cache: Option<bool>,
    /// Where (`trt_engine_cache_path`); under the service's state folder.
    pub engine_cache_path: Option<String>,
    /// Keep TensorRT's tactic timings too (`trt_timing_cache_enable`).
    pub timing_cache: Option<bool>,
    /// Scratch memory TensorRT may use while building (`trt_max_workspace_size`, bytes).
    pub max_workspace_size: Option<usize>,
    /// Run on a DLA core (`trt_dla_enable`, `trt_dla_core`): Xavier and Orin have them.
    pub dla_core: Option<u32>,
}

/// Whether to use ONNX Runtime at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Open an ONNX Runtime session per model (the default).
    Ort,
    /// Serve weights without ONNX Runtime (hosts without the library).
    None,
}

/// The `[runtime]` table of the config: how sessions are opened.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionOptions {
    /// ONNX Runtime or none.
    pub engine: Engine,
    /// Path of libonnxruntime.so (after --ort-lib and ORT_DYLIB_PATH).
    pub ort_lib: Option<PathBuf>,
    /// Execution providers to try, in order; CPU is always the last resort.
    pub providers: Vec<Provider>,
    /// Run one inference on zero-filled inputs at load; fail the load if it fails.
    pub warmup: bool,
    /// Keep each session open, or open it to validate and report, then drop it.
    pub session: SessionPolicy,
    /// `[runtime.cuda]`.
    pub cuda: CudaOptions,
    /// `[runtime.tensorrt]`.
    pub tensorrt: TensorrtOptions,
    /// The warm-up's input shapes, by input name (`input_shapes = { images
    /// = [1, 3, 320, 320] }`, or `pull --check-shape images=1,3,320,320`):
    /// real models reject made-up ones (nudenet's 1×3×1×1 image, silero's
    /// one sample), so without them a failed warm-up only warns; with them
    /// it fails the check.
    pub input_shapes: std::collections::BTreeMap<String, Vec<i64>>,
    /// The warm-up's value of every element of an input, by name (`input_values
    /// = { sr = 16000 }`, `pull --check-value sr=16000`); others are zeros.
    pub input_values: std::collections::BTreeMap<String, f64>,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            engine: Engine::Ort,
            ort_lib: None,
            providers: vec![Provider::Cpu],
            warmup: false,
            session: SessionPolicy::Keep,
            cuda: Default::default(),
            tensorrt: Default::default(),
            input_shapes: Default::default(),
            input_values: Default::default(),
        }
    }
}

/// What happens to a model's session once it has loaded (and warmed up).
///
/// On the CPU a kept session costs little: it runs on the very bytes
/// weightcast serves ([`Runtime::open_shared`]). CUDA and TensorRT copy every
/// weight to the device by design (and TensorRT builds an engine): there a
/// session that only proves the model loads can be dropped to give the
/// device memory back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionPolicy {
    /// Keep it open while the version is served (the default).
    Keep,
    /// Open, warm up if asked, report providers, inputs and outputs; then close.
    Validate,
}

/// A loaded ONNX Runtime library.
pub struct Runtime {
    /// The libonnxruntime.so it came from.
    pub library: PathBuf,
    env: ort::environment::Environment,
    /// Providers whose failure has been logged, so each is logged once.
    reported: Mutex<HashSet<Provider>>,
}

static RUNTIME: OnceLock<Result<&'static Runtime, RuntimeError>> = OnceLock::new();

impl Runtime {
    /// Loads the library once per process; later calls return the same runtime.
    pub fn load(search: &LibrarySearch) -> Result<&'static Runtime, RuntimeError> {
        let loaded = RUNTIME.get_or_init(|| {
            let library = find_library(search)?;
            let load_error = |message: String| RuntimeError::Load { path: library.clone(), message };
            let env = ort::init_from(&library)
                .map_err(|e| load_error(e.to_string()))?
                .with_name("weightcast")
                .with_logger(std::sync::Arc::new(ort_log))
                .build()
                .map_err(|e| load_error(e.to_string()))?;
            // Nothing below warnings is made (verbose lines would be
            // formatted by ONNX Runtime for nothing).
            env.set_log_level(ort::logging::LogLevel::Warning);
            tracing::info!(library = %library.display(), "loaded ONNX Runtime");
            let rt = Runtime { library, env, reported: Mutex::new(HashSet::new()) };
            Ok(&*Box::leak(Box::new(rt)))
        });
        // The first attempt's error, whole: the library is looked for once.
        loaded.clone()
    }

    /// Opens a session on the model at `path` (ONNX Runtime reads the file
    /// and its external data itself, and copies every weight).
    pub fn open(&self, path: &Path, options: &SessionOptions) -> Result<OpenSession, RuntimeError> {
        let (mut builder, active) = self.builder(options)?;
        let session = builder.commit_from_file(path).map_err(session_error)?;
        OpenSession::new(session, options, active, Vec::new())
    }

    /// Opens a session on `graph`, a model whose tensors in `shared` are
    /// external data at [`PLACEHOLDER`] (see `onnx::graph::for_session`),
    /// handing ONNX Runtime each of those tensors' bytes in place with
    /// `AddInitializer`, which does not copy CPU tensors; pre-packing, which
    /// would copy weights into kernel layouts, is off. The weights then exist
    /// once, in the bytes weightcast serves (measured in PERFORMANCE.md). The
    /// session keeps the bytes alive; they are immutable (`Bytes`), and a
    /// shared tensor's bytes must be aligned to its element size.
    pub fn open_shared(
        &self,
        graph: &[u8],
        shared: Vec<SharedTensor>,
        options: &SessionOptions,
    ) -> Result<OpenSession, RuntimeError> {
        let (builder, active) = self.builder(options)?;
        // Graph optimizations off: ONNX Runtime's optimizers read initializer
        // data from the graph (which holds placeholders here), and folding
        // or pre-packing would copy weights anyway. The session validates
        // and reports; it does not serve inference.
        let level = ort::session::builder::GraphOptimizationLevel::Disable;
        let builder = builder.with_optimization_level(level).map_err(|e| session_error(e.into()))?;
        let builder = builder.with_prepacking(false).map_err(|e| session_error(e.into()))?;
        let mut builder =
            builder.with_config_entry(PLACEHOLDER_KEY, PLACEHOLDER_DIR).map_err(|e| session_error(e.into()))?;
        for t in &shared {
            let value = in_place_tensor(t)?;
            builder = builder.with_initializer(&t.name, value).map_err(|e| session_error(e.into()))?;
        }
        let session = builder.commit_from_memory(graph).map_err(session_error)?;
        OpenSession::new(session, options, active, shared.into_iter().map(|t| t.data).collect())
    }

    /// A session builder with the configured execution providers registered
    /// (those that fail are skipped, logged once), and the providers active.
    fn builder(&self, options: &SessionOptions) -> Result<(SessionBuilder, Vec<Provider>), RuntimeError> {
        // One intra-op thread: the session validates the model and answers the
        // warm-up; the cores are for serving.
        let mut builder = Session::builder(&self.env)
            .map_err(session_error)?
            .with_intra_threads(1)
            .map_err(|e| session_error(e.into()))?;
        let mut active = Vec::new();
        for &provider in &options.providers {
            let dispatch = match provider {
                Provider::Cpu => {
                    active.push(provider);
                    continue;
                }
                Provider::Cuda => cuda_provider(&options.cuda).build(),
                Provider::Tensorrt => tensorrt_provider(&options.tensorrt).build(),
            };
            match builder.with_execution_providers([dispatch.error_on_failure()]) {
                Ok(b) => {
                    builder = b;
                    active.push(provider);
                }
                Err(e) => {
                    let first = self.reported.lock().map(|mut r| r.insert(provider)).unwrap_or(true);
                    if first {
                        tracing::warn!("execution provider {} is not available, skipping it (falling back to the next; CPU last): {e}", provider.name());
                    }
                    builder = e.recover();
                }
            }
        }
        if !active.contains(&Provider::Cpu) {
            // ONNX Runtime always keeps CPU for the nodes other providers decline.
            active.push(Provider::Cpu);
        }
        Ok((builder, active))
    }
}

fn session_error(e: ort::Error) -> RuntimeError {
    RuntimeError::Session(e.to_string())
}

/// Where a graph for [`Runtime::open_shared`] says its shared tensors lie:
/// `/dev/null`, a file that exists (ONNX Runtime checks) and holds nothing,
/// so a tensor the graph names but the session is not handed fails the load
/// loudly ("Random-access reads require a regular file") instead of reading
/// other bytes.
pub const PLACEHOLDER: &str = "null";
const PLACEHOLDER_DIR: &str = "/dev";
/// The folder ONNX Runtime resolves external data in for a model from memory.
const PLACEHOLDER_KEY: &str = "session.model_external_initializers_file_folder_path";

/// A tensor ONNX Runtime uses in place.
pub struct SharedTensor {
    /// Its name in the graph.
    pub name: String,
    /// Its ONNX element type.
    pub dtype: crate::onnx::DataType,
    /// Its shape.
    pub dims: Vec<i64>,
    /// Its bytes, aligned to the element size.
    pub data: bytes::Bytes,
}

/// An ONNX Runtime CPU tensor over `t`'s bytes, without a copy.
fn in_place_tensor(t: &SharedTensor) -> Result<ort::value::DynValue, RuntimeError> {
    use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let fail =
        |why: String| RuntimeError::Session(format!("cannot share tensor '{}' with ONNX Runtime: {why}", t.name));
    let element = element_type(t.dtype).ok_or_else(|| fail(format!("{} has no ONNX Runtime tensor type", t.dtype)))?;
    let info = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default)
        .map_err(|e| fail(e.to_string()))?;
    let mut value: *mut ort::sys::OrtValue = std::ptr::null_mut();
    // SAFETY: the pointer and length describe `t.data`, which the session
    // keeps alive (OpenSession::_shared) and which nothing writes: ONNX
    // Runtime reads initializers and never writes them. `dims` outlives the
    // call (ONNX Runtime copies the shape).
    let status = unsafe {
        (ort::api().CreateTensorWithDataAsOrtValue)(
            info.ptr(),
            t.data.as_ptr() as *mut std::ffi::c_void,
            t.data.len(),
            t.dims.as_ptr(),
            t.dims.len(),
            element,
            &mut value,
        )
    };
    if !status.0.is_null() {
        // SAFETY: a non-null status from the call above, read then released once.
        let message = unsafe {
            let text = std::ffi::CStr::from_ptr((ort::api().GetErrorMessage)(status.0)).to_string_lossy().into_owned();
            (ort::api().ReleaseStatus)(status.0);
            text
        };
        return Err(fail(message));
    }
    let value = std::ptr::NonNull::new(value).ok_or_else(|| fail("no value returned".into()))?;
    // SAFETY: `value` is a tensor just created, owned by the returned Value
    // (released when it drops); the allocator is only kept, never used to
    // free the data, which the tensor does not own.
    Ok(unsafe { ort::value::DynValue::from_ptr(value, Some(&Allocator::default())) })
}

/// ONNX's element type numbers are ONNX Runtime's; those it has.
fn element_type(dtype: crate::onnx::DataType) -> Option<ort::sys::ONNXTensorElementDataType> {
    use crate::onnx::DataType as D;
    use ort::sys::ONNXTensorElementDataType as E;
    Some(match dtype {
        D::Float => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT,
        D::Uint8 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8,
        D::Int8 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8,
        D::Uint16 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16,
        D::Int16 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16,
        D::Int32 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32,
        D::Int64 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64,
        D::Bool => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL,
        D::Float16 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16,
        D::Double => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE,
        D::Uint32 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32,
        D::Uint64 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64,
        D::Bfloat16 => E::ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16,
        _ => return None,
    })
}

/// Whether [`Runtime::open_shared`] can hand ONNX Runtime a tensor of this
/// type in place.
pub fn shareable(dtype: crate::onnx::DataType) -> bool {
    element_type(dtype).is_some()
}

/// What `weightcast pull --check ort` asks of a new version: ONNX Runtime
/// opens it by path (the graph resolves, shape inference runs, every external
/// tensor is read), and runs one inference on zero inputs. With the inputs'
/// shapes given (`input_shapes`, `--check-shape`), a failed inference fails
/// the check; without, symbolic dims are 1 and a failure only warns: such
/// made-up inputs are not valid for every model (a reflect Pad needs at
/// least 2 samples).
pub fn check_model(search: &LibrarySearch, options: &SessionOptions, model: &Path) -> Result<(), RuntimeError> {
    let rt = Runtime::load(search)?;
    let told = !options.input_shapes.is_empty() || !options.input_values.is_empty();
    let options = SessionOptions { warmup: false, ..options.clone() };
    let mut session = rt.open(model, &options)?;
    match session.warmup() {
        Ok(()) => Ok(()),
        Err(e) if told => Err(e),
        Err(e) => {
            tracing::warn!("the new version loads in ONNX Runtime; a warm-up on zero inputs failed (not a rejection; give the inputs' shapes with --check-shape NAME=D0,D1,… to make it one): {e}");
            Ok(())
        }
    }
}

pub(crate) fn cuda_provider(o: &CudaOptions) -> ep::CUDA {
    let mut p = ep::CUDA::default();
    if let Some(id) = o.device_id {
        p = p.with_device_id(id);
    }
    if let Some(limit) = o.gpu_mem_limit {
        p = p.with_memory_limit(limit);
    }
    if let Some(s) = o.arena_extend_strategy {
        p = p.with_arena_extend_strategy(match s {
            ArenaStrategy::NextPowerOfTwo => ep::ArenaExtendStrategy::NextPowerOfTwo,
            ArenaStrategy::SameAsRequested => ep::ArenaExtendStrategy::SameAsRequested,
        });
    }
    p
}

pub(crate) fn tensorrt_provider(o: &TensorrtOptions) -> ep::TensorRT {
    let mut p = ep::TensorRT::default();
    if let Some(id) = o.device_id {
        p = p.with_device_id(id);
    }
    if let Some(v) = o.fp16 {
        p = p.with_fp16(v);
    }
    if let Some(v) = o.engine_cache {
        p = p.with_engine_cache(v);
    }
    if let Some(v) = &o.engine_cache_path {
        p = p.with_engine_cache_path(v);
    }
    if let Some(v) = o.timing_cache {
        p = p.with_timing_cache(v);
    }
    if let Some(v) = o.max_workspace_size {
        p = p.with_max_workspace_size(v);
    }
    if let Some(core) = o.dla_core {
        p = p.with_dla(true).with_dla_core(core);
    }
    p
}

fn value_info(name: &str, t: &ValueType) -> ValueInfo {
    match t {
        ValueType::Tensor { ty, shape, .. } => {
            ValueInfo { name: name.to_string(), dtype: element_name(*ty), dims: shape.iter().copied().collect() }
        }
        other => ValueInfo { name: name.to_string(), dtype: format!("{other:?}"), dims: Vec::new() },
    }
}

fn element_name(t: TensorElementType) -> String {
    use TensorElementType::*;
    match t {
        Float32 => "FLOAT".into(),
        Float64 => "DOUBLE".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}

/// An open session and what it reported.
pub struct OpenSession {
    /// The providers the config asked for.
    pub requested: Vec<Provider>,
    /// Those registered, CPU last.
    pub active: Vec<Provider>,
    /// Inputs as the session reports them.
    pub inputs: Vec<ValueInfo>,
    /// Outputs as the session reports them.
    pub outputs: Vec<ValueInfo>,
    /// Whether the warm-up inference ran.
    pub warmed_up: bool,
    /// `None` once closed after validation ([`SessionPolicy::Validate`]).
    session: Option<Mutex<Session>>,
    /// The warm-up's input shapes and values ([`SessionOptions::input_shapes`]).
    input_shapes: std::collections::BTreeMap<String, Vec<i64>>,
    input_values: std::collections::BTreeMap<String, f64>,
    /// The bytes the session uses in place; declared after `session`, so
    /// dropped after it.
    _shared: Vec<bytes::Bytes>,
}

impl OpenSession {
    fn new(
        session: Session,
        options: &SessionOptions,
        active: Vec<Provider>,
        shared: Vec<bytes::Bytes>,
    ) -> Result<OpenSession, RuntimeError> {
        let mut open = OpenSession {
            requested: options.providers.clone(),
            active,
            inputs: session.inputs().iter().map(|o| value_info(o.name(), o.dtype())).collect(),
            outputs: session.outputs().iter().map(|o| value_info(o.name(), o.dtype())).collect(),
            warmed_up: false,
            session: Some(Mutex::new(session)),
            input_shapes: options.input_shapes.clone(),
            input_values: options.input_values.clone(),
            _shared: shared,
        };
        if options.warmup {
            open.warmup()?;
        }
        if options.session == SessionPolicy::Validate {
            open.session = None;
            open._shared.clear();
        }
        Ok(open)
    }

    /// Whether the session is still open (not closed after validation).
    pub fn is_open(&self) -> bool {
        self.session.is_some()
    }

    /// Runs one inference with every input zero-filled, in the shapes
    /// `input_shapes` gives (symbolic dims as 1 where it gives none).
    pub fn warmup(&mut self) -> Result<(), RuntimeError> {
        let session = self.session.as_ref().ok_or_else(|| RuntimeError::Warmup("the session was closed".into()))?;
        let mut session = session.lock().map_err(|_| RuntimeError::Warmup("session lock poisoned".into()))?;
        let mut inputs: Vec<(String, ort::value::DynValue)> = Vec::new();
        let names: Vec<&str> = session.inputs().iter().map(|i| i.name()).collect();
        let given = self.input_shapes.keys().chain(self.input_values.keys());
        if let Some(unknown) = given.into_iter().find(|k| !names.contains(&k.as_str())) {
            return Err(RuntimeError::Warmup(format!(
                "a shape or value is given for input '{unknown}', and the model's inputs are {names:?}"
            )));
        }
        for input in session.inputs() {
            let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
                return Err(RuntimeError::Warmup(format!("input '{}' is not a tensor", input.name())));
            };
            let dims =
                input_dims(input.name(), shape, self.input_shapes.get(input.name())).map_err(RuntimeError::Warmup)?;
            let fill = self.input_values.get(input.name()).copied().unwrap_or(0.0);
            let value =
                filled(*ty, &dims, fill).map_err(|e| RuntimeError::Warmup(format!("input '{}': {e}", input.name())))?;
            inputs.push((input.name().to_string(), value));
        }
        session.run(inputs).map_err(|e| RuntimeError::Warmup(e.to_string()))?;
        drop(session);
        self.warmed_up = true;
        Ok(())
    }
}

/// ONNX Runtime's own log lines, through weightcast's logger (one format in
/// the journal), target `onnxruntime`. Its errors come back through the API
/// too and weightcast reports them with what they mean (a warm-up that may
/// fail, a provider that is missing): its own copy, a red `[E:onnxruntime:…]`
/// line on stderr at every install of a healthy model (nudenet's warm-up on
/// made-up shapes), goes to debug. Its warnings (a provider falling back,
/// an unused initializer) are info.
fn ort_log(level: ort::logging::LogLevel, _category: &str, _id: &str, location: &str, message: &str) {
    use ort::logging::LogLevel::*;
    match level {
        Error | Fatal => tracing::debug!(target: "onnxruntime", %location, "{message}"),
        Warning => tracing::info!(target: "onnxruntime", "{message}"),
        Info => tracing::debug!(target: "onnxruntime", "{message}"),
        Verbose => tracing::trace!(target: "onnxruntime", "{message}"),
    }
}

/// An input's warm-up dims: those given (their rank and fixed dims must be
/// the model's), else the model's with symbolic dims as 1.
fn input_dims(name: &str, model: &[i64], given: Option<&Vec<i64>>) -> Result<Vec<i64>, String> {
    let Some(given) = given else {
        return Ok(model.iter().map(|&d| if d < 0 { 1 } else { d }).collect());
    };
    let fits = given.len() == model.len() && model.iter().zip(given).all(|(&m, &g)| g > 0 && (m < 0 || m == g));
    match fits {
        true => Ok(given.clone()),
        false => Err(format!("input '{name}' is {model:?} in the model (-1: any), and the shape given is {given:?}")),
    }
}

/// An input of `dims` with every element `value` (zero unless `input_values`
/// gives one: a sample rate, a flag).
fn filled(ty: TensorElementType, dims: &[i64], value: f64) -> Result<ort::value::DynValue, std::string::String> {
    fn make<T: Clone + ort::value::PrimitiveTensorElementType + std::fmt::Debug + 'static>(
        dims: &[i64],
        value: T,
    ) -> Result<ort::value::DynValue, std::string::String> {
        let n: i64 = dims.iter().product();
        Tensor::<T>::from_array((dims.to_vec(), vec![value; n.max(0) as usize]))
            .map(|t| t.into_dyn())
            .map_err(|e| e.to_string())
    }
    use TensorElementType::*;
    // `as` saturates: a value out of an integer type's range is its bound.
    match ty {
        Float32 => make(dims, value as f32),
        Float64 => make(dims, value),
        Int8 => make(dims, value as i8),
        Int16 => make(dims, value as i16),
        Int32 => make(dims, value as i32),
        Int64 => make(dims, value as i64),
        Uint8 => make(dims, value as u8),
        Uint16 => make(dims, value as u16),
        Uint32 => make(dims, value as u32),
        Uint64 => make(dims, value as u64),
        Bool => make(dims, value != 0.0),
        other => Err(format!("weightcast cannot make a {other:?} input for warm-up")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every documented key of configs/jetson.toml reaches the provider's
    /// options as ONNX Runtime names them (read back from the built options;
    /// no GPU needed).
    #[test]
    fn jetson_config_keys_reach_the_providers() {
        let cfg = crate::config::Config::parse(include_str!("../../configs/jetson.toml")).unwrap();
        let r = &cfg.runtime;
        assert_eq!(r.providers, vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu]);
        let trt = format!("{:?}", tensorrt_provider(&r.tensorrt));
        for (key, value) in [
            ("trt_fp16_enable", "true"),
            ("trt_engine_cache_enable", "true"),
            ("trt_engine_cache_path", "/var/lib/weightcast/trt-cache"),
            ("trt_timing_cache_enable", "true"),
            ("trt_max_workspace_size", "1073741824"),
            ("device_id", "0"),
        ] {
            assert!(trt.contains(&format!("{key:?}: {value:?}")), "{key}={value} missing from {trt}");
        }
        let cuda = format!("{:?}", cuda_provider(&r.cuda));
        for (key, value) in
            [("device_id", "0"), ("gpu_mem_limit", "2147483648"), ("arena_extend_strategy", "kSameAsRequested")]
        {
            assert!(cuda.contains(&format!("{key:?}: {value:?}")), "{key}={value} missing from {cuda}");
        }
    }

    #[test]
    fn dla_and_unknown_keys() {
        let o = TensorrtOptions { dla_core: Some(1), ..Default::default() };
        let trt = format!("{:?}", tensorrt_provider(&o));
        assert!(trt.contains("\"trt_dla_enable\": \"true\"") && trt.contains("\"trt_dla_core\": \"1\""), "{trt}");
        let e = crate::config::Config::parse("[runtime.tensorrt]\nfp_16 = true\n").unwrap_err().to_string();
        assert!(e.contains("fp_16"), "{e}");
    }
}

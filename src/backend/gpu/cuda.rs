//! CudaRunner: runs the engine's kernels on an NVIDIA GPU through the CUDA driver API (cudarc,
//! dynamic loading).
//!
//! Design:
//! - One context (the device's primary context) and one stream per runner; every copy and launch
//!   goes to that stream, so ordering is the stream's order. cudarc's per-buffer event tracking is
//!   switched off (it only matters with several streams, and raw pointers in args structs bypass it).
//! - Buffers are `Storage::Cuda(CudaSlice<_>)` (stream-ordered allocation). A zero-element tensor
//!   still gets a 1-element allocation so that no zero-byte allocation reaches the driver.
//! - Kernels: each `kernels/<stem>.cu` is compiled by NVRTC once per process and architecture (a
//!   process-wide image table), with an on-disk cache (`kernel_cache`). The runner compiles and
//!   loads every file when it is created, so a broken toolchain fails at device selection.
//!   CUBIN for the device's `sm_XX` when NVRTC supports it, else PTX for the newest older arch.
//! - Launch: a kernel has one parameter, the `#[repr(C)]` args struct; `cuLaunchKernel` gets one
//!   pointer to its bytes. When the driver can report it (`cuFuncGetParamInfo`, CUDA 12.4+), the
//!   kernel's parameter size is checked against the Rust struct size once per kernel.
//!   `FMP_SYNC_LAUNCH=1` synchronises after every launch and names the kernel that failed.
//! - The libcuda presence and the symbols used are checked before the first driver call, because
//!   cudarc panics on a missing library or symbol.
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{
    result as dres, sys as dsys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice,
    CudaStream, DevicePtr, DriverError,
};
use cudarc::nvrtc::Ptx;

use super::kernel_cache;
use super::kernels;
use super::nvrtc::{self, Target};
use super::runner::{KernelId, Launch, Runner};
use super::GpuBackend;
use crate::error::{Error, Result};
use crate::tensor::{Indices, Storage, Tensor};

/// The kernel sources a runner compiles: `(stem, source)` for each `kernels/<stem>.cu`, and the
/// headers they include by name (e.g. `("params.cuh", text)`).
#[derive(Clone, Copy, Debug)]
pub struct KernelSources {
    pub files: &'static [(&'static str, &'static str)],
    pub headers: &'static [(&'static str, &'static str)],
}

/// Headers the engine's kernels include by name.
pub const ENGINE_HEADERS: &[(&str, &str)] = &[kernels::PARAMS_HEADER, kernels::CONV_TILE_HEADER];

/// The engine's kernel files (`kernels/*.cu`) and headers.
pub fn engine_sources() -> KernelSources {
    KernelSources {
        files: kernels::KERNEL_FILES,
        headers: ENGINE_HEADERS,
    }
}

/// The CUDA backend: the engine's kernels run by the CUDA driver.
pub type CudaBackend = GpuBackend<CudaRunner>;

impl GpuBackend<CudaRunner> {
    /// Open CUDA device `ordinal` with the engine's kernels.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        Ok(GpuBackend::new(CudaRunner::new(ordinal, engine_sources())?))
    }
}

/// Driver symbols cudarc calls on our behalf; checked up front (see module docs).
const REQUIRED_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuDeviceGetCount",
    "cuDeviceGet",
    "cuDeviceGetName",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuMemAllocAsync",
    "cuMemFreeAsync",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemGetInfo_v2",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime",
    "cuEventDestroy_v2",
    "cuGetErrorName",
    "cuGetErrorString",
];

/// Load libcuda, check its symbols and initialise the driver; returns the device count.
/// Never panics: a missing driver or device is `Error::CudaUnavailable`.
pub fn device_count() -> Result<usize> {
    static STATE: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    STATE
        .get_or_init(probe_driver)
        .clone()
        .map_err(Error::CudaUnavailable)
}

fn probe_driver() -> std::result::Result<usize, String> {
    // SAFETY: only tries to dlopen candidate library names.
    if !unsafe { dsys::is_culib_present() } {
        return Err(
            "the NVIDIA driver library (libcuda.so) is not installed or not on the loader path"
                .into(),
        );
    }
    // SAFETY: presence checked above, so culib() does not panic.
    let lib = unsafe { dsys::culib() };
    for s in REQUIRED_SYMBOLS {
        // SAFETY: symbol lookup only.
        if unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err() {
            return Err(format!(
                "the NVIDIA driver lacks {s}; a driver for CUDA 12.x/13.x is required"
            ));
        }
    }
    dres::init().map_err(|e| format!("cuInit failed: {}", describe(e)))?;
    let n = dres::device::get_count()
        .map_err(|e| format!("cuDeviceGetCount failed: {}", describe(e)))?;
    if n <= 0 {
        return Err("no CUDA device found".into());
    }
    Ok(n as usize)
}

/// "CUDA_ERROR_X: text" for a driver error.
pub fn describe(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

fn cuda_err(context: impl Into<String>, e: DriverError) -> Error {
    Error::Cuda {
        context: context.into(),
        msg: describe(e),
    }
}

/// Compiled images shared by every runner of the process: (stem, arch tag, key) -> image.
type ImageTable = Mutex<HashMap<(String, String, [u8; 16]), Arc<(Target, Vec<u8>)>>>;
fn images() -> &'static ImageTable {
    static T: OnceLock<ImageTable> = OnceLock::new();
    T.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Choose the compile target for a device of compute capability `cc` (e.g. 90).
fn pick_target(cc: u32, supported: &[u32]) -> Result<(u32, Target)> {
    if supported.contains(&cc) {
        return Ok((cc, Target::Cubin));
    }
    match supported.iter().copied().filter(|&a| a <= cc).max() {
        Some(a) => Ok((a, Target::Ptx)),
        None => Err(Error::CudaUnavailable(format!(
            "this NVRTC cannot target the device (sm_{cc}); it supports {:?}",
            supported
        ))),
    }
}

/// Compile (or fetch from the process table / disk cache) one kernel file for `arch`.
pub fn compiled_image(
    stem: &str,
    source: &str,
    headers: &[(&str, &str)],
    arch: u32,
    target: Target,
) -> Result<Arc<(Target, Vec<u8>)>> {
    let (maj, min) = nvrtc::ensure_loaded()?;
    let opts = nvrtc::options(arch, target, false);
    let version = format!("nvrtc {maj}.{min}");
    let mut parts: Vec<&[u8]> = vec![version.as_bytes(), stem.as_bytes(), source.as_bytes()];
    for (n, s) in headers {
        parts.push(n.as_bytes());
        parts.push(s.as_bytes());
    }
    for o in &opts {
        parts.push(o.as_bytes());
    }
    let key = kernel_cache::key(&parts);
    let tag = match target {
        Target::Cubin => format!("sm_{arch}"),
        Target::Ptx => format!("compute_{arch}"),
    };
    let table_key = (stem.to_string(), tag.clone(), key);
    if let Some(img) = images()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&table_key)
    {
        return Ok(img.clone());
    }
    let path = kernel_cache::cache_dir().map(|d| kernel_cache::entry_path(&d, stem, &tag, &key));
    let image = match path.as_deref().and_then(|p| kernel_cache::load(p, &key)) {
        Some(img) => img,
        None => {
            let c = nvrtc::compile(&format!("{stem}.cu"), source, headers, &opts)?;
            if let Some(p) = &path {
                if let Err(e) = kernel_cache::store(p, &key, &c.image) {
                    warn_once(&format!(
                        "cannot write the kernel cache {}: {e}",
                        p.display()
                    ));
                }
            }
            c.image
        }
    };
    let img = Arc::new((target, image));
    images()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(table_key, img.clone());
    Ok(img)
}

fn warn_once(msg: &str) {
    static WARNED: OnceLock<()> = OnceLock::new();
    WARNED.get_or_init(|| eprintln!("fmp-engine: warning: {msg}"));
}

/// Largest args struct a launch accepts (and the size of the padded copy the driver reads from).
const MAX_ARGS_BYTES: usize = 4096;

struct LoadedKernel {
    func: CudaFunction,
    /// Size of the kernel's single parameter, when the driver can tell.
    param_bytes: Option<usize>,
}

pub struct CudaRunner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    ordinal: usize,
    device_name: String,
    /// Compute capability as major*10+minor.
    cc: u32,
    modules: HashMap<&'static str, Arc<CudaModule>>,
    kernels: Mutex<HashMap<KernelId, Arc<LoadedKernel>>>,
    sync_launch: bool,
    /// The device's default memory pool (a `CUmemoryPool` handle as an integer), when the driver
    /// supports stream-ordered allocation.
    pool: Option<usize>,
}

impl CudaRunner {
    /// Open device `ordinal`, compile (or load from cache) and load every kernel file.
    pub fn new(ordinal: usize, sources: KernelSources) -> Result<Self> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(Error::CudaUnavailable(format!(
                "cuda:{ordinal} requested but {count} CUDA device(s) present (cuda:0..cuda:{})",
                count - 1
            )));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| cuda_err(format!("creating a context on cuda:{ordinal}"), e))?;
        // SAFETY: all work of this runner goes to the single stream created below, so cudarc's
        // cross-stream event tracking is not needed; it must be off before any allocation.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| cuda_err("creating a stream", e))?;
        let device_name = ctx.name().map_err(|e| cuda_err("cuDeviceGetName", e))?;
        let (maj, min) = ctx
            .compute_capability()
            .map_err(|e| cuda_err("reading the compute capability", e))?;
        let cc = (maj * 10 + min) as u32;
        let supported = nvrtc::supported_archs()?;
        let (arch, target) = pick_target(cc, &supported)?;
        // Compile in parallel (NVRTC allows concurrent compiles of different programs), then load.
        let images: Vec<Result<Arc<(Target, Vec<u8>)>>> = {
            use rayon::prelude::*;
            sources
                .files
                .par_iter()
                .map(|(stem, src)| compiled_image(stem, src, sources.headers, arch, target))
                .collect()
        };
        let mut modules = HashMap::new();
        for ((stem, _), img) in sources.files.iter().zip(images) {
            let img = img?;
            let ptx = match img.0 {
                Target::Cubin => Ptx::from_binary(img.1.clone()),
                Target::Ptx => Ptx::from_src(String::from_utf8_lossy(&img.1).into_owned()),
            };
            let m = ctx.load_module(ptx).map_err(|e| {
                cuda_err(
                    format!("loading kernels/{stem}.cu ({target:?} for sm_{arch}) on sm_{cc}"),
                    e,
                )
            })?;
            modules.insert(*stem, m);
        }
        let pool = if ctx.has_async_alloc() {
            default_pool(&ctx)
        } else {
            None
        };
        let sync_launch = std::env::var("FMP_SYNC_LAUNCH")
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
        Ok(CudaRunner {
            ctx,
            stream,
            ordinal,
            device_name,
            cc,
            modules,
            kernels: Mutex::new(HashMap::new()),
            sync_launch,
            pool,
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    /// Compute capability as major*10+minor (e.g. 90).
    pub fn compute_capability(&self) -> u32 {
        self.cc
    }
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// An event that can time work on the runner's stream (CU_EVENT_DEFAULT: timing enabled).
    pub fn timing_event(&self) -> Result<CudaEvent> {
        self.ctx
            .new_event(Some(dsys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| cuda_err("cuEventCreate", e))
    }
    /// Record `ev` on the runner's stream.
    pub fn record(&self, ev: &CudaEvent) -> Result<()> {
        ev.record(&self.stream)
            .map_err(|e| cuda_err("cuEventRecord", e))
    }
    /// Milliseconds of stream time between two recorded events (waits for `end`).
    pub fn elapsed_ms(&self, start: &CudaEvent, end: &CudaEvent) -> Result<f32> {
        start
            .elapsed_ms(end)
            .map_err(|e| cuda_err(format!("cuEventElapsedTime{}", hint(self.sync_launch)), e))
    }
    /// Stream time of the work `f` queues, in milliseconds.
    pub fn time_ms(&self, f: impl FnOnce() -> Result<()>) -> Result<f32> {
        let (a, b) = (self.timing_event()?, self.timing_event()?);
        self.record(&a)?;
        f()?;
        self.record(&b)?;
        self.elapsed_ms(&a, &b)
    }

    fn alloc<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        let len = n.max(1);
        self.stream
            .alloc_zeros::<T>(len)
            .map_err(|e| alloc_err(e, what, len * std::mem::size_of::<T>()))
    }

    /// Allocation that the caller fills completely (element `n`.. of a 1-element allocation for
    /// an empty tensor is never read).
    fn alloc_uninit<T: cudarc::driver::DeviceRepr>(
        &self,
        n: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        let len = n.max(1);
        // SAFETY: the memory is uninitialised; every caller overwrites the first `n` elements
        // (a stream-ordered copy queued before any read) and never reads the rest.
        unsafe { self.stream.alloc::<T>(len) }
            .map_err(|e| alloc_err(e, what, len * std::mem::size_of::<T>()))
    }

    fn slice<'a, T>(&self, s: &'a Storage<T>) -> Result<&'a CudaSlice<T>> {
        match s {
            Storage::Cuda(c) if **c.context() == *self.ctx => Ok(c),
            Storage::Cuda(_) => Err(Error::WrongBackend {
                backend: "cuda",
                found: "another CUDA device",
            }),
            Storage::Host(_) => Err(Error::WrongBackend {
                backend: "cuda",
                found: "host",
            }),
        }
    }

    fn kernel(&self, id: KernelId) -> Result<Arc<LoadedKernel>> {
        let mut map = self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = map.get(&id) {
            return Ok(k.clone());
        }
        let module = self.modules.get(id.file).ok_or_else(|| Error::Cuda {
            context: format!("kernel {}::{}", id.file, id.name),
            msg: format!(
                "kernels/{}.cu is not among the compiled kernel files",
                id.file
            ),
        })?;
        let func = module.load_function(id.name).map_err(|e| {
            cuda_err(
                format!("looking up kernel {} in kernels/{}.cu", id.name, id.file),
                e,
            )
        })?;
        let param_bytes = param_size(&func);
        let k = Arc::new(LoadedKernel { func, param_bytes });
        map.insert(id, k.clone());
        Ok(k)
    }
}

/// The device's default memory pool, with its release threshold raised so that freed blocks stay
/// cached for reuse instead of going back to the driver at every synchronisation (the scan
/// allocates and frees work buffers in a loop). None when the driver lacks the calls.
fn default_pool(ctx: &CudaContext) -> Option<usize> {
    // SAFETY: the driver library is loaded (a context exists); symbol lookups only.
    let lib = unsafe { dsys::culib() };
    for s in [
        "cuDeviceGetDefaultMemPool",
        "cuMemPoolSetAttribute",
        "cuMemPoolGetAttribute",
    ] {
        // SAFETY: symbol lookup only.
        if unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err() {
            return None;
        }
    }
    let mut pool: dsys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: valid out-pointer and device handle.
    if unsafe { dsys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }
        != dsys::CUresult::CUDA_SUCCESS
        || pool.is_null()
    {
        return None;
    }
    let mut threshold: u64 = u64::MAX;
    // SAFETY: RELEASE_THRESHOLD takes a cuuint64_t; `threshold` lives across the call.
    let _ = unsafe {
        dsys::cuMemPoolSetAttribute(
            pool,
            dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut c_void,
        )
    };
    Some(pool as usize)
}

/// A u64 attribute of a memory pool.
fn pool_attr(pool: usize, attr: dsys::CUmemPool_attribute) -> Option<u64> {
    let mut v: u64 = 0;
    // SAFETY: `pool` came from cuDeviceGetDefaultMemPool (default pools live as long as the
    // device); the attributes read here are cuuint64_t.
    let r = unsafe {
        dsys::cuMemPoolGetAttribute(
            pool as dsys::CUmemoryPool,
            attr,
            &mut v as *mut u64 as *mut c_void,
        )
    };
    (r == dsys::CUresult::CUDA_SUCCESS).then_some(v)
}

fn hint(sync: bool) -> &'static str {
    if sync {
        ""
    } else {
        " (kernels run asynchronously: an earlier launch may have failed; rerun with FMP_SYNC_LAUNCH=1 to name it)"
    }
}

fn alloc_err(e: DriverError, what: &str, bytes: usize) -> Error {
    if e.0 == dsys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        Error::OutOfMemory {
            context: what.to_string(),
            bytes,
        }
    } else {
        cuda_err(format!("{what} ({bytes} bytes)"), e)
    }
}

/// Size of a kernel's only parameter via cuFuncGetParamInfo (driver 12.4+), else None.
fn param_size(f: &CudaFunction) -> Option<usize> {
    // SAFETY: the library is loaded (a runner exists); symbol lookup only.
    let present = unsafe { dsys::culib().get::<*const ()>(b"cuFuncGetParamInfo") }.is_ok();
    if !present {
        return None;
    }
    let (mut off, mut size) = (0usize, 0usize);
    // SAFETY: `f` is a live function handle (its module is kept alive by CudaFunction); valid
    // out-pointers.
    let r = unsafe { dsys::cuFuncGetParamInfo(f.cu_function(), 0, &mut off, &mut size) };
    if r != dsys::CUresult::CUDA_SUCCESS || off != 0 {
        return None;
    }
    // A second parameter would break the one-args-struct convention: report it as a mismatch.
    let (mut off1, mut size1) = (0usize, 0usize);
    // SAFETY: as above; an out-of-range index returns an error code.
    let r1 = unsafe { dsys::cuFuncGetParamInfo(f.cu_function(), 1, &mut off1, &mut size1) };
    if r1 == dsys::CUresult::CUDA_SUCCESS {
        return Some(off1 + size1);
    }
    Some(size)
}

impl Runner for CudaRunner {
    fn name(&self) -> String {
        format!(
            "cuda:{} {} (sm_{})",
            self.ordinal, self.device_name, self.cc
        )
    }
    fn is_gpu(&self) -> bool {
        true
    }
    fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_err(format!("synchronize{}", hint(self.sync_launch)), e))?;
        self.ctx
            .check_err()
            .map_err(|e| cuda_err("a deferred CUDA call (free or event)", e))
    }
    fn memory_budget(&self) -> usize {
        // Free device memory plus what the pool holds but does not use (cached after frees).
        let cached = self
            .pool
            .and_then(|p| {
                let reserved = pool_attr(
                    p,
                    dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT,
                )?;
                let used = pool_attr(
                    p,
                    dsys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT,
                )?;
                Some(reserved.saturating_sub(used) as usize)
            })
            .unwrap_or(0);
        match self.ctx.mem_get_info() {
            // Leave headroom for the driver, fragmentation and other processes.
            Ok((free, _total)) => ((free + cached) as f64 * 0.85) as usize,
            Err(_) => 1 << 30,
        }
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let s = self.alloc::<f32>(n, &format!("allocating a {shape:?} tensor"))?;
        Ok(Tensor {
            storage: Storage::Cuda(s),
            shape: shape.to_vec(),
        })
    }
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        let n = crate::backend::shapes::from_host(data.len(), shape)?;
        let mut s = self.alloc_uninit::<f32>(n, &format!("allocating a {shape:?} tensor"))?;
        if n > 0 {
            self.stream
                .memcpy_htod(data, &mut s)
                .map_err(|e| cuda_err(format!("copying a {shape:?} tensor to the GPU"), e))?;
        }
        Ok(Tensor {
            storage: Storage::Cuda(s),
            shape: shape.to_vec(),
        })
    }
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>> {
        let s = self.slice(&t.storage)?;
        let n = t.numel();
        if n == 0 {
            return Ok(Vec::new());
        }
        let mut out = vec![0f32; n];
        let view = s.slice(..n);
        self.stream.memcpy_dtoh(&view, &mut out).map_err(|e| {
            cuda_err(
                format!(
                    "copying a {:?} tensor to the host{}",
                    t.shape,
                    hint(self.sync_launch)
                ),
                e,
            )
        })?;
        Ok(out)
    }
    fn indices_from_host(&self, data: &[u32]) -> Result<Indices> {
        let mut s = self.alloc_uninit::<u32>(data.len(), "allocating indices")?;
        if !data.is_empty() {
            self.stream
                .memcpy_htod(data, &mut s)
                .map_err(|e| cuda_err("copying indices to the GPU", e))?;
        }
        Ok(Indices {
            storage: Storage::Cuda(s),
            len: data.len(),
        })
    }
    fn ptr(&self, t: &Tensor) -> Result<u64> {
        let s = self.slice(&t.storage)?;
        // Event tracking is off, so the returned guard records nothing.
        let (p, _guard) = s.device_ptr(&self.stream);
        Ok(p)
    }
    fn indices_ptr(&self, t: &Indices) -> Result<u64> {
        let s = self.slice(&t.storage)?;
        let (p, _guard) = s.device_ptr(&self.stream);
        Ok(p)
    }
    fn launch(&self, kernel: KernelId, cfg: Launch, args: &[u8]) -> Result<()> {
        if cfg.grid.contains(&0) || cfg.block.contains(&0) {
            return Ok(()); // empty problem: nothing to run
        }
        let k = self.kernel(kernel)?;
        if let Some(expected) = k.param_bytes {
            if expected != args.len() {
                return Err(Error::Cuda {
                    context: format!("launching kernel {}::{}", kernel.file, kernel.name),
                    msg: format!(
                        "args struct is {} bytes in Rust but the kernel's parameters take {expected} bytes \
                         (kernels/params.cuh and src/backend/params.rs disagree)",
                        args.len()
                    ),
                });
            }
        }
        // The driver reads the kernel's parameter size worth of bytes during cuLaunchKernel. Copy
        // the args into a zero-padded, 8-byte-aligned 4 KiB buffer (the classic parameter limit),
        // so a too-short args struct can never make the driver read past our memory.
        if args.len() > MAX_ARGS_BYTES {
            return Err(Error::Cuda {
                context: format!("launching kernel {}::{}", kernel.file, kernel.name),
                msg: format!(
                    "args struct of {} bytes exceeds {MAX_ARGS_BYTES} bytes",
                    args.len()
                ),
            });
        }
        let mut buf = [0u64; MAX_ARGS_BYTES / 8];
        // SAFETY: `buf` has MAX_ARGS_BYTES >= args.len() bytes; the regions do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(args.as_ptr(), buf.as_mut_ptr() as *mut u8, args.len())
        };
        let mut params: [*mut c_void; 1] = [buf.as_mut_ptr() as *mut c_void];
        let ctx_name = || {
            format!(
                "launching kernel {}::{} (grid {:?}, block {:?}, {} B dynamic shared)",
                kernel.file, kernel.name, cfg.grid, cfg.block, cfg.shared_bytes
            )
        };
        self.ctx
            .bind_to_thread()
            .map_err(|e| cuda_err(ctx_name(), e))?;
        // SAFETY: the function handle is live (held by `k`); the kernel takes exactly one
        // parameter whose size equals args.len() (checked above when the driver can tell), and
        // `params[0]` points to a 4 KiB zero-padded copy of those bytes, valid for the whole call,
        // so the driver never reads past it even if the sizes disagree. Device
        // pointers inside the args were produced by `ptr` for buffers of this context.
        unsafe {
            dres::launch_kernel(
                k.func.cu_function(),
                (cfg.grid[0], cfg.grid[1], cfg.grid[2]),
                (cfg.block[0], cfg.block[1], cfg.block[2]),
                cfg.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|e| cuda_err(ctx_name(), e))?;
        if self.sync_launch {
            self.stream.synchronize().map_err(|e| Error::Cuda {
                context: format!(
                    "kernel {}::{} (grid {:?}, block {:?})",
                    kernel.file, kernel.name, cfg.grid, cfg.block
                ),
                msg: format!("failed while running: {}", describe(e)),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_choice() {
        let s = [75, 80, 86, 89, 90, 100, 120];
        assert_eq!(pick_target(90, &s).unwrap(), (90, Target::Cubin));
        assert_eq!(pick_target(87, &s).unwrap(), (86, Target::Ptx));
        assert_eq!(pick_target(130, &s).unwrap(), (120, Target::Ptx));
        assert!(pick_target(70, &s).is_err());
    }
}

//! NVRTC: compile the kernel sources (`kernels/*.cu`, embedded in the binary) at run time.
//!
//! Design:
//! - libnvrtc is loaded dynamically (cudarc `dynamic-loading`). cudarc panics when the library or
//!   one of its symbols is missing, so [`ensure_loaded`] checks both first and turns absence into
//!   `Error::CudaUnavailable`. When the library is not on the loader path, it is preloaded by
//!   absolute path from the usual install places (pip layout under `$FMP_NVRTC_DIR` or the engine's
//!   cache, `$CUDA_HOME/lib64`, `/usr/local/cuda/lib64`); a later `dlopen` by soname (cudarc's, and
//!   libnvrtc's own for `libnvrtc-builtins`) then finds the already-loaded copy.
//! - One compile = one `.cu` file plus in-memory headers (e.g. `params.cuh`), for one `sm_XX`.
//!   Output is a CUBIN (what the CUDA runner loads: no driver PTX-JIT version issues) or PTX.
//! - Per-kernel resources (registers, static shared memory, stack frame, spills) come from the
//!   ptxas report in the NVRTC log (`-Xptxas -v`), parsed by [`parse_ptxas_log`].
//! - Default options: `-std=c++17 -default-device -lineinfo`, no fast math (parity with the CPU
//!   reference), plus `-I` for the CUDA headers when found.
use std::ffi::{c_char, c_int, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use cudarc::nvrtc::sys;

use crate::error::{Error, Result};

/// What a compile produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// SASS for exactly `sm_XX` (`-arch=sm_XX`).
    Cubin,
    /// PTX for `compute_XX` (`-arch=compute_XX`), JIT-compiled by the driver when loaded.
    Ptx,
}

/// Per-kernel resource usage reported by ptxas.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelResources {
    pub kernel: String,
    pub registers: u32,
    /// Static shared memory (bytes); dynamic shared memory is chosen at launch.
    pub shared_bytes: u32,
    pub stack_frame_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
    pub barriers: u32,
}

impl KernelResources {
    pub fn spills(&self) -> bool {
        self.spill_store_bytes > 0 || self.spill_load_bytes > 0
    }

    /// This kernel's row of the `fmp-engine kernels` table (columns: `table_header`).
    pub fn table_row(&self, arch: u32, file: &str) -> String {
        format!(
            "{:<7} {:<16} {:<32} {:>5} {:>7} {:>6} {:>8} {:>8}{}",
            format!("sm_{arch}"),
            file,
            self.kernel,
            self.registers,
            self.shared_bytes,
            self.stack_frame_bytes,
            self.spill_store_bytes,
            self.spill_load_bytes,
            if self.spills() { "  SPILLS" } else { "" }
        )
    }
}

/// The column heads of `KernelResources::table_row`.
pub fn table_header() -> String {
    format!(
        "{:<7} {:<16} {:<32} {:>5} {:>7} {:>6} {:>8} {:>8}",
        "arch", "file", "kernel", "regs", "smem", "stack", "spill_st", "spill_ld"
    )
}

/// The kernels the backend launches from `file` (`kernels::ALL_KERNELS`) that `kernels`, what
/// the file compiled to, does not define.
pub fn undefined_kernels(file: &str, kernels: &[KernelResources]) -> Vec<&'static str> {
    let stem = file.trim_end_matches(".cu");
    super::kernels::ALL_KERNELS
        .iter()
        .filter(|id| id.file == stem && !kernels.iter().any(|k| k.kernel == id.name))
        .map(|id| id.name)
        .collect()
}

/// The result of one successful compile.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub target: Target,
    /// CUBIN bytes, or the PTX text as bytes (without a trailing NUL).
    pub image: Vec<u8>,
    /// The NVRTC log (warnings; ptxas report when verbose).
    pub log: String,
}

/// Symbols this module calls; checked before first use so that an old libnvrtc gives an error
/// instead of a cudarc panic.
const REQUIRED_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcDestroyProgram",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcGetNumSupportedArchs",
    "nvrtcGetSupportedArchs",
];

/// A path from environment variable `k` (None when unset or empty).
fn env(k: &str) -> Option<PathBuf> {
    std::env::var_os(k)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Directories that may hold libnvrtc (searched only when the loader cannot find it by name).
fn library_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = env("FMP_NVRTC_DIR") {
        dirs.push(d.join("nvidia/cu13/lib"));
        dirs.push(d.join("lib"));
        dirs.push(d.clone());
    }
    if let Some(c) = default_nvrtc_dir() {
        dirs.push(c.join("nvidia/cu13/lib"));
    }
    for k in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = env(k) {
            dirs.push(d.join("lib64"));
            dirs.push(d.join("lib"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// `$XDG_CACHE_HOME/fmp-engine` or `$HOME/.cache/fmp-engine`.
pub fn engine_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(x).join("fmp-engine"));
    }
    std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(|h| PathBuf::from(h).join(".cache/fmp-engine"))
}

/// Where `.ci/install-nvrtc.sh` puts the pip packages by default.
fn default_nvrtc_dir() -> Option<PathBuf> {
    engine_cache_dir().map(|d| d.join("nvrtc"))
}

/// Preload libnvrtc (and its builtins) by absolute path from `dir`. Returns true when loaded.
fn preload_from(dir: &std::path::Path) -> bool {
    let nvrtc = ["libnvrtc.so.13", "libnvrtc.so"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file());
    let Some(nvrtc) = nvrtc else { return false };
    // Builtins first: libnvrtc dlopens them by soname at compile time.
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("libnvrtc-builtins.so") {
                // SAFETY: loading a shared library runs its initialisers; libnvrtc-builtins has no
                // initialisers with preconditions. The handle is leaked so it stays loaded.
                if let Ok(lib) = unsafe { libloading::Library::new(e.path()) } {
                    std::mem::forget(lib);
                }
            }
        }
    }
    // SAFETY: as above; libnvrtc is a plain C library. Leaked so it stays loaded for the process.
    match unsafe { libloading::Library::new(&nvrtc) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}

/// Make sure libnvrtc is loadable and has every symbol we call; returns its version.
/// The outcome is computed once per process.
pub fn ensure_loaded() -> Result<(i32, i32)> {
    static STATE: OnceLock<std::result::Result<(i32, i32), String>> = OnceLock::new();
    STATE
        .get_or_init(load_once)
        .clone()
        .map_err(Error::CudaUnavailable)
}

fn load_once() -> std::result::Result<(i32, i32), String> {
    // SAFETY: is_culib_present only tries to dlopen candidate names; it has no preconditions.
    let mut present = unsafe { sys::is_culib_present() };
    if !present {
        let dirs = library_dirs();
        for d in &dirs {
            if preload_from(d) {
                // SAFETY: as above.
                present = unsafe { sys::is_culib_present() };
                if present {
                    break;
                }
            }
        }
        if !present {
            return Err(format!(
                "libnvrtc (NVRTC 13) not found on the loader path (LD_LIBRARY_PATH) nor in {}; install it with \
                 .ci/install-nvrtc.sh or set FMP_NVRTC_DIR",
                dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    // SAFETY: the library is present (checked above), so culib() will not panic.
    let lib = unsafe { sys::culib() };
    for s in REQUIRED_SYMBOLS {
        // SAFETY: we only look the symbol up, we do not call it through this pointer.
        if unsafe { lib.get::<*const ()>(s.as_bytes()) }.is_err() {
            return Err(format!(
                "the loaded libnvrtc lacks symbol {s} (NVRTC 12 or newer is required)"
            ));
        }
    }
    let (mut major, mut minor) = (0 as c_int, 0 as c_int);
    // SAFETY: valid out-pointers; the symbol exists (checked above).
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(format!("nvrtcVersion failed: {r:?}"));
    }
    Ok((major, minor))
}

/// `sm_XX` numbers this NVRTC can target (e.g. 75, 80, 86, 89, 90, 100, 120).
pub fn supported_archs() -> Result<Vec<u32>> {
    ensure_loaded()?;
    let mut n: c_int = 0;
    // SAFETY: valid out-pointer; library and symbol checked by ensure_loaded.
    check(
        unsafe { sys::nvrtcGetNumSupportedArchs(&mut n) },
        "nvrtcGetNumSupportedArchs",
    )?;
    let mut v = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `v` has room for the `n` entries NVRTC writes.
    check(
        unsafe { sys::nvrtcGetSupportedArchs(v.as_mut_ptr()) },
        "nvrtcGetSupportedArchs",
    )?;
    Ok(v.into_iter().map(|a| a as u32).collect())
}

fn check(r: sys::nvrtcResult, what: &str) -> Result<()> {
    if r == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Msg(format!("NVRTC {what} failed: {r:?}")))
    }
}

/// Parse "sm_90" / "90" / "compute_90" / "9.0" into 90.
pub fn parse_arch(s: &str) -> Result<u32> {
    let t = s.trim();
    let digits = t
        .strip_prefix("sm_")
        .or_else(|| t.strip_prefix("compute_"))
        .unwrap_or(t);
    let v = if let Some((a, b)) = digits.split_once('.') {
        a.parse::<u32>()
            .ok()
            .zip(b.parse::<u32>().ok())
            .map(|(a, b)| a * 10 + b)
    } else {
        digits.parse::<u32>().ok()
    };
    match v {
        Some(v) if (30..=200).contains(&v) => Ok(v),
        _ => Err(Error::InvalidArgument(format!(
            "unknown GPU architecture '{s}': expected e.g. sm_80 or sm_90"
        ))),
    }
}

/// CUDA header directories, in priority order: `$FMP_CUDA_INCLUDE`, `$CUDA_HOME/include`,
/// `$CUDA_PATH/include`, the pip layout (`nvidia/cu13/include`) under `$FMP_NVRTC_DIR` or the
/// engine cache, `/usr/local/cuda/include`. Only existing directories are returned.
pub fn include_dirs() -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(d) = env("FMP_CUDA_INCLUDE") {
        c.push(d);
    }
    for k in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = env(k) {
            c.push(d.join("include"));
        }
    }
    if let Some(d) = env("FMP_NVRTC_DIR") {
        c.push(d.join("nvidia/cu13/include"));
    }
    if let Some(d) = default_nvrtc_dir() {
        c.push(d.join("nvidia/cu13/include"));
    }
    c.push(PathBuf::from("/usr/local/cuda/include"));
    let mut out: Vec<PathBuf> = Vec::new();
    for d in c {
        if d.join("cuda_runtime.h").is_file() || d.join("cuda.h").is_file() {
            if !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

/// The full option list for a compile (also part of the cache key).
pub fn options(arch: u32, target: Target, verbose: bool) -> Vec<String> {
    let mut o = vec![
        match target {
            Target::Cubin => format!("-arch=sm_{arch}"),
            Target::Ptx => format!("-arch=compute_{arch}"),
        },
        "-std=c++17".to_string(),
        "-default-device".to_string(),
        "-lineinfo".to_string(),
    ];
    if verbose && target == Target::Cubin {
        o.push("-Xptxas=-v".to_string());
    }
    if let Some(d) = include_dirs().into_iter().next() {
        o.push(format!("-I{}", d.display()));
    }
    o
}

/// Compile `source` (a `.cu` file named `file_name`) with in-memory `headers` (include name, text).
/// A compile error returns `Error::Nvrtc` with the full log.
pub fn compile(
    file_name: &str,
    source: &str,
    headers: &[(&str, &str)],
    opts: &[String],
) -> Result<Compiled> {
    ensure_loaded()?;
    let target = if opts.iter().any(|o| o.starts_with("-arch=compute_")) {
        Target::Ptx
    } else {
        Target::Cubin
    };
    let cstr = |s: &str, what: &str| {
        CString::new(s)
            .map_err(|_| Error::InvalidArgument(format!("{file_name}: {what} contains a NUL byte")))
    };
    let src = cstr(source, "source")?;
    let name = cstr(file_name, "file name")?;
    let h_src = headers
        .iter()
        .map(|(_, s)| cstr(s, "header"))
        .collect::<Result<Vec<_>>>()?;
    let h_name = headers
        .iter()
        .map(|(n, _)| cstr(n, "header name"))
        .collect::<Result<Vec<_>>>()?;
    let h_src_p: Vec<*const c_char> = h_src.iter().map(|c| c.as_ptr()).collect();
    let h_name_p: Vec<*const c_char> = h_name.iter().map(|c| c.as_ptr()).collect();
    let c_opts = opts
        .iter()
        .map(|o| cstr(o, "option"))
        .collect::<Result<Vec<_>>>()?;
    let c_opts_p: Vec<*const c_char> = c_opts.iter().map(|c| c.as_ptr()).collect();

    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a NUL-terminated CString that outlives the program (all are
    // dropped after destroy below); the header arrays have `headers.len()` entries.
    let r = unsafe {
        sys::nvrtcCreateProgram(
            &mut prog,
            src.as_ptr(),
            name.as_ptr(),
            headers.len() as c_int,
            if headers.is_empty() {
                std::ptr::null()
            } else {
                h_src_p.as_ptr()
            },
            if headers.is_empty() {
                std::ptr::null()
            } else {
                h_name_p.as_ptr()
            },
        )
    };
    check(r, "nvrtcCreateProgram")?;
    let out = compile_program(prog, file_name, target, &c_opts_p);
    // SAFETY: `prog` was created above and is destroyed exactly once.
    unsafe { sys::nvrtcDestroyProgram(&mut prog) };
    out
}

fn compile_program(
    prog: sys::nvrtcProgram,
    file_name: &str,
    target: Target,
    opts: &[*const c_char],
) -> Result<Compiled> {
    // SAFETY: `prog` is a live program; `opts` holds `opts.len()` valid C strings.
    let r = unsafe { sys::nvrtcCompileProgram(prog, opts.len() as c_int, opts.as_ptr()) };
    let log = program_log(prog);
    if r != sys::nvrtcResult::NVRTC_SUCCESS {
        let log = if log.trim().is_empty() {
            format!("{r:?} (empty log)")
        } else {
            log
        };
        return Err(Error::Nvrtc {
            file: file_name.to_string(),
            log,
        });
    }
    // the target's size and copy calls, by name for errors
    type Size = unsafe fn(sys::nvrtcProgram, *mut usize) -> sys::nvrtcResult;
    type Get = unsafe fn(sys::nvrtcProgram, *mut c_char) -> sys::nvrtcResult;
    let ((size_fn, size_name), (get_fn, get_name)): ((Size, &str), (Get, &str)) = match target {
        Target::Cubin => (
            (sys::nvrtcGetCUBINSize, "nvrtcGetCUBINSize"),
            (sys::nvrtcGetCUBIN, "nvrtcGetCUBIN"),
        ),
        Target::Ptx => (
            (sys::nvrtcGetPTXSize, "nvrtcGetPTXSize"),
            (sys::nvrtcGetPTX, "nvrtcGetPTX"),
        ),
    };
    let mut size = 0usize;
    // SAFETY: live, compiled program; valid out-pointer.
    check(unsafe { size_fn(prog, &mut size) }, size_name)?;
    let mut image = vec![0u8; size];
    // SAFETY: `image` holds exactly the `size` bytes NVRTC writes.
    check(
        unsafe { get_fn(prog, image.as_mut_ptr() as *mut c_char) },
        get_name,
    )?;
    if target == Target::Ptx {
        // PTX text comes NUL-terminated
        while image.last() == Some(&0) {
            image.pop();
        }
    }
    if image.is_empty() {
        return Err(Error::Nvrtc {
            file: file_name.to_string(),
            log: format!("NVRTC produced an empty {target:?}\n{log}"),
        });
    }
    Ok(Compiled { target, image, log })
}

fn program_log(prog: sys::nvrtcProgram) -> String {
    let mut size = 0usize;
    // SAFETY: live program; valid out-pointer.
    if unsafe { sys::nvrtcGetProgramLogSize(prog, &mut size) } != sys::nvrtcResult::NVRTC_SUCCESS
        || size == 0
    {
        return String::new();
    }
    let mut v = vec![0u8; size];
    // SAFETY: `v` holds the `size` bytes (NUL included) NVRTC writes.
    if unsafe { sys::nvrtcGetProgramLog(prog, v.as_mut_ptr() as *mut c_char) }
        != sys::nvrtcResult::NVRTC_SUCCESS
    {
        return String::new();
    }
    CStr::from_bytes_until_nul(&v)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Compile to a CUBIN for `sm_{arch}` with the ptxas report and return each kernel's resources
/// (in the order ptxas reports them).
pub fn kernel_resources(
    file_name: &str,
    source: &str,
    headers: &[(&str, &str)],
    arch: u32,
) -> Result<Vec<KernelResources>> {
    let c = compile(
        file_name,
        source,
        headers,
        &options(arch, Target::Cubin, true),
    )?;
    let r = parse_ptxas_log(&c.log);
    if r.is_empty() && source.contains("__global__") {
        return Err(Error::Nvrtc {
            file: file_name.to_string(),
            log: format!("no ptxas resource report in the NVRTC log:\n{}", c.log),
        });
    }
    Ok(r)
}

/// Resource report of one kernel file for one architecture.
#[derive(Debug)]
pub struct FileReport {
    pub file: String,
    pub arch: u32,
    pub result: Result<Vec<KernelResources>>,
}

/// Compile every `(stem, source)` of `files` (with `headers`) for `sm_{arch}` and report each
/// kernel's resources. A failing file does not stop the others.
pub fn report(files: &[(&str, &str)], headers: &[(&str, &str)], arch: u32) -> Vec<FileReport> {
    use rayon::prelude::*;
    // NVRTC allows concurrent compiles of different programs.
    files
        .par_iter()
        .map(|(stem, src)| FileReport {
            file: format!("{stem}.cu"),
            arch,
            result: kernel_resources(&format!("{stem}.cu"), src, headers, arch),
        })
        .collect()
}

/// Parse ptxas `-v` output:
/// ```text
/// ptxas info    : Compiling entry function 'k' for 'sm_90'
/// ptxas info    : Function properties for k
/// ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 32 registers, used 1 barriers, 1024 bytes smem, 400 bytes cmem[0]
/// ```
/// Only entry functions are returned (device-function property blocks are skipped).
pub fn parse_ptxas_log(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    // Name of the function whose "Function properties" block we are in, and whether it is an entry.
    let mut props_for: Option<String> = None;
    let mut entries: Vec<String> = Vec::new();
    for line in log.lines() {
        let l = line.trim();
        if let Some(rest) = l.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("").to_string();
            entries.push(name.clone());
            out.push(KernelResources {
                kernel: name,
                ..Default::default()
            });
            props_for = None;
        } else if let Some(rest) = l.split("Function properties for ").nth(1) {
            props_for = Some(rest.trim().to_string());
        } else if l.contains("bytes stack frame") {
            let target = props_for
                .as_deref()
                .and_then(|n| out.iter_mut().rev().find(|k| k.kernel == n));
            if let Some(k) = target {
                k.stack_frame_bytes = number_before(l, "bytes stack frame");
                k.spill_store_bytes = number_before(l, "bytes spill stores");
                k.spill_load_bytes = number_before(l, "bytes spill loads");
            }
        } else if l.contains("Used ") && l.contains(" registers") {
            // Belongs to the most recent entry function.
            if let Some(k) = out.last_mut() {
                k.registers = number_before(l, "registers");
                k.barriers = number_before(l, "barriers");
                k.shared_bytes = number_before(l, "bytes smem");
            }
        }
    }
    out
}

/// The integer right before `unit` in `s` ("... 12 bytes smem" -> 12); 0 when absent.
fn number_before(s: &str, unit: &str) -> u32 {
    let Some(pos) = s.find(unit) else { return 0 };
    s[..pos]
        .trim_end()
        .rsplit(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ptxas_report() {
        let log = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Function properties for helper\n\
ptxas         .     8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads\n\
ptxas info    : Compiling entry function 'conv_fwd' for 'sm_90'\n\
ptxas info    : Function properties for conv_fwd\n\
ptxas         .     16 bytes stack frame, 12 bytes spill stores, 20 bytes spill loads\n\
ptxas info    : Used 128 registers, used 1 barriers, 9216 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compile time = 13.401 ms\n\
ptxas info    : Compiling entry function 'relu' for 'sm_90'\n\
ptxas info    : Function properties for relu\n\
ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 10 registers, used 0 barriers, 368 bytes cmem[0]\n";
        let r = parse_ptxas_log(log);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0],
            KernelResources {
                kernel: "conv_fwd".into(),
                registers: 128,
                shared_bytes: 9216,
                stack_frame_bytes: 16,
                spill_store_bytes: 12,
                spill_load_bytes: 20,
                barriers: 1,
            }
        );
        assert!(r[0].spills());
        assert_eq!(
            (
                r[1].kernel.as_str(),
                r[1].registers,
                r[1].shared_bytes,
                r[1].spills()
            ),
            ("relu", 10, 0, false)
        );
    }

    #[test]
    fn parses_arch_names() {
        assert_eq!(parse_arch("sm_90").unwrap(), 90);
        assert_eq!(parse_arch("compute_80").unwrap(), 80);
        assert_eq!(parse_arch("8.6").unwrap(), 86);
        assert_eq!(parse_arch("120").unwrap(), 120);
        assert!(parse_arch("sm_x").is_err());
        assert!(parse_arch("").is_err());
    }
}

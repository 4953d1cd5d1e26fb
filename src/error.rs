//! One error type for the whole engine. Every variant carries enough context (file, key, kernel,
//! shape) for a user to act on it without a debugger.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{path}: I/O error: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("weights {path}: {msg}")]
    Weights { path: PathBuf, msg: String },
    #[error("dataset {path}: {msg}")]
    Data { path: PathBuf, msg: String },
    #[error("shape mismatch in {op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("backend {backend} does not hold this tensor (tensor lives on {found})")]
    WrongBackend {
        backend: &'static str,
        found: &'static str,
    },
    #[error("not compiled with CUDA support: {0}")]
    NotCompiledWithCuda(String),
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(String),
    #[error("CUDA error in {context}: {msg}")]
    Cuda { context: String, msg: String },
    #[error("NVRTC failed to compile {file}:\n{log}")]
    Nvrtc { file: String, log: String },
    #[error("out of GPU memory while {context} ({bytes} bytes requested)")]
    OutOfMemory { context: String, bytes: usize },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Msg(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
}

/// Return early with a `Shape` error unless `cond` holds.
#[macro_export]
macro_rules! ensure_shape {
    ($cond:expr, $op:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::error::Error::shape($op, format!($($fmt)+)));
        }
    };
}

/// A unit enum's names from one table: `name()` (each variant's first spelling) and `FromStr`
/// (any listed spelling, in any case; anything else is an `InvalidArgument` with the message
/// `$err`, which may use the rejected string as `$s`).
#[macro_export]
macro_rules! named_enum {
    ($ty:ident { $($variant:ident => $name:literal $(| $alias:literal)*,)+ } else |$s:ident| $err:expr) => {
        impl $ty {
            pub fn name(&self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = $crate::error::Error;
            fn from_str($s: &str) -> $crate::error::Result<Self> {
                match $s.to_ascii_lowercase().as_str() {
                    $($name $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err($crate::error::Error::InvalidArgument($err)),
                }
            }
        }
    };
}

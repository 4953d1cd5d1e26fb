//! Tensors: an f32 buffer that lives on a backend, plus its NCHW (or [N, F]) shape.
//! Integer class labels/indices live in `Indices` (u32). Buffers never move between backends
//! implicitly: use `Backend::from_host` / `Backend::to_host`.
use cudarc::driver::CudaSlice;

/// Where a buffer lives. Host storage is used by the CPU backend and by the kernel emulator.
pub enum Storage<T> {
    Host(Vec<T>),
    Cuda(CudaSlice<T>),
}

impl<T> Storage<T> {
    pub fn location(&self) -> &'static str {
        match self {
            Storage::Host(_) => "host",
            Storage::Cuda(_) => "cuda",
        }
    }
}

pub struct Tensor {
    pub storage: Storage<f32>,
    pub shape: Vec<usize>,
}

impl Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Leading (batch) dimension.
    pub fn batch(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }
    /// Elements per batch item.
    pub fn item_numel(&self) -> usize {
        self.shape.iter().skip(1).product()
    }
    /// (N, C, H, W) of a rank-4 tensor; rank-2 [N, F] reads as (N, F, 1, 1).
    pub fn nchw(&self) -> (usize, usize, usize, usize) {
        match self.shape.as_slice() {
            [n, c, h, w] => (*n, *c, *h, *w),
            [n, f] => (*n, *f, 1, 1),
            [n] => (*n, 1, 1, 1),
            s => panic!("nchw() on tensor of rank {}", s.len()),
        }
    }
    /// Host slice (CPU backend / emulator only).
    pub fn host(&self) -> Option<&[f32]> {
        match &self.storage {
            Storage::Host(v) => Some(v),
            _ => None,
        }
    }
    pub fn host_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.storage {
            Storage::Host(v) => Some(v),
            _ => None,
        }
    }
    /// Reinterpret with a new shape of the same element count.
    pub fn reshape(mut self, shape: &[usize]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "reshape {:?} -> {:?}",
            self.shape,
            shape
        );
        self.shape = shape.to_vec();
        self
    }
    pub fn set_shape(&mut self, shape: &[usize]) {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "set_shape {:?} -> {:?}",
            self.shape,
            shape
        );
        self.shape = shape.to_vec();
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({:?} on {})", self.shape, self.storage.location())
    }
}

/// u32 indices (class labels) on a backend.
pub struct Indices {
    pub storage: Storage<u32>,
    pub len: usize,
}

impl Indices {
    pub fn host(&self) -> Option<&[u32]> {
        match &self.storage {
            Storage::Host(v) => Some(v),
            _ => None,
        }
    }
}

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
    /// A tensor over a host buffer (the CPU backend's and the emulator's storage); the caller has
    /// checked that `data` holds `shape`'s element count.
    pub fn on_host(data: Vec<f32>, shape: &[usize]) -> Tensor {
        Tensor {
            storage: Storage::Host(data),
            shape: shape.to_vec(),
        }
    }
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
        self.change_shape("reshape", shape);
        self
    }
    pub fn set_shape(&mut self, shape: &[usize]) {
        self.change_shape("set_shape", shape);
    }
    fn change_shape(&mut self, op: &str, shape: &[usize]) {
        assert_eq!(
            shape.iter().product::<usize>(),
            self.numel(),
            "{op} {:?} -> {:?}",
            self.shape,
            shape
        );
        self.shape = shape.to_vec();
    }
}

/// A dropped tensor's host buffer goes to the recycler, where `CpuBackend::empty` finds it again.
impl Drop for Tensor {
    fn drop(&mut self) {
        if let Storage::Host(v) = &mut self.storage {
            recycle::give(std::mem::take(v));
        }
    }
}

/// Freed host buffers, kept (up to a byte bound, oldest evicted first) so that an op's output can
/// reuse one without the allocator's zeroing pass: clearing a buffer streams it through memory once
/// more, which at scan sizes costs a tenth of the step. Buffers come back with stale contents, so
/// only outputs an op overwrites entirely take them (`Backend::empty`).
pub mod recycle {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    /// Below this many floats (64 KiB) allocating and clearing is cheap: not kept.
    const MIN_LEN: usize = 1 << 14;
    /// Bytes kept at most.
    const MAX_BYTES: usize = 512 << 20;

    static FREE: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());
    static POISON: AtomicBool = AtomicBool::new(false);

    pub(crate) fn give(v: Vec<f32>) {
        if v.len() < MIN_LEN || v.len() * 4 > MAX_BYTES {
            return;
        }
        let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes: usize = free.iter().map(|b| b.len() * 4).sum::<usize>() + v.len() * 4;
        while bytes > MAX_BYTES && !free.is_empty() {
            bytes -= free.remove(0).len() * 4;
        }
        free.push(v);
    }

    /// A buffer of exactly `n` floats with unspecified (finite or poisoned) contents.
    pub(crate) fn take(n: usize) -> Vec<f32> {
        let found = {
            let mut free = FREE.lock().unwrap_or_else(|e| e.into_inner());
            free.iter()
                .rposition(|b| b.len() == n)
                .map(|i| free.remove(i))
        };
        let mut v = found.unwrap_or_else(|| vec![0.0; n]);
        if POISON.load(Ordering::Relaxed) {
            v.fill(f32::NAN);
        }
        v
    }

    /// Debug aid: when on, every buffer `take` hands out is filled with NaN, so an op that leaves
    /// part of its output unwritten shows up as NaN downstream (tests/empty_outputs.rs).
    pub fn set_poison(on: bool) {
        POISON.store(on, Ordering::Relaxed);
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
    /// Indices over a host buffer.
    pub fn on_host(data: &[u32]) -> Indices {
        Indices {
            storage: Storage::Host(data.to_vec()),
            len: data.len(),
        }
    }
    pub fn host(&self) -> Option<&[u32]> {
        match &self.storage {
            Storage::Host(v) => Some(v),
            _ => None,
        }
    }
}

//! Parameter structs shared by every backend. The `#[repr(C)]` layout is mirrored field for field
//! in `kernels/params.cuh`; change both together.
use bytemuck::{Pod, Zeroable};

/// A 2-D convolution with a square kernel, symmetric zero padding, no bias, NCHW layout,
/// weights [c_out, c_in, kernel, kernel].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ConvParams {
    pub n: i32,
    pub c_in: i32,
    pub h_in: i32,
    pub w_in: i32,
    pub c_out: i32,
    pub h_out: i32,
    pub w_out: i32,
    pub kernel: i32,
    pub stride: i32,
    pub pad: i32,
}

impl ConvParams {
    pub fn new(
        n: usize,
        c_in: usize,
        h_in: usize,
        w_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
    ) -> Self {
        let h_out = (h_in + 2 * pad - kernel) / stride + 1;
        let w_out = (w_in + 2 * pad - kernel) / stride + 1;
        ConvParams {
            n: n as i32,
            c_in: c_in as i32,
            h_in: h_in as i32,
            w_in: w_in as i32,
            c_out: c_out as i32,
            h_out: h_out as i32,
            w_out: w_out as i32,
            kernel: kernel as i32,
            stride: stride as i32,
            pad: pad as i32,
        }
    }
    /// The same convolution at another batch size.
    pub fn with_batch(mut self, n: usize) -> Self {
        self.n = n as i32;
        self
    }
    pub fn input_shape(&self) -> [usize; 4] {
        [
            self.n as usize,
            self.c_in as usize,
            self.h_in as usize,
            self.w_in as usize,
        ]
    }
    pub fn output_shape(&self) -> [usize; 4] {
        [
            self.n as usize,
            self.c_out as usize,
            self.h_out as usize,
            self.w_out as usize,
        ]
    }
    pub fn weight_shape(&self) -> [usize; 4] {
        [
            self.c_out as usize,
            self.c_in as usize,
            self.kernel as usize,
            self.kernel as usize,
        ]
    }
    /// Multiply-adds x 2 of the forward pass (also of the input-gradient and weight-gradient passes).
    pub fn flops(&self) -> u64 {
        2 * (self.n as u64)
            * (self.c_out as u64)
            * (self.h_out as u64)
            * (self.w_out as u64)
            * (self.c_in as u64)
            * (self.kernel as u64)
            * (self.kernel as u64)
    }
}

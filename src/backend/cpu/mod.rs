//! CPU reference backend (issue 2): placeholder until the real implementation lands.
use super::{Backend, ConvParams};
use crate::error::{Error, Result};
use crate::tensor::{Indices, Tensor};

pub struct CpuBackend;

impl CpuBackend {
    pub fn new() -> Self {
        CpuBackend
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[allow(unused_variables)]
impl Backend for CpuBackend {
    fn name(&self) -> String {
        "cpu".into()
    }
    fn is_gpu(&self) -> bool {
        false
    }
    fn synchronize(&self) -> Result<()> {
        Err(Error::Msg("cpu synchronize: not implemented".into()))
    }
    fn memory_budget(&self) -> usize {
        1 << 30
    }
    fn zeros(&self, shape: &[usize]) -> Result<Tensor> {
        Err(Error::Msg("cpu zeros: not implemented".into()))
    }
    fn from_host(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        Err(Error::Msg("cpu from_host: not implemented".into()))
    }
    fn to_host(&self, t: &Tensor) -> Result<Vec<f32>> {
        Err(Error::Msg("cpu to_host: not implemented".into()))
    }
    fn indices_from_host(&self, data: &[u32]) -> Result<Indices> {
        Err(Error::Msg("cpu indices_from_host: not implemented".into()))
    }
    fn copy(&self, src: &Tensor, dst: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu copy: not implemented".into()))
    }
    fn fill(&self, t: &mut Tensor, value: f32) -> Result<()> {
        Err(Error::Msg("cpu fill: not implemented".into()))
    }
    fn conv2d_forward(&self, p: &ConvParams, x: &Tensor, w: &Tensor, y: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu conv2d_forward: not implemented".into()))
    }
    fn conv2d_input_grad(&self, p: &ConvParams, dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu conv2d_input_grad: not implemented".into()))
    }
    fn conv2d_weight_grad(&self, p: &ConvParams, x: &Tensor, dy: &Tensor, dw: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu conv2d_weight_grad: not implemented".into()))
    }
    fn conv2d_input_grad_onehot( &self, p: &ConvParams, seed: &Tensor, w: &Tensor, first_channel: usize, group: usize, dx: &mut Tensor, ) -> Result<()> {
        Err(Error::Msg("cpu conv2d_input_grad_onehot: not implemented".into()))
    }
    fn channel_affine(&self, x: &Tensor, scale: &Tensor, shift: &Tensor, relu: bool, y: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu channel_affine: not implemented".into()))
    }
    fn channel_affine_backward(&self, y_saved: Option<&Tensor>, dy: &Tensor, scale: &Tensor, dx: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu channel_affine_backward: not implemented".into()))
    }
    fn batchnorm_train_forward( &self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32, momentum: f32, running_mean: &mut Tensor, running_var: &mut Tensor, save_mean: &mut Tensor, save_invstd: &mut Tensor, y: &mut Tensor, ) -> Result<()> {
        Err(Error::Msg("cpu batchnorm_train_forward: not implemented".into()))
    }
    fn batchnorm_train_backward( &self, x: &Tensor, dy: &Tensor, gamma: &Tensor, save_mean: &Tensor, save_invstd: &Tensor, dx: &mut Tensor, dgamma: &mut Tensor, dbeta: &mut Tensor, ) -> Result<()> {
        Err(Error::Msg("cpu batchnorm_train_backward: not implemented".into()))
    }
    fn relu(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu relu: not implemented".into()))
    }
    fn relu_backward(&self, y_saved: &Tensor, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu relu_backward: not implemented".into()))
    }
    fn add(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu add: not implemented".into()))
    }
    fn add_assign(&self, y: &mut Tensor, x: &Tensor) -> Result<()> {
        Err(Error::Msg("cpu add_assign: not implemented".into()))
    }
    fn mul_assign(&self, y: &mut Tensor, m: &Tensor) -> Result<()> {
        Err(Error::Msg("cpu mul_assign: not implemented".into()))
    }
    fn global_avg_pool(&self, x: &Tensor, y: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu global_avg_pool: not implemented".into()))
    }
    fn global_avg_pool_backward(&self, dy: &Tensor, dx: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu global_avg_pool_backward: not implemented".into()))
    }
    fn linear_forward(&self, x: &Tensor, w: &Tensor, b: &Tensor, y: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu linear_forward: not implemented".into()))
    }
    fn linear_backward_input(&self, dy: &Tensor, w: &Tensor, dx: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu linear_backward_input: not implemented".into()))
    }
    fn linear_backward_params(&self, x: &Tensor, dy: &Tensor, dw: &mut Tensor, db: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu linear_backward_params: not implemented".into()))
    }
    fn softmax_cross_entropy(&self, logits: &Tensor, labels: &Indices, loss: &mut Tensor, dlogits: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu softmax_cross_entropy: not implemented".into()))
    }
    fn channel_mse(&self, a: &Tensor, b: &Tensor, loss: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu channel_mse: not implemented".into()))
    }
    fn frg_seed(&self, a_x: &Tensor, a_x0: &Tensor, first_channel: usize, seed: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu frg_seed: not implemented".into()))
    }
    fn sign_step(&self, x0: &Tensor, g: &Tensor, eps: f32, y: &mut Tensor) -> Result<()> {
        Err(Error::Msg("cpu sign_step: not implemented".into()))
    }
    fn sgd_step(&self, param: &mut Tensor, grad: &Tensor, momentum_buf: &mut Tensor, lr: f32, momentum: f32, weight_decay: f32) -> Result<()> {
        Err(Error::Msg("cpu sgd_step: not implemented".into()))
    }
}

//! Training mode: BN with batch statistics (running statistics updated with momentum 0.1), the full
//! backward with a gradient for every parameter, and PyTorch-style SGD with momentum buffers.
use super::{Bn, ParamRef, PreActResNet18, BN_MOMENTUM};
use crate::backend::{BnGrads, BnLayer, BnUpdate, Sgd};
use crate::ensure_shape;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::weights::BN_EPS;

/// What one training BN saved: its input, batch mean and inverse std.
struct BnSave {
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
}

/// A block's two BNs; their ReLU outputs (the convs' inputs) are not stored: the convs read them
/// through `conv2d_forward_bn` and `conv2d_weight_grad_bn`.
struct BlockSave {
    bn1: BnSave,
    bn2: BnSave,
}

/// Activations kept by `forward_train` for `backward_train`.
pub struct TrainTrace {
    xn: Tensor,
    blocks: Vec<BlockSave>,
    pooled: Tensor,
    batch: usize,
}

impl TrainTrace {
    pub fn batch(&self) -> usize {
        self.batch
    }
}

/// Gradients of every parameter, in PyTorch `named_parameters()` order.
pub struct Grads {
    pub names: Vec<String>,
    pub tensors: Vec<Tensor>,
}

impl Grads {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| &self.tensors[i])
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.names.iter().map(String::as_str).zip(&self.tensors)
    }
    pub fn len(&self) -> usize {
        self.tensors.len()
    }
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}

/// Momentum buffers, one per parameter (allocated as zeros on the first step).
#[derive(Default)]
pub struct SgdState {
    bufs: Vec<Option<Tensor>>,
}

impl SgdState {
    pub fn new() -> Self {
        Self::default()
    }
    /// The momentum buffers by parameter (in `param_names()` order; None before the first step).
    pub fn buffers(&self) -> &[Option<Tensor>] {
        &self.bufs
    }
    /// A state holding these buffers (a resumed checkpoint's).
    pub fn from_buffers(bufs: Vec<Option<Tensor>>) -> Self {
        SgdState { bufs }
    }
}

impl BnSave {
    /// The saved BN as the ops that read relu(bn(x)) take it (every training BN is followed by a
    /// ReLU).
    fn layer<'a>(&'a self, bn: &'a Bn) -> BnLayer<'a, &'a Tensor> {
        BnLayer::new(&bn.gamma, &bn.beta, &self.mean, &self.invstd, true)
    }
}

impl PreActResNet18 {
    /// The batch statistics of BN `j` (and its running statistics' update). Its output
    /// relu(bn(x)) is never stored: the convs that read it compute it (`conv_fwd_bn`).
    fn bn_train(&mut self, j: usize, x: Tensor) -> Result<BnSave> {
        let b = self.backend.clone();
        let c = x.nchw().1;
        let mut mean = b.zeros(&[c])?;
        let mut invstd = b.zeros(&[c])?;
        let bn = &mut self.bns[j];
        let layer = BnLayer {
            gamma: &bn.gamma,
            beta: &bn.beta,
            save_mean: &mut mean,
            save_invstd: &mut invstd,
            relu: true,
        };
        let update = BnUpdate {
            running_mean: &mut bn.running_mean,
            running_var: &mut bn.running_var,
            momentum: BN_MOMENTUM,
            eps: BN_EPS,
        };
        b.batchnorm_train_forward(&x, layer, update, None)?;
        bn.num_batches_tracked += 1;
        Ok(BnSave { x, mean, invstd })
    }

    /// Conv `i` of relu(bn(x)), BN `j` as saved in `s`.
    fn conv_fwd_saved(&self, i: usize, j: usize, s: &BnSave) -> Result<Tensor> {
        self.conv_fwd_bn(i, &s.x, s.layer(&self.bns[j]))
    }

    /// Training-mode forward: BN with batch statistics; updates the running statistics (momentum
    /// 0.1) and `num_batches_tracked`. N = 1 works (every BN still sees >= 16 values per channel),
    /// as in PyTorch, so a last partial batch of one image is fine. Returns logits [N,K] and the trace for `backward_train`.
    pub fn forward_train(&mut self, x: &Tensor) -> Result<(Tensor, TrainTrace)> {
        ensure_shape!(
            x.shape().len() == 4 && x.shape()[1..] == [3, 32, 32] && x.batch() > 0,
            "forward_train",
            "expected [N, 3, 32, 32] pixel-space images, got {:?}",
            x.shape()
        );
        self.invalidate();
        let b = self.backend.clone();
        let xn = self.normalise(x)?;
        let mut h = self.conv_fwd(0, &xn)?;
        let mut saves = Vec::with_capacity(self.blocks.len());
        for bi in 0..self.blocks.len() {
            let blk = self.blocks[bi];
            let bn1 = self.bn_train(blk.bn1, h)?;
            let sc = blk
                .shortcut
                .map(|si| self.conv_fwd_saved(si, blk.bn1, &bn1))
                .transpose()?;
            let c1 = self.conv_fwd_saved(blk.conv1, blk.bn1, &bn1)?;
            let bn2 = self.bn_train(blk.bn2, c1)?;
            let mut c2 = self.conv_fwd_saved(blk.conv2, blk.bn2, &bn2)?;
            match &sc {
                Some(s) => b.add_assign(&mut c2, s)?,
                None => b.add_assign(&mut c2, &bn1.x)?,
            }
            h = c2;
            saves.push(BlockSave { bn1, bn2 });
        }
        let (n, c, _, _) = h.nchw();
        let mut pooled = b.empty(&[n, c])?;
        b.global_avg_pool(&h, &mut pooled)?;
        let mut logits = b.empty(&[n, self.cfg.num_classes])?;
        b.linear_forward(&pooled, &self.lin_w, &self.lin_b, &mut logits)?;
        Ok((
            logits,
            TrainTrace {
                xn,
                blocks: saves,
                pooled,
                batch: n,
            },
        ))
    }

    /// Gradients of every parameter from `dlogits` (e.g. `softmax_cross_entropy`'s gradient of the
    /// mean loss), through the training-mode graph of `trace`.
    pub fn backward_train(&self, trace: &TrainTrace, dlogits: &Tensor) -> Result<Grads> {
        let b = &self.backend;
        let n = trace.batch;
        ensure_shape!(
            dlogits.shape() == [n, self.cfg.num_classes],
            "backward_train",
            "dlogits {:?}, expected [{n}, {}]",
            dlogits.shape(),
            self.cfg.num_classes
        );
        let mut slots: Vec<Option<Tensor>> = (0..self.params.len()).map(|_| None).collect();
        let slot = |r: ParamRef| {
            self.params
                .iter()
                .position(|(_, p)| *p == r)
                .expect("parameter listed")
        };
        let wgrad = |i: usize, x: &Tensor, dy: &Tensor| -> Result<Tensor> {
            let p = self.convs[i].params.with_batch(n);
            let mut dw = b.empty(&p.weight_shape())?;
            b.conv2d_weight_grad(&p, x, dy, &mut dw)?;
            Ok(dw)
        };
        // The weight gradient of a conv whose input is relu(bn(x)), BN `j` as saved in `s`.
        let wgrad_bn = |i: usize, j: usize, s: &BnSave, dy: &Tensor| -> Result<Tensor> {
            let p = self.convs[i].params.with_batch(n);
            let mut dw = b.empty(&p.weight_shape())?;
            b.conv2d_weight_grad_bn(&p, &s.x, s.layer(&self.bns[j]), dy, &mut dw)?;
            Ok(dw)
        };
        // Head.
        let mut dw = b.zeros(self.lin_w.shape())?;
        let mut db = b.zeros(self.lin_b.shape())?;
        b.linear_backward_params(&trace.pooled, dlogits, &mut dw, &mut db)?;
        let mut dpooled = b.zeros(trace.pooled.shape())?;
        b.linear_backward_input(dlogits, &self.lin_w, &mut dpooled)?;
        slots[slot(ParamRef::LinearWeight)] = Some(dw);
        slots[slot(ParamRef::LinearBias)] = Some(db);
        let last = self.blocks.last().expect("blocks");
        let out_p = self.convs[last.conv2].params.with_batch(n);
        let mut d = b.empty(&out_p.output_shape())?;
        b.global_avg_pool_backward(&dpooled, &mut d)?;
        // Blocks in reverse; `d` is the gradient at the block output. Each conv's weight gradient
        // (a leaf) runs alongside the input-gradient chain that follows it (`alongside`).
        for (bi, sv) in trace.blocks.iter().enumerate().rev() {
            let blk = self.blocks[bi];
            let (dw2, bn2) = self.alongside(
                || wgrad_bn(blk.conv2, blk.bn2, &sv.bn2, &d),
                || {
                    let da2 = self.conv_bwd(blk.conv2, &d)?;
                    self.bn_train_bwd(blk.bn2, &sv.bn2, &da2)
                },
            );
            let (dc1, dg2, db2) = bn2?;
            slots[slot(ParamRef::Conv(blk.conv2))] = Some(dw2?);
            slots[slot(ParamRef::Gamma(blk.bn2))] = Some(dg2);
            slots[slot(ParamRef::Beta(blk.bn2))] = Some(db2);
            let (dw1, bn1) = self.alongside(
                || wgrad_bn(blk.conv1, blk.bn1, &sv.bn1, &dc1),
                || {
                    let mut d_o = self.conv_bwd(blk.conv1, &dc1)?;
                    // The shortcut's input gradient joins d_o; its weight gradient comes back.
                    let sc = blk
                        .shortcut
                        .map(|si| -> Result<_> {
                            let ds = self.conv_bwd(si, &d)?;
                            b.add_assign(&mut d_o, &ds)?;
                            Ok((si, wgrad_bn(si, blk.bn1, &sv.bn1, &d)?))
                        })
                        .transpose()?;
                    let (mut dh, dg1, db1) = self.bn_train_bwd(blk.bn1, &sv.bn1, &d_o)?;
                    if sc.is_none() {
                        b.add_assign(&mut dh, &d)?;
                    }
                    Ok((dh, dg1, db1, sc))
                },
            );
            let (dh, dg1, db1, sc) = bn1?;
            slots[slot(ParamRef::Conv(blk.conv1))] = Some(dw1?);
            if let Some((si, dws)) = sc {
                slots[slot(ParamRef::Conv(si))] = Some(dws);
            }
            slots[slot(ParamRef::Gamma(blk.bn1))] = Some(dg1);
            slots[slot(ParamRef::Beta(blk.bn1))] = Some(db1);
            d = dh;
        }
        slots[slot(ParamRef::Conv(0))] = Some(wgrad(0, &trace.xn, &d)?);
        Ok(Grads {
            names: self.params.iter().map(|(n, _)| n.clone()).collect(),
            tensors: slots
                .into_iter()
                .map(|t| t.expect("every parameter has a gradient"))
                .collect(),
        })
    }

    /// `a` and `b` at once where the backend `runs_ops_concurrently` (the CPU), else one after
    /// the other. On the CPU each op's tasks then share the thread pool, so a memory-bound chain
    /// (batchnorm backward, residual adds) overlaps a compute-bound weight gradient, and a thread
    /// that one op's last tasks would leave idle takes the other's. Every op's result is
    /// independent of which threads run its tasks, so the gradients are bitwise those of the
    /// sequential order.
    fn alongside<A: Send, B: Send>(
        &self,
        a: impl FnOnce() -> A + Send,
        b: impl FnOnce() -> B + Send,
    ) -> (A, B) {
        if self.backend.runs_ops_concurrently() {
            rayon::join(a, b)
        } else {
            let ra = a();
            (ra, b())
        }
    }

    /// Backward of `bn_train` (BN and its ReLU): `dy` is the gradient of the ReLU's output.
    fn bn_train_bwd(&self, j: usize, s: &BnSave, dy: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let b = &self.backend;
        let c = s.mean.numel();
        let mut dx = b.empty(dy.shape())?;
        let mut dg = b.zeros(&[c])?;
        let mut dbeta = b.zeros(&[c])?;
        let layer = s.layer(&self.bns[j]);
        let grads = BnGrads {
            dx: &mut dx,
            dgamma: &mut dg,
            dbeta: &mut dbeta,
        };
        b.batchnorm_train_backward(&s.x, dy, layer, grads)?;
        Ok((dx, dg, dbeta))
    }

    /// One SGD step on every parameter (PyTorch semantics: weight decay added to the gradient,
    /// momentum buffer, no dampening/Nesterov), then re-applies any pruning masks.
    pub fn sgd_step(
        &mut self,
        grads: &Grads,
        state: &mut SgdState,
        lr: f32,
        momentum: f32,
        weight_decay: f32,
    ) -> Result<()> {
        ensure_shape!(
            grads.len() == self.params.len(),
            "sgd_step",
            "{} gradients for {} parameters",
            grads.len(),
            self.params.len()
        );
        let b = self.backend.clone();
        let sgd = Sgd::new(lr, momentum, weight_decay);
        if state.bufs.len() != self.params.len() {
            state.bufs = (0..self.params.len()).map(|_| None).collect();
        }
        for i in 0..self.params.len() {
            let (name, r) = (&self.params[i].0, self.params[i].1);
            ensure_shape!(
                grads.names[i] == *name,
                "sgd_step",
                "gradient {} where {} was expected",
                grads.names[i],
                name
            );
            if state.bufs[i].is_none() {
                state.bufs[i] = Some(b.zeros(self.param(r).shape())?);
            }
            let buf = state.bufs[i].as_mut().expect("allocated");
            b.sgd_step(self.param_mut(r), &grads.tensors[i], buf, sgd)?;
        }
        self.invalidate();
        self.apply_masks()
    }
}

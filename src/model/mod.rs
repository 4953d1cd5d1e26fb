//! PreActResNet18 (BackdoorBench definition, spec section 1) on any `Backend`.
//!
//! Parameters live on the backend. Convolutions are numbered in forward-execution order (0 = stem;
//! inside a downsampling block the shortcut runs before conv1), 20 in all; `ConvInfo` carries the
//! state_dict name, the conv geometry and the BN that pruning zeroes with it.
//! - `forward.rs`: eval mode. Normalisation and every BN+ReLU are `channel_affine` with scale/shift
//!   precomputed from running statistics (cached, invalidated by anything that changes BN state).
//!   `forward_taps` returns raw conv outputs; `forward_trace` runs the prefix up to one conv and keeps
//!   the post-ReLU activations its input-gradient backward (`input_grad`) needs.
//! - `train.rs`: batch-statistics forward, full backward with weight gradients, SGD with momentum,
//!   masks that keep pruned filters (and their BN gammas) at zero.
//!
//! Pruned BN (`ConvInfo::pruned_bn`, spec section 4: "the BN that consumes it in the same block"):
//! - a block's conv1 feeds only that block's bn2: `pruned_bn = layerL.B.bn2`;
//! - conv2, the projection shortcut and the stem feed the residual stream; the next BN (the next
//!   block's bn1) consumes the *sum* of several convs' channels and the identity path, so its gamma
//!   does not belong to one feature map: zeroing it would prune every contributor of that residual
//!   channel. For these convs `pruned_bn = None`: only the filter is zeroed, which already removes the
//!   feature map exactly (its contribution to the sum is 0). The reason the published FMP code zeroes
//!   gamma at all is to make pruning stick through fine-tuning: with filter and gamma both zero, the
//!   filter's and gamma's gradients are zero, so SGD without weight decay never revives the channel.
//!   For conv2/shortcut/stem only `--mask` (`set_masks`) gives that guarantee.
mod forward;
mod train;

use std::sync::{Arc, RwLock};

pub use forward::{Cotangent, Trace};
pub use train::{Grads, SgdState, TrainTrace};

use crate::backend::{Backend, BnLayer, ConvParams};
use crate::data::DatasetKind;
use crate::error::{Error, Result};
use crate::rng::{Rng, Stream};
use crate::tensor::Tensor;
use crate::weights::{self, StateDict, BN_EPS};

/// BatchNorm momentum for running statistics (PyTorch default).
pub const BN_MOMENTUM: f32 = 0.1;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Base width W: layer widths W, 2W, 4W, 8W (64 in the paper).
    pub width: usize,
    pub num_classes: usize,
    /// Input normalisation (x - mean) / std, the model's first step.
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl ModelConfig {
    pub fn for_dataset(kind: DatasetKind, width: usize) -> Self {
        let (mean, std) = kind.mean_std();
        ModelConfig {
            width,
            num_classes: kind.num_classes(),
            mean,
            std,
        }
    }
    pub fn cifar10(width: usize) -> Self {
        Self::for_dataset(DatasetKind::Cifar10, width)
    }
    pub fn cifar100(width: usize) -> Self {
        Self::for_dataset(DatasetKind::Cifar100, width)
    }
    pub fn gtsrb(width: usize) -> Self {
        Self::for_dataset(DatasetKind::Gtsrb, width)
    }
    pub fn with_classes(mut self, k: usize) -> Self {
        self.num_classes = k;
        self
    }
}

#[derive(Clone, Debug)]
pub struct ConvInfo {
    /// Forward-execution order, 0..20.
    pub index: usize,
    /// state_dict prefix: "conv1", "layer1.0.conv1", "layer2.0.shortcut.0", ...
    pub name: String,
    /// Geometry at batch 1 (use `.with_batch(n)`).
    pub params: ConvParams,
    /// BN prefix whose gamma is zeroed with this conv's channel (see module docs).
    pub pruned_bn: Option<String>,
}

/// Where a conv sits in the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Stem,
    Shortcut(usize),
    Conv1(usize),
    Conv2(usize),
}

pub(crate) struct Bn {
    pub name: String,
    pub gamma: Tensor,
    pub beta: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: i64,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockDef {
    pub bn1: usize,
    pub conv1: usize,
    pub bn2: usize,
    pub conv2: usize,
    pub shortcut: Option<usize>,
}

/// A trainable tensor of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRef {
    Conv(usize),
    Gamma(usize),
    Beta(usize),
    LinearWeight,
    LinearBias,
}

/// Eval-mode per-channel map of one BN: bn(x) = x * scale + shift, and the zero means and unit
/// inverse deviations that let the convolutions that read relu(bn(x)) (`conv2d_forward_bn`, whose
/// map is x * (gamma * invstd) + (beta - mean * gamma * invstd)) apply it as it is: with
/// gamma = scale, beta = shift, mean = 0 and invstd = 1 those coefficients are scale and shift
/// exactly, so the fused input is bit for bit what `channel_affine` writes.
pub(crate) struct EvalBn {
    pub scale: Tensor,
    pub shift: Tensor,
    zero: Tensor,
    one: Tensor,
}

impl EvalBn {
    /// relu(bn(x)) as the fused convolution takes it.
    pub fn layer(&self) -> BnLayer<'_, &Tensor> {
        BnLayer::new(&self.scale, &self.shift, &self.zero, &self.one, true)
    }
}

/// Eval-mode maps of every BN (index = BN index).
pub(crate) type EvalAffine = Vec<EvalBn>;

pub struct PreActResNet18 {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) cfg: ModelConfig,
    pub(crate) convs: Vec<ConvInfo>,
    pub(crate) roles: Vec<Role>,
    pub(crate) conv_w: Vec<Tensor>,
    pub(crate) bns: Vec<Bn>,
    pub(crate) blocks: Vec<BlockDef>,
    pub(crate) lin_w: Tensor,
    pub(crate) lin_b: Tensor,
    pub(crate) norm_scale: Tensor,
    pub(crate) norm_shift: Tensor,
    /// Parameters in PyTorch `named_parameters()` order.
    pub(crate) params: Vec<(String, ParamRef)>,
    /// Per-conv weight-shaped 0/1 masks and per-BN gamma masks (None = unmasked).
    pub(crate) conv_masks: Vec<Option<Tensor>>,
    pub(crate) gamma_masks: Vec<Option<Tensor>>,
    pub(crate) eval_cache: RwLock<Option<Arc<EvalAffine>>>,
}

/// Architecture skeleton: conv infos (execution order), roles, BN names, blocks.
fn architecture(w: usize) -> (Vec<ConvInfo>, Vec<Role>, Vec<String>, Vec<BlockDef>) {
    let mut convs = Vec::new();
    let mut roles = Vec::new();
    let mut bns = Vec::new();
    let mut blocks = Vec::new();
    let mut push =
        |convs: &mut Vec<ConvInfo>, name: String, p: ConvParams, bn: Option<String>, role: Role| {
            let index = convs.len();
            convs.push(ConvInfo {
                index,
                name,
                params: p,
                pruned_bn: bn,
            });
            roles.push(role);
            index
        };
    push(
        &mut convs,
        "conv1".into(),
        ConvParams::new(1, 3, 32, 32, w, 3, 1, 1),
        None,
        Role::Stem,
    );
    let (mut cin, mut hw) = (w, 32);
    for (l, cout) in [(1usize, w), (2, 2 * w), (3, 4 * w), (4, 8 * w)] {
        for b in 0..2 {
            let p = format!("layer{l}.{b}");
            let bi = blocks.len();
            let (ci, stride) = if b == 0 && l > 1 {
                (cin, 2)
            } else if b == 0 {
                (cin, 1)
            } else {
                (cout, 1)
            };
            let bn1 = bns.len();
            bns.push(format!("{p}.bn1"));
            let bn2 = bns.len();
            bns.push(format!("{p}.bn2"));
            let shortcut = (stride == 2).then(|| {
                let sp = ConvParams::new(1, ci, hw, hw, cout, 1, 2, 0);
                push(
                    &mut convs,
                    format!("{p}.shortcut.0"),
                    sp,
                    None,
                    Role::Shortcut(bi),
                )
            });
            let p1 = ConvParams::new(1, ci, hw, hw, cout, 3, stride, 1);
            let conv1 = push(
                &mut convs,
                format!("{p}.conv1"),
                p1,
                Some(format!("{p}.bn2")),
                Role::Conv1(bi),
            );
            hw = p1.h_out as usize;
            let p2 = ConvParams::new(1, cout, hw, hw, cout, 3, 1, 1);
            let conv2 = push(&mut convs, format!("{p}.conv2"), p2, None, Role::Conv2(bi));
            blocks.push(BlockDef {
                bn1,
                conv1,
                bn2,
                conv2,
                shortcut,
            });
        }
        cin = cout;
    }
    (convs, roles, bns, blocks)
}

fn param_list(convs: &[ConvInfo], blocks: &[BlockDef]) -> Vec<(String, ParamRef)> {
    let mut out = vec![("conv1.weight".to_string(), ParamRef::Conv(0))];
    for (bi, b) in blocks.iter().enumerate() {
        let p = block_prefix(bi);
        out.push((format!("{p}.bn1.weight"), ParamRef::Gamma(b.bn1)));
        out.push((format!("{p}.bn1.bias"), ParamRef::Beta(b.bn1)));
        out.push((
            format!("{}.weight", convs[b.conv1].name),
            ParamRef::Conv(b.conv1),
        ));
        out.push((format!("{p}.bn2.weight"), ParamRef::Gamma(b.bn2)));
        out.push((format!("{p}.bn2.bias"), ParamRef::Beta(b.bn2)));
        out.push((
            format!("{}.weight", convs[b.conv2].name),
            ParamRef::Conv(b.conv2),
        ));
        if let Some(s) = b.shortcut {
            out.push((format!("{}.weight", convs[s].name), ParamRef::Conv(s)));
        }
    }
    out.push(("linear.weight".into(), ParamRef::LinearWeight));
    out.push(("linear.bias".into(), ParamRef::LinearBias));
    out
}

fn block_prefix(bi: usize) -> String {
    format!("layer{}.{}", bi / 2 + 1, bi % 2)
}

impl PreActResNet18 {
    /// Load from a state_dict (PyTorch names, see `weights`). `cfg.width` and `cfg.num_classes` must
    /// match the shapes.
    pub fn from_state_dict(
        backend: Arc<dyn Backend>,
        sd: &StateDict,
        cfg: ModelConfig,
    ) -> Result<Self> {
        let mut sd = sd.clone();
        let src = std::path::PathBuf::from("(state_dict)");
        let (w, k) = weights::infer_dims(&sd, &src)?;
        if w != cfg.width || k != cfg.num_classes {
            return Err(Error::InvalidArgument(format!(
                "state_dict has base width {w} and {k} classes, the model config asks for width {} and {} classes",
                cfg.width, cfg.num_classes
            )));
        }
        weights::validate(&mut sd, &src, w, k)?;
        let (convs, roles, bn_names, blocks) = architecture(w);
        let up = |name: &str| -> Result<Tensor> {
            let t = sd.get(name).expect("validated");
            backend.from_host(&t.data, &t.shape)
        };
        let conv_w = convs
            .iter()
            .map(|c| up(&format!("{}.weight", c.name)))
            .collect::<Result<Vec<_>>>()?;
        let mut bns = Vec::with_capacity(bn_names.len());
        for n in bn_names {
            bns.push(Bn {
                gamma: up(&format!("{n}.weight"))?,
                beta: up(&format!("{n}.bias"))?,
                running_mean: up(&format!("{n}.running_mean"))?,
                running_var: up(&format!("{n}.running_var"))?,
                num_batches_tracked: sd
                    .get(&format!("{n}.num_batches_tracked"))
                    .map_or(0, |t| t.data[0] as i64),
                name: n,
            });
        }
        let scale: Vec<f32> = cfg.std.iter().map(|s| 1.0 / s).collect();
        let shift: Vec<f32> = cfg.mean.iter().zip(&cfg.std).map(|(m, s)| -m / s).collect();
        if cfg.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(Error::InvalidArgument(format!(
                "normalisation std must be positive, got {:?}",
                cfg.std
            )));
        }
        let params = param_list(&convs, &blocks);
        Ok(PreActResNet18 {
            lin_w: up("linear.weight")?,
            lin_b: up("linear.bias")?,
            norm_scale: backend.from_host(&scale, &[3])?,
            norm_shift: backend.from_host(&shift, &[3])?,
            conv_masks: (0..convs.len()).map(|_| None).collect(),
            gamma_masks: (0..bns.len()).map(|_| None).collect(),
            eval_cache: RwLock::new(None),
            backend,
            cfg,
            convs,
            roles,
            conv_w,
            bns,
            blocks,
            params,
        })
    }

    /// Random initialisation for training from scratch: convs Kaiming-normal (fan_out, ReLU gain,
    /// as torchvision's ResNet), linear PyTorch default U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight
    /// and bias, BN gamma 1, beta 0, running mean 0, var 1.
    pub fn new_random(backend: Arc<dyn Backend>, cfg: ModelConfig, seed: u64) -> Result<Self> {
        let mut rng = Rng::stream(Stream::Init, seed);
        let mut sd = StateDict::new();
        for (name, shape) in weights::expected_keys(cfg.width, cfg.num_classes) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("num_batches_tracked") {
                sd.insert_i64(name, shape, vec![0.0]);
                continue;
            } else if shape.len() == 4 {
                let std = (2.0 / (shape[0] * shape[2] * shape[3]) as f32).sqrt();
                (0..n).map(|_| rng.normal() * std).collect()
            } else if name.starts_with("linear.") {
                let b = 1.0 / ((8 * cfg.width) as f32).sqrt();
                (0..n).map(|_| rng.range_f64(-b, b)).collect()
            } else if name.ends_with(".weight") || name.ends_with("running_var") {
                vec![1.0; n]
            } else {
                vec![0.0; n]
            };
            sd.insert(name, shape, data);
        }
        Self::from_state_dict(backend, &sd, cfg)
    }

    /// Load a safetensors file; width and class count come from the file, mean/std from `kind`.
    pub fn load(
        backend: Arc<dyn Backend>,
        path: &std::path::Path,
        kind: DatasetKind,
    ) -> Result<(Self, weights::LoadInfo)> {
        let (sd, info) = weights::load(path)?;
        let cfg = ModelConfig::for_dataset(kind, info.width).with_classes(info.num_classes);
        Ok((Self::from_state_dict(backend, &sd, cfg)?, info))
    }

    /// All tensors by PyTorch name (host copies).
    pub fn to_state_dict(&self) -> Result<StateDict> {
        let b = &self.backend;
        let mut sd = StateDict::new();
        let mut put = |name: String, t: &Tensor| -> Result<()> {
            sd.insert(name, t.shape().to_vec(), b.to_host(t)?);
            Ok(())
        };
        for (c, w) in self.convs.iter().zip(&self.conv_w) {
            put(format!("{}.weight", c.name), w)?;
        }
        for bn in &self.bns {
            put(format!("{}.weight", bn.name), &bn.gamma)?;
            put(format!("{}.bias", bn.name), &bn.beta)?;
            put(format!("{}.running_mean", bn.name), &bn.running_mean)?;
            put(format!("{}.running_var", bn.name), &bn.running_var)?;
        }
        put("linear.weight".into(), &self.lin_w)?;
        put("linear.bias".into(), &self.lin_b)?;
        for bn in &self.bns {
            sd.insert_i64(
                format!("{}.num_batches_tracked", bn.name),
                vec![],
                vec![bn.num_batches_tracked as f32],
            );
        }
        Ok(sd)
    }

    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        weights::save(path, &self.to_state_dict()?)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }
    /// The 20 convolutions in forward-execution order.
    pub fn convs(&self) -> &[ConvInfo] {
        &self.convs
    }
    pub fn conv_index(&self, name: &str) -> Option<usize> {
        let name = name.strip_suffix(".weight").unwrap_or(name);
        self.convs.iter().position(|c| c.name == name)
    }
    pub fn conv_weight(&self, conv: usize) -> &Tensor {
        &self.conv_w[conv]
    }
    /// Parameter names in PyTorch `named_parameters()` order.
    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|(n, _)| n.as_str()).collect()
    }
    pub fn num_params(&self) -> usize {
        self.params
            .iter()
            .map(|(_, r)| self.param(*r).numel())
            .sum()
    }
    fn bn_index(&self, name: &str) -> Option<usize> {
        self.bns.iter().position(|b| b.name == name)
    }

    pub(crate) fn param(&self, r: ParamRef) -> &Tensor {
        match r {
            ParamRef::Conv(i) => &self.conv_w[i],
            ParamRef::Gamma(j) => &self.bns[j].gamma,
            ParamRef::Beta(j) => &self.bns[j].beta,
            ParamRef::LinearWeight => &self.lin_w,
            ParamRef::LinearBias => &self.lin_b,
        }
    }
    pub(crate) fn param_mut(&mut self, r: ParamRef) -> &mut Tensor {
        match r {
            ParamRef::Conv(i) => &mut self.conv_w[i],
            ParamRef::Gamma(j) => &mut self.bns[j].gamma,
            ParamRef::Beta(j) => &mut self.bns[j].beta,
            ParamRef::LinearWeight => &mut self.lin_w,
            ParamRef::LinearBias => &mut self.lin_b,
        }
    }

    /// Drop the cached eval-mode BN affine maps (after any change to BN parameters or statistics).
    pub(crate) fn invalidate(&self) {
        *self.eval_cache.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Eval-mode scale = gamma / sqrt(var + eps), shift = beta - mean * scale for every BN (cached).
    pub(crate) fn eval_affine(&self) -> Result<Arc<EvalAffine>> {
        if let Some(a) = self
            .eval_cache
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(a.clone());
        }
        let b = &self.backend;
        let mut out = Vec::with_capacity(self.bns.len());
        for bn in &self.bns {
            let g = b.to_host(&bn.gamma)?;
            let be = b.to_host(&bn.beta)?;
            let m = b.to_host(&bn.running_mean)?;
            let v = b.to_host(&bn.running_var)?;
            let scale: Vec<f32> = g
                .iter()
                .zip(&v)
                .map(|(g, v)| (*g as f64 / (*v as f64 + BN_EPS as f64).sqrt()) as f32)
                .collect();
            let shift: Vec<f32> = be
                .iter()
                .zip(&m)
                .zip(&scale)
                .map(|((be, m), s)| (*be as f64 - *m as f64 * *s as f64) as f32)
                .collect();
            let c = scale.len();
            out.push(EvalBn {
                scale: b.from_host(&scale, &[c])?,
                shift: b.from_host(&shift, &[c])?,
                zero: b.zeros(&[c])?,
                one: b.from_host(&vec![1.0; c], &[c])?,
            });
        }
        let a = Arc::new(out);
        *self.eval_cache.write().unwrap_or_else(|e| e.into_inner()) = Some(a.clone());
        Ok(a)
    }

    /// Conv `conv` and its output channel count, checking that `channel` is one of its channels
    /// (`zero_channel`, `set_masks`).
    fn conv_channel(&self, conv: usize, channel: usize) -> Result<(&ConvInfo, usize)> {
        let info = self.convs.get(conv).ok_or_else(|| {
            Error::InvalidArgument(format!("conv index {conv} out of range 0..20"))
        })?;
        let cout = info.params.c_out as usize;
        if channel >= cout {
            return Err(Error::InvalidArgument(format!(
                "channel {channel} out of range 0..{cout} of {}",
                info.name
            )));
        }
        Ok((info, cout))
    }

    /// Zero output filter `channel` of conv `conv` and the gamma of its `pruned_bn` (spec section 4;
    /// beta is kept). No mask: fine-tuning may change them again unless `set_masks` is used.
    pub fn zero_channel(&mut self, conv: usize, channel: usize) -> Result<()> {
        let (info, cout) = self.conv_channel(conv, channel)?;
        let bn = info.pruned_bn.clone();
        let b = self.backend.clone();
        let w = &mut self.conv_w[conv];
        let mut host = b.to_host(w)?;
        let per = host.len() / cout;
        host[channel * per..(channel + 1) * per]
            .iter_mut()
            .for_each(|v| *v = 0.0);
        let shape = w.shape().to_vec();
        *w = b.from_host(&host, &shape)?;
        if let Some(bn) = bn {
            let j = self
                .bn_index(&bn)
                .expect("pruned_bn names a BN of the model");
            let g = &mut self.bns[j].gamma;
            let mut host = b.to_host(g)?;
            host[channel] = 0.0;
            *g = b.from_host(&host, &[host.len()])?;
            self.invalidate();
        }
        Ok(())
    }

    /// Keep the given (conv, channel) filters and their `pruned_bn` gammas at zero: applies the
    /// zeroing now and after every `sgd_step`. Replaces any previous masks.
    pub fn set_masks(&mut self, pruned: &[(usize, usize)]) -> Result<()> {
        let b = self.backend.clone();
        let mut conv_m: Vec<Option<Vec<f32>>> = vec![None; self.convs.len()];
        let mut gamma_m: Vec<Option<Vec<f32>>> = vec![None; self.bns.len()];
        for &(conv, ch) in pruned {
            let (info, cout) = self.conv_channel(conv, ch)?;
            let numel = self.conv_w[conv].numel();
            let per = numel / cout;
            let m = conv_m[conv].get_or_insert_with(|| vec![1.0; numel]);
            m[ch * per..(ch + 1) * per]
                .iter_mut()
                .for_each(|v| *v = 0.0);
            if let Some(bn) = &info.pruned_bn {
                let j = self.bn_index(bn).expect("pruned_bn names a BN");
                gamma_m[j].get_or_insert_with(|| vec![1.0; cout])[ch] = 0.0;
            }
        }
        self.conv_masks = conv_m
            .into_iter()
            .zip(&self.conv_w)
            .map(|(m, w)| m.map(|m| b.from_host(&m, w.shape())).transpose())
            .collect::<Result<_>>()?;
        self.gamma_masks = gamma_m
            .into_iter()
            .map(|m| m.map(|m| b.from_host(&m, &[m.len()])).transpose())
            .collect::<Result<_>>()?;
        self.apply_masks()
    }

    pub fn clear_masks(&mut self) {
        self.conv_masks.iter_mut().for_each(|m| *m = None);
        self.gamma_masks.iter_mut().for_each(|m| *m = None);
    }

    pub fn has_masks(&self) -> bool {
        self.conv_masks.iter().any(Option::is_some) || self.gamma_masks.iter().any(Option::is_some)
    }

    pub(crate) fn apply_masks(&mut self) -> Result<()> {
        let b = self.backend.clone();
        let mut touched_bn = false;
        for (w, m) in self.conv_w.iter_mut().zip(&self.conv_masks) {
            if let Some(m) = m {
                b.mul_assign(w, m)?;
            }
        }
        for (bn, m) in self.bns.iter_mut().zip(&self.gamma_masks) {
            if let Some(m) = m {
                b.mul_assign(&mut bn.gamma, m)?;
                touched_bn = true;
            }
        }
        if touched_bn {
            self.invalidate();
        }
        Ok(())
    }
}

/// Row-wise argmax of host logits [n, k] (first maximum wins).
pub fn argmax_rows(logits: &[f32], k: usize) -> Vec<u32> {
    logits
        .chunks_exact(k)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

/// Eval-mode predictions (argmax of the logits) for every image of `ds`, `batch` images at a time.
pub fn predict(
    model: &PreActResNet18,
    ds: &crate::data::Dataset,
    batch: usize,
) -> Result<Vec<u32>> {
    let b = model.backend();
    let batch = batch.max(1);
    let mut preds = Vec::with_capacity(ds.len());
    let mut start = 0;
    while start < ds.len() {
        let n = batch.min(ds.len() - start);
        let x = b.from_host(&ds.range_f32(start, n), &[n, 3, 32, 32])?;
        let logits = b.to_host(&model.forward(&x)?)?;
        preds.extend(argmax_rows(&logits, model.config().num_classes));
        start += n;
    }
    Ok(preds)
}

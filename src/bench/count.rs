//! Counted FLOPs and compulsory bytes, per backend op and per whole PreActResNet18 pass / FRG scan.
//!
//! Conventions (so that numbers from different runs and devices compare):
//! - FLOPs: every arithmetic operation counts one, and so do max/compare/select; a multiply-add counts
//!   two. Convolutions use `ConvParams::flops` (2 x MACs) for the forward, input- and weight-gradient.
//! - Bytes: the minimal compulsory traffic of the op in f32: each input read once, each output written
//!   once (in-place ops read and write their operand). Saved tensors with a batch B dividing the
//!   gradient batch N (see `backend` module docs) are read at their own batch B.
//! - The model passes are counted from a DAG description of PreActResNet18 (spec section 1), so a
//!   partial pass (a prefix forward, a truncated input-gradient backward) counts only the ops it needs:
//!   a conv's ancestors.
use std::ops::{Add, AddAssign, Mul};

use crate::backend::ConvParams;

const F32: u64 = 4;

/// FLOPs and bytes of some piece of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OpCost {
    pub flops: u64,
    pub bytes: u64,
}

impl OpCost {
    pub fn new(flops: u64, bytes: u64) -> Self {
        OpCost { flops, bytes }
    }
    /// FLOPs per byte.
    pub fn intensity(&self) -> f64 {
        if self.bytes == 0 {
            f64::INFINITY
        } else {
            self.flops as f64 / self.bytes as f64
        }
    }
}

impl Add for OpCost {
    type Output = OpCost;
    fn add(self, o: OpCost) -> OpCost {
        OpCost::new(self.flops + o.flops, self.bytes + o.bytes)
    }
}
impl AddAssign for OpCost {
    fn add_assign(&mut self, o: OpCost) {
        *self = *self + o;
    }
}
impl Mul<u64> for OpCost {
    type Output = OpCost;
    fn mul(self, k: u64) -> OpCost {
        OpCost::new(self.flops * k, self.bytes * k)
    }
}
impl std::iter::Sum for OpCost {
    fn sum<I: Iterator<Item = OpCost>>(it: I) -> OpCost {
        it.fold(OpCost::default(), |a, b| a + b)
    }
}

fn numel(s: [usize; 4]) -> u64 {
    s.iter().map(|&d| d as u64).product()
}

// ---- convolutions -------------------------------------------------------------------------------

pub fn conv_forward(p: &ConvParams) -> OpCost {
    OpCost::new(
        p.flops(),
        F32 * (numel(p.input_shape()) + numel(p.weight_shape()) + numel(p.output_shape())),
    )
}

pub fn conv_input_grad(p: &ConvParams) -> OpCost {
    conv_forward(p)
}

pub fn conv_weight_grad(p: &ConvParams) -> OpCost {
    conv_forward(p)
}

/// `conv2d_input_grad_onehot` with `p.n` items spread over `filters` distinct filters: the MACs of
/// one output channel per item; reads the [N,1,h,w] seed and the filters used, writes dx.
pub fn conv_input_grad_onehot(p: &ConvParams, filters: usize) -> OpCost {
    let (n, ci, k) = (p.n as u64, p.c_in as u64, p.kernel as u64);
    let out_plane = (p.h_out * p.w_out) as u64;
    let flops = 2 * n * out_plane * ci * k * k;
    let bytes = F32
        * (n * out_plane
            + filters.min(p.c_out as usize) as u64 * ci * k * k
            + numel(p.input_shape()));
    OpCost::new(flops, bytes)
}

// ---- elementwise and per-channel ops ------------------------------------------------------------

/// `channel_affine` on `numel` elements with `c` channels: x*scale+shift (2), +1 for the ReLU.
pub fn channel_affine(numel: u64, c: u64, relu: bool) -> OpCost {
    OpCost::new(numel * if relu { 3 } else { 2 }, F32 * (2 * numel + 2 * c))
}

/// `channel_affine_backward` on `numel` gradient elements; `saved_numel` is the saved output read
/// for the ReLU mask (0 when unmasked).
pub fn channel_affine_backward(numel: u64, c: u64, saved_numel: u64) -> OpCost {
    let masked = saved_numel > 0;
    OpCost::new(
        numel * if masked { 2 } else { 1 },
        F32 * (2 * numel + c + saved_numel),
    )
}

/// Training-mode batchnorm forward: mean (1), variance (3), normalise+affine (4) per element.
/// A fused ReLU adds its max per element. Without `write`, the statistics alone (one read of x).
pub fn batchnorm_train_forward(numel: u64, c: u64, relu: bool, write: bool) -> OpCost {
    if !write {
        return OpCost::new(4 * numel, F32 * (numel + 8 * c));
    }
    OpCost::new((8 + relu as u64) * numel, F32 * (2 * numel + 8 * c))
}

/// What a convolution reading relu(bn(x)) (`conv2d_*_bn`) adds to its own cost: the map (x * a +
/// b, max: 3) on every input element, and the batchnorm's 4 [c_in] vectors.
pub fn bn_input(p: &ConvParams) -> OpCost {
    OpCost::new(3 * numel(p.input_shape()), F32 * 4 * p.c_in as u64)
}

/// Training-mode batchnorm backward: the two channel sums (4) and dx (6) per element; a fused
/// ReLU recomputes bn(x) and compares (3), in both passes (6), reading beta too.
pub fn batchnorm_train_backward(numel: u64, c: u64, relu: bool) -> OpCost {
    let (flops, stats) = if relu { (16, 6) } else { (10, 5) };
    OpCost::new(flops * numel, F32 * (3 * numel + stats * c))
}

pub fn relu(numel: u64) -> OpCost {
    OpCost::new(numel, F32 * 2 * numel)
}

/// dx = dy * (y_saved > 0) with a saved tensor of `saved_numel` elements.
pub fn relu_backward(numel: u64, saved_numel: u64) -> OpCost {
    OpCost::new(numel, F32 * (2 * numel + saved_numel))
}

/// y = a + b.
pub fn add(numel: u64) -> OpCost {
    OpCost::new(numel, F32 * 3 * numel)
}

/// y += x or y *= m: reads both, writes y.
pub fn binary_in_place(numel: u64) -> OpCost {
    OpCost::new(numel, F32 * 3 * numel)
}

pub fn global_avg_pool(n: u64, c: u64, hw: u64) -> OpCost {
    OpCost::new(n * c * hw, F32 * (n * c * hw + n * c))
}

pub fn global_avg_pool_backward(n: u64, c: u64, hw: u64) -> OpCost {
    OpCost::new(n * c * hw, F32 * (n * c * hw + n * c))
}

pub fn linear_forward(n: u64, i: u64, o: u64) -> OpCost {
    OpCost::new(2 * n * i * o + n * o, F32 * (n * i + o * i + o + n * o))
}

pub fn linear_backward_input(n: u64, i: u64, o: u64) -> OpCost {
    OpCost::new(2 * n * i * o, F32 * (n * o + o * i + n * i))
}

pub fn linear_backward_params(n: u64, i: u64, o: u64) -> OpCost {
    OpCost::new(2 * n * i * o + n * o, F32 * (n * i + n * o + o * i + o))
}

/// Per row of K logits: max, exp, sum, log, the gradient: about 6 per logit. Reads logits and
/// labels (u32), writes loss and dlogits.
pub fn softmax_cross_entropy(n: u64, k: u64) -> OpCost {
    OpCost::new(6 * n * k, F32 * (2 * n * k + 2 * n))
}

/// loss[c] = mean (a-b)^2: sub, mul, add per element.
pub fn channel_mse(numel: u64, c: u64) -> OpCost {
    OpCost::new(3 * numel, F32 * (2 * numel + c))
}

/// `frg_seed` for K channels of B samples at an h x w conv output: reads those channels of a_x and
/// a_x0, writes the [K*B,1,h,w] seed (sub, mul per element).
pub fn frg_seed(k: u64, b: u64, hw: u64) -> OpCost {
    OpCost::new(2 * k * b * hw, F32 * 3 * k * b * hw)
}

/// `sign_step` on `numel` gradient elements with x0 of `x0_numel`: sign, mul, add, clamp (2).
pub fn sign_step(numel: u64, x0_numel: u64) -> OpCost {
    OpCost::new(5 * numel, F32 * (2 * numel + x0_numel))
}

/// PyTorch SGD with momentum and weight decay: 6 per element; reads param, grad, buf, writes param, buf.
pub fn sgd_step(numel: u64) -> OpCost {
    OpCost::new(6 * numel, F32 * 5 * numel)
}

// ---- the model as a DAG -------------------------------------------------------------------------

/// One node of the PreActResNet18 eval graph. Shapes are per batch item.
#[derive(Clone, Debug)]
pub enum Node {
    /// Pixel input [3,32,32].
    Input,
    /// Per-channel affine: the input normalisation (relu false) or an eval BN followed by ReLU.
    Affine {
        src: usize,
        c: usize,
        hw: usize,
        relu: bool,
        bn: Option<String>,
    },
    /// A conv; `index` is its position in forward-execution order (0..20).
    Conv {
        src: usize,
        index: usize,
        name: String,
        params: ConvParams,
    },
    /// Residual add.
    Add {
        a: usize,
        b: usize,
        c: usize,
        hw: usize,
    },
    /// Global average pool [C,h,w] -> [C].
    Pool { src: usize, c: usize, hw: usize },
    /// Linear head.
    Linear { src: usize, i: usize, o: usize },
}

impl Node {
    fn srcs(&self) -> Vec<usize> {
        match self {
            Node::Input => vec![],
            Node::Affine { src, .. }
            | Node::Conv { src, .. }
            | Node::Pool { src, .. }
            | Node::Linear { src, .. } => vec![*src],
            Node::Add { a, b, .. } => vec![*a, *b],
        }
    }
    /// Output elements per batch item.
    fn item_numel(&self) -> u64 {
        match self {
            Node::Input => 3 * 32 * 32,
            Node::Affine { c, hw, .. } | Node::Add { c, hw, .. } => (c * hw) as u64,
            Node::Conv { params, .. } => (params.c_out * params.h_out * params.w_out) as u64,
            Node::Pool { c, .. } => *c as u64,
            Node::Linear { o, .. } => *o as u64,
        }
    }
}

/// PreActResNet18 (spec section 1) as a DAG in execution order, for counting.
#[derive(Clone, Debug)]
pub struct Arch {
    pub width: usize,
    pub num_classes: usize,
    pub nodes: Vec<Node>,
}

impl Arch {
    /// The BackdoorBench PreActResNet18 on 32x32 inputs; `width` is the stem width (64).
    pub fn preact_resnet18(width: usize, num_classes: usize) -> Arch {
        let mut nodes = vec![Node::Input];
        let push = |nodes: &mut Vec<Node>, n: Node| {
            nodes.push(n);
            nodes.len() - 1
        };
        let norm = push(
            &mut nodes,
            Node::Affine {
                src: 0,
                c: 3,
                hw: 1024,
                relu: false,
                bn: None,
            },
        );
        let mut conv_index = 0;
        let mut conv = |nodes: &mut Vec<Node>, src: usize, name: String, p: ConvParams| {
            let i = conv_index;
            conv_index += 1;
            push(
                nodes,
                Node::Conv {
                    src,
                    index: i,
                    name,
                    params: p,
                },
            )
        };
        let mut x = conv(
            &mut nodes,
            norm,
            "conv1".into(),
            ConvParams::new(1, 3, 32, 32, width, 3, 1, 1),
        );
        let (mut c, mut h) = (width, 32usize);
        for layer in 1..=4 {
            let out_c = width << (layer - 1);
            for block in 0..2 {
                let stride = if layer > 1 && block == 0 { 2 } else { 1 };
                let pre = format!("layer{layer}.{block}");
                let o = push(
                    &mut nodes,
                    Node::Affine {
                        src: x,
                        c,
                        hw: h * h,
                        relu: true,
                        bn: Some(format!("{pre}.bn1")),
                    },
                );
                let proj = stride != 1 || c != out_c;
                let s = if proj {
                    conv(
                        &mut nodes,
                        o,
                        format!("{pre}.shortcut.0"),
                        ConvParams::new(1, c, h, h, out_c, 1, stride, 0),
                    )
                } else {
                    x
                };
                let o1 = conv(
                    &mut nodes,
                    o,
                    format!("{pre}.conv1"),
                    ConvParams::new(1, c, h, h, out_c, 3, stride, 1),
                );
                let h2 = h / stride;
                let o2 = push(
                    &mut nodes,
                    Node::Affine {
                        src: o1,
                        c: out_c,
                        hw: h2 * h2,
                        relu: true,
                        bn: Some(format!("{pre}.bn2")),
                    },
                );
                let o3 = conv(
                    &mut nodes,
                    o2,
                    format!("{pre}.conv2"),
                    ConvParams::new(1, out_c, h2, h2, out_c, 3, 1, 1),
                );
                x = push(
                    &mut nodes,
                    Node::Add {
                        a: o3,
                        b: s,
                        c: out_c,
                        hw: h2 * h2,
                    },
                );
                c = out_c;
                h = h2;
            }
        }
        let p = push(
            &mut nodes,
            Node::Pool {
                src: x,
                c,
                hw: h * h,
            },
        );
        push(
            &mut nodes,
            Node::Linear {
                src: p,
                i: c,
                o: num_classes,
            },
        );
        Arch {
            width,
            num_classes,
            nodes,
        }
    }

    /// (name, params at batch 1) of every conv in execution order.
    pub fn convs(&self) -> Vec<(String, ConvParams)> {
        self.nodes
            .iter()
            .filter_map(|n| match n {
                Node::Conv { name, params, .. } => Some((name.clone(), *params)),
                _ => None,
            })
            .collect()
    }

    /// Total number of feature maps (conv output channels); 4,800 at width 64.
    pub fn feature_maps(&self) -> usize {
        self.convs().iter().map(|(_, p)| p.c_out as usize).sum()
    }

    fn conv_node(&self, conv: usize) -> usize {
        self.nodes
            .iter()
            .position(|n| matches!(n, Node::Conv { index, .. } if *index == conv))
            .unwrap_or_else(|| panic!("conv index {conv} out of range"))
    }

    /// Nodes the output of `node` depends on, itself included (a mask over `nodes`).
    fn ancestors(&self, node: usize) -> Vec<bool> {
        let mut mark = vec![false; self.nodes.len()];
        let mut stack = vec![node];
        while let Some(i) = stack.pop() {
            if !mark[i] {
                mark[i] = true;
                stack.extend(self.nodes[i].srcs());
            }
        }
        mark
    }

    /// One node of the eval forward. With `fused`, as a run that saves no trace does it: a BN with
    /// its ReLU is no pass of its own, each conv that reads it maps its input (`bn_input`).
    fn forward_node(&self, i: usize, n: u64, fused: bool) -> OpCost {
        match &self.nodes[i] {
            Node::Input => OpCost::default(),
            Node::Affine { relu: true, .. } if fused => OpCost::default(),
            Node::Affine { c, hw, relu, .. } => {
                channel_affine(n * (*c * *hw) as u64, *c as u64, *relu)
            }
            Node::Conv { params, src, .. } => {
                let p = params.with_batch(n as usize);
                match self.nodes[*src] {
                    Node::Affine { relu: true, .. } if fused => conv_forward(&p) + bn_input(&p),
                    _ => conv_forward(&p),
                }
            }
            Node::Add { c, hw, .. } => add(n * (*c * *hw) as u64),
            Node::Pool { c, hw, .. } => global_avg_pool(n, *c as u64, *hw as u64),
            Node::Linear { i, o, .. } => linear_forward(n, *i as u64, *o as u64),
        }
    }

    /// Eval forward of the nodes in `mask` for a batch of `n` (`fused`: see `forward_node`).
    fn forward_masked(&self, mask: &[bool], n: u64, fused: bool) -> OpCost {
        (0..self.nodes.len())
            .filter(|&i| mask[i])
            .map(|i| self.forward_node(i, n, fused))
            .sum()
    }

    /// Eval forward, pixels to logits, batch `n`, as the engine runs it when it keeps no trace (the
    /// scan's scoring forward, `eval`): every BN+ReLU applied by the convs that read it.
    pub fn forward(&self, n: u64) -> OpCost {
        self.forward_masked(&vec![true; self.nodes.len()], n, true)
    }

    /// Eval forward up to and including conv `conv`: only the ops its output depends on, with the
    /// BN+ReLU outputs written (a trace keeps them as the backward's masks).
    pub fn prefix_forward(&self, conv: usize, n: u64) -> OpCost {
        self.forward_masked(&self.ancestors(self.conv_node(conv)), n, false)
    }

    /// Eval input-gradient backward (no weight gradients) from the *input* of conv `conv` down to
    /// the pixels, for a gradient batch `n` whose saved activations have batch `saved_b`: every
    /// ancestor conv's input gradient, the masked affine backwards, and one add wherever two
    /// gradient paths meet. The tapped conv's own input gradient is not included.
    pub fn backward_below(&self, conv: usize, n: u64, saved_b: u64) -> OpCost {
        let tap = self.conv_node(conv);
        let mask = self.ancestors(tap);
        let mut consumers = vec![0u64; self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            if mask[i] {
                for s in node.srcs() {
                    consumers[s] += 1;
                }
            }
        }
        let mut cost = OpCost::default();
        for i in 0..self.nodes.len() {
            if !mask[i] {
                continue;
            }
            let node = &self.nodes[i];
            let numel = n * node.item_numel();
            // Gradient contributions from several consumers are summed.
            if consumers[i] > 1 && !matches!(node, Node::Input) {
                cost += binary_in_place(numel) * (consumers[i] - 1);
            }
            if i == tap {
                continue;
            }
            cost += match node {
                Node::Input | Node::Add { .. } => OpCost::default(),
                Node::Affine { c, relu, .. } => {
                    let saved = if *relu {
                        saved_b * node.item_numel()
                    } else {
                        0
                    };
                    channel_affine_backward(numel, *c as u64, saved)
                }
                Node::Conv { params, .. } => conv_input_grad(&params.with_batch(n as usize)),
                Node::Pool { .. } | Node::Linear { .. } => {
                    unreachable!("pool/linear are not conv ancestors")
                }
            };
        }
        cost
    }

    /// Full input-gradient backward of the tapped conv `conv` for `n` one-hot items (B = `saved_b`
    /// samples), over `filters` distinct channels: the seed, the one-hot input gradient of the conv
    /// and everything below it.
    pub fn onehot_backward(&self, conv: usize, n: u64, saved_b: u64, filters: usize) -> OpCost {
        let (_, p) = &self.convs()[conv];
        let hw = (p.h_out * p.w_out) as u64;
        frg_seed(1, n, hw)
            + conv_input_grad_onehot(&p.with_batch(n as usize), filters)
            + self.backward_below(conv, n, saved_b)
    }

    /// One training step's forward (batch-stat BN) and backward (input and weight gradients,
    /// softmax cross-entropy) at batch `n`; no optimiser step.
    pub fn train_step(&self, n: u64) -> OpCost {
        let mut cost = OpCost::default();
        let mut consumers = vec![0u64; self.nodes.len()];
        for node in &self.nodes {
            for s in node.srcs() {
                consumers[s] += 1;
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            let numel = n * node.item_numel();
            cost += match node {
                Node::Input => OpCost::default(),
                Node::Affine { c, relu: false, .. } => channel_affine(numel, *c as u64, false),
                Node::Affine { c, .. } => {
                    // BN (train) with its ReLU fused: statistics only (its consumers map x as
                    // they read it), and the backward.
                    batchnorm_train_forward(numel, *c as u64, true, false)
                        + batchnorm_train_backward(numel, *c as u64, true)
                }
                Node::Conv {
                    params, index, src, ..
                } => {
                    let p = params.with_batch(n as usize);
                    // The stem's input is the normalised image: no input gradient needed.
                    let dx = if *index == 0 {
                        OpCost::default()
                    } else {
                        conv_input_grad(&p)
                    };
                    // A conv after a BN reads relu(bn(x)) in its forward and weight gradient.
                    let bn = match self.nodes[*src] {
                        Node::Affine { relu: true, .. } => bn_input(&p) + bn_input(&p),
                        _ => OpCost::default(),
                    };
                    conv_forward(&p) + conv_weight_grad(&p) + dx + bn
                }
                Node::Add { c, hw, .. } => add(n * (*c * *hw) as u64),
                Node::Pool { c, hw, .. } => {
                    global_avg_pool(n, *c as u64, *hw as u64)
                        + global_avg_pool_backward(n, *c as u64, *hw as u64)
                }
                Node::Linear { i, o, .. } => {
                    let (i, o) = (*i as u64, *o as u64);
                    linear_forward(n, i, o)
                        + linear_backward_input(n, i, o)
                        + linear_backward_params(n, i, o)
                        + softmax_cross_entropy(n, o)
                }
            };
            if consumers[i] > 1 && !matches!(node, Node::Input) {
                cost += binary_in_place(numel) * (consumers[i] - 1);
            }
        }
        cost
    }

    /// Counted work of a whole FRG scan over `convs` (default: all) with `b` samples (spec section 3):
    /// per conv, the prefix forwards of X and X0; per channel, the seed, the one-hot input gradient,
    /// the backward below the conv, the sign step and the full scoring forward, all at batch `b`.
    pub fn scan(&self, b: u64, convs: &[usize], channels_per_conv: Option<usize>) -> ScanCost {
        let mut per_conv = Vec::new();
        let all = self.convs();
        for &ci in convs {
            let (name, p) = &all[ci];
            let channels = channels_per_conv
                .unwrap_or(p.c_out as usize)
                .min(p.c_out as usize) as u64;
            let prefix = self.prefix_forward(ci, b) * 2;
            let backward = self.onehot_backward(ci, b, b, 1);
            let step = sign_step(b * 3 * 1024, b * 3 * 1024);
            let score = self.forward(b);
            per_conv.push(ScanConvCost {
                conv: ci,
                name: name.clone(),
                channels,
                prefix,
                per_channel_backward: backward,
                per_channel_step: step,
                per_channel_score: score,
            });
        }
        ScanCost {
            samples: b,
            per_conv,
        }
    }
}

/// Counted work of the scan of one conv.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ScanConvCost {
    pub conv: usize,
    pub name: String,
    pub channels: u64,
    /// Forward of X and X0 up to the conv.
    pub prefix: OpCost,
    pub per_channel_backward: OpCost,
    pub per_channel_step: OpCost,
    pub per_channel_score: OpCost,
}

impl ScanConvCost {
    pub fn total(&self) -> OpCost {
        self.prefix
            + (self.per_channel_backward + self.per_channel_step + self.per_channel_score)
                * self.channels
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ScanCost {
    pub samples: u64,
    pub per_conv: Vec<ScanConvCost>,
}

impl ScanCost {
    pub fn total(&self) -> OpCost {
        self.per_conv.iter().map(|c| c.total()).sum()
    }
    pub fn channels(&self) -> u64 {
        self.per_conv.iter().map(|c| c.channels).sum()
    }
    /// (channel, sample) pairs scored.
    pub fn channel_samples(&self) -> u64 {
        self.channels() * self.samples
    }
}

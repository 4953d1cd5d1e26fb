//! Eval-mode forward (with taps), prefix traces, and the input-gradient backward from a cotangent at
//! one conv output (no weight gradients). BN+ReLU pairs run as one fused `channel_affine` where
//! a trace saves the post-ReLU output (it doubles as the ReLU mask of the backward); elsewhere the
//! convs that read it apply the BN as they load their input (`conv2d_forward_bn`).
use super::{EvalBn, PreActResNet18, Role};
use crate::backend::BnLayer;
use crate::ensure_shape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Cotangent placed at the traced conv's output.
pub enum Cotangent<'a> {
    /// A dense cotangent with the conv output's shape; its batch N may be a multiple of the traced
    /// batch B (item i then reads saved item i % B).
    Full(&'a Tensor),
    /// Non-zero in one channel per item: `seed` is [N, 1, H, W]; item i's cotangent is `seed[i]` in
    /// channel `first_channel + i / group`. The gradient batch is N = K * group; the trace's batch B
    /// must divide N (with `group == B` item i reads saved item i % B, the FRG scan's stacking).
    OneHot {
        seed: &'a Tensor,
        first_channel: usize,
        group: usize,
    },
}

/// Saved post-ReLU activations of one block: `o = relu(bn1(h_in))`, `a2 = relu(bn2(conv1(o)))`.
pub(crate) struct SavedBlock {
    pub o: Tensor,
    pub a2: Option<Tensor>,
}

/// Result of `forward_trace`: the eval prefix up to conv `upto`, what `input_grad` needs, and the
/// conv's raw output.
pub struct Trace {
    pub(crate) upto: usize,
    pub(crate) batch: usize,
    pub(crate) saved: Vec<SavedBlock>,
    pub(crate) tap: Tensor,
}

impl Trace {
    /// Raw output of conv `upto` for the traced batch.
    pub fn tap(&self) -> &Tensor {
        &self.tap
    }
    pub fn into_tap(self) -> Tensor {
        self.tap
    }
    pub fn upto(&self) -> usize {
        self.upto
    }
    pub fn batch(&self) -> usize {
        self.batch
    }
}

struct Run {
    logits: Option<Tensor>,
    taps: Vec<(usize, Tensor)>,
    saved: Vec<SavedBlock>,
    stop_tap: Option<Tensor>,
}

impl PreActResNet18 {
    fn check_input(&self, x: &Tensor) -> Result<()> {
        ensure_shape!(
            x.shape().len() == 4 && x.shape()[1..] == [3, 32, 32] && x.batch() > 0,
            "PreActResNet18 input",
            "expected [N, 3, 32, 32] pixel-space images, got {:?}",
            x.shape()
        );
        Ok(())
    }

    /// A new tensor of `shape` that `fill` writes (one backend op's output).
    pub(crate) fn filled(
        &self,
        shape: &[usize],
        fill: impl FnOnce(&mut Tensor) -> Result<()>,
    ) -> Result<Tensor> {
        let mut t = self.backend.empty(shape)?;
        fill(&mut t)?;
        Ok(t)
    }

    pub(crate) fn conv_fwd(&self, i: usize, x: &Tensor) -> Result<Tensor> {
        let p = self.convs[i].params.with_batch(x.batch());
        self.filled(&p.output_shape(), |y| {
            self.backend.conv2d_forward(&p, x, &self.conv_w[i], y)
        })
    }

    /// relu(bn(x)) of an eval BN, written where a trace keeps it (`save`: it is the backward's
    /// ReLU mask); else None, and the convs that read it apply the BN themselves.
    fn eval_act(&self, x: &Tensor, e: &EvalBn, save: bool) -> Result<Option<Tensor>> {
        if !save {
            return Ok(None);
        }
        let act = self.filled(x.shape(), |y| {
            self.backend.channel_affine(x, &e.scale, &e.shift, true, y)
        })?;
        Ok(Some(act))
    }

    /// Conv `i` of relu(bn(x)): of `act` when `eval_act` wrote it, else of x through the BN (bit for
    /// bit the same input, `EvalBn`).
    fn conv_after_bn(
        &self,
        i: usize,
        x: &Tensor,
        e: &EvalBn,
        act: Option<&Tensor>,
    ) -> Result<Tensor> {
        match act {
            Some(a) => self.conv_fwd(i, a),
            None => self.conv_fwd_bn(i, x, e.layer()),
        }
    }

    /// Conv `i` of relu(bn(x)), the BN's map applied as the conv reads x.
    pub(crate) fn conv_fwd_bn(&self, i: usize, x: &Tensor, bn: BnLayer<&Tensor>) -> Result<Tensor> {
        let p = self.convs[i].params.with_batch(x.batch());
        self.filled(&p.output_shape(), |y| {
            self.backend
                .conv2d_forward_bn(&p, x, bn, &self.conv_w[i], y)
        })
    }

    /// Gradient at conv `i`'s input from `dy` at its output (batch of dy).
    pub(crate) fn conv_bwd(&self, i: usize, dy: &Tensor) -> Result<Tensor> {
        let p = self.convs[i].params.with_batch(dy.batch());
        self.filled(&p.input_shape(), |dx| {
            self.backend.conv2d_input_grad(&p, dy, &self.conv_w[i], dx)
        })
    }

    pub(crate) fn normalise(&self, x: &Tensor) -> Result<Tensor> {
        self.filled(x.shape(), |xn| {
            self.backend
                .channel_affine(x, &self.norm_scale, &self.norm_shift, false, xn)
        })
    }

    fn copy_of(&self, t: &Tensor) -> Result<Tensor> {
        self.filled(t.shape(), |c| self.backend.copy(t, c))
    }

    /// The eval network, optionally stopping at conv `stop` (saving post-ReLU activations) and
    /// copying out the raw outputs of the convs in `taps`.
    fn run_eval(&self, x: &Tensor, stop: Option<usize>, taps: &[usize], save: bool) -> Result<Run> {
        self.check_input(x)?;
        for &t in taps.iter().chain(stop.iter()) {
            if t >= self.convs.len() {
                return Err(Error::InvalidArgument(format!(
                    "conv index {t} out of range 0..{}",
                    self.convs.len()
                )));
            }
        }
        let b = &self.backend;
        let aff = self.eval_affine()?;
        let mut run = Run {
            logits: None,
            taps: Vec::new(),
            saved: Vec::new(),
            stop_tap: None,
        };
        // Record conv `i`'s output; true when the run stops here.
        let record = |run: &mut Run, i: usize, t: &Tensor| -> Result<bool> {
            if taps.contains(&i) {
                run.taps.push((i, self.copy_of(t)?));
            }
            Ok(stop == Some(i))
        };

        let xn = self.normalise(x)?;
        let mut h = self.conv_fwd(0, &xn)?;
        drop(xn);
        if record(&mut run, 0, &h)? {
            run.stop_tap = Some(h);
            return Ok(run);
        }
        for blk in &self.blocks {
            let (e1, e2) = (&aff[blk.bn1], &aff[blk.bn2]);
            let o = self.eval_act(&h, e1, save)?;
            let sc = match blk.shortcut {
                Some(si) => {
                    let s = self.conv_after_bn(si, &h, e1, o.as_ref())?;
                    if record(&mut run, si, &s)? {
                        if let Some(o) = o {
                            run.saved.push(SavedBlock { o, a2: None });
                        }
                        run.stop_tap = Some(s);
                        return Ok(run);
                    }
                    Some(s)
                }
                None => None,
            };
            let c1 = self.conv_after_bn(blk.conv1, &h, e1, o.as_ref())?;
            if record(&mut run, blk.conv1, &c1)? {
                if let Some(o) = o {
                    run.saved.push(SavedBlock { o, a2: None });
                }
                run.stop_tap = Some(c1);
                return Ok(run);
            }
            let a2 = self.eval_act(&c1, e2, save)?;
            let mut c2 = self.conv_after_bn(blk.conv2, &c1, e2, a2.as_ref())?;
            drop(c1);
            if let Some(o) = o {
                run.saved.push(SavedBlock { o, a2 });
            }
            if record(&mut run, blk.conv2, &c2)? {
                run.stop_tap = Some(c2);
                return Ok(run);
            }
            match sc {
                Some(s) => b.add_assign(&mut c2, &s)?,
                None => b.add_assign(&mut c2, &h)?,
            }
            h = c2;
        }
        let (n, c, _, _) = h.nchw();
        let mut pooled = b.empty(&[n, c])?;
        b.global_avg_pool(&h, &mut pooled)?;
        let mut logits = b.empty(&[n, self.cfg.num_classes])?;
        b.linear_forward(&pooled, &self.lin_w, &self.lin_b, &mut logits)?;
        run.logits = Some(logits);
        Ok(run)
    }

    /// Eval mode: pixel-space [N,3,32,32] -> logits [N,K].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .run_eval(x, None, &[], false)?
            .logits
            .expect("full run"))
    }

    /// Eval mode: logits and the raw outputs of convs `taps` (in the order asked).
    pub fn forward_taps(&self, x: &Tensor, taps: &[usize]) -> Result<(Tensor, Vec<Tensor>)> {
        let mut run = self.run_eval(x, None, taps, false)?;
        let mut out = Vec::with_capacity(taps.len());
        for &t in taps {
            let pos = run
                .taps
                .iter()
                .position(|(i, _)| *i == t)
                .expect("every tap recorded");
            let (_, tensor) = run.taps.swap_remove(pos);
            out.push(tensor);
        }
        Ok((run.logits.expect("full run"), out))
    }

    /// Eval prefix up to conv `upto_conv`; keeps what `input_grad` needs. Cheaper than
    /// `forward_taps` when only one conv's output is wanted (`Trace::tap`).
    pub fn forward_trace(&self, x: &Tensor, upto_conv: usize) -> Result<Trace> {
        let run = self.run_eval(x, Some(upto_conv), &[], true)?;
        Ok(Trace {
            upto: upto_conv,
            batch: x.batch(),
            saved: run.saved,
            tap: run.stop_tap.expect("stopped at the tap"),
        })
    }

    /// Raw output of conv `conv` only (eval prefix, nothing saved): e.g. A_l(X) of the clean batch.
    pub fn forward_prefix(&self, x: &Tensor, conv: usize) -> Result<Tensor> {
        Ok(self
            .run_eval(x, Some(conv), &[], false)?
            .stop_tap
            .expect("stopped at the tap"))
    }

    /// d<cot, A_upto(x)>/dx in pixel space, eval mode (BN affine with running statistics), no weight
    /// gradients. The result has the cotangent's batch N (a multiple of the trace's batch).
    pub fn input_grad(&self, trace: &Trace, cot: Cotangent) -> Result<Tensor> {
        let b = &self.backend;
        let k = trace.upto;
        let p = self.convs[k].params;
        let (ho, wo, cout) = (p.h_out as usize, p.w_out as usize, p.c_out as usize);
        let mut d = match cot {
            Cotangent::Full(t) => {
                ensure_shape!(
                    t.shape().len() == 4
                        && t.shape()[1..] == [cout, ho, wo]
                        && t.batch() % trace.batch == 0,
                    "input_grad",
                    "cotangent {:?} for {} (output [*, {cout}, {ho}, {wo}], traced batch {})",
                    t.shape(),
                    self.convs[k].name,
                    trace.batch
                );
                self.conv_bwd(k, t)?
            }
            Cotangent::OneHot {
                seed,
                first_channel,
                group,
            } => {
                let n = seed.batch();
                ensure_shape!(
                    seed.shape().len() == 4 && seed.shape()[1..] == [1, ho, wo],
                    "input_grad",
                    "one-hot seed {:?} for {} (expected [N, 1, {ho}, {wo}])",
                    seed.shape(),
                    self.convs[k].name
                );
                ensure_shape!(
                    group > 0 && n % group == 0 && n % trace.batch == 0 && first_channel + n / group <= cout,
                    "input_grad",
                    "one-hot seed batch {n}, group {group}, channels {first_channel}..{} of {cout}, traced batch {}",
                    first_channel + n / group.max(1),
                    trace.batch
                );
                let pn = p.with_batch(n);
                let mut dx = b.empty(&pn.input_shape())?;
                b.conv2d_input_grad_onehot(
                    &pn,
                    seed,
                    &self.conv_w[k],
                    first_channel,
                    group,
                    &mut dx,
                )?;
                dx
            }
        };
        let aff = self.eval_affine()?;
        let affine_bwd = |y: &Tensor, dy: &Tensor, bn: usize| -> Result<Tensor> {
            let mut dx = b.empty(dy.shape())?;
            b.channel_affine_backward(Some(y), dy, &aff[bn].scale, &mut dx)?;
            Ok(dx)
        };
        // `d` is the gradient at conv k's input; walk back to the block input (or the stem).
        let mut next_block = match self.roles[k] {
            Role::Stem => None,
            Role::Shortcut(bi) | Role::Conv1(bi) => {
                d = affine_bwd(&trace.saved[bi].o, &d, self.blocks[bi].bn1)?;
                Some(bi)
            }
            Role::Conv2(bi) => {
                let blk = self.blocks[bi];
                let sv = &trace.saved[bi];
                let dc1 = affine_bwd(sv.a2.as_ref().expect("conv2 trace saves a2"), &d, blk.bn2)?;
                let d_o = self.conv_bwd(blk.conv1, &dc1)?;
                d = affine_bwd(&sv.o, &d_o, blk.bn1)?;
                Some(bi)
            }
        };
        // `d` is now the gradient at the input of block `next_block` (= output of the one before).
        while let Some(bi) = next_block {
            if bi == 0 {
                break;
            }
            let j = bi - 1;
            let blk = self.blocks[j];
            let sv = &trace.saved[j];
            let da2 = self.conv_bwd(blk.conv2, &d)?;
            let dc1 = affine_bwd(sv.a2.as_ref().expect("full block saves a2"), &da2, blk.bn2)?;
            drop(da2);
            let mut d_o = self.conv_bwd(blk.conv1, &dc1)?;
            drop(dc1);
            if let Some(si) = blk.shortcut {
                let ds = self.conv_bwd(si, &d)?;
                b.add_assign(&mut d_o, &ds)?;
                d = affine_bwd(&sv.o, &d_o, blk.bn1)?;
            } else {
                let mut dh = affine_bwd(&sv.o, &d_o, blk.bn1)?;
                b.add_assign(&mut dh, &d)?;
                d = dh;
            }
            next_block = Some(j);
        }
        if self.roles[k] != Role::Stem {
            d = self.conv_bwd(0, &d)?;
        }
        let mut dx = b.empty(d.shape())?;
        b.channel_affine_backward(None, &d, &self.norm_scale, &mut dx)?;
        Ok(dx)
    }
}

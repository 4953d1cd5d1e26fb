//! The conv kernels of `kernels/conv_*.cu` (and their shared tile, `conv_tile.cuh`), run through
//! the CPU grid emulator with the real launchers of `GpuBackend`, against naive f64 references:
//! odd shapes that are not multiples of the tile sizes, both row tiles, split-K, the one-hot input
//! gradient, and thread-order independence. `cargo test --features emu emu`.
#![cfg(feature = "emu")]

use fmp_engine::backend::gpu::emu::EmuBackend;
use fmp_engine::backend::gpu::kernels::{CONV_TILE_M, CONV_TILE_M_LARGE};
use fmp_engine::backend::{Backend, BnLayer, BnUpdate, ConvParams};
use fmp_engine::error::Error;

mod emu_support;
use emu_support::*;

// ---- naive references -----------------------------------------------------------------------------

fn ref_conv(p: &ConvParams, x: &[f32], w: &[f32]) -> Vec<f64> {
    let [n, ci, hi, wi] = p.input_shape();
    let [_, co, ho, wo] = p.output_shape();
    let (k, s, pd) = (p.kernel as usize, p.stride as usize, p.pad as isize);
    let mut y = vec![0.0; n * co * ho * wo];
    for b in 0..n {
        for o in 0..co {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut acc = 0.0f64;
                    for c in 0..ci {
                        for kh in 0..k {
                            for kw in 0..k {
                                let ih = (oh * s + kh) as isize - pd;
                                let iw = (ow * s + kw) as isize - pd;
                                if ih < 0 || iw < 0 || ih >= hi as isize || iw >= wi as isize {
                                    continue;
                                }
                                acc += x[((b * ci + c) * hi + ih as usize) * wi + iw as usize]
                                    as f64
                                    * w[((o * ci + c) * k + kh) * k + kw] as f64;
                            }
                        }
                    }
                    y[((b * co + o) * ho + oh) * wo + ow] = acc;
                }
            }
        }
    }
    y
}

/// (dx, dw) of sum(conv(x, w) * dy).
fn ref_conv_grads(p: &ConvParams, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let [n, ci, hi, wi] = p.input_shape();
    let [_, co, ho, wo] = p.output_shape();
    let (k, s, pd) = (p.kernel as usize, p.stride as usize, p.pad as isize);
    let mut dx = vec![0.0; x.len()];
    let mut dw = vec![0.0; w.len()];
    for b in 0..n {
        for o in 0..co {
            for oh in 0..ho {
                for ow in 0..wo {
                    let g = dy[((b * co + o) * ho + oh) * wo + ow] as f64;
                    for c in 0..ci {
                        for kh in 0..k {
                            for kw in 0..k {
                                let ih = (oh * s + kh) as isize - pd;
                                let iw = (ow * s + kw) as isize - pd;
                                if ih < 0 || iw < 0 || ih >= hi as isize || iw >= wi as isize {
                                    continue;
                                }
                                let xi = ((b * ci + c) * hi + ih as usize) * wi + iw as usize;
                                let wi_ = ((o * ci + c) * k + kh) * k + kw;
                                dx[xi] += g * w[wi_] as f64;
                                dw[wi_] += g * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw)
}

fn conv_cases() -> Vec<ConvParams> {
    vec![
        ConvParams::new(2, 3, 7, 9, 5, 3, 1, 1),
        ConvParams::new(3, 13, 11, 10, 70, 3, 2, 1),
        ConvParams::new(2, 17, 9, 9, 9, 1, 2, 0),
        ConvParams::new(1, 20, 5, 5, 3, 3, 1, 0),
        ConvParams::new(2, 66, 6, 5, 4, 3, 1, 1),
    ]
}

#[test]
fn emu_conv2d_forward() {
    let b = emu();
    let mut r = Rng::new(1);
    for p in conv_cases() {
        let x = r.vec(p.input_shape().iter().product());
        let w = r.vec(p.weight_shape().iter().product());
        let (xt, wt) = (t(&b, &x, &p.input_shape()), t(&b, &w, &p.weight_shape()));
        let mut y = b.zeros(&p.output_shape()).unwrap();
        b.conv2d_forward(&p, &xt, &wt, &mut y).unwrap();
        assert_close(
            &format!("conv2d_forward {p:?}"),
            &host(&b, &y),
            &ref_conv(&p, &x, &w),
            1e-5,
        );
    }
}

#[test]
fn emu_conv2d_input_grad() {
    let b = emu();
    let mut r = Rng::new(2);
    for p in conv_cases() {
        let x = r.vec(p.input_shape().iter().product());
        let w = r.vec(p.weight_shape().iter().product());
        let dy = r.vec(p.output_shape().iter().product());
        let (dxr, _) = ref_conv_grads(&p, &x, &w, &dy);
        let (dyt, wt) = (t(&b, &dy, &p.output_shape()), t(&b, &w, &p.weight_shape()));
        let mut dx = b.zeros(&p.input_shape()).unwrap();
        b.conv2d_input_grad(&p, &dyt, &wt, &mut dx).unwrap();
        assert_close(
            &format!("conv2d_input_grad {p:?}"),
            &host(&b, &dx),
            &dxr,
            1e-5,
        );
    }
}

#[test]
fn emu_conv2d_weight_grad_direct_and_split() {
    let b = emu();
    let mut r = Rng::new(3);
    let mut cases = conv_cases();
    cases.push(ConvParams::new(3, 5, 15, 13, 6, 3, 1, 1)); // K = 585: the automatic choice splits
    for p in cases {
        let x = r.vec(p.input_shape().iter().product());
        let w = r.vec(p.weight_shape().iter().product());
        let dy = r.vec(p.output_shape().iter().product());
        let (_, dwr) = ref_conv_grads(&p, &x, &w, &dy);
        let (xt, dyt) = (t(&b, &x, &p.input_shape()), t(&b, &dy, &p.output_shape()));
        for splits in [0usize, 1, 2, 3, 7] {
            let mut dw = t(&b, &vec![f32::NAN; w.len()], &p.weight_shape());
            if splits == 0 {
                b.conv2d_weight_grad(&p, &xt, &dyt, &mut dw).unwrap();
            } else {
                b.conv2d_weight_grad_split(&p, &xt, &dyt, &mut dw, splits)
                    .unwrap();
            }
            assert_close(
                &format!("conv2d_weight_grad {p:?} splits {splits}"),
                &host(&b, &dw),
                &dwr,
                1e-5,
            );
        }
    }
}

#[test]
fn emu_conv2d_input_grad_onehot() {
    let b = emu();
    let mut r = Rng::new(4);
    for (p, first, group) in [
        (ConvParams::new(6, 20, 7, 6, 5, 3, 1, 1), 1usize, 3usize),
        (ConvParams::new(4, 9, 9, 8, 8, 3, 2, 1), 4, 1),
        (ConvParams::new(5, 33, 6, 6, 4, 1, 2, 0), 0, 2),
    ] {
        let w = r.vec(p.weight_shape().iter().product());
        let [n, _, ho, wo] = p.output_shape();
        let seed = r.vec(n * ho * wo);
        // expand to the full cotangent and use the reference input gradient
        let mut dy = vec![0.0f32; p.output_shape().iter().product()];
        let co = p.c_out as usize;
        for i in 0..n {
            let c = first + i / group;
            dy[(i * co + c) * ho * wo..(i * co + c + 1) * ho * wo]
                .copy_from_slice(&seed[i * ho * wo..(i + 1) * ho * wo]);
        }
        let x = vec![0.0f32; p.input_shape().iter().product()];
        let (dxr, _) = ref_conv_grads(&p, &x, &w, &dy);
        let (st, wt) = (t(&b, &seed, &[n, 1, ho, wo]), t(&b, &w, &p.weight_shape()));
        let mut dx = t(&b, &vec![f32::NAN; x.len()], &p.input_shape());
        b.conv2d_input_grad_onehot(&p, &st, &wt, first, group, &mut dx)
            .unwrap();
        assert_close(
            &format!("conv2d_input_grad_onehot {p:?}"),
            &host(&b, &dx),
            &dxr,
            1e-5,
        );
    }
    // a channel past the filters is a shape error
    let p = ConvParams::new(4, 3, 5, 5, 2, 3, 1, 1);
    let st = b.zeros(&[4, 1, 5, 5]).unwrap();
    let wt = b.zeros(&p.weight_shape()).unwrap();
    let mut dx = b.zeros(&p.input_shape()).unwrap();
    assert!(matches!(
        b.conv2d_input_grad_onehot(&p, &st, &wt, 1, 2, &mut dx),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn emu_results_independent_of_thread_order() {
    let mut r = Rng::new(11);
    let p = ConvParams::new(3, 13, 11, 10, 70, 3, 2, 1);
    let x = r.vec(p.input_shape().iter().product());
    let w = r.vec(p.weight_shape().iter().product());
    let dy = r.vec(p.output_shape().iter().product());
    let gamma = r.vec(70);
    let run = |seed: u64| {
        let b = EmuBackend::emulated(seed);
        let (xt, wt, dyt) = (
            t(&b, &x, &p.input_shape()),
            t(&b, &w, &p.weight_shape()),
            t(&b, &dy, &p.output_shape()),
        );
        let mut y = b.zeros(&p.output_shape()).unwrap();
        b.conv2d_forward(&p, &xt, &wt, &mut y).unwrap();
        let mut dw = b.zeros(&p.weight_shape()).unwrap();
        b.conv2d_weight_grad_split(&p, &xt, &dyt, &mut dw, 2)
            .unwrap();
        let gt = t(&b, &gamma, &[70]);
        let (mut rm, mut rv, mut sm, mut si) = (
            b.zeros(&[70]).unwrap(),
            b.zeros(&[70]).unwrap(),
            b.zeros(&[70]).unwrap(),
            b.zeros(&[70]).unwrap(),
        );
        let mut yb = b.zeros(&p.output_shape()).unwrap();
        b.batchnorm_train_forward(
            &y,
            BnLayer::new(&gt, &gt, &mut sm, &mut si, false),
            BnUpdate::new(1e-5, 0.1, &mut rm, &mut rv),
            Some(&mut yb),
        )
        .unwrap();
        let mut pooled = b.zeros(&[3, 70]).unwrap();
        b.global_avg_pool(&yb, &mut pooled).unwrap();
        [
            host(&b, &y),
            host(&b, &dw),
            host(&b, &yb),
            host(&b, &pooled),
        ]
    };
    let base = run(0);
    for seed in [1u64, 0xdead_beef] {
        let other = run(seed);
        for (a, o) in base.iter().zip(&other) {
            assert!(
                a.iter().zip(o).all(|(p, q)| p.to_bits() == q.to_bits()),
                "order seed {seed} changed a result"
            );
        }
    }
}

/// Both row tiles of the conv kernels (64 and 128 rows) on every case, plus a case with more than
/// one 128-row tile each way; an unknown tile is an error.
#[test]
fn emu_conv_tile_variants() {
    let b = emu();
    let mut r = Rng::new(12);
    let mut cases = conv_cases();
    cases.push(ConvParams::new(1, 130, 5, 6, 131, 3, 1, 1));
    for p in cases {
        let x = r.vec(p.input_shape().iter().product());
        let w = r.vec(p.weight_shape().iter().product());
        let dy = r.vec(p.output_shape().iter().product());
        let yr = ref_conv(&p, &x, &w);
        let (dxr, dwr) = ref_conv_grads(&p, &x, &w, &dy);
        let (xt, wt, dyt) = (
            t(&b, &x, &p.input_shape()),
            t(&b, &w, &p.weight_shape()),
            t(&b, &dy, &p.output_shape()),
        );
        for tile in [CONV_TILE_M, CONV_TILE_M_LARGE] {
            let mut y = t(&b, &vec![f32::NAN; yr.len()], &p.output_shape());
            b.conv2d_forward_tiled(&p, &xt, &wt, &mut y, tile).unwrap();
            assert_close(
                &format!("conv2d_forward {p:?} tile {tile}"),
                &host(&b, &y),
                &yr,
                1e-5,
            );
            let mut dx = t(&b, &vec![f32::NAN; x.len()], &p.input_shape());
            b.conv2d_input_grad_tiled(&p, &dyt, &wt, &mut dx, tile)
                .unwrap();
            assert_close(
                &format!("conv2d_input_grad {p:?} tile {tile}"),
                &host(&b, &dx),
                &dxr,
                1e-5,
            );
            for splits in [1usize, 2] {
                let mut dw = t(&b, &vec![f32::NAN; w.len()], &p.weight_shape());
                b.conv2d_weight_grad_tiled(&p, &xt, &dyt, &mut dw, tile, splits)
                    .unwrap();
                assert_close(
                    &format!("conv2d_weight_grad {p:?} tile {tile} splits {splits}"),
                    &host(&b, &dw),
                    &dwr,
                    1e-5,
                );
            }
        }
        let mut y = b.zeros(&p.output_shape()).unwrap();
        assert!(b.conv2d_forward_tiled(&p, &xt, &wt, &mut y, 96).is_err());
    }
}

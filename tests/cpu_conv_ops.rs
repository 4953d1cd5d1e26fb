//! CPU backend convolution tests: the three passes and the one-hot input gradient on seeded
//! random inputs with odd shapes against a naive f64 reference written here, gradients against
//! central finite differences, bitwise one-hot == full, determinism across thread counts, empty
//! batches and shape errors.
use fmp_engine::backend::{Backend, ConvParams};
use fmp_engine::Error;

mod cpu_support;
use cpu_support::*;

// ---- f64 reference convolution -------------------------------------------------------------

#[derive(Clone, Copy)]
struct G {
    n: usize,
    ci: usize,
    hi: usize,
    wi: usize,
    co: usize,
    k: usize,
    s: usize,
    p: usize,
}
impl G {
    fn params(&self) -> ConvParams {
        ConvParams::new(
            self.n, self.ci, self.hi, self.wi, self.co, self.k, self.s, self.p,
        )
    }
    fn ho(&self) -> usize {
        (self.hi + 2 * self.p - self.k) / self.s + 1
    }
    fn wo(&self) -> usize {
        (self.wi + 2 * self.p - self.k) / self.s + 1
    }
    fn xs(&self) -> Vec<usize> {
        vec![self.n, self.ci, self.hi, self.wi]
    }
    fn ys(&self) -> Vec<usize> {
        vec![self.n, self.co, self.ho(), self.wo()]
    }
    fn ws(&self) -> Vec<usize> {
        vec![self.co, self.ci, self.k, self.k]
    }
    /// Visit every (x index, w index, y index) triple that contributes to the convolution.
    fn each(&self, mut f: impl FnMut(usize, usize, usize)) {
        let (ho, wo) = (self.ho(), self.wo());
        for n in 0..self.n {
            for co in 0..self.co {
                for oh in 0..ho {
                    for ow in 0..wo {
                        for ci in 0..self.ci {
                            for kh in 0..self.k {
                                for kw in 0..self.k {
                                    let ih = (oh * self.s + kh) as isize - self.p as isize;
                                    let iw = (ow * self.s + kw) as isize - self.p as isize;
                                    if ih < 0
                                        || iw < 0
                                        || ih >= self.hi as isize
                                        || iw >= self.wi as isize
                                    {
                                        continue;
                                    }
                                    let xi = ((n * self.ci + ci) * self.hi + ih as usize) * self.wi
                                        + iw as usize;
                                    let wi = ((co * self.ci + ci) * self.k + kh) * self.k + kw;
                                    let yi = ((n * self.co + co) * ho + oh) * wo + ow;
                                    f(xi, wi, yi);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    fn fwd(&self, x: &[f64], w: &[f64]) -> Vec<f64> {
        let mut y = vec![0.0; self.ys().iter().product()];
        self.each(|xi, wi, yi| y[yi] += x[xi] * w[wi]);
        y
    }
    fn igrad(&self, dy: &[f64], w: &[f64]) -> Vec<f64> {
        let mut dx = vec![0.0; self.xs().iter().product()];
        self.each(|xi, wi, yi| dx[xi] += dy[yi] * w[wi]);
        dx
    }
    /// L(x, w) = sum(conv(x, w) * dy), whose gradients the input- and weight-gradient ops are.
    fn loss(&self, x: &[f64], w: &[f64], dy: &[f64]) -> f64 {
        self.fwd(x, w).iter().zip(dy).map(|(a, b)| a * b).sum()
    }
    fn wgrad(&self, x: &[f64], dy: &[f64]) -> Vec<f64> {
        let mut dw = vec![0.0; self.ws().iter().product()];
        self.each(|xi, wi, yi| dw[wi] += dy[yi] * x[xi]);
        dw
    }
}

/// G from (n, c_in, h, w, c_out, kernel, stride, pad).
#[allow(clippy::too_many_arguments)]
fn g(n: usize, ci: usize, hi: usize, wi: usize, co: usize, k: usize, s: usize, p: usize) -> G {
    G {
        n,
        ci,
        hi,
        wi,
        co,
        k,
        s,
        p,
    }
}

fn conv_cases() -> Vec<G> {
    vec![
        g(3, 5, 7, 9, 4, 3, 1, 1),
        g(3, 5, 7, 9, 6, 3, 2, 1),
        g(2, 5, 7, 9, 7, 1, 2, 0),
        g(2, 3, 5, 6, 5, 1, 1, 0),
        g(1, 4, 8, 7, 3, 3, 2, 0),
        g(2, 17, 6, 5, 33, 3, 1, 1),
        g(5, 16, 8, 8, 24, 3, 1, 1),
        // K = 360 > one K block in forward; odd stride-2 geometry
        g(2, 40, 6, 5, 13, 3, 2, 1),
        // input-gradient K = 270 > one K block; wide rows
        g(3, 29, 5, 18, 30, 3, 1, 1),
        // small images: whole-row packing (4x4, 4-wide rows, 1x1 on 8-wide rows)
        g(3, 7, 4, 4, 9, 3, 1, 1),
        g(2, 6, 6, 4, 5, 3, 1, 0),
        g(3, 7, 4, 8, 9, 1, 1, 0),
        // direct stride-1 path: 16- and 32-wide output rows (whole-row vectors), pad 0 (input
        // gradient padding 2), a 5x5 filter, a 3-channel stem-like input, 8x8 padded-grid lanes
        g(2, 5, 6, 16, 9, 3, 1, 1),
        g(2, 3, 5, 32, 17, 3, 1, 1),
        g(2, 4, 6, 18, 11, 3, 1, 0),
        g(2, 3, 9, 20, 5, 5, 1, 2),
        g(3, 19, 8, 8, 8, 3, 1, 1),
        // strided whole-row and 16-wide packing: 4x4, 8x8 (1x1) and 16x16 outputs at stride 2
        g(2, 5, 8, 8, 6, 3, 2, 1),
        g(2, 6, 16, 16, 7, 1, 2, 0),
        g(2, 3, 32, 32, 5, 3, 2, 1),
        // direct strided path (phase planes): stride 3, a 5x5 filter at stride 2 on an odd grid,
        // 32-wide whole-row vectors at stride 2
        g(2, 4, 17, 19, 6, 3, 3, 1),
        g(2, 3, 13, 36, 5, 5, 2, 2),
        g(1, 3, 10, 64, 4, 3, 2, 1),
        // lane-layout weight gradient over several L2 blocks of items (16x16 planes, 24
        // channels: blocks of 5 items) and several items per kernel call (4)
        g(11, 5, 16, 16, 24, 3, 1, 1),
        // pixel layout (small planes, channels filling 32-wide panels): 4x4 with a partial
        // second panel (48 channels), its input gradient (36 -> 12: only the gradient fits),
        // a 3x5 plane, 8x8 -> 4x4 at stride 2 (phase planes), 64 channels at 2x2
        g(2, 20, 4, 4, 48, 3, 1, 1),
        g(2, 36, 4, 4, 12, 3, 1, 1),
        g(3, 5, 3, 5, 32, 3, 1, 1),
        g(2, 9, 8, 8, 24, 3, 2, 1),
        g(2, 7, 2, 2, 64, 3, 1, 1),
        // pixel layout, items in groups sharing the panels (16+ items; a partial last group)
        g(19, 20, 4, 4, 48, 3, 1, 1),
        g(37, 9, 4, 4, 32, 3, 1, 1),
        // pixel-layout weight gradients of 1x1 filters (few terms, one task)
        g(5, 6, 16, 16, 32, 1, 2, 0),
        g(9, 3, 12, 12, 40, 1, 1, 0),
        // Winograd F(2x2, 3x3) shapes (FMP_CPU_CONV=winograd; 3x3, stride 1, pad 1, even planes,
        // 8+ input channels): 32-, 16-, 4- and 2-wide rows (one tile row per 16, 8, 2, 1 tiles),
        // a non-square plane, a partial last panel
        g(2, 9, 32, 32, 17, 3, 1, 1),
        g(3, 12, 16, 16, 20, 3, 1, 1),
        g(3, 10, 6, 16, 9, 3, 1, 1),
        g(5, 33, 4, 4, 14, 3, 1, 1),
        g(3, 9, 2, 2, 10, 3, 1, 1),
    ]
}

#[test]
fn conv_forward_matches_f64() {
    let b = be();
    for (i, g) in conv_cases().into_iter().enumerate() {
        let mut r = Rng::new(100 + i as u64);
        let x = r.vec(g.xs().iter().product(), -1.0, 1.0);
        let w = r.vec(g.ws().iter().product(), -1.0, 1.0);
        let mut y = z(&b, &g.ys());
        b.conv2d_forward(
            &g.params(),
            &t(&b, &x, &g.xs()),
            &t(&b, &w, &g.ws()),
            &mut y,
        )
        .unwrap();
        assert_close(
            &format!("conv fwd case {i}"),
            &h(&b, &y),
            &g.fwd(&f64v(&x), &f64v(&w)),
            1e-5,
        );
    }
}

/// Passes that keep state between calls (Winograd's transformed-filter cache) must follow
/// weights that change between calls with the same shapes, as in fine-tuning.
#[test]
fn conv_follows_weights_changed_between_calls() {
    let b = be();
    let g = g(3, 12, 16, 16, 20, 3, 1, 1);
    let mut r = Rng::new(77);
    let x = r.vec(g.xs().iter().product(), -1.0, 1.0);
    let dy = r.vec(g.ys().iter().product(), -1.0, 1.0);
    let mut w = r.vec(g.ws().iter().product(), -1.0, 1.0);
    for step in 0..3 {
        let mut y = z(&b, &g.ys());
        let mut dx = z(&b, &g.xs());
        let wt = t(&b, &w, &g.ws());
        b.conv2d_forward(&g.params(), &t(&b, &x, &g.xs()), &wt, &mut y)
            .unwrap();
        b.conv2d_input_grad(&g.params(), &t(&b, &dy, &g.ys()), &wt, &mut dx)
            .unwrap();
        let (xd, wd) = (f64v(&x), f64v(&w));
        assert_close(
            &format!("fwd step {step}"),
            &h(&b, &y),
            &g.fwd(&xd, &wd),
            1e-5,
        );
        assert_close(
            &format!("igrad step {step}"),
            &h(&b, &dx),
            &g.igrad(&f64v(&dy), &wd),
            1e-4,
        );
        // an SGD-like update of one filter element, then of all
        w[5] += 0.25;
        for v in w.iter_mut().skip(step) {
            *v *= 0.9;
        }
    }
}

#[test]
fn conv_input_grad_matches_f64_and_fd() {
    let b = be();
    for (i, g) in conv_cases().into_iter().enumerate() {
        let mut r = Rng::new(200 + i as u64);
        let dy = r.vec(g.ys().iter().product(), -1.0, 1.0);
        let w = r.vec(g.ws().iter().product(), -1.0, 1.0);
        let mut dx = z(&b, &g.xs());
        b.conv2d_input_grad(
            &g.params(),
            &t(&b, &dy, &g.ys()),
            &t(&b, &w, &g.ws()),
            &mut dx,
        )
        .unwrap();
        let dx = h(&b, &dx);
        let refg = g.igrad(&f64v(&dy), &f64v(&w));
        assert_close(&format!("conv igrad case {i}"), &dx, &refg, 1e-4);
        // Central differences of L(x) = sum(conv(x, w) * dy) at a few points.
        let x = f64v(&r.vec(g.xs().iter().product(), -1.0, 1.0));
        let (dy64, w64) = (f64v(&dy), f64v(&w));
        assert_fd(&format!("case {i} x"), &x, 7, &dx, |x| {
            g.loss(x, &w64, &dy64)
        });
    }
}

#[test]
fn conv_weight_grad_matches_f64_and_fd() {
    let b = be();
    for (i, g) in conv_cases().into_iter().enumerate() {
        let mut r = Rng::new(300 + i as u64);
        let x = r.vec(g.xs().iter().product(), -1.0, 1.0);
        let dy = r.vec(g.ys().iter().product(), -1.0, 1.0);
        let mut dw = z(&b, &g.ws());
        b.fill(&mut dw, 7.0).unwrap(); // must be overwritten, not accumulated into
        b.conv2d_weight_grad(
            &g.params(),
            &t(&b, &x, &g.xs()),
            &t(&b, &dy, &g.ys()),
            &mut dw,
        )
        .unwrap();
        let dw = h(&b, &dw);
        assert_close(
            &format!("conv wgrad case {i}"),
            &dw,
            &g.wgrad(&f64v(&x), &f64v(&dy)),
            1e-4,
        );
        let w = f64v(&r.vec(g.ws().iter().product(), -1.0, 1.0));
        let (x64, dy64) = (f64v(&x), f64v(&dy));
        assert_fd(&format!("case {i} w"), &w, 5, &dw, |w| {
            g.loss(&x64, w, &dy64)
        });
    }
}

#[test]
fn conv_weight_grad_is_deterministic_across_thread_counts() {
    let b = be();
    let g = G {
        n: 6,
        ci: 16,
        hi: 9,
        wi: 9,
        co: 24,
        k: 3,
        s: 1,
        p: 1,
    };
    let mut r = Rng::new(7);
    let x = t(&b, &r.vec(g.xs().iter().product(), -1.0, 1.0), &g.xs());
    let dy = t(&b, &r.vec(g.ys().iter().product(), -1.0, 1.0), &g.ys());
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut dw = z(&b, &g.ws());
            b.conv2d_weight_grad(&g.params(), &x, &dy, &mut dw).unwrap();
            h(&b, &dw)
        })
    };
    let one = run(1);
    assert_eq!(one, run(3));
    assert_eq!(one, run(2));
}

#[test]
fn conv_passes_are_deterministic_across_thread_counts() {
    let b = be();
    for g in [
        G {
            n: 4,
            ci: 13,
            hi: 9,
            wi: 11,
            co: 20,
            k: 3,
            s: 1,
            p: 1,
        },
        G {
            n: 4,
            ci: 13,
            hi: 9,
            wi: 11,
            co: 20,
            k: 3,
            s: 2,
            p: 1,
        },
    ] {
        let mut r = Rng::new(8);
        let x = t(&b, &r.vec(g.xs().iter().product(), -1.0, 1.0), &g.xs());
        let w = t(&b, &r.vec(g.ws().iter().product(), -1.0, 1.0), &g.ws());
        let dy = t(&b, &r.vec(g.ys().iter().product(), -1.0, 1.0), &g.ys());
        let seed = t(
            &b,
            &r.vec(g.n * g.ho() * g.wo(), -1.0, 1.0),
            &[g.n, 1, g.ho(), g.wo()],
        );
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let (mut y, mut dx, mut dx1) = (z(&b, &g.ys()), z(&b, &g.xs()), z(&b, &g.xs()));
                b.conv2d_forward(&g.params(), &x, &w, &mut y).unwrap();
                b.conv2d_input_grad(&g.params(), &dy, &w, &mut dx).unwrap();
                b.conv2d_input_grad_onehot(&g.params(), &seed, &w, 3, 2, &mut dx1)
                    .unwrap();
                (h(&b, &y), h(&b, &dx), h(&b, &dx1))
            })
        };
        assert_eq!(run(1), run(3));
    }
}

#[test]
fn conv_onehot_equals_full_bitwise() {
    let b = be();
    // (geometry, first_channel, group)
    let cases = [
        (g(6, 5, 7, 9, 8, 3, 1, 1), 2usize, 3usize),
        (g(6, 5, 7, 9, 8, 3, 2, 1), 5, 2),
        (g(4, 3, 6, 5, 9, 1, 2, 0), 0, 1),
        (g(9, 16, 8, 8, 40, 3, 1, 1), 29, 3),
        // filters 26, 27, 28 sit either side of the full GEMM's K-block boundary (252 = 28 * 9)
        (g(6, 8, 9, 20, 64, 3, 1, 1), 26, 2),
        (g(6, 8, 9, 20, 64, 3, 2, 1), 26, 2),
        (g(8, 5, 4, 4, 70, 3, 1, 1), 26, 2),
        (g(4, 5, 8, 8, 12, 3, 1, 1), 3, 1),
        (g(6, 3, 5, 32, 20, 3, 1, 1), 7, 2),
        (g(4, 4, 6, 18, 9, 3, 1, 0), 1, 4),
        // pixel-layout input gradient over 17 items: groups whose items share a filter and
        // groups that straddle two
        (g(17, 36, 4, 4, 12, 3, 1, 1), 5, 3),
    ];
    for (i, (g, first, group)) in cases.into_iter().enumerate() {
        let mut r = Rng::new(400 + i as u64);
        let (ho, wo) = (g.ho(), g.wo());
        let seed = r.vec(g.n * ho * wo, -1.0, 1.0);
        let w = t(&b, &r.vec(g.ws().iter().product(), -1.0, 1.0), &g.ws());
        let mut full = vec![0.0f32; g.ys().iter().product()];
        for n in 0..g.n {
            let c = first + n / group;
            full[(n * g.co + c) * ho * wo..(n * g.co + c + 1) * ho * wo]
                .copy_from_slice(&seed[n * ho * wo..(n + 1) * ho * wo]);
        }
        let mut a = z(&b, &g.xs());
        let mut bb = z(&b, &g.xs());
        b.conv2d_input_grad(&g.params(), &t(&b, &full, &g.ys()), &w, &mut a)
            .unwrap();
        b.conv2d_input_grad_onehot(
            &g.params(),
            &t(&b, &seed, &[g.n, 1, ho, wo]),
            &w,
            first,
            group,
            &mut bb,
        )
        .unwrap();
        let (full, onehot) = (h(&b, &a), h(&b, &bb));
        let bad = full.iter().zip(&onehot).filter(|(x, y)| x != y).count();
        assert_eq!(bad, 0, "case {i}: {bad} of {} elements differ", full.len());
        assert!(h(&b, &a).iter().any(|&v| v != 0.0));
    }
}

#[test]
fn conv_rejects_bad_shapes() {
    let b = be();
    let g = G {
        n: 2,
        ci: 3,
        hi: 5,
        wi: 5,
        co: 4,
        k: 3,
        s: 1,
        p: 1,
    };
    let x = z(&b, &g.xs());
    let w = z(&b, &g.ws());
    let mut y = z(&b, &[2, 4, 5, 6]);
    assert!(matches!(
        b.conv2d_forward(&g.params(), &x, &w, &mut y),
        Err(Error::Shape { .. })
    ));
    let mut y = z(&b, &g.ys());
    let wbad = z(&b, &[4, 2, 3, 3]);
    assert!(matches!(
        b.conv2d_forward(&g.params(), &x, &wbad, &mut y),
        Err(Error::Shape { .. })
    ));
    let mut p = g.params();
    p.h_out = 9;
    assert!(matches!(
        b.conv2d_forward(&p, &x, &w, &mut y),
        Err(Error::Shape { .. })
    ));
    let mut dx = z(&b, &g.xs());
    let seed = z(&b, &[2, 1, 5, 5]);
    // items 0, 1 with group 1 starting at filter 3 need filter 4 of 4.
    assert!(matches!(
        b.conv2d_input_grad_onehot(&g.params(), &seed, &w, 3, 1, &mut dx),
        Err(Error::Shape { .. })
    ));
    assert!(b
        .conv2d_input_grad_onehot(&g.params(), &seed, &w, 3, 2, &mut dx)
        .is_ok());
    assert!(matches!(
        b.conv2d_input_grad_onehot(&g.params(), &seed, &w, 0, 0, &mut dx),
        Err(Error::Shape { .. })
    ));
    let mut dw = z(&b, &[4, 3, 3, 3]);
    assert!(matches!(
        b.conv2d_weight_grad(&g.params(), &x, &z(&b, &[2, 4, 5, 4]), &mut dw),
        Err(Error::Shape { .. })
    ));
}

#[test]
fn empty_batch_convs_do_not_panic() {
    let b = be();
    for (k, s) in [(3, 1), (3, 2)] {
        let g = G {
            n: 0,
            ci: 3,
            hi: 5,
            wi: 5,
            co: 4,
            k,
            s,
            p: 1,
        };
        let (x, w, dy) = (z(&b, &g.xs()), z(&b, &g.ws()), z(&b, &g.ys()));
        let (mut y, mut dx, mut dw) = (z(&b, &g.ys()), z(&b, &g.xs()), z(&b, &g.ws()));
        b.fill(&mut dw, 1.0).unwrap();
        b.conv2d_forward(&g.params(), &x, &w, &mut y).unwrap();
        b.conv2d_input_grad(&g.params(), &dy, &w, &mut dx).unwrap();
        b.conv2d_weight_grad(&g.params(), &x, &dy, &mut dw).unwrap();
        assert!(
            h(&b, &dw).iter().all(|&v| v == 0.0),
            "empty batch gives a zero weight gradient"
        );
        let seed = z(&b, &[0, 1, g.ho(), g.wo()]);
        b.conv2d_input_grad_onehot(&g.params(), &seed, &w, 0, 1, &mut dx)
            .unwrap();
    }
}

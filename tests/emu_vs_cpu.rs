//! Every op of the emulated GPU backend against the CPU reference backend on the same seeded
//! inputs: small odd shapes plus reduced ResNet18 layer shapes (stem, 3x3 stride-2 downsampling,
//! 1x1 shortcut). `cargo test --features emu emu`.
#![cfg(feature = "emu")]

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::gpu::emu::EmuBackend;
use fmp_engine::backend::{Backend, BnGrads, BnLayer, BnUpdate, ConvParams, Sgd};
use fmp_engine::tensor::Tensor;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let v = (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if v == 0.0 {
            0.25
        } else {
            v
        }
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// Runs the same op on both backends: inputs are host vectors, outputs are compared.
struct Pair {
    cpu: CpuBackend,
    emu: EmuBackend,
}

impl Pair {
    fn new() -> Self {
        Pair {
            cpu: CpuBackend::new(),
            emu: EmuBackend::emulated(7),
        }
    }
    fn up(&self, d: &[f32], s: &[usize]) -> (Tensor, Tensor) {
        (
            self.cpu.from_host(d, s).unwrap(),
            self.emu.from_host(d, s).unwrap(),
        )
    }
    fn nan(&self, s: &[usize]) -> (Tensor, Tensor) {
        let v = vec![f32::NAN; s.iter().product()];
        self.up(&v, s)
    }
    #[track_caller]
    fn check(&self, what: &str, c: &Tensor, e: &Tensor, tol: f32) {
        let (c, e) = (self.cpu.to_host(c).unwrap(), self.emu.to_host(e).unwrap());
        assert_eq!(c.len(), e.len(), "{what}");
        for (i, (a, b)) in c.iter().zip(&e).enumerate() {
            let err = (a - b).abs() / (1.0 + a.abs());
            assert!(err <= tol, "{what}: element {i}: cpu {a}, emu {b}");
        }
    }
}

#[test]
fn emu_vs_cpu_convolutions() {
    let pr = Pair::new();
    let mut r = Rng(0x1234_5678_9abc_def1);
    let cases = [
        ConvParams::new(2, 3, 32, 32, 8, 3, 1, 1), // stem, width 8
        ConvParams::new(2, 32, 8, 8, 64, 3, 2, 1), // downsampling conv1 (reduced spatial size)
        ConvParams::new(2, 32, 8, 8, 64, 1, 2, 0), // 1x1 shortcut
        ConvParams::new(1, 64, 4, 4, 64, 3, 1, 1), // layer4-like
        ConvParams::new(3, 7, 9, 11, 13, 3, 1, 1), // odd everything
        ConvParams::new(2, 5, 10, 7, 3, 3, 2, 1),
    ];
    for p in cases {
        let (is, ws, os) = (p.input_shape(), p.weight_shape(), p.output_shape());
        let (xc, xe) = pr.up(&r.vec(is.iter().product()), &is);
        let (wc, we) = pr.up(&r.vec(ws.iter().product()), &ws);
        let (dyc, dye) = pr.up(&r.vec(os.iter().product()), &os);
        let (mut yc, mut ye) = pr.nan(&os);
        pr.cpu.conv2d_forward(&p, &xc, &wc, &mut yc).unwrap();
        pr.emu.conv2d_forward(&p, &xe, &we, &mut ye).unwrap();
        pr.check(&format!("conv2d_forward {p:?}"), &yc, &ye, 1e-5);
        let (mut dxc, mut dxe) = pr.nan(&is);
        pr.cpu.conv2d_input_grad(&p, &dyc, &wc, &mut dxc).unwrap();
        pr.emu.conv2d_input_grad(&p, &dye, &we, &mut dxe).unwrap();
        pr.check(&format!("conv2d_input_grad {p:?}"), &dxc, &dxe, 1e-5);
        let (mut dwc, mut dwe) = pr.nan(&ws);
        pr.cpu.conv2d_weight_grad(&p, &xc, &dyc, &mut dwc).unwrap();
        pr.emu.conv2d_weight_grad(&p, &xe, &dye, &mut dwe).unwrap();
        pr.check(&format!("conv2d_weight_grad {p:?}"), &dwc, &dwe, 1e-4);
        // one-hot: 2 channels x batch n
        let group = p.n as usize;
        let q = p.with_batch(2 * group);
        let ss = [2 * group, 1, os[2], os[3]];
        let (sc, se) = pr.up(&r.vec(ss.iter().product()), &ss);
        let (mut oc, mut oe) = pr.nan(&q.input_shape());
        let first = p.c_out as usize - 2;
        pr.cpu
            .conv2d_input_grad_onehot(&q, &sc, &wc, first, group, &mut oc)
            .unwrap();
        pr.emu
            .conv2d_input_grad_onehot(&q, &se, &we, first, group, &mut oe)
            .unwrap();
        pr.check(&format!("conv2d_input_grad_onehot {q:?}"), &oc, &oe, 1e-5);
    }
}

#[test]
fn emu_vs_cpu_other_ops() {
    let pr = Pair::new();
    let mut r = Rng(0x0bad_cafe_f00d_1234);
    let (n, c, h, w) = (4usize, 6usize, 5usize, 7usize);
    let s = [n, c, h, w];
    let numel = n * c * h * w;
    let (xc, xe) = pr.up(&r.vec(numel), &s);
    let (x2c, x2e) = pr.up(&r.vec(numel), &s);
    let (scc, sce) = pr.up(&r.vec(c), &[c]);
    let (shc, she) = pr.up(&r.vec(c), &[c]);
    let (savc, save) = pr.up(&r.vec(numel / 2), &[n / 2, c, h, w]);

    for relu in [false, true] {
        let (mut yc, mut ye) = pr.nan(&s);
        pr.cpu
            .channel_affine(&xc, &scc, &shc, relu, &mut yc)
            .unwrap();
        pr.emu
            .channel_affine(&xe, &sce, &she, relu, &mut ye)
            .unwrap();
        pr.check("channel_affine", &yc, &ye, 1e-6);
    }
    for saved in [false, true] {
        let (mut dc, mut de) = pr.nan(&s);
        pr.cpu
            .channel_affine_backward(saved.then_some(&savc), &x2c, &scc, &mut dc)
            .unwrap();
        pr.emu
            .channel_affine_backward(saved.then_some(&save), &x2e, &sce, &mut de)
            .unwrap();
        pr.check("channel_affine_backward", &dc, &de, 1e-6);
    }

    // training batchnorm
    let (mut rmc, mut rme) = pr.up(&r.vec(c), &[c]);
    let rv: Vec<f32> = r.vec(c).iter().map(|v| v.abs() + 0.1).collect();
    let (mut rvc, mut rve) = pr.up(&rv, &[c]);
    let (mut smc, mut sme) = pr.nan(&[c]);
    let (mut sic, mut sie) = pr.nan(&[c]);
    let (mut yc, mut ye) = pr.nan(&s);
    pr.cpu
        .batchnorm_train_forward(
            &xc,
            BnLayer::new(&scc, &shc, &mut smc, &mut sic, false),
            BnUpdate::new(1e-5, 0.1, &mut rmc, &mut rvc),
            Some(&mut yc),
        )
        .unwrap();
    pr.emu
        .batchnorm_train_forward(
            &xe,
            BnLayer::new(&sce, &she, &mut sme, &mut sie, false),
            BnUpdate::new(1e-5, 0.1, &mut rme, &mut rve),
            Some(&mut ye),
        )
        .unwrap();
    for (what, a, b) in [
        ("bn y", &yc, &ye),
        ("bn mean", &smc, &sme),
        ("bn invstd", &sic, &sie),
        ("bn rmean", &rmc, &rme),
        ("bn rvar", &rvc, &rve),
    ] {
        pr.check(what, a, b, 1e-5);
    }
    let (mut dxc, mut dxe) = pr.nan(&s);
    let (mut dgc, mut dge) = pr.nan(&[c]);
    let (mut dbc, mut dbe) = pr.nan(&[c]);
    pr.cpu
        .batchnorm_train_backward(
            &xc,
            &x2c,
            BnLayer::new(&scc, &shc, &smc, &sic, false),
            BnGrads::new(&mut dxc, &mut dgc, &mut dbc),
        )
        .unwrap();
    pr.emu
        .batchnorm_train_backward(
            &xe,
            &x2e,
            BnLayer::new(&sce, &she, &sme, &sie, false),
            BnGrads::new(&mut dxe, &mut dge, &mut dbe),
        )
        .unwrap();
    for (what, a, b) in [
        ("bn dx", &dxc, &dxe),
        ("bn dgamma", &dgc, &dge),
        ("bn dbeta", &dbc, &dbe),
    ] {
        pr.check(what, a, b, 1e-4);
    }

    // elementwise
    let (mut yc, mut ye) = pr.nan(&s);
    pr.cpu.relu(&xc, &mut yc).unwrap();
    pr.emu.relu(&xe, &mut ye).unwrap();
    pr.check("relu", &yc, &ye, 0.0);
    pr.cpu.relu_backward(&savc, &x2c, &mut yc).unwrap();
    pr.emu.relu_backward(&save, &x2e, &mut ye).unwrap();
    pr.check("relu_backward", &yc, &ye, 0.0);
    pr.cpu.add(&xc, &x2c, &mut yc).unwrap();
    pr.emu.add(&xe, &x2e, &mut ye).unwrap();
    pr.check("add", &yc, &ye, 0.0);
    pr.cpu.add_assign(&mut yc, &xc).unwrap();
    pr.emu.add_assign(&mut ye, &xe).unwrap();
    pr.check("add_assign", &yc, &ye, 0.0);
    pr.cpu.mul_assign(&mut yc, &x2c).unwrap();
    pr.emu.mul_assign(&mut ye, &x2e).unwrap();
    pr.check("mul_assign", &yc, &ye, 0.0);
    pr.cpu.sign_step(&savc, &x2c, 0.1, &mut yc).unwrap();
    pr.emu.sign_step(&save, &x2e, 0.1, &mut ye).unwrap();
    pr.check("sign_step", &yc, &ye, 0.0);

    // pooling, head, losses
    let (mut pc, mut pe) = pr.nan(&[n, c]);
    pr.cpu.global_avg_pool(&xc, &mut pc).unwrap();
    pr.emu.global_avg_pool(&xe, &mut pe).unwrap();
    pr.check("global_avg_pool", &pc, &pe, 1e-6);
    pr.cpu.global_avg_pool_backward(&pc, &mut yc).unwrap();
    pr.emu.global_avg_pool_backward(&pe, &mut ye).unwrap();
    pr.check("global_avg_pool_backward", &yc, &ye, 1e-6);
    let k = 10;
    let (lwc, lwe) = pr.up(&r.vec(k * c), &[k, c]);
    let (lbc, lbe) = pr.up(&r.vec(k), &[k]);
    let (mut lc, mut le) = pr.nan(&[n, k]);
    pr.cpu.linear_forward(&pc, &lwc, &lbc, &mut lc).unwrap();
    pr.emu.linear_forward(&pe, &lwe, &lbe, &mut le).unwrap();
    pr.check("linear_forward", &lc, &le, 1e-5);
    let labels = [3u32, 0, 9, 5];
    let (ic, ie) = (
        pr.cpu.indices_from_host(&labels).unwrap(),
        pr.emu.indices_from_host(&labels).unwrap(),
    );
    let (mut lossc, mut losse) = pr.nan(&[n]);
    let (mut dlc, mut dle) = pr.nan(&[n, k]);
    pr.cpu
        .softmax_cross_entropy(&lc, &ic, &mut lossc, &mut dlc)
        .unwrap();
    pr.emu
        .softmax_cross_entropy(&le, &ie, &mut losse, &mut dle)
        .unwrap();
    pr.check("softmax_cross_entropy loss", &lossc, &losse, 1e-5);
    pr.check("softmax_cross_entropy dlogits", &dlc, &dle, 1e-5);
    pr.cpu.linear_backward_input(&dlc, &lwc, &mut pc).unwrap();
    pr.emu.linear_backward_input(&dle, &lwe, &mut pe).unwrap();
    pr.check("linear_backward_input", &pc, &pe, 1e-5);
    let (mut dwc, mut dwe) = pr.nan(&[k, c]);
    let (mut dbc, mut dbe) = pr.nan(&[k]);
    pr.cpu
        .linear_backward_params(&pc, &dlc, &mut dwc, &mut dbc)
        .unwrap();
    pr.emu
        .linear_backward_params(&pe, &dle, &mut dwe, &mut dbe)
        .unwrap();
    pr.check("linear_backward_params dw", &dwc, &dwe, 1e-5);
    pr.check("linear_backward_params db", &dbc, &dbe, 1e-5);

    // FRG
    let (mut mc, mut me) = pr.nan(&[c]);
    pr.cpu.channel_mse(&xc, &x2c, &mut mc).unwrap();
    pr.emu.channel_mse(&xe, &x2e, &mut me).unwrap();
    pr.check("channel_mse", &mc, &me, 1e-6);
    let (mut sdc, mut sde) = pr.nan(&[3 * n, 1, h, w]);
    pr.cpu.frg_seed(&xc, &x2c, 2, &mut sdc).unwrap();
    pr.emu.frg_seed(&xe, &x2e, 2, &mut sde).unwrap();
    pr.check("frg_seed", &sdc, &sde, 1e-6);

    // SGD, copy, fill
    let (mut pc, mut pe) = pr.up(&r.vec(numel), &s);
    let (mut bc, mut be) = pr.up(&r.vec(numel), &s);
    pr.cpu
        .sgd_step(&mut pc, &xc, &mut bc, Sgd::new(0.1, 0.9, 5e-4))
        .unwrap();
    pr.emu
        .sgd_step(&mut pe, &xe, &mut be, Sgd::new(0.1, 0.9, 5e-4))
        .unwrap();
    pr.check("sgd param", &pc, &pe, 1e-6);
    pr.check("sgd buf", &bc, &be, 1e-6);
    let (mut cc, mut ce) = pr.nan(&[numel]);
    pr.cpu.copy(&x2c, &mut cc).unwrap();
    pr.emu.copy(&x2e, &mut ce).unwrap();
    pr.check("copy", &cc, &ce, 0.0);
    pr.cpu.fill(&mut cc, 0.75).unwrap();
    pr.emu.fill(&mut ce, 0.75).unwrap();
    pr.check("fill", &cc, &ce, 0.0);
}

/// The real ResNet18 (width 64) conv layer shapes at batch 1-2, forward, input gradient and weight
/// gradient, emulated kernels vs the CPU backend (both row tiles, automatic split-K).
#[test]
fn emu_vs_cpu_resnet18_layer_shapes() {
    use fmp_engine::backend::gpu::kernels::{CONV_TILE_M, CONV_TILE_M_LARGE};
    let pr = Pair::new();
    let mut r = Rng(0x5eed_0f_1a7e_7000);
    let cases = [
        ConvParams::new(1, 3, 32, 32, 64, 3, 1, 1),    // stem
        ConvParams::new(1, 64, 32, 32, 64, 3, 1, 1),   // layer1
        ConvParams::new(1, 64, 32, 32, 128, 3, 2, 1),  // layer2.0.conv1
        ConvParams::new(1, 64, 32, 32, 128, 1, 2, 0),  // layer2.0.shortcut
        ConvParams::new(1, 128, 16, 16, 128, 3, 1, 1), // layer2 conv2
        ConvParams::new(1, 128, 16, 16, 256, 3, 2, 1), // layer3.0.conv1
        ConvParams::new(1, 256, 8, 8, 256, 3, 1, 1),   // layer3 conv2
        ConvParams::new(2, 256, 8, 8, 512, 3, 2, 1),   // layer4.0.conv1
        ConvParams::new(2, 256, 8, 8, 512, 1, 2, 0),   // layer4.0.shortcut
        ConvParams::new(2, 512, 4, 4, 512, 3, 1, 1),   // layer4 conv2
    ];
    for p in cases {
        let (is, ws, os) = (p.input_shape(), p.weight_shape(), p.output_shape());
        let (xc, xe) = pr.up(&r.vec(is.iter().product()), &is);
        let (wc, we) = pr.up(&r.vec(ws.iter().product()), &ws);
        let (dyc, dye) = pr.up(&r.vec(os.iter().product()), &os);
        let (mut yc, _) = pr.nan(&os);
        pr.cpu.conv2d_forward(&p, &xc, &wc, &mut yc).unwrap();
        let (mut dxc, _) = pr.nan(&is);
        pr.cpu.conv2d_input_grad(&p, &dyc, &wc, &mut dxc).unwrap();
        let (mut dwc, mut dwe) = pr.nan(&ws);
        pr.cpu.conv2d_weight_grad(&p, &xc, &dyc, &mut dwc).unwrap();
        for tile in [CONV_TILE_M, CONV_TILE_M_LARGE] {
            let (_, mut ye) = pr.nan(&os);
            pr.emu
                .conv2d_forward_tiled(&p, &xe, &we, &mut ye, tile)
                .unwrap();
            pr.check(&format!("conv2d_forward {p:?} tile {tile}"), &yc, &ye, 1e-4);
            let (_, mut dxe) = pr.nan(&is);
            pr.emu
                .conv2d_input_grad_tiled(&p, &dye, &we, &mut dxe, tile)
                .unwrap();
            pr.check(
                &format!("conv2d_input_grad {p:?} tile {tile}"),
                &dxc,
                &dxe,
                1e-4,
            );
        }
        pr.emu.conv2d_weight_grad(&p, &xe, &dye, &mut dwe).unwrap();
        pr.check(&format!("conv2d_weight_grad {p:?}"), &dwc, &dwe, 1e-4);
    }
}

//! The benchmark counters and naive references: hand-computed FLOP/byte counts on tiny cases and on
//! PreActResNet18, and adjoint identities that tie the three conv references together.
use fmp_engine::backend::ConvParams;
use fmp_engine::bench::count::{self, Arch};
use fmp_engine::bench::reference as r;
use fmp_engine::rng::{Rng, Stream};

#[test]
fn conv_counts_tiny() {
    // 2 x 3 x 5 x 5 input, 4 filters 3x3, stride 1, pad 1 -> 2 x 4 x 5 x 5.
    let p = ConvParams::new(2, 3, 5, 5, 4, 3, 1, 1);
    let c = count::conv_forward(&p);
    assert_eq!(c.flops, 2 * 2 * 4 * 25 * 27);
    assert_eq!(c.bytes, 4 * (2 * 3 * 25 + 4 * 3 * 9 + 2 * 4 * 25));
    assert_eq!(count::conv_input_grad(&p), c);
    assert_eq!(count::conv_weight_grad(&p), c);
    // 1x1 stride-2 projection: 6x6 -> 3x3.
    let q = ConvParams::new(1, 4, 6, 6, 8, 1, 2, 0);
    assert_eq!(count::conv_forward(&q).flops, 2 * 8 * 9 * 4);
    assert_eq!(count::conv_forward(&q).bytes, 4 * (4 * 36 + 8 * 4 + 8 * 9));
    // One-hot: 6 items over 3 filters; one output channel each.
    let o = ConvParams::new(6, 3, 5, 5, 4, 3, 1, 1);
    let c = count::conv_input_grad_onehot(&o, 3);
    assert_eq!(c.flops, 2 * 6 * 25 * 3 * 9);
    assert_eq!(c.bytes, 4 * (6 * 25 + 3 * 3 * 9 + 6 * 3 * 25));
}

#[test]
fn elementwise_counts_tiny() {
    assert_eq!(
        count::channel_affine(100, 4, true),
        count::OpCost::new(300, 4 * 208)
    );
    assert_eq!(count::channel_affine(100, 4, false).flops, 200);
    // Saved batch 2 of 5-element items under a gradient batch of 20 items.
    assert_eq!(
        count::channel_affine_backward(100, 4, 10),
        count::OpCost::new(200, 4 * (200 + 4 + 10))
    );
    assert_eq!(count::relu_backward(100, 10).bytes, 4 * 210);
    assert_eq!(count::sign_step(60, 12), count::OpCost::new(300, 4 * 132));
    assert_eq!(count::frg_seed(3, 2, 16), count::OpCost::new(192, 4 * 288));
    assert_eq!(
        count::linear_forward(2, 5, 3),
        count::OpCost::new(2 * 2 * 5 * 3 + 2 * 3, 4 * (10 + 15 + 3 + 6))
    );
    assert_eq!(count::sgd_step(7), count::OpCost::new(42, 140));
}

#[test]
fn preact_resnet18_structure_and_forward() {
    let a = Arch::preact_resnet18(64, 10);
    let convs = a.convs();
    assert_eq!(convs.len(), 20);
    assert_eq!(a.feature_maps(), 4800);
    let names: Vec<&str> = convs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(&names[..3], &["conv1", "layer1.0.conv1", "layer1.0.conv2"]);
    assert_eq!(
        &names[5..8],
        &["layer2.0.shortcut.0", "layer2.0.conv1", "layer2.0.conv2"]
    );
    assert_eq!(names[19], "layer4.1.conv2");
    assert_eq!(convs[15].1, ConvParams::new(1, 256, 8, 8, 512, 1, 2, 0));
    // 555,417,600 MACs per image (the well-known 0.56 GMAC of CIFAR PreActResNet18).
    let conv_flops: u64 = convs.iter().map(|(_, p)| p.flops()).sum();
    assert_eq!(conv_flops, 2 * 555_417_600);
    // Elementwise work, summed by hand: normalise 6,144; layer1 blocks 2 x 458,752; layer2 327,680 +
    // 229,376; layer3 163,840 + 114,688; layer4 81,920 + 57,344; pool 8,192; linear 10,250. The
    // forward maps each BN+ReLU in the convs that read it: a downsampling block's bn1 output is read
    // by its shortcut and its conv1, so its 3 flops an element count twice (64x32x32, 128x16x16,
    // 256x8x8 elements).
    let twice = 3 * (65_536 + 32_768 + 16_384);
    assert_eq!(a.forward(1).flops, 2 * 555_417_600 + 1_916_938 + twice);
    // Bytes: no BN+ReLU pass of its own (16 of them), only their [C] vectors in the convs.
    assert!(a.forward(1).bytes < a.prefix_forward(19, 1).bytes);
    assert_eq!(a.forward(3).flops, 3 * a.forward(1).flops);
}

#[test]
fn prefix_and_truncated_backward() {
    let a = Arch::preact_resnet18(64, 10);
    let stem = 2 * 64 * 1024 * 27u64;
    let l1 = 2 * 64 * 1024 * 576u64;
    assert_eq!(a.prefix_forward(0, 1).flops, 6144 + stem);
    // Below the stem: only the (unmasked) normalisation backward.
    assert_eq!(
        a.backward_below(0, 1, 1),
        count::channel_affine_backward(3072, 3, 0)
    );
    // Below layer1.0.conv1: masked bn1 backward, the stem's input gradient, the normalisation.
    assert_eq!(a.backward_below(1, 1, 1).flops, 2 * 65536 + stem + 3072);
    assert_eq!(
        a.backward_below(2, 1, 1).flops,
        2 * (2 * 65536) + l1 + stem + 3072
    );
    // Below layer1.1.conv1 the stem output feeds both layer1.0.bn1 and the residual add: one extra add.
    assert_eq!(
        a.backward_below(3, 1, 1).flops,
        3 * (2 * 65536) + 2 * l1 + 65536 + stem + 3072
    );
    // The prefix of a downsampling block's conv1 does not include the shortcut that runs before it.
    let sc = a.prefix_forward(5, 1).flops;
    let c1 = a.prefix_forward(6, 1).flops;
    assert_eq!(sc - 2 * 128 * 256 * 64, c1 - 2 * 128 * 256 * 576);
    // Saved batch: reading B saved items for N gradient items.
    let b4 = a.backward_below(1, 8, 2);
    let b8 = a.backward_below(1, 8, 8);
    assert_eq!(b4.flops, b8.flops);
    assert_eq!(b8.bytes - b4.bytes, 4 * 6 * 65536);
    // The per-channel backward of the stem: seed, one-hot input gradient, normalisation.
    assert_eq!(
        a.onehot_backward(0, 1, 1, 1).flops,
        2 * 1024 + 2 * 1024 * 27 + 3072
    );
}

#[test]
fn scan_totals() {
    let a = Arch::preact_resnet18(64, 10);
    let all: Vec<usize> = (0..20).collect();
    let s = a.scan(32, &all, None);
    assert_eq!(s.channels(), 4800);
    assert_eq!(s.channel_samples(), 4800 * 32);
    let c0 = &s.per_conv[0];
    assert_eq!(c0.prefix, a.prefix_forward(0, 32) * 2);
    assert_eq!(c0.per_channel_score, a.forward(32));
    assert_eq!(
        c0.total().flops,
        c0.prefix.flops
            + 64 * (c0.per_channel_backward.flops + 5 * 32 * 3072 + a.forward(32).flops)
    );
    // The scoring forwards dominate: 4800 x 32 x forward(1) is most of the total.
    let score = 4800 * a.forward(32).flops;
    assert!(s.total().flops > score && s.total().flops < 2 * score);
    let part = a.scan(32, &[4], Some(3));
    assert_eq!(part.channels(), 3);
}

#[test]
fn conv_references_are_adjoint() {
    // <conv(x), dy> = <x, dgrad(dy)> = <w, wgrad(x, dy)>, on a strided, padded, odd-sized conv.
    for p in [
        ConvParams::new(2, 3, 7, 5, 4, 3, 2, 1),
        ConvParams::new(3, 2, 5, 5, 3, 1, 2, 0),
    ] {
        let mut rng = Rng::stream(Stream::Bench, 11);
        let len = |s: [usize; 4]| s.iter().product::<usize>();
        let x: Vec<f32> = (0..len(p.input_shape()))
            .map(|_| rng.normal_approx())
            .collect();
        let w: Vec<f32> = (0..len(p.weight_shape()))
            .map(|_| rng.normal_approx())
            .collect();
        let dy: Vec<f32> = (0..len(p.output_shape()))
            .map(|_| rng.normal_approx())
            .collect();
        let y: Vec<f64> = (0..dy.len())
            .map(|i| r::conv_forward_at(&p, &x, &w, i).value)
            .collect();
        let dx: Vec<f64> = (0..x.len())
            .map(|i| r::conv_input_grad_at(&p, &dy, &w, i).value)
            .collect();
        let dw: Vec<f64> = (0..w.len())
            .map(|i| r::conv_weight_grad_at(&p, &x, &dy, i).value)
            .collect();
        let a: f64 = y.iter().zip(&dy).map(|(a, b)| a * *b as f64).sum();
        let b: f64 = dx.iter().zip(&x).map(|(a, b)| a * *b as f64).sum();
        let c: f64 = dw.iter().zip(&w).map(|(a, b)| a * *b as f64).sum();
        assert!((a - b).abs() < 1e-9 * a.abs().max(1.0), "{a} vs {b}");
        assert!((a - c).abs() < 1e-9 * a.abs().max(1.0), "{a} vs {c}");
        // One-hot: item i of a [N*K] batch with group N uses filter first + i / N.
        let (first, group) = (1, p.n as usize);
        let k = 2;
        let po = p.with_batch(k * group);
        let plane = (p.h_out * p.w_out) as usize;
        let seed: Vec<f32> = (0..k * group * plane)
            .map(|_| rng.normal_approx())
            .collect();
        for i in [0, len(po.input_shape()) / 2, len(po.input_shape()) - 1] {
            let item = i / len(p.with_batch(1).input_shape());
            let mut full = vec![0.0f32; len(po.output_shape())];
            let f = first + item / group;
            for j in 0..plane {
                full[(item * p.c_out as usize + f) * plane + j] = seed[item * plane + j];
            }
            let want = r::conv_input_grad_at(&po, &full, &w, i).value;
            let got = r::conv_onehot_at(&po, &seed, &w, first, group, i).value;
            assert!((want - got).abs() < 1e-12, "{want} vs {got}");
        }
    }
}

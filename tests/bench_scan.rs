//! The scan benchmark: runs on a small random model on the CPU, its counts agree with the counters,
//! and the counters' conv list matches the model's.
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::bench::count::Arch;
use fmp_engine::bench::scan::{run_scan_bench, ScanBenchConfig};
use fmp_engine::bench::timing::BenchDevice;
use fmp_engine::model::{ModelConfig, PreActResNet18};

#[test]
fn arch_matches_the_model() {
    for width in [64, 8] {
        let m =
            PreActResNet18::new_random(Arc::new(CpuBackend::new()), ModelConfig::cifar10(width), 1)
                .unwrap();
        let ours: Vec<_> = m
            .convs()
            .iter()
            .map(|c| (c.name.clone(), c.params))
            .collect();
        assert_eq!(ours, Arch::preact_resnet18(width, 10).convs());
    }
}

#[test]
fn scan_bench_runs_and_counts() {
    let dev = BenchDevice::cpu();
    let cfg = ScanBenchConfig {
        width: 8,
        samples: 3,
        layers: Some(6),
        channels: Some(3),
        chunk: Some(2),
        ..Default::default()
    };
    let mut lines = 0;
    let rep = run_scan_bench(&dev, &cfg, |_| lines += 1).unwrap();
    assert_eq!(lines, 6);
    assert_eq!(rep.per_conv.len(), 6);
    assert_eq!(rep.channels_timed, 18);
    let arch = Arch::preact_resnet18(8, 10);
    let all: Vec<usize> = (0..6).collect();
    assert_eq!(rep.scan_channels, 8 + 4 * 8 + 16); // conv1, layer1 x4, layer2.0.shortcut
    assert_eq!(
        rep.counted_full_scan_flops,
        arch.scan(3, &all, None).total().flops
    );
    for r in &rep.per_conv {
        assert_eq!(r.scores.len(), 3);
        assert!(r
            .scores
            .iter()
            .all(|s| (0.0..=1.0).contains(s) && (s * 3.0).fract() == 0.0));
        assert_eq!(r.counted, arch.scan(3, &[r.conv], Some(3)).total());
        assert!(r.prefix_s > 0.0 && r.channels_s > 0.0);
        assert!(
            (r.projected_s - (r.prefix_s + r.out_channels as f64 * r.per_channel_s)).abs() < 1e-12
        );
    }
    assert!(rep.channel_samples_per_s > 0.0 && rep.achieved_gflops > 0.0);
    assert!(rep.projected_full_scan_s > rep.per_conv.iter().map(|r| r.prefix_s).sum::<f64>());
}

#[test]
fn scan_bench_profile_records_the_chunk_step_by_op() {
    let dev = BenchDevice::cpu();
    let cfg = ScanBenchConfig {
        width: 8,
        samples: 3,
        layers: Some(3),
        channels: Some(2),
        chunk: Some(2),
        profile: true,
        ..Default::default()
    };
    let rep = run_scan_bench(&dev, &cfg, |_| {}).unwrap();
    let prof = rep.profile.as_ref().expect("profile requested");
    let calls = |op: &str| -> u64 { prof.iter().filter(|e| e.op == op).map(|e| e.calls).sum() };
    // per conv one chunk of 2 channels: one one-hot gradient, one sign step, one scoring forward
    assert_eq!(calls("conv_dgrad_onehot"), 3);
    assert_eq!(calls("sign_step"), 3);
    assert_eq!(calls("linear"), 3);
    // the scoring forward runs all 20 convs once per chunk: the stem on the image, the other 19 on
    // relu(bn(x)) applied as they read it (no eval batchnorm pass of its own)
    assert_eq!(calls("conv_fwd"), 3);
    assert_eq!(calls("conv_fwd(bn)"), 3 * 19);
    assert_eq!(calls("bn_affine+relu"), 0);
    let onehot_flops: u64 = prof
        .iter()
        .filter(|e| e.op == "conv_dgrad_onehot")
        .map(|e| e.counted.flops)
        .sum();
    assert!(onehot_flops > 0);
    let recorded: f64 = prof.iter().map(|e| e.seconds).sum();
    let chunks: f64 = rep.per_conv.iter().map(|r| r.channels_s).sum();
    assert!(recorded <= chunks * 1.001 + 1e-6, "{recorded} > {chunks}");
    let table = fmp_engine::bench::profile::profile_table(prof, rep.ceilings.peak_flops);
    assert!(table.contains("conv_dgrad_onehot") && table.contains("## by op and shape"));
    // without --profile nothing is recorded
    let plain = run_scan_bench(
        &dev,
        &ScanBenchConfig {
            profile: false,
            ..cfg
        },
        |_| {},
    )
    .unwrap();
    assert!(plain.profile.is_none());
}

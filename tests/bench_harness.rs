//! The kernel benchmark harness: the whole suite runs in quick mode on the CPU backend with every
//! check passing, the JSON report round-trips, and a corrupted output fails its check.
use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::bench::device::Ceilings;
use fmp_engine::bench::kernels::{
    cases, check_outputs, run_once, run_suite, write_json, SuiteConfig,
};
use fmp_engine::bench::timing::BenchDevice;
use fmp_engine::bench::Repeats;
use fmp_engine::rng::{Rng, Stream};

fn tiny() -> SuiteConfig {
    SuiteConfig {
        batch: 1,
        onehot_filters: 2,
        repeats: Repeats::new(0, 1, 0.1),
        check_samples: 8,
        ..SuiteConfig::quick()
    }
}

fn fake_ceilings() -> Ceilings {
    Ceilings {
        device: "test".into(),
        peak_flops: 1e11,
        peak_bytes_per_s: 1e10,
        source: "test".into(),
    }
}

#[test]
fn quick_suite_runs_and_checks_on_cpu() {
    let dev = BenchDevice::cpu();
    let cfg = tiny();
    let n_cases = cases(&cfg).len();
    // 11 distinct conv shapes x 4 and the 10 after a BN x 2 (fwd and wgrad of relu(bn(x))),
    // normalise, 4 stages x 14 (training BN with and without its fused ReLU, statistics only), 6
    // head ops, sign step, sgd.
    assert_eq!(n_cases, 44 + 20 + 1 + 56 + 6 + 2);
    let rep = run_suite(&dev, None, &cfg, fake_ceilings(), |_| {});
    assert_eq!(rep.results.len(), n_cases);
    for r in &rep.results {
        assert!(r.error.is_none(), "{}: {:?}", r.name, r.error);
        let c = r.check.as_ref().expect("checked");
        assert!(c.passed && c.points > 0, "{}: {c:?}", r.name);
        let t = r.time.as_ref().expect("timed");
        assert!(t.median_s > 0.0 && t.repeats == 1);
        assert!(r.flops > 0 && r.bytes > 0);
        let fr = r.frac_roofline.unwrap();
        assert!(fr > 0.0 && fr.is_finite());
    }
    assert!(rep.furthest_from_roofline().is_some());
    let dir = std::env::temp_dir().join(format!("fmp-bench-test-{}", std::process::id()));
    let path = dir.join("k.json");
    write_json(&path, &rep).unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), n_cases);
    assert_eq!(v["config"]["batch"], 1);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupted_outputs_fail_the_check() {
    let be = CpuBackend::new();
    let mut cfg = tiny();
    for want in [
        "conv_fwd layer2.0.conv1",
        "conv_wgrad conv1",
        "add 128x16x16",
        "bn_train_bwd 256x8x8",
        "softmax_xent",
    ] {
        cfg.filter = Some(want.into());
        let cs = cases(&cfg);
        let case = &cs[0];
        let mut rng = Rng::stream(Stream::Bench, 3);
        let h = case.gen(&mut rng);
        let got = run_once(&be as &dyn Backend, case, &h).unwrap();
        let (points, worst) = check_outputs(case, &h, &got, &mut Rng::stream(Stream::Bench, 4), 8);
        assert!(points > 0 && worst <= 1.0, "{}: worst {worst}", case.name);
        // Element 0 of the last output is always compared.
        let mut bad = got.clone();
        let last = bad.len() - 1;
        bad[last][0] += 0.02 * (1.0 + bad[last][0].abs());
        let (_, worst) = check_outputs(case, &h, &bad, &mut Rng::stream(Stream::Bench, 4), 8);
        assert!(
            worst > 1.0,
            "{}: corrupted output passed (worst {worst})",
            case.name
        );
    }
}

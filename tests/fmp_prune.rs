//! Pruning: exactly the selected filters and their `pruned_bn` gammas become zero and nothing else changes;
//! reports that do not match the model are clear errors; the `--mask` sidecar round-trips and keeps pruned
//! filters at zero through fine-tuning.
use std::sync::Arc;

use fmp_engine::backend::cpu::CpuBackend;
use fmp_engine::backend::Backend;
use fmp_engine::fmp::finetune::{finetune, FinetuneOptions};
use fmp_engine::fmp::prune::{apply, selections, PruneMask};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::select::{
    ConvReport, ReportModel, ReportSettings, ReportTotals, ScanParams, ScanReport, SCAN_SCHEMA,
};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::{ModelConfig, PreActResNet18};

fn model(width: usize, seed: u64) -> PreActResNet18 {
    let be: Arc<dyn Backend> = Arc::new(CpuBackend::new());
    PreActResNet18::new_random(be, ModelConfig::cifar10(width), seed).unwrap()
}

/// A report for `m` selecting channel (index*3 + 1) % C and, in every 4th conv, also channel 0.
fn report_for(m: &PreActResNet18) -> ScanReport {
    let convs: Vec<ConvReport> = m
        .convs()
        .iter()
        .map(|c| {
            let ch = c.params.c_out as usize;
            let mut selected = vec![(c.index * 3 + 1) % ch];
            if c.index % 4 == 0 && !selected.contains(&0) {
                selected.push(0);
            }
            ConvReport {
                index: c.index,
                name: c.name.clone(),
                channels: ch,
                scores: vec![1.0; ch],
                true_prob: vec![1.0; ch],
                margin: Vec::new(),
                selected,
                stability: None,
            }
        })
        .collect();
    let selected = convs.iter().map(|c| c.selected.len()).sum();
    ScanReport {
        schema: SCAN_SCHEMA,
        model: ReportModel {
            path: "test".into(),
            width: m.config().width,
            num_classes: 10,
        },
        settings: ReportSettings {
            params: ScanParams {
                samples: 1,
                p: 1,
                alpha: 0.0,
                eps: 0.0,
                seed: 0,
                reference_order: false,
            },
            data: String::new(),
            device: "cpu".into(),
            chunk_channels: 1,
            score: "acc".into(),
            repeats: 1,
            aggregate: "mean".into(),
            steps: 1,
        },
        totals: ReportTotals {
            convs: convs.len(),
            feature_maps: convs.iter().map(|c| c.channels).sum(),
            selected,
        },
        convs,
        seconds: 0.0,
        stability: None,
        trigger: None,
    }
}

#[test]
fn prune_zeroes_exactly_the_selected_filters_and_gammas() {
    let mut m = model(8, 3);
    let before = m.to_state_dict().unwrap();
    let report = report_for(&m);
    let pairs = selections(&m, &report, "r.json".as_ref()).unwrap();
    assert_eq!(pairs.len(), report.totals.selected);
    apply(&mut m, &pairs).unwrap();
    let after = m.to_state_dict().unwrap();
    // expected zero positions: (tensor name, element range)
    let mut zeroed: Vec<(String, usize, usize)> = Vec::new();
    for &(ci, ch) in &pairs {
        let info = &m.convs()[ci];
        let per = before
            .get(&format!("{}.weight", info.name))
            .unwrap()
            .data
            .len()
            / info.params.c_out as usize;
        zeroed.push((format!("{}.weight", info.name), ch * per, (ch + 1) * per));
        if let Some(bn) = &info.pruned_bn {
            zeroed.push((format!("{bn}.weight"), ch, ch + 1));
        }
    }
    assert!(
        zeroed.iter().any(|z| z.0.contains("bn2")),
        "some conv1 prunes its block's bn2 gamma"
    );
    let mut changed = 0;
    for name in before.keys() {
        let (a, b) = (
            &before.get(name).unwrap().data,
            &after.get(name).unwrap().data,
        );
        assert_eq!(a.len(), b.len());
        for i in 0..a.len() {
            let must_zero = zeroed
                .iter()
                .any(|(n, lo, hi)| n == name && (*lo..*hi).contains(&i));
            if must_zero {
                assert_eq!(b[i], 0.0, "{name}[{i}] should be zero");
                changed += (a[i] != 0.0) as usize;
            } else {
                assert_eq!(a[i].to_bits(), b[i].to_bits(), "{name}[{i}] changed");
            }
        }
    }
    assert!(changed > 100, "only {changed} values changed");
    assert_eq!(after.keys().count(), before.keys().count());
}

#[test]
fn mismatched_reports_are_clear_errors() {
    let m = model(8, 3);
    let path = std::path::Path::new("scan.json");
    let err = |r: &ScanReport| selections(&m, r, path).unwrap_err().to_string();
    // a report made for a width-16 model
    let e = err(&report_for(&model(16, 1)));
    assert!(
        e.contains("scan.json") && e.contains("channels in the report") && e.contains("this model"),
        "{e}"
    );
    let mut r = report_for(&m);
    r.convs[3].name = "layer9.0.conv1".into();
    assert!(err(&r).contains("'layer9.0.conv1' of the report is not in the model"));
    let mut r = report_for(&m);
    r.convs.pop();
    assert!(err(&r).contains("19 convs, the model has 20"));
    let mut r = report_for(&m);
    r.convs[2].selected.push(8);
    assert!(err(&r).contains("selected channel 8 out of range"));
    let mut r = report_for(&m);
    r.convs[5].name = r.convs[6].name.clone();
    assert!(err(&r).contains("twice"));
    // a report file that is not a report, and one with inconsistent lengths
    let dir = std::env::temp_dir().join(format!("fmp-prune-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.json");
    std::fs::write(&bad, "{\"model\": 1}").unwrap();
    assert!(ScanReport::load(&bad)
        .unwrap_err()
        .to_string()
        .contains("not a scan report"));
    let mut r = report_for(&m);
    r.convs[0].scores.pop();
    let p = dir.join("short.json");
    r.save(&p).unwrap();
    assert!(ScanReport::load(&p)
        .unwrap_err()
        .to_string()
        .contains("7 scores"));
    let ok = dir.join("ok.json");
    report_for(&m).save(&ok).unwrap();
    assert_eq!(ScanReport::load(&ok).unwrap(), report_for(&m));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mask_keeps_pruned_filters_at_zero_through_finetuning() {
    let mut m = model(4, 5);
    let report = report_for(&m);
    let pairs = selections(&m, &report, "r.json".as_ref()).unwrap();
    apply(&mut m, &pairs).unwrap();
    // sidecar round trip
    let dir = std::env::temp_dir().join(format!("fmp-mask-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let side = PruneMask::sidecar(&dir.join("w.safetensors"));
    assert!(side.to_string_lossy().ends_with("w.safetensors.mask.json"));
    let mask = PruneMask::from_pairs(&m, &pairs);
    mask.save(&side).unwrap();
    let mut back = PruneMask::load(&side).unwrap().pairs(&m, &side).unwrap();
    back.sort_unstable();
    assert_eq!(back, pairs);
    std::fs::remove_dir_all(&dir).unwrap();
    // a short fine-tuning run with the mask: pruned filters stay exactly zero, others move
    m.set_masks(&back).unwrap();
    let mut rng = Rng::new(1);
    let data = LabeledImages {
        pixels: (0..40 * 3072).map(|_| rng.below(256) as u8).collect(),
        labels: (0..40).map(|i| i % 10).collect(),
        num_classes: 10,
    };
    let before = m.to_state_dict().unwrap();
    let mut opts = FinetuneOptions::spec(true);
    opts.ratio = 1.0;
    opts.sgd.epochs = 1;
    opts.sgd.batch = 16;
    opts.sgd.lr = 0.1;
    finetune(&mut m, &data, &opts, &mut |_| {}, None).unwrap();
    let after = m.to_state_dict().unwrap();
    for &(ci, ch) in &pairs {
        let info = &m.convs()[ci];
        let w = &after.get(&format!("{}.weight", info.name)).unwrap().data;
        let per = w.len() / info.params.c_out as usize;
        assert!(
            w[ch * per..(ch + 1) * per].iter().all(|&v| v == 0.0),
            "{} filter {ch} revived",
            info.name
        );
        if let Some(bn) = &info.pruned_bn {
            assert_eq!(after.get(&format!("{bn}.weight")).unwrap().data[ch], 0.0);
        }
    }
    let moved = before
        .keys()
        .filter(|k| k.ends_with("conv2.weight"))
        .filter(|k| before.get(k).unwrap().data != after.get(k).unwrap().data)
        .count();
    assert!(moved > 0, "fine-tuning changed nothing");
}

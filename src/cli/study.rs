//! `fmp-engine study`: train backdoored models in-engine (every attack x training seed), run every defense
//! over several scan seeds, and write a Markdown table and JSON: mean and spread of Acc / ASR / RA (after
//! pruning alone and after fine-tuning), the defense time, how much two scan seeds' selections share, and
//! the trigger diagnostic of each selection. Every size is a flag, so the same command runs reduced on a
//! CPU and at full size on a GPU.
//!
//! FMP recipes are given as `NAME:key=value,...` (`--fmp`, repeatable) with keys samples, score (acc |
//! prob | margin), repeats, steps and aggregate (mean | median); `paper` is 32 samples, acc, 1 repeat,
//! 1 step. Each defense uses the scan seed s for its own randomness (FMP's images and noise, the random
//! maps, Fine-Pruning's images) and as the fine-tuning seed (`--ft-seed`), so the spread over seeds
//! includes the fine-tuning's. CLP is data-free and deterministic: it runs once per model.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use fmp_engine::data::{DatasetKind, Split};
use fmp_engine::fmp::attacks::{Attack, AttackKind};
use fmp_engine::fmp::controls::{trigger_overlap_pairs, trigger_sensitivity, TriggerDiagnostic};
use fmp_engine::fmp::metrics::{evaluate, Metrics};
use fmp_engine::fmp::pipeline::{eval_batch, load_model, load_split};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::stability::{Aggregate, ScoreKind};
use fmp_engine::fmp::train::{train_backdoored, BackdoorOptions};
use fmp_engine::fmp::write_atomic;
use fmp_engine::model::{ModelConfig, PreActResNet18};
use fmp_engine::{Error, Result};

use super::check::{int_in, real_in, MAX_BATCH, MAX_EPOCHS, MAX_IMAGES, MAX_WIDTH};
use super::common::{cifar10_train, DeviceArgs};
use super::finetune::FinetuneArgs;
use super::methods::{run_method, Ctx, Method};
use super::scan::{Recipe as Named, ScanArgs};

/// One FMP recipe: a name and scan settings (seed and p are filled in per run).
#[derive(Clone, Debug, Serialize)]
pub struct Recipe {
    pub name: String,
    pub samples: usize,
    pub score: String,
    pub repeats: usize,
    pub steps: usize,
    pub aggregate: String,
}

impl Recipe {
    pub fn scan_args(&self, seed: u64, p: Option<usize>) -> Result<ScanArgs> {
        let mut s = ScanArgs::paper(seed, p);
        s.samples_flag = Some(self.samples);
        s.score_flag = Some(self.score.parse()?);
        s.repeats_flag = Some(self.repeats);
        s.steps = self.steps;
        s.aggregate = self.aggregate.parse()?;
        Ok(s)
    }
}

impl std::str::FromStr for Recipe {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |m: String| Error::InvalidArgument(format!("--fmp '{s}': {m}"));
        let (name, rest) = s.split_once(':').unwrap_or((s, ""));
        if name.is_empty() {
            return Err(bad(
                "give a name before ':', e.g. margin4:score=margin,repeats=4".into(),
            ));
        }
        // A named recipe of `--recipe` (paper, margin4) starts from its settings; any other name
        // from the paper's.
        let base = <Named as clap::ValueEnum>::from_str(name, true).unwrap_or(Named::Paper);
        let mut r = Recipe {
            name: name.into(),
            samples: base.samples(),
            score: base.score().name().into(),
            repeats: base.repeats(),
            steps: 1,
            aggregate: "mean".into(),
        };
        for kv in rest.split(',').filter(|t| !t.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("'{kv}' is not key=value")))?;
            // the kind's own name for any spelling it accepts
            let canonical = |p: Result<&str>| p.map(String::from).map_err(|e| bad(e.to_string()));
            let num = |v: &str| -> Result<usize> {
                match v.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(bad(format!("{k}={v}: expected a whole number >= 1"))),
                }
            };
            match k {
                "samples" => r.samples = num(v)?,
                "repeats" => r.repeats = num(v)?,
                "steps" => r.steps = num(v)?,
                "score" => r.score = canonical(v.parse::<ScoreKind>().map(|k| k.name()))?,
                "aggregate" => r.aggregate = canonical(v.parse::<Aggregate>().map(|a| a.name()))?,
                _ => {
                    return Err(bad(format!(
                        "unknown key '{k}' (samples, score, repeats, steps, aggregate)"
                    )))
                }
            }
        }
        Ok(r)
    }
}

fn list<T: std::str::FromStr<Err = Error>>(s: &str) -> Result<Vec<T>> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().parse())
        .collect()
}

fn seeds(s: &str) -> Result<Vec<u64>> {
    s.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.trim().parse::<u64>().map_err(|_| {
                Error::InvalidArgument(format!("seed list '{s}': '{t}' is not a whole number"))
            })
        })
        .collect()
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// CIFAR-10 folder [default: $FMP_DATA, ../shared/data, the engine's cache].
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Attacks, comma-separated.
    #[arg(long, default_value = "badnets,blended")]
    pub attacks: String,
    /// Training seeds, comma-separated (one model per attack and seed).
    #[arg(long, default_value = "0,1")]
    pub train_seeds: String,
    /// Scan seeds, comma-separated (every defense runs once per seed; CLP once).
    #[arg(long, default_value = "0,1,2")]
    pub scan_seeds: String,
    /// Defenses, comma-separated: fmp, random, finetune-only, fine-pruning, clp, oracle (control: the
    /// maps most sensitive to the trigger, FMP's counts: what the right selection at FMP's budget does).
    #[arg(
        long,
        default_value = "fmp,random,finetune-only,fine-pruning,clp,oracle"
    )]
    pub methods: String,
    /// FMP recipes `NAME:key=value,...` (repeatable): NAME paper or margin4 starts from that
    /// `--recipe`'s settings, any other name from the paper's [default: paper and margin4].
    #[arg(long = "fmp")]
    pub recipes: Vec<Recipe>,
    /// Base width of the trained models.
    #[arg(long, default_value_t = 16, value_parser = int_in::<usize>(1, MAX_WIDTH))]
    pub width: usize,
    /// Training images (the first N of the training split; the defender's pool is the whole split).
    #[arg(long, default_value_t = 4000, value_parser = int_in::<usize>(2, MAX_IMAGES))]
    pub train_images: usize,
    #[arg(long, default_value_t = 4, value_parser = int_in::<usize>(1, MAX_EPOCHS))]
    pub epochs: usize,
    #[arg(long, default_value_t = 0.02, value_parser = real_in(0.0, true, 10.0, false))]
    pub lr: f32,
    #[arg(long, default_value_t = 32, value_parser = int_in::<usize>(2, MAX_BATCH))]
    pub batch: usize,
    /// Training augmentation (RandomCrop + flip).
    #[arg(long)]
    pub augment: bool,
    /// Test images for Acc / ASR / RA (the first N).
    #[arg(long, default_value_t = 2000, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub test_images: usize,
    /// Fine-tuning epochs (all fine-tuning defenses).
    #[arg(long, default_value_t = 10, value_parser = int_in::<usize>(1, MAX_EPOCHS))]
    pub ft_epochs: usize,
    /// Fine-tuning fraction of the training split, class-balanced.
    #[arg(long, default_value_t = 0.1, value_parser = real_in(0.0, true, 1.0, false))]
    pub ft_ratio: f32,
    /// Clean images for the trigger diagnostic and Fine-Pruning's activity.
    #[arg(long, default_value_t = 256, value_parser = int_in::<usize>(1, MAX_IMAGES))]
    pub probe_images: usize,
    /// CLP threshold u.
    #[arg(long, default_value_t = 3.0, value_parser = real_in(-100.0, false, 100.0, false))]
    pub clp_u: f32,
    /// Trained models (reused when present with the same name) and scan reports.
    #[arg(long, default_value = "fmp-study")]
    pub workdir: PathBuf,
    /// Markdown results.
    #[arg(long, default_value = "docs/study/results.md")]
    pub out: PathBuf,
    /// JSON results.
    #[arg(long, default_value = "docs/study/results.json")]
    pub json: PathBuf,
    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Clone, Debug, Serialize)]
struct Row {
    defense: String,
    scan_seed: Option<u64>,
    pruned: usize,
    after_prune: Option<Metrics>,
    after: Option<Metrics>,
    seconds: f64,
    trigger: Option<TriggerDiagnostic>,
    #[serde(skip)]
    selection: Vec<(usize, usize)>,
}

#[derive(Clone, Debug, Serialize)]
struct ModelResult {
    attack: String,
    train_seed: u64,
    weights: String,
    train_seconds: f64,
    before: Metrics,
    rows: Vec<Row>,
    /// Per defense: mean over pairs of scan seeds of the share of selected maps in common.
    seed_overlap: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
struct Stat {
    mean: f64,
    sd: f64,
    n: usize,
}

fn stat(v: &[f64]) -> Option<Stat> {
    if v.is_empty() {
        return None;
    }
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(Stat { mean, sd, n })
}

#[derive(Clone, Debug, Serialize)]
struct Summary {
    attack: String,
    defense: String,
    acc: Option<Stat>,
    asr: Option<Stat>,
    ra: Option<Stat>,
    prune_acc: Option<Stat>,
    prune_asr: Option<Stat>,
    seconds: Option<Stat>,
    seed_overlap: Option<Stat>,
    trigger_hits: Option<Stat>,
    trigger_chance: Option<Stat>,
    pruned: Option<Stat>,
}

#[derive(Serialize)]
struct StudyJson<'a> {
    command: String,
    settings: serde_json::Value,
    models: &'a [ModelResult],
    summary: &'a [Summary],
    seconds: f64,
}

fn share(a: &[(usize, usize)], b: &[(usize, usize)]) -> f64 {
    if a.is_empty() {
        return 1.0;
    }
    a.iter().filter(|x| b.contains(x)).count() as f64 / a.len() as f64
}

pub fn run(a: Args) -> Result<()> {
    // (the folders of --out and --json are created below, so only a path that is a folder is refused)
    for (f, flag) in [(&a.out, "--out"), (&a.json, "--json")] {
        if f.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{flag} {}: is a folder; give a file name",
                f.display()
            )));
        }
    }
    if a.workdir.exists() && !a.workdir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--workdir {}: exists and is not a folder",
            a.workdir.display()
        )));
    }
    let t_all = Instant::now();
    let attacks: Vec<AttackKind> = list(&a.attacks)?;
    let train_seeds = seeds(&a.train_seeds)?;
    let scan_seeds = seeds(&a.scan_seeds)?;
    let methods: Vec<Method> = list(&a.methods)?;
    if attacks.is_empty() || train_seeds.is_empty() || scan_seeds.is_empty() || methods.is_empty() {
        return Err(Error::InvalidArgument(
            "--attacks, --train-seeds, --scan-seeds and --methods each need at least one entry"
                .into(),
        ));
    }
    let recipes = if a.recipes.is_empty() {
        vec!["paper".parse::<Recipe>()?, "margin4".parse()?]
    } else {
        a.recipes.clone()
    };
    let backend = a.device.backend()?;
    let (dir, pool) = cifar10_train(a.data.as_deref(), "study")?;
    let kind = DatasetKind::Cifar10;
    let test = load_split(&dir, Split::Test)?.0.truncate(a.test_images);
    let train = pool.clone().truncate(a.train_images);
    std::fs::create_dir_all(&a.workdir).map_err(|e| Error::io(&a.workdir, e))?;
    for f in [&a.out, &a.json] {
        if let Some(d) = f.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
    }
    let command: Vec<String> = std::env::args().collect();
    let command = command.join(" ");
    println!(
        "study: {} x {} training seeds, width {}, {} training images x {} epochs, {} test images, scan seeds {:?}, on {}",
        a.attacks, train_seeds.len(), a.width, train.len(), a.epochs, test.len(), scan_seeds, backend.name()
    );
    let mut results: Vec<ModelResult> = Vec::new();
    // seeds outer, attacks inner: an interrupted study still covers every attack
    for &ts in &train_seeds {
        for &ak in &attacks {
            let attack = Attack::new(ak, 0);
            let weights = a.workdir.join(format!(
                "{ak}-w{}-n{}-e{}-s{ts}.safetensors",
                a.width,
                train.len(),
                a.epochs
            ));
            let t0 = Instant::now();
            let model = if weights.is_file() {
                println!("== {ak}, training seed {ts}: reusing {}", weights.display());
                load_model(backend.clone(), &weights, kind)?
            } else {
                println!("== {ak}, training seed {ts}: training");
                let mut m =
                    PreActResNet18::new_random(backend.clone(), ModelConfig::cifar10(a.width), ts)?;
                let mut opts = BackdoorOptions::backdoorbench(Some(ak), a.epochs, a.augment);
                opts.sgd.lr = a.lr;
                opts.sgd.batch = a.batch;
                opts.sgd.seed = ts;
                let print = &mut |s: &_| super::interrupt::print_epoch(s, false);
                train_backdoored(&mut m, &train, &opts, print, None)?;
                m.save(&weights)?;
                m
            };
            let train_seconds = t0.elapsed().as_secs_f64();
            let before = evaluate(&model, &test, Some(&attack), eval_batch(backend.as_ref()))?;
            println!(
                "  backdoored: Acc {:.2} ASR {:.2} RA {:.2}",
                100.0 * before.acc,
                100.0 * before.asr.unwrap_or(0.0),
                100.0 * before.ra.unwrap_or(0.0)
            );
            let mut idx: Vec<usize> = (0..pool.len()).collect();
            Rng::derive(ts, "study-probe-images").shuffle(&mut idx);
            idx.truncate(a.probe_images.max(1));
            let probe = pool.subset(&idx);
            let sens = trigger_sensitivity(&model, &probe, &attack, 64)?;
            let mut rows: Vec<Row> = Vec::new();
            let mut jobs: Vec<(String, Method, Option<&Recipe>, Option<u64>)> = Vec::new();
            for &m in &methods {
                match m {
                    Method::Fmp => {
                        for r in &recipes {
                            for &s in &scan_seeds {
                                jobs.push((format!("fmp-{}", r.name), m, Some(r), Some(s)));
                            }
                        }
                    }
                    Method::Clp => jobs.push(("clp".into(), m, None, None)),
                    _ => {
                        for &s in &scan_seeds {
                            jobs.push((m.name().into(), m, None, Some(s)));
                        }
                    }
                }
            }
            let p = Some(a.width.min(64));
            for (name, m, recipe, seed) in jobs {
                let s = seed.unwrap_or(0);
                println!("-- {ak} s{ts}: {name}, seed {s}");
                let scan = match recipe {
                    Some(r) => r.scan_args(s, p)?,
                    None => ScanArgs::paper(s, p),
                };
                let ft = FinetuneArgs {
                    epochs: a.ft_epochs,
                    ratio: a.ft_ratio,
                    lr: 0.01,
                    batch: 256,
                    momentum: 0.9,
                    weight_decay: 0.0,
                    eta_min: 1e-4,
                    ft_seed: s,
                };
                let report_path = a
                    .workdir
                    .join(format!("{ak}-w{}-s{ts}-{name}-seed{s}.scan.json", a.width));
                let ctx = Ctx {
                    clean: &pool,
                    kind,
                    data_dir: &dir,
                    weights: &weights,
                    scan: &scan,
                    ft: &ft,
                    mask: false,
                    backend: &backend,
                    test: Some((&test, Some(&attack))),
                    seed: s,
                    clp_u: a.clp_u,
                    fp_images: a.probe_images,
                    report_path: Some(&report_path),
                };
                let (_, out) = run_method(&model, m, &ctx)?;
                let trigger = if m.prunes() {
                    Some(trigger_overlap_pairs(
                        &out.selection,
                        &sens,
                        &attack,
                        probe.len(),
                    )?)
                } else {
                    None
                };
                if let Some(x) = &out.after {
                    println!(
                        "   -> Acc {:.2} ASR {:.2} RA {:.2} ({:.0} s)",
                        100.0 * x.acc,
                        100.0 * x.asr.unwrap_or(0.0),
                        100.0 * x.ra.unwrap_or(0.0),
                        out.seconds
                    );
                }
                rows.push(Row {
                    defense: name,
                    scan_seed: seed,
                    pruned: out.pruned,
                    after_prune: out.after_prune.filter(|_| m.prunes()),
                    after: out.after,
                    seconds: out.seconds,
                    trigger,
                    selection: out.selection,
                });
            }
            let mut seed_overlap = BTreeMap::new();
            let names: Vec<String> = {
                let mut n: Vec<String> = rows.iter().map(|r| r.defense.clone()).collect();
                n.dedup();
                n
            };
            for n in names {
                let sel: Vec<&Vec<(usize, usize)>> = rows
                    .iter()
                    .filter(|r| r.defense == n && !r.selection.is_empty())
                    .map(|r| &r.selection)
                    .collect();
                let mut v = Vec::new();
                for i in 0..sel.len() {
                    for j in i + 1..sel.len() {
                        v.push(share(sel[i], sel[j]));
                    }
                }
                if !v.is_empty() {
                    seed_overlap.insert(n, v.iter().sum::<f64>() / v.len() as f64);
                }
            }
            results.push(ModelResult {
                attack: ak.name().into(),
                train_seed: ts,
                weights: weights.display().to_string(),
                train_seconds,
                before,
                rows,
                seed_overlap,
            });
            // write what is done so far, so an interrupted study keeps its finished models
            write_outputs(
                &a,
                &command,
                &recipes,
                &results,
                t_all.elapsed().as_secs_f64(),
            )?;
        }
    }
    println!(
        "study done in {:.0} s: {} and {}",
        t_all.elapsed().as_secs_f64(),
        a.out.display(),
        a.json.display()
    );
    Ok(())
}

/// The distinct values in order of first appearance (models run attack-major within each training
/// seed, so an attack recurs after the others).
fn distinct<'a>(it: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for v in it {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

fn summarize(results: &[ModelResult]) -> Vec<Summary> {
    let mut out = Vec::new();
    for at in distinct(results.iter().map(|r| r.attack.as_str())) {
        let models: Vec<&ModelResult> = results.iter().filter(|r| r.attack == at).collect();
        let mut defs: Vec<String> = vec!["before".into()];
        for m in &models {
            for r in &m.rows {
                if !defs.contains(&r.defense) {
                    defs.push(r.defense.clone());
                }
            }
        }
        for d in defs {
            let pick = |f: &dyn Fn(&Row) -> Option<f64>| -> Option<Stat> {
                let v: Vec<f64> = models
                    .iter()
                    .flat_map(|m| m.rows.iter().filter(|r| r.defense == d).filter_map(f))
                    .collect();
                stat(&v)
            };
            let s = if d == "before" {
                let b = |f: &dyn Fn(&Metrics) -> Option<f64>| {
                    stat(
                        &models
                            .iter()
                            .filter_map(|m| f(&m.before))
                            .collect::<Vec<_>>(),
                    )
                };
                Summary {
                    attack: at.into(),
                    defense: d.clone(),
                    acc: b(&|m| Some(m.acc)),
                    asr: b(&|m| m.asr),
                    ra: b(&|m| m.ra),
                    prune_acc: None,
                    prune_asr: None,
                    seconds: stat(&models.iter().map(|m| m.train_seconds).collect::<Vec<_>>()),
                    seed_overlap: None,
                    trigger_hits: None,
                    trigger_chance: None,
                    pruned: None,
                }
            } else {
                Summary {
                    attack: at.into(),
                    defense: d.clone(),
                    acc: pick(&|r| r.after.map(|m| m.acc)),
                    asr: pick(&|r| r.after.and_then(|m| m.asr)),
                    ra: pick(&|r| r.after.and_then(|m| m.ra)),
                    prune_acc: pick(&|r| r.after_prune.map(|m| m.acc)),
                    prune_asr: pick(&|r| r.after_prune.and_then(|m| m.asr)),
                    seconds: pick(&|r| Some(r.seconds)),
                    seed_overlap: stat(
                        &models
                            .iter()
                            .filter_map(|m| m.seed_overlap.get(&d).copied())
                            .collect::<Vec<_>>(),
                    ),
                    trigger_hits: pick(&|r| r.trigger.as_ref().map(|t| t.hits as f64)),
                    trigger_chance: pick(&|r| r.trigger.as_ref().map(|t| t.chance)),
                    pruned: pick(&|r| Some(r.pruned as f64)),
                }
            };
            out.push(s);
        }
    }
    out
}

fn pct(s: &Option<Stat>) -> String {
    match s {
        Some(s) if s.n > 1 => format!("{:.1} ± {:.1}", 100.0 * s.mean, 100.0 * s.sd),
        Some(s) => format!("{:.1}", 100.0 * s.mean),
        None => "-".into(),
    }
}

fn num(s: &Option<Stat>, digits: usize) -> String {
    match s {
        Some(s) => format!("{:.*}", digits, s.mean),
        None => "-".into(),
    }
}

fn write_outputs(
    a: &Args,
    command: &str,
    recipes: &[Recipe],
    results: &[ModelResult],
    seconds: f64,
) -> Result<()> {
    let summary = summarize(results);
    let settings = serde_json::json!({
        "width": a.width,
        "train_images": a.train_images,
        "epochs": a.epochs,
        "lr": a.lr,
        "batch": a.batch,
        "augment": a.augment,
        "test_images": a.test_images,
        "ft_epochs": a.ft_epochs,
        "ft_ratio": a.ft_ratio,
        "probe_images": a.probe_images,
        "clp_u": a.clp_u,
        "attacks": a.attacks,
        "train_seeds": a.train_seeds,
        "scan_seeds": a.scan_seeds,
        "methods": a.methods,
        "recipes": recipes,
    });
    let js = StudyJson {
        command: command.into(),
        settings,
        models: results,
        summary: &summary,
        seconds,
    };
    let text = serde_json::to_string_pretty(&js)
        .map_err(|e| Error::Msg(format!("serialising study: {e}")))?;
    write_atomic(&a.json, text.as_bytes())?;

    let mut md = String::new();
    md.push_str("# FMP study: results\n\n");
    md.push_str(&format!(
        "Written by `{command}` ({:.0} s so far).\n\n",
        seconds
    ));
    md.push_str(&format!(
        "Models: PreActResNet18 width {}, trained in-engine on the first {} CIFAR-10 training images for {} epochs \
         (lr {}, batch {}, augmentation {}), poison rate 0.1, target 0; seeds {}. Metrics on the first {} test images. \
         Fine-tuning: {} epochs on a class-balanced {} of the training split. Scan seeds {}. \
         FMP recipes: {}.\n\n",
        a.width,
        a.train_images,
        a.epochs,
        a.lr,
        a.batch,
        if a.augment { "on" } else { "off" },
        a.train_seeds,
        a.test_images,
        a.ft_epochs,
        a.ft_ratio,
        a.scan_seeds,
        recipes
            .iter()
            .map(|r| format!(
                "`{}` ({} samples, {} score, {} repeat(s), {} step(s), {})",
                r.name, r.samples, r.score, r.repeats, r.steps, r.aggregate
            ))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    md.push_str(
        "Mean ± sample sd over models x scan seeds (%). *Pruned*: after pruning alone. *Overlap*: share of \
         selected maps two scan seeds have in common (mean over pairs). *Trigger*: selected maps among their \
         conv's most trigger-sensitive maps, against chance. *Time*: defense seconds (the row `before`: training).\n\n",
    );
    for at in distinct(summary.iter().map(|s| s.attack.as_str())) {
        md.push_str(&format!("## {at}\n\n"));
        md.push_str("| defense | Acc | ASR | RA | Acc pruned | ASR pruned | overlap | trigger / chance | maps | time s |\n");
        md.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for s in summary.iter().filter(|s| s.attack == at) {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                s.defense,
                pct(&s.acc),
                pct(&s.asr),
                pct(&s.ra),
                pct(&s.prune_acc),
                pct(&s.prune_asr),
                s.seed_overlap
                    .as_ref()
                    .map(|o| format!("{:.0}%", 100.0 * o.mean))
                    .unwrap_or_else(|| "-".into()),
                match (&s.trigger_hits, &s.trigger_chance) {
                    (Some(h), Some(c)) => format!("{:.1} / {:.1}", h.mean, c.mean),
                    _ => "-".into(),
                },
                num(&s.pruned, 0),
                num(&s.seconds, 0),
            ));
        }
        md.push('\n');
    }
    md.push_str(
        "## Per model\n\n| attack | train seed | Acc | ASR | RA |\n|---|---|---|---|---|\n",
    );
    for m in results {
        md.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            m.attack,
            m.train_seed,
            100.0 * m.before.acc,
            100.0 * m.before.asr.unwrap_or(0.0),
            100.0 * m.before.ra.unwrap_or(0.0)
        ));
    }
    write_atomic(&a.out, md.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attacks_are_listed_once_in_order_of_first_appearance() {
        let runs = ["badnets", "blended", "badnets", "blended", "wanet"];
        assert_eq!(distinct(runs.into_iter()), ["badnets", "blended", "wanet"]);
    }

    #[test]
    fn recipes_parse_with_defaults_and_errors() {
        let r: Recipe = "paper".parse().unwrap();
        assert_eq!(
            (r.samples, r.score.as_str(), r.repeats, r.steps),
            (32, "acc", 1, 1)
        );
        let r: Recipe = "margin4".parse().unwrap();
        assert_eq!((r.samples, r.score.as_str(), r.repeats), (32, "margin", 4));
        let r: Recipe = "margin4:repeats=2".parse().unwrap();
        assert_eq!((r.score.as_str(), r.repeats), ("margin", 2));
        let r: Recipe = "m4:samples=64,score=margin,repeats=4,steps=2,aggregate=median"
            .parse()
            .unwrap();
        assert_eq!(r.name, "m4");
        assert_eq!((r.samples, r.repeats, r.steps), (64, 4, 2));
        assert_eq!(
            (r.score.as_str(), r.aggregate.as_str()),
            ("margin", "median")
        );
        let s = r.scan_args(7, Some(8)).unwrap();
        assert_eq!((s.seed, s.p, s.samples(), s.repeats()), (7, Some(8), 64, 4));
        for bad in [
            ":score=acc",
            "x:samples=0",
            "x:foo=1",
            "x:score=best",
            "x:samples",
        ] {
            let e = bad.parse::<Recipe>().unwrap_err().to_string();
            assert!(e.contains("--fmp"), "{bad}: {e}");
        }
        assert!(seeds("0, 1,2").unwrap() == vec![0, 1, 2]);
        assert!(seeds("0,x").is_err());
    }

    #[test]
    fn stats_and_overlap() {
        let s = stat(&[1.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.n), (2.0, 2));
        assert!((s.sd - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(stat(&[5.0]).unwrap().sd, 0.0);
        assert!(stat(&[]).is_none());
        assert_eq!(share(&[(0, 1), (2, 3)], &[(2, 3), (4, 4)]), 0.5);
    }
}

//! The defenses `defend --method`, `defend --controls` and `study` run on one engine: FMP (scan, prune,
//! fine-tune), random maps with FMP's counts (control), fine-tuning only, Fine-Pruning, CLP (data-free,
//! no fine-tuning) and the trigger oracle (control, needs the attack: per conv FMP's count of the maps most
//! sensitive to the trigger, what pruning the right maps at FMP's budget can do). Each starts from a copy of
//! the given model.
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use fmp_engine::backend::Backend;
use fmp_engine::data::DatasetKind;
use fmp_engine::fmp::attacks::Attack;
use fmp_engine::fmp::baselines::{clp_selection, fine_pruning_selection, oracle_selection};
use fmp_engine::fmp::controls::{counts_for_p, random_selection};
use fmp_engine::fmp::metrics::{evaluate, Metrics};
use fmp_engine::fmp::pipeline::eval_batch;
use fmp_engine::fmp::prune::{apply, selections};
use fmp_engine::fmp::rng::Rng;
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::Result;

use super::finetune::{run_finetune, FinetuneArgs};
use super::scan::{print_summary, run_scan, ScanArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    Fmp,
    Random,
    FinetuneOnly,
    FinePruning,
    Clp,
    Oracle,
}

fmp_engine::named_enum! {
    Method {
        Fmp => "fmp",
        Random => "random",
        FinetuneOnly => "finetune-only" | "finetune" | "ft",
        FinePruning => "fine-pruning" | "fineprune" | "fp",
        Clp => "clp",
        Oracle => "oracle",
    } else |s| {
        format!("unknown defense '{s}': expected fmp, random, finetune-only, fine-pruning, clp or oracle")
    }
}

/// Why `oracle` cannot run without a known attack (defend checks it before loading anything).
pub const ORACLE_NEEDS_ATTACK: &str =
    "--method oracle prunes the maps most sensitive to the trigger: it needs --attack";

impl Method {
    pub fn fine_tunes(&self) -> bool {
        *self != Method::Clp
    }
    pub fn prunes(&self) -> bool {
        *self != Method::FinetuneOnly
    }
}

/// What every method needs.
pub struct Ctx<'a> {
    pub clean: &'a LabeledImages,
    pub kind: DatasetKind,
    pub data_dir: &'a Path,
    pub weights: &'a Path,
    pub scan: &'a ScanArgs,
    pub ft: &'a FinetuneArgs,
    /// Keep pruned filters at zero during fine-tuning.
    pub mask: bool,
    pub backend: &'a Arc<dyn Backend>,
    /// Test images and attack for the metrics (None: no metrics).
    pub test: Option<(&'a LabeledImages, Option<&'a Attack>)>,
    /// Seed of the random control and of Fine-Pruning's clean images.
    pub seed: u64,
    /// CLP threshold u.
    pub clp_u: f32,
    /// Clean images Fine-Pruning measures activity on.
    pub fp_images: usize,
    /// Where FMP's scan report goes (None: not written).
    pub report_path: Option<&'a Path>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub method: Method,
    pub pruned: usize,
    /// Metrics after pruning, before fine-tuning (pruning methods, with test data).
    pub after_prune: Option<Metrics>,
    /// Metrics at the end.
    pub after: Option<Metrics>,
    /// Defense time (scan/selection, pruning, fine-tuning; not the evaluation).
    pub seconds: f64,
    /// The pruned (conv, map) pairs.
    #[serde(skip)]
    pub selection: Vec<(usize, usize)>,
}

/// A copy of `model` (same backend, weights, BN statistics).
pub fn copy_model(model: &PreActResNet18) -> Result<PreActResNet18> {
    PreActResNet18::from_state_dict(
        model.backend().clone(),
        &model.to_state_dict()?,
        model.config().clone(),
    )
}

fn metrics(model: &PreActResNet18, ctx: &Ctx) -> Result<Option<Metrics>> {
    match ctx.test {
        Some((t, a)) => Ok(Some(evaluate(
            model,
            t,
            a,
            eval_batch(ctx.backend.as_ref()),
        )?)),
        None => Ok(None),
    }
}

/// The clean images Fine-Pruning and the oracle measure on: `fp_images` of the defender's pool, drawn with
/// the method's seed.
fn probe_images(ctx: &Ctx) -> LabeledImages {
    let n = ctx.fp_images.min(ctx.clean.len());
    let mut idx: Vec<usize> = (0..ctx.clean.len()).collect();
    Rng::derive(ctx.seed, "fine-pruning-images").shuffle(&mut idx);
    idx.truncate(n);
    ctx.clean.subset(&idx)
}

/// Run `method` on a copy of `model`; returns the defended copy and what happened.
pub fn run_method(
    model: &PreActResNet18,
    method: Method,
    ctx: &Ctx,
) -> Result<(PreActResNet18, Outcome)> {
    let mut m = copy_model(model)?;
    let t0 = Instant::now();
    let mut eval_s = 0.0;
    let p = ctx.scan.p.unwrap_or(model.config().width.min(64));
    let pruned: Vec<(usize, usize)> = match method {
        Method::Fmp => {
            let r = run_scan(
                &m,
                ctx.weights,
                ctx.clean,
                ctx.data_dir,
                ctx.scan,
                ctx.backend,
                None,
            )?
            .report();
            if let Some(path) = ctx.report_path {
                r.save(path)?;
                println!("report: {}", path.display());
            }
            print_summary(&r);
            selections(&m, &r, ctx.report_path.unwrap_or(Path::new("(scan)")))?
        }
        Method::Random => random_selection(&m, &counts_for_p(&m, p)?, ctx.seed)?,
        Method::FinetuneOnly => Vec::new(),
        Method::FinePruning => {
            let batch = eval_batch(ctx.backend.as_ref()).min(64);
            fine_pruning_selection(&m, &probe_images(ctx), &counts_for_p(&m, p)?, batch)?
        }
        Method::Clp => clp_selection(&m, ctx.clp_u)?,
        Method::Oracle => {
            let attack = ctx
                .test
                .and_then(|(_, a)| a)
                .ok_or_else(|| fmp_engine::Error::InvalidArgument(ORACLE_NEEDS_ATTACK.into()))?;
            let batch = eval_batch(ctx.backend.as_ref()).min(64);
            oracle_selection(&m, &probe_images(ctx), attack, &counts_for_p(&m, p)?, batch)?
        }
    };
    apply(&mut m, &pruned)?;
    let after_prune = if method.prunes() {
        let te = Instant::now();
        let r = metrics(&m, ctx)?;
        eval_s += te.elapsed().as_secs_f64();
        r
    } else {
        None
    };
    println!("{}: pruned {} feature maps", method.name(), pruned.len());
    let pruned_n = pruned.len();
    if method.fine_tunes() {
        if ctx.mask {
            m.set_masks(&pruned)?;
        }
        run_finetune(&mut m, ctx.clean, ctx.ft, ctx.kind, None)?;
        m.clear_masks();
    }
    let seconds = t0.elapsed().as_secs_f64() - eval_s;
    let after = if method.fine_tunes() {
        metrics(&m, ctx)?
    } else {
        after_prune
    };
    Ok((
        m,
        Outcome {
            method,
            pruned: pruned_n,
            after_prune,
            after,
            seconds,
            selection: pruned,
        },
    ))
}

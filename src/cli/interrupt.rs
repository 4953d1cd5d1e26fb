//! Ctrl-C for the long commands (`scan`, `train`, `finetune`): the first press asks the run to stop at
//! the next safe point (after the scan's current conv is journaled, after the current epoch is
//! checkpointed), the second stops at once. Either way the run says what it kept: `keep()` records it as
//! the run goes (the journal or checkpoint and how far it got).
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use fmp_engine::fmp::train::{Checkpointing, EpochStats, LoopState};
use fmp_engine::model::PreActResNet18;

static STOP: AtomicBool = AtomicBool::new(false);
static KEPT: Mutex<String> = Mutex::new(String::new());

/// Exit status after an interruption (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Install the handler (once per process; later calls do nothing).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            eprintln!("\nfmp-engine: stopped at once. {}", kept());
            std::process::exit(EXIT_INTERRUPTED);
        }
        eprintln!(
            "\nfmp-engine: Ctrl-C: stopping after the current step (press Ctrl-C again to stop at once)"
        );
    });
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Record what an interruption keeps now ("journal X: 5 of 20 convs").
pub fn keep(what: String) {
    if let Ok(mut k) = KEPT.lock() {
        *k = what;
    }
}

/// What an interruption keeps.
pub fn kept() -> String {
    match KEPT.lock() {
        Ok(k) if !k.is_empty() => format!("Kept: {k}."),
        _ => "Nothing was kept (no step had finished); no output was written.".into(),
    }
}

/// The error that ends an interrupted run.
pub fn stopped() -> fmp_engine::Error {
    fmp_engine::Error::Msg(format!("interrupted by Ctrl-C. {}", kept()))
}

/// The training loop of `train` and `finetune`: Ctrl-C installed, `train` runs with a checkpoint of
/// `identity` at `path` after each of its `epochs` (resuming from `resume`).
pub fn run_checkpointed(
    path: &Path,
    identity: &BTreeMap<String, String>,
    epochs: usize,
    resume: Option<LoopState>,
    train: impl FnOnce(Checkpointing) -> fmp_engine::Result<Vec<EpochStats>>,
) -> fmp_engine::Result<Vec<EpochStats>> {
    install();
    let mut save = |m: &PreActResNet18, st: &LoopState| checkpoint(path, m, st, identity, epochs);
    train(Checkpointing {
        resume,
        save: &mut save,
    })
}

/// A per-epoch checkpoint (of `epochs`): write it to `path`, record it as what an interruption
/// keeps, and end the run after it when Ctrl-C was pressed.
fn checkpoint(
    path: &Path,
    model: &PreActResNet18,
    st: &LoopState,
    identity: &BTreeMap<String, String>,
    epochs: usize,
) -> fmp_engine::Result<()> {
    fmp_engine::fmp::checkpoint::save(path, model, st, identity)?;
    keep(format!(
        "the checkpoint {} after epoch {}/{epochs}; continue with the same command and --resume",
        path.display(),
        st.epoch
    ));
    if requested() {
        return Err(stopped());
    }
    Ok(())
}

/// The progress line of a training epoch (`lr`: with its learning rate).
pub fn print_epoch(s: &EpochStats, lr: bool) {
    match lr {
        true => println!(
            "  epoch {:>3}  lr {:.5}  loss {:.4}  train acc {:.3}  {:.1} s",
            s.epoch, s.lr, s.loss, s.train_acc, s.seconds
        ),
        false => println!(
            "  epoch {:>3}  loss {:.4}  train acc {:.3}  {:.1} s",
            s.epoch, s.loss, s.train_acc, s.seconds
        ),
    }
}

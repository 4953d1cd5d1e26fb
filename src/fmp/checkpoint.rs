//! Per-epoch training checkpoints (`train` / `finetune`, `--resume`): one safetensors file,
//! `<out>.ckpt.safetensors`, written atomically after every epoch. It holds the model's state_dict
//! (weights, BN running statistics, counters) under the usual names, every momentum buffer as
//! `momentum.<parameter name>`, and in its `__metadata__` (key `fmp_checkpoint`, JSON) the finished epoch
//! count, the loop's RNG state, the batch order, the epoch statistics and the run's identity (what it
//! trains on and with which settings). Resuming restores all of it, so the continued run ends with the same
//! weights, bit for bit, as one that was never interrupted; a checkpoint of a different run is refused.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};

use super::train::{EpochStats, LoopState};
use super::LabeledImages;
use crate::error::{Error, Result};
use crate::model::{PreActResNet18, SgdState};
use crate::weights::{self, HostTensor, StateDict};

const META_KEY: &str = "fmp_checkpoint";
const MOMENTUM: &str = "momentum.";

/// The checkpoint of a run writing `out`: `<out>.ckpt.safetensors`.
pub fn checkpoint_path(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".ckpt.safetensors");
    PathBuf::from(s)
}

/// MD5 of the training images and labels (part of a run's identity).
pub fn data_md5(d: &LabeledImages) -> String {
    let mut h = Md5::new();
    h.update(&d.pixels);
    for y in &d.labels {
        h.update(y.to_le_bytes());
    }
    format!("{:x}", h.finalize())
}

#[derive(Serialize, Deserialize)]
struct Meta {
    epoch: usize,
    rng: String,
    order: Vec<usize>,
    stats: Vec<EpochStats>,
    identity: BTreeMap<String, String>,
}

/// Save `model` and the loop state after an epoch, atomically.
pub fn save(
    path: &Path,
    model: &PreActResNet18,
    state: &LoopState,
    identity: &BTreeMap<String, String>,
) -> Result<()> {
    let mut sd = model.to_state_dict()?;
    let be = model.backend();
    for (name, buf) in model.param_names().iter().zip(state.momentum.buffers()) {
        if let Some(t) = buf {
            sd.insert(
                format!("{MOMENTUM}{name}"),
                t.shape().to_vec(),
                be.to_host(t)?,
            );
        }
    }
    let meta = Meta {
        epoch: state.epoch,
        rng: state.rng.to_string(),
        order: state.order.clone(),
        stats: state.stats.clone(),
        identity: identity.clone(),
    };
    let json = serde_json::to_string(&meta)
        .map_err(|e| Error::Msg(format!("serialising checkpoint: {e}")))?;
    let bytes =
        weights::to_bytes_with_metadata(&sd, Some(HashMap::from([(META_KEY.into(), json)])))?;
    weights::write_atomic(path, &bytes)
}

/// A loaded checkpoint: the model's state_dict, the momentum buffers by parameter name, the loop state's
/// scalars and the identity of the run that wrote it.
pub struct Checkpoint {
    pub weights: StateDict,
    momentum: BTreeMap<String, HostTensor>,
    meta: Meta,
}

impl Checkpoint {
    pub fn load(path: &Path) -> Result<Self> {
        let bad = |msg: String| Error::File {
            path: path.into(),
            msg: format!("not a training checkpoint: {msg}"),
        };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| bad(format!("{e:?}")))?;
        let json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(META_KEY))
            .ok_or_else(|| bad(format!("no '{META_KEY}' metadata")))?;
        let meta: Meta = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
        meta.rng
            .parse::<u64>()
            .map_err(|_| bad(format!("rng state '{}'", meta.rng)))?;
        drop(bytes);
        let (mut sd, _) = weights::read_tensors(path)?;
        let names: Vec<String> = sd
            .keys()
            .filter(|k| k.starts_with(MOMENTUM))
            .cloned()
            .collect();
        let mut momentum = BTreeMap::new();
        for k in names {
            let t = sd.remove(&k).expect("listed");
            momentum.insert(k[MOMENTUM.len()..].to_string(), t);
        }
        Ok(Checkpoint {
            weights: sd,
            momentum,
            meta,
        })
    }

    pub fn epoch(&self) -> usize {
        self.meta.epoch
    }

    /// Differences between the identity it was saved with and `identity` ("lr: 0.01 vs 0.02").
    pub fn identity_differences(&self, identity: &BTreeMap<String, String>) -> Vec<String> {
        let mut keys: Vec<&String> = self.meta.identity.keys().chain(identity.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|k| {
                let (a, b) = (self.meta.identity.get(k), identity.get(k));
                (a != b).then(|| {
                    format!(
                        "{k}: {} in the checkpoint, {} now",
                        a.map(String::as_str).unwrap_or("-"),
                        b.map(String::as_str).unwrap_or("-")
                    )
                })
            })
            .collect()
    }

    /// The loop state for `model` (which must hold this checkpoint's weights).
    pub fn loop_state(self, model: &PreActResNet18, path: &Path) -> Result<LoopState> {
        let be = model.backend();
        let mut bufs = Vec::new();
        let mut momentum = self.momentum;
        for name in model.param_names() {
            bufs.push(match momentum.remove(name) {
                Some(t) => Some(be.from_host(&t.data, &t.shape)?),
                None => None,
            });
        }
        if let Some(k) = momentum.keys().next() {
            return Err(Error::File {
                path: path.into(),
                msg: format!("momentum buffer for '{k}', which the model does not have"),
            });
        }
        if bufs.iter().any(Option::is_some) && bufs.iter().any(Option::is_none) {
            return Err(Error::File {
                path: path.into(),
                msg: "some momentum buffers are missing".into(),
            });
        }
        Ok(LoopState {
            epoch: self.meta.epoch,
            rng: self.meta.rng.parse().expect("checked on load"),
            order: self.meta.order,
            momentum: SgdState::from_buffers(bufs),
            stats: self.meta.stats,
        })
    }
}

/// The identity entries of SGD settings (every one changes the trained weights).
pub fn sgd_identity(o: &super::train::SgdOptions) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("epochs".into(), o.epochs.to_string()),
        ("lr".into(), o.lr.to_string()),
        ("momentum".into(), o.momentum.to_string()),
        ("weight_decay".into(), o.weight_decay.to_string()),
        ("batch".into(), o.batch.to_string()),
        ("eta_min".into(), o.eta_min.to_string()),
        ("augment".into(), o.augment.to_string()),
        ("seed".into(), o.seed.to_string()),
    ])
}

/// The checkpoint at `path` to resume, if any: refuses one left by an interrupted run unless `resume` is
/// set (so nothing is overwritten by accident), refuses one of a different run (it lists the differences),
/// and notes when `resume` finds none. `what` names the run in messages ("training").
pub fn open_for_resume(
    path: &Path,
    resume: bool,
    identity: &BTreeMap<String, String>,
    what: &str,
) -> Result<Option<Checkpoint>> {
    if !path.exists() {
        if resume {
            println!(
                "--resume: no checkpoint at {}; starting from the beginning",
                path.display()
            );
        }
        return Ok(None);
    }
    if !resume {
        return Err(Error::InvalidArgument(format!(
            "{} is the checkpoint of an interrupted {what} run writing the same output: pass --resume to continue it, or delete it to start over",
            path.display()
        )));
    }
    let c = Checkpoint::load(path)?;
    let d = c.identity_differences(identity);
    if !d.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{} is the checkpoint of a different {what} run ({}): delete it to start over",
            path.display(),
            d.join("; ")
        )));
    }
    Ok(Some(c))
}

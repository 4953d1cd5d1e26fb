//! Arguments shared by subcommands, and the loading they start with.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fmp_engine::backend::select::{select, DeviceSpec};
use fmp_engine::backend::Backend;
use fmp_engine::data::{DatasetKind, Split};
use fmp_engine::fmp::pipeline::{find_data, load_clean, load_model, load_split};
use fmp_engine::fmp::LabeledImages;
use fmp_engine::model::PreActResNet18;
use fmp_engine::{Error, Result};

#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to compute: auto (GPU when one works, else CPU), cpu, cuda, cuda:N.
    #[arg(long, default_value = "auto", value_parser = super::check::device)]
    pub device: String,
}

impl DeviceArgs {
    pub fn backend(&self) -> Result<Arc<dyn Backend>> {
        select(self.device.parse::<DeviceSpec>()?)
    }
}

/// `--json` and `--device`, the last flags of `scan`, `prune`, `finetune` and `train`.
#[derive(clap::Args, Clone, Debug)]
pub struct JsonDeviceArgs {
    /// Print one JSON object on stdout (progress text goes to stderr); fields in docs/report.md.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// `--data` of the subcommands that find their dataset (`find_data`: the flag, `$FMP_DATA`,
/// `../shared/data`, the cache, else a download).
#[derive(clap::Args, Clone, Debug)]
pub struct DataArgs {
    /// Dataset folder [default: $FMP_DATA, ../shared/data, the engine's cache].
    #[arg(long)]
    pub data: Option<PathBuf>,
}

impl DataArgs {
    pub fn dir(&self) -> Result<PathBuf> {
        find_data(self.data.as_deref())
    }
}

/// What `scan`, `finetune` and `defend` start from: the backend of `--device`, the dataset folder
/// and its clean split, and WEIGHTS loaded with that dataset's normalisation (`Loaded::start`).
pub struct Loaded {
    pub backend: Arc<dyn Backend>,
    pub dir: PathBuf,
    pub clean: LabeledImages,
    pub kind: DatasetKind,
    pub model: PreActResNet18,
}

impl Loaded {
    /// The start of a command that works on a model: `--json`'s stdout first (so the loading's
    /// messages go to stderr), then the backend, the dataset and the weights.
    pub fn start(
        json: bool,
        device: &DeviceArgs,
        data: &DataArgs,
        weights: &Path,
    ) -> Result<(JsonOut, Loaded)> {
        let json = JsonOut::begin(json)?;
        let backend = device.backend()?;
        let dir = data.dir()?;
        let (clean, kind) = load_clean(&dir)?;
        let model = load_model(backend.clone(), weights, kind)?;
        let loaded = Loaded {
            backend,
            dir,
            clean,
            kind,
            model,
        };
        Ok((json, loaded))
    }
}

/// The training split of the dataset `data` finds, which must be CIFAR-10 (`demo` and `study`, named
/// by `what`), with its folder.
pub fn cifar10_train(data: Option<&Path>, what: &str) -> Result<(PathBuf, LabeledImages)> {
    let dir = find_data(data)?;
    let (train, kind) = load_split(&dir, Split::Train)?;
    if kind != DatasetKind::Cifar10 {
        return Err(Error::Data {
            path: dir,
            msg: format!(
                "the {what} runs on CIFAR-10; this folder holds {}",
                kind.name()
            ),
        });
    }
    Ok((dir, train))
}

/// `--json`: stdout carries one JSON object and nothing else. From `begin(true)` on, the process's stdout
/// (fd 1) points at stderr, so the progress text every subcommand prints goes there; `emit` writes the
/// object to the original stdout. `begin(false)` changes nothing and `emit` prints nothing.
pub struct JsonOut {
    on: bool,
    stdout: Option<std::fs::File>,
}

impl JsonOut {
    pub fn begin(on: bool) -> Result<JsonOut> {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        if !on {
            return Ok(JsonOut { on, stdout: None });
        }
        #[cfg(unix)]
        {
            use std::os::fd::FromRawFd;
            // SAFETY: plain descriptor calls on fds 1 and 2, which exist for the whole process; the
            // duplicate is owned by the File from here on.
            let saved = unsafe { libc::dup(1) };
            if saved < 0 || unsafe { libc::dup2(2, 1) } < 0 {
                return Err(fmp_engine::Error::Msg(format!(
                    "--json: cannot redirect the progress text to stderr: {}",
                    std::io::Error::last_os_error()
                )));
            }
            Ok(JsonOut {
                on,
                stdout: Some(unsafe { std::fs::File::from_raw_fd(saved) }),
            })
        }
        #[cfg(not(unix))]
        Ok(JsonOut { on, stdout: None })
    }

    /// Print `v` as one line of JSON on the original stdout (nothing unless `--json`).
    pub fn emit<T: serde::Serialize>(&self, v: &T) -> Result<()> {
        use std::io::Write;
        if !self.on {
            return Ok(());
        }
        let _ = std::io::stdout().flush();
        let text =
            serde_json::to_string(v).map_err(|e| fmp_engine::Error::Msg(format!("--json: {e}")))?;
        let r = match &self.stdout {
            Some(f) => {
                let mut f: &std::fs::File = f;
                writeln!(f, "{text}").and_then(|_| f.flush())
            }
            None => writeln!(std::io::stdout(), "{text}"),
        };
        r.map_err(|e| fmp_engine::Error::Msg(format!("--json: writing stdout: {e}")))
    }
}

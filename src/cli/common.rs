//! Arguments shared by subcommands.
use std::sync::Arc;

use fmp_engine::backend::select::{select, DeviceSpec};
use fmp_engine::backend::Backend;
use fmp_engine::Result;

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

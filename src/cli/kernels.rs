//! `fmp-engine kernels [--arch sm_90[,sm_80...]] [--json]`: compile every kernel file with NVRTC
//! (no GPU needed) to a CUBIN and print each kernel's registers, static shared memory, stack frame
//! and spill bytes. Fails when a file does not compile or a kernel the backend launches is missing.
use fmp_engine::backend::gpu::cuda::ENGINE_HEADERS;
use fmp_engine::backend::gpu::kernels::KERNEL_FILES;
use fmp_engine::backend::gpu::nvrtc;
use fmp_engine::{Error, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Target architecture(s), comma-separated (sm_80, sm_90, 8.6, ...).
    #[arg(long, default_value = "sm_90")]
    pub arch: String,
    /// Print JSON (one object per kernel) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Row<'a> {
    arch: String,
    file: &'a str,
    #[serde(flatten)]
    res: &'a nvrtc::KernelResources,
}

pub fn run(args: Args) -> Result<()> {
    let archs = args
        .arch
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(nvrtc::parse_arch)
        .collect::<Result<Vec<_>>>()?;
    if archs.is_empty() {
        return Err(Error::InvalidArgument(
            "--arch: no architecture given".into(),
        ));
    }
    let (maj, min) = nvrtc::ensure_loaded()?;
    let supported = nvrtc::supported_archs()?;
    for a in &archs {
        if !supported.contains(a) {
            return Err(Error::InvalidArgument(format!(
                "NVRTC {maj}.{min} cannot target sm_{a}; it supports {supported:?}"
            )));
        }
    }
    let mut failures = Vec::new();
    let mut json_rows = Vec::new();
    let reports: Vec<nvrtc::FileReport> = archs
        .iter()
        .flat_map(|&a| nvrtc::report(KERNEL_FILES, ENGINE_HEADERS, a))
        .collect();
    if !args.json {
        println!("NVRTC {maj}.{min}; registers, static shared memory, stack frame and spills per kernel (bytes)");
        println!("{}", nvrtc::table_header());
    }
    for r in &reports {
        match &r.result {
            Err(e) => failures.push(format!("sm_{} {}: {e}", r.arch, r.file)),
            Ok(kernels) => {
                for k in kernels {
                    if args.json {
                        json_rows.push(Row {
                            arch: format!("sm_{}", r.arch),
                            file: &r.file,
                            res: k,
                        });
                    } else {
                        println!("{}", k.table_row(r.arch, &r.file));
                    }
                }
                // Every kernel the backend launches from this file must be defined in it.
                for name in nvrtc::undefined_kernels(&r.file, kernels) {
                    failures.push(format!(
                        "sm_{} {}: kernel {name} (launched by the backend) is not defined",
                        r.arch, r.file
                    ));
                }
            }
        }
    }
    if args.json {
        let s = serde_json::to_string_pretty(&json_rows)
            .map_err(|e| Error::Msg(format!("JSON: {e}")))?;
        println!("{s}");
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::Msg(format!(
            "{} kernel compile failure(s):\n{}",
            failures.len(),
            failures.join("\n")
        )))
    }
}

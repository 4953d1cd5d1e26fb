//! NVRTC compile checks (no GPU needed). Skip with a printed reason when libnvrtc cannot be loaded,
//! unless FMP_REQUIRE_NVRTC=1 (set by .ci/install-nvrtc.sh after a successful install), in which
//! case a missing NVRTC is a failure.
use fmp_engine::backend::gpu::nvrtc;
use fmp_engine::Error;

fn nvrtc_available(test: &str) -> bool {
    match nvrtc::ensure_loaded() {
        Ok(_) => true,
        Err(e) => {
            if std::env::var("FMP_REQUIRE_NVRTC")
                .map(|v| v == "1")
                .unwrap_or(false)
            {
                panic!("{test}: FMP_REQUIRE_NVRTC=1 but NVRTC is unavailable: {e}");
            }
            eprintln!("skipping {test}: {e}");
            false
        }
    }
}

const SMALL: &str = r#"
struct Args { const float* x; float* y; int n; int pad; };
extern "C" __global__ void scale2(const Args a) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < a.n) a.y[i] = 2.0f * a.x[i];
}
extern "C" __global__ void reverse256(const Args a) {
    __shared__ float s[256];
    int t = threadIdx.x;
    s[t] = a.x[blockIdx.x * 256 + t];
    __syncthreads();
    a.y[blockIdx.x * 256 + t] = s[255 - t];
}
"#;

#[test]
fn nvrtc_reports_resources_of_a_small_kernel() {
    if !nvrtc_available("nvrtc_reports_resources_of_a_small_kernel") {
        return;
    }
    for arch in [80, 90] {
        let r = nvrtc::kernel_resources("small.cu", SMALL, &[], arch).unwrap();
        let names: Vec<&str> = r.iter().map(|k| k.kernel.as_str()).collect();
        assert!(
            names.contains(&"scale2") && names.contains(&"reverse256"),
            "sm_{arch}: {names:?}"
        );
        let rev = r.iter().find(|k| k.kernel == "reverse256").unwrap();
        assert_eq!(rev.shared_bytes, 1024, "sm_{arch}: {rev:?}");
        assert_eq!(rev.barriers, 1);
        let sc = r.iter().find(|k| k.kernel == "scale2").unwrap();
        assert!(sc.registers > 0 && sc.registers < 64, "{sc:?}");
        assert_eq!(sc.shared_bytes, 0);
        assert!(!sc.spills());
    }
}

#[test]
fn nvrtc_compiles_cubin_and_ptx_with_headers() {
    if !nvrtc_available("nvrtc_compiles_cubin_and_ptx_with_headers") {
        return;
    }
    let header = "struct Args { const float* x; float* y; int n; int pad; };\n";
    let src = "#include \"args.cuh\"\nextern \"C\" __global__ void k(const Args a) { if (threadIdx.x < a.n) a.y[threadIdx.x] = a.x[threadIdx.x]; }\n";
    let cubin = nvrtc::compile(
        "k.cu",
        src,
        &[("args.cuh", header)],
        &nvrtc::options(90, nvrtc::Target::Cubin, false),
    )
    .unwrap();
    assert_eq!(&cubin.image[..4], b"\x7fELF", "a CUBIN is an ELF image");
    let ptx = nvrtc::compile(
        "k.cu",
        src,
        &[("args.cuh", header)],
        &nvrtc::options(80, nvrtc::Target::Ptx, false),
    )
    .unwrap();
    let text = String::from_utf8(ptx.image).unwrap();
    assert!(
        text.contains(".target sm_80") && text.contains(".entry k"),
        "{text}"
    );
}

#[test]
fn nvrtc_compile_error_carries_the_log() {
    if !nvrtc_available("nvrtc_compile_error_carries_the_log") {
        return;
    }
    let bad = "extern \"C\" __global__ void broken(float* y) { y[0] = undefined_thing; }\n";
    match nvrtc::compile(
        "broken.cu",
        bad,
        &[],
        &nvrtc::options(90, nvrtc::Target::Cubin, false),
    ) {
        Err(Error::Nvrtc { file, log }) => {
            assert_eq!(file, "broken.cu");
            assert!(
                log.contains("undefined_thing"),
                "log should name the bad identifier: {log}"
            );
        }
        other => panic!("expected an NVRTC compile error, got {other:?}"),
    }
}

/// Every kernel file compiles for sm_80 and sm_90, every kernel the backend launches exists, and
/// the conv kernels do not spill registers (issue 3's CI check).
#[test]
fn nvrtc_compiles_every_engine_kernel_for_sm80_and_sm90() {
    use fmp_engine::backend::gpu::cuda::ENGINE_HEADERS;
    use fmp_engine::backend::gpu::kernels::{ALL_KERNELS, KERNEL_FILES};
    if !nvrtc_available("nvrtc_compiles_every_engine_kernel_for_sm80_and_sm90") {
        return;
    }
    let mut problems = Vec::new();
    for arch in [80, 90] {
        for r in nvrtc::report(KERNEL_FILES, ENGINE_HEADERS, arch) {
            let kernels = match r.result {
                Ok(k) => k,
                Err(e) => {
                    problems.push(format!("sm_{arch} {}: {e}", r.file));
                    continue;
                }
            };
            for name in nvrtc::undefined_kernels(&r.file, &kernels) {
                problems.push(format!("sm_{arch} {}: kernel {name} not defined", r.file));
            }
            for k in &kernels {
                println!("{}", k.table_row(arch, &r.file));
                if k.kernel.starts_with("conv") && k.spills() {
                    problems.push(format!(
                        "sm_{arch} {}: conv kernel {} spills registers: {k:?}",
                        r.file, k.kernel
                    ));
                }
            }
        }
    }
    // Every listed kernel file is launched from at least once (no dead files in the list).
    for (stem, _) in KERNEL_FILES {
        assert!(
            ALL_KERNELS.iter().any(|id| id.file == *stem),
            "kernels/{stem}.cu has no launched kernel"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

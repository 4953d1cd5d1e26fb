//! CudaRunner behaviour on a real GPU with a small kernel of its own: launches, copies, timing,
//! and that every failure is a clear error (kernel named, bytes requested), never a panic.
//! Skips with a printed reason when there is no usable GPU.
mod gpu_support;

use fmp_engine::backend::gpu::cuda::{CudaRunner, KernelSources};
use fmp_engine::backend::gpu::runner::{KernelId, Launch, Runner};
use fmp_engine::backend::Backend;
use fmp_engine::Error;

const SRC: &str = r#"
#include "t.cuh"
extern "C" __global__ void axpb(const AxpbArgs a) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < a.n; i += gridDim.x * blockDim.x)
        a.y[i] = a.alpha * a.x[i] + a.beta;
}
"#;
const HDR: &str =
    "struct AxpbArgs { const float* x; float* y; float alpha; float beta; int n; int pad; };\n";

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AxpbArgs {
    x: u64,
    y: u64,
    alpha: f32,
    beta: f32,
    n: i32,
    pad: i32,
}

const AXPB: KernelId = KernelId {
    file: "t",
    name: "axpb",
};

fn runner(test: &str) -> Option<CudaRunner> {
    // Probe through the shared helper first (prints the skip reason / enforces FMP_REQUIRE_GPU).
    gpu_support::cuda(test)?;
    static FILES: &[(&str, &str)] = &[("t", SRC)];
    static HEADERS: &[(&str, &str)] = &[("t.cuh", HDR)];
    Some(
        CudaRunner::new(
            0,
            KernelSources {
                files: FILES,
                headers: HEADERS,
            },
        )
        .expect("runner with a test kernel"),
    )
}

fn launch_cfg(n: usize) -> Launch {
    Launch {
        grid: [n.div_ceil(128).min(1024) as u32, 1, 1],
        block: [128, 1, 1],
        shared_bytes: 0,
    }
}

#[test]
fn gpu_runner_launch_copy_and_time() {
    let Some(r) = runner("gpu_runner_launch_copy_and_time") else {
        return;
    };
    let n = 100_003usize;
    let x: Vec<f32> = (0..n).map(|i| (i % 1000) as f32 * 0.001 - 0.5).collect();
    let xt = r.from_host(&x, &[n]).unwrap();
    let yt = r.zeros(&[n]).unwrap();
    let args = AxpbArgs {
        x: r.ptr(&xt).unwrap(),
        y: r.ptr(&yt).unwrap(),
        alpha: 3.0,
        beta: -0.25,
        n: n as i32,
        pad: 0,
    };
    let ms = r
        .time_ms(|| r.launch(AXPB, launch_cfg(n), bytemuck::bytes_of(&args)))
        .unwrap();
    assert!(ms >= 0.0 && ms < 10_000.0, "{ms} ms");
    let y = r.to_host(&yt).unwrap();
    for i in [0, 1, 12345, n - 1] {
        assert_eq!(y[i], 3.0 * x[i] - 0.25, "element {i}");
    }
    // Zero-element tensors round-trip; an empty grid is a no-op.
    let e = r.from_host(&[], &[0, 3]).unwrap();
    assert!(r.to_host(&e).unwrap().is_empty());
    r.launch(
        AXPB,
        Launch {
            grid: [0, 1, 1],
            block: [128, 1, 1],
            shared_bytes: 0,
        },
        bytemuck::bytes_of(&args),
    )
    .unwrap();
    r.synchronize().unwrap();
    assert!(r.memory_budget() > 0);
    assert!(r.name().starts_with("cuda:0 "), "{}", r.name());
}

#[test]
fn gpu_runner_errors_are_clear() {
    let Some(r) = runner("gpu_runner_errors_are_clear") else {
        return;
    };
    let xt = r.from_host(&[1.0, 2.0], &[2]).unwrap();
    let args = AxpbArgs {
        x: r.ptr(&xt).unwrap(),
        y: r.ptr(&xt).unwrap(),
        alpha: 1.0,
        beta: 0.0,
        n: 2,
        pad: 0,
    };
    // Too many threads per block: a launch error naming the kernel.
    let bad = Launch {
        grid: [1, 1, 1],
        block: [4096, 1, 1],
        shared_bytes: 0,
    };
    match r.launch(AXPB, bad, bytemuck::bytes_of(&args)) {
        Err(Error::Cuda { context, .. }) => assert!(context.contains("axpb"), "{context}"),
        other => panic!("expected a launch error, got {other:?}"),
    }
    // Wrong args size (when the driver reports parameter sizes) or at least no crash.
    let short = &bytemuck::bytes_of(&args)[..16];
    if let Err(e) = r.launch(AXPB, launch_cfg(2), short) {
        assert!(e.to_string().contains("axpb"), "{e}");
    }
    r.synchronize().unwrap();
    // Unknown kernel / file.
    let e = r
        .launch(
            KernelId {
                file: "t",
                name: "nope",
            },
            launch_cfg(2),
            bytemuck::bytes_of(&args),
        )
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = r
        .launch(
            KernelId {
                file: "missing",
                name: "axpb",
            },
            launch_cfg(2),
            bytemuck::bytes_of(&args),
        )
        .unwrap_err();
    assert!(e.to_string().contains("missing"), "{e}");
    // Out of memory: a 1 TiB request.
    match r.zeros(&[1usize << 38]) {
        Err(Error::OutOfMemory { bytes, .. }) => assert_eq!(bytes, 1usize << 40),
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    // A host tensor handed to the GPU runner.
    let cpu = gpu_support::cpu();
    let h = cpu.from_host(&[1.0], &[1]).unwrap();
    assert!(matches!(r.ptr(&h), Err(Error::WrongBackend { .. })));
    assert!(matches!(r.to_host(&h), Err(Error::WrongBackend { .. })));
    // Shape/data mismatch.
    assert!(r.from_host(&[1.0, 2.0, 3.0], &[2, 2]).is_err());
    // The runner still works afterwards.
    let y = r.from_host(&[5.0, 6.0], &[2]).unwrap();
    assert_eq!(r.to_host(&y).unwrap(), vec![5.0, 6.0]);
}

#[test]
fn gpu_runner_compile_error_is_reported() {
    if gpu_support::cuda("gpu_runner_compile_error_is_reported").is_none() {
        return;
    }
    static FILES: &[(&str, &str)] = &[(
        "bad",
        "extern \"C\" __global__ void k(float* y) { y[0] = not_declared; }",
    )];
    match CudaRunner::new(
        0,
        KernelSources {
            files: FILES,
            headers: &[],
        },
    ) {
        Err(Error::Nvrtc { file, log }) => {
            assert_eq!(file, "bad.cu");
            assert!(log.contains("not_declared"), "{log}");
        }
        Err(e) => panic!("expected an NVRTC error, got {e}"),
        Ok(_) => panic!("expected an NVRTC error, got a runner"),
    }
}

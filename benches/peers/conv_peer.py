#!/usr/bin/env python3
"""PyTorch peer of the engine's conv benchmarks: every distinct PreActResNet18 conv at batch N,
forward, input gradient and weight gradient (aten.convolution_backward, which autograd uses), FP32
(TF32 off), cuDNN autotuning on. CUDA timing with CUDA events, CPU timing with perf_counter;
median over repeats after warm-up. Prints one JSON object (and writes it with --json).

    python benches/peers/conv_peer.py --device cpu --threads 2 --json target/bench/conv-peer-cpu.json
    python benches/peers/conv_peer.py --device cuda --json target/bench/conv-peer-cuda.json
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arch import conv_shapes, dims_key  # noqa: E402


def timer(device):
    if device == "cuda":
        def run(fn):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            return s.elapsed_time(e) / 1e3
    else:
        def run(fn):
            t = time.perf_counter()
            fn()
            return time.perf_counter() - t
    return run


def bench(fn, device, warmup, repeats, max_seconds):
    t_run = timer(device)
    start = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - start > max_seconds:
            break
    if device == "cuda":
        torch.cuda.synchronize()
    samples = []
    start = time.perf_counter()
    for _ in range(repeats):
        samples.append(t_run(fn))
        if time.perf_counter() - start > max_seconds:
            break
    return statistics.median(samples), len(samples)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--max-seconds", type=float, default=2.0, help="time budget per case")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--filter", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(a.device)
    g = torch.Generator(device="cpu").manual_seed(5)

    seen = {}
    for name, ci, h, co, k, s, p in conv_shapes(a.width):
        key = dims_key(ci, h, co, k, s, p)
        if key in seen:
            seen[key][1] += 1
        else:
            seen[key] = [name, 1, (ci, h, co, k, s, p)]

    results = []
    for key, (name, count, (ci, h, co, k, s, p)) in seen.items():
        n = a.batch
        x = torch.randn(n, ci, h, h, generator=g).to(dev)
        w = (torch.randn(co, ci, k, k, generator=g) * (2.0 / (ci * k * k)) ** 0.5).to(dev)
        y = torch.nn.functional.conv2d(x, w, stride=s, padding=p)
        dy = torch.randn(y.shape, generator=g).to(dev)
        ho = y.shape[2]
        flops = 2 * n * co * ho * ho * ci * k * k
        cb = torch.ops.aten.convolution_backward

        def fwd():
            torch.nn.functional.conv2d(x, w, stride=s, padding=p)

        def dgrad():
            cb(dy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, False, False])

        def wgrad():
            cb(dy, x, w, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [False, True, False])

        tag = f"{name}{f' (x{count})' if count > 1 else ''} {key}"
        for family, fn in (("conv_fwd", fwd), ("conv_dgrad", dgrad), ("conv_wgrad", wgrad)):
            full = f"{family} {tag}"
            if a.filter and a.filter not in full:
                continue
            with torch.no_grad():
                med, reps = bench(fn, a.device, a.warmup, a.repeats, a.max_seconds)
            r = {"name": full, "family": family, "dims": key, "flops": flops, "median_s": med,
                 "repeats": reps, "gflops": flops / med / 1e9}
            results.append(r)
            print(f"{full:<58} {med * 1e3:10.3f} ms {r['gflops']:9.2f} GFLOP/s", file=sys.stderr)

    dev_name = torch.cuda.get_device_name(dev) if a.device == "cuda" else platform.processor() or "cpu"
    if a.device == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                dev_name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    out = {"peer": "pytorch", "torch": torch.__version__, "device": a.device, "device_name": dev_name,
           "threads": torch.get_num_threads(), "batch": a.batch, "width": a.width,
           "cudnn": torch.backends.cudnn.version() if a.device == "cuda" else None,
           "mkldnn": torch.backends.mkldnn.is_available(), "results": results}
    text = json.dumps(out, indent=1)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        tmp = a.json + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, a.json)
    print(text)


if __name__ == "__main__":
    main()

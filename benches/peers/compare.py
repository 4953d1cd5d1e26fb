#!/usr/bin/env python3
"""Engine vs PyTorch ratios, printed as Markdown tables (for benches/RESULTS.md).

    python benches/peers/compare.py kernels target/bench/kernels-cpu.json target/bench/conv-peer-cpu.json
    python benches/peers/compare.py scan target/bench/scan-cpu.json target/bench/frg-peer-cpu.json
    python benches/peers/compare.py train target/bench/train-cpu.json target/bench/finetune-peer-cpu.json
    python benches/peers/compare.py train-pairs E1.json,E2.json,... P1.json,P2.json,...

`kernels` pairs the engine's conv cases (from `cargo bench --bench kernels` or `fmp-engine bench
kernels --json`) with conv_peer.py's by name (same naming scheme) and prints both medians, both
GFLOP/s and the speedup (PyTorch time / engine time: > 1 means the engine is faster), plus each
engine kernel's fraction of its roofline. `scan` does the same for `fmp-engine bench scan --json`
against frg_reference.py.
"""
import json
import math
import sys


def fmt_t(s):
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3f} ms"
    return f"{s * 1e6:.1f} us"


def geomean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def kernels(engine_path, peer_path):
    eng = json.load(open(engine_path))
    peer = json.load(open(peer_path))
    if eng["config"]["batch"] != peer["batch"]:
        print(f"warning: engine batch {eng['config']['batch']} != peer batch {peer['batch']}", file=sys.stderr)
    by_name = {r["name"]: r for r in eng["results"]}
    print(f"engine: {eng['backend']} (commit {eng.get('commit')}); peer: PyTorch {peer['torch']} on "
          f"{peer['device_name']} ({peer['threads']} threads); batch {peer['batch']}\n")
    print("| kernel | engine | GFLOP/s | % roofline | PyTorch | GFLOP/s | speedup (PyTorch/engine) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    ratios = {}
    for p in peer["results"]:
        e = by_name.get(p["name"])
        if not e or not e.get("time"):
            print(f"| {p['name']} | - | - | - | {fmt_t(p['median_s'])} | {p['gflops']:.2f} | - |")
            continue
        t = e["time"]["median_s"]
        sp = p["median_s"] / t
        ratios.setdefault(p["family"], []).append(sp)
        print(f"| {p['name']} | {fmt_t(t)} | {e['gflops']:.2f} | {100 * e['frac_roofline']:.1f}% | "
              f"{fmt_t(p['median_s'])} | {p['gflops']:.2f} | {sp:.3f} |")
    print()
    for fam, rs in ratios.items():
        print(f"- {fam}: geometric-mean speedup {geomean(rs):.3f} over {len(rs)} shapes")
    allr = [r for rs in ratios.values() for r in rs]
    if allr:
        print(f"- all convs: geometric-mean speedup {geomean(allr):.3f}")


def scan(engine_path, peer_path):
    eng = json.load(open(engine_path))
    peer = json.load(open(peer_path))
    print("| | engine | PyTorch reference loop | speedup |")
    print("|---|---:|---:|---:|")
    e_cs, p_cs = eng["channel_samples_per_s"], peer["channel_samples_per_s"]
    print(f"| device | {eng['backend']} | {peer['device_name']} ({peer['threads']} threads) | |")
    print(f"| samples B | {eng['samples']} | {peer['samples']} | |")
    print(f"| channels timed | {eng['channels_timed']} | {peer['channels_timed']} | |")
    print(f"| channel-samples/s | {e_cs:.1f} | {p_cs:.1f} | {e_cs / p_cs:.2f} |")
    e_p, p_p = eng["projected_full_scan_s"], peer["projected_full_scan_s"]
    print(f"| projected {eng['scan_channels']}-channel scan | {fmt_t(e_p)} | {fmt_t(p_p)} | {p_p / e_p:.2f} |")
    if "achieved_gflops" in eng:
        print(f"| counted scan GFLOP/s | {eng['achieved_gflops']:.2f} | | |")


def train(engine_path, peer_path):
    eng = json.load(open(engine_path))
    peer = json.load(open(peer_path))
    cfg = eng["config"]
    print(f"| fine-tuning step, width {cfg['width']}, batch {cfg['batch']} | engine | PyTorch | speedup |")
    print("|---|---:|---:|---:|")
    print(f"| device | {eng['backend']} | {peer['device']} ({peer['threads']} threads) | |")
    e, p = eng["median_step_s"], peer["median_step_s"]
    print(f"| median step | {fmt_t(e)} | {fmt_t(p)} | {p / e:.2f} |")
    print(f"| images/s | {eng['images_per_s']:.1f} | {peer['images_per_s']:.1f} | {eng['images_per_s'] / peer['images_per_s']:.2f} |")
    ep, pp = eng["projected_finetune_s"], peer["projected_finetune_s"]
    print(f"| projected fine-tuning ({cfg['images']} images x {cfg['epochs']} epochs) | {fmt_t(ep)} | {fmt_t(pp)} | {pp / ep:.2f} |")
    print(f"| counted GFLOP/s (% of peak) | {eng['gflops']:.1f} ({100 * eng['frac_peak_flops']:.1f}%) | | |")


def train_pairs(engine_paths, peer_paths):
    """Alternating engine/PyTorch fine-tuning steps (comma-separated JSON lists, pair by pair): each
    pair's ratio, then their median and range. On a VM whose speed drifts by tens of percent
    within minutes, one run per side is weak evidence; the median of pairs taken close together
    is less so."""
    engs = [json.load(open(p)) for p in engine_paths.split(",")]
    peers = [json.load(open(p)) for p in peer_paths.split(",")]
    if len(engs) != len(peers):
        sys.exit(f"train-pairs: {len(engs)} engine reports but {len(peers)} PyTorch reports")
    cfg = engs[0]["config"]
    print(f"| pair (width {cfg['width']}, batch {cfg['batch']}) | engine median step | PyTorch median step | speedup |")
    print("|---|---:|---:|---:|")
    ratios = []
    for i, (e, p) in enumerate(zip(engs, peers), 1):
        r = p["median_step_s"] / e["median_step_s"]
        ratios.append(r)
        print(f"| {i} | {fmt_t(e['median_step_s'])} | {fmt_t(p['median_step_s'])} | {r:.2f} |")
    rs = sorted(ratios)
    mid = len(rs) // 2
    med = rs[mid] if len(rs) % 2 else (rs[mid - 1] + rs[mid]) / 2
    print(f"| **median of {len(rs)} pairs** (range {rs[0]:.2f}-{rs[-1]:.2f}) | | | **{med:.2f}** |")


MODES = {"kernels": kernels, "scan": scan, "train": train, "train-pairs": train_pairs}

if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in MODES:
        sys.exit(__doc__)
    MODES[sys.argv[1]](sys.argv[2], sys.argv[3])

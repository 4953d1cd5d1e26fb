#!/usr/bin/env python3
"""Reference FRG scan timed the way the published FMP code runs it: one feature map at a time, a
forward hook on the conv, full forwards of X and X0, the autograd input gradient of the channel's
MSE, one sign step, and a scoring forward, at batch 32 (spec section 3). Prints one JSON object with
channel-samples/s and the projected time of the full 4,800-channel scan.

The full scan takes hours on a CPU, so by default only --channels channels of every conv are timed
(spread over the conv's channels) and the full scan is projected conv by conv (channels x measured
time per channel). Weights come from --weights (a safetensors state dict, e.g. one written by
`fmp-engine bench scan --save-weights`), or are random (seeded) and can be saved with --save-weights.
Images are seeded uniform noise with random labels: timing does not depend on them.

    python benches/peers/frg_reference.py --device cpu --threads 2 --channels 2 --json target/bench/frg-peer-cpu.json
    python benches/peers/frg_reference.py --device cuda --channels 16 --weights w.safetensors
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arch import PreActResNet18, load_safetensors, randomise_bn  # noqa: E402


def pick_channels(c_out, k):
    """k channels spread evenly over 0..c_out."""
    k = min(k, c_out)
    return sorted({(i * c_out) // k for i in range(k)})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--samples", type=int, default=32, help="batch B of the scan")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--channels", type=int, default=2, help="channels timed per conv (0 = all)")
    ap.add_argument("--layers", type=int, default=0, help="only the first N convs (0 = all 20)")
    ap.add_argument("--share-clean", action="store_true",
                    help="compute A(X) once per conv instead of once per channel")
    ap.add_argument("--alpha", type=float, default=1 / 255)
    ap.add_argument("--eps", type=float, default=4 / 255)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--save-weights", default=None)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)

    model = PreActResNet18(a.width, a.num_classes)
    if a.weights:
        try:
            load_safetensors(model, a.weights)
        except ImportError:
            print("warning: no safetensors module: random weights instead of --weights", file=sys.stderr)
            a.weights = None
            randomise_bn(model, a.seed)
    else:
        randomise_bn(model, a.seed)
    if a.save_weights:
        from safetensors.torch import save_file
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(sd, a.save_weights)
    model = model.to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)

    g = torch.Generator().manual_seed(a.seed + 1)
    X = torch.rand(a.samples, 3, 32, 32, generator=g).to(dev)
    Y = torch.randint(0, a.num_classes, (a.samples,), generator=g).to(dev)
    X0 = (X + a.alpha * torch.sign(torch.rand(X.shape, generator=g).to(dev) * 2 - 1)).clamp(0, 1)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    convs = model.convs_in_execution_order()
    if a.layers:
        convs = convs[: a.layers]
    feats = {}

    def channel(c, clean):
        """One feature map, as the reference does it; returns (A(X) used, score)."""
        if clean is None or not a.share_clean:
            with torch.no_grad():
                model(X)
            clean = feats["a"].detach()
        x0 = X0.clone().requires_grad_(True)
        model(x0)
        loss = F.mse_loss(feats["a"][:, c], clean[:, c])
        grad, = torch.autograd.grad(loss, x0)
        xadv = (X0 + a.eps * torch.sign(grad)).clamp(0, 1)
        with torch.no_grad():
            acc = (model(xadv).argmax(1) == Y).float().mean()
        return clean, acc.item()

    # Untimed warm-up (cuDNN autotuning, allocator): one channel of the first conv.
    h = convs[0][1].register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    channel(0, None)
    h.remove()
    sync()

    per_conv = []
    total_time, total_pairs = 0.0, 0
    for ci, (name, conv) in enumerate(convs):
        handle = conv.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
        chans = list(range(conv.out_channels)) if a.channels == 0 else pick_channels(conv.out_channels, a.channels)
        scores = []
        clean = None
        sync()
        t0 = time.perf_counter()
        for c in chans:
            clean, acc = channel(c, clean)
            scores.append(acc)
        sync()
        dt = time.perf_counter() - t0
        handle.remove()
        n = len(chans)
        per_conv.append({"conv": ci, "name": name, "out_channels": conv.out_channels, "channels_timed": n,
                         "seconds": dt, "per_channel_s": dt / n, "scores": scores})
        total_time += dt
        total_pairs += n * a.samples
        print(f"{name:<22} {n:4d} ch {dt:8.3f} s  {dt / n * 1e3:9.2f} ms/channel", file=sys.stderr)

    projected = sum(c["per_channel_s"] * c["out_channels"] for c in per_conv)
    all_channels = sum(c["out_channels"] for c in per_conv)
    dev_name = torch.cuda.get_device_name(dev) if a.device == "cuda" else "cpu"
    if a.device == "cpu":
        try:
            with open("/proc/cpuinfo") as f:
                dev_name = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
    out = {
        "peer": "pytorch-frg-reference",
        "torch": torch.__version__,
        "device": a.device,
        "device_name": dev_name,
        "threads": torch.get_num_threads(),
        "samples": a.samples,
        "share_clean": a.share_clean,
        "weights": a.weights or f"random (seed {a.seed})",
        "channels_timed": sum(c["channels_timed"] for c in per_conv),
        "seconds_timed": total_time,
        "channel_samples_per_s": total_pairs / total_time,
        "scan_channels": all_channels,
        "projected_full_scan_s": projected,
        "per_conv": per_conv,
    }
    print(f"channel-samples/s {out['channel_samples_per_s']:.1f}; projected {all_channels}-channel scan "
          f"{projected:.1f} s ({projected / 3600:.2f} h)", file=sys.stderr)
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

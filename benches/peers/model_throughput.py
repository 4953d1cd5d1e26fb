#!/usr/bin/env python3
"""PyTorch peer for fmp-engine's model throughput: PreActResNet18 (BackdoorBench definition, see
docs spec section 1) forward and backward on the same card, in images per second.

Measures, per batch size:
  forward      eval-mode forward, no autograd (the FRG scan's and evaluation's forward)
  input_grad   eval-mode forward + backward to the input only, parameters frozen (the FRG scan's
               backward: d(loss)/d(pixels))
  train_step   train-mode forward + backward with parameter gradients (fine-tuning), no optimizer

Two numeric modes: strict fp32 (TF32 off; what fmp-engine's FFMA kernels compute, the fair
comparison) and PyTorch's defaults (cuDNN may use TF32 tensor cores). cudnn.benchmark is on.
Timing: CUDA events around `iters` repetitions after `warmup` ones; the median of `repeats` runs.

Usage: model_throughput.py [--device cuda] [--batch 128,256] [--width 64] [--json OUT.json]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + sc


class PreActResNet18(nn.Module):
    def __init__(self, width=64, num_classes=10, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261)):
        super().__init__()
        w = width
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        cfg = [(w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2), (4 * w, 8 * w, 2)]
        for i, (cin, cout, s) in enumerate(cfg):
            setattr(self, f"layer{i + 1}", nn.Sequential(PreActBlock(cin, cout, s), PreActBlock(cout, cout, 1)))
        self.linear = nn.Linear(8 * w, num_classes)

    def forward(self, x):
        x = (x - self.mean) / self.std
        x = self.conv1(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(x)


def timed(fn, dev, warmup, iters, repeats):
    """Median seconds per call of fn()."""
    for _ in range(warmup):
        fn()
    res = []
    for _ in range(repeats):
        if dev.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            a.record()
            for _ in range(iters):
                fn()
            b.record()
            b.synchronize()
            res.append(a.elapsed_time(b) / 1000.0 / iters)
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            res.append((time.perf_counter() - t0) / iters)
    return statistics.median(res)


def measure(model, dev, batch, args):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g).to(dev)
    y = torch.randint(0, 10, (batch,), generator=g).to(dev)
    out = {}

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def fwd():
        with torch.no_grad():
            model(x)

    out["forward"] = timed(fwd, dev, args.warmup, args.iters, args.repeats)

    def igrad():
        xi = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(xi), y)
        (gx,) = torch.autograd.grad(loss, xi)
        return gx

    out["input_grad"] = timed(igrad, dev, args.warmup, args.iters, args.repeats)

    model.train()
    for p in model.parameters():
        p.requires_grad_(True)

    def train():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()

    out["train_step"] = timed(train, dev, args.warmup, args.iters, args.repeats)
    model.eval()
    return {k: {"seconds": v, "images_per_s": batch / v} for k, v in out.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", default="128,256")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--modes", default="fp32,default", help="fp32 (TF32 off) and/or default")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("model_throughput.py: CUDA not available to PyTorch", file=sys.stderr)
        return 2
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = PreActResNet18(width=args.width).to(dev)
    report = {
        "peer": "pytorch",
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version() if dev.type == "cuda" else None,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "width": args.width,
        "results": [],
    }
    print(f"PyTorch {torch.__version__} on {report['device']}, PreActResNet18 width {args.width}")
    print(f"{'mode':<8} {'batch':>5} {'forward img/s':>14} {'input_grad img/s':>17} {'train_step img/s':>17}")
    defaults = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    for mode in [m for m in args.modes.split(",") if m]:
        strict = mode == "fp32"
        torch.backends.cuda.matmul.allow_tf32 = False if strict else defaults[0]
        torch.backends.cudnn.allow_tf32 = False if strict else defaults[1]
        for b in [int(v) for v in args.batch.split(",") if v]:
            r = measure(model, dev, b, args)
            report["results"].append({"mode": mode, "batch": b, **r})
            print(
                f"{mode:<8} {b:>5} {r['forward']['images_per_s']:>14.0f} {r['input_grad']['images_per_s']:>17.0f} "
                f"{r['train_step']['images_per_s']:>17.0f}",
                flush=True,
            )
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

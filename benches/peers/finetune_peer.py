#!/usr/bin/env python3
"""PyTorch peer of `fmp-engine bench train`: one fine-tuning SGD step (spec section 5) of the
BackdoorBench PreActResNet18 -- train-mode forward, cross-entropy, backward with weight gradients,
SGD lr 0.01 momentum 0.9 -- at batch 256 on random images, timed over --steps steps after --warmup.
Prints one JSON object: median step time, images/s and the projected fine-tuning time
(--images x --epochs at the median step), the numbers the engine's report carries.

    python benches/peers/finetune_peer.py --threads 2 --width 16 --json target/bench/finetune-peer.json
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arch import PreActResNet18  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device(a.device)
    torch.manual_seed(a.seed)
    model = PreActResNet18(a.width, 10).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0)
    x = torch.rand(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    sync()
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    out = {
        "peer": "pytorch-finetune-step",
        "torch": torch.__version__,
        "device": a.device,
        "threads": torch.get_num_threads(),
        "width": a.width,
        "batch": a.batch,
        "step_s": times,
        "median_step_s": med,
        "images_per_s": a.batch / med,
        "projected_finetune_s": a.epochs * a.images / a.batch * med,
    }
    print(f"train step (batch {a.batch}, width {a.width}): median {med:.3f} s, {a.batch / med:.1f} images/s; "
          f"projected fine-tuning {out['projected_finetune_s']:.1f} s", file=sys.stderr)
    text = json.dumps(out, indent=1)
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json + ".tmp", "w") as f:
            f.write(text)
        os.replace(a.json + ".tmp", a.json)
    print(text)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write the PyTorch parity fixtures under tests/fixtures/ (run by hand, not by CI):

  /work/venv/bin/python tools/make_fixtures.py [--data /path/to/cifar10] [--skip-trained]

- preact8.safetensors: a width-8, 10-class PreActResNet18 (BackdoorBench definition, spec section 1)
  with random non-trivial weights and BN statistics (gamma != 1, beta != 0, running mean != 0, var != 1).
- preact8_io.safetensors: for that model, eval mode: inputs `x` [2,3,32,32] (pixel space), `logits`,
  `conv.<name>` (raw output of every conv), input gradients `igrad.<name>` of random cotangents
  `cot.<name>` at the IGRAD_TARGETS convs, and `igrad_self.<name>` (first image, cotangent = the
  conv's own output) for every conv; train mode on `train_x` [6,3,32,32] with
  `train_labels` (f32-coded ints): `train_logits`, `train_loss` (mean CE), `grad.<param>` for every
  parameter and `after.<bn>.running_{mean,var}` (running statistics after that one step).
- trained8.safetensors (stored as f16: also exercises the f16 path) + trained8_eval.json: a width-8
  model trained briefly on data_batch_1.bin; accuracy, predictions and top-2 logit margins of the
  f16-rounded model on the first 1000 images of test_batch.bin.
Normalisation (x - mean) / std is the model's first step and has no state_dict keys.
"""
import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

# Convs whose input gradient is stored: every role (stem, conv1, conv2, shortcut), shallow to deepest.
IGRAD_TARGETS = ["conv1", "layer1.1.conv1", "layer2.0.shortcut.0", "layer3.0.conv2", "layer4.1.conv2"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.247, 0.243, 0.261)


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x, taps):
        out = F.relu(self.bn1(x))
        if hasattr(self, "shortcut"):
            sc = self.shortcut(out)
            taps.append(sc)
        else:
            sc = x
        out = self.conv1(out)
        taps.append(out)
        out = self.conv2(F.relu(self.bn2(out)))
        taps.append(out)
        return out + sc


class PreActResNet18(nn.Module):
    def __init__(self, width=64, num_classes=10):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        cin = w
        for li, (cout, stride) in enumerate([(w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)]):
            blocks = nn.Sequential(PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1))
            setattr(self, f"layer{li + 1}", blocks)
            cin = cout
        self.linear = nn.Linear(8 * w, num_classes)
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x, taps=None):
        taps = [] if taps is None else taps
        out = self.conv1((x - self.mean) / self.std)
        taps.append(out)
        for li in range(1, 5):
            for blk in getattr(self, f"layer{li}"):
                out = blk(out, taps)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def conv_names():
    names = ["conv1"]
    for li in range(1, 5):
        for b in range(2):
            if b == 0 and li > 1:
                names.append(f"layer{li}.{b}.shortcut.0")
            names += [f"layer{li}.{b}.conv1", f"layer{li}.{b}.conv2"]
    return names


def randomize(model, gen):
    """Non-trivial BN parameters and running statistics that keep activations O(1)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.6, 1.4, generator=gen)
            m.bias.uniform_(-0.3, 0.3, generator=gen)
        model.linear.bias.uniform_(-0.2, 0.2, generator=gen)
        # Calibrate running stats on random images (momentum 1 = last batch's stats), then perturb.
        for m in bns:
            m.momentum = 1.0
        model.train()
        model(torch.rand(16, 3, 32, 32, generator=gen))
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
            m.running_var.mul_(torch.empty(m.running_var.shape).uniform_(0.7, 1.4, generator=gen))
            m.num_batches_tracked.fill_(7)
    model.eval()


def sd_for_save(model, dtype=None):
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone().contiguous()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        out[k] = v
    return out


def make_parity(outdir):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1234)
    model = PreActResNet18(8, 10)
    randomize(model, gen)
    save_file(sd_for_save(model), os.path.join(outdir, "preact8.safetensors"))

    io = {}
    names = conv_names()
    x = torch.rand(2, 3, 32, 32, generator=gen)
    io["x"] = x
    with torch.no_grad():
        taps = []
        io["logits"] = model(x, taps)
        for n, t in zip(names, taps):
            io[f"conv.{n}"] = t
    # Input gradients (eval mode) from random cotangents at several convs.
    for target in IGRAD_TARGETS:
        xg = x.clone().requires_grad_(True)
        taps = []
        model(xg, taps)
        t = taps[names.index(target)]
        cot = torch.randn(t.shape, generator=gen)
        (g,) = torch.autograd.grad(t, xg, cot)
        io[f"cot.{target}"] = cot
        io[f"igrad.{target}"] = g
    # Every conv, first image only: cotangent = the conv's own output (gradient of 0.5 * |A_k(x)|^2).
    x1 = x[:1].clone().requires_grad_(True)
    taps = []
    model(x1, taps)
    for n, t in zip(names, taps):
        (g,) = torch.autograd.grad(t, x1, t.detach(), retain_graph=True)
        io[f"igrad_self.{n}"] = g
    # One training step's gradients: batch statistics, mean cross-entropy.
    tx = torch.rand(6, 3, 32, 32, generator=gen)
    ty = torch.tensor([3, 0, 9, 3, 5, 1])
    model.train()
    model.zero_grad()
    logits = model(tx)
    loss = F.cross_entropy(logits, ty)
    loss.backward()
    io["train_x"] = tx
    io["train_labels"] = ty.float()
    io["train_logits"] = logits.detach()
    io["train_loss"] = loss.detach().reshape(1)
    for k, p in model.named_parameters():
        io[f"grad.{k}"] = p.grad
    for k, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            io[f"after.{k}.running_mean"] = m.running_mean
            io[f"after.{k}.running_var"] = m.running_var
    io = {k: v.detach().float().contiguous() for k, v in io.items()}
    save_file(io, os.path.join(outdir, "preact8_io.safetensors"))


def read_cifar(path, limit=None):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    if limit:
        raw = raw[:limit]
    y = torch.from_numpy(raw[:, 0].astype(np.int64))
    x = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return x, y


def make_trained(outdir, data):
    torch.manual_seed(0)
    x, y = read_cifar(os.path.join(data, "data_batch_1.bin"))
    model = PreActResNet18(8, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    epochs, bs = 4, 128
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * ((len(x) + bs - 1) // bs))
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb[flip] = xb[flip].flip(3)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep}: loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    sd = sd_for_save(model, torch.float16)
    save_file(sd, os.path.join(outdir, "trained8.safetensors"))
    # Evaluate exactly what was saved: the f16-rounded weights, computed in f32.
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    model.eval()
    tx, ty = read_cifar(os.path.join(data, "test_batch.bin"), 1000)
    with torch.no_grad():
        logits = torch.cat([model(tx[i : i + 250]) for i in range(0, 1000, 250)])
    top2 = logits.topk(2, dim=1).values
    preds = logits.argmax(1)
    acc = (preds == ty).float().mean().item()
    print(f"trained8: test acc on first 1000 = {acc:.4f}")
    with open(os.path.join(outdir, "trained8_eval.json"), "w") as f:
        json.dump(
            {
                "n": 1000,
                "acc": acc,
                "correct": int((preds == ty).sum()),
                "preds": preds.tolist(),
                "margins": [round(float(m), 6) for m in (top2[:, 0] - top2[:, 1])],
            },
            f,
        )


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    ap.add_argument("--data", default=os.path.join(here, "..", "..", "shared", "data", "cifar10"))
    ap.add_argument("--skip-trained", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    make_parity(args.out)
    if not args.skip_trained:
        make_trained(args.out, args.data)


if __name__ == "__main__":
    main()

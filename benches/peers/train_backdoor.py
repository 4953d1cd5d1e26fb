#!/usr/bin/env python3
"""Train a BadNets-backdoored PreActResNet18 in PyTorch, independently of the engine (issue 11's
"independent model"): spec section 7's recipe (SGD lr 0.01, momentum 0.9, wd 5e-4, batch 128, cosine,
RandomCrop(32, pad 4) + flip (--no-augment skips it), all-to-one target 0, poison rate 0.1, the 3x3 white patch at rows and
columns 29-31 applied to the uint8 image before augmentation), on the first --limit CIFAR-10 training
images for --epochs. Writes a safetensors state dict with the PyTorch names the engine loads, and prints
clean accuracy and ASR on the first --eval-limit test images (PyTorch's own numbers, to check the
engine's `eval` against).

    python benches/peers/train_backdoor.py --data ../shared/data/cifar10 --width 16 --epochs 30 \
        --out /tmp/indep/badnets16.safetensors
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from arch import PreActResNet18  # noqa: E402


def read_cifar(path, limit=None):
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)
    if limit:
        raw = raw[:limit]
    return raw[:, 1:].reshape(-1, 3, 32, 32).copy(), raw[:, 0].astype(np.int64)


def badnets(img):
    out = img.copy()
    out[:, :, 29:32, 29:32] = 255
    return out


def augment(x, gen):
    """RandomCrop(32, padding 4) + horizontal flip, per image (float batch in [0, 1])."""
    n = x.shape[0]
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(n):
        crop = padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        out[i] = crop.flip(2) if flip[i] else crop
    return out


def evaluate(model, x, y, target):
    model.eval()
    with torch.no_grad():
        to_t = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0)  # noqa: E731
        pred = torch.cat([model(to_t(x[i : i + 500])).argmax(1) for i in range(0, len(x), 500)]).numpy()
        keep = y != target
        xp = badnets(x[keep])
        pp = torch.cat([model(to_t(xp[i : i + 500])).argmax(1) for i in range(0, len(xp), 500)]).numpy()
    return {
        "acc": float((pred == y).mean() * 100),
        "asr": float((pp == target).mean() * 100),
        "ra": float((pp == y[keep]).mean() * 100),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=os.environ.get("FMP_DATA", "../shared/data") + "/cifar10")
    ap.add_argument("--out", required=True)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--eval-limit", type=int, default=2000)
    ap.add_argument("--poison-rate", type=float, default=0.1)
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-augment", action="store_true", help="skip RandomCrop + flip")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    x, y = read_cifar(os.path.join(a.data, "data_batch_1.bin"), a.limit)
    rng = np.random.default_rng(a.seed)
    poison = rng.choice(len(x), int(round(a.poison_rate * len(x))), replace=False)
    x[poison] = badnets(x[poison])
    y[poison] = a.target
    xt = torch.from_numpy(x.astype(np.float32) / 255.0)
    yt = torch.from_numpy(y)
    model = PreActResNet18(a.width, 10)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    steps = a.epochs * ((len(x) + a.batch - 1) // a.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    tx, ty = read_cifar(os.path.join(a.data, "test_batch.bin"), a.eval_limit)
    t0 = time.time()
    for ep in range(a.epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), a.batch):
            idx = perm[i : i + a.batch]
            xb = xt[idx] if a.no_augment else augment(xt[idx], gen)
            loss = F.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep + 1}/{a.epochs}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)", file=sys.stderr)
    from safetensors.torch import save_file

    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, a.out)
    res = evaluate(model, tx, ty, a.target)
    res.update({"width": a.width, "epochs": a.epochs, "augment": not a.no_augment, "limit": a.limit, "eval_limit": a.eval_limit,
                "seconds": round(time.time() - t0, 1), "out": a.out, "torch": torch.__version__})
    print(json.dumps(res))


if __name__ == "__main__":
    main()

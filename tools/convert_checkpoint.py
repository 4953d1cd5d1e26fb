#!/usr/bin/env python3
"""Convert a PyTorch checkpoint of a PreActResNet18 into the engine's .safetensors (needs torch + safetensors):

  python tools/convert_checkpoint.py CHECKPOINT.pt OUT.safetensors [--trust-pickle] [--key KEY]

CHECKPOINT is any of
- a state dict saved with torch.save(model.state_dict(), "m.pth");
- a whole model saved with torch.save(model, ...) (needs --trust-pickle);
- a BackdoorBench attack result (attack_result.pt: a dict whose 'model' entry is the state dict), or any
  dict holding the state dict under 'model', 'state_dict', 'model_state_dict' or 'net' (or --key KEY).

Names become the engine's (BackdoorBench PreActResNet18 state_dict names: conv1.weight, layer1.0.bn1.weight,
..., linear.bias): a wrapper prefix ('module.' from DataParallel, '1.' from nn.Sequential(norm, model),
'_orig_mod.' from torch.compile, or a combination) is stripped, the wrapper's own keys (a normalisation
layer's mean/std) are dropped, and everything stripped or dropped is printed. Float tensors are written as
float32, num_batches_tracked as int64. Missing or unexpected keys and wrong shapes are errors naming the
key. The output is written to a temporary file and renamed.

The file is read with torch.load(weights_only=True), which runs no code from the file. Checkpoints that
pickle other objects (a whole model, NumPy arrays in a BackdoorBench result) need --trust-pickle: only for
files you trust, since unpickling can run arbitrary code.
"""
import argparse
import os
import sys

STATE_DICT_KEYS = ("model", "state_dict", "model_state_dict", "net")


def fail(msg):
    print(f"convert_checkpoint: error: {msg}", file=sys.stderr)
    sys.exit(1)


def is_state_dict(obj, torch):
    return isinstance(obj, dict) and obj and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def find_state_dict(obj, torch, key, notes):
    """The state dict inside whatever the checkpoint holds."""
    if isinstance(obj, torch.nn.Module):
        notes.append(f"took the state dict of a whole {type(obj).__name__} model")
        return obj.state_dict()
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            fail(f"--key {key}: the checkpoint has no such entry")
        inner = obj[key]
        if isinstance(inner, torch.nn.Module):
            inner = inner.state_dict()
        if not is_state_dict(inner, torch):
            fail(f"--key {key}: that entry is not a state dict (name -> tensor)")
        notes.append(f"took the state dict from the checkpoint's '{key}' entry")
        return inner
    if is_state_dict(obj, torch):
        return obj
    if isinstance(obj, dict):
        for k in STATE_DICT_KEYS:
            inner = obj.get(k)
            if isinstance(inner, torch.nn.Module):
                inner = inner.state_dict()
            if is_state_dict(inner, torch):
                what = (
                    "a BackdoorBench attack result"
                    if k == "model" and ("model_name" in obj or "num_classes" in obj)
                    else "the checkpoint"
                )
                other = sorted(str(x) for x in obj if x != k)
                notes.append(
                    f"took the state dict from the '{k}' entry of {what}"
                    + (f" (left out: {', '.join(other)})" if other else "")
                )
                return inner
        fail(
            "no state dict found: the checkpoint is a dict with entries "
            f"{sorted(str(k) for k in obj)[:20]}; name the one holding the weights with --key"
        )
    fail(f"no state dict found in a {type(obj).__name__}")


def expected_keys(w, k):
    """The engine's names and shapes (src/weights.rs expected_keys)."""
    out = {"conv1.weight": (w, 3, 3, 3)}

    def bn(p, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            out[f"{p}.{s}"] = (c,)
        out[f"{p}.num_batches_tracked"] = ()

    cin = w
    for layer, cout in ((1, w), (2, 2 * w), (3, 4 * w), (4, 8 * w)):
        for b in range(2):
            p = f"layer{layer}.{b}"
            ci, down = (cin, layer > 1) if b == 0 else (cout, False)
            bn(f"{p}.bn1", ci)
            out[f"{p}.conv1.weight"] = (cout, ci, 3, 3)
            bn(f"{p}.bn2", cout)
            out[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            if down:
                out[f"{p}.shortcut.0.weight"] = (cout, ci, 1, 1)
        cin = cout
    out["linear.weight"] = (k, 8 * w)
    out["linear.bias"] = (k,)
    return out


def find_prefix(sd):
    """The P with P + 'conv1.weight' the stem (not inside a layer) and P + 'linear.weight' present."""
    cands = sorted(
        (
            k[: -len("conv1.weight")]
            for k in sd
            if k.endswith("conv1.weight")
        ),
        key=len,
    )
    cands = [
        p
        for p in cands
        if "layer" not in p and (p == "" or p.endswith(".")) and p + "linear.weight" in sd
    ]
    if not cands:
        fail(
            "not a PreActResNet18 state dict: no conv1.weight with a linear.weight beside it "
            f"(first keys: {list(sd)[:8]})"
        )
    if len(cands) > 1:
        fail(f"several models in one state dict (prefixes {cands}); convert one at a time")
    return cands[0]


def convert(sd, torch, notes):
    prefix = find_prefix(sd)
    out, dropped = {}, []
    for k, v in sd.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = v
        else:
            dropped.append(k)
    if prefix:
        notes.append(f"stripped the wrapper prefix '{prefix}' from {len(out)} keys")
    if dropped:
        notes.append(
            f"dropped {len(dropped)} key(s) outside the model (the wrapper's own, e.g. a normalisation "
            f"layer; the engine normalises with the dataset's mean/std): {', '.join(dropped)}"
        )
    w = out["conv1.weight"].shape[0]
    k = out["linear.weight"].shape[0]
    want = expected_keys(w, k)
    missing = [n for n in want if n not in out and not n.endswith("num_batches_tracked")]
    if missing:
        fail(f"missing key(s) for a width-{w}, {k}-class PreActResNet18: {', '.join(missing[:10])}")
    unexpected = [n for n in out if n not in want]
    if unexpected:
        fail(f"unexpected key(s) (not in the BackdoorBench PreActResNet18): {', '.join(unexpected[:10])}")
    result, converted = {}, set()
    for n, shape in want.items():
        if n not in out:
            continue
        t = out[n].detach().cpu()
        if tuple(t.shape) != shape:
            fail(f"{n}: shape {tuple(t.shape)}, expected {shape} for width {w}, {k} classes")
        if n.endswith("num_batches_tracked"):
            t = t.to(torch.int64)
        else:
            if not t.is_floating_point():
                fail(f"{n}: {t.dtype} tensor, expected floating point")
            if t.dtype != torch.float32:
                converted.add(str(t.dtype).replace("torch.", ""))
                t = t.to(torch.float32)
            if not torch.isfinite(t).all():
                fail(f"{n}: holds NaN or Inf")
        result[n] = t.contiguous()
    if converted:
        notes.append(f"converted {', '.join(sorted(converted))} tensors to float32")
    return result, w, k, prefix


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint", help=".pt/.pth state dict, whole model or BackdoorBench attack result")
    ap.add_argument("out", help="output .safetensors")
    ap.add_argument("--key", help="the checkpoint entry that holds the state dict")
    ap.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow full unpickling (whole models, NumPy arrays): runs code from the file; trusted files only",
    )
    a = ap.parse_args()
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError as e:
        fail(f"needs torch and safetensors ({e}); e.g. pip install torch safetensors")
    if not os.path.isfile(a.checkpoint):
        fail(f"{a.checkpoint}: no such file")
    try:
        obj = torch.load(a.checkpoint, map_location="cpu", weights_only=not a.trust_pickle)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds
        if not a.trust_pickle and "weights_only" in str(e):
            fail(
                f"{a.checkpoint}: holds more than tensors, so the safe loader refused it; if you trust "
                "the file, run again with --trust-pickle"
            )
        fail(f"{a.checkpoint}: cannot read it with torch.load: {e}")
    notes = []
    sd = find_state_dict(obj, torch, a.key, notes)
    tensors, w, k, prefix = convert(sd, torch, notes)
    for n in notes:
        print(n)
    tmp = f"{a.out}.tmp{os.getpid()}"
    try:
        save_file(
            tensors,
            tmp,
            metadata={
                "converted_from": os.path.basename(a.checkpoint),
                "stripped_prefix": prefix,
            },
        )
        os.replace(tmp, a.out)
    except Exception as e:  # noqa: BLE001
        if os.path.exists(tmp):
            os.remove(tmp)
        fail(f"{a.out}: cannot write it: {e}")
    print(f"wrote {a.out}: PreActResNet18 width {w}, {k} classes, {len(tensors)} tensors")


if __name__ == "__main__":
    main()

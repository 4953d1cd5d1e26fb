"""PreActResNet18 (BackdoorBench definition, spec section 1) for the peer benchmarks, and its conv list.

The conv list mirrors `fmp_engine::bench::count::Arch` (execution order, names, shapes) so peer
results pair with the engine's by the same shape key.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)


class PreActBlock(nn.Module):
    def __init__(self, in_c, out_c, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_c)
        self.conv1 = nn.Conv2d(in_c, out_c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_c)
        self.conv2 = nn.Conv2d(out_c, out_c, 3, 1, 1, bias=False)
        if stride != 1 or in_c != out_c:
            self.shortcut = nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet18(nn.Module):
    """Normalisation is the first step inside the model (pixel-space input in [0, 1])."""

    def __init__(self, width=64, num_classes=10, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        c = width
        for li in range(1, 5):
            out_c = width << (li - 1)
            blocks = []
            for b in range(2):
                stride = 2 if li > 1 and b == 0 else 1
                blocks.append(PreActBlock(c, out_c, stride))
                c = out_c
            setattr(self, f"layer{li}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x):
        out = self.conv1((x - self.mean) / self.std)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))

    def convs_in_execution_order(self):
        """(name, module) of the 20 convs; in a downsampling block the shortcut runs before conv1."""
        out = [("conv1", self.conv1)]
        for li in range(1, 5):
            for b, blk in enumerate(getattr(self, f"layer{li}")):
                p = f"layer{li}.{b}"
                if hasattr(blk, "shortcut"):
                    out.append((f"{p}.shortcut.0", blk.shortcut[0]))
                out.append((f"{p}.conv1", blk.conv1))
                out.append((f"{p}.conv2", blk.conv2))
        return out


def conv_shapes(width=64):
    """(name, c_in, h_in, c_out, kernel, stride, pad) of every conv, execution order, batch-free."""
    out = [("conv1", 3, 32, width, 3, 1, 1)]
    c, h = width, 32
    for li in range(1, 5):
        out_c = width << (li - 1)
        for b in range(2):
            s = 2 if li > 1 and b == 0 else 1
            p = f"layer{li}.{b}"
            if s != 1 or c != out_c:
                out.append((f"{p}.shortcut.0", c, h, out_c, 1, s, 0))
            out.append((f"{p}.conv1", c, h, out_c, 3, s, 1))
            out.append((f"{p}.conv2", out_c, h // s, out_c, 3, 1, 1))
            c, h = out_c, h // s
    return out


def dims_key(c_in, h_in, c_out, k, s, pad):
    """The engine's shape string, e.g. '64x32x32->128x16x16 k3s2'."""
    h_out = (h_in + 2 * pad - k) // s + 1
    return f"{c_in}x{h_in}x{h_in}->{c_out}x{h_out}x{h_out} k{k}s{s}"


def load_safetensors(model, path):
    """Load a PyTorch-named state dict from safetensors (prefixes '1.' / 'module.' stripped)."""
    from safetensors.torch import load_file

    sd = load_file(path)
    clean = {}
    for k, v in sd.items():
        for pre in ("module.", "1."):
            if k.startswith(pre):
                k = k[len(pre):]
        clean[k] = v
    missing, unexpected = model.load_state_dict(clean, strict=False)
    missing = [m for m in missing if not m.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"{path}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    return model


def randomise_bn(model, seed):
    """Non-trivial eval-mode BN statistics so random-weight runs exercise real affine maps."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = 0.2 * torch.randn(n, generator=g)
            m.running_mean.data = 0.2 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)
    return model

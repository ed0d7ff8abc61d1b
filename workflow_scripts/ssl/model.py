"""SimCLR encoder f and projection head g for 35 x 35 pixel multi-band cutouts.

SimCLR (Chen et al. 2020, "A Simple Framework for Contrastive Learning of Visual
Representations", ICML) trains h = f(x) and z = g(h) with a contrastive loss on z
(``ssl.loss``); the representation h, not the projection z, is what goes downstream
(UMAP, neighbours, ranking). Chen et al. show h keeps information (colour, orientation)
that g learns to discard.

Encoder f: a small ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition",
CVPR) of BasicBlocks, in the "CIFAR" form SimCLR itself uses for 32 x 32 images (Chen et al.
2020, appendix, CIFAR-10 experiments): a 3 x 3 stride-1 stem and no max-pool, because a quasar or dwarf is a
point source a few pixels (PSF FWHM ~ 4 px at 0.168"/px) wide in a 35 x 35 cutout; a 7 x 7
stride-2 stem plus max-pool would throw 15 of 16 pixels away before the first block.

    stem   conv3x3(C_in -> w), norm, ReLU               35 x 35
    stage 1  blocks[0] x BasicBlock(w)                  35 x 35
    stage 2  blocks[1] x BasicBlock(2w), first stride 2 18 x 18
    stage 3  blocks[2] x BasicBlock(4w), first stride 2  9 x  9
    ...      (one stage per entry of ``blocks``)
    global average pool -> Linear(w 2^(S-1) -> repr_dim) = h

BasicBlock: y = ReLU(x' + norm(conv3x3(ReLU(norm(conv3x3(x)))))), x' = x or, when the shape
changes, norm(conv1x1_stride(x)) (projection shortcut, He et al. 2016 option B).

Projection head g (Chen et al. 2020, sec. 2.1): z = W2 ReLU(norm(W1 h)), as in the reference
implementation (Linear -> BN -> ReLU -> Linear).

Normalisation layer (``norm``): "batch" (default) or "group".
- "batch": BatchNorm, as in SimCLR. Fastest on GPU (cuDNN, channels_last, bf16) and the
  standard choice for batches of >= 64 views. On a single device, run the 2N views through
  the model in ONE forward pass (``torch.cat([x1, x2])``): the batch statistics are then
  those of the global batch, which is what SimCLR's "global BN" achieves across devices and
  avoids the per-view statistics leak (Chen et al. 2020 sec. 2.2 "Global BN"; He et al. 2020
  "shuffle BN"). Train mode needs >= 2 samples per batch; eval mode uses running statistics.
- "group": GroupNorm (Wu & He 2018) with gcd(channels, 8) groups; independent of the batch,
  so results do not depend on batch size or composition, at some speed cost on GPU
  (under CUDA autocast group_norm runs in float32). Prefer it for small batches (< ~32
  views, e.g. CPU debugging runs).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

NORMS = ("batch", "group")

DEFAULT_CONFIG: dict[str, Any] = {
    "width": 32,
    "blocks": (2, 2, 2),
    "repr_dim": 128,
    "proj_hidden_dim": 256,
    "proj_dim": 64,
    "norm": "batch",
}


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def norm2d(channels: int, norm: str) -> nn.Module:
    """BatchNorm2d or GroupNorm(gcd(channels, 8), channels) for (B, C, H, W) maps."""
    _check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(channels, 8), channels)


def norm1d(features: int, norm: str) -> nn.Module:
    """BatchNorm1d or GroupNorm(gcd(features, 8), features) for (B, F) vectors."""
    _check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm1d(features)
    return nn.GroupNorm(math.gcd(features, 8), features)


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    """3 x 3 convolution, 'same' padding, no bias (a norm layer follows)."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3 x 3 convolutions and an identity or
    1 x 1 projection shortcut; y = ReLU(F(x) + shortcut(x))."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = norm2d(c_out, norm)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = norm2d(c_out, norm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), norm2d(c_out, norm))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Encoder(nn.Module):
    """f: (B, in_channels, H, W) -> h (B, repr_dim). Any H, W (35 x 35 by design).

    Stage s (0-based) has ``width * 2**s`` channels and ``blocks[s]`` BasicBlocks; stages
    after the first start with stride 2 (35 -> 18 -> 9 px). Works with channels_last input.
    """

    def __init__(self, in_channels: int, width: int = 32, blocks: tuple[int, ...] = (2, 2, 2),
                 repr_dim: int = 128, norm: str = "batch") -> None:
        super().__init__()
        _check_norm(norm)
        blocks = tuple(int(b) for b in blocks)
        if in_channels < 1 or width < 1 or repr_dim < 1:
            raise ValueError("in_channels, width and repr_dim must be >= 1")
        if not blocks or min(blocks) < 1:
            raise ValueError(f"blocks must be a non-empty sequence of ints >= 1, got {blocks}")
        self.in_channels = in_channels
        self.repr_dim = repr_dim
        self.stem = nn.Sequential(conv3x3(in_channels, width), norm2d(width, norm), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        c_in = width
        for s, n_blocks in enumerate(blocks):
            c_out = width * 2**s
            layers = [BasicBlock(c_in if i == 0 else c_out, c_out, stride=2 if (s > 0 and i == 0) else 1, norm=norm)
                      for i in range(n_blocks)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, repr_dim)
        self.feature_dim = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        # mean over H, W rather than AdaptiveAvgPool2d: the latter has no deterministic CUDA backward
        return self.fc(x.mean(dim=(2, 3)))


class ProjectionHead(nn.Module):
    """g: h (B, repr_dim) -> z (B, out_dim); z = W2 ReLU(norm(W1 h)) (Chen et al. 2020)."""

    def __init__(self, repr_dim: int, hidden_dim: int = 256, out_dim: int = 64, norm: str = "batch") -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(repr_dim, hidden_dim, bias=False),
            norm1d(hidden_dim, norm),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)


class SimCLRModel(nn.Module):
    """Encoder f and projection head g: ``forward(x) -> (h, z)``, ``represent(x) -> h``."""

    def __init__(self, encoder: Encoder, head: ProjectionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.encoder(x)
        return h, self.head(h)

    def represent(self, x: Tensor) -> Tensor:
        """h = f(x), the representation used downstream (call under eval() and no_grad())."""
        return self.encoder(x)


def build_model(in_channels: int, cfg: dict[str, Any] | None = None) -> SimCLRModel:
    """SimCLRModel from a config dict; missing keys take DEFAULT_CONFIG's values.

    Keys: width, blocks (list or tuple of ints), repr_dim, proj_hidden_dim, proj_dim, norm
    ("batch" | "group"). Unknown keys raise ValueError naming them.
    """
    cfg = dict(cfg or {})
    unknown = sorted(set(cfg) - set(DEFAULT_CONFIG))
    if unknown:
        raise ValueError(f"unknown model config keys {unknown}; allowed: {sorted(DEFAULT_CONFIG)}")
    c = {**DEFAULT_CONFIG, **cfg}
    encoder = Encoder(in_channels, width=int(c["width"]), blocks=tuple(c["blocks"]),
                      repr_dim=int(c["repr_dim"]), norm=c["norm"])
    head = ProjectionHead(int(c["repr_dim"]), hidden_dim=int(c["proj_hidden_dim"]),
                          out_dim=int(c["proj_dim"]), norm=c["norm"])
    return SimCLRModel(encoder, head)


def count_parameters(module: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)

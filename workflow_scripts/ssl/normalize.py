"""Tensor normalisation as a run parameter, applied on the fly to whole batches on the device.

The stacked tensors stay in raw nJy per HSC pixel (``workflow_scripts.tensors``); how they are
scaled before the encoder is the first tuning knob of the talk ("one value for the whole tensor
vs per image / per band"), so it is chosen per run and never baked into the stack. Every method
is a vectorised torch expression over a ``(B, C, H, W)`` batch (no per-sample Python loop),
computed in float32 with autocast disabled, and returns the input's dtype, device and memory
format. Masked pixels are 0 on output (the neutral value of every method) and no method can
produce NaN or inf, not even for an all-masked image.

Methods (``NORMALISATIONS``), with s_b = ``meta["stats"][b]["sigma_mad"]`` and
m_b = ``meta["stats"][b]["median"]`` (robust statistics over the unmasked pixels of all shards):

``global``
    x / S with ONE number S for the whole tensor set: S = the median over bands of s_b
    (param ``scale`` overrides it). No offset: the coadds are sky-subtracted (|m_b| < 0.1 s_b
    in grizy) and a single multiplicative constant keeps every flux ratio, i.e. the colours
    that carry the dropout signal, exactly. The price: the noisy near-IR channels (s_J, s_Ks
    ~ 10-40 S) dominate the input's dynamic range.
``per_image``
    x / s_img with s_img = 1.4826 MAD of the image's own unmasked pixels, all channels
    together (one number per image; floored at ``floor`` x the global S so a blank or
    all-masked image cannot blow up). Keeps colours within an image, removes its brightness.
``per_band``
    (x - m_b) / s_b: each band whitened to unit survey noise. Equalises bands (a 1-sigma
    fluctuation means the same everywhere) but colours become signal-to-noise ratios.
``asinh``
    asinh(x / (k s_b)) with softening k (param ``softening``, default 1: Lupton, Gunn &
    Szalay 1999 choose b ~ the noise level): linear within the noise, logarithmic for bright
    sources, so a y = 18 star and a y = 24 quasar both fit the network's range. Optional
    ``center=True`` subtracts m_b first; optional ``clip`` clamps to [-clip, clip].

Every method also accepts ``clip`` (applied after scaling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping

import torch
from torch import Tensor

NORMALISATIONS: tuple[str, ...] = ("global", "per_image", "per_band", "asinh")

# Allowed extra parameters of each method (besides "clip").
_PARAMS: dict[str, tuple[str, ...]] = {
    "global": ("scale", "clip"),
    "per_image": ("floor", "clip"),
    "per_band": ("clip",),
    "asinh": ("softening", "center", "clip"),
}
SIGMA_PER_MAD = 1.4826


def _band_stat(meta: Mapping[str, Any], band: str, key: str, default: float) -> float:
    """One per-band statistic of meta.json, or ``default`` when absent / non-finite."""
    value = meta.get("stats", {}).get(band, {}).get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return default
    return value if math.isfinite(value) else default


def band_noise(meta: Mapping[str, Any]) -> list[float]:
    """Per-band robust noise sigma_mad (nJy) in ``meta["bands"]`` order.

    Falls back to the std, then 1 nJy, for a band without usable statistics (e.g. no pixel
    of that band was ever covered), so downstream divisions stay finite.
    """
    out = []
    for band in meta["bands"]:
        s = _band_stat(meta, band, "sigma_mad", float("nan"))
        if not s > 0:
            s = _band_stat(meta, band, "std", float("nan"))
        out.append(s if s > 0 else 1.0)
    return out


def band_median(meta: Mapping[str, Any]) -> list[float]:
    """Per-band median (nJy) in ``meta["bands"]`` order (0 where unknown)."""
    return [_band_stat(meta, band, "median", 0.0) for band in meta["bands"]]


def keep_format(out: Tensor, like: Tensor) -> Tensor:
    """``out`` in ``like``'s memory format (channels_last in, channels_last out)."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last) and not like.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    return out


@dataclass(frozen=True, eq=False)
class Normalizer:
    """A normalisation with its constants; call it on ``(images, mask)`` batches.

    ``offset`` and ``scale`` are float32 tensors of shape (C,) (per-band constants; ``global``
    repeats its single value). Build with :meth:`from_meta`; move with :meth:`to` (the call
    also moves them on demand, so forgetting ``.to`` costs a small copy, not an error).
    """

    method: str
    offset: Tensor
    scale: Tensor
    clip: float | None = None
    softening: float = 1.0
    floor: float = 1e-3

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], method: str, **params: Any) -> "Normalizer":
        """Normalisation ``method`` (one of ``NORMALISATIONS``) with constants from meta.json."""
        if method not in NORMALISATIONS:
            raise ValueError(f"unknown normalisation {method!r}; allowed: {', '.join(NORMALISATIONS)}")
        unknown = sorted(set(params) - set(_PARAMS[method]))
        if unknown:
            raise ValueError(f"normalisation {method!r} takes parameters {list(_PARAMS[method])}, "
                             f"not {unknown}")
        clip = params.get("clip")
        if clip is not None and not float(clip) > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip!r}")
        noise = torch.tensor(band_noise(meta), dtype=torch.float32)
        median = torch.tensor(band_median(meta), dtype=torch.float32)
        global_scale = float(noise.median())  # torch's median of an even count is the lower one
        zeros = torch.zeros_like(noise)
        kw: dict[str, Any] = {"clip": None if clip is None else float(clip)}
        if method == "global":
            s = global_scale if params.get("scale") is None else float(params["scale"])
            if not s > 0:
                raise ValueError(f"global scale must be > 0, got {s}")
            return cls(method, zeros, torch.full_like(noise, s), **kw)
        if method == "per_image":
            floor = float(params.get("floor", 1e-3))
            if not floor > 0:
                raise ValueError(f"per_image floor must be > 0, got {floor}")
            # scale holds the floor (absolute, nJy) for per_image.
            return cls(method, zeros, torch.full_like(noise, floor * global_scale), floor=floor, **kw)
        if method == "per_band":
            return cls(method, median, noise, **kw)
        k = float(params.get("softening", 1.0))
        if not k > 0:
            raise ValueError(f"asinh softening must be > 0, got {k}")
        offset = median if params.get("center", False) else zeros
        return cls(method, offset, noise * k, softening=k, **kw)

    def to(self, device: torch.device | str) -> "Normalizer":
        """A copy whose constant tensors live on ``device``."""
        return replace(self, offset=self.offset.to(device), scale=self.scale.to(device))

    def __call__(self, images: Tensor, mask: Tensor) -> Tensor:
        """Normalised ``images`` (B, C, H, W); masked pixels 0; same dtype/device/format."""
        if images.dim() != 4 or images.shape != mask.shape:
            raise ValueError(f"images and mask must be (B, C, H, W) of one shape, got "
                             f"{tuple(images.shape)} and {tuple(mask.shape)}")
        if images.shape[1] != self.scale.numel():
            raise ValueError(f"{images.shape[1]} channels but the normalisation knows {self.scale.numel()} bands")
        with torch.autocast(device_type=images.device.type, enabled=False):
            x = images.float()
            mask = mask.to(device=x.device, dtype=torch.bool)
            x = torch.where(mask, 0.0, torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0))
            offset = self.offset.to(x.device).view(1, -1, 1, 1)
            scale = self.scale.to(x.device).view(1, -1, 1, 1)
            if self.method == "per_image":
                y = x / _per_image_scale(x, mask).clamp_min(scale[:, :1])
            elif self.method == "asinh":
                y = torch.asinh((x - offset) / scale)
            else:
                y = (x - offset) / scale
            if self.clip is not None:
                y = y.clamp(-self.clip, self.clip)
            y = torch.where(mask, 0.0, y)
        return keep_format(y.to(images.dtype), images)


def _per_image_scale(x: Tensor, mask: Tensor) -> Tensor:
    """1.4826 MAD of each image's unmasked pixels over all channels, shape (B, 1, 1, 1).

    Masked pixels become NaN and ``nanmedian`` skips them; an all-masked image gives NaN,
    replaced by 0 here (the caller's floor then applies).
    """
    flat = torch.where(mask, float("nan"), x).flatten(1)
    med = flat.nanmedian(dim=1, keepdim=True).values
    mad = (flat - med).abs().nanmedian(dim=1).values
    return torch.nan_to_num(SIGMA_PER_MAD * mad, nan=0.0).view(-1, 1, 1, 1)

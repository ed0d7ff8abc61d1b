"""SimCLR augmentations for multi-band HSC (+ VHS) cutouts, vectorised over whole batches.

Every augmentation is a torch expression over a ``(B, C, H, W)`` batch with per-sample random
parameters (no per-sample Python loop), runs on the batch's device, and draws its randomness
from a ``torch.Generator`` so a seed reproduces it. Each is switched and sized by
:class:`AugmentConfig` (the ``training.augment`` block of the config).

Order of augmentation and normalisation (a decision): augment the RAW nJy images, THEN
normalise (``workflow_scripts.ssl.normalize``). The operations below are physical (a dust
screen, a wider PSF, a shallower exposure, a pointing offset) and their parameters are physical
(E(B-V) in mag, sigma in HSC pixels, noise in units of the survey's own per-band sigma_MAD);
applied after a non-linear stretch (asinh) they would not be. So the training step is
``v1, m1, v2, m2 = aug.two_views(x_raw, mask, gen)`` then ``norm(v1, m1)``, ``norm(v2, m2)``.

Why each augmentation is a sensible invariance for this science (Hayat et al. 2021, ApJL 911,
L33; Stein et al. 2021, arXiv:2110.00023 -- self-supervised learning on SDSS / DESI Legacy
Survey images used rotations, flips, jitter crops, PSF blur, noise and Galactic reddening):

* flips / rotations (dihedral group D4): the sky has no preferred orientation, and the cutouts
  are odd-sized so the object stays on the centre pixel (the talk's only augmentation);
* sub-pixel shift: catalogue centroids and the HSC/VHS reprojection are uncertain at the
  ~0.1-1 px level; a representation must not depend on where within the pixel the object sits;
* PSF blur: seeing varies from field to field (HSC median 0.6-0.8 arcsec); a point source under
  worse seeing is still a point source;
* noise: depth varies with exposure time and sky; a quasar at S/N 10 and the same quasar at S/N 7
  should map close together (this also teaches the encoder what noise looks like);
* reddening jitter: catalogue fluxes are corrected with a dust map whose errors are ~0.01-0.03
  mag in E(B-V); colours move along the reddening vector, bluer bands more;
* band dropout: bands are missing in practice (no VHS coverage, masked HSC channels); the
  embedding should degrade gracefully instead of jumping.

Masks follow the images: an out-of-frame or masked source pixel makes the output pixel masked
(when it carries at least half of that pixel's interpolation / kernel weight; otherwise the
value is renormalised over the good pixels, so masked zeros never bleed in as "dark sky").
Masked pixels are 0 on output. Computation is float32 with autocast disabled (bf16 would cost
the faint fluxes their precision); the output has the input's dtype, device and memory format.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from workflow_scripts.ssl.normalize import band_noise, keep_format

# Extinction A_b / E(B-V) (mag per mag of E(B-V)): HSC grizy (Schlafly & Finkbeiner 2011 style
# coefficients as used by HSC-SSP), VISTA J, Ks.
EXTINCTION_R: dict[str, float] = {"g": 3.24, "r": 2.28, "i": 1.63, "z": 1.26, "y": 1.08, "J": 0.72, "Ks": 0.31}
# A pixel whose good-pixel weight (interpolation or kernel) is below this is masked.
MIN_VALID_WEIGHT = 0.5
# Blur kernels reach this many sigma.
KERNEL_SIGMAS = 4.0


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations, how strong. All in physical units; 0 / False switches one off."""

    flips_rotations: bool = True  # one of the 8 D4 transforms per sample, uniformly
    shift_px: float = 1.0  # translation, uniform in a disc of this radius (HSC pixels)
    psf_blur_max_px: float = 0.0  # Gaussian blur sigma ~ U[0, this] per sample (HSC pixels)
    noise_scale: float = 0.0  # added noise sigma_b = noise_scale x survey sigma_MAD_b
    reddening_sigma: float = 0.0  # Delta E(B-V) ~ N(0, this) per sample (mag)
    band_dropout: float = 0.0  # probability of dropping each band of each sample

    def __post_init__(self) -> None:
        if not isinstance(self.flips_rotations, bool):
            raise ValueError(f"augment.flips_rotations must be true/false, got {self.flips_rotations!r}")
        for name in ("shift_px", "psf_blur_max_px", "noise_scale", "reddening_sigma", "band_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"augment.{name} must be a finite number >= 0, got {value!r}")
        if self.band_dropout >= 1:
            raise ValueError(f"augment.band_dropout must be < 1, got {self.band_dropout}")

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> "AugmentConfig":
        """From the ``augment`` block of a run; unknown keys are an error (typos must not pass)."""
        config = dict(config or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(config) - set(allowed))
        if unknown:
            raise ValueError(f"unknown augmentation key(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Deterministic building blocks (parameters given per sample). Shapes: images / mask (B, C, H, W).
# ---------------------------------------------------------------------------------------------

def d4_permutations(size: int, device: torch.device | str | None = None) -> Tensor:
    """(8, size*size) source-pixel indices of the 8 symmetries of the square.

    Transform k = ``rot90`` by (k mod 4) quarter turns, then a left-right flip if k >= 4.
    ``flat.gather(-1, perm[k])`` applies transform k to a flattened image.
    """
    idx = torch.arange(size * size, device=device).view(size, size)
    perms = []
    for k in range(8):
        t = torch.rot90(idx, k % 4, dims=(0, 1))
        perms.append((t.flip(1) if k >= 4 else t).reshape(-1))
    return torch.stack(perms)


def dihedral(x: Tensor, k: Tensor, perms: Tensor | None = None) -> Tensor:
    """Transform k[b] (0..7, see :func:`d4_permutations`) of each sample; any dtype (mask too)."""
    b, c, h, w = x.shape
    if h != w:
        raise ValueError(f"flips/rotations need square images, got {h} x {w}")
    if perms is None:
        perms = d4_permutations(h, x.device)
    index = perms[k.to(perms.device).long()].to(x.device)  # (B, H*W)
    out = x.reshape(b, c, h * w).gather(2, index[:, None, :].expand(b, c, h * w))
    return out.view(b, c, h, w)


def translate(images: Tensor, mask: Tensor, dx: Tensor, dy: Tensor) -> tuple[Tensor, Tensor]:
    """Move each sample's content by (dx[b], dy[b]) pixels (+x = increasing column index).

    Bilinear interpolation (``grid_sample``), normalised over good pixels: pixels that draw at
    least half their weight from masked or out-of-frame pixels become masked. Bilinear keeps
    total flux and moves the centroid by exactly (dx, dy) away from the edges; it also smooths
    the pixel noise slightly (variance x 0.25 at a half-pixel shift in x and y), which the noise
    augmentation, applied afterwards, partly restores.
    """
    b, c, h, w = images.shape
    good = (~mask).to(images.dtype)
    theta = torch.zeros(b, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    # Output pixel p samples input at p - d; normalised coordinates span 2 over W (or H) pixels.
    theta[:, 0, 2] = -2.0 * dx.to(images) / w
    theta[:, 1, 2] = -2.0 * dy.to(images) / h
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    both = torch.cat([images * good, good], dim=1)
    moved = F.grid_sample(both, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return _renormalise(moved[:, :c], moved[:, c:], mask=None)


def blur_matrices(sigma: Tensor, size: int, radius: int | None = None) -> Tensor:
    """(N, size, size) row operators of 1-D Gaussian blurs with reflecting edges.

    ``M @ X @ M.T`` is the separable 2-D blur of X. Each row sums to 1; away from the edges each
    column does too, so a source's flux is conserved. sigma ~ 0 gives the identity.
    """
    sigma = sigma.reshape(-1).float().clamp_min(1e-2)
    if radius is None:
        radius = math.ceil(KERNEL_SIGMAS * float(sigma.max()))
    radius = max(1, min(int(radius), size - 1))
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    weights = weights / weights.sum(dim=1, keepdim=True)  # (N, K)
    src = torch.arange(size, device=sigma.device)[:, None] + offsets.long()[None, :]  # (size, K)
    src = torch.where(src < 0, -src, src)
    src = torch.where(src > size - 1, 2 * (size - 1) - src, src)
    # M[n, i, j] = sum_d w[n, d] [src(i, d) == j]: a matmul with a one-hot table rather than a
    # scatter_add, so it stays deterministic on CUDA (torch.use_deterministic_algorithms).
    onehot = (src[:, :, None] == torch.arange(size, device=sigma.device)).float()  # (size, K, size)
    return torch.einsum("nk,ikj->nij", weights, onehot)


def gaussian_blur(images: Tensor, mask: Tensor, sigma: Tensor, radius: int | None = None) -> tuple[Tensor, Tensor]:
    """Blur each sample with a Gaussian of sigma[b] pixels (all bands alike).

    Normalised convolution (blur(x * good) / blur(good)), so masked zeros do not darken their
    neighbours; a pixel with less than half its kernel weight on good pixels becomes masked.
    """
    b, c, h, w = images.shape
    if h != w:
        raise ValueError(f"blur needs square images, got {h} x {w}")
    m = blur_matrices(sigma.to(images.device), h, radius)[:, None]  # (B, 1, H, H)
    good = (~mask).to(images.dtype)
    both = torch.cat([images * good, good], dim=1)
    blurred = m @ both @ m.transpose(-1, -2)
    return _renormalise(blurred[:, :c], blurred[:, c:], mask=mask)


def redden(images: Tensor, delta_ebv: Tensor, coefficients: Tensor) -> Tensor:
    """Multiply band b of sample n by 10^(-0.4 R_b dE(B-V)_n): a thin dust screen.

    Colour m_b1 - m_b2 changes by (R_b1 - R_b2) dE, so bluer bands change more.
    """
    factor = torch.pow(10.0, -0.4 * delta_ebv.to(images)[:, None] * coefficients.to(images)[None, :])
    return images * factor[:, :, None, None]


def drop_bands(images: Tensor, mask: Tensor, drop: Tensor) -> tuple[Tensor, Tensor]:
    """Zero and mask the bands with drop[b, c] True."""
    d = drop[:, :, None, None].to(mask.device)
    return torch.where(d, 0.0, images), mask | d


def _renormalise(weighted: Tensor, weight: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """value = weighted / weight where weight >= MIN_VALID_WEIGHT, else masked (0)."""
    bad = weight < MIN_VALID_WEIGHT
    if mask is not None:
        bad = bad | mask
    value = torch.where(bad, 0.0, weighted / weight.clamp_min(MIN_VALID_WEIGHT))
    return value, bad


# ---------------------------------------------------------------------------------------------
# The random augmenter.
# ---------------------------------------------------------------------------------------------

class Augmenter:
    """Random augmentations of raw nJy batches (then normalise).

    ``Augmenter(AugmentConfig.from_dict(cfg), meta)`` where ``meta`` is the tensors' meta.json
    (``bands`` and per-band ``stats`` -> noise sigma and extinction coefficients).
    ``aug(images, mask, generator) -> (images, mask)``; ``aug.two_views(...)`` gives the pair.

    Randomness: drawn on ``generator.device`` and moved to the batch's device. A generator on
    the training device is fastest (the noise field is the only large draw); a CPU generator
    gives the same augmentations on every device. ``generator=None`` uses torch's global RNG.
    """

    def __init__(self, config: AugmentConfig | Mapping[str, Any] | None, meta: Mapping[str, Any]) -> None:
        self.config = config if isinstance(config, AugmentConfig) else AugmentConfig.from_dict(config)
        self.bands: tuple[str, ...] = tuple(meta["bands"])
        missing = [b for b in self.bands if b not in EXTINCTION_R]
        if missing and self.config.reddening_sigma > 0:
            raise ValueError(f"no extinction coefficient for band(s) {missing}; known: {sorted(EXTINCTION_R)}")
        self.noise = torch.tensor(band_noise(meta), dtype=torch.float32)
        self.extinction = torch.tensor([EXTINCTION_R.get(b, 0.0) for b in self.bands], dtype=torch.float32)
        self._constants: dict[tuple[str, int], tuple[Tensor, Tensor, Tensor]] = {}

    def _on(self, device: torch.device, size: int) -> tuple[Tensor, Tensor, Tensor]:
        """(noise, extinction, D4 permutations) cached per device and image size."""
        key = (str(device), size)
        if key not in self._constants:
            self._constants[key] = (self.noise.to(device), self.extinction.to(device), d4_permutations(size, device))
        return self._constants[key]

    def __call__(self, images: Tensor, mask: Tensor, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor]:
        if images.dim() != 4 or images.shape != mask.shape:
            raise ValueError(f"images and mask must be (B, C, H, W) of one shape, got "
                             f"{tuple(images.shape)} and {tuple(mask.shape)}")
        b, c, h, w = images.shape
        if c != len(self.bands):
            raise ValueError(f"{c} channels but meta.json lists {len(self.bands)} bands {self.bands}")
        cfg = self.config
        device = images.device
        rng = _Draw(generator, device)
        with torch.autocast(device_type=device.type, enabled=False):
            x = images.float().contiguous()
            m = mask.to(device=device, dtype=torch.bool).contiguous()
            x = torch.where(m, 0.0, x)
            noise, extinction, perms = self._on(device, h)
            if cfg.reddening_sigma > 0:
                x = redden(x, rng.normal((b,)) * cfg.reddening_sigma, extinction)
            if cfg.psf_blur_max_px > 0:
                radius = math.ceil(KERNEL_SIGMAS * cfg.psf_blur_max_px)
                x, m = gaussian_blur(x, m, rng.uniform((b,)) * cfg.psf_blur_max_px, radius)
            if cfg.shift_px > 0:
                r = cfg.shift_px * rng.uniform((b,)).sqrt()  # uniform in the disc
                phi = 2 * math.pi * rng.uniform((b,))
                x, m = translate(x, m, r * torch.cos(phi), r * torch.sin(phi))
            if cfg.noise_scale > 0:
                x = x + rng.normal((b, c, h, w)) * (cfg.noise_scale * noise).view(1, c, 1, 1)
            if cfg.flips_rotations:
                k = rng.integers(8, (b,))
                x, m = dihedral(x, k, perms), dihedral(m, k, perms)
            if cfg.band_dropout > 0:
                x, m = drop_bands(x, m, self._dropout(m, rng))
            x = torch.where(m, 0.0, x)
        return keep_format(x.to(images.dtype), images), keep_format(m, mask)

    def _dropout(self, mask: Tensor, rng: "_Draw") -> Tensor:
        """(B, C) bands to drop: each w.p. band_dropout, but never every band that has data."""
        b, c = mask.shape[:2]
        has_data = (~mask).flatten(2).any(dim=2)
        drop = (rng.uniform((b, c)) < self.config.band_dropout) & has_data
        emptied = has_data.any(dim=1) & ~(has_data & ~drop).any(dim=1)  # would lose everything
        # Keep one random band with data in those samples.
        keep = torch.where(has_data, rng.uniform((b, c)), -1.0).argmax(dim=1)
        rescue = F.one_hot(keep, c).bool() & emptied[:, None]
        return drop & ~rescue

    def two_views(self, images: Tensor, mask: Tensor, generator: torch.Generator | None = None
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Two independently augmented views (the SimCLR positive pair): (x1, m1, x2, m2).

        One vectorised call on the doubled batch; views i and B + i share nothing but the source.
        """
        fmt = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) \
            and not images.is_contiguous() else torch.contiguous_format
        x, m = self(torch.cat([images, images]), torch.cat([mask, mask]), generator)
        x1, x2 = x.chunk(2)
        m1, m2 = m.chunk(2)
        return (x1.contiguous(memory_format=fmt), m1.contiguous(memory_format=fmt),
                x2.contiguous(memory_format=fmt), m2.contiguous(memory_format=fmt))


class _Draw:
    """Random draws from one generator, made on its device and moved to the batch's."""

    def __init__(self, generator: torch.Generator | None, device: torch.device) -> None:
        self.generator = generator
        self.source = generator.device if generator is not None else device
        self.device = device

    def uniform(self, shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.source).to(self.device)

    def normal(self, shape: tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.source).to(self.device)

    def integers(self, high: int, shape: tuple[int, ...]) -> Tensor:
        return torch.randint(high, shape, generator=self.generator, device=self.source).to(self.device)


def two_views(augmenter: Augmenter, images: Tensor, mask: Tensor, generator: torch.Generator | None = None
              ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Function form of :meth:`Augmenter.two_views`."""
    return augmenter.two_views(images, mask, generator)

"""ssl.normalize and ssl.augment: normalisations and batch augmentations, on synthetic tensors."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
import torch
import yaml

from workflow_scripts.ssl.augment import (EXTINCTION_R, AugmentConfig, Augmenter, d4_permutations, dihedral,
                                          gaussian_blur, translate, two_views)
from workflow_scripts.ssl.normalize import NORMALISATIONS, Normalizer

BANDS = ["g", "r", "i", "z", "y", "J", "Ks"]
SIGMA = [2.0, 3.1, 4.6, 8.9, 16.8, 100.6, 324.6]  # ~ the survey's sigma_MAD per band (nJy)
MEDIAN = [0.08, 0.16, 0.37, 1.04, 1.83, 6.9, 20.4]
N = 35
OFF = dict(flips_rotations=False, shift_px=0.0)  # everything off


def make_meta(bands=BANDS, sigma=SIGMA, median=MEDIAN) -> dict:
    return {"bands": list(bands), "size_px": N,
            "stats": {b: {"median": m, "sigma_mad": s, "mad": s / 1.4826, "std": 1.5 * s}
                      for b, s, m in zip(bands, sigma, median)}}


META = make_meta()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise_batch(b: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Pure survey noise: band c ~ MEDIAN[c] + SIGMA[c] N(0, 1); a few masked pixels (filled 0)."""
    g = gen(seed)
    x = torch.randn(b, len(BANDS), N, N, generator=g) * torch.tensor(SIGMA).view(1, -1, 1, 1) \
        + torch.tensor(MEDIAN).view(1, -1, 1, 1)
    mask = torch.rand(b, len(BANDS), N, N, generator=g) < 0.05
    return torch.where(mask, 0.0, x), mask


def point_source(b: int = 1, sigma: float = 1.2, flux: float = 1000.0, cx: float = 17.0, cy: float = 17.0,
                 c: int = len(BANDS)) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64),
                            indexing="ij")
    img = torch.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / sigma**2)
    img = flux * img / img.sum()
    return img.float().expand(b, c, N, N).clone()


def centroid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cx, cy) per image and band, flux-weighted, pixel units."""
    yy, xx = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64),
                            indexing="ij")
    x = x.double()
    tot = x.sum(dim=(-1, -2))
    return (x * xx).sum(dim=(-1, -2)) / tot, (x * yy).sum(dim=(-1, -2)) / tot


def second_moment(x: torch.Tensor) -> torch.Tensor:
    cx, cy = centroid(x)
    yy, xx = torch.meshgrid(torch.arange(N, dtype=torch.float64), torch.arange(N, dtype=torch.float64),
                            indexing="ij")
    x = x.double()
    r2 = (xx - cx[..., None, None]) ** 2 + (yy - cy[..., None, None]) ** 2
    return (x * r2).sum(dim=(-1, -2)) / x.sum(dim=(-1, -2)) / 2  # per-axis variance


def robust(x: torch.Tensor) -> tuple[float, float]:
    med = x.median()
    return float(med), float(1.4826 * (x - med).abs().median())


# ------------------------------------------------------------------------------- normalisation

def test_per_band_whitens_pure_noise():
    x, mask = noise_batch(64)
    y = Normalizer.from_meta(META, "per_band")(x, mask)
    for c in range(len(BANDS)):
        med, smad = robust(y[:, c][~mask[:, c]])
        assert abs(med) < 0.02 and abs(smad - 1) < 0.02, (BANDS[c], med, smad)


def test_global_is_one_scale_and_keeps_colours():
    x, mask = noise_batch(4)
    y = Normalizer.from_meta(META, "global")(x, mask)
    scale = sorted(SIGMA)[len(SIGMA) // 2]  # median over bands of sigma_MAD
    torch.testing.assert_close(y, torch.where(mask, 0.0, x / scale))
    y2 = Normalizer.from_meta(META, "global", scale=5.0)(x, mask)
    torch.testing.assert_close(y2, torch.where(mask, 0.0, x / 5.0))


def test_per_image_removes_brightness_keeps_shape():
    x, mask = noise_batch(3)
    x = x + point_source(3, flux=5e4)
    norm = Normalizer.from_meta(META, "per_image")
    y = norm(x, mask)
    scaled = x * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1, 1)
    torch.testing.assert_close(norm(scaled, mask), y, rtol=1e-4, atol=1e-5)
    # One number per image: ratios between channels preserved.
    ratio = y[0, 3, 17, 17] / y[0, 4, 17, 17]
    assert torch.isclose(ratio, x[0, 3, 17, 17] / x[0, 4, 17, 17], rtol=1e-5)
    assert abs(robust(y[0][~mask[0]])[1] - 1.0) < 1e-3


def test_asinh_stretch_and_clip():
    x, mask = noise_batch(2)
    y = Normalizer.from_meta(META, "asinh", softening=2.0)(x, mask)
    want = torch.asinh(x / (2.0 * torch.tensor(SIGMA).view(1, -1, 1, 1)))
    torch.testing.assert_close(y, torch.where(mask, 0.0, want))
    bright = x + point_source(2, flux=1e7)
    yc = Normalizer.from_meta(META, "asinh", clip=3.0, center=True)(bright, mask)
    assert float(yc.abs().max()) == pytest.approx(3.0)


@pytest.mark.parametrize("method", NORMALISATIONS)
def test_masked_zero_no_nan_dtype_device_format(method):
    x, mask = noise_batch(4)
    mask[1] = True  # an all-masked image
    x[1] = 0.0
    x[2, :, 0, 0] = float("nan")  # a stray NaN under the mask must not leak
    mask[2, :, 0, 0] = True
    mask[3, 2] = True  # an all-masked band
    x[3, 2] = 0.0
    norm = Normalizer.from_meta(META, method).to("cpu")
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        y = norm(x.to(dtype), mask)
        assert y.dtype == dtype and y.device == x.device and y.shape == x.shape
        assert torch.isfinite(y).all()
        assert (y[mask] == 0).all()
        assert (y[1] == 0).all()
    cl = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_cl = norm(cl, mask.contiguous(memory_format=torch.channels_last))
    assert y_cl.dtype == torch.float32 and y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, norm(x, mask))


def test_normaliser_rejects_unknown_names():
    with pytest.raises(ValueError, match="global, per_image, per_band, asinh"):
        Normalizer.from_meta(META, "minmax")
    with pytest.raises(ValueError, match="softening"):
        Normalizer.from_meta(META, "asinh", softness=2.0)
    with pytest.raises(ValueError, match="channels"):
        Normalizer.from_meta(make_meta(BANDS[:5], SIGMA[:5], MEDIAN[:5]), "per_band")(*noise_batch(1))


# ------------------------------------------------------------------------------- augmentations

def test_d4_is_the_eight_distinct_symmetries_preserving_flux_and_mask():
    g = gen(1)
    img = torch.rand(1, 2, N, N, generator=g).expand(8, 2, N, N)
    out = dihedral(img, torch.arange(8))
    flat = out.reshape(8, -1)
    assert len({tuple(r.tolist()) for r in flat}) == 8
    torch.testing.assert_close(out.sum(dim=(1, 2, 3)), img.sum(dim=(1, 2, 3)))
    # The group: rot90 powers and flips, centre pixel fixed.
    assert torch.equal(out[1], torch.rot90(img[0], 1, dims=(1, 2)))
    assert torch.equal(out[4], img[0].flip(2))
    assert (out[:, :, 17, 17] == img[0, :, 17, 17]).all()
    perms = d4_permutations(N)
    assert all(sorted(p.tolist()) == list(range(N * N)) for p in perms)
    mask = img > 0.7
    assert torch.equal(dihedral(mask, torch.arange(8)), out > 0.7)


def test_augmenter_flips_uniform_and_mask_follows():
    base = torch.rand(1, 7, N, N, generator=gen(2))
    mask = (base < 0.1).expand(800, -1, -1, -1)
    x = torch.where(mask, 0.0, base.expand(800, -1, -1, -1))
    y, m = Augmenter(AugmentConfig(flips_rotations=True, shift_px=0.0), META)(x, mask, gen(3))
    ref = dihedral(x[:8], torch.arange(8))
    match = (y[:, None] == ref[None]).flatten(2).all(2)  # (800, 8): which transform each got
    assert (match.sum(1) == 1).all()
    which = match.int().argmax(1)
    counts = torch.bincount(which, minlength=8)
    assert counts.min() > 60 and counts.max() < 140, counts  # 100 +- 9.4 each
    assert torch.equal(m, dihedral(mask[:8], torch.arange(8))[which]) and (y[m] == 0).all()


def test_translate_moves_centroid_and_conserves_flux():
    x = point_source(2)
    mask = torch.zeros_like(x, dtype=torch.bool)
    dx, dy = torch.tensor([0.3, -1.0]), torch.tensor([-0.7, 0.45])
    y, m = translate(x, mask, dx, dy)
    cx, cy = centroid(y)
    torch.testing.assert_close(cx - 17.0, dx.double()[:, None].expand_as(cx), atol=1e-4, rtol=0)
    torch.testing.assert_close(cy - 17.0, dy.double()[:, None].expand_as(cy), atol=1e-4, rtol=0)
    torch.testing.assert_close(y.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-5, atol=0)
    # Content moving left by 1 px: the last column has no source pixel -> masked; up by 0.7:
    # the last row draws 0.7 of its weight from outside -> masked.
    # (a pixel is masked when >= half its interpolation weight falls outside: |0.7| yes, |0.45| no)
    assert m[1, :, :, -1].all() and not m[1, :, :, :-1].any()
    assert m[0, :, -1, :].all() and not m[0, :, :-1, :].any()
    # Moving right by 2 px: the first two columns are masked.
    y2, m2 = translate(x[:1], mask[:1], torch.tensor([2.0]), torch.tensor([0.0]))
    assert m2[0, :, :, :2].all() and not m2[0, :, :, 2:].any()
    assert (y2[m2] == 0).all()
    # An integer shift is an exact move of the pixels.
    torch.testing.assert_close(y2[0, :, :, 2:], x[0, :, :, :-2], atol=1e-5, rtol=1e-5)


def test_augmenter_shift_is_bounded_and_isotropic():
    x = point_source(2048, c=1)
    meta = make_meta(["y"], [16.8], [1.8])
    y, _ = Augmenter(AugmentConfig(flips_rotations=False, shift_px=1.5), meta)(x, torch.zeros_like(x, dtype=torch.bool),
                                                                              gen(4))
    cx, cy = centroid(y)
    r = ((cx - 17) ** 2 + (cy - 17) ** 2).sqrt()
    assert r.max() <= 1.5 + 1e-3 and r.max() > 1.3
    # Mean offset 0 (std of the mean: 0.75 / sqrt(2048) = 0.017 px; 4 sigma).
    assert abs(float((cx - 17).mean())) < 0.07 and abs(float((cy - 17).mean())) < 0.07


def test_blur_conserves_flux_widens_point_source_and_respects_mask():
    x = point_source(3, sigma=1.0)
    mask = torch.zeros_like(x, dtype=torch.bool)
    sig = torch.tensor([0.0, 1.0, 2.0])
    y, m = gaussian_blur(x, mask, sig)
    torch.testing.assert_close(y.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=1e-5, atol=0)
    torch.testing.assert_close(y[0], x[0], atol=1e-5, rtol=0)  # sigma 0: identity
    var = second_moment(y)[:, 0]
    torch.testing.assert_close(var, torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64), rtol=2e-3, atol=0)
    assert not m.any()
    # Normalised convolution: a masked hole in flat sky does not darken its neighbours.
    flat = torch.full((1, 7, N, N), 10.0)
    hole = torch.zeros_like(flat, dtype=torch.bool)
    hole[..., 15:18, 15:18] = True
    yb, mb = gaussian_blur(torch.where(hole, 0.0, flat), hole, torch.tensor([1.5]))
    assert mb[hole].all() and torch.allclose(yb[~mb], torch.tensor(10.0))
    assert (yb[mb] == 0).all()


def test_noise_has_requested_per_band_std():
    x = torch.zeros(64, 7, N, N)
    mask = torch.zeros_like(x, dtype=torch.bool)
    y, _ = Augmenter(AugmentConfig(**OFF, noise_scale=0.5), META)(x, mask, gen(5))
    std = y.transpose(0, 1).reshape(7, -1).std(dim=1)
    torch.testing.assert_close(std, 0.5 * torch.tensor(SIGMA), rtol=0.02, atol=0)


def test_reddening_moves_colours_along_the_extinction_vector():
    x = torch.full((400, 7, N, N), 100.0)
    mask = torch.zeros_like(x, dtype=torch.bool)
    y, _ = Augmenter(AugmentConfig(**OFF, reddening_sigma=0.05), META)(x, mask, gen(6))
    dmag = -2.5 * torch.log10(y[:, :, 17, 17].double() / 100.0)  # (B, C) = R_b dE
    r = torch.tensor([EXTINCTION_R[b] for b in BANDS], dtype=torch.float64)
    debv = dmag / r
    torch.testing.assert_close(debv, debv[:, :1].expand_as(debv), atol=1e-6, rtol=1e-4)  # one dE per sample
    assert abs(float(debv[:, 0].std()) - 0.05) < 0.006 and abs(float(debv[:, 0].mean())) < 0.008
    # Bluer bands change more; g - Ks colour moves by (R_g - R_Ks) dE.
    assert (dmag.abs().diff(dim=1) <= 1e-12).all()
    torch.testing.assert_close(dmag[:, 0] - dmag[:, 6], (r[0] - r[6]) * debv[:, 0])


def test_band_dropout_masks_what_it_drops_and_never_all():
    x, mask = noise_batch(1000, seed=7)
    mask[:100, 1:] = True  # only g has data: never dropped
    x = torch.where(mask, 0.0, x)
    mask[100:110] = True  # nothing at all: stays so, no crash
    x[100:110] = 0.0
    y, m = Augmenter(AugmentConfig(**OFF, band_dropout=0.45), META)(x, mask, gen(8))
    has = (~m).flatten(2).any(2)
    assert has[:100, 0].all() and not has[100:110].any() and has[110:].any(1).all()
    dropped = m.flatten(2).all(2) & ~mask.flatten(2).all(2)
    assert (y[m] == 0).all() and torch.equal(y[~m], x[~m])
    frac = float(dropped[110:].float().mean())
    assert 0.40 < frac < 0.46, frac


def test_seeded_generator_reproduces_and_views_differ():
    x, mask = noise_batch(8)
    x = x + point_source(8)
    cfg = dict(shift_px=1.0, psf_blur_max_px=1.0, noise_scale=0.3, reddening_sigma=0.03, band_dropout=0.1)
    aug = Augmenter(cfg, META)
    a = aug.two_views(x, mask, gen(9))
    b = two_views(aug, x, mask, gen(9))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    c = aug.two_views(x, mask, gen(10))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[2])  # the two views of a pair differ
    assert all(t.shape == x.shape for t in a)
    same, m_same = Augmenter(AugmentConfig(**OFF), META)(x, mask, gen(0))
    assert torch.equal(same, torch.where(mask, 0.0, x)) and torch.equal(m_same, mask)


def test_autocast_bf16_and_channels_last():
    x, mask = noise_batch(8)
    cfg = dict(shift_px=1.0, psf_blur_max_px=1.0, noise_scale=0.3, reddening_sigma=0.03, band_dropout=0.1)
    aug = Augmenter(cfg, META)
    ref = aug(x, mask, gen(11))
    cl, mcl = x.contiguous(memory_format=torch.channels_last), mask.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = aug(cl, mcl, gen(11))
        views = aug.two_views(cl, mcl, gen(11))
        z = Normalizer.from_meta(META, "asinh")(*out)
    assert out[0].dtype == torch.float32 and out[0].is_contiguous(memory_format=torch.channels_last)
    assert all(v.is_contiguous(memory_format=torch.channels_last) for v in views)
    torch.testing.assert_close(out[0], ref[0])
    assert torch.equal(out[1], ref[1]) and torch.isfinite(z).all()
    yb, mb = aug(x.bfloat16(), mask, gen(11))
    assert yb.dtype == torch.bfloat16 and torch.isfinite(yb).all()


def _op_count(fn) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_vectorised_and_fast():
    cfg = dict(shift_px=1.0, psf_blur_max_px=1.0, noise_scale=0.3, reddening_sigma=0.03, band_dropout=0.1)
    aug = Augmenter(cfg, META)
    norm = Normalizer.from_meta(META, "per_image")
    # No per-sample loop: the number of torch ops does not grow with the batch.
    norm(*aug(*noise_batch(2), gen(0)))  # warm the per-device constant cache
    counts = [_op_count(lambda b=b: norm(*aug(*noise_batch(b), gen(0)))) for b in (2, 64)]
    assert counts[0] == counts[1], counts
    x, mask = noise_batch(256)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the algorithm's cost, not a busy machine's thread pool
    try:
        aug(x, mask, gen(0))
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            norm(*aug(x, mask, gen(0)))
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    assert best < 0.5, best  # ~0.1 s on one CPU core for 256 x 7 x 35 x 35


def test_config_keys_match_schema_and_reject_unknown():
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "schemas/config.schema.yaml").read_text())
    props = schema["properties"]["training"]["properties"]["augment"]["properties"]
    assert set(props) == set(AugmentConfig().to_dict())
    assert AugmentConfig.from_dict({k: v["default"] for k, v in props.items()}) is not None
    with pytest.raises(ValueError, match="shift_pix.*allowed: flips_rotations, shift_px"):
        AugmentConfig.from_dict({"shift_pix": 1})
    with pytest.raises(ValueError, match="noise_scale"):
        AugmentConfig.from_dict({"noise_scale": -1})
    with pytest.raises(ValueError, match="band_dropout"):
        AugmentConfig(band_dropout=1.0)
    with pytest.raises(ValueError, match="extinction"):
        Augmenter({"reddening_sigma": 0.1}, make_meta(["g", "W1"], [1.0, 1.0], [0.0, 0.0]))

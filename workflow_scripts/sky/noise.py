"""Observation model: what HSC-SSP Wide forced PSF photometry reports for a noiseless sky.

- PSF seeing per object and band: lognormal (σ_ln = 0.12) around the survey medians.
- Input count (visits) around the Wide full depth (g, r: 4; i, z, y: 6).
- PSF-flux error: σ_sky = f_5σ/5 × (FWHM/median) × sqrt(nominal/inputcount) (sky-limited: the
  error of a PSF fit scales with the PSF width), plus source Poisson and 0.5 % calibration terms.
- PSF flux of a resolved source: for Gaussian-like images, the fraction of flux a PSF fit
  recovers is Π_axes sqrt(2σ_p² / (σ_p² + σ_img²)) (σ_img² = σ_p² + σ_source²); sharper-than-PSF
  cosmic rays get > 1.  Extendedness = [PSF/cmodel ratio + noise < 0.985] (HSC's definition,
  noise 0.3/SNR, so faint compact objects are misclassified either way).
"""

from __future__ import annotations

import numpy as np

from ..contracts import BANDS
from .config import SkyConfig
from .extinction import standard_coeffs
from .populations import SFD_TO_TRUE, Population
from .transients import saturated_bands

NOMINAL_INPUTCOUNT = np.array([4, 4, 6, 6, 6])
_IC_OFFSETS = np.array([-2, -1, 0, 1, 2, 3])
_IC_PROB = np.array([0.03, 0.09, 0.60, 0.15, 0.08, 0.05])
FWHM_TO_SIGMA = 1.0 / 2.3548


def psf_fraction(pop: Population, seeing: np.ndarray) -> np.ndarray:
    """(n, 5) fraction of the total flux recovered by a PSF fit (see module docstring)."""
    sp2 = (seeing * FWHM_TO_SIGMA) ** 2
    n = seeing.shape[0]
    var_a = sp2.copy()
    var_b = sp2.copy()
    hlr, q = pop["hlr"][:, None], np.clip(pop["axis_ratio"], 0.05, 1.0)[:, None]
    ext = (pop["hlr"] > 0)[:, None]
    ss2 = (hlr / 1.1774) ** 2  # Gaussian σ² with the same half-light radius
    var_a = np.where(ext, sp2 + ss2 / q, var_a)
    var_b = np.where(ext, sp2 + ss2 * q, var_b)
    trail = (pop["trail_length"] > 0)[:, None]
    var_a = np.where(trail, sp2 + pop["trail_length"][:, None] ** 2 / 12.0, var_a)
    sharp = np.isfinite(pop["image_fwhm"])[:, None]
    cr2 = np.broadcast_to(((np.nan_to_num(pop["image_fwhm"]) * FWHM_TO_SIGMA) ** 2)[:, None], (n, 5))
    var_a = np.where(sharp, cr2, var_a)
    var_b = np.where(sharp, cr2, var_b)
    return np.sqrt(2 * sp2 / (sp2 + var_a)) * np.sqrt(2 * sp2 / (sp2 + var_b))


def _band_mask(labels: np.ndarray) -> np.ndarray:
    """(n, 5) bool from per-object band strings such as 'gri'."""
    return np.array([[b in str(s) for b in BANDS] for s in labels], dtype=bool).reshape(len(labels), 5)


def observe(pop: Population, rng: np.random.Generator, sky: SkyConfig) -> tuple[dict, dict, np.ndarray]:
    """Noisy catalogue columns (contract names), extra truth columns and the detection mask."""
    n = pop["ra"].size
    med = np.array([sky.seeing_fwhm[b] for b in BANDS])
    seeing = med[None, :] * np.exp(rng.normal(0.0, 0.12, (n, 5)))
    inputcount = NOMINAL_INPUTCOUNT[None, :] + _IC_OFFSETS[rng.choice(6, size=(n, 5), p=_IC_PROB)]
    inputcount = np.maximum(inputcount, 1)
    flags = {k: np.zeros((n, 5), bool) for k in ("edge", "crcenter", "saturatedcenter", "bad", "interpolatedcenter")}
    flux_flag = rng.uniform(size=(n, 5)) < 0.015
    cls = pop["class"]
    kind = pop["artefact_kind"]
    art_bands = _band_mask(pop["artefact_band"])

    # chip edges: spurious ones in their bands; 1 % of real objects in 1–2 random bands
    real = cls != "artefact"
    edge_real = real & (rng.uniform(size=n) < 0.01)
    eb = np.zeros((n, 5), bool)
    first = rng.integers(0, 5, n)
    eb[np.arange(n), first] = True
    eb[np.arange(n), np.minimum(first + 1, 4)] |= rng.uniform(size=n) < 0.5
    edge = np.where(edge_real[:, None], eb, False) | ((kind == "chip_edge")[:, None] & art_bands)
    edge |= rng.uniform(size=(n, 5)) < 0.002
    flags["edge"] = edge
    inputcount = np.where(edge, rng.integers(1, 3, (n, 5)), inputcount)

    frac = psf_fraction(pop, seeing)
    f5 = 10.0 ** (-0.4 * (np.array([sky.depth_5sigma[b] for b in BANDS]) - 31.4))
    sig_sky = f5[None, :] / 5.0 * (seeing / med[None, :]) * np.sqrt(NOMINAL_INPUTCOUNT[None, :] / inputcount)
    fpsf = pop["flux_true"][:, :5] * frac
    err = np.sqrt(sig_sky**2 + 0.5 * np.clip(fpsf, 0.0, None) + (0.005 * fpsf) ** 2)
    flux = fpsf + rng.normal(0.0, 1.0, (n, 5)) * err

    # edges: biased flux, sometimes no measurement at all
    flux = np.where(edge & real[:, None], flux * rng.uniform(0.6, 1.1, (n, 5)), flux)
    lost = edge & (rng.uniform(size=(n, 5)) < np.where(real[:, None], 0.2, 0.3))
    # saturated centres: the PSF fit underestimates, flagged, centre interpolated
    sat = saturated_bands(pop["flux_true"]) & (cls != "moving_object")[:, None]
    flux = np.where(sat, flux * rng.uniform(0.3, 0.9, (n, 5)), flux)
    bleed = (kind == "bleed_trail")[:, None] & art_bands
    flags["saturatedcenter"] = sat | bleed
    cr = (kind == "cosmic_ray")[:, None] & art_bands
    flags["crcenter"] = (cr & (rng.uniform(size=(n, 5)) < 0.9)) | (rng.uniform(size=(n, 5)) < 0.001)
    flags["interpolatedcenter"] = (sat | bleed | (cr & (rng.uniform(size=(n, 5)) < 0.5))
                                   | (rng.uniform(size=(n, 5)) < 0.005))
    flags["bad"] = rng.uniform(size=(n, 5)) < 0.001
    flux_flag |= sat | lost
    flux = np.where(lost, np.nan, flux)
    err = np.where(lost, np.nan, err)

    snr = np.where(np.isfinite(flux), flux / err, -np.inf)
    detected = (snr >= sky.detection_snr).any(axis=1)
    ratio = frac + rng.normal(0.0, 1.0, (n, 5)) * 0.3 / np.maximum(np.abs(np.nan_to_num(snr, neginf=0.0)), 0.3)
    ext_val = np.where(np.isfinite(flux), (ratio < 0.985).astype(float), np.nan)

    coeff = standard_coeffs()
    # Non-primary rows are re-detections in tract/patch overlaps, added by simulate.add_overlap_duplicates.
    cat: dict[str, np.ndarray] = {"isprimary": pop.get("primary", np.ones(n, bool)).copy()}
    for k, b in enumerate(BANDS):
        cat[f"{b}_psfflux_flux"] = flux[:, k]
        cat[f"{b}_psfflux_fluxerr"] = err[:, k]
        cat[f"{b}_psfflux_flag"] = flux_flag[:, k]
        cat[f"{b}_extendedness_value"] = ext_val[:, k]
        for f in ("edge", "crcenter", "saturatedcenter", "bad", "interpolatedcenter"):
            cat[f"{b}_pixelflags_{f}"] = flags[f][:, k]
        cat[f"{b}_inputcount_value"] = inputcount[:, k].astype(np.int32)
    for b in BANDS:
        # catalogue convention: A_b = (F99 coefficient for the true E(B-V)) × 0.86 × E(B-V)_SFD
        cat[f"a_{b}"] = coeff[b] * SFD_TO_TRUE * pop["ebv"]
    extra = {f"seeing_{b}": seeing[:, k] for k, b in enumerate(BANDS)}
    extra.update({f"psf_frac_{b}": frac[:, k] for k, b in enumerate(BANDS)})
    return cat, extra, detected

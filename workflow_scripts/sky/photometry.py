"""Synthetic AB photometry through the HSC grizy and VISTA J, Ks total-response curves.

Photon-counting AB convention (e.g. Bessell & Murphy 2012, PASP 124, 140; speclite):
    <f_nu> = ∫ f_lambda(λ) R(λ) λ dλ / ∫ R(λ) (c/λ) dλ .
All spectra are sampled on one shared observed-frame grid ``WAVE`` (log-spaced, R≈1500), so a
band flux is a dot product with a precomputed weight vector and thousands of SEDs are
integrated with one matrix product.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.table import Table

DATA_DIR = Path(__file__).resolve().parents[1] / "data"

#: All bands the simulator integrates: HSC grizy plus VISTA J, Ks (for VHS rendering later).
ALL_BANDS: tuple[str, ...] = ("g", "r", "i", "z", "y", "J", "Ks")
HSC_BANDS: tuple[str, ...] = ("g", "r", "i", "z", "y")
C_ANGSTROM_S = 2.99792458e18  # speed of light [Å/s]

#: Shared observed-frame wavelength grid [Å]: 3400–25000 Å covers g to Ks; log spacing keeps
#: constant resolution (≈5 Å at 7500 Å), ample for broad-band synthetic photometry.
WAVE: np.ndarray = np.exp(np.arange(np.log(3400.0), np.log(25000.0), 1.0 / 1500.0))


def _filter_file(band: str) -> Path:
    return DATA_DIR / (f"filter_vista_{band}.ecsv" if band in ("J", "Ks") else f"filter_hsc_{band}.ecsv")


@lru_cache(maxsize=None)
def filter_curve(band: str) -> tuple[np.ndarray, np.ndarray]:
    """(wavelength [Å], total response) of *band* as tabulated in workflow_scripts/data."""
    t = Table.read(_filter_file(band), format="ascii.ecsv")
    return np.asarray(t["wavelength_angstrom"], float), np.asarray(t["response"], float)


@lru_cache(maxsize=None)
def band_weights() -> np.ndarray:
    """(n_wave, n_band) weights W so that ``flam @ W`` is the photon-weighted mean f_nu.

    f_lambda in erg/s/cm²/Å gives f_nu in erg/s/cm²/Hz.
    """
    dlam = np.gradient(WAVE)
    w = np.zeros((WAVE.size, len(ALL_BANDS)))
    for k, band in enumerate(ALL_BANDS):
        lam, resp = filter_curve(band)
        r = np.interp(WAVE, lam, resp, left=0.0, right=0.0)
        norm = np.sum(r * C_ANGSTROM_S / WAVE * dlam)
        w[:, k] = r * WAVE * dlam / norm
    return w


def effective_wavelength(band: str) -> float:
    """Photon-weighted mean wavelength ∫R λ² dλ / ∫R λ dλ [Å], speclite's ``effective_wavelength``."""
    lam, resp = filter_curve(band)
    return float(np.trapezoid(resp * lam**2, lam) / np.trapezoid(resp * lam, lam))


def fnu_band(flam: np.ndarray) -> np.ndarray:
    """Band-averaged f_nu of f_lambda spectra on ``WAVE``: shape (..., n_wave) -> (..., 7)."""
    return np.asarray(flam) @ band_weights()


def ab_mag(flam: np.ndarray) -> np.ndarray:
    """AB magnitudes (..., 7) of f_lambda spectra in erg/s/cm²/Å sampled on ``WAVE``."""
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(fnu_band(flam)) - 48.6


def fnu_at(flam: np.ndarray, wave_obs: np.ndarray | float) -> np.ndarray:
    """Monochromatic f_nu = f_lambda λ²/c of spectra on ``WAVE`` at *wave_obs* (per spectrum)."""
    flam = np.atleast_2d(flam)
    wave_obs = np.broadcast_to(np.asarray(wave_obs, float), (flam.shape[0],))
    out = np.array([np.interp(w, WAVE, f) for w, f in zip(wave_obs, flam)])
    return out * wave_obs**2 / C_ANGSTROM_S

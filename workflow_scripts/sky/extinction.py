"""Dust laws: Galactic foreground (Fitzpatrick 1999) and galaxy-internal (Calzetti et al. 2000)."""

from __future__ import annotations

from functools import lru_cache

import astropy.units as u
import numpy as np
from dust_extinction.parameter_averages import F99

from .photometry import HSC_BANDS, WAVE, fnu_band

#: E(B-V) used to measure effective per-band coefficients; small, so A_b is linear in E(B-V).
EBV_REF = 0.1


@lru_cache(maxsize=None)
def f99_alav_ebv() -> np.ndarray:
    """A(λ)/E(B-V) of Fitzpatrick 1999 (R_V = 3.1) on the observed grid ``WAVE``."""
    law = F99(Rv=3.1)
    return law(WAVE * u.AA) * 3.1


def band_ext_coeffs(flam: np.ndarray) -> np.ndarray:
    """Effective A_b/E(B-V) (..., 7) for each spectrum: the F99 law integrated over the filter
    with that object's own SED (so very red SEDs get their own, smaller, coefficients)."""
    att = 10.0 ** (-0.4 * f99_alav_ebv() * EBV_REF)
    f0 = fnu_band(flam)
    f1 = fnu_band(np.asarray(flam) * att)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = -2.5 * np.log10(f1 / f0) / EBV_REF
    return np.nan_to_num(k, nan=0.0)


@lru_cache(maxsize=None)
def standard_coeffs() -> dict[str, float]:
    """Catalogue-style A_b/E(B-V) for HSC grizy: F99 through each filter for a 7000 K
    blackbody reference source (the convention of Schlafly & Finkbeiner 2011)."""
    from .seds import blackbody_flam

    k = band_ext_coeffs(blackbody_flam(np.array([7000.0]), WAVE))[0]
    return {b: float(k[i]) for i, b in enumerate(HSC_BANDS)}


def calzetti_k(lam_rest: np.ndarray) -> np.ndarray:
    """Calzetti et al. 2000 (ApJ 533, 682) starburst k(λ) with R_V = 4.05, eq. 4.

    Outside 0.12–2.2 µm it is extended linearly in 1/λ (UV) and clipped at zero (IR).
    """
    x = np.asarray(lam_rest, float) / 1e4  # µm

    def blue(m):
        return 2.659 * (-2.156 + 1.509 / m - 0.198 / m**2 + 0.011 / m**3) + 4.05

    def red(m):
        return 2.659 * (-1.857 + 1.040 / m) + 4.05

    k = np.where(x >= 0.63, red(x), blue(np.maximum(x, 0.12)))
    # below 1200 Å: continue with the slope at 0.12 µm in 1/λ
    slope = (blue(0.12) - blue(0.125)) / (1 / 0.12 - 1 / 0.125)
    k = np.where(x < 0.12, blue(0.12) + slope * (1 / x - 1 / 0.12), k)
    return np.clip(k, 0.0, None)

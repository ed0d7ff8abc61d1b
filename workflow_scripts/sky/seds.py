"""Spectral energy distributions (f_lambda, arbitrary units) sampled on ``photometry.WAVE``.

Every colour in the simulation comes from integrating one of these spectra through the
filter curves; no colour is hand-picked where a spectrum exists.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from astropy.table import Table

from .extinction import calzetti_k
from .igm import igm_transmission
from .photometry import DATA_DIR, WAVE

LYA = 1215.67
H_PLANCK, C_CGS, K_BOLTZ = 6.62607015e-27, 2.99792458e10, 1.380649e-16

#: Quasar continuum slope f_nu ∝ nu^alpha of the Vanden Berk et al. 2001 composite (their §5).
QSO_ALPHA_NU = -0.44


def blackbody_flam(teff: np.ndarray, wave: np.ndarray) -> np.ndarray:
    """Planck f_lambda (arbitrary normalisation) for temperatures *teff* [K]: shape (n_T, n_wave)."""
    lam_cm = np.asarray(wave, float)[None, :] * 1e-8
    t = np.asarray(teff, float)[:, None]
    x = H_PLANCK * C_CGS / (lam_cm * K_BOLTZ * t)
    return 1.0 / (lam_cm**5 * np.expm1(np.minimum(x, 700.0)))


# --------------------------------------------------------------------------- quasars
@lru_cache(maxsize=None)
def quasar_rest_template() -> tuple[np.ndarray, np.ndarray]:
    """Rest-frame intrinsic quasar f_lambda: Vanden Berk et al. 2001 (AJ 122, 549) below 3500 Å
    joined to Glikman et al. 2006 (ApJ 640, 579) above, scaled in their 3000–4000 Å overlap.

    Blueward of Lyα the composite's own (z≈2–4) forest absorption is replaced by the intrinsic
    power-law continuum (alpha_nu = -0.44) plus the Lyα line's blue wing mirrored from its red
    wing, so that the IGM model is applied exactly once.  Normalised to f_lambda(1450 Å) = 1.
    """
    vb = Table.read(DATA_DIR / "qso_composite_vandenberk2001.ecsv", format="ascii.ecsv")
    gl = Table.read(DATA_DIR / "qso_composite_nir_glikman2006.ecsv", format="ascii.ecsv")
    lv, fv = np.asarray(vb["wavelength_angstrom"], float), np.asarray(vb["flux_density"], float)
    lg, fg = np.asarray(gl["wavelength_angstrom"], float), np.asarray(gl["flux_density"], float)
    ov = (lv > 3000) & (lv < 4000)
    scale = np.median(fv[ov]) / np.median(np.interp(lv[ov], lg, fg))
    lam = np.concatenate([np.arange(300.0, 3500.0, 1.0), lg[lg >= 3500.0]])
    flux = np.where(lam < 3500.0, np.interp(lam, lv, fv), np.interp(lam, lg, fg) * scale)
    # continuum anchored in the line-free 1440–1460 Å window
    f1450 = np.median(fv[(lv > 1440) & (lv < 1460)])
    cont = f1450 * (lam / 1450.0) ** (-2.0 - QSO_ALPHA_NU)
    blue = lam < LYA
    red_side = np.clip(2 * LYA - lam, 300.0, None)
    mirror = np.interp(red_side, lam, flux) - f1450 * (red_side / 1450.0) ** (-2.0 - QSO_ALPHA_NU)
    wing = np.where(LYA - lam < 20.0, np.clip(mirror, 0.0, None), 0.0)
    flux = np.where(blue, cont + wing, flux)
    return lam, flux / f1450


def quasar_flam(z: float, dalpha: float | np.ndarray = 0.0) -> np.ndarray:
    """Observed-frame quasar f_lambda on ``WAVE`` at redshift *z*, with the continuum slope
    changed by *dalpha* (f_nu ∝ nu^(alpha + dalpha)) and Inoue et al. 2014 IGM absorption.
    Units: rest f_lambda(1450) = 1 (arbitrary).  Array *dalpha* gives one row per value."""
    lam, flux = quasar_rest_template()
    rest = WAVE / (1.0 + z)
    f = np.interp(rest, lam, flux) * igm_transmission(WAVE, z)
    da = np.asarray(dalpha, float)
    return f * (rest / 1450.0) ** (-da[..., None]) if da.ndim else f * (rest / 1450.0) ** (-da)


# --------------------------------------------------------------------------- galaxies
#: Mixing weights (V-band light fraction of the young component) of the galaxy SED types,
#: from passive (0) to starburst (1).
GALAXY_YOUNG_FRACTIONS: tuple[float, ...] = (0.0, 0.03, 0.1, 0.3, 0.6, 1.0)
#: Discrete Calzetti E_s(B-V) levels of the galaxy grid.
GALAXY_DUST_LEVELS: tuple[float, ...] = (0.0, 0.05, 0.15, 0.3, 0.5, 0.8)

# rest wavelength [Å], EW [Å] at young fraction 1: nebular lines that move through grizy
_LINES = ((3727.0, 40.0), (4861.3, 20.0), (4958.9, 20.0), (5006.8, 60.0), (6562.8, 100.0), (6583.4, 30.0))


def galaxy_components(lam_rest: np.ndarray, beta: float | np.ndarray = -2.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rest-frame building blocks of the parametric galaxy SED, each =1 at 5500 Å:
    (old continuum, young continuum, nebular-line profile per unit EW·young, Calzetti k(λ)).

    old: 4500 K photosphere with a 4000 Å break (×0.45 blueward, D4000≈2 as in passive
    galaxies); young: UV power law f_lambda ∝ λ^beta (beta≈-2.2 for star-forming galaxies)
    with an intrinsic Lyman break; lines: [O II], Hβ, [O III], Hα, [N II] with EWs typical of
    star-forming galaxies; dust: Calzetti et al. 2000.
    """
    lam = np.asarray(lam_rest, float)
    bb = blackbody_flam(np.array([4500.0]), np.append(lam, 5500.0))[0]
    old = bb[:-1] / bb[-1] * (0.45 + 0.55 / (1.0 + np.exp(-(lam - 4000.0) / 60.0)))
    b = np.asarray(beta, float)
    young = (lam / 5500.0) ** (b[..., None] if b.ndim else b) * np.where(lam < 912.0, 0.1, 1.0)
    lines = np.zeros_like(lam)
    for lc, ew in _LINES:
        sig = lc * 150.0 / 3e5 + 3.0  # ~150 km/s, broadened to be resolved by the grid
        lines += ew * np.exp(-0.5 * ((lam - lc) / sig) ** 2) / (np.sqrt(2 * np.pi) * sig)
    return old, young, lines, calzetti_k(lam)


def galaxy_flam(z: float, young_frac: np.ndarray, dust: np.ndarray, beta: float | np.ndarray = -2.2,
                lya_ew: float | np.ndarray = 0.0) -> np.ndarray:
    """Observed-frame galaxy f_lambda on ``WAVE`` at *z* (Inoue et al. 2014 IGM applied) for
    arrays of young fractions and Calzetti E_s(B-V) (broadcast together): (n, n_wave).

    *beta* and *lya_ew* may be arrays broadcast with the others; *lya_ew* [Å, rest] adds Lyα emission (>0) or absorption (<0), used for z~6 LBGs.
    """
    rest = WAVE / (1.0 + z)
    old, yng, lines, k = galaxy_components(rest, np.atleast_1d(np.asarray(beta, float)))
    yf = np.atleast_1d(np.asarray(young_frac, float))[:, None]
    ds = np.atleast_1d(np.asarray(dust, float))[:, None]
    ew = np.atleast_1d(np.asarray(lya_ew, float))[:, None]
    cont = (1.0 - yf) * old + yf * yng
    lya = ew * np.exp(-0.5 * ((rest - LYA) / 6.0) ** 2) / (np.sqrt(2 * np.pi) * 6.0)
    f = cont * (1.0 + yf * lines + lya)
    return np.clip(f, 0.0, None) * 10.0 ** (-0.4 * k * ds) * igm_transmission(WAVE, z)


# --------------------------------------------------------------------------- brown dwarfs
@lru_cache(maxsize=None)
def bd_standard_spectra() -> tuple[tuple[str, ...], np.ndarray]:
    """SpeX prism spectral standards M7…T8 (Burgasser 2014; Kirkpatrick et al. 2010; Burgasser
    et al. 2006) resampled onto ``WAVE`` (zero outside 0.65–2.56 µm): (types, (22, n_wave))."""
    t = Table.read(DATA_DIR / "bd_spex_prism_standards_M7_T8.ecsv", format="ascii.ecsv")
    st = np.asarray(t["spectral_type_standard"]).astype(str)
    types = tuple(dict.fromkeys(st))
    out = np.zeros((len(types), WAVE.size))
    for k, s in enumerate(types):
        m = st == s
        lam = np.asarray(t["wavelength_um"][m], float) * 1e4
        order = np.argsort(lam)
        out[k] = np.interp(WAVE, lam[order], np.asarray(t["flux_norm"][m], float)[order], left=0.0, right=0.0)
    return types, np.clip(out, 0.0, None)

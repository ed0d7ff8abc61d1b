"""Precomputed synthetic-photometry grids (cached per process): SED × filter integrals on
redshift / type grids, interpolated per object so that a shard needs no per-object spectra.

Magnitudes in the grids are *relative* (colours against an anchor) and come with the
effective F99 extinction coefficients of the same SED (see ``extinction.band_ext_coeffs``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from astropy.table import Table

from .extinction import band_ext_coeffs
from .photometry import C_ANGSTROM_S, DATA_DIR, WAVE, ab_mag, fnu_band
from .seds import (GALAXY_DUST_LEVELS, GALAXY_YOUNG_FRACTIONS, blackbody_flam, bd_standard_spectra,
                   galaxy_flam, quasar_flam)


@dataclass(frozen=True)
class ColourGrid:
    """mag[..., band] - anchor magnitude, and A_b/E(B-V), on axis ``z`` (first) × ``param``."""

    z: np.ndarray
    param: np.ndarray
    dmag: np.ndarray  # (n_z, n_param, 7)
    kext: np.ndarray  # (n_z, n_param, 7)


def _m1450_offsets(flam: np.ndarray, z: float) -> np.ndarray:
    """Band AB mag minus the AB mag of the observed f_nu at rest 1450 Å (finite where flux>0)."""
    w = 1450.0 * (1.0 + z)
    k = np.searchsorted(WAVE, w)
    t = (w - WAVE[k - 1]) / (WAVE[k] - WAVE[k - 1])
    f1450 = (flam[:, k - 1] * (1 - t) + flam[:, k] * t) * w**2 / C_ANGSTROM_S
    with np.errstate(divide="ignore"):
        return -2.5 * np.log10(fnu_band(flam) / f1450[:, None])


def _clean(dm: np.ndarray) -> np.ndarray:
    # zero transmitted flux (e.g. g band of a z=7 quasar): a very faint finite magnitude
    return np.where(np.isfinite(dm), np.minimum(dm, 40.0), 40.0)


#: Continuum-slope offsets of the quasar grid (per-object scatter ~0.3 is interpolated within).
QSO_DALPHA = np.array([-0.9, -0.45, 0.0, 0.45, 0.9])


@lru_cache(maxsize=None)
def quasar_grid() -> ColourGrid:
    """Quasar m_b - m_1450 vs redshift (0.3–7.6) and continuum-slope offset."""
    zs = np.round(np.arange(0.30, 7.61, 0.025), 4)
    dmag = np.zeros((zs.size, QSO_DALPHA.size, 7))
    kext = np.zeros_like(dmag)
    for i, z in enumerate(zs):
        flam = quasar_flam(z, QSO_DALPHA)
        dmag[i] = _clean(_m1450_offsets(flam, z))
        kext[i] = band_ext_coeffs(flam)
    return ColourGrid(zs, QSO_DALPHA, dmag, kext)


#: z~6 LBG grid parameters: UV slopes beta and rest-frame Lyα equivalent widths [Å].
LBG_BETA = (-2.4, -2.0, -1.6)
LBG_LYA_EW = (-10.0, 0.0, 20.0, 50.0)


@lru_cache(maxsize=None)
def lbg_grid() -> ColourGrid:
    """z~6 Lyman-break galaxies: m_b - m_1450 vs z (5.4–7.0) and (beta, EW) combination index."""
    zs = np.round(np.arange(5.40, 7.01, 0.02), 4)
    combos = [(b, e) for b in LBG_BETA for e in LBG_LYA_EW]
    dmag = np.zeros((zs.size, len(combos), 7))
    kext = np.zeros_like(dmag)
    for i, z in enumerate(zs):
        flam = galaxy_flam(z, 1.0, 0.0, beta=[b for b, _ in combos], lya_ew=[e for _, e in combos])
        dmag[i] = _clean(_m1450_offsets(flam, z))
        kext[i] = band_ext_coeffs(flam)
    return ColourGrid(zs, np.arange(len(combos)), dmag, kext)


@lru_cache(maxsize=None)
def galaxy_grid() -> ColourGrid:
    """Galaxies: m_b - m_i vs z (0.02–6.0) and (young fraction, dust) combination index
    (index = i_young * n_dust + i_dust)."""
    zs = np.round(np.arange(0.02, 6.001, 0.025), 4)
    yf, ds = np.meshgrid(GALAXY_YOUNG_FRACTIONS, GALAXY_DUST_LEVELS, indexing="ij")
    dmag = np.zeros((zs.size, yf.size, 7))
    kext = np.zeros_like(dmag)
    for i, z in enumerate(zs):
        flam = galaxy_flam(z, yf.ravel(), ds.ravel())
        m = ab_mag(flam)
        dmag[i] = _clean(m - m[:, 2:3])
        kext[i] = band_ext_coeffs(flam)
    return ColourGrid(zs, np.arange(yf.size), dmag, kext)


@lru_cache(maxsize=None)
def blackbody_grid() -> ColourGrid:
    """Main-sequence F–K stars as blackbodies: m_b - m_i vs Teff (3600–7600 K)."""
    teff = np.arange(3600.0, 7601.0, 50.0)
    flam = blackbody_flam(teff, WAVE)
    m = ab_mag(flam)
    return ColourGrid(teff, np.zeros(1), (m - m[:, 2:3])[:, None, :], band_ext_coeffs(flam)[:, None, :])


def interp_grid(grid: ColourGrid, z: np.ndarray, param_index: np.ndarray | None = None,
                param_value: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dmag, kext) per object, linear in z and (if *param_value*) in the parameter axis;
    *param_index* picks a discrete parameter column instead."""
    z = np.clip(np.asarray(z, float), grid.z[0], grid.z[-1])
    iz = np.clip(np.searchsorted(grid.z, z) - 1, 0, grid.z.size - 2)
    tz = ((z - grid.z[iz]) / (grid.z[iz + 1] - grid.z[iz]))[:, None]
    if param_value is not None:
        p = np.clip(np.asarray(param_value, float), grid.param[0], grid.param[-1])
        ip = np.clip(np.searchsorted(grid.param, p) - 1, 0, grid.param.size - 2)
        tp = ((p - grid.param[ip]) / (grid.param[ip + 1] - grid.param[ip]))[:, None]
        out = []
        for arr in (grid.dmag, grid.kext):
            lo = arr[iz, ip] * (1 - tp) + arr[iz, ip + 1] * tp
            hi = arr[iz + 1, ip] * (1 - tp) + arr[iz + 1, ip + 1] * tp
            out.append(lo * (1 - tz) + hi * tz)
        return out[0], out[1]
    ip = np.zeros(z.size, int) if param_index is None else np.asarray(param_index, int)
    return tuple(arr[iz, ip] * (1 - tz) + arr[iz + 1, ip] * tz for arr in (grid.dmag, grid.kext))


# --------------------------------------------------------------------------- tables
def _filled(t: Table, col: str) -> np.ndarray:
    """Column as float with masked entries filled by the nearest tabulated spectral type."""
    v = np.ma.filled(np.ma.asarray(t[col], dtype=float), np.nan)
    good = np.isfinite(v)
    idx = np.arange(v.size)
    return np.interp(idx, idx[good], v[good])


@dataclass(frozen=True)
class DwarfTable:
    """Absolute AB magnitudes (7 bands) per spectral type with scatter and F99 coefficients."""

    types: tuple[str, ...]
    spt_num: np.ndarray
    absmag: np.ndarray  # (n_type, 7)
    absmag_rms: np.ndarray  # (n_type,) luminosity scatter (y band)
    kext: np.ndarray  # (n_type, 7)


@lru_cache(maxsize=None)
def brown_dwarf_table() -> DwarfTable:
    """M7–T8 dwarfs: z, y, J, Ks from the SpeX prism standards through the filter curves,
    anchored at Best et al. 2018 (ApJS 234, 1) PS1 M_y; g, r, i from the Best et al. 2018 PS1
    colours (i-z, r-i, g-r; PS1 ≈ HSC).  The Best M_y rms is the luminosity scatter."""
    types, spec = bd_standard_spectra()
    m = ab_mag(spec)
    col = Table.read(DATA_DIR / "bd_colours_best2018_ps1.ecsv", format="ascii.ecsv")
    absm = Table.read(DATA_DIR / "bd_absmag_best2018.ecsv", format="ascii.ecsv")
    cidx = {s: k for k, s in enumerate(np.asarray(col["spectral_type"]).astype(str))}
    aidx = {s: k for k, s in enumerate(np.asarray(absm["spectral_type"]).astype(str))}
    iz, ri, gr = (_filled(col, c) for c in ("i_z_ps1", "r_i_ps1", "g_r_ps1"))
    my, my_rms = _filled(absm, "M_y_ps1"), _filled(absm, "M_y_ps1_rms")
    out = np.zeros((len(types), 7))
    rms = np.zeros(len(types))
    for k, s in enumerate(types):
        a, c = aidx[s], cidx[s]
        out[k, 4] = my[a]
        out[k, 3] = my[a] + (m[k, 3] - m[k, 4])
        out[k, 5] = my[a] - (m[k, 4] - m[k, 5])
        out[k, 6] = my[a] - (m[k, 4] - m[k, 6])
        out[k, 2] = out[k, 3] + iz[c]
        out[k, 1] = out[k, 2] + ri[c]
        out[k, 0] = out[k, 1] + gr[c]
        rms[k] = min(my_rms[a], 0.45)
    kext = band_ext_coeffs(spec)
    # the spectra do not cover g, r, i: use the coefficients of a cool (2500 K) photosphere there
    kcool = band_ext_coeffs(blackbody_flam(np.array([2500.0]), WAVE))[0]
    kext[:, :3] = kcool[:3]
    spt = np.array([{"M": 10, "L": 20, "T": 30}[s[0]] + int(s[1:]) for s in types], float)
    return DwarfTable(types, spt, out, rms, kext)


@dataclass(frozen=True)
class MDwarfColours:
    types: tuple[str, ...]
    dmag: np.ndarray  # (n_type, 7): m_b - m_i


@lru_cache(maxsize=None)
def m_dwarf_colours() -> MDwarfColours:
    """M0–M6 main-sequence colours from Best et al. 2018 (PS1 grizy; 2MASS J, H, Ks converted to
    AB with J +0.91, Ks +1.85 and taken as VISTA J, Ks)."""
    col = Table.read(DATA_DIR / "bd_colours_best2018_ps1.ecsv", format="ascii.ecsv")
    st = np.asarray(col["spectral_type"]).astype(str)
    sel = [k for k, s in enumerate(st) if s in {f"M{n}" for n in range(7)}]
    c = {n: _filled(col, n)[sel] for n in ("g_r_ps1", "r_i_ps1", "i_z_ps1", "z_y_ps1", "y_ps1_J_2mass",
                                           "J_H_2mass", "H_Ks_2mass")}
    d = np.zeros((len(sel), 7))
    d[:, 1] = c["r_i_ps1"]
    d[:, 0] = d[:, 1] + c["g_r_ps1"]
    d[:, 3] = -c["i_z_ps1"]
    d[:, 4] = d[:, 3] - c["z_y_ps1"]
    j_vega = d[:, 4] - c["y_ps1_J_2mass"]
    d[:, 5] = j_vega + 0.91
    d[:, 6] = j_vega - c["J_H_2mass"] - c["H_Ks_2mass"] + 1.85
    return MDwarfColours(tuple(st[sel]), d)

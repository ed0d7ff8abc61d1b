"""Settings of the mock VISTA Hemisphere Survey (J, Ks) and its footprint.

VHS (McMahon et al. 2013, Msngr 154, 35): 0.34″ pixels, seeing ≈ 0.9″ (J) / 0.85″ (Ks),
5σ depths J ≈ 21.1, Ks ≈ 19.9 AB (SCIENCE.md). Tile stacks carry MAGZPT (Vega mag of 1 ADU/s)
and EXPTIME; AB = Vega + (J 0.916, Ks 1.827) (Gonzalez-Fernandez et al. 2018).

Footprint: ~0.25° patches are missing as a whole with probability ``hole_fraction`` (a hash of
the patch decides), and narrow no-data strips along the rows and columns of each rotated
tile grid every ``gap_period_arcsec`` (tile edges) leave ~5 % of 8″ windows partly covered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..contracts import NJY_ZEROPOINT_MAG
from ..cutout_format import VISTA_AB_MINUS_VEGA
from .pixelgrid import VHS_GRID, hash_uniform, name_key


def _d(**kw: float) -> dict:
    return field(default_factory=lambda: dict(kw))


@dataclass(frozen=True)
class VhsConfig:
    """Mock VHS survey parameters (see module docstring)."""

    depth_5sigma: dict = _d(J=21.1, Ks=19.9)
    seeing_fwhm: dict = _d(J=0.90, Ks=0.85)
    seeing_scatter_ln: float = 0.10
    magzpt: dict = _d(J=23.8, Ks=23.0)
    exptime: float = 60.0
    gain_e_per_adu: float = 4.2
    hole_fraction: float = 0.07
    patch_deg: float = 0.25
    gap_period_arcsec: float = 360.0
    gap_width_arcsec: float = 4.0

    def njy_per_adu(self, band: str) -> float:
        """nJy of one ADU (cutout_format.VhsCutout.njy_per_adu)."""
        zp_ab = self.magzpt[band] + 2.5 * np.log10(self.exptime) + VISTA_AB_MINUS_VEGA[band]
        return float(10.0 ** (-0.4 * (zp_ab - NJY_ZEROPOINT_MAG)))


def in_vhs_footprint(ra, dec, seed: int, cfg: VhsConfig) -> np.ndarray | bool:
    """True where the mock VHS has J and Ks data (vectorised; a scalar in -> a bool out)."""
    scalar = np.ndim(ra) == 0 and np.ndim(dec) == 0
    ra, dec = np.broadcast_arrays(np.atleast_1d(np.asarray(ra, float)), np.atleast_1d(np.asarray(dec, float)))
    shape = ra.shape
    ra, dec = ra.ravel(), dec.ravel()
    pi = np.floor(ra / cfg.patch_deg).astype(np.int64)
    pj = np.floor(dec / cfg.patch_deg).astype(np.int64)
    ok = hash_uniform(name_key(seed, "vhs_patch"), pi, pj) >= cfg.hole_fraction
    ci, cj = VHS_GRID.cell_key(ra, dec)
    keys = ci * 1_000_003 + cj
    period = cfg.gap_period_arcsec / VHS_GRID.scale_arcsec
    width = cfg.gap_width_arcsec / VHS_GRID.scale_arcsec
    for key in np.unique(keys):
        sel = keys == key
        i0 = np.flatnonzero(sel)[0]
        cell = VHS_GRID.cell(int(ci[i0]), int(cj[i0]))
        x, y = cell.sky_to_pixel(ra[sel], dec[sel])
        gap = (np.mod(x, period) < width) | (np.mod(y, period) < width)
        ok[sel] &= ~gap
    return bool(ok[0]) if scalar else ok.reshape(shape)

"""Fixed global pixel grids of the mock sky and counter-based (stateless) random numbers.

HSC coadds live on tract/patch grids: a TAN projection per tract, pixels fixed on the sky.
A DAS cutout is a window of that grid, so the requested position falls at a sub-pixel
offset from the centre pixel. The mock does the same with 1° × 1° cells (HSC) and rotated,
shifted 1.5° × 1.5° cells (VHS tile stacks), so reprojection between them is real.

Projection: gnomonic (TAN) standard coordinates (ξ, η) of Calabretta & Greisen (2002, A&A 395,
1077), identical to astropy's ``RA---TAN``/``DEC--TAN`` with a CD matrix. Pixel ``p`` of a cell
(global, 0 at the tangent point plus a sub-pixel phase) is ``p = M (ξ, η) / s + φ`` with
``M = [[-cos t, sin t], [sin t, cos t]]`` (its own inverse), matching ``cutout_format.tan_wcs``.

Noise and every per-object / per-patch random choice use a counter-based hash (SplitMix64
finaliser, Steele et al. 2014) of integer keys, so a pixel's value depends only on
(seed, band, cell, pixel index) and never on which window asked for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from astropy.wcs import WCS
from scipy.special import ndtri

from ..cutout_format import tan_wcs
from .simulate import stable_hash

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (bijective avalanche on uint64)."""
    with np.errstate(over="ignore"):
        z = z + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def hash_keys(*keys) -> np.ndarray:
    """uint64 hash of integer keys (scalars or broadcastable arrays; negative ints allowed)."""
    arrays = np.broadcast_arrays(*[np.atleast_1d(np.asarray(k)).astype(np.int64).astype(np.uint64) for k in keys])
    h = np.zeros(arrays[0].shape, np.uint64)
    for a in arrays:
        h = _mix(h ^ a)
    return h


def hash_uniform(*keys) -> np.ndarray:
    """Uniform deviates in (0, 1) from integer keys (53-bit)."""
    return ((hash_keys(*keys) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def hash_normal(*keys) -> np.ndarray:
    """Standard normal deviates from integer keys (inverse CDF of hash_uniform)."""
    return ndtri(hash_uniform(*keys))


def name_key(*parts: object) -> int:
    """Stable 62-bit integer key of a tuple of names/numbers (BLAKE2b)."""
    return stable_hash("/".join(str(p) for p in parts), 62)


# --------------------------------------------------------------------------- projection
def tan_project(ra, dec, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic standard coordinates (ξ, η) [deg] of (ra, dec) about the tangent point (ra0, dec0)."""
    a, d = np.radians(ra), np.radians(dec)
    a0, d0 = np.radians(ra0), np.radians(dec0)
    cosd, sind, cosda = np.cos(d), np.sin(d), np.cos(a - a0)
    cosc = np.sin(d0) * sind + np.cos(d0) * cosd * cosda
    xi = cosd * np.sin(a - a0) / cosc
    eta = (np.cos(d0) * sind - np.sin(d0) * cosd * cosda) / cosc
    return np.degrees(xi), np.degrees(eta)


def tan_deproject(xi, eta, ra0, dec0) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of tan_project: (ra, dec) [deg] of standard coordinates (ξ, η) [deg]."""
    x, y = np.radians(xi), np.radians(eta)
    d0 = np.radians(dec0)
    den = np.cos(d0) - y * np.sin(d0)
    ra = np.degrees(np.arctan2(x, den)) + ra0
    dec = np.degrees(np.arctan2(np.sin(d0) + y * np.cos(d0), np.hypot(x, den)))
    return np.mod(ra, 360.0), dec


@dataclass(frozen=True)
class Cell:
    """One projection cell: tangent point, rotation and sub-pixel phase of its pixel grid."""

    key: tuple[int, int]
    ra0: float
    dec0: float
    rotation_deg: float
    phase: tuple[float, float]  # global pixel coordinate of the tangent point
    scale_arcsec: float

    @property
    def matrix(self) -> np.ndarray:
        """M of the module docstring: pixel offset × (s/3600) -> (ξ, η) offset [deg], and back."""
        t = math.radians(self.rotation_deg)
        return np.array([[-math.cos(t), math.sin(t)], [math.sin(t), math.cos(t)]])

    def sky_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """Global (float) pixel coordinates of sky positions; integers are pixel centres."""
        xi, eta = tan_project(ra, dec, self.ra0, self.dec0)
        m = self.matrix
        s = self.scale_arcsec / 3600.0
        return (m[0, 0] * xi + m[0, 1] * eta) / s + self.phase[0], (m[1, 0] * xi + m[1, 1] * eta) / s + self.phase[1]

    def pixel_to_sky(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix
        s = self.scale_arcsec / 3600.0
        dx, dy = (np.asarray(x) - self.phase[0]) * s, (np.asarray(y) - self.phase[1]) * s
        return tan_deproject(m[0, 0] * dx + m[0, 1] * dy, m[1, 0] * dx + m[1, 1] * dy, self.ra0, self.dec0)

    def window_wcs(self, x0: int, y0: int, n: int) -> WCS:
        """WCS of the n × n window whose first pixel is global pixel (x0, y0)."""
        k = (n - 1) // 2
        # tan_wcs puts crpix at (n+1)/2 + offset; the tangent point is global (phase) -> 1-based phase - x0 + 1
        off = (self.phase[0] - x0 + 1 - (k + 1), self.phase[1] - y0 + 1 - (k + 1))
        return tan_wcs(self.ra0, self.dec0, (n, n), self.scale_arcsec, self.rotation_deg, crpix_offset=off)


@dataclass(frozen=True)
class GridSpec:
    """A family of cells tiling the sky: cell size [deg], pixel scale, and whether cells are
    rotated / shifted by a deterministic hash (VHS) or aligned at cell centres (HSC)."""

    name: str
    cell_deg: float
    scale_arcsec: float
    rotate: bool = False
    max_shift_deg: float = 0.0

    def cell_key(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        return np.floor(np.asarray(ra) / self.cell_deg).astype(np.int64), np.floor(np.asarray(dec) / self.cell_deg).astype(np.int64)

    def cell_at(self, ra: float, dec: float) -> Cell:
        ci, cj = self.cell_key(ra, dec)
        return self.cell(int(ci), int(cj))

    def cell(self, ci: int, cj: int) -> Cell:
        return _make_cell(self, ci, cj)


@lru_cache(maxsize=4096)
def _make_cell(spec: GridSpec, ci: int, cj: int) -> Cell:
    ra0 = (ci + 0.5) * spec.cell_deg
    dec0 = (cj + 0.5) * spec.cell_deg
    rot, phase = 0.0, (0.0, 0.0)
    if spec.rotate:
        base = name_key("grid", spec.name)
        u = hash_uniform(base, ci, cj, np.arange(5))
        rot = 90.0 * u[0]
        ra0 += spec.max_shift_deg * (2 * u[1] - 1) / max(math.cos(math.radians(dec0)), 0.1)
        dec0 += spec.max_shift_deg * (2 * u[2] - 1)
        phase = (float(u[3]), float(u[4]))
    return Cell((ci, cj), float(ra0), float(dec0), float(rot), phase, spec.scale_arcsec)


HSC_GRID = GridSpec("hsc", 1.0, 0.168)
VHS_GRID = GridSpec("vhs", 1.5, 0.34, rotate=True, max_shift_deg=0.05)


@dataclass(frozen=True)
class Window:
    """An n × n window of a cell's global pixel grid: pixels x0..x0+n-1, y0..y0+n-1."""

    cell: Cell
    x0: int
    y0: int
    n: int

    @property
    def wcs(self) -> WCS:
        return self.cell.window_wcs(self.x0, self.y0, self.n)


def window_at(spec: GridSpec, ra: float, dec: float, half_size_arcsec: float) -> Window:
    """The DAS-like window: the pixel nearest (ra, dec) is the centre; n = 2 ceil(h/s) + 1."""
    cell = spec.cell_at(ra, dec)
    x, y = cell.sky_to_pixel(ra, dec)
    k = int(math.ceil(half_size_arcsec / spec.scale_arcsec - 1e-9))
    return Window(cell, int(np.rint(x)) - k, int(np.rint(y)) - k, 2 * k + 1)


def window_normals(seed: int, band: str, window: Window, stream: str = "noise") -> np.ndarray:
    """Standard normal deviates of the window's pixels, a function of (seed, band, cell, pixel)."""
    ci, cj = window.cell.key
    base = name_key(seed, stream, band, window.cell.scale_arcsec, ci, cj)
    ys = np.arange(window.y0, window.y0 + window.n)[:, None]
    xs = np.arange(window.x0, window.x0 + window.n)[None, :]
    return hash_normal(base, ys, xs)

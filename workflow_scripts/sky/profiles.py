"""Surface-brightness profiles and pixel stamps of single objects (PSF, Sérsic, trails, cosmic rays).

Physical model
- PSF: circular Moffat (1969, A&A 3, 455) with β = 3, I(r) ∝ (1 + r²/α²)^-β,
  α = FWHM / (2 sqrt(2^(1/β) - 1)); a good description of seeing-limited ground-based PSFs
  (Trujillo et al. 2001, MNRAS 328, 977).
- Galaxies: elliptical Sérsic (1963) I ∝ exp(-b_n (r/r_e)^(1/n)), b_n from the incomplete gamma
  function (Ciotti & Bertin 1999), r_e the circularised half-light radius (r² = q a² + b²/q in
  the major/minor frame, as in sky/noise.py), truncated where 99.5 % of the light is enclosed
  (or at 20″ along the major axis, or where the surface brightness falls below ``sb_floor``, a
  small fraction of the sky noise per pixel: faint galaxies need small stamps), normalised to
  the total flux inside the truncation (GalSim's ``trunc`` with ``flux_untruncated=False``), then
  convolved with the PSF. Point sources are cut the same way (between 4 and 6 FWHM).
- Moving objects: the PSF convolved with a straight line of the trail length.
- Cosmic rays: not convolved with the PSF; a Gaussian of the truth image FWHM convolved with a
  line of 0–3 pixels (analytic: erf along the track, Gaussian across).
Profiles are sampled at sub-pixel centres on an o × o oversampled grid, convolved there
(scipy FFT) and binned, then renormalised so each stamp holds exactly the object's flux.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve
from scipy.special import gamma, gammaincinv, ndtr

MOFFAT_BETA = 3.0
FWHM_TO_SIGMA = 1.0 / 2.3548200450309493
#: Largest radius of point-source stamps [FWHM] (β = 3 Moffat: 6 FWHM encloses 99.93 % of the flux,
#: 4 FWHM 99.7 %, 3 FWHM 99.1 %: the wings are heavy).
POINT_RADIUS_FWHM = 6.0
#: Largest radius of the PSF kernel used for convolution [FWHM].
KERNEL_RADIUS_FWHM = 4.0
SERSIC_ENCLOSED = 0.995
MAX_MAJOR_ARCSEC = 20.0
#: Largest oversampled stamp side [sub-pixels]: bounds the cost of big galaxies.
MAX_OVERSAMPLED = 200


def moffat_alpha(fwhm: float, beta: float = MOFFAT_BETA) -> float:
    return fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat(r2: np.ndarray, fwhm: float, beta: float = MOFFAT_BETA) -> np.ndarray:
    """Unit-flux Moffat surface brightness [per arcsec²] at squared radius r2 [arcsec²]."""
    a = moffat_alpha(fwhm, beta)
    return (beta - 1.0) / (math.pi * a * a) * (1.0 + r2 / (a * a)) ** (-beta)


def sersic_bn(n: float) -> float:
    return float(gammaincinv(2.0 * n, 0.5))


def sersic_truncation(n: float) -> float:
    """Radius [units of r_e] enclosing SERSIC_ENCLOSED of the light."""
    return float((gammaincinv(2.0 * n, SERSIC_ENCLOSED) / sersic_bn(n)) ** n)


def sersic_rtrunc(n, hlr, q, sb_floor):
    """Truncation radius [arcsec, circularised] of unit-flux Sérsic profiles (vectorised).

    The smallest of: SERSIC_ENCLOSED of the light, MAX_MAJOR_ARCSEC along the major axis, and the
    radius where the surface brightness [fraction of the flux per arcsec²] drops to *sb_floor*
    (never inside 1.5 r_e). I(r) = I0 exp(-b (r/r_e)^(1/n)), I0 = b^(2n) / (2π n r_e² Γ(2n)).
    """
    n, hlr, q, sb_floor = np.broadcast_arrays(*(np.asarray(v, float) for v in (n, hlr, q, sb_floor)))
    b = gammaincinv(2.0 * n, 0.5)
    r99 = (gammaincinv(2.0 * n, SERSIC_ENCLOSED) / b) ** n * hlr
    with np.errstate(divide="ignore", invalid="ignore"):
        i0 = b ** (2 * n) / (2 * np.pi * n * hlr**2 * gamma(2 * n))
        x = (np.log(np.maximum(i0 / np.where(sb_floor > 0, sb_floor, 1.0), 1.0)) / b) ** n
    r_sb = np.where(sb_floor > 0, np.maximum(x, 1.5) * hlr, np.inf)
    return np.minimum(np.minimum(r99, r_sb), MAX_MAJOR_ARCSEC * np.sqrt(np.clip(q, 0.02, 1.0)))


def moffat_rtrunc(fwhm, sb_floor, min_fwhm: float = 4.0, beta: float = MOFFAT_BETA):
    """Radius [arcsec] where a unit-flux Moffat falls to *sb_floor*, within [min_fwhm, 6] FWHM (vectorised).

    4 FWHM encloses 99.7 % of a β = 3 Moffat: renormalising a truncated point-source stamp to the
    full flux biases its PSF flux by ≈ +0.1 %; galaxy kernels may stop at 3 FWHM (99.1 %)."""
    fwhm, sb_floor = np.broadcast_arrays(np.asarray(fwhm, float), np.asarray(sb_floor, float))
    a = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = a * a * (((beta - 1) / (np.pi * a * a * sb_floor)) ** (1.0 / beta) - 1.0)
    r = np.where(sb_floor > 0, np.sqrt(np.clip(np.nan_to_num(r2, posinf=1e9), 0.0, None)), np.inf)
    return np.clip(r, min_fwhm * fwhm, POINT_RADIUS_FWHM * fwhm)


@dataclass(frozen=True)
class Source:
    """Shape of one object in one band (flux set separately). kind: point, sersic, trail, sharp."""

    kind: str
    fwhm: float  # PSF FWHM [arcsec]
    hlr: float = 0.0
    n: float = 1.0
    q: float = 1.0
    pa_deg: float = 0.0  # east of north
    length: float = 0.0  # trail length [arcsec]; cosmic-ray track length [pixels]
    sharp_fwhm: float = 0.0  # cosmic-ray image FWHM [arcsec]
    sb_floor: float = 0.0  # faintest surface brightness drawn [fraction of the flux per arcsec²]

    def kernel_radius(self) -> float:
        """PSF kernel radius [arcsec] for convolution: out to the surface-brightness floor, ≤ 3 FWHM."""
        return float(min(moffat_rtrunc(self.fwhm, self.sb_floor, 3.0), KERNEL_RADIUS_FWHM * self.fwhm))

    def reach_arcsec(self) -> float:
        """Radius of the stamp around the object's position."""
        if self.kind == "point":
            return float(moffat_rtrunc(self.fwhm, self.sb_floor))
        if self.kind == "sharp":
            return 0.168 * (self.length / 2 + 1) + 4.0 * self.sharp_fwhm * FWHM_TO_SIGMA
        kern = self.kernel_radius()
        if self.kind == "trail":
            return self.length / 2.0 + float(moffat_rtrunc(self.fwhm, self.sb_floor))
        return self.sersic_major_extent() + kern

    def sersic_rtrunc(self) -> float:
        """Truncation radius [arcsec, circularised units]."""
        return float(sersic_rtrunc(self.n, self.hlr, self.q, self.sb_floor))

    def sersic_major_extent(self) -> float:
        return self.sersic_rtrunc() / math.sqrt(max(self.q, 0.02))


@dataclass(frozen=True)
class PixelFrame:
    """Pixel scale and the matrix M (pixel offset -> (east, north) offset in units of the scale)."""

    scale: float
    matrix: tuple[tuple[float, float], tuple[float, float]]

    def to_sky(self, dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(east, north) offsets [arcsec] of pixel offsets."""
        m = self.matrix
        return (m[0][0] * dx + m[0][1] * dy) * self.scale, (m[1][0] * dx + m[1][1] * dy) * self.scale

    def to_pixel(self, east: np.ndarray, north: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix  # M is its own inverse
        return (m[0][0] * east + m[0][1] * north) / self.scale, (m[1][0] * east + m[1][1] * north) / self.scale


def _oversampling(side: int, src: Source, scale: float) -> int:
    """Sub-pixels per pixel: enough to sample the smallest scale of the profile (≈ 3 samples
    across the minor-axis half-light radius or the PSF core), at most MAX_OVERSAMPLED per side."""
    smallest = src.fwhm / 2.0
    if src.kind == "sersic":  # convolved with the PSF afterwards: coarse sampling of tiny cores is harmless
        smallest = min(smallest, max(src.hlr * math.sqrt(max(src.q, 0.02)), src.fwhm / 4.0))
    elif src.kind == "sharp":
        smallest = src.sharp_fwhm / 2.0
    o = min(math.ceil(2.0 * scale / smallest), MAX_OVERSAMPLED // max(side, 1))
    if src.kind == "point":  # no FFT, and PSF photometry needs the core integrated to < 0.5 %
        o = max(o, 5)
    return int(np.clip(o, 1, 7 if src.kind == "sharp" else 5))


def _subgrid(radius_px: int, o: int, fx: float, fy: float, frame: PixelFrame) -> tuple[np.ndarray, np.ndarray]:
    """(east, north) [arcsec] of the sub-pixel centres of a (2r+1)² stamp, relative to an object at
    fractional offset (fx, fy) [pixels] from the stamp's centre pixel."""
    side = 2 * radius_px + 1
    u = (np.arange(side * o) + 0.5) / o - radius_px - 0.5
    dx = (u - fx)[None, :]
    dy = (u - fy)[:, None]
    return frame.to_sky(dx, dy)


def _bin(a: np.ndarray, o: int) -> np.ndarray:
    if o == 1:
        return a
    s = a.shape[0] // o
    return a.reshape(s, o, s, o).sum(axis=(1, 3))


def _psf_kernel(fwhm: float, radius: float, o: int, frame: PixelFrame) -> np.ndarray:
    r = int(math.ceil(radius / frame.scale * o))
    u = np.arange(-r, r + 1) / o * frame.scale
    k = moffat(u[None, :] ** 2 + u[:, None] ** 2, fwhm).astype(np.float32)
    return k / k.sum()


def _sersic_image(src: Source, e: np.ndarray, nn: np.ndarray) -> np.ndarray:
    pa = math.radians(src.pa_deg)
    a = e * math.sin(pa) + nn * math.cos(pa)  # along the major axis
    b = e * math.cos(pa) - nn * math.sin(pa)
    q = max(src.q, 0.02)
    r = np.sqrt(q * a * a + b * b / q)
    img = np.exp(-sersic_bn(src.n) * (r / src.hlr) ** (1.0 / src.n))
    img[r > src.sersic_rtrunc()] = 0.0
    return img


def _trail_image(src: Source, o: int, shape: int, fx: float, fy: float, radius_px: int, frame: PixelFrame) -> np.ndarray:
    """A line of uniform brightness, deposited with bilinear weights on the sub-pixel grid."""
    pa = math.radians(src.pa_deg)
    npts = max(2, int(math.ceil(src.length / (frame.scale / o) * 2)))
    t = (np.arange(npts) + 0.5) / npts - 0.5
    px, py = frame.to_pixel(t * src.length * math.sin(pa), t * src.length * math.cos(pa))
    # sub-pixel index coordinates (centre of sub-pixel j at j)
    gx = (px + fx + radius_px + 0.5) * o - 0.5
    gy = (py + fy + radius_px + 0.5) * o - 0.5
    img = np.zeros((shape, shape))
    ix, iy = np.floor(gx).astype(int), np.floor(gy).astype(int)
    wx, wy = gx - ix, gy - iy
    for dxi, dyi, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        np.add.at(img, (np.clip(iy + dyi, 0, shape - 1), np.clip(ix + dxi, 0, shape - 1)), w)
    return img


def _sharp_image(src: Source, e: np.ndarray, nn: np.ndarray, frame: PixelFrame) -> np.ndarray:
    sig = src.sharp_fwhm * FWHM_TO_SIGMA
    half = 0.5 * src.length * frame.scale
    pa = math.radians(src.pa_deg)
    a = e * math.sin(pa) + nn * math.cos(pa)
    b = e * math.cos(pa) - nn * math.sin(pa)
    along = ndtr((a + half) / sig) - ndtr((a - half) / sig) if half > 1e-3 * sig else np.exp(-0.5 * (a / sig) ** 2)
    return along * np.exp(-0.5 * (b / sig) ** 2)


def render_stamp(src: Source, x: float, y: float, frame: PixelFrame) -> tuple[int, int, np.ndarray]:
    """Unit-flux stamp of *src* at global pixel position (x, y).

    Returns (x0, y0, stamp): the stamp covers global pixels x0.., y0.. and sums to exactly 1.
    """
    xc, yc = int(np.rint(x)), int(np.rint(y))
    fx, fy = x - xc, y - yc
    r = int(math.ceil(src.reach_arcsec() / frame.scale)) + 1
    side = 2 * r + 1
    o = _oversampling(side, src, frame.scale)
    if src.kind == "point":
        e, nn = _subgrid(r, o, fx, fy, frame)
        img = moffat(e * e + nn * nn, src.fwhm)
    elif src.kind == "sharp":
        e, nn = _subgrid(r, o, fx, fy, frame)
        img = _sharp_image(src, e, nn, frame)
    else:
        if src.kind == "trail":
            img = _trail_image(src, o, side * o, fx, fy, r, frame)
        else:
            e, nn = _subgrid(r, o, fx, fy, frame)
            img = _sersic_image(src, e, nn)
            if img.sum() <= 0:  # tinier than a sub-pixel: a point source
                img = np.zeros_like(img)
                img[img.shape[0] // 2, img.shape[1] // 2] = 1.0
        img = (img / img.sum()).astype(np.float32)  # float32 FFTs: twice as fast, ample precision
        img = fftconvolve(img, _psf_kernel(src.fwhm, src.kernel_radius(), o, frame), mode="same")
    stamp = _bin(img.astype(np.float64), o)
    stamp = np.clip(stamp, 0.0, None)  # FFT round-off
    return xc - r, yc - r, stamp / stamp.sum()


def psf_effective_area(fwhm: float, frame: PixelFrame) -> float:
    """Noise-equivalent area 1/Σp² [pixels] of the pixelised PSF (centred): σ_psf = σ_pix sqrt(A)."""
    _, _, p = render_stamp(Source("point", fwhm), 0.0, 0.0, frame)
    return float(1.0 / np.sum(p * p))

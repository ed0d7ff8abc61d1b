"""Cutout file formats: HSC DAS coadd cutouts and VISTA VSA (VHS) cutouts, read, written and validated.

HSC DAS (HSC_ACCESS.md section 2): HDU0 PRIMARY without data (FLUXMAG0, BGMEAN, BGVAR,
PSF_ID, FILTER), HDU1 IMAGE (float32), HDU2 MASK (int32; bit planes named by ``MP_<NAME>``
header cards), HDU3 VARIANCE (float32), each with a TAN WCS. Zero point 27.0 AB: one
count is 10**(-0.4 * (27 - 31.4)) = 57.544 nJy.

VSA ``getFImage`` (VHS tile-stack cutouts): HDU0 PRIMARY, HDU1 image in ADU with a TAN WCS,
``MAGZPT`` (Vega magnitude of 1 ADU/s), ``EXPTIME``; AB = Vega + offset (Gonzalez-Fernandez
et al. 2018: J +0.916, Ks +1.827).

The mock sky writes exactly these formats and the service clients validate them, so every
stage after the cutouts reads one format whatever the source.
"""

from __future__ import annotations

import io
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from workflow_scripts.contracts import NJY_ZEROPOINT_MAG, atomic_path

#: HSC coadd zero point (AB) and the flux of one count in nJy.
HSC_ZEROPOINT_AB = 27.0
HSC_NJY_PER_COUNT = 10.0 ** (-0.4 * (HSC_ZEROPOINT_AB - NJY_ZEROPOINT_MAG))
HSC_PIXEL_SCALE_ARCSEC = 0.168

#: HSC PDR2/PDR3 mask planes (bit numbers); files carry their own MP_* cards, which win.
HSC_MASK_BITS: dict[str, int] = {
    "BAD": 0, "SAT": 1, "INTRP": 2, "CR": 3, "EDGE": 4, "DETECTED": 5, "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7, "NO_DATA": 8, "BRIGHT_OBJECT": 9, "CROSSTALK": 10, "NOT_DEBLENDED": 11,
    "UNMASKEDNAN": 12, "REJECTED": 13, "CLIPPED": 14, "SENSOR_EDGE": 15, "INEXACT_PSF": 16,
}
#: DAS filter names of the broad bands.
HSC_FILTERS: dict[str, str] = {"g": "HSC-G", "r": "HSC-R", "i": "HSC-I", "z": "HSC-Z", "y": "HSC-Y"}

#: VISTA Vega-to-AB offsets (Gonzalez-Fernandez et al. 2018) and VHS pixel scale.
VISTA_AB_MINUS_VEGA: dict[str, float] = {"J": 0.916, "Ks": 1.827}
VHS_PIXEL_SCALE_ARCSEC = 0.34


class CutoutFormatError(ValueError):
    """A cutout file is not what the service format promises (names the file and the problem)."""


@dataclass
class HscCutout:
    """One band of an HSC coadd cutout, in counts (multiply by HSC_NJY_PER_COUNT for nJy)."""

    image: np.ndarray  # float32 (ny, nx)
    mask: np.ndarray  # int32 bit planes
    variance: np.ndarray  # float32, counts^2
    wcs: WCS
    band: str
    mask_bits: dict[str, int]
    header: fits.Header  # primary header (FLUXMAG0, PSF_ID, ...)

    def plane(self, name: str) -> np.ndarray:
        """Boolean map of one mask plane, by name."""
        return (self.mask & (1 << self.mask_bits[name])) != 0


@dataclass
class VhsCutout:
    """One VHS band (J or Ks) on its native grid, in ADU."""

    image: np.ndarray
    wcs: WCS
    band: str
    magzpt: float  # Vega mag of 1 ADU/s
    exptime: float

    @property
    def njy_per_adu(self) -> float:
        """nJy of one ADU: AB zero point of 1 ADU = MAGZPT + 2.5 log10(EXPTIME) + (AB - Vega)."""
        zp_ab = self.magzpt + 2.5 * np.log10(self.exptime) + VISTA_AB_MINUS_VEGA[self.band]
        return float(10.0 ** (-0.4 * (zp_ab - NJY_ZEROPOINT_MAG)))


def tan_wcs(ra: float, dec: float, shape: tuple[int, int], scale_arcsec: float, rotation_deg: float = 0.0,
            crpix_offset: tuple[float, float] = (0.0, 0.0)) -> WCS:
    """A TAN WCS with north up / east left (rotated by *rotation_deg*), centred on (ra, dec).

    *crpix_offset* moves the reference pixel, so the object need not sit on a pixel centre.
    """
    ny, nx = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(nx + 1) / 2 + crpix_offset[0], (ny + 1) / 2 + crpix_offset[1]]
    s = scale_arcsec / 3600.0
    t = np.deg2rad(rotation_deg)
    w.wcs.cd = np.array([[-s * np.cos(t), s * np.sin(t)], [s * np.sin(t), s * np.cos(t)]])
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    return w


def hsc_cutout_hdul(cut: HscCutout) -> fits.HDUList:
    """The DAS four-HDU layout of *cut*."""
    primary = fits.PrimaryHDU(header=cut.header.copy())
    primary.header["FLUXMAG0"] = 10.0 ** (0.4 * HSC_ZEROPOINT_AB)
    primary.header["FILTER"] = HSC_FILTERS[cut.band]
    wcs_header = cut.wcs.to_header()
    hdus = [primary]
    for name, data in (("IMAGE", cut.image.astype(np.float32)), ("MASK", cut.mask.astype(np.int32)),
                       ("VARIANCE", cut.variance.astype(np.float32))):
        hdu = fits.ImageHDU(data=data, header=wcs_header.copy(), name=name)
        hdu.header["EXTTYPE"] = name
        if name == "MASK":
            for plane, bit in cut.mask_bits.items():
                hdu.header[f"HIERARCH MP_{plane}"] = bit
        hdus.append(hdu)
    return fits.HDUList(hdus)


def _write_atomic(hdul: fits.HDUList, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        hdul.writeto(tmp, overwrite=True)


def _to_bytes(hdul: fits.HDUList) -> bytes:
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


def write_hsc_cutout(cut: HscCutout, path: str | os.PathLike) -> None:
    """Write *cut* atomically in the DAS format."""
    _write_atomic(hsc_cutout_hdul(cut), path)


def hsc_cutout_bytes(cut: HscCutout) -> bytes:
    return _to_bytes(hsc_cutout_hdul(cut))


@contextmanager
def _opened(source: str | os.PathLike | bytes) -> Iterator[tuple[str, fits.HDUList]]:
    """(name, verified HDU list) of a FITS path or bytes; any failure becomes a CutoutFormatError naming it."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with fits.open(io.BytesIO(source) if isinstance(source, bytes) else source, memmap=False) as hdul:
            hdul.verify("exception")
            yield name, hdul
    except CutoutFormatError:
        raise
    except Exception as exc:  # astropy raises many types for corrupt files
        raise CutoutFormatError(f"{name}: not a readable FITS cutout ({type(exc).__name__}: {exc})") from None


def read_hsc_cutout(source: str | os.PathLike | bytes, band: str | None = None) -> HscCutout:
    """Read and validate a DAS cutout (path or bytes); raise CutoutFormatError naming what is wrong."""
    with _opened(source) as (name, hdul):
        if len(hdul) < 4:
            raise CutoutFormatError(f"{name}: expected 4 HDUs (PRIMARY, IMAGE, MASK, VARIANCE), got {len(hdul)}")
        image, mask, var = (hdul[i].data for i in (1, 2, 3))
        for label, arr in (("IMAGE", image), ("MASK", mask), ("VARIANCE", var)):
            if arr is None or arr.ndim != 2:
                raise CutoutFormatError(f"{name}: HDU {label} has no 2-D data")
        if not (image.shape == mask.shape == var.shape):
            raise CutoutFormatError(f"{name}: IMAGE/MASK/VARIANCE shapes differ")
        bits = {k[3:]: int(v) for k, v in hdul[2].header.items() if k.startswith("MP_")} or dict(HSC_MASK_BITS)
        filt = str(hdul[0].header.get("FILTER", ""))
        band = band or next((b for b, f in HSC_FILTERS.items() if f == filt), "")
        wcs = WCS(hdul[1].header)
        if not wcs.has_celestial:
            raise CutoutFormatError(f"{name}: IMAGE HDU has no celestial WCS")
        return HscCutout(image=image.astype(np.float32), mask=mask.astype(np.int32), variance=var.astype(np.float32),
                         wcs=wcs.celestial, band=band, mask_bits=bits, header=hdul[0].header.copy())


def vhs_cutout_hdul(cut: VhsCutout) -> fits.HDUList:
    hdu = fits.ImageHDU(data=cut.image.astype(np.float32), header=cut.wcs.to_header())
    hdu.header["MAGZPT"] = cut.magzpt
    hdu.header["EXPTIME"] = cut.exptime
    hdu.header["FILTER"] = cut.band
    return fits.HDUList([fits.PrimaryHDU(), hdu])


def vhs_cutout_bytes(cut: VhsCutout) -> bytes:
    return _to_bytes(vhs_cutout_hdul(cut))


def write_vhs_cutout(cut: VhsCutout, path: str | os.PathLike) -> None:
    _write_atomic(vhs_cutout_hdul(cut), path)


def read_vhs_cutout(source: str | os.PathLike | bytes, band: str | None = None) -> VhsCutout:
    """Read and validate a VSA cutout (first image HDU with a celestial WCS and MAGZPT)."""
    with _opened(source) as (name, hdul):
        hdu = next((h for h in hdul if h.data is not None and getattr(h.data, "ndim", 0) == 2), None)
        if hdu is None:
            raise CutoutFormatError(f"{name}: no 2-D image HDU")
        if "MAGZPT" not in hdu.header:
            raise CutoutFormatError(f"{name}: image header lacks MAGZPT")
        wcs = WCS(hdu.header)
        if not wcs.has_celestial:
            raise CutoutFormatError(f"{name}: image has no celestial WCS")
        return VhsCutout(image=hdu.data.astype(np.float32), wcs=wcs.celestial,
                         band=band or str(hdu.header.get("FILTER", "")), magzpt=float(hdu.header["MAGZPT"]),
                         exptime=float(hdu.header.get("EXPTIME", 1.0)))

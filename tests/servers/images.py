"""Small synthetic cutout providers for the loopback DAS / VSA servers.

A provider is ``provider(ra, dec, band, half_size_arcsec) -> bytes | None``: the FITS
bytes the service would deliver for that box, or None where it has no data. These
draw one Gaussian blob at the box centre (no sky model; that is
``workflow_scripts.sky.render.MockImager``) inside a rectangular footprint, written with
the real format writers of :mod:`workflow_scripts.cutout_format`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from astropy.io import fits

from workflow_scripts.cutout_format import (
    HSC_MASK_BITS,
    HSC_PIXEL_SCALE_ARCSEC,
    VHS_PIXEL_SCALE_ARCSEC,
    HscCutout,
    VhsCutout,
    hsc_cutout_bytes,
    tan_wcs,
    vhs_cutout_hdul,
)


@dataclass(frozen=True)
class Footprint:
    """An RA/Dec box (deg) where the survey has data."""

    ra: tuple[float, float] = (0.0, 360.0)
    dec: tuple[float, float] = (-90.0, 90.0)

    def contains(self, ra: float, dec: float) -> bool:
        return self.ra[0] <= ra % 360.0 <= self.ra[1] and self.dec[0] <= dec <= self.dec[1]


def _blob(n: int, amplitude: float, sigma_pix: float) -> np.ndarray:
    y, x = np.mgrid[:n, :n] - (n - 1) / 2.0
    return (amplitude * np.exp(-(x**2 + y**2) / (2.0 * sigma_pix**2))).astype(np.float32)


def _npix(half_size_arcsec: float, scale: float) -> int:
    return max(3, int(round(2.0 * half_size_arcsec / scale)) | 1)


def gaussian_hsc_cutout(ra: float, dec: float, band: str, half_size_arcsec: float) -> HscCutout:
    n = _npix(half_size_arcsec, HSC_PIXEL_SCALE_ARCSEC)
    image = _blob(n, 100.0, 3.0)
    mask = np.zeros((n, n), np.int32)
    mask[0, :] = 1 << HSC_MASK_BITS["EDGE"]
    header = fits.Header()
    header["PSF_ID"] = 1
    header["BGMEAN"] = 0.0
    header["BGVAR"] = 1.0
    return HscCutout(image=image, mask=mask, variance=np.ones((n, n), np.float32),
                     wcs=tan_wcs(ra, dec, (n, n), HSC_PIXEL_SCALE_ARCSEC), band=band,
                     mask_bits=dict(HSC_MASK_BITS), header=header)


def gaussian_vhs_cutout(ra: float, dec: float, band: str, half_size_arcsec: float) -> VhsCutout:
    n = _npix(half_size_arcsec, VHS_PIXEL_SCALE_ARCSEC)
    return VhsCutout(image=_blob(n, 50.0, 2.0), wcs=tan_wcs(ra, dec, (n, n), VHS_PIXEL_SCALE_ARCSEC),
                     band=band, magzpt=23.5 if band == "J" else 22.9, exptime=60.0)


def hdul_bytes(hdul: fits.HDUList) -> bytes:
    buf = io.BytesIO()
    hdul.writeto(buf)
    return buf.getvalue()


class GaussianProvider:
    """Provider of Gaussian-blob cutouts inside *footprint*; records every call."""

    def __init__(self, survey: str = "hsc", footprint: Footprint | None = None) -> None:
        if survey not in ("hsc", "vhs"):
            raise ValueError("survey must be 'hsc' or 'vhs'")
        self.survey = survey
        self.footprint = footprint or Footprint()
        self.calls: list[tuple[float, float, str, float]] = []

    def __call__(self, ra: float, dec: float, band: str, half_size_arcsec: float) -> bytes | None:
        self.calls.append((ra, dec, band, half_size_arcsec))
        if not self.footprint.contains(ra, dec):
            return None
        if self.survey == "hsc":
            return hsc_cutout_bytes(gaussian_hsc_cutout(ra, dec, band, half_size_arcsec))
        return hdul_bytes(vhs_cutout_hdul(gaussian_vhs_cutout(ra, dec, band, half_size_arcsec)))


# ---------------------------------------------------------------------------- mock sky (CLI)
def mock_imager_from_config(config: dict):
    """``MockImager`` over every shard of a pipeline config (``seed``, ``sky``, ``shards``)."""
    import pandas as pd

    from tests.servers.base import simulate_config_shards

    try:
        from workflow_scripts.sky.render import MockImager
    except ImportError as exc:  # written in parallel; say so instead of a bare traceback
        raise SystemExit(f"workflow_scripts.sky.render.MockImager is not available ({exc})") from None
    sky, shards = simulate_config_shards(config)
    return MockImager(pd.concat([cat for _, cat, _ in shards], ignore_index=True),
                      pd.concat([truth for _, _, truth in shards], ignore_index=True), seed=config.get("seed", 0), sky=sky)

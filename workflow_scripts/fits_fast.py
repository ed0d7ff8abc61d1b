"""Fast reader of HSC DAS cutouts (PRIMARY, IMAGE, MASK, VARIANCE) and a vectorised TAN WCS.

Why: the ``stack`` stage opens 5 files per object for 10^5-10^6 objects; astropy's
``fits.open`` + ``WCS`` cost milliseconds per file, almost all of it generic machinery.
A DAS cutout is simple: four HDUs of 2880-byte header blocks of 80-character cards and
big-endian data. We read the file in one call, parse only the cards we need, and expose the
planes as zero-copy big-endian views (the caller converts only the pixels it crops).

Safety: anything the parser does not fully understand (not 4 HDUs, NAXIS != 2, BSCALE/BZERO,
a projection other than plain TAN, distortion terms (SIP/PV), LONPOLE != 180, non-degree
units, truncated data, ...) raises ``Unsupported`` inside, and ``read_das`` falls back to
astropy (``cutout_format.read_hsc_cutout``), whose WCS then maps positions. The fast and
the astropy paths are tested against each other on files written by ``cutout_format``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from workflow_scripts.cutout_format import HSC_FILTERS, HSC_MASK_BITS

BLOCK = 2880
CARD = 80
_DTYPES = {-32: ">f4", -64: ">f8", 32: ">i4", 16: ">i2", 8: "u1", 64: ">i8"}
_PLANES = ("IMAGE", "MASK", "VARIANCE")


class Unsupported(ValueError):
    """The file is legal FITS, maybe, but not the simple DAS layout the fast path handles."""


class PixelMapper(Protocol):
    def world_to_pixel(self, ra: np.ndarray | float, dec: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]: ...

    def to_astropy(self): ...


@dataclass(frozen=True)
class TanWcs:
    """A plain gnomonic (TAN) WCS: CRVAL (deg), CRPIX (1-based FITS), CD (deg/pixel), LONPOLE 180."""

    crval: tuple[float, float]
    crpix: tuple[float, float]
    cd: tuple[tuple[float, float], tuple[float, float]]

    def world_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel (x, y) of ICRS (ra, dec) in degrees; vectorised (Calabretta & Greisen 2002, TAN)."""
        a = np.deg2rad(np.asarray(ra, dtype=np.float64))
        d = np.deg2rad(np.asarray(dec, dtype=np.float64))
        a0, d0 = np.deg2rad(self.crval[0]), np.deg2rad(self.crval[1])
        da = a - a0
        cos_d, sin_d, cos_da = np.cos(d), np.sin(d), np.cos(da)
        cos_c = np.sin(d0) * sin_d + np.cos(d0) * cos_d * cos_da  # cosine of the distance to CRVAL
        xi = np.rad2deg(cos_d * np.sin(da) / cos_c)  # intermediate world coordinates (deg)
        eta = np.rad2deg((np.cos(d0) * sin_d - np.sin(d0) * cos_d * cos_da) / cos_c)
        inv = np.linalg.inv(np.asarray(self.cd, dtype=np.float64))
        x = inv[0, 0] * xi + inv[0, 1] * eta + (self.crpix[0] - 1.0)
        y = inv[1, 0] * xi + inv[1, 1] * eta + (self.crpix[1] - 1.0)
        # behind the tangent plane (> 90 deg away) there is no pixel
        bad = cos_c <= 0
        if np.any(bad):
            x, y = np.where(bad, np.nan, x), np.where(bad, np.nan, y)
        return x, y

    def to_astropy(self):
        from astropy.wcs import WCS

        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = list(self.crval)
        w.wcs.crpix = list(self.crpix)
        w.wcs.cd = np.asarray(self.cd)
        w.wcs.cunit = ["deg", "deg"]
        w.wcs.radesys = "ICRS"
        return w


@dataclass(frozen=True)
class AstropyMapper:
    """Any astropy celestial WCS behind the same interface (the fallback path)."""

    wcs: object

    def world_to_pixel(self, ra, dec) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.wcs.world_to_pixel_values(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))
        return np.asarray(x), np.asarray(y)

    def to_astropy(self):
        return self.wcs


@dataclass
class DasFile:
    """One DAS cutout: planes as arrays (big-endian read-only views on the fast path), WCS, mask bits."""

    image: np.ndarray  # counts
    mask: np.ndarray  # int bit planes
    variance: np.ndarray
    wcs: PixelMapper
    mask_bits: dict[str, int]
    band: str
    fast: bool = True  # False when astropy read it
    primary: dict[str, object] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape

    def mask_value(self, planes: tuple[str, ...] | list[str]) -> int:
        """Bit mask of the named planes that this file defines (planes it lacks are never set)."""
        value = 0
        for name in planes:
            if name in self.mask_bits:
                value |= 1 << self.mask_bits[name]
        return value


def _parse_value(raw: str) -> object:
    raw = raw.strip()
    if raw.startswith("'"):
        end, i = None, 1
        while i < len(raw):  # '' is an escaped quote inside a FITS string
            if raw[i] == "'":
                if i + 1 < len(raw) and raw[i + 1] == "'":
                    i += 2
                    continue
                end = i
                break
            i += 1
        if end is None:
            raise Unsupported(f"unterminated string value {raw!r}")
        return raw[1:end].replace("''", "'").rstrip()
    raw = raw.split("/", 1)[0].strip()
    if raw in ("T", "F"):
        return raw == "T"
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw.replace("D", "E").replace("d", "e"))
    except ValueError:
        raise Unsupported(f"cannot parse value {raw!r}") from None


class _Header:
    """The raw cards of one header; values parsed on demand (most cards are never looked at)."""

    def __init__(self, cards: dict[str, str]):
        self.cards = cards

    def __contains__(self, key: str) -> bool:
        return key in self.cards

    def get(self, key: str, default=None):
        raw = self.cards.get(key)
        return default if raw is None else _parse_value(raw)

    def need(self, key: str):
        if key not in self.cards:
            raise Unsupported(f"header lacks {key}")
        return self.get(key)


def _read_header(buf: memoryview, pos: int) -> tuple[_Header, int]:
    """Cards from *pos* up to END; return them and the offset of the first data byte."""
    cards: dict[str, str] = {}
    n = len(buf)
    while True:
        if pos + BLOCK > n:
            raise Unsupported("truncated header")
        block = bytes(buf[pos:pos + BLOCK]).decode("ascii")
        pos += BLOCK
        for i in range(0, BLOCK, CARD):
            card = block[i:i + CARD]
            key = card[:8].rstrip()
            if key == "END":
                return _Header(cards), pos
            if key == "HIERARCH":
                name, sep, value = card[9:].partition("=")
                if sep:
                    cards[name.strip()] = value
            elif card[8:10] == "= " and key:
                cards[key] = card[10:]


def _tan_from_header(h: _Header) -> TanWcs:
    if h.get("CTYPE1") != "RA---TAN" or h.get("CTYPE2") != "DEC--TAN":
        raise Unsupported(f"projection {h.get('CTYPE1')}/{h.get('CTYPE2')} is not plain RA/DEC TAN")
    if any(k.startswith(("PV", "A_", "B_", "AP_", "BP_", "CROTA")) for k in h.cards):
        raise Unsupported("distortion or CROTA keywords")
    if float(h.get("LONPOLE", 180.0)) != 180.0:
        raise Unsupported("LONPOLE != 180")
    for k in ("CUNIT1", "CUNIT2"):
        if str(h.get(k, "deg")).strip().lower() not in ("deg", ""):
            raise Unsupported(f"{k} is not deg")
    if int(h.get("WCSAXES", 2)) != 2:
        raise Unsupported("WCSAXES != 2")
    if "CD1_1" in h:
        cd = [[float(h.get(f"CD{i}_{j}", 0.0)) for j in (1, 2)] for i in (1, 2)]
    else:
        cdelt = (float(h.get("CDELT1", 1.0)), float(h.get("CDELT2", 1.0)))
        pc = [[float(h.get(f"PC{i}_{j}", 1.0 if i == j else 0.0)) for j in (1, 2)] for i in (1, 2)]
        cd = [[cdelt[i] * pc[i][j] for j in range(2)] for i in range(2)]
    if abs(np.linalg.det(np.asarray(cd))) == 0:
        raise Unsupported("singular CD matrix")
    crval = (float(h.need("CRVAL1")), float(h.need("CRVAL2")))
    crpix = (float(h.need("CRPIX1")), float(h.need("CRPIX2")))
    return TanWcs(crval=crval, crpix=crpix, cd=((cd[0][0], cd[0][1]), (cd[1][0], cd[1][1])))


def parse_das(data: bytes) -> DasFile:
    """Parse the bytes of a DAS cutout on the fast path; raise Unsupported on anything unusual."""
    buf = memoryview(data)
    primary, pos = _read_header(buf, 0)
    if primary.get("SIMPLE") is not True or int(primary.get("NAXIS", -1)) != 0:
        raise Unsupported("primary HDU is not SIMPLE with NAXIS = 0")
    planes: dict[str, np.ndarray] = {}
    headers: dict[str, _Header] = {}
    for expected in _PLANES:
        h, pos = _read_header(buf, pos)
        if h.get("XTENSION") != "IMAGE":
            raise Unsupported(f"HDU {expected} is not an IMAGE extension")
        name = h.get("EXTNAME", expected)
        if name != expected:
            raise Unsupported(f"HDU order: expected {expected}, found {name}")
        bitpix, naxis = int(h.need("BITPIX")), int(h.need("NAXIS"))
        if naxis != 2 or bitpix not in _DTYPES:
            raise Unsupported(f"{name}: NAXIS={naxis} BITPIX={bitpix}")
        if int(h.get("PCOUNT", 0)) != 0 or int(h.get("GCOUNT", 1)) != 1:
            raise Unsupported(f"{name}: PCOUNT/GCOUNT")
        if float(h.get("BSCALE", 1.0)) != 1.0 or float(h.get("BZERO", 0.0)) != 0.0:
            raise Unsupported(f"{name}: scaled data (BSCALE/BZERO)")
        nx, ny = int(h.need("NAXIS1")), int(h.need("NAXIS2"))
        nbytes = abs(bitpix) // 8 * nx * ny
        if pos + nbytes > len(buf):
            raise Unsupported(f"{name}: truncated data")
        planes[name] = np.frombuffer(data, dtype=_DTYPES[bitpix], count=nx * ny, offset=pos).reshape(ny, nx)
        headers[name] = h
        pos += -(-nbytes // BLOCK) * BLOCK
    if not (planes["IMAGE"].shape == planes["MASK"].shape == planes["VARIANCE"].shape):
        raise Unsupported("IMAGE/MASK/VARIANCE shapes differ")
    if planes["MASK"].dtype.kind not in "iu":
        raise Unsupported("MASK is not integer")
    bits = {k[3:]: int(headers["MASK"].get(k)) for k in headers["MASK"].cards if k.startswith("MP_")}
    filt = primary.get("FILTER", "")
    band = next((b for b, f in HSC_FILTERS.items() if f == filt), "")
    return DasFile(image=planes["IMAGE"], mask=planes["MASK"], variance=planes["VARIANCE"],
                   wcs=_tan_from_header(headers["IMAGE"]), mask_bits=bits or dict(HSC_MASK_BITS), band=band,
                   primary={"FILTER": filt, "FLUXMAG0": primary.get("FLUXMAG0")})


def read_das(path: str | os.PathLike) -> DasFile:
    """Read a DAS cutout: the fast path, or astropy when the file is anything but the simple layout.

    Raises ``cutout_format.CutoutFormatError`` (from the astropy path) for unreadable files.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        return parse_das(data)
    except (Unsupported, ValueError, UnicodeDecodeError):
        return read_das_astropy(path)


def read_das_astropy(path: str | os.PathLike) -> DasFile:
    """The reference path: astropy reads and validates the file, its WCS maps positions."""
    from workflow_scripts.cutout_format import read_hsc_cutout

    cut = read_hsc_cutout(path)
    return DasFile(image=cut.image, mask=cut.mask, variance=cut.variance, wcs=AstropyMapper(cut.wcs),
                   mask_bits=cut.mask_bits, band=cut.band, fast=False,
                   primary={"FILTER": cut.header.get("FILTER", ""), "FLUXMAG0": cut.header.get("FLUXMAG0")})

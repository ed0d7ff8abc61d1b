"""Configuration of the mock sky: the box of sky a shard covers and the survey parameters."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..contracts import BANDS


@dataclass(frozen=True)
class SkyBox:
    """An RA/Dec box in degrees (ICRS); RA does not wrap through 0."""

    ra_min: float
    ra_max: float
    dec_min: float
    dec_max: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.ra_min < self.ra_max <= 360.0):
            raise ValueError(f"SkyBox needs 0 <= ra_min < ra_max <= 360, got {self.ra_min}, {self.ra_max}")
        if not (-90.0 <= self.dec_min < self.dec_max <= 90.0):
            raise ValueError(f"SkyBox needs -90 <= dec_min < dec_max <= 90, got {self.dec_min}, {self.dec_max}")

    @property
    def area_deg2(self) -> float:
        """Solid angle in deg² (exact on the sphere)."""
        s = math.sin(math.radians(self.dec_max)) - math.sin(math.radians(self.dec_min))
        return (self.ra_max - self.ra_min) * s * 180.0 / math.pi

    @property
    def center(self) -> tuple[float, float]:
        return 0.5 * (self.ra_min + self.ra_max), 0.5 * (self.dec_min + self.dec_max)


def _default_depth() -> dict[str, float]:
    return {"g": 26.5, "r": 26.1, "i": 25.9, "z": 25.1, "y": 24.4}


def _default_seeing() -> dict[str, float]:
    return {"g": 0.79, "r": 0.75, "i": 0.61, "z": 0.68, "y": 0.68}


@dataclass(frozen=True)
class SkyConfig:
    """Survey and population settings of the mock HSC-SSP Wide sky (see SCIENCE.md).

    enrichment: multiplies the density of the rare classes only — quasars with z > 5.6 and the
        z ~ 6 Lyman-break galaxies that mimic them (1.0 = the real sky); such objects carry
        ``enrichment_weight = 1/enrichment`` in the truth table.
    depth_5sigma: PSF 5σ limiting AB magnitude per band at nominal input count and seeing.
    seeing_fwhm: median PSF FWHM per band [arcsec].
    ebv_median: median Galactic E(B-V) (SFD scale, as HSC's ``a_<b>`` columns use).
    detection_snr: an object is catalogued when its PSF-flux S/N reaches this in any band.
    """

    enrichment: float = 300.0
    depth_5sigma: dict = field(default_factory=_default_depth)
    seeing_fwhm: dict = field(default_factory=_default_seeing)
    ebv_median: float = 0.03
    detection_snr: float = 5.0

    def __post_init__(self) -> None:
        for name in ("depth_5sigma", "seeing_fwhm"):
            d = getattr(self, name)
            missing = [b for b in BANDS if b not in d]
            extra = [b for b in d if b not in BANDS]
            if missing or extra:
                raise ValueError(f"sky.{name} needs exactly the bands {list(BANDS)}; missing {missing}, unknown {extra}")
        if self.enrichment <= 0:
            raise ValueError("sky.enrichment must be > 0")
        if self.ebv_median < 0 or self.detection_snr <= 0:
            raise ValueError("sky.ebv_median must be >= 0 and sky.detection_snr > 0")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "SkyConfig":
        """Build from a (possibly partial) config mapping; unknown keys raise ValueError."""
        d = dict(d or {})
        names = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in names:
                raise ValueError(f"unknown sky config key: {key!r} (known: {sorted(names)})")
        kw: dict[str, Any] = {}
        for key, val in d.items():
            if key in ("depth_5sigma", "seeing_fwhm"):
                base = _default_depth() if key == "depth_5sigma" else _default_seeing()
                unknown = [b for b in val if b not in base]
                if unknown:
                    raise ValueError(f"unknown band in sky.{key}: {unknown[0]!r}")
                base.update({b: float(v) for b, v in val.items()})
                kw[key] = base
            else:
                kw[key] = float(val)
        return cls(**kw)

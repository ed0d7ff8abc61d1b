"""Moving objects (asteroids) and image artefacts: detections that are not astrophysical
point/extended sources seen in all bands.

Densities (per deg², documented guesses for HSC-SSP Wide coadds):
- asteroids: 300 × [0.03 + 0.97 exp(-(β/12°)²)] detections to R = 24.4 (β: ecliptic latitude),
  cumulative slope 0.35 dex/mag; each is seen in ONE band (bands are taken on different nights).
- cosmic rays surviving coadd clipping: 40 (all bands), sharper than the PSF.
- spurious chip-edge detections: 15, in 1–3 adjacent bands, low input count, biased/NaN flux.
- bleed-trail detections: Poisson(0.5 + 0.7 × mags above i saturation) per saturated star (≤ 4).
"""

from __future__ import annotations

import numpy as np

from ..contracts import BANDS, mag_to_flux
from .config import SkyBox, SkyConfig
from .populations import Population, ecliptic_latitude, new_population

#: Solar reflectance colours relative to r (SDSS/PS1-like AB, Holmberg et al. 2006; z-y ≈ 0.02).
SOLAR_DMAG = {"g": 0.44, "r": 0.0, "i": -0.11, "z": -0.14, "y": -0.16}
#: Single-exposure times [s] of HSC-SSP Wide (g, r: 150 s; i, z, y: 200 s; Aihara et al. 2018).
EXPTIME = {"g": 150.0, "r": 150.0, "i": 200.0, "z": 200.0, "y": 200.0}
#: Saturation limits [AB mag] of a Wide exposure (stars brighter saturate in the centre).
SAT_MAG = {"g": 17.8, "r": 17.8, "i": 17.5, "z": 17.0, "y": 16.5}


def _zero_flux(n: int) -> np.ndarray:
    return np.zeros((n, 7))


def draw_moving_objects(rng: np.random.Generator, box: SkyBox, sky: SkyConfig) -> Population:
    """Asteroid detections, one band each, with solar colours (±0.05 mag taxonomic scatter) and
    trails of rate (15–45″/h near opposition) × exposure time."""
    beta = ecliptic_latitude(*box.center)
    dens = 300.0 * (0.03 + 0.97 * np.exp(-((beta / 12.0) ** 2)))
    slope = 0.35
    rmax = 26.0
    n_exp = dens * 10.0 ** (slope * (rmax - 24.4)) * box.area_deg2
    n = rng.poisson(n_exp)
    # cumulative N(<R) ∝ 10^(slope R): inverse CDF, truncated bright at R = 17
    u = rng.uniform(10.0 ** (slope * (17.0 - rmax)), 1.0, n)
    rmag = rmax + np.log10(u) / slope
    band = rng.integers(0, 5, n)
    pop = new_population(n, rng, box, sky, **{"class": "moving_object", "subclass": "asteroid"})
    pop["moving_band"] = np.array(BANDS, dtype=object)[band]
    flux = _zero_flux(n)
    bmag = rmag + 0.19 + np.array([SOLAR_DMAG[b] for b in BANDS])[band] + rng.normal(0.0, 0.05, n)
    flux[np.arange(n), band] = mag_to_flux(bmag)  # Galactic extinction negligible next to this
    pop["flux_true"] = flux
    rate = rng.uniform(15.0, 45.0, n)  # arcsec per hour
    pop["trail_length"] = rate * np.array([EXPTIME[b] for b in BANDS])[band] / 3600.0
    pop["pa"] = rng.uniform(0.0, 180.0, n)
    pop["ebv"] = np.zeros(n)
    return pop


def draw_cosmic_rays(rng: np.random.Generator, box: SkyBox, sky: SkyConfig) -> Population:
    """Cosmic rays left in the coadd: one band, image FWHM 0.2–0.45″ (sharper than any PSF),
    magnitudes with dN/dm ∝ 10^(0.25 m) over 20–26."""
    n = rng.poisson(40.0 * box.area_deg2)
    u = rng.uniform(10.0 ** (0.25 * (20.0 - 26.0)), 1.0, n)
    mag = 26.0 + np.log10(u) / 0.25
    band = rng.integers(0, 5, n)
    pop = new_population(n, rng, box, sky, **{"class": "artefact", "subclass": "cosmic_ray",
                                               "artefact_kind": "cosmic_ray"})
    pop["artefact_band"] = np.array(BANDS, dtype=object)[band]
    flux = _zero_flux(n)
    flux[np.arange(n), band] = mag_to_flux(mag)
    pop["flux_true"] = flux
    pop["image_fwhm"] = rng.uniform(0.2, 0.45, n)
    pop["ebv"] = np.zeros(n)
    return pop


def draw_chip_edges(rng: np.random.Generator, box: SkyBox, sky: SkyConfig) -> Population:
    """Spurious detections on CCD edges: spurious flux (AB 21–25) in 1–3 adjacent bands."""
    n = rng.poisson(15.0 * box.area_deg2)
    first = rng.integers(0, 5, n)
    nb = rng.integers(1, 4, n)
    pop = new_population(n, rng, box, sky, **{"class": "artefact", "subclass": "chip_edge",
                                               "artefact_kind": "chip_edge"})
    flux = _zero_flux(n)
    bands = []
    for k in range(n):
        sel = [b for b in range(first[k], min(first[k] + nb[k], 5))]
        flux[k, sel] = mag_to_flux(rng.uniform(21.0, 25.0, len(sel)))
        bands.append("".join(BANDS[b] for b in sel))
    pop["artefact_band"] = np.array(bands, dtype=object)
    pop["flux_true"] = flux
    pop["hlr"] = rng.uniform(0.3, 1.5, n)
    pop["axis_ratio"] = rng.uniform(0.1, 0.5, n)
    pop["pa"] = rng.choice([0.0, 90.0], n)
    pop["ebv"] = np.zeros(n)
    return pop


def saturated_bands(flux_true: np.ndarray) -> np.ndarray:
    """(n, 5) bool: the object's centre saturates in a Wide exposure."""
    lim = mag_to_flux(np.array([SAT_MAG[b] for b in BANDS]))
    return flux_true[:, :5] > lim[None, :]


def draw_bleed_trails(rng: np.random.Generator, stars: Population, sky: SkyConfig, box: SkyBox) -> Population:
    """Spurious detections along the bleed trails (CCD columns ≈ north–south) of saturated stars,
    in the bands where the star saturates."""
    sat = saturated_bands(stars["flux_true"])
    idx = np.flatnonzero(sat.any(axis=1))
    excess = -2.5 * np.log10(mag_to_flux(SAT_MAG["i"]) / np.maximum(stars["flux_true"][idx, 2], 1e-3))
    counts = np.minimum(rng.poisson(0.5 + 0.7 * np.clip(excess, 0.0, None)), 4)
    parent = np.repeat(idx, counts)
    n = parent.size
    pop = new_population(n, rng, box, sky, **{"class": "artefact", "subclass": "saturated_star",
                                               "artefact_kind": "bleed_trail"})
    off = rng.uniform(3.0, 30.0, n) * (1.0 + np.clip(np.repeat(excess, counts), 0, 5)) * rng.choice([-1.0, 1.0], n)
    pop["dec"] = np.clip(stars["dec"][parent] + off / 3600.0, box.dec_min, box.dec_max)
    pop["ra"] = stars["ra"][parent] + rng.normal(0.0, 0.3, n) / 3600.0
    pop["ra"] = np.clip(pop["ra"], box.ra_min, box.ra_max)
    flux = _zero_flux(n)
    psat = sat[parent]
    flux[:, :5] = np.where(psat, mag_to_flux(rng.uniform(18.0, 22.5, (n, 5))), 0.0)
    pop["flux_true"] = flux
    pop["artefact_band"] = np.array(["".join(b for b, s in zip(BANDS, row) if s) for row in psat], dtype=object)
    pop["hlr"] = rng.uniform(0.5, 2.0, n)
    pop["axis_ratio"] = rng.uniform(0.05, 0.2, n)
    pop["pa"] = np.zeros(n)
    pop["ebv"] = np.zeros(n)
    return pop

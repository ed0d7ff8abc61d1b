"""Astrophysical populations of the mock sky: who is where, how bright, with which SED.

Each ``draw_*`` function returns a ``Population`` (dict of equal-length arrays; see ``new_population``)
with *noiseless* fluxes ``flux_true`` (n, 7) in nJy for g r i z y J Ks, Galactic extinction
already applied (what reaches the telescope).  Only objects that could plausibly be detected
are drawn (brightest band within ~1 mag of its 5σ depth): fainter ones cannot enter a
detection-based catalogue, and skipping them keeps a shard fast.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..contracts import mag_to_flux
from .config import SkyBox, SkyConfig
from .grids import (brown_dwarf_table, galaxy_grid, interp_grid, lbg_grid, m_dwarf_colours, quasar_grid,
                    blackbody_grid, LBG_BETA, LBG_LYA_EW)
from .photometry import ALL_BANDS
from .seds import GALAXY_DUST_LEVELS, GALAXY_YOUNG_FRACTIONS

Population = dict[str, np.ndarray]

#: SFD E(B-V) -> true E(B-V) for the F99 law (Schlafly & Finkbeiner 2011): the truth and
#: catalogue carry SFD-scale E(B-V), as HSC's a_<b> do.
SFD_TO_TRUE = 0.86
#: Detection margin [mag] beyond the 5σ depth for drawing objects (noise, seeing and input
#: count can push a fainter object over the threshold; 1 mag fainter is S/N ≈ 2).
DRAW_MARGIN = 1.0
HIGHZ_MIN = 5.6
DEG2_PER_SR = (180.0 / np.pi) ** 2

_DEFAULTS: dict[str, object] = {
    "class": "", "subclass": "", "redshift": np.nan, "spectral_type": "", "hlr": 0.0, "axis_ratio": 1.0,
    "pa": 0.0, "sersic_n": np.nan, "moving_band": "", "trail_length": 0.0, "artefact_kind": "",
    "artefact_band": "", "m_abs_1450": np.nan, "enrichment_weight": 1.0, "distance_pc": np.nan,
    "teff": np.nan, "qso_dalpha": np.nan, "young_fraction": np.nan, "dust_ebv": np.nan,
    "uv_beta": np.nan, "lya_ew": np.nan, "image_fwhm": np.nan,
}


def new_population(n: int, rng: np.random.Generator, box: SkyBox, sky: SkyConfig, **cols) -> Population:
    """A population of *n* objects uniform in *box* with per-object Galactic E(B-V) (lognormal,
    σ_ln = 0.25 around ``sky.ebv_median``) and default values for every truth column."""
    pop: Population = {}
    pop["ra"] = rng.uniform(box.ra_min, box.ra_max, n)
    s0, s1 = np.sin(np.radians([box.dec_min, box.dec_max]))
    pop["dec"] = np.degrees(np.arcsin(rng.uniform(s0, s1, n)))
    pop["ebv"] = sky.ebv_median * np.exp(rng.normal(0.0, 0.25, n))
    for key, val in _DEFAULTS.items():
        pop[key] = np.full(n, val, dtype=object if isinstance(val, str) else float)
    for key, val in cols.items():
        arr = np.asarray(val)
        pop[key] = np.full(n, val, dtype=object) if arr.ndim == 0 and isinstance(val, str) else np.broadcast_to(arr, (n,) + arr.shape[1:]).copy()
    return pop


def _extinguish(mag: np.ndarray, kext: np.ndarray, ebv: np.ndarray) -> np.ndarray:
    """Noiseless observed fluxes [nJy] of intrinsic AB magnitudes behind E(B-V)_SFD = *ebv*."""
    return mag_to_flux(mag + kext * (SFD_TO_TRUE * ebv)[:, None])


def _depth_array(sky: SkyConfig) -> np.ndarray:
    return np.array([sky.depth_5sigma[b] for b in ("g", "r", "i", "z", "y")])


def _sample_cells(rng: np.random.Generator, expected: np.ndarray) -> np.ndarray:
    """Poisson total over a grid of expected counts, then cells by their weights (flat indices)."""
    total = float(expected.sum())
    n = rng.poisson(total) if total > 0 else 0
    if n == 0:
        return np.zeros(0, int)
    p = expected.ravel() / total
    return rng.choice(p.size, size=n, p=p)


# --------------------------------------------------------------------------- cosmology
@lru_cache(maxsize=None)
def _cosmo_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z, distance modulus, comoving volume per unit z per deg² [Mpc³] for flat ΛCDM
    (H0 = 70, Ωm = 0.3, as used by Matsuoka et al. 2018)."""
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70.0, Om0=0.3)
    z = np.linspace(0.01, 8.0, 800)
    dm = cosmo.distmod(z).value
    dv = cosmo.differential_comoving_volume(z).value / DEG2_PER_SR
    return z, dm, dv


def qso_lf(m1450: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Quasar luminosity function Φ(M_1450, z) [Mpc⁻³ mag⁻¹], double power law.

    z >= 5: Matsuoka et al. 2018 (ApJ 869, 150): Φ* = 10.9e-9, M* = -24.90, α = -1.23 (faint),
    β = -2.73 (bright), density evolution 10^(k (z-6)) with k = -0.7.
    z < 5: Palanque-Delabrouille et al. 2016 (A&A 587, A41) PLE+LEDE form (z_p = 2.2,
    log Φ* = -5.93, M*_g(z=2) = -26.57, α = -3.89 bright, β = -1.47 faint; PLE k1 = -0.08,
    k2 = -0.40 below z_p; above z_p log Φ* falls by 0.45 per unit z), converted with
    M_1450 ≈ M_g(z=2) + 1.24 (Ross et al. 2013 M_i(z=2) = M_1450 - 1.486, g - i ≈ 0.25).
    Approximate: calibrated to the SCIENCE.md densities at z > 5.7, ~30 % elsewhere.
    """
    m, z = np.broadcast_arrays(np.asarray(m1450, float), np.asarray(z, float))
    hi = z >= 5.0
    phi_s = np.where(hi, 10.9e-9 * 10.0 ** (-0.7 * (z - 6.0)), 0.0)
    m_s = np.where(hi, -24.90, 0.0)
    a_faint = np.where(hi, -1.23, -1.47)
    b_bright = np.where(hi, -2.73, -3.89)
    dz = z - 2.2
    lo_phi = 10.0 ** (-5.93 + np.where(dz > 0, -0.45 * dz, 0.0))
    lo_m = -26.57 + 1.24 - 2.5 * np.where(dz < 0, -0.08 * dz - 0.40 * dz**2, 0.0)
    phi_s = np.where(hi, phi_s, lo_phi)
    m_s = np.where(hi, m_s, lo_m)
    x = m - m_s
    return phi_s / (10.0 ** (0.4 * (a_faint + 1) * x) + 10.0 ** (0.4 * (b_bright + 1) * x))


def _lf_objects(rng: np.random.Generator, grid_z: np.ndarray, dmag_ref: np.ndarray, phi, area: float,
                sky: SkyConfig, zmin: float, zmax: float, m_bright: float, m_faint: float,
                weight_fn=None) -> tuple[np.ndarray, np.ndarray]:
    """Draw (z, M_1450) from a luminosity function *phi* over a box of *area* deg², keeping only
    cells whose brightest HSC band is within DRAW_MARGIN of the depth.  *dmag_ref* (n_z, 7) is the
    m_b - m_1450 track on *grid_z*; *weight_fn(z)* multiplies the density (enrichment)."""
    dz, dmm = 0.01, 0.02
    zc = np.arange(zmin + dz / 2, zmax, dz)
    mc = np.arange(m_bright + dmm / 2, m_faint, dmm)
    cz, dm, dv = _cosmo_grid()
    dmod = np.interp(zc, cz, dm) - 2.5 * np.log10(1.0 + zc)
    dvol = np.interp(zc, cz, dv)
    dmag = np.array([np.interp(zc, grid_z, dmag_ref[:, b]) for b in range(5)]).T
    m_lim = np.max(_depth_array(sky)[None, :] + DRAW_MARGIN - dmag, axis=1) - dmod  # faintest useful M
    phi_v = phi(mc[None, :], zc[:, None])
    expected = phi_v * (dvol * dz * dmm * area)[:, None] * (mc[None, :] < m_lim[:, None])
    if weight_fn is not None:
        expected = expected * weight_fn(zc)[:, None]
    idx = _sample_cells(rng, expected)
    iz, im = np.unravel_index(idx, expected.shape)
    z = zc[iz] + rng.uniform(-dz / 2, dz / 2, idx.size)
    m = mc[im] + rng.uniform(-dmm / 2, dmm / 2, idx.size)
    return z, m


def _distmod_obs(z: np.ndarray) -> np.ndarray:
    cz, dm, _ = _cosmo_grid()
    return np.interp(z, cz, dm) - 2.5 * np.log10(1.0 + z)


# --------------------------------------------------------------------------- quasars
def draw_quasars(rng: np.random.Generator, box: SkyBox, sky: SkyConfig, zmin: float = 0.3,
                 zmax: float = 7.5) -> Population:
    """Quasars from ``qso_lf`` with Vanden Berk + Glikman composite colours (slope scatter
    σ_alpha = 0.3) and Inoue et al. 2014 IGM; z > 5.6 densities × ``sky.enrichment``.
    M_1450 <= -20.5 (fainter AGN are host dominated and simulated as galaxies)."""
    g = quasar_grid()
    ref = g.dmag[:, g.param.size // 2, :]
    enrich = lambda zz: np.where(zz > HIGHZ_MIN, sky.enrichment, 1.0)  # noqa: E731
    z, m_abs = _lf_objects(rng, g.z, ref, qso_lf, box.area_deg2, sky, zmin, zmax, -31.0, -20.5, enrich)
    n = z.size
    dalpha = np.clip(rng.normal(0.0, 0.3, n), -0.9, 0.9)
    dmag, kext = interp_grid(g, z, param_value=dalpha)
    m1450 = m_abs + _distmod_obs(z)
    pop = new_population(n, rng, box, sky, **{"class": "quasar"})
    pop["subclass"] = np.where(z > HIGHZ_MIN, "highz", "lowz").astype(object)
    pop["redshift"], pop["m_abs_1450"], pop["qso_dalpha"] = z, m_abs, dalpha
    pop["enrichment_weight"] = np.where(z > HIGHZ_MIN, 1.0 / sky.enrichment, 1.0)
    pop["flux_true"] = _extinguish(m1450[:, None] + dmag, kext, pop["ebv"])
    return pop


def lbg_lf(m1450: np.ndarray, z: np.ndarray) -> np.ndarray:
    """z~6 Lyman-break galaxies at 0.2 × the (real-sky) quasar LF at the same magnitude
    (SCIENCE.md, after Matsuoka et al. 2016/2018, who find such galaxies among i-dropouts)."""
    return 0.2 * qso_lf(m1450, z)


def draw_lbgs(rng: np.random.Generator, box: SkyBox, sky: SkyConfig) -> Population:
    """z = 5.5–6.9 star-forming galaxies: UV slope beta ∈ {-2.4, -2.0, -1.6}, Lyα EW ∈
    {-10, 0, 20, 50} Å, IGM; compact (r_e ≈ 0.15″, often marginally resolved)."""
    g = lbg_grid()
    ref = g.dmag[:, 5, :]  # beta = -2, EW = 20
    # As rare as the target quasars: enriched with them, so the demo sky keeps the ratio of SCIENCE.md.
    enrich = lambda zz: np.full_like(zz, sky.enrichment)  # noqa: E731
    z, m_abs = _lf_objects(rng, g.z, ref, lbg_lf, box.area_deg2, sky, 5.5, 6.9, -28.0, -19.0, weight_fn=enrich)
    n = z.size
    combo = rng.integers(0, g.param.size, n)
    dmag, kext = interp_grid(g, z, param_index=combo)
    pop = new_population(n, rng, box, sky, **{"class": "galaxy", "subclass": "lbg"})
    pop["redshift"], pop["m_abs_1450"] = z, m_abs
    pop["enrichment_weight"] = np.full(n, 1.0 / sky.enrichment)
    pop["uv_beta"] = np.array(LBG_BETA)[combo // len(LBG_LYA_EW)]
    pop["lya_ew"] = np.array(LBG_LYA_EW)[combo % len(LBG_LYA_EW)]
    pop["young_fraction"], pop["dust_ebv"], pop["sersic_n"] = np.ones(n), np.zeros(n), np.ones(n)
    pop["hlr"] = 0.15 * 10.0 ** rng.normal(0.0, 0.15, n)
    pop["axis_ratio"] = rng.uniform(0.4, 1.0, n)
    pop["pa"] = rng.uniform(0.0, 180.0, n)
    pop["flux_true"] = _extinguish((m_abs + _distmod_obs(z))[:, None] + dmag, kext, pop["ebv"])
    return pop


# --------------------------------------------------------------------------- galaxies
def _galaxy_counts_pdf(mag: np.ndarray) -> np.ndarray:
    """HSC-Wide-like i-band galaxy counts dN/dm [deg⁻² mag⁻¹]: slope 0.31 dex/mag faintward of
    i = 21 (normalised to ~1e5 deg⁻² at i < 25.5, Aihara et al. 2018 / HSC deep counts) and
    0.45 dex/mag brighter."""
    return np.where(mag >= 21.0, 10.0 ** (4.08 + 0.31 * (mag - 23.0)), 10.0 ** (3.46 + 0.45 * (mag - 21.0)))


def _sample_from_pdf(rng: np.random.Generator, x: np.ndarray, pdf: np.ndarray, n: int) -> np.ndarray:
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(x))])
    return np.interp(rng.uniform(0.0, cdf[-1], n), cdf, x)


def draw_galaxies(rng: np.random.Generator, box: SkyBox, sky: SkyConfig) -> Population:
    """Field galaxies to i = 27 from the count model, with a magnitude-dependent redshift
    distribution p(z|i) ∝ z² exp(-(z/z0)^1.5), median z ≈ 0.9·10^(0.1(i-24)); SED type and
    Calzetti dust drawn per redshift (more dust at z = 1–2: the red, dusty i-z contaminants);
    exponential/de Vaucouleurs sizes r_e ≈ 0.45″·10^(-0.09(i-22)) with 0.2 dex scatter."""
    mgrid = np.linspace(14.0, 27.0, 1301)
    pdf = _galaxy_counts_pdf(mgrid)
    n = rng.poisson(np.trapezoid(pdf, mgrid) * box.area_deg2)
    imag = _sample_from_pdf(rng, mgrid, pdf, n)
    # redshift: inverse CDF on a grid, per 0.1-mag bin of i
    zg = np.linspace(0.02, 5.4, 270)
    ibin = np.clip(((imag - 14.0) / 0.1).astype(int), 0, 129)
    zmed = 0.9 * 10.0 ** (0.1 * (14.05 + 0.1 * np.arange(130) - 24.0))
    z0 = zmed / 1.412  # median of z² exp(-(z/z0)^1.5) is 1.412 z0
    p = zg[None, :] ** 2 * np.exp(-((zg[None, :] / z0[:, None]) ** 1.5))
    cdf = np.cumsum(p, axis=1)
    cdf /= cdf[:, -1:]
    u = rng.uniform(0.0, 1.0, n)
    k = np.minimum(np.array([np.searchsorted(cdf[b], uu) for b, uu in zip(ibin, u)], int) if n < 1000
                   else _vec_search(cdf, ibin, u), zg.size - 1)
    z = np.clip(zg[k] + rng.uniform(-0.01, 0.01, n), 0.02, 5.4)
    # SED type: young fraction index, older mix at low z
    t_lo = np.array([0.20, 0.15, 0.20, 0.20, 0.15, 0.10])
    t_hi = np.array([0.05, 0.05, 0.15, 0.25, 0.30, 0.20])
    w = np.clip(z / 1.0, 0.0, 1.0)[:, None]
    ty = _choice_rows(rng, (1 - w) * t_lo + w * t_hi)
    d_base = np.array([0.25, 0.25, 0.25, 0.17, 0.05, 0.03])
    d_cosmicnoon = np.array([0.15, 0.20, 0.25, 0.20, 0.12, 0.08])
    d_passive = np.array([0.6, 0.4, 0.0, 0.0, 0.0, 0.0])
    noon = ((z > 0.9) & (z < 2.3))[:, None]
    dprob = np.where(noon, d_cosmicnoon, d_base)
    dprob = np.where((ty == 0)[:, None], d_passive, dprob)
    du = _choice_rows(rng, dprob)
    combo = ty * len(GALAXY_DUST_LEVELS) + du
    dmag, kext = interp_grid(galaxy_grid(), z, param_index=combo)
    pop = new_population(n, rng, box, sky, **{"class": "galaxy"})
    dust = np.array(GALAXY_DUST_LEVELS)[du]
    pop["subclass"] = np.where((dust >= 0.5) & (z > 0.9) & (z < 2.3), "red_dusty", "normal").astype(object)
    pop["redshift"], pop["young_fraction"], pop["dust_ebv"] = z, np.array(GALAXY_YOUNG_FRACTIONS)[ty], dust
    passive = ty <= 1
    pop["sersic_n"] = np.where(passive, 4.0, 1.0)
    pop["hlr"] = np.clip(0.45 * 10.0 ** (-0.09 * (imag - 22.0) + rng.normal(0.0, 0.2, n)), 0.05, 8.0)
    pop["axis_ratio"] = np.where(passive, rng.uniform(0.5, 1.0, n), rng.uniform(0.2, 1.0, n))
    pop["pa"] = rng.uniform(0.0, 180.0, n)
    pop["flux_true"] = _extinguish(imag[:, None] + dmag, kext, pop["ebv"])
    return pop


def _vec_search(cdf: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """searchsorted of u[k] in cdf[rows[k]] for all k, grouped by row (vectorised)."""
    out = np.empty(u.size, int)
    for r in np.unique(rows):
        sel = rows == r
        out[sel] = np.searchsorted(cdf[r], u[sel])
    return out


def _choice_rows(rng: np.random.Generator, prob: np.ndarray) -> np.ndarray:
    """One categorical draw per row of *prob* (rows need not be normalised)."""
    c = np.cumsum(prob, axis=1)
    u = rng.uniform(0.0, 1.0, prob.shape[0]) * c[:, -1]
    return np.minimum((c < u[:, None]).sum(axis=1), prob.shape[1] - 1)


# --------------------------------------------------------------------------- Galactic
@lru_cache(maxsize=64)
def galactic_latitude(ra: float, dec: float) -> float:
    from astropy.coordinates import SkyCoord

    return float(SkyCoord(ra=ra, dec=dec, unit="deg", frame="icrs").galactic.b.deg)


@lru_cache(maxsize=64)
def ecliptic_latitude(ra: float, dec: float) -> float:
    from astropy.coordinates import BarycentricTrueEcliptic, SkyCoord

    c = SkyCoord(ra=ra, dec=dec, unit="deg", frame="icrs")
    return float(c.transform_to(BarycentricTrueEcliptic(equinox="J2000")).lat.deg)


#: Space densities [pc⁻³ per subtype] of M7…T8 dwarfs.  Literature local values: M7–M9.5
#: ≈ 4.9e-3 in total (Cruz et al. 2007), L0–L9 ≈ 1.7e-3 (Cruz et al. 2007; Bardalez Gagliuffi
#: et al. 2019), T0–T5 ≈ 1e-3 and T6–T8 ≈ 1.3e-3 per subtype (Kirkpatrick et al. 2021).  The L and
#: early-T values here are raised (×2.5 and ×4) so that the counts to z_AB = 24 at high latitude
#: match SCIENCE.md (L ≈ 30 deg⁻², T ≈ 1–7 deg⁻², Barnett et al. 2016-like numbers); the excess
#: stands in for the thick-disk/halo ultracool dwarfs this single-disk model lacks.
BD_DENSITY = {**{t: 1.6e-3 for t in ("M7", "M8", "M9")},
              **{f"L{k}": 2.5 * (2.3e-4 if k < 5 else 1.1e-4) for k in range(10)},
              **{f"T{k}": 4.0 * 1.7e-4 for k in range(6)}, "T6": 1.3e-3, "T7": 1.3e-3, "T8": 1.3e-3}
#: Thin-disk exponential scale height for ultracool dwarfs [pc] (Ryan et al. 2005: 350 pc).
BD_SCALE_HEIGHT = 350.0


def draw_brown_dwarfs(rng: np.random.Generator, box: SkyBox, sky: SkyConfig) -> Population:
    """M7–T8 dwarfs in an exponential thin disk seen along the shard's line of sight:
    n(d) = ρ0 exp(-d |sin b| / h) in a cone, absolute magnitudes from ``brown_dwarf_table``
    (luminosity scatter from Best et al. 2018 rms, 0.05 mag colour scatter per band)."""
    tab = brown_dwarf_table()
    sinb = abs(np.sin(np.radians(galactic_latitude(*box.center))))
    omega = box.area_deg2 / DEG2_PER_SR
    depth = _depth_array(sky)
    parts = []
    for k, st in enumerate(tab.types):
        # farthest useful distance: brightest band reaches depth + margin even with +2σ luminosity
        mu_max = np.max(depth + DRAW_MARGIN - tab.absmag[k, :5]) + 2 * tab.absmag_rms[k]
        dmax = 10.0 ** (mu_max / 5.0 + 1.0)
        d = np.linspace(1.0, dmax, 2000)
        pdf = BD_DENSITY[st] * omega * d**2 * np.exp(-d * sinb / BD_SCALE_HEIGHT)
        n = rng.poisson(np.trapezoid(pdf, d))
        dist = _sample_from_pdf(rng, d, pdf, n)
        parts.append((k, dist))
    ks = np.concatenate([np.full(p[1].size, p[0]) for p in parts]).astype(int)
    dist = np.concatenate([p[1] for p in parts])
    n = ks.size
    mag = (tab.absmag[ks] + 5.0 * np.log10(dist / 10.0)[:, None] + (rng.normal(0, 1, n) * tab.absmag_rms[ks])[:, None]
           + rng.normal(0.0, 0.05, (n, 7)))
    pop = new_population(n, rng, box, sky, **{"class": "brown_dwarf"})
    types = np.array(tab.types, dtype=object)[ks]
    pop["spectral_type"] = types
    pop["subclass"] = np.array([t[0] for t in types], dtype=object)
    pop["distance_pc"] = dist
    pop["flux_true"] = _extinguish(mag, tab.kext[ks], pop["ebv"])
    return pop


def _star_counts_pdf(mag: np.ndarray, b_deg: float) -> np.ndarray:
    """Stellar i-band counts dN/dm [deg⁻² mag⁻¹]: a two-slope (disk-then-halo) power law in the
    spirit of Bahcall & Soneira 1980: ≈60 deg⁻² to i = 17.5 and ≈1.6e3 to i = 24 at |b| = 45°,
    scaling as |sin b|^-1.2 (clipped at |b| = 15°)."""
    scale = (np.sin(np.radians(45.0)) / max(abs(np.sin(np.radians(b_deg))), np.sin(np.radians(15.0)))) ** 1.2
    return scale * np.where(mag < 19.5, 10.0 ** (2.2 + 0.3 * (mag - 19.5)), 10.0 ** (2.2 + 0.12 * (mag - 19.5)))


_SPT_TEFF = ((7200.0, "F0"), (6500.0, "F5"), (5950.0, "G0"), (5600.0, "G5"), (5250.0, "K0"), (4450.0, "K5"), (3850.0, "M0"))


def _teff_to_spt(teff: np.ndarray) -> np.ndarray:
    """Approximate dwarf spectral type for Teff (Pecaut & Mamajek 2013 anchors)."""
    t = np.array([a for a, _ in _SPT_TEFF])[::-1]
    num = np.array([{"F": 0, "G": 10, "K": 20, "M": 30}[s[0]] + int(s[1:]) for _, s in _SPT_TEFF])[::-1]
    v = np.clip(np.round(np.interp(teff, t, num)), 0, 29).astype(int)
    return np.array([f"{'FGK'[x // 10]}{x % 10}" for x in v], dtype=object)


def draw_stars(rng: np.random.Generator, box: SkyBox, sky: SkyConfig) -> Population:
    """Main-sequence stars: 55 % F–K blackbodies (Teff 4200–6800 K), 45 % M0–M6 with Best et al.
    2018 colours; i-band counts from ``_star_counts_pdf`` at the shard's Galactic latitude."""
    b = galactic_latitude(*box.center)
    mgrid = np.linspace(12.0, 26.8, 1481)
    pdf = _star_counts_pdf(mgrid, b)
    n = rng.poisson(np.trapezoid(pdf, mgrid) * box.area_deg2)
    imag = _sample_from_pdf(rng, mgrid, pdf, n)
    is_m = rng.uniform(size=n) < 0.45
    teff = rng.uniform(4200.0, 6800.0, n)
    dm_bb, k_bb = interp_grid(blackbody_grid(), teff)
    mc = m_dwarf_colours()
    msub = _choice_rows(rng, np.tile([0.2, 0.2, 0.18, 0.16, 0.12, 0.08, 0.06], (n, 1)))
    k_m = interp_grid(blackbody_grid(), np.full(n, 3600.0))[1]
    dmag = np.where(is_m[:, None], mc.dmag[msub], dm_bb) + rng.normal(0.0, 0.03, (n, 7))
    kext = np.where(is_m[:, None], k_m, k_bb)
    pop = new_population(n, rng, box, sky, **{"class": "star", "subclass": "main_sequence"})
    pop["teff"] = np.where(is_m, np.nan, teff)
    pop["spectral_type"] = np.where(is_m, np.array(mc.types, dtype=object)[msub], _teff_to_spt(teff))
    pop["flux_true"] = _extinguish(imag[:, None] + dmag, kext, pop["ebv"])
    return pop


def concat(pops: list[Population]) -> Population:
    keys = pops[0].keys()
    return {k: np.concatenate([p[k] for p in pops]) for k in keys}


__all__ = ["ALL_BANDS", "Population", "concat", "draw_brown_dwarfs", "draw_galaxies", "draw_lbgs",
           "draw_quasars", "draw_stars", "ecliptic_latitude", "galactic_latitude", "new_population", "qso_lf"]

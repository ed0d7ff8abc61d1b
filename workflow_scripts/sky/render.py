"""The mock sky as images: HSC DAS-like coadd cutouts (grizy) and VHS tile-stack cutouts (J, Ks).

    imager = MockImager(catalog_df, truth_df, seed=20240715, sky=SkyConfig())
    cut = imager.hsc_cutout_at(ra, dec, "i", half_size_arcsec=4.0)   # cutout_format.HscCutout
    vcut = imager.vhs_cutout(object_id, "J")                          # VhsCutout or None

Model (see sky/profiles.py for the profiles, sky/pixelgrid.py for the grids):
- The sky is a fixed function on global pixel grids (HSC: 1° TAN cells at 0.168″; VHS: rotated,
  shifted 1.5° cells at 0.34″). Every catalogue object (overlap duplicates excepted: they are
  the same physical object) is a stamp on that grid; a cutout is the window around the pixel
  nearest the requested position, so any two requests of one window agree bit for bit.
- Units: HSC counts at zero point 27.0 AB; VHS ADU with MAGZPT/EXPTIME.
- Noise: per-pixel sky variance σ_pix² = (f_5σ/5)² / A_psf with A_psf = 1/Σp² the noise-equivalent
  area of the median-seeing PSF (so a PSF fit reproduces the survey 5σ depth), plus the source
  Poisson term model/gain; gain = HSC_NJY_PER_COUNT / 0.5 e⁻/count matches the catalogue's
  error model (sky/noise.py: σ² ∋ 0.5 nJy × f). Deviates are counter-based (seed, band, cell, pixel).
- Artefacts follow the catalogue's per-band pixel flags: chip edges (NO_DATA + NaN beyond a
  straight edge, EDGE along it, larger variance from the low input count), saturated stars (core
  clipped at the saturation level, N–S bleed trail, SAT|INTRP), cosmic rays (sharper than the
  PSF, CR bit where ``crcenter`` is set), ``bad`` (a BAD column segment), ``interpolatedcenter``
  (INTRP), plus rare random bad columns and DETECTED where the noiseless model exceeds 2σ_pix.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd
from astropy.io import fits
from scipy.spatial import cKDTree

from ..contracts import BANDS, mag_to_flux
from ..cutout_format import HSC_FILTERS, HSC_MASK_BITS, HSC_NJY_PER_COUNT, HscCutout, VhsCutout
from .config import SkyConfig
from .noise import NOMINAL_INPUTCOUNT
from .pixelgrid import HSC_GRID, VHS_GRID, GridSpec, Window, hash_normal, hash_uniform, name_key, window_at, window_normals
from .profiles import (KERNEL_RADIUS_FWHM, PixelFrame, Source, moffat_rtrunc, psf_effective_area, render_stamp,
                       sersic_rtrunc)
from .transients import SAT_MAG
from .vhs_footprint import VhsConfig, in_vhs_footprint

#: Catalogue Poisson term σ² = 0.5 nJy × flux (sky/noise.py) -> electrons per count.
HSC_GAIN = HSC_NJY_PER_COUNT / 0.5
#: Stamps stop where the object's surface brightness per pixel falls below this × σ_pix (invisible).
SB_FLOOR_SIGMA = 0.01
#: Objects reaching further than this [arcsec] are searched by brute force, the rest via a KD-tree.
REACH_SPLIT = 8.0
#: Chip-edge geometry [arcsec]: extent along the edge (±), depth of the no-data side.
EDGE_HALF_LENGTH = 8.0
EDGE_DEPTH = 6.0
#: Probability that a column of a 256-row block is bad (≈ 1 % of 49-px cutouts show one).
BAD_COLUMN_RATE = 1e-4
STAMP_CACHE_SIZE = 8000  # float32 stamps, typically 20-60 kB each
BIT = {k: np.int32(1 << v) for k, v in HSC_MASK_BITS.items()}
_FLAGS = ("edge", "crcenter", "saturatedcenter", "bad", "interpolatedcenter")


def _unit_vectors(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    a, d = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(d) * np.cos(a), np.cos(d) * np.sin(a), np.sin(d)])


def _chord(arcsec: float) -> float:
    return 2.0 * math.sin(math.radians(arcsec / 3600.0) / 2.0)


@dataclass
class _Objects:
    """Column arrays of the rendered objects (catalogue joined to truth by object_id)."""

    object_id: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    flux: dict  # band -> nJy (g..y, J, Ks)
    seeing: dict  # HSC band -> FWHM arcsec
    hlr: np.ndarray
    sersic_n: np.ndarray
    q: np.ndarray
    pa: np.ndarray
    trail: np.ndarray
    image_fwhm: np.ndarray
    kind: np.ndarray  # artefact_kind
    flags: dict  # flag -> (n, 5) bool
    inputcount: np.ndarray  # (n, 5)
    rendered: np.ndarray  # False for overlap re-detections of catalogued objects


def _load(catalog_df: pd.DataFrame, truth_df: pd.DataFrame) -> _Objects:
    t = truth_df.drop_duplicates("object_id").set_index("object_id")
    c = catalog_df.drop_duplicates("object_id").set_index("object_id")
    t = t.loc[c.index]  # catalogue order; KeyError if truth lacks a catalogued object
    f = lambda col: t[col].to_numpy(dtype=float)  # noqa: E731
    flags = {fl: np.column_stack([c[f"{b}_pixelflags_{fl}"].to_numpy(bool) for b in BANDS]) for fl in _FLAGS}
    return _Objects(
        object_id=c.index.to_numpy(np.int64), ra=c["ra"].to_numpy(float), dec=c["dec"].to_numpy(float),
        flux={b: np.nan_to_num(f(f"flux_true_{b}")) for b in (*BANDS, "J", "Ks")},
        seeing={b: f(f"seeing_{b}") for b in BANDS}, hlr=np.nan_to_num(f("half_light_radius_arcsec")),
        sersic_n=f("sersic_n"), q=np.nan_to_num(f("axis_ratio"), nan=1.0), pa=np.nan_to_num(f("position_angle_deg")),
        trail=np.nan_to_num(f("trail_length_arcsec")), image_fwhm=f("image_fwhm_arcsec"),
        kind=t["artefact_kind"].astype(str).to_numpy(), flags=flags,
        inputcount=np.column_stack([c[f"{b}_inputcount_value"].to_numpy(int) for b in BANDS]),
        rendered=t["duplicate_of"].to_numpy(np.int64) < 0)


class MockImager:
    """Renders cutouts of the mock sky consistent with the catalogue (see module docstring)."""

    def __init__(self, catalog_df: pd.DataFrame, truth_df: pd.DataFrame, seed: int = 20240715,
                 sky: SkyConfig | None = None, vhs: VhsConfig | None = None) -> None:
        self.seed = int(seed)
        self.sky = sky or SkyConfig()
        self.vhs = vhs or VhsConfig()
        self.obj = _load(catalog_df, truth_df)
        self._row = {int(i): k for k, i in enumerate(self.obj.object_id)}
        n = self.obj.object_id.size
        self._vhs_seeing = {b: self.vhs.seeing_fwhm[b] * np.exp(self.vhs.seeing_scatter_ln * hash_normal(
            name_key(self.seed, "vhs_seeing", b), self.obj.object_id)) for b in ("J", "Ks")}
        self._sigma_pix = {b: self._hsc_sigma_pix(b) for b in BANDS}
        self._sigma_vhs = {b: self._vhs_sigma_pix(b) for b in ("J", "Ks")}
        hsc_seeing = np.max([self.obj.seeing[b] for b in BANDS], axis=0)
        vhs_seeing = np.maximum(self._vhs_seeing["J"], self._vhs_seeing["Ks"])
        self._reach = {"hsc": np.maximum(self._reaches(hsc_seeing, BANDS), self._sat_trail_reach()),
                       "vhs": self._reaches(vhs_seeing, ("J", "Ks"))}
        self._edge_reach = np.where(self.obj.flags["edge"].any(axis=1), EDGE_HALF_LENGTH + EDGE_DEPTH + 3.0, 0.0)
        vec = _unit_vectors(self.obj.ra, self.obj.dec) if n else np.zeros((0, 3))
        self._tree = cKDTree(vec)
        self._vec = vec
        self._stamps: OrderedDict = OrderedDict()

    # ------------------------------------------------------------------ objects
    def _sb_floor(self, band: str, i) -> np.ndarray:
        """SB_FLOOR_SIGMA × σ_pix as a fraction of object i's flux per arcsec² (0 if no flux)."""
        if band in ("J", "Ks"):
            sig, scale = self._sigma_vhs[band] * self.vhs.njy_per_adu(band), VHS_GRID.scale_arcsec
        else:
            sig, scale = self._sigma_pix[band] * HSC_NJY_PER_COUNT, HSC_GRID.scale_arcsec
        f = self.obj.flux[band][i]
        with np.errstate(divide="ignore"):
            return np.where(f > 0, SB_FLOOR_SIGMA * sig / (np.where(f > 0, f, 1.0) * scale**2), 0.0)

    def _source(self, i: int, band: str) -> Source:
        """Shape of object *i* in *band* (PSF from truth seeing; VHS seeing drawn per object)."""
        o = self.obj
        fwhm = float(self._vhs_seeing[band][i]) if band in ("J", "Ks") else float(o.seeing[band][i])
        floor = float(self._sb_floor(band, i))
        if np.isfinite(o.image_fwhm[i]):  # cosmic ray: track of 0-3 px in a random direction
            u = hash_uniform(name_key(self.seed, "cr"), o.object_id[i], [0, 1])
            return Source("sharp", fwhm, pa_deg=180.0 * u[1], length=3.0 * u[0], sharp_fwhm=float(o.image_fwhm[i]))
        if o.trail[i] > 0:
            return Source("trail", fwhm, pa_deg=float(o.pa[i]), length=float(o.trail[i]), sb_floor=floor)
        if o.hlr[i] > 0:
            n = float(o.sersic_n[i]) if np.isfinite(o.sersic_n[i]) else 0.5  # artefact streaks: Gaussian
            return Source("sersic", fwhm, hlr=float(o.hlr[i]), n=n, q=float(o.q[i]), pa_deg=float(o.pa[i]),
                          sb_floor=floor)
        return Source("point", fwhm, sb_floor=floor)

    def _reaches(self, seeing: np.ndarray, bands) -> np.ndarray:
        """Upper bound of every object's stamp radius [arcsec] over *bands* (Source.reach_arcsec, vectorised)."""
        o = self.obj
        floors = np.array([self._sb_floor(b, np.arange(o.object_id.size)) for b in bands])
        floor = np.min(np.where(floors > 0, floors, np.inf), axis=0)  # the band drawn furthest out
        floor = np.where(np.isfinite(floor), floor, 0.0)
        q = np.clip(o.q, 0.02, 1.0)
        n = np.where(np.isfinite(o.sersic_n), o.sersic_n, 0.5)
        hlr = np.where(o.hlr > 0, o.hlr, 1.0)
        major = sersic_rtrunc(n, hlr, q, floor) / np.sqrt(q)
        psf = moffat_rtrunc(seeing, floor)
        kern = np.minimum(moffat_rtrunc(seeing, floor, 3.0), KERNEL_RADIUS_FWHM * seeing)
        reach = np.where(o.hlr > 0, major + kern, psf)
        reach = np.where(o.trail > 0, o.trail / 2 + psf, reach)
        reach = np.where(np.isfinite(o.image_fwhm), 0.168 * 2.5 + 4.0 * np.nan_to_num(o.image_fwhm) / 2.3548, reach)
        lit = np.any([o.flux[b] > 0 for b in bands], axis=0)
        return np.where(o.rendered & lit, reach + 0.5, 0.0)

    def _sat_bands(self, i: int) -> list[int]:
        """HSC band indices where object i is a saturated star (not a bleed-trail detection)."""
        o = self.obj
        if o.kind[i] == "bleed_trail" or not o.rendered[i]:
            return []
        return [k for k, b in enumerate(BANDS) if o.flags["saturatedcenter"][i, k]
                and o.flux[b][i] > mag_to_flux(SAT_MAG[b])]

    def _trail_half_length(self, i: int) -> float:
        """Bleed trails reach the bleed-trail detections of sky/transients.py: 30″ (1 + i-band excess)."""
        excess = SAT_MAG["i"] + 2.5 * np.log10(max(self.obj.flux["i"][i], 1e-3)) - 31.4
        return 30.0 * (1.0 + float(np.clip(excess, 0.0, 5.0)))

    def _sat_trail_reach(self) -> np.ndarray:
        out = np.zeros(self.obj.object_id.size)
        for i in np.flatnonzero(self.obj.flags["saturatedcenter"].any(axis=1)):
            if self._sat_bands(i):
                out[i] = self._trail_half_length(i)
        return out

    def _hsc_sigma_pix(self, band: str) -> float:
        """Per-pixel sky σ [counts] giving the survey 5σ PSF depth at median seeing."""
        f5 = float(mag_to_flux(self.sky.depth_5sigma[band]))
        area = psf_effective_area(self.sky.seeing_fwhm[band], _frame(HSC_GRID, 0.0))
        return f5 / 5.0 / math.sqrt(area) / HSC_NJY_PER_COUNT

    def _vhs_sigma_pix(self, band: str) -> float:
        f5 = float(mag_to_flux(self.vhs.depth_5sigma[band]))
        area = psf_effective_area(self.vhs.seeing_fwhm[band], _frame(VHS_GRID, 0.0))
        return f5 / 5.0 / math.sqrt(area) / self.vhs.njy_per_adu(band)

    # ------------------------------------------------------------------ public API
    def in_vhs_footprint(self, ra, dec):
        """True where the mock VHS has data (vectorised over arrays)."""
        return in_vhs_footprint(ra, dec, self.seed, self.vhs)

    def hsc_cutout(self, object_id: int, band: str, half_size_arcsec: float = 4.0, noise: bool = True) -> HscCutout:
        """hsc_cutout_at at the catalogue position of *object_id*."""
        i = self._row[int(object_id)]
        return self.hsc_cutout_at(float(self.obj.ra[i]), float(self.obj.dec[i]), band, half_size_arcsec, noise)

    def vhs_cutout(self, object_id: int, band: str, half_size_arcsec: float = 4.0,
                   noise: bool = True) -> VhsCutout | None:
        """vhs_cutout_at at the catalogue position of *object_id*."""
        i = self._row[int(object_id)]
        return self.vhs_cutout_at(float(self.obj.ra[i]), float(self.obj.dec[i]), band, half_size_arcsec, noise)

    def hsc_cutout_at(self, ra: float, dec: float, band: str, half_size_arcsec: float = 4.0,
                      noise: bool = True) -> HscCutout:
        """DAS-like coadd cutout (counts, zero point 27) of the window around (ra, dec).

        ``noise=False`` returns the noiseless model in IMAGE (same MASK and VARIANCE): for tests.
        """
        if band not in BANDS:
            raise ValueError(f"unknown HSC band {band!r}")
        win = window_at(HSC_GRID, ra, dec, half_size_arcsec)
        k = BANDS.index(band)
        cand = self._candidates(win, "hsc", ra, dec)
        model, placed = self._model(win, band, cand, "hsc", 1.0 / HSC_NJY_PER_COUNT)
        mask = np.zeros(model.shape, np.int32)
        sig2 = self._sigma_pix[band] ** 2
        var_sky = np.full(model.shape, sig2)
        self._saturate(win, band, k, cand, placed, model, mask)
        nodata = self._edges(win, k, cand, mask, var_sky)
        self._centre_flags(win, k, placed, mask)
        self._bad_columns(win, band, mask)
        mask |= np.where(_dilate(model >= 2.0 * math.sqrt(sig2)), BIT["DETECTED"], 0).astype(np.int32)
        var = var_sky + np.clip(model, 0.0, None) / HSC_GAIN
        image = model + np.sqrt(var) * window_normals(self.seed, band, win) if noise else model.copy()
        image[nodata] = np.nan
        var[nodata] = np.inf
        mask[nodata] |= BIT["NO_DATA"]
        header = fits.Header()
        header["FILTER"] = HSC_FILTERS[band]
        header["BGMEAN"] = 0.0
        header["BGVAR"] = float(sig2)
        return HscCutout(image=image.astype(np.float32), mask=mask, variance=var.astype(np.float32), wcs=win.wcs,
                         band=band, mask_bits=dict(HSC_MASK_BITS), header=header)

    def vhs_cutout_at(self, ra: float, dec: float, band: str, half_size_arcsec: float = 4.0,
                      noise: bool = True) -> VhsCutout | None:
        """VSA-like tile-stack cutout (ADU) on the rotated VHS grid; None outside the footprint."""
        if band not in ("J", "Ks"):
            raise ValueError(f"unknown VHS band {band!r}")
        if not self.in_vhs_footprint(ra, dec):
            return None
        win = window_at(VHS_GRID, ra, dec, half_size_arcsec)
        cand = self._candidates(win, "vhs", ra, dec)
        model, _ = self._model(win, band, cand, "vhs", 1.0 / self.vhs.njy_per_adu(band))
        var = self._sigma_vhs[band] ** 2 + np.clip(model, 0.0, None) / self.vhs.gain_e_per_adu
        image = model + np.sqrt(var) * window_normals(self.seed, band, win) if noise else model.copy()
        ys, xs = np.mgrid[win.y0:win.y0 + win.n, win.x0:win.x0 + win.n]
        pra, pdec = win.cell.pixel_to_sky(xs, ys)
        image[~self.in_vhs_footprint(pra, pdec)] = np.nan
        return VhsCutout(image=image.astype(np.float32), wcs=win.wcs, band=band,
                         magzpt=float(self.vhs.magzpt[band]), exptime=float(self.vhs.exptime))

    # ------------------------------------------------------------------ rendering
    def _candidates(self, win: Window, survey: str, ra: float, dec: float) -> np.ndarray:
        """Indices (sorted) of objects whose stamps, trails or edges may touch the window."""
        half = (win.n / 2 + 1) * win.cell.scale_arcsec * math.sqrt(2.0)
        reach = np.maximum(self._reach[survey], self._edge_reach if survey == "hsc" else 0.0)
        centre = _unit_vectors(np.array([ra]), np.array([dec]))[0]
        near = np.array(self._tree.query_ball_point(centre, _chord(half + REACH_SPLIT)), dtype=np.int64)
        far = np.flatnonzero(reach > REACH_SPLIT)
        if far.size:
            d = np.linalg.norm(self._vec[far] - centre, axis=1)
            far = far[d <= 2.0 * np.sin(np.radians((half + reach[far]) / 3600.0) / 2.0)]
        idx = np.union1d(near, far).astype(np.int64)
        return idx[self.obj.rendered[idx]]

    def _stamp(self, i: int, band: str, win: Window, survey: str) -> tuple[int, int, np.ndarray]:
        key = (i, band, survey, win.cell.key)
        hit = self._stamps.get(key)
        if hit is not None:
            self._stamps.move_to_end(key)
            return hit
        x, y = win.cell.sky_to_pixel(self.obj.ra[i], self.obj.dec[i])
        x0, y0, stamp = render_stamp(self._source(i, band), float(x), float(y), _frame_of(win))
        hit = (x0, y0, stamp.astype(np.float32))
        self._stamps[key] = hit
        if len(self._stamps) > STAMP_CACHE_SIZE:
            self._stamps.popitem(last=False)
        return hit

    def _model(self, win: Window, band: str, cand: np.ndarray, survey: str, per_njy: float):
        """Noiseless model of the window and the objects placed in it: {i: (x0, y0, stamp × flux)}."""
        model = np.zeros((win.n, win.n))
        placed: dict[int, tuple[int, int, np.ndarray]] = {}
        for i in cand:
            flux = self.obj.flux[band][i] * per_njy
            if flux <= 0:
                continue
            x0, y0, stamp = self._stamp(int(i), band, win, survey)
            sl = _overlap(win, x0, y0, stamp.shape[0])
            if sl is None:
                continue
            (wy, wx), (sy, sx) = sl
            model[wy, wx] += flux * stamp[sy, sx]
            placed[int(i)] = (x0, y0, flux * stamp)
        return model, placed

    def _saturate(self, win: Window, band: str, k: int, cand: np.ndarray, placed: dict, model: np.ndarray,
                  mask: np.ndarray) -> None:
        """Clip saturated stars at the saturation level; bleed trails along the N-S pixel columns."""
        o = self.obj
        level_njy = float(mag_to_flux(SAT_MAG[band]))
        for i in placed:
            if k in self._sat_bands(i):
                x0, y0, st = placed[i]
                level = level_njy / HSC_NJY_PER_COUNT * float((st / st.sum()).max())
                sl = _overlap(win, x0, y0, st.shape[0])
                (wy, wx), (sy, sx) = sl
                hot = st[sy, sx] >= level
                sub = model[wy, wx]
                sub[hot] = level
                mask[wy, wx] |= np.where(hot, BIT["SAT"] | BIT["INTRP"], 0).astype(np.int32)
            if o.kind[i] == "bleed_trail" and o.flags["saturatedcenter"][i, k]:
                self._mark_centre(win, i, mask, BIT["SAT"] | BIT["INTRP"], dy=(-1, 0, 1))
        for i in cand:
            if o.flags["saturatedcenter"][i, k] and k in self._sat_bands(int(i)):
                self._bleed_trail(win, band, int(i), model, mask)

    def _bleed_trail(self, win: Window, band: str, i: int, model: np.ndarray, mask: np.ndarray) -> None:
        o = self.obj
        x, y = win.cell.sky_to_pixel(o.ra[i], o.dec[i])
        half_len = self._trail_half_length(i) / win.cell.scale_arcsec
        xc, yc = int(np.rint(x)), float(y)
        excess = SAT_MAG[band] - (31.4 - 2.5 * math.log10(o.flux[band][i]))
        width = 1 if excess < 1.0 else 3
        level = float(mag_to_flux(SAT_MAG[band])) / HSC_NJY_PER_COUNT * 0.05  # ≈ peak pixel of a just-saturated star
        cols = np.arange(xc - width // 2, xc + width // 2 + 1) - win.x0
        rows = np.arange(win.n)
        dy = np.abs(rows + win.y0 - yc)
        on = dy <= half_len
        for c in cols[(cols >= 0) & (cols < win.n)]:
            val = level * (0.3 + 0.7 * (1.0 - dy[on] / half_len))
            model[rows[on], c] = np.maximum(model[rows[on], c], val)
            mask[rows[on], c] |= BIT["SAT"] | BIT["INTRP"]

    def _edge_geometry(self, i: int, k: int) -> tuple[float, float]:
        """(normal angle east of north pointing to the no-data side [deg], distance [arcsec])."""
        o = self.obj
        u = hash_uniform(name_key(self.seed, "edge", BANDS[k]), o.object_id[i], [0, 1, 2])
        if o.kind[i] == "chip_edge":  # the spurious streak lies along the edge
            return float(o.pa[i]) + 90.0 + 180.0 * (u[0] < 0.5), 0.2 + 0.3 * u[1]
        return 360.0 * u[0], 0.6 + 1.9 * u[1]

    def _edges(self, win: Window, k: int, cand: np.ndarray, mask: np.ndarray, var_sky: np.ndarray) -> np.ndarray:
        """Chip edges of flagged objects: NO_DATA beyond, EDGE along, low-input-count variance before."""
        nodata = np.zeros(mask.shape, bool)
        frame = _frame_of(win)
        o = self.obj
        for i in cand:
            if not o.flags["edge"][i, k]:
                continue
            x, y = win.cell.sky_to_pixel(o.ra[i], o.dec[i])
            ys, xs = np.mgrid[win.y0:win.y0 + win.n, win.x0:win.x0 + win.n]
            e, n = frame.to_sky(xs - x, ys - y)
            phi, d = self._edge_geometry(int(i), k)
            t = math.radians(phi)
            perp = e * math.sin(t) + n * math.cos(t)
            par = np.abs(e * math.cos(t) - n * math.sin(t))
            inside = par < EDGE_HALF_LENGTH
            beyond = inside & (perp > d) & (perp < d + EDGE_DEPTH)
            near = inside & (perp <= d) & (perp > d - 2.0 * frame.scale)
            before = inside & (perp <= d) & (perp > d - EDGE_DEPTH)
            nodata |= beyond
            mask[near] |= BIT["EDGE"]
            var_sky[before] *= NOMINAL_INPUTCOUNT[k] / max(int(o.inputcount[i, k]), 1)
        return nodata

    def _mark_centre(self, win: Window, i: int, mask: np.ndarray, bits, dx=(0,), dy=(0,)) -> None:
        x, y = win.cell.sky_to_pixel(self.obj.ra[i], self.obj.dec[i])
        for ddx in dx:
            for ddy in dy:
                cx, cy = int(np.rint(x)) - win.x0 + ddx, int(np.rint(y)) - win.y0 + ddy
                if 0 <= cx < win.n and 0 <= cy < win.n:
                    mask[cy, cx] |= bits

    def _centre_flags(self, win: Window, k: int, placed: dict, mask: np.ndarray) -> None:
        """CR / INTRP / BAD pixels where the catalogue's pixel flags say so."""
        o = self.obj
        for i in placed:
            f = {fl: bool(o.flags[fl][i, k]) for fl in ("crcenter", "interpolatedcenter", "bad")}
            if f["crcenter"]:
                if np.isfinite(o.image_fwhm[i]):  # the cosmic ray itself: its significant pixels
                    x0, y0, st = placed[i]
                    (wy, wx), (sy, sx) = _overlap(win, x0, y0, st.shape[0])
                    mask[wy, wx] |= np.where(st[sy, sx] >= 0.05 * st.max(), BIT["CR"], 0).astype(np.int32)
                else:
                    self._mark_centre(win, i, mask, BIT["CR"])
            if f["interpolatedcenter"]:
                self._mark_centre(win, i, mask, BIT["INTRP"])
            if f["bad"]:
                self._mark_centre(win, i, mask, BIT["BAD"], dy=tuple(range(-8, 9)))

    def _bad_columns(self, win: Window, band: str, mask: np.ndarray) -> None:
        """Rare bad column segments (256-row blocks), fixed on the grid."""
        xs = np.arange(win.x0, win.x0 + win.n)
        rows = np.arange(win.y0, win.y0 + win.n)
        blocks = np.unique(rows // 256)
        ci, cj = win.cell.key
        u = hash_uniform(name_key(self.seed, "badcol", band, ci, cj), xs[None, :], blocks[:, None])
        for b_i, blk in enumerate(blocks):
            for c in np.flatnonzero(u[b_i] < BAD_COLUMN_RATE):
                mask[rows // 256 == blk, c] |= BIT["BAD"]


def _frame(spec: GridSpec, rotation_deg: float) -> PixelFrame:
    t = math.radians(rotation_deg)
    return PixelFrame(spec.scale_arcsec, ((-math.cos(t), math.sin(t)), (math.sin(t), math.cos(t))))


def _frame_of(win: Window) -> PixelFrame:
    m = win.cell.matrix
    return PixelFrame(win.cell.scale_arcsec, ((m[0, 0], m[0, 1]), (m[1, 0], m[1, 1])))


def _overlap(win: Window, x0: int, y0: int, side: int):
    """Slices ((window rows, cols), (stamp rows, cols)) of a stamp's overlap with the window, or None."""
    ax0, ax1 = max(x0, win.x0), min(x0 + side, win.x0 + win.n)
    ay0, ay1 = max(y0, win.y0), min(y0 + side, win.y0 + win.n)
    if ax0 >= ax1 or ay0 >= ay1:
        return None
    return ((slice(ay0 - win.y0, ay1 - win.y0), slice(ax0 - win.x0, ax1 - win.x0)),
            (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0)))


def _dilate(m: np.ndarray) -> np.ndarray:
    """Grow a boolean map by one pixel (4-neighbours): detection footprints."""
    out = m.copy()
    out[1:, :] |= m[:-1, :]
    out[:-1, :] |= m[1:, :]
    out[:, 1:] |= m[:, :-1]
    out[:, :-1] |= m[:, 1:]
    return out

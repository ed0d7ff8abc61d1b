"""reproject_ir: flux conservation, astrometry, coverage and the shard npz (synthetic VHS/HSC cutouts)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from scipy.special import erf

from workflow_scripts.contracts import BANDS
from workflow_scripts.cutout_cache import write_manifest
from workflow_scripts.cutout_format import (HSC_MASK_BITS, HSC_PIXEL_SCALE_ARCSEC, VHS_PIXEL_SCALE_ARCSEC, HscCutout,
                                            VhsCutout, tan_wcs, write_hsc_cutout, write_vhs_cutout)
from workflow_scripts.reproject_ir import load_ir, main, reproject_shard, reproject_to_hsc

RA0, DEC0 = 150.0, 2.0
HSC_SHAPE = (49, 49)


def point_source(wcs, shape, ra, dec, flux, fwhm_arcsec, scale_arcsec) -> np.ndarray:
    """A circular Gaussian integrated over each pixel (erf), total *flux*, centred on (ra, dec)."""
    x0, y0 = wcs.world_to_pixel_values(ra, dec)
    s = fwhm_arcsec / 2.3548 / scale_arcsec * np.sqrt(2)
    ny, nx = shape
    ex = np.diff(erf((np.arange(nx + 1) - 0.5 - x0) / s)) / 2
    ey = np.diff(erf((np.arange(ny + 1) - 0.5 - y0) / s)) / 2
    return flux * np.outer(ey, ex)


def vhs_cut(band="J", shape=(41, 41), rotation=0.0, offset=(0.0, 0.0), flux_njy=1000.0, src=(RA0, DEC0)):
    w = tan_wcs(RA0, DEC0, shape, VHS_PIXEL_SCALE_ARCSEC, rotation, offset)
    cut = VhsCutout(image=np.zeros(shape, np.float32), wcs=w, band=band, magzpt=23.5, exptime=15.0)
    img = point_source(w, shape, *src, flux_njy, 0.9, VHS_PIXEL_SCALE_ARCSEC) / cut.njy_per_adu
    cut.image = img.astype(np.float32)
    return cut


def centroid_error_arcsec(flux, wcs, ra, dec) -> float:
    yy, xx = np.mgrid[: flux.shape[0], : flux.shape[1]]
    f = np.nan_to_num(flux)
    cx, cy = (f * xx).sum() / f.sum(), (f * yy).sum() / f.sum()
    tx, ty = wcs.world_to_pixel_values(ra, dec)
    return float(np.hypot(cx - tx, cy - ty) * HSC_PIXEL_SCALE_ARCSEC)


@pytest.mark.parametrize("rotation, offset", [(0.0, (0.0, 0.0)), (0.0, (0.31, -0.27)), (37.0, (0.42, 0.13))])
def test_flux_and_centroid_conserved(rotation, offset):
    src = (RA0 + 0.23 / 3600 / np.cos(np.deg2rad(DEC0)), DEC0 - 0.11 / 3600)  # off any pixel centre
    vhs = vhs_cut(rotation=rotation, offset=offset, src=src)
    hsc_wcs = tan_wcs(RA0, DEC0, HSC_SHAPE, HSC_PIXEL_SCALE_ARCSEC, 0.0, (0.2, -0.35))
    flux, cov = reproject_to_hsc(vhs, hsc_wcs, HSC_SHAPE)
    assert flux.dtype == np.float32 and flux.shape == HSC_SHAPE and cov.all()
    assert abs(np.nansum(flux) / 1000.0 - 1) < 0.01
    assert centroid_error_arcsec(flux, hsc_wcs, *src) < 0.05


def test_nan_partial_tile_and_outside_footprint_masked():
    vhs = vhs_cut(shape=(41, 41))
    vhs.image[:, :15] = np.nan  # a partial tile: the left part has no data
    hsc_wcs = tan_wcs(RA0, DEC0, HSC_SHAPE, HSC_PIXEL_SCALE_ARCSEC)
    flux, cov = reproject_to_hsc(vhs, hsc_wcs, HSC_SHAPE)
    # VHS columns < 15 lie west... map each HSC pixel centre to VHS pixels to know which must be masked
    yy, xx = np.mgrid[:49, :49]
    ra, dec = hsc_wcs.pixel_to_world_values(xx, yy)
    vx, _ = vhs.wcs.world_to_pixel_values(ra, dec)
    assert not cov[vx < 14.5 + 0.25].any()  # inside the NaN region (plus half an HSC pixel) -> masked
    assert cov[vx > 15.5].all()
    assert np.isnan(flux[~cov]).all() and np.isfinite(flux[cov]).all()

    small = vhs_cut(shape=(15, 15))  # 5.1" tile on an 8.2" grid: the rim is outside the footprint
    flux, cov = reproject_to_hsc(small, hsc_wcs, HSC_SHAPE)
    assert cov[24, 24] and not cov[0, 0] and not cov[24, 0] and 0.2 < cov.mean() < 0.5
    assert np.isnan(flux[~cov]).all()


def _write_hsc(tmp_path, oid, ra, dec, shape=HSC_SHAPE):
    w = tan_wcs(ra, dec, shape, HSC_PIXEL_SCALE_ARCSEC, 0.0, (0.3, -0.2))
    rows = []
    for b in BANDS:
        cut = HscCutout(image=np.zeros(shape, np.float32), mask=np.zeros(shape, np.int32),
                        variance=np.ones(shape, np.float32), wcs=w, band=b, mask_bits=dict(HSC_MASK_BITS),
                        header=fits.Header())
        p = tmp_path / "hsc" / f"{oid}_{b}.fits"
        write_hsc_cutout(cut, p)
        rows.append({"object_id": oid, "band": b, "path": str(p), "status": "ok", "reason": ""})
    return rows


def test_shard_npz_statuses_and_masks(tmp_path):
    objs = [(11, RA0, DEC0), (12, RA0 + 0.01, DEC0), (13, RA0 + 0.02, DEC0), (14, RA0 + 0.03, DEC0)]
    cand = pd.DataFrame(objs, columns=["object_id", "ra", "dec"])
    hsc_rows, vhs_rows = [], []
    for oid, ra, dec in objs[:3]:
        hsc_rows += _write_hsc(tmp_path, oid, ra, dec)
    hsc_rows += [{"object_id": 14, "band": b, "path": "", "status": "failed", "reason": "x"} for b in BANDS]
    for oid, ra, dec in objs:
        for band in ("J", "Ks"):
            if oid == 12 or (oid == 13 and band == "Ks"):
                vhs_rows.append({"object_id": oid, "band": band, "path": "", "status": "no_coverage",
                                 "reason": "outside VHS"})
                continue
            cut = vhs_cut(band=band, src=(ra, dec))
            cut.wcs.wcs.crval = [ra, dec]
            p = tmp_path / "vhs" / f"{oid}_{band}.fits"
            write_vhs_cutout(cut, p)
            vhs_rows.append({"object_id": oid, "band": band, "path": str(p), "status": "ok", "reason": ""})
    hm, vm = tmp_path / "hsc.parquet", tmp_path / "vhs.parquet"
    write_manifest(hsc_rows, hm)
    write_manifest(vhs_rows, vm)
    cand.to_parquet(tmp_path / "cand.parquet")
    out = tmp_path / "ir_on_hsc" / "s.npz"
    assert main(["--candidates", str(tmp_path / "cand.parquet"), "--hsc-manifest", str(hm),
                 "--vhs-manifest", str(vm), "--out", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["s.npz"]  # no temporaries left
    ir = load_ir(out)
    assert isinstance(ir.flux, np.memmap) and isinstance(ir.coverage, np.memmap)
    assert ir.flux.shape == (4, 2, 49, 49) and ir.flux.dtype == np.float32 and ir.bands == ("J", "Ks")
    assert list(ir.object_id) == [11, 12, 13, 14]
    assert ir.status.tolist() == [["ok", "ok"], ["no_coverage", "no_coverage"], ["ok", "no_coverage"],
                                  ["failed", "failed"]]
    assert ir.coverage[0].all() and abs(np.nansum(ir.flux[0, 0]) / 1000 - 1) < 0.01
    for k, j in ((1, 0), (1, 1), (2, 1), (3, 0), (3, 1)):
        assert not ir.coverage[k, j].any() and np.isnan(ir.flux[k, j]).all()
    # the object sits within half a pixel of the centre pixel of its HSC grid
    assert np.all(np.abs(ir.pixel_xy[:3] - 24) <= 0.5) and np.isnan(ir.pixel_xy[3]).all()
    np.testing.assert_array_equal(ir.hsc_shape, [[49, 49]] * 3 + [[0, 0]])


def test_empty_shard(tmp_path):
    empty = pd.DataFrame({"object_id": np.array([], np.int64), "ra": [], "dec": []})
    man = pd.DataFrame(columns=["object_id", "band", "path", "status", "reason"])
    reproject_shard(empty, man, man, tmp_path / "e.npz")
    ir = load_ir(tmp_path / "e.npz")
    assert ir.flux.shape[:2] == (0, 2) and ir.status.shape == (0, 2)

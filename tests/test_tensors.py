"""tensors (stage stack + meta) and the fast DAS reader, on synthetic cutouts written by cutout_format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from workflow_scripts import tensors
from workflow_scripts.contracts import BANDS
from workflow_scripts.cutout_cache import write_manifest
from workflow_scripts.cutout_format import (HSC_MASK_BITS, HSC_NJY_PER_COUNT, HSC_PIXEL_SCALE_ARCSEC, HscCutout,
                                            hsc_cutout_hdul, tan_wcs, write_hsc_cutout)
from workflow_scripts.fits_fast import TanWcs, parse_das, read_das, read_das_astropy
from workflow_scripts.reproject_ir import IrOnHsc
from workflow_scripts.tensors import (DEFAULT_MASK_PLANES, compute_meta, crop_hsc, odd_size, stack_shard, write_meta)

SHAPE = (49, 49)


def coded_image(shape=SHAPE) -> np.ndarray:
    """Each pixel's value encodes its (y, x) so a crop tells where it came from."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy * 1000 + xx).astype(np.float32)


def make_cutout(ra, dec, band, image=None, mask=None, rotation=0.0, offset=(0.0, 0.0), shape=SHAPE) -> HscCutout:
    return HscCutout(image=coded_image(shape) if image is None else image.astype(np.float32),
                     mask=np.zeros(shape, np.int32) if mask is None else mask, variance=np.ones(shape, np.float32),
                     wcs=tan_wcs(ra, dec, shape, HSC_PIXEL_SCALE_ARCSEC, rotation, offset), band=band,
                     mask_bits=dict(HSC_MASK_BITS), header=fits.Header())


def write_object(tmp_path, oid, ra, dec, images=None, masks=None, skip=(), offset=(0.0, 0.0)) -> list[dict]:
    rows = []
    for c, b in enumerate(BANDS):
        if b in skip:
            rows.append({"object_id": oid, "band": b, "path": "", "status": "no_coverage", "reason": "none"})
            continue
        img = None if images is None else images[c]
        msk = None if masks is None else masks[c]
        p = tmp_path / "hsc" / f"{oid}_{b}.fits"
        write_hsc_cutout(make_cutout(ra, dec, b, img, msk, offset=offset), p)
        rows.append({"object_id": oid, "band": b, "path": str(p), "status": "ok", "reason": ""})
    return rows


# ------------------------------------------------------------------ size rule and centring

def test_odd_size_rule():
    assert odd_size(6) == 35  # 35.71 -> nearest odd 35
    assert odd_size(8) == 47  # 47.62 -> 47
    assert odd_size(10) == 59  # 59.52 -> 59
    assert odd_size(36 * HSC_PIXEL_SCALE_ARCSEC) == 37  # exact tie goes up
    assert odd_size(35 * HSC_PIXEL_SCALE_ARCSEC) == 35
    assert all(odd_size(s) % 2 == 1 for s in np.linspace(0.2, 20, 200))
    with pytest.raises(ValueError):
        odd_size(0)


def test_crop_centres_object_for_random_subpixel_positions():
    rng = np.random.default_rng(3)
    n = odd_size(6)
    for _ in range(50):
        ra, dec = 30 + rng.uniform(0, 1), rng.uniform(-60, 60)
        # the object anywhere within the cutout (not only near the centre), at a random sub-pixel position
        off = tuple(rng.uniform(-12, 12, 2))
        das = parse_das(fits_bytes(make_cutout(ra, dec, "i", rotation=rng.uniform(0, 360), offset=off)))
        flux, mask = crop_hsc(das, ra, dec, n, 0)
        x, y = das.wcs.world_to_pixel(ra, dec)
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        assert abs(x - cx) <= 0.5 and abs(y - cy) <= 0.5
        h = n // 2
        assert flux[h, h] == pytest.approx((cy * 1000 + cx) * HSC_NJY_PER_COUNT, rel=1e-6)
        assert not mask[h, h]


def test_crop_window_outside_cutout_is_masked():
    das = parse_das(fits_bytes(make_cutout(150, 2, "i", offset=(-22.0, 0.0))))  # object near the left edge (x = 2)
    flux, mask = crop_hsc(das, 150, 2, 35, 0)
    x, _ = das.wcs.world_to_pixel(150, 2)
    outside = 17 - int(np.floor(x + 0.5))
    assert outside == 15
    assert mask[:, :outside].all() and (flux[:, :outside] == 0).all() and not mask[:, outside:].any()


# ------------------------------------------------------------------ fast reader

def fits_bytes(cut: HscCutout) -> bytes:
    import io

    buf = io.BytesIO()
    hsc_cutout_hdul(cut).writeto(buf)
    return buf.getvalue()


def test_tan_projection_matches_astropy():
    rng = np.random.default_rng(1)
    for ra0, dec0, rot in ((0.1, 0.0, 0.0), (359.95, -30.0, 37.0), (150.0, 2.0, 123.0), (45.0, 85.0, 10.0),
                           (210.0, -89.0, 250.0)):
        w = tan_wcs(ra0, dec0, SHAPE, HSC_PIXEL_SCALE_ARCSEC, rot, (3.3, -7.1))
        tan = TanWcs(crval=tuple(w.wcs.crval), crpix=tuple(w.wcs.crpix), cd=tuple(map(tuple, w.wcs.cd)))
        px = rng.uniform(-500, 550, (2, 400))  # out to ~1.5 arcmin from the reference pixel
        ra, dec = w.pixel_to_world_values(px[0], px[1])
        x, y = tan.world_to_pixel(ra, dec)
        ax, ay = w.world_to_pixel_values(ra, dec)
        assert np.max(np.abs(x - ax)) < 1e-6 and np.max(np.abs(y - ay)) < 1e-6


def test_fast_reader_equals_astropy(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.normal(0, 3, SHAPE).astype(np.float32)
    img[3, 4] = np.nan
    msk = rng.integers(0, 1 << 12, SHAPE).astype(np.int32)
    cut = make_cutout(213.7, -1.3, "z", img, msk, rotation=21.0, offset=(0.4, -0.3))
    cut.header["PSF_ID"] = 7
    path = tmp_path / "c.fits"
    write_hsc_cutout(cut, path)
    fast, ref = read_das(path), read_das_astropy(path)
    assert fast.fast and not ref.fast and fast.band == ref.band == "z"
    np.testing.assert_array_equal(fast.image, ref.image)
    np.testing.assert_array_equal(fast.mask, ref.mask)
    np.testing.assert_array_equal(fast.variance, ref.variance)
    assert fast.mask_bits == ref.mask_bits
    ra, dec = cut.wcs.pixel_to_world_values(rng.uniform(-5, 55, 100), rng.uniform(-5, 55, 100))
    fx, fy = fast.wcs.world_to_pixel(ra, dec)
    rx, ry = ref.wcs.world_to_pixel(ra, dec)
    assert np.max(np.abs(fx - rx)) < 1e-6 and np.max(np.abs(fy - ry)) < 1e-6


@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_fast_reader_falls_back_on_unusual_files(tmp_path):
    cut = make_cutout(10.0, 5.0, "r")
    hdul = hsc_cutout_hdul(cut)
    for h in hdul[1:]:  # a SIN projection: legal, but not what the fast path handles
        h.header["CTYPE1"], h.header["CTYPE2"] = "RA---SIN", "DEC--SIN"
    path = tmp_path / "sin.fits"
    hdul.writeto(path)
    das = read_das(path)
    assert not das.fast
    x, y = das.wcs.world_to_pixel(10.0, 5.0)
    ex, ey = WCS(hdul[1].header).world_to_pixel_values(10.0, 5.0)
    assert abs(x - ex) < 1e-9 and abs(y - ey) < 1e-9
    truncated = tmp_path / "t.fits"
    truncated.write_bytes(fits_bytes(cut)[:10000])
    from workflow_scripts.cutout_format import CutoutFormatError

    with pytest.raises(CutoutFormatError):
        read_das(truncated)


# ------------------------------------------------------------------ stack

def _stack_inputs(tmp_path, n_obj=4, rng=None):
    rng = rng or np.random.default_rng(0)
    rows, objs = [], []
    for k in range(n_obj):
        oid, ra, dec = 100 + k, 150 + 0.01 * k, 2.0
        images = [np.full(SHAPE, 10.0 * (c + 1), np.float32) for c in range(5)]  # channel c holds 10 (c + 1)
        masks = [np.zeros(SHAPE, np.int32) for _ in range(5)]
        rows += write_object(tmp_path, oid, ra, dec, images, masks, offset=tuple(rng.uniform(-0.5, 0.5, 2)))
        objs.append((oid, ra, dec))
    return pd.DataFrame(objs, columns=["object_id", "ra", "dec"]), rows


def test_stack_units_order_masks_and_memmaps(tmp_path):
    cand, rows = _stack_inputs(tmp_path, 3)
    # object 101: NaN in r, a saturated and a DETECTED pixel in i; object 102 lacks z
    obj1 = [np.full(SHAPE, 10.0 * (c + 1), np.float32) for c in range(5)]
    obj1[1][24, 24] = np.nan
    m1 = [np.zeros(SHAPE, np.int32) for _ in range(5)]
    m1[2][24, 25] = 1 << HSC_MASK_BITS["SAT"]
    m1[2][24, 23] = 1 << HSC_MASK_BITS["DETECTED"]
    m1[3][23, 24] = 1 << HSC_MASK_BITS["CR"]
    rows = [r for r in rows if r["object_id"] not in (101, 102)]
    rows += write_object(tmp_path, 101, 150.01, 2.0, obj1, m1)
    rows += write_object(tmp_path, 102, 150.02, 2.0, [np.full(SHAPE, 10.0 * (c + 1)) for c in range(5)],
                         skip=("z",))
    write_manifest(rows, tmp_path / "m.parquet")
    cand.to_parquet(tmp_path / "cand.parquet")
    prefix = tmp_path / "tensors" / "6arcsec" / "s1"
    assert tensors.main(["stack", "--scale", "6", "--candidates", str(tmp_path / "cand.parquet"),
                         "--hsc-manifest", str(tmp_path / "m.parquet"), "--out-prefix", str(prefix)]) == 0
    img = np.load(f"{prefix}.images.npy", mmap_mode="r")
    msk = np.load(f"{prefix}.mask.npy", mmap_mode="r")
    assert isinstance(img, np.memmap) and img.dtype == np.float32 and msk.dtype == bool
    assert img.shape == msk.shape == (3, 5, 35, 35)
    # channel order g r i z y, in nJy
    good = ~msk[0]
    for c in range(5):
        np.testing.assert_allclose(img[0, c][good[c]], 10.0 * (c + 1) * HSC_NJY_PER_COUNT, rtol=1e-6)
    assert not msk[0].any()
    # NaN -> masked and 0; SAT and CR masked; DETECTED not
    assert msk[1, 1, 17, 17] and img[1, 1, 17, 17] == 0 and msk[1, 1].sum() == 1
    assert msk[1, 2, 17, 18] and img[1, 2, 17, 18] == 0 and not msk[1, 2, 17, 16] and msk[1, 2].sum() == 1
    assert msk[1, 3, 16, 17] and msk[1, 3].sum() == 1
    # missing band -> the whole channel masked, zeros
    assert msk[2, 3].all() and (img[2, 3] == 0).all() and not msk[2, [0, 1, 2, 4]].any()
    assert np.isfinite(img).all()
    index = pd.read_parquet(f"{prefix}.index.parquet")
    assert list(index["object_id"]) == [100, 101, 102] and list(index["row"]) == [0, 1, 2]
    assert index.loc[2, "z_status"] == "no_coverage" and index.loc[2, "z_coverage"] == 0
    assert index.loc[1, "r_coverage"] == pytest.approx(1 - 1 / 35**2)
    assert sorted(p.name for p in prefix.parent.iterdir()) == ["s1.images.npy", "s1.index.parquet", "s1.mask.npy"]


def test_stack_appends_ir_channels(tmp_path):
    cand, rows = _stack_inputs(tmp_path, 2)
    manifest = pd.DataFrame(rows)
    H = W = 49
    flux = np.full((2, 2, H, W), 5.0, np.float32)
    cov = np.ones((2, 2, H, W), bool)
    flux[0, 1, :, :10] = np.nan  # Ks partly uncovered for the first object
    cov[0, 1, :, :10] = False
    flux[1, :] = np.nan
    cov[1, :] = False
    ir = IrOnHsc(object_id=cand["object_id"].to_numpy(), bands=("J", "Ks"), flux=flux, coverage=cov,
                 status=np.array([["ok", "ok"], ["no_coverage", "no_coverage"]]), reason=np.full((2, 2), ""),
                 pixel_xy=np.array([[24.2, 23.7], [24.0, 24.0]]), hsc_shape=np.full((2, 2), 49))
    res = stack_shard(cand, manifest, tmp_path / "t" / "s", 6, ir=ir)
    assert res.channels == ("g", "r", "i", "z", "y", "J", "Ks")
    img = np.load(tmp_path / "t" / "s.images.npy", mmap_mode="r")
    msk = np.load(tmp_path / "t" / "s.mask.npy", mmap_mode="r")
    assert img.shape == (2, 7, 35, 35)
    assert (img[0, 5] == 5.0).all() and not msk[0, 5].any()
    # crop starts at x = 24 - 17 = 7: columns 7, 8, 9 of the grid are uncovered -> first 3 crop columns
    assert msk[0, 6, :, :3].all() and not msk[0, 6, :, 3:].any() and (img[0, 6, :, :3] == 0).all()
    assert msk[1, 5:].all() and (img[1, 5:] == 0).all()
    assert res.index.loc[1, "Ks_status"] == "no_coverage" and res.index.loc[0, "J_coverage"] == 1.0


def test_atomic_write_leaves_nothing_after_failure(tmp_path, monkeypatch):
    cand, rows = _stack_inputs(tmp_path, 5)
    manifest = pd.DataFrame(rows)
    out = tmp_path / "t"
    stack_shard(cand, manifest, out / "s", 6)  # a good earlier result
    before = np.load(out / "s.images.npy").copy()
    calls = {"n": 0}
    real = tensors.crop_hsc

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] > 12:
            raise RuntimeError("disk on fire")
        return real(*a, **k)

    monkeypatch.setattr(tensors, "crop_hsc", flaky)
    with pytest.raises(RuntimeError):
        stack_shard(cand, manifest, out / "s", 6, chunk_rows=2)
    assert sorted(p.name for p in out.iterdir()) == ["s.images.npy", "s.index.parquet", "s.mask.npy"]
    np.testing.assert_array_equal(np.load(out / "s.images.npy"), before)
    with pytest.raises(RuntimeError):
        stack_shard(cand, manifest, out / "new", 6, chunk_rows=2)
    assert not any(p.name.startswith(("new", ".new")) for p in out.iterdir())


def test_empty_shard(tmp_path):
    cand = pd.DataFrame({"object_id": np.array([], np.int64), "ra": [], "dec": []})
    man = pd.DataFrame(columns=["object_id", "band", "path", "status", "reason"])
    res = stack_shard(cand, man, tmp_path / "e", 6)
    assert res.n_objects == 0 and np.load(tmp_path / "e.images.npy").shape == (0, 5, 35, 35)


# ------------------------------------------------------------------ meta

def test_meta_statistics_stream_over_shards(tmp_path):
    rng = np.random.default_rng(5)
    n = odd_size(6)
    paths, all_vals = [], [[] for _ in range(5)]
    for s, N in enumerate((40, 25)):
        img = np.empty((N, 5, n, n), np.float32)
        for c in range(5):
            img[:, c] = rng.normal(20.0 * c - 10, 5.0 + c, (N, n, n))
        img[:, :, 17, 17] += rng.lognormal(6, 1, (N, 5))  # bright sources: a heavy tail
        msk = rng.random(img.shape) < 0.1
        img[msk] = 1e6  # masked pixels must not count
        np.save(tmp_path / f"s{s}.images.npy", img)
        np.save(tmp_path / f"s{s}.mask.npy", msk)
        paths.append(str(tmp_path / f"s{s}.images.npy"))
        for c in range(5):
            all_vals[c].append(img[:, c][~msk[:, c]].astype(np.float64))
    write_meta(compute_meta(paths, 6, chunk_rows=7), tmp_path / "meta.json")
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["bands"] == list(BANDS) and meta["size_px"] == 35 and meta["n_objects"] == 65
    assert meta["size_arcsec"] == pytest.approx(35 * 0.168) and meta["pixel_scale_arcsec"] == 0.168
    for c, b in enumerate(BANDS):
        v = np.concatenate(all_vals[c])
        st = meta["stats"][b]
        med = np.median(v)
        mad = np.median(np.abs(v - med))
        assert st["n_pixels"] == v.size
        assert st["median"] == pytest.approx(med, abs=2e-3 * max(1, abs(med)))
        assert st["mad"] == pytest.approx(mad, rel=2e-3)
        assert st["sigma_mad"] == pytest.approx(1.4826 * mad, rel=2e-3)
        # percentiles: judged by rank (definitions differ by one order statistic, which is sparse in a tail)
        assert abs(np.mean(v <= st["p01"]) - 0.01) < 5e-5 and abs(np.mean(v <= st["p99_9"]) - 0.999) < 5e-5
        assert st["p01"] == pytest.approx(np.percentile(v, 1), rel=3e-3)
        assert st["max"] == pytest.approx(v.max()) and st["mean"] == pytest.approx(v.mean(), rel=1e-9)
        assert st["masked_fraction"] == pytest.approx(0.1, abs=0.01)


def test_meta_cli_and_default_mask_planes(tmp_path):
    assert set(DEFAULT_MASK_PLANES) == {"NO_DATA", "BAD", "SAT", "CR", "UNMASKEDNAN"}
    assert "DETECTED" not in DEFAULT_MASK_PLANES
    img = np.ones((2, 7, 35, 35), np.float32)
    np.save(tmp_path / "a.images.npy", img)
    np.save(tmp_path / "a.mask.npy", np.zeros(img.shape, bool))
    assert tensors.main(["meta", "--scale", "6", "--inputs", str(tmp_path / "a.images.npy"),
                         "--out", str(tmp_path / "meta.json")]) == 0
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["bands"][-2:] == ["J", "Ks"] and meta["stats"]["Ks"]["median"] == pytest.approx(1.0, rel=1e-3)

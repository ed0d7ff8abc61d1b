"""Stage `followup`: IAU designations, proposal exports, observatory target lists and finding charts."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import astropy.units as u  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from astropy.coordinates import SkyCoord  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from workflow_scripts import followup as fu  # noqa: E402
from workflow_scripts.contracts import BANDS  # noqa: E402
from workflow_scripts.cutout_cache import CutoutCache  # noqa: E402
from workflow_scripts.cutout_format import (HSC_NJY_PER_COUNT, HSC_MASK_BITS, HscCutout, VhsCutout,  # noqa: E402
                                            hsc_cutout_bytes, tan_wcs, vhs_cutout_bytes)


def hms(h, m, s):
    return 15.0 * (h + m / 60.0 + s / 3600.0)


def dms(sign, d, m, s):
    return sign * (d + m / 60.0 + s / 3600.0)


# ------------------------------------------------------------------------------------------------ IAU names

@pytest.mark.parametrize("ra, dec, expected", [
    # truncated, not rounded: 56.789 s -> 56.78, 45.67" -> 45.6
    (hms(12, 34, 56.789), dms(1, 1, 23, 45.67), "HSC J123456.78+012345.6"),
    # published designations (SDSS J1148+5251, Fan et al. 2003; ULAS J1342+0928, Banados et al. 2018);
    # digits exactly on the kept precision must not lose one unit to floating point
    (hms(11, 48, 16.64), dms(1, 52, 51, 50.3), "HSC J114816.64+525150.3"),
    (205.53375, 9.47739167, "HSC J134208.10+092838.6"),
    # negative declination near 0 keeps its sign
    (10.0, -0.00001, "HSC J004000.00-000000.0"),
    (10.0, dms(-1, 0, 0, 59.99), "HSC J004000.00-000059.9"),
    (10.0, 0.0, "HSC J004000.00+000000.0"),
    # RA near 24h truncates to 23:59:59.99, never 24:00:00.00; 360 wraps to 0
    (359.99999999, 0.5, "HSC J235959.99+003000.0"),
    (hms(23, 59, 59.999), -89.99999, "HSC J235959.99-895959.9"),
    (360.0, 0.5, "HSC J000000.00+003000.0"),
])
def test_iau_name(ra, dec, expected):
    assert fu.iau_name(ra, dec) == expected


def test_iau_name_prefix_and_sexagesimal_rounding():
    assert fu.iau_name(hms(12, 34, 56.789), 1.0, prefix="VHS").startswith("VHS J123456.78+010000.0")
    # target lists round (and carry): 59.996 s -> next minute, next hour
    assert fu.format_ra(hms(1, 59, 59.996)) == "02:00:00.00"
    assert fu.format_dec(dms(-1, 0, 59, 59.96)) == "-01:00:00.0"
    assert fu.format_ra(hms(23, 59, 59.999)) == "00:00:00.00"
    with pytest.raises(ValueError):
        fu.iau_name(10.0, 91.0)


# ------------------------------------------------------------------------------------------------ exports

def ranked_frame() -> pd.DataFrame:
    """Three ranked candidates: measured mags, g/r/i upper limits, colour limits, flags, a known neighbour."""
    rows = []
    for k, (ra, dec, score) in enumerate([(hms(9, 0, 1.23), 1.25, 0.9), (hms(9, 1, 0.0), -0.01, 0.7),
                                          (135.5, 1.5, 0.95)]):
        row = {"object_id": 42000 + k, "ra": ra, "dec": dec, "shard": "g09_a",
               "selection_branch": "i_dropout" if k != 1 else "z_dropout", "score": score}
        for b, m in zip(BANDS, (26.54, 26.70, 25.14, 23.54, 22.83)):
            lim = b in ("g", "r") or (k == 1 and b == "i")
            row[f"{b}_mag"], row[f"{b}_magerr"], row[f"{b}_mag_is_limit"] = m + 0.1 * k, np.nan if lim else 0.05, lim
        row.update(i_minus_z=1.6, i_minus_z_limit="lower" if k == 1 else "", z_minus_y=0.71,
                   z_minus_y_limit="none" if k == 2 else "", flag_bd_peninsula=k == 2, flag_moving=False,
                   flag_artefact=False, nearest_known_name="VIKING J0900+0115" if k == 0 else "",
                   nearest_known_label="quasar" if k == 0 else "")
        rows.append(row)
    df = pd.DataFrame(rows)
    df["rank"] = df["score"].rank(ascending=False).astype(int)
    return df


def test_followup_table_sorted_named_and_limited():
    t = fu.followup_table(ranked_frame(), top_n=2)
    assert list(t["rank"]) == [1, 2]
    assert t["name"].iloc[1] == "HSC J090001.23+011500.0"
    assert t["ra_hms"].iloc[1] == "09:00:01.23" and t["dec_dms"].iloc[1] == "+01:15:00.0"
    assert t["g_mag_is_limit"].all() and t["g_magerr"].isna().all() and not t["z_magerr"].isna().any()


def test_ecsv_votable_csv_round_trip(tmp_path):
    export = fu.followup_table(ranked_frame())
    paths = fu.write_exports(export, tmp_path, "candidates", meta={"run": "default"})
    assert [p.name for p in paths] == ["candidates.ecsv", "candidates.vot", "candidates.csv"]
    assert not list(tmp_path.glob(".*part"))  # no temporary files left

    for fmt, path in (("ascii.ecsv", paths[0]), ("votable", paths[1])):
        t = Table.read(path, format=fmt)
        assert len(t) == 3 and list(t["rank"]) == [1, 2, 3]
        assert t["ra"].unit == u.deg and t["dec"].unit == u.deg
        assert t["z_mag"].unit == u.mag and t["z_magerr"].unit == u.mag and t["i_minus_z"].unit == u.mag
        assert "upper limit" in t["g_mag"].description
        np.testing.assert_allclose(t["ra"], export["ra"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(t["g_mag"], export["g_mag"])
        assert t["g_mag_is_limit"].dtype == bool and list(t["g_mag_is_limit"]) == [True] * 3
        assert list(t["i_mag_is_limit"]) == [False, False, True]
        assert np.ma.getmaskarray(t["g_magerr"]).all()  # no error for an upper limit
        assert not np.ma.getmaskarray(t["z_magerr"]).any()
        assert [str(v) for v in t["name"]] == list(export["name"])
        assert [str(v) for v in t["i_minus_z_limit"]][2] == "lower"
        assert list(t["flag_bd_peninsula"]) == [True, False, False]
    ecsv = Table.read(paths[0], format="ascii.ecsv")
    assert ecsv.meta["frame"] == "ICRS" and ecsv.meta["run"] == "default" and "description" in ecsv.meta

    csv = pd.read_csv(paths[2], dtype=str, keep_default_na=False)
    assert csv["g_mag"].iloc[0] == "> 26.74" and csv["g_magerr"].iloc[0] == ""
    assert csv["z_mag"].iloc[0] == "23.74" and csv["z_magerr"].iloc[0] == "0.05"
    assert csv["i_mag"].iloc[2] == "> 25.24" and csv["i_mag_is_limit"].iloc[2] == "True"
    assert csv["i_minus_z"].iloc[2] == "> 1.60" and csv["i_minus_z"].iloc[1] == "1.60"
    assert csv["z_minus_y"].iloc[0] == ""  # colour unconstrained ("none")
    assert csv["nearest_known_name"].iloc[1] == "VIKING J0900+0115"
    assert csv["ra_hms"].iloc[1] == "09:00:01.23"


# ------------------------------------------------------------------------------------------------ target lists

def test_magellan_line_layout():
    line = fu.magellan_line(1, "HSC J123456.78+012345.6", hms(12, 34, 56.789), dms(1, 1, 23, 45.67))
    assert line == ("1 HSC_J123456.78+012345.6 12:34:56.79 +01:23:45.7 2000.0 0.00 0.00 0.0 EQU "
                    "00:00:00.00 +00:00:00.0 0.0 00:00:00.00 +00:00:00.0 0.0 2000.0")
    assert len(line.split()) == 16  # LCO: 16 fields
    neg = fu.magellan_line(12, "HSC J004000.00-000000.0", 10.0, -0.00001, rotator_angle=45.0, rotator_mode="GRV")
    assert neg.split()[:9] == ["12", "HSC_J004000.00-000000.0", "00:40:00.00", "-00:00:00.0", "2000.0", "0.00",
                               "0.00", "45.0", "GRV"]


def test_lbt_line_layout():
    assert fu.lbt_line("Q1", hms(12, 34, 56.789), dms(-1, 1, 23, 45.67)) == \
        "Q1                   12 34 56.79 -01 23 45.7 2000.0"
    assert fu.lbt_line("HSC J123456.78+012345.6", hms(12, 34, 56.789), dms(1, 1, 23, 45.67), comment="rank=1") == \
        "HSC_J123456.78+012345.6 12 34 56.79 +01 23 45.7 2000.0  # rank=1"


def test_target_list_files(tmp_path):
    export = fu.followup_table(ranked_frame())
    cat = fu.magellan_catalog(export).splitlines()
    assert cat[0].startswith("#") and len(cat) == 2 + 3
    assert cat[2].split()[:2] == ["1", fu._tcs_name(export["name"].iloc[0])]
    lbt = fu.lbt_starlist(export).splitlines()
    assert lbt[1].endswith("# rank=1 z=23.74 y=23.03") and "z=" in lbt[3]


# ------------------------------------------------------------------------------------------------ finding charts

SCALE = 0.168


def wcs_variant(kind: str, ra: float, dec: float, n: int) -> WCS:
    """Native cutout WCS of various orientations (the charts must come out north up / east left)."""
    if kind == "rotated":
        return tan_wcs(ra, dec, (n, n), SCALE, rotation_deg=30.0)
    w = tan_wcs(ra, dec, (n, n), SCALE)
    s = SCALE / 3600.0
    w.wcs.cd = {"standard": [[-s, 0], [0, s]], "east_right": [[s, 0], [0, s]], "north_down": [[-s, 0], [0, -s]],
                "swapped": [[0, -s], [s, 0]], "swapped_flipped": [[0, s], [s, 0]]}[kind]
    return w


def synthetic_image(wcs: WCS, n: int, sources: list[tuple[float, float, float]]) -> np.ndarray:
    """Gaussian stars (ra, dec, amplitude) on a flat background with a little noise."""
    yy, xx = np.mgrid[0:n, 0:n]
    img = np.random.default_rng(1).normal(0.0, 0.01, (n, n))
    for ra, dec, amp in sources:
        x, y = wcs.all_world2pix([[ra, dec]], 0)[0]
        img += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2))
    return img


@pytest.mark.parametrize("kind", ["standard", "east_right", "north_down", "swapped", "swapped_flipped", "rotated"])
def test_orientation_north_up_east_left(kind):
    ra, dec, n = 150.0, 2.0, 121
    w = wcs_variant(kind, ra, dec, n)
    ne = SkyCoord(ra * u.deg, dec * u.deg).spherical_offsets_by(4 * u.arcsec, 6 * u.arcsec)  # 4" E, 6" N
    img = synthetic_image(w, n, [(ra, dec, 0.3), (ne.ra.deg, ne.dec.deg, 1.0)])
    o = fu.orient_north_up(img, w, ra, dec)
    py, px = np.unravel_index(np.nanargmax(o.image), o.image.shape)
    tx, ty = o.target_xy
    assert px < tx - 3 / SCALE * 0.8 and py > ty + 5 / SCALE * 0.8  # upper left (east left, north up)
    assert o.north[1] > 0.99 and o.east[0] < -0.99
    assert o.pixel_scale_arcsec == pytest.approx(SCALE, rel=1e-4)
    assert o.resampled == (kind == "rotated")


def hsc_cut(ra, dec, band, n=357, sources=()):
    w = tan_wcs(ra, dec, (n, n), SCALE)
    img = synthetic_image(w, n, list(sources)).astype(np.float32)
    return HscCutout(img, np.zeros((n, n), np.int32), np.full((n, n), 1e-4, np.float32), w, band,
                     dict(HSC_MASK_BITS), fits.Header())


def test_finding_chart_png_pdf_scale_bar(tmp_path):
    ranked = ranked_frame()
    export = fu.followup_table(ranked)
    hsc = CutoutCache(tmp_path / "cache", "hsc", "test", "", 30.0)
    vhs = CutoutCache(tmp_path / "cache", "vhs", "test", "", 30.0)
    for _, row in export.iterrows():
        for band in ("z", "y"):
            hsc.put(row["object_id"], band, hsc_cutout_bytes(hsc_cut(row["ra"], row["dec"], band,
                                                                     sources=[(row["ra"], row["dec"], 1.0)])))
    # J only for the best one, on a rotated 0.34" grid
    best = export.iloc[0]
    wj = tan_wcs(best["ra"], best["dec"], (177, 177), 0.34, rotation_deg=20.0)
    vhs.put(best["object_id"], "J", vhs_cutout_bytes(VhsCutout(synthetic_image(wj, 177, [(best["ra"], best["dec"], 1.0)])
                                                               .astype(np.float32), wj, "J", 23.0, 10.0)))
    panels_of = fu.chart_panels_from_cache(hsc, vhs)
    assert [p.band for p in panels_of(best)] == ["z", "y", "J"]
    assert [p.band for p in panels_of(export.iloc[1])] == ["z", "y"]
    np.testing.assert_allclose(panels_of(best)[0].image.max(), 1.0 * HSC_NJY_PER_COUNT, rtol=0.1)

    fig, artists = fu.finding_chart(best, panels_of(best))
    for art, scale in zip(artists, (SCALE, SCALE, 0.34)):
        xs = art["scalebar"].get_xdata()
        assert xs[1] - xs[0] == pytest.approx(10.0 / scale, rel=1e-3)
        assert art["scalebar_px"] == pytest.approx(10.0 / scale, rel=1e-3)
    assert best["name"] in fig._suptitle.get_text() and "z=" in fig._suptitle.get_text()

    pngs = fu.write_charts(export, panels_of, tmp_path / "run", n_charts=2)
    assert [p.name for p in pngs] == [f"001_{fu.file_safe(best['name'])}.png",
                                      f"002_{fu.file_safe(export['name'].iloc[1])}.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    pdf = (tmp_path / "run" / "finding_charts.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page(?!s)", pdf)) == 2
    assert not list((tmp_path / "run").rglob(".*part"))

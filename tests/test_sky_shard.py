"""Contract, determinism and truth bookkeeping of simulated shards."""

import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from workflow_scripts.contracts import BANDS, CATALOG_COLUMNS, CATALOG_SCHEMA, TRUTH_REQUIRED_COLUMNS
from workflow_scripts.sky import SkyBox, SkyConfig, simulate_shard

BOX = SkyBox(ra_min=150.0, ra_max=151.0, dec_min=1.7, dec_max=2.7)  # ~1 deg², near the ecliptic
SMALL = SkyBox(ra_min=150.0, ra_max=150.2, dec_min=2.0, dec_max=2.2)


@pytest.fixture(scope="module")
def shard():
    return simulate_shard(BOX, shard_name="cosmos_test", seed=20240715, sky=SkyConfig())


def test_schema_and_dtypes(shard):
    cat, truth = shard
    assert tuple(cat.columns) == CATALOG_COLUMNS
    table = pa.Table.from_pandas(cat, schema=CATALOG_SCHEMA, preserve_index=False)
    assert table.schema.equals(CATALOG_SCHEMA)
    assert cat["object_id"].is_unique
    assert set(TRUTH_REQUIRED_COLUMNS) <= set(truth.columns)
    assert (truth["object_id"].to_numpy() == cat["object_id"].to_numpy()).all()
    assert np.allclose(truth["ra"], cat["ra"])
    assert set(truth["class"]) <= {"quasar", "brown_dwarf", "star", "galaxy", "moving_object", "artefact"}
    pa.Table.from_pandas(truth, preserve_index=False)  # truth is Arrow-writable


def test_rows_and_classes(shard):
    cat, truth = shard
    assert 50_000 < len(cat) < 250_000
    for cls in ("quasar", "brown_dwarf", "star", "galaxy", "moving_object", "artefact"):
        assert (truth["class"] == cls).sum() > 0, cls
    q = truth[truth["class"] == "quasar"]
    assert set(q["subclass"]) == {"highz", "lowz"}
    uv_bright = (truth["class"] == "quasar") | (truth["subclass"] == "lbg")  # both have an M_1450
    assert truth.loc[uv_bright, "m_abs_1450"].notna().all() and truth.loc[~uv_bright, "m_abs_1450"].isna().all()
    assert (truth["subclass"] == "lbg").sum() > 0  # enriched with the quasars
    bd = truth[truth["class"] == "brown_dwarf"]
    assert set(bd["subclass"]) <= {"M", "L", "T"} and bd["spectral_type"].str.match(r"^[MLT]\d$").all()
    assert (cat["isprimary"].mean() > 0.94) and (cat["isprimary"].mean() < 0.995)


def test_detection_threshold(shard):
    cat, _ = shard
    snr = np.column_stack([cat[f"{b}_psfflux_flux"] / cat[f"{b}_psfflux_fluxerr"] for b in BANDS])
    assert (np.nan_to_num(snr, nan=-1).max(axis=1) >= 5.0).all()


def test_moving_objects_in_one_band_only(shard):
    cat, truth = shard
    mo = truth[truth["class"] == "moving_object"]
    assert len(mo) > 20
    for b in BANDS:
        in_b = mo["moving_band"] == b
        assert (mo.loc[in_b, f"flux_true_{b}"] > 0).all()
        assert (mo.loc[~in_b, f"flux_true_{b}"] == 0).all()
    assert (mo["trail_length_arcsec"] > 0).all()
    assert (truth.loc[truth["class"] != "moving_object", "moving_band"] == "").all()


def test_artefact_flags(shard):
    cat, truth = shard
    cr = truth["artefact_kind"] == "cosmic_ray"
    flagged = [cat.loc[cr & (truth["artefact_band"] == b), f"{b}_pixelflags_crcenter"] for b in BANDS]
    frac = pd.concat(flagged).mean()
    assert 0.75 < frac < 0.99  # ~0.9: usually, not always flagged
    sat = truth["artefact_kind"] == "saturated_core"
    assert sat.sum() > 5
    assert cat.loc[sat, [f"{b}_pixelflags_saturatedcenter" for b in BANDS]].any(axis=1).all()
    edge = truth["artefact_kind"] == "chip_edge"
    assert cat.loc[edge, [f"{b}_pixelflags_edge" for b in BANDS]].any(axis=1).all()
    real = truth["class"] != "artefact"
    assert cat.loc[real, "i_pixelflags_crcenter"].mean() < 0.01


def test_truth_columns_for_rendering(shard):
    _, truth = shard
    for b in ("g", "r", "i", "z", "y", "J", "Ks"):
        assert f"flux_true_{b}" in truth
    for b in BANDS:
        s = truth[f"seeing_{b}"]
        assert s.between(0.3, 2.0).all()
    gal = truth["class"] == "galaxy"
    assert (truth.loc[gal, "half_light_radius_arcsec"] > 0).all()
    pts = truth["class"].isin(["quasar", "star", "brown_dwarf"])
    assert (truth.loc[pts, "half_light_radius_arcsec"] == 0).all()


def test_deterministic_and_shards_independent():
    a1, t1 = simulate_shard(SMALL, "s1", 7, SkyConfig())
    a2, t2 = simulate_shard(SMALL, "s1", 7, SkyConfig())
    pd.testing.assert_frame_equal(a1, a2)
    pd.testing.assert_frame_equal(t1, t2)
    b1, _ = simulate_shard(SMALL, "s2", 7, SkyConfig())
    assert set(a1["object_id"]).isdisjoint(b1["object_id"])
    assert len(a1) != len(b1) or not np.allclose(a1["ra"], b1["ra"])


def test_skyconfig_from_dict():
    sky = SkyConfig.from_dict({"enrichment": 1, "depth_5sigma": {"y": 24.0}})
    assert sky.enrichment == 1.0 and sky.depth_5sigma["y"] == 24.0 and sky.depth_5sigma["g"] == 26.5
    assert SkyConfig.from_dict({}) == SkyConfig()
    with pytest.raises(ValueError, match="bogus"):
        SkyConfig.from_dict({"bogus": 1})


def test_half_square_degree_is_fast():
    box = SkyBox(ra_min=150.0, ra_max=150.7, dec_min=1.8, dec_max=2.5)
    t = time.perf_counter()
    cat, _ = simulate_shard(box, "timing", 1, SkyConfig())
    assert time.perf_counter() - t < 20.0
    assert len(cat) < 120_000


def test_non_primary_rows_are_overlap_duplicates_of_catalogued_objects(shard):
    cat, truth = shard
    merged = cat[["object_id", "isprimary", "ra", "dec"]].merge(truth[["object_id", "duplicate_of", "class"]])
    assert (merged.loc[merged["isprimary"], "duplicate_of"] == -1).all()
    dups = merged[~merged["isprimary"]]
    assert (dups["duplicate_of"] != -1).all()
    matched = dups[dups["duplicate_of"] >= 0].merge(merged, left_on="duplicate_of", right_on="object_id",
                                                     suffixes=("", "_orig"))
    assert len(matched) > 0.8 * len(dups) and (matched["class"] == matched["class_orig"]).all()
    sep_arcsec = 3600 * np.hypot((matched["ra"] - matched["ra_orig"]) * np.cos(np.deg2rad(matched["dec"])),
                                 matched["dec"] - matched["dec_orig"])
    assert sep_arcsec.max() < 0.3

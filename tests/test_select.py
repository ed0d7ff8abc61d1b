"""The dropout selection: each cut, limits, streaming, reports."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workflow_scripts.config import validate_config
from workflow_scripts.contracts import CATALOG_SCHEMA, ContractError
from workflow_scripts.select import CutFlow, derive_photometry, object_hash, select_batch, select_shard
from tests.factories import I_DROPOUT_MAGS, SIGMA_NJY, STAR_MAGS, Z_DROPOUT_MAGS, catalog_frame, catalog_row


@pytest.fixture
def cfg():
    return validate_config({"shards": {"a": {"ra": [0, 1], "dec": [0, 1]}}})["select"]


def run(rows, cfg):
    flow = CutFlow()
    cand, _ = select_batch(catalog_frame(rows), cfg, flow)
    return cand, flow


def test_magnitudes_limits_and_extinction(cfg):
    df = catalog_frame([catalog_row(I_DROPOUT_MAGS, a_z=0.2)])
    phot = derive_photometry(df, nondetection_snr=3.0, limit_snr=3.0).iloc[0]
    assert phot["z_mag"] == pytest.approx(22.8 - 0.2)  # extinction-corrected
    assert phot["z_magerr"] == pytest.approx(2.5 / np.log(10) / phot["z_snr"])
    assert bool(phot["g_mag_is_limit"]) and np.isnan(phot["g_magerr"])
    assert phot["g_mag"] == pytest.approx(-2.5 * np.log10(3 * SIGMA_NJY["g"]) + 31.4)
    # i is detected at S/N ~ 4.7 here; make it undetected: i - z becomes a lower limit
    df.loc[0, "i_psfflux_flux"] = 0.0
    phot = derive_photometry(df, 3.0, 3.0).iloc[0]
    assert phot["i_minus_z_limit"] == "lower"
    assert phot["i_minus_z"] == pytest.approx(phot["i_mag"] - phot["z_mag"])


def test_i_and_z_dropouts_pass_and_star_fails(cfg):
    cand, flow = run([catalog_row(I_DROPOUT_MAGS), catalog_row(Z_DROPOUT_MAGS), catalog_row(STAR_MAGS)], cfg)
    assert list(cand["selection_branch"]) == ["i_dropout", "z_dropout"]
    assert flow.selected == {"i_dropout": 1, "z_dropout": 1, "any": 2}
    assert {"z_mag", "i_minus_z", "i_minus_z_limit", "is_i_dropout", "is_z_dropout"} <= set(cand.columns)


@pytest.mark.parametrize(
    "override, failing_cut",
    [
        ({"isprimary": False}, "isprimary"),
        ({"z_pixelflags_edge": True}, "clean pixels"),
        ({"y_pixelflags_crcenter": True}, "clean pixels"),
        ({"z_pixelflags_saturatedcenter": True}, "clean pixels"),
        ({"z_pixelflags_bad": True}, "clean pixels"),
        ({"z_psfflux_flag": True}, "psfflux ok"),
        ({"z_inputcount_value": 1}, "inputcount"),
        ({"z_extendedness_value": 1.0, "y_extendedness_value": 1.0}, "point-like"),
        ({"z_psfflux_flux": 10 ** (-0.4 * (24.7 - 31.4))}, "z < 24.5"),
        ({"z_psfflux_fluxerr": 10 ** (-0.4 * (22.8 - 31.4)) / 8}, "S/N(z) > 10"),
        ({"g_psfflux_flux": 5 * SIGMA_NJY["g"]}, "undetected in g"),
        ({"i_psfflux_flux": 10 ** (-0.4 * (23.5 - 31.4))}, "i - z > 1.5"),
    ],
)
def test_each_i_dropout_cut(cfg, override, failing_cut):
    cfg["z_dropout"]["enabled"] = False
    cand, flow = run([catalog_row(I_DROPOUT_MAGS, **override)], cfg)
    assert cand.empty
    steps = flow.as_dict()["branches"]["i_dropout"]
    first_zero = next(s["cut"] for s in steps if s["remaining"] == 0)
    assert first_zero.startswith(failing_cut), steps


def test_point_like_in_either_morphology_band_is_enough(cfg):
    cfg["z_dropout"]["enabled"] = False
    cand, _ = run([catalog_row(I_DROPOUT_MAGS, z_extendedness_value=1.0)], cfg)
    assert len(cand) == 1
    cfg["i_dropout"]["morphology_bands"] = ["z"]
    cand, _ = run([catalog_row(I_DROPOUT_MAGS, z_extendedness_value=1.0)], cfg)
    assert cand.empty


def test_extinction_correction_can_bring_a_source_inside_the_magnitude_cut(cfg):
    row = catalog_row({**I_DROPOUT_MAGS, "z": 24.6, "i": None}, a_z=0.3, z_psfflux_fluxerr=10)
    cand, _ = run([row], cfg)
    assert len(cand) == 1


@pytest.mark.parametrize(
    "override, failing_cut",
    [
        ({"y_pixelflags_edge": True}, "clean pixels"),
        ({"y_extendedness_value": 1.0}, "point-like"),
        ({"y_psfflux_flux": 10 ** (-0.4 * (24.2 - 31.4))}, "y < 24.0"),
        ({"i_psfflux_flux": 4 * SIGMA_NJY["i"]}, "undetected in g,r,i"),
        ({"z_psfflux_flux": 10 ** (-0.4 * (23.5 - 31.4))}, "z - y > 0.8"),
    ],
)
def test_each_z_dropout_cut(cfg, override, failing_cut):
    cfg["i_dropout"]["enabled"] = False
    cand, flow = run([catalog_row(Z_DROPOUT_MAGS, **override)], cfg)
    assert cand.empty
    first_zero = next(s["cut"] for s in flow.as_dict()["branches"]["z_dropout"] if s["remaining"] == 0)
    assert first_zero.startswith(failing_cut)


def test_z_dropout_with_undetected_z_uses_lower_limit(cfg):
    cand, _ = run([catalog_row({**Z_DROPOUT_MAGS, "z": None})], cfg)
    assert cand["z_minus_y_limit"].tolist() == ["lower"] and cand["is_z_dropout"].all()


def test_optional_cuts(cfg):
    cfg["i_dropout"]["max_z_minus_y"] = 0.05
    cand, _ = run([catalog_row(I_DROPOUT_MAGS)], cfg)  # z - y = 0.1
    assert not cand["is_i_dropout"].any() if len(cand) else True
    cfg["i_dropout"]["max_z_minus_y"] = None
    cfg["i_dropout"]["require_y_detection"] = True
    cand, _ = run([catalog_row({**I_DROPOUT_MAGS, "y": None})], cfg)
    assert cand.empty


def _random_catalog(n, seed=1):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        base = [I_DROPOUT_MAGS, Z_DROPOUT_MAGS, STAR_MAGS][rng.integers(3)]
        mags = {b: (None if m is None else m + rng.normal(0, 0.7)) for b, m in base.items()}
        rows.append(catalog_row(mags, z_extendedness_value=float(rng.random() < 0.2)))
    return catalog_frame(rows)


def test_streaming_equals_single_batch_and_report_is_consistent(tmp_path, cfg):
    df = _random_catalog(3000)
    path = tmp_path / "cat.parquet"
    pq.write_table(pa.Table.from_pandas(df, schema=CATALOG_SCHEMA, preserve_index=False), path, row_group_size=500)
    results = []
    for batch_rows in (1000, 1_000_000):
        cfg["batch_rows"], cfg["colour_sample_rows"] = batch_rows, 50
        out = tmp_path / f"cand_{batch_rows}.parquet"
        report, sample = select_shard(path, cfg, out, shard="s1")
        results.append((pd.read_parquet(out), report, sample))
    (a, ra, sa), (b, rb, sb) = results
    pd.testing.assert_frame_equal(a, b)
    assert ra["branches"] == rb["branches"] and ra["rows"] == 3000
    assert sorted(sa["object_id"]) == sorted(sb["object_id"]) and len(sa) == 50
    assert ra["selected"]["any"] == len(a) > 0
    for flow in ra["branches"].values():  # cumulative counts never increase
        counts = [s["remaining"] for s in flow]
        assert counts == sorted(counts, reverse=True)
    assert (a["shard"] == "s1").all()


def test_empty_catalog_writes_valid_empty_candidates(tmp_path, cfg):
    path = tmp_path / "empty.parquet"
    pq.write_table(CATALOG_SCHEMA.empty_table(), path)
    report, _ = select_shard(path, cfg, tmp_path / "c.parquet", shard="e")
    assert report["rows"] == 0 and len(pd.read_parquet(tmp_path / "c.parquet")) == 0


def test_contract_violation_names_file_and_column_and_keeps_old_output(tmp_path, cfg):
    df = _random_catalog(10).drop(columns=["z_psfflux_flux"])
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    out = tmp_path / "cand.parquet"
    out.write_text("previous good output")
    with pytest.raises(ContractError, match=r"bad\.parquet.*z_psfflux_flux"):
        select_shard(path, cfg, out, shard="b")
    assert out.read_text() == "previous good output"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_object_hash_is_stable():
    ids = np.array([1, 2, 3], dtype=np.int64)
    assert (object_hash(ids) == object_hash(ids.copy())).all()
    assert len(set(object_hash(np.arange(10_000)).tolist())) == 10_000


def test_cli_writes_all_outputs(tmp_path, cfg):
    from workflow_scripts import select

    path = tmp_path / "cat.parquet"
    pq.write_table(pa.Table.from_pandas(_random_catalog(200), schema=CATALOG_SCHEMA, preserve_index=False), path)
    args = ["--catalog", str(path), "--shard", "s", "--select", json.dumps(cfg), "--out", str(tmp_path / "c.parquet"),
            "--report", str(tmp_path / "r.json"), "--sample", str(tmp_path / "s.parquet")]
    assert select.main(args) == 0
    assert json.loads((tmp_path / "r.json").read_text())["rows"] == 200

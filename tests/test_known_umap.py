"""Known-object lists (reading, cross-match, mock lists) and the UMAP stage (map, structures, figures)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from astropy.table import Table

from workflow_scripts import known_objects as ko
from workflow_scripts import umap_project as up
from workflow_scripts.contracts import mag_to_flux

RA0, DEC0 = 135.25, 0.75


# ----------------------------------------------------------------------------- reading lists


def _write(table: Table, path, fmt: str):
    table.write(path, format=fmt, overwrite=True)
    return path


def test_load_csv_upper_case_degrees(tmp_path):
    path = _write(Table({"Name": ["a", "b"], "RA": [135.0, 136.0], "DEC": [0.5, -1.0], "Z": [6.1, 2.0]}),
                  tmp_path / "q.csv", "ascii.csv")
    t = ko.load_known(path, label="quasar")
    assert list(t["ra"]) == [135.0, 136.0] and list(t["dec"]) == [0.5, -1.0]
    assert list(t["name"]) == ["a", "b"] and set(t["label"]) == {"quasar"}
    assert np.allclose(t["redshift"], [6.1, 2.0])


def test_load_ecsv_j2000_names_with_units_and_label_column(tmp_path):
    src = Table({"RAJ2000": [9.0], "DEJ2000": [1.5], "SpT": ["T2"], "kind": ["Brown Dwarf"]})
    src["RAJ2000"].unit = "hourangle"  # a unit is honoured
    src["DEJ2000"].unit = "deg"
    t = ko.load_known(_write(src, tmp_path / "bd.ecsv", "ascii.ecsv"), label_column="kind")
    assert t["ra"][0] == pytest.approx(135.0) and t["dec"][0] == pytest.approx(1.5)
    assert t["label"][0] == "brown_dwarf" and t["spectral_type"][0] == "T2"
    assert np.isnan(t["redshift"][0])


def test_load_votable_lower_case(tmp_path):
    src = Table({"ra": [135.1, 135.2], "dec": [0.9, 1.0], "redshift": [6.8, 0.3], "label": ["qso", "galaxy"]})
    t = ko.load_known(_write(src, tmp_path / "list.vot", "votable"))  # label column found by name
    assert list(t["label"]) == ["quasar", "galaxy"] and t["ra"][1] == pytest.approx(135.2)


def test_load_sexagesimal_strings(tmp_path):
    path = tmp_path / "sexa.csv"
    path.write_text("name,RA_ICRS,DE_ICRS,class\n"
                    "x,09:00:00.00,+01:30:00.0,star\n"
                    "y,09h01m00s,-00d30m00s,star\n")
    t = ko.load_known(path)
    assert t["ra"][0] == pytest.approx(135.0) and t["dec"][0] == pytest.approx(1.5)
    assert t["ra"][1] == pytest.approx(135.25) and t["dec"][1] == pytest.approx(-0.5)


def test_bad_files_name_file_and_column(tmp_path):
    no_dec = _write(Table({"ra": [1.0], "declination_err": [0.1]}), tmp_path / "nodec.csv", "ascii.csv")
    with pytest.raises(ko.KnownListError, match=r"nodec\.csv.*no Dec column"):
        ko.load_known(no_dec, label="star")
    bad_label = _write(Table({"ra": [1.0], "dec": [0.0], "type": ["nebula"]}), tmp_path / "lab.ecsv", "ascii.ecsv")
    with pytest.raises(ko.KnownListError, match=r"lab\.ecsv.*column 'type'.*nebula"):
        ko.load_known(bad_label, label_column="type")
    with pytest.raises(ko.KnownListError, match=r"lab\.ecsv.*label column 'kind' not found"):
        ko.load_known(bad_label, label_column="kind")
    with pytest.raises(ko.KnownListError, match=r"lab\.ecsv.*label 'planet'"):
        ko.load_known(bad_label, label="planet")
    junk = tmp_path / "junk.csv"
    junk.write_text("RA,Dec\nnorth,up\n")
    with pytest.raises(ko.KnownListError, match=r"junk\.csv.*column 'RA'"):
        ko.load_known(junk, label="star")
    with pytest.raises(ko.KnownListError, match=r"list\.txt.*format"):
        ko.load_known(tmp_path / "list.txt", label="star")
    broken = tmp_path / "broken.vot"
    broken.write_text("<VOTABLE><not closed")
    with pytest.raises(ko.KnownListError, match=r"broken\.vot.*cannot be read"):
        ko.load_known(broken, label="star")


# ----------------------------------------------------------------------------- cross-match


def _known(ra, dec, label="quasar", z=np.nan, spt="", name="K"):
    return Table({"ra": np.atleast_1d(ra), "dec": np.atleast_1d(dec), "name": [name] * np.size(ra),
                  "label": [label] * np.size(ra), "redshift": np.full(np.size(ra), z),
                  "spectral_type": [spt] * np.size(ra)})


def test_crossmatch_radius():
    cands = pd.DataFrame({"object_id": [1, 2, 3], "ra": [RA0, RA0 + 0.01, RA0 + 0.02], "dec": [DEC0] * 3})
    near = _known(RA0, DEC0 + 0.5 / 3600, z=6.9, name="QSO near")        # 0.5" away
    far = _known(RA0 + 0.01, DEC0 + 2.0 / 3600, label="brown_dwarf", spt="L3")  # 2" away
    out = ko.crossmatch(cands, [near, far], radius_arcsec=1.0)
    assert list(out.columns) == list(ko.MATCH_COLUMNS)
    assert out.loc[0, "known_label"] == "quasar_highz" and out.loc[0, "known_name"] == "QSO near"
    assert out.loc[0, "known_sep_arcsec"] == pytest.approx(0.5, abs=1e-3)
    assert out.loc[0, "known_redshift"] == pytest.approx(6.9)
    assert out.loc[1, "known_label"] == "" and np.isnan(out.loc[1, "known_sep_arcsec"])
    assert out.loc[2, "known_label"] == "" and np.isnan(out.loc[2, "known_redshift"])
    wide = ko.crossmatch(cands, [near, far], radius_arcsec=3.0)
    assert wide.loc[1, "known_label"] == "brown_dwarf" and wide.loc[1, "known_spectral_type"] == "L3"


def test_crossmatch_labels_and_empty():
    assert ko.output_label("quasar", 5.7) == "quasar_highz"
    assert ko.output_label("quasar", 2.0) == "quasar_lowz"
    assert ko.output_label("quasar", np.nan) == "quasar_lowz"
    cands = pd.DataFrame({"object_id": [5], "ra": [RA0], "dec": [DEC0]})
    assert ko.crossmatch(cands, [], 1.0)["known_label"].tolist() == [""]


# ----------------------------------------------------------------------------- mock lists


def _mock_truth(path, n_per_class=400, seed=3):
    rng = np.random.default_rng(seed)
    rows = []
    for cls, sub, zlo, zhi in (("quasar", "highz", 5.8, 7.2), ("quasar", "lowz", 0.5, 3.0),
                               ("brown_dwarf", "L", np.nan, np.nan), ("galaxy", "normal", 0.1, 1.5),
                               ("star", "main_sequence", np.nan, np.nan)):
        mag = rng.uniform(19.0, 27.0, n_per_class)
        rows.append(pd.DataFrame({
            "ra": rng.uniform(135, 136, n_per_class), "dec": rng.uniform(0.5, 1.5, n_per_class),
            "class": cls, "subclass": sub, "redshift": rng.uniform(zlo, zhi, n_per_class) if zlo == zlo else np.nan,
            "spectral_type": "L2" if cls == "brown_dwarf" else "", "duplicate_of": -1,
            "flux_true_z": mag_to_flux(mag + 0.5), "flux_true_y": mag_to_flux(mag)}))
    truth = pd.concat(rows, ignore_index=True)
    truth.insert(0, "object_id", np.arange(len(truth), dtype=np.int64) + 10)
    truth.to_parquet(path)
    return truth


def test_mock_lists_minority_bright_both_classes(tmp_path):
    truth = _mock_truth(tmp_path / "truth.parquet")
    lists = ko.mock_known_lists([tmp_path / "truth.parquet"], fraction=0.3, seed=1, max_mag_z=24.5, max_mag_y=24.0)
    qso, bd, other = lists["known_quasars"], lists["known_brown_dwarfs"], lists["known_other"]
    assert {"name", "RA", "DEC", "label", "redshift", "spectral_type"} <= set(qso.colnames)
    assert np.any(qso["redshift"] > 5.6) and np.any(qso["redshift"] < 5.6)  # high-z and low-z
    assert len(bd) > 0 and set(bd["spectral_type"]) == {"L2"} and str(qso["name"][0]).startswith("QSO J")
    mag = np.fmin(-2.5 * np.log10(truth["flux_true_z"]) + 31.4, -2.5 * np.log10(truth["flux_true_y"]) + 31.4)
    eligible = truth[mag < 24.0]  # here true z = y + 0.5, so "z < 24.5 or y < 24.0" is y < 24.0
    for cls, t in (("quasar", qso), ("brown_dwarf", bd)):
        n_elig = int((eligible["class"] == cls).sum())
        assert 0.15 * n_elig < len(t) < 0.5 * n_elig  # a minority, about the fraction
        assert np.all(t["mag_y"] < 24.0)  # never fainter than the selection limits
        assert np.median(t["mag_y"]) < np.median(mag[(truth["class"] == cls) & (mag < 24.0)]) - 0.5  # bright-biased
    assert 0 < len(other) <= 2 * 40 + 20  # only a few galaxies / stars
    # written in three formats and read back by the generic reader
    paths = ko.write_known_lists(lists, tmp_path / "known")
    assert sorted(p.suffix for p in paths) == [".csv", ".ecsv", ".vot"]
    for p, key in zip(paths, lists):
        back = ko.load_known(p, label_column="label")
        assert len(back) == len(lists[key])
        ra_col = [c for c in lists[key].colnames if c.lower() in ("ra", "raj2000")][0]
        dec_col = [c for c in lists[key].colnames if c.lower() in ("dec", "dej2000")][0]
        assert np.allclose(back["ra"], lists[key][ra_col], atol=1e-5)  # sexagesimal CSV to 0.015"
        assert np.allclose(back["dec"], lists[key][dec_col], atol=1e-5)
        assert list(back["label"]) == [ko.normalise_label(v) for v in lists[key]["label"]]
    again = ko.mock_known_lists([tmp_path / "truth.parquet"], fraction=0.3, seed=1)
    assert list(again["known_quasars"]["name"]) == list(qso["name"])  # reproducible


def test_known_cli(tmp_path):
    truth = _mock_truth(tmp_path / "truth.parquet", n_per_class=100)
    cands = truth.iloc[::3][["object_id", "ra", "dec"]]
    cands.to_parquet(tmp_path / "cands.parquet")
    extra = tmp_path / "mine.csv"
    extra.write_text(f"RAJ2000,DEJ2000\n{cands.ra.iloc[0]},{cands.dec.iloc[0]}\n")
    out = tmp_path / "known" / "labels.parquet"
    rc = ko.main(["--candidates", str(tmp_path / "cands.parquet"), "--truths", str(tmp_path / "truth.parquet"),
                  "--fraction", "0.3", "--seed", "2", "--lists-dir", str(tmp_path / "known"),
                  "--list", f"{extra}:star", "--radius", "1.0", "--out", str(out)])
    assert rc == 0
    labels = pd.read_parquet(out)
    assert len(labels) == len(cands) and (labels["known_label"] != "").sum() > 0
    assert (tmp_path / "known" / "known_quasars.ecsv").exists() and (tmp_path / "known" / "known_brown_dwarfs.vot").exists()


# ----------------------------------------------------------------------------- UMAP


def _clustered(n=90, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0, 1, (n, dim)) + np.r_[10.0, np.zeros(dim - 1)]
    b = rng.normal(0, 1, (n, dim)) - np.r_[10.0, np.zeros(dim - 1)]
    emb = pd.DataFrame(np.vstack([a, b]), columns=[f"h{k:03d}" for k in range(dim)])
    emb.insert(0, "object_id", np.arange(2 * n, dtype=np.int64) + 100)
    emb.insert(1, "shard", "s")
    return emb, np.r_[np.zeros(n, int), np.ones(n, int)]


SETTINGS = {"n_neighbors": 10, "min_dist": 0.1, "metric": "euclidean", "n_components": 2, "seed": 7}


@pytest.fixture(scope="module")
def umap_pair():
    emb, truth = _clustered()
    return emb, truth, up.umap_table(emb, SETTINGS, min_cluster_size=10), up.umap_table(emb, SETTINGS, 10)


def test_umap_deterministic_and_separates(umap_pair):
    emb, truth, first, second = umap_pair
    assert list(first.columns) == ["object_id", "x", "y", "structure"]
    assert np.array_equal(first[["x", "y"]].to_numpy(), second[["x", "y"]].to_numpy())
    xy = first[["x", "y"]].to_numpy()
    c0, c1 = xy[truth == 0].mean(0), xy[truth == 1].mean(0)
    spread = max(xy[truth == 0].std(0).max(), xy[truth == 1].std(0).max())
    assert np.linalg.norm(c0 - c1) > 4 * spread  # the two clusters stay apart
    s = first["structure"].to_numpy()
    assert len(set(s[s >= 0])) == 2  # HDBSCAN finds both
    for k in (0, 1):  # each structure is pure
        kept = s[(truth == k) & (s >= 0)]
        assert len(set(kept)) == 1 and len(kept) > 0.8 * np.sum(truth == k)


def test_umap_cli_and_figures(tmp_path, umap_pair):
    emb, truth_cls, _, _ = umap_pair
    emb.to_parquet(tmp_path / "emb.parquet")
    n = len(emb)
    ids = emb["object_id"].to_numpy()
    rng = np.random.default_rng(1)
    cands = pd.DataFrame({"object_id": ids, "ra": 135 + rng.uniform(0, 0.1, n), "dec": rng.uniform(0, 0.1, n),
                          "i_minus_z": rng.normal(2, 0.5, n), "i_minus_z_limit": np.where(truth_cls, "lower", ""),
                          "z_minus_y": rng.normal(0.5, 0.3, n), "z_minus_y_limit": "", "y_mag": rng.uniform(20, 24, n),
                          "y_mag_is_limit": False, "selection_branch": np.where(truth_cls, "z_dropout", "i_dropout")})
    cands.to_parquet(tmp_path / "c.parquet")
    labels = pd.DataFrame({"object_id": ids, "known_label": np.where(np.arange(n) % 10 == 0, "quasar_highz", "")})
    labels.to_parquet(tmp_path / "labels.parquet")
    truth = pd.DataFrame({"object_id": ids, "class": np.where(truth_cls, "quasar", "brown_dwarf"),
                          "subclass": np.where(truth_cls, "highz", "L"),
                          "redshift": np.where(truth_cls, rng.uniform(5.8, 7.2, n), np.nan)})
    truth.to_parquet(tmp_path / "t.parquet")
    # IR on the HSC grid: a point source of 1000 nJy in J at the centre of each 21x21 grid
    h = 21
    yy, xx = np.mgrid[0:h, 0:h]
    psf = np.exp(-((xx - 10) ** 2 + (yy - 10) ** 2) / (2 * (0.9 / 2.3548 / 0.168) ** 2))
    flux = np.zeros((n, 2, h, h), np.float32)
    flux[:, 0] = 1000.0 * psf / psf.sum()
    np.savez(tmp_path / "ir.npz", object_id=ids, bands=np.array(["J", "Ks"]), flux=flux,
             coverage=np.ones_like(flux, bool), pixel_xy=np.full((n, 2), 10.0))
    j = up.j_magnitudes([tmp_path / "ir.npz"])
    assert np.allclose(j["J_mag"], -2.5 * np.log10(1000.0) + 31.4, atol=0.03)  # aperture-corrected

    figs = tmp_path / "figs"
    rc = up.main(["--embeddings", str(tmp_path / "emb.parquet"), "--candidates", str(tmp_path / "c.parquet"),
                  "--ir", str(tmp_path / "ir.npz"), "--labels", str(tmp_path / "labels.parquet"),
                  "--settings", json.dumps(SETTINGS), "--min-cluster-size", "10", "--run", "unit",
                  "--out", str(tmp_path / "run" / "umap.parquet"), "--figures-dir", str(figs),
                  "--truths", str(tmp_path / "t.parquet")])
    assert rc == 0
    out = pd.read_parquet(tmp_path / "run" / "umap.parquet")
    assert len(out) == n and set(out.columns) == {"object_id", "x", "y", "structure"}
    names = {p.name for p in figs.iterdir()}
    assert {"umap_structure.png", "umap_i_minus_z.png", "umap_z_minus_y.png", "umap_y_mag.png", "umap_y_minus_J.png",
            "umap_selection_branch.png", "umap_known_labels.png", "umap_true_class.png",
            "umap_true_redshift.png"} == names
    for p in figs.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "run").glob(".*part"))  # atomic writes leave no temporaries

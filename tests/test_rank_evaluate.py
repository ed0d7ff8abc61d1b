"""rank / evaluate / compare on synthetic representations with planted structure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from workflow_scripts import compare, evaluate, rank
from workflow_scripts.contracts import BANDS

SETTINGS = {"rank": {"k_neighbors": 5, "min_cluster_size": 6, "top_k": [10, 20], "top_n_followup": 5}}


def _planted(seed: int = 0):
    """Three well-separated clusters in 16-D: quasars (30), brown dwarfs (30), moving objects (20)."""
    rng = np.random.default_rng(seed)
    dim = 16
    centres = np.eye(dim)[:3] * 10
    groups = [("qso", 30, 0), ("bd", 30, 1), ("mov", 20, 2)]
    x, kind = [], []
    for name, n, c in groups:
        x.append(centres[c] + rng.normal(0, 1.0, (n, dim)))
        kind += [name] * n
    x = np.vstack(x)
    kind = np.array(kind)
    n = len(kind)
    ids = np.arange(1, n + 1, dtype=np.int64) * 10
    emb = pd.DataFrame(x, columns=[f"h{i:03d}" for i in range(dim)])
    emb.insert(0, "object_id", ids)
    emb.insert(1, "shard", "s0")
    cand = pd.DataFrame({"object_id": ids, "ra": 150.0 + np.arange(n) * 1e-3, "dec": 2.0, "shard": "s0",
                         "selection_branch": "i_dropout", "is_i_dropout": True, "is_z_dropout": False})
    for b in BANDS:
        snr = np.where(np.isin(b, ["z", "y"]), 20.0, 0.5) * np.ones(n)
        if b in ("z", "y"):
            snr = np.where(kind == "mov", 20.0 if b == "z" else 0.5, snr)
        cand[f"{b}_snr"] = snr
        cand[f"{b}_mag"] = 23.0
        cand[f"{b}_magerr"] = 0.05
        cand[f"{b}_mag_is_limit"] = False
    cand["i_minus_z"], cand["z_minus_y"] = 2.0, 0.3
    cand["i_minus_z_limit"], cand["z_minus_y_limit"] = "", ""
    labels = pd.DataFrame({"object_id": ids, "known_label": "", "known_name": ""})
    labels.loc[np.flatnonzero(kind == "qso")[:6], "known_label"] = "quasar_highz"
    labels.loc[np.flatnonzero(kind == "bd")[:8], "known_label"] = "brown_dwarf"
    labels["known_name"] = np.where(labels["known_label"] != "", "K" + labels["object_id"].astype(str), "")
    return emb, cand, labels, kind


def test_ranking_puts_quasar_cluster_on_top_and_flags_bd_and_moving():
    emb, cand, labels, kind = _planted()
    out = rank.rank_candidates(emb, cand, labels, SETTINGS)
    k = kind[pd.Index(cand["object_id"]).get_indexer(out["object_id"])]
    assert (k[:30] == "qso").all()
    assert out["rank"].tolist() == list(range(1, len(out) + 1))
    assert out.loc[k == "bd", "flag_bd_peninsula"].all()
    assert not out.loc[k == "qso", "flagged"].any()
    assert out.loc[k == "mov", "flag_moving"].all() and not out.loc[k != "mov", "flag_moving"].any()
    assert out.loc[k == "qso", "score"].min() > out.loc[k == "bd", "score"].max()
    assert (out.loc[k == "qso", "nearest_known_label"] == "quasar_highz").all()
    assert (out[[c for c in out if c.startswith("knn_n_")]].sum(axis=1) == 5).all()
    for col in ("structure_id", "nearest_known_name", "nearest_known_distance", "flag_artefact", "ra", "z_mag"):
        assert col in out


def test_score_is_prior_far_from_labels_and_without_labels():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    v = rank.knn_vote(x, np.array(["quasar_highz", "brown_dwarf", ""], dtype=object), k=2, prior_strength=1.0)
    assert v.score[2] == pytest.approx(0.5)  # orthogonal to all labels: weights 0 -> prior 1/2
    assert v.score[0] == pytest.approx((0 + 0.5) / (1 + 1))  # its only other label is a BD at cos 1
    none = rank.knn_vote(x, np.array(["", "", ""], dtype=object), k=2)
    assert (none.score == 0).all()


def test_moving_like_excludes_y_only():
    df = pd.DataFrame({f"{b}_snr": [0.1] * 3 for b in BANDS})
    df.loc[0, "z_snr"] = 10  # z only: moving-like
    df.loc[1, "y_snr"] = 10  # y only: a z~7 quasar looks like this, not flagged
    df.loc[2, ["z_snr", "y_snr"]] = 10
    assert rank.moving_like(df).tolist() == [True, False, False]


def test_order_pushes_flagged_down():
    r = rank.order_candidates(np.array([0.9, 0.5, 0.7]), np.array([True, False, False]), np.array([1, 2, 3]))
    assert r.tolist() == [3, 2, 1]


def test_selection_metrics_hand_computed():
    # 6 objects; targets 0,1,2 (2 is a duplicate); weights: quasars 0.01, others 1
    target = np.array([1, 1, 1, 0, 0, 0], bool)
    original = np.array([1, 1, 0, 1, 1, 1], bool)
    w = np.where(target, 0.01, 1.0)
    rank_ = np.array([1, 4, 2, 3, 5, 6])
    m = evaluate.top_k_metrics(rank_, target, original, w, [3])["3"]
    assert m["completeness"] == pytest.approx(1 / 2)  # object 0 of originals {0,1}
    assert m["purity"] == pytest.approx(2 / 3)
    assert m["purity_rw"] == pytest.approx(0.02 / 1.02)


def test_knn_purity_hand_computed():
    x = np.array([[1, 0], [1, 0.1], [0.9, 0.1], [0, 1]], float)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cls = np.array(["a", "a", "b", "b"], dtype=object)
    p = evaluate.knn_label_purity(x, cls, k=1)
    # nearest neighbours: 0->1 (a, same), 1->2 (b), 2->1 (a), 3->2 (b, same)
    assert p["a"]["knn_purity"] == pytest.approx(0.5)
    assert p["b"]["knn_purity"] == pytest.approx(0.5)
    assert p["a"]["chance"] == pytest.approx(0.5)


def test_box_search_finds_planted_box():
    rng = np.random.default_rng(1)
    n = 400
    iz = rng.uniform(1.5, 4.0, n)
    zy = rng.uniform(-0.5, 2.0, n)
    target = (iz >= 2.5) & (zy >= 0.0) & (zy <= 1.0)
    res = evaluate.best_box({"i_minus_z": iz, "z_minus_y": zy}, target, np.ones(n, bool), np.ones(n), 1.0)
    # the grid is 5 % quantiles (~0.13 mag here): the box is found to within one grid step
    assert res["completeness"] == 1.0 and res["purity"] > 0.8
    b = res["box"]
    assert 2.3 <= b["min_i_minus_z"] <= 2.5 and -0.2 <= b["min_z_minus_y"] <= 0.0 and 1.0 <= b["max_z_minus_y"] <= 1.2
    base = target.mean()
    assert res["purity"] > 3 * base


def test_evaluate_and_compare_end_to_end(tmp_path):
    emb, cand, labels, kind = _planted()
    ranked = rank.rank_candidates(emb, cand, labels, SETTINGS)
    truth = pd.DataFrame({"object_id": cand["object_id"],
                          "class": np.select([kind == "qso", kind == "bd"], ["quasar", "brown_dwarf"], "moving_object"),
                          "redshift": np.where(kind == "qso", 6.8, 0.0), "duplicate_of": -1,
                          "enrichment_weight": np.where(kind == "qso", 0.01, 1.0)})
    m = evaluate.evaluate(ranked, emb, cand, truth, SETTINGS, 100.0)
    t = m["targets"]["z65"]
    assert t["learned"]["20"]["completeness"] == pytest.approx(20 / 30)
    assert t["learned"]["20"]["purity"] == 1.0 and t["learned"]["20"]["purity_rw"] == 1.0
    assert m["knn_label_purity"]["per_class"]["quasar_z>6.5"]["knn_purity"] == 1.0
    assert "Verdict" in evaluate.metrics_markdown(m)
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps(m))
    settings = {"a": {"normalisation": "asinh", "temperature": 0.1, "loss": "nt_xent", "epochs": 2,
                      "batch_size": 8, "scale_arcsec": 6.0, "umap": {"n_neighbors": 15, "min_dist": 0.1,
                                                                       "metric": "cosine"}}}
    prefix = tmp_path / "compare"
    assert compare.main(["--runs", f"a={run}", f"b={tmp_path / 'runs' / 'b'}", "--settings", json.dumps(settings),
                         "--out-prefix", str(prefix)]) == 0
    df = pd.read_csv(prefix.with_suffix(".csv"))
    assert df["run"].tolist() == ["a", "b"] and df.loc[0, "z65_purity@20"] == 1.0
    assert prefix.with_suffix(".png").stat().st_size > 0 and prefix.with_suffix(".md").exists()

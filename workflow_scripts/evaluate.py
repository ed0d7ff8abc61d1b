"""Stage `evaluate` (mock sky only): the ranked candidates against the simulation's truth.

Definitions (README "Evaluation"):

* **Targets**: true quasars at z > 6.5 (``z65``) and all true quasars at z > 5.7 (``z57``).
* **Completeness at K**: of the target quasars among the candidates (passed the catalogue cut;
  originals only, ``duplicate_of == -1``), the fraction with ``rank <= K``.
* **Purity at K**: fraction of the top-K rows that are target quasars (enriched sky).
* **Re-weighted purity**: ``sum(w, target in top K) / sum(w, top K)`` with the truth's
  ``enrichment_weight`` (quasars were drawn ``enrichment`` times denser than the real sky, so
  their weight is 1/enrichment): the purity on the real sky.
* **kNN label purity**: per true class, the mean fraction of an object's ``k_neighbors`` nearest
  neighbours (cosine, L2-normalised representations, itself excluded) sharing its true class.
  Quasars are split at z = 6.5 (``quasar_z>6.5``) so the z ~ 7 island is judged on its own.
* **Baselines** on the same candidates:
  (i) the catalogue cut alone, ordered by the colour margin above the branch's cut
      (i - z - min_i_minus_z for i-dropouts, z - y - min_z_minus_y for z-dropouts; limits used
      at face value), plus the expectation of a random order within the cut (purity = base rate);
  (ii) the best colour-colour box ``i-z >= a, lo <= z-y <= hi`` (and ``y-J >= c`` or ``<= c``
      with ``--ir``: J from the reprojected VHS cutout, aperture sum of radius ``J_APERTURE_PX``)
      tuned on the truth by grid search: at each learned top-K completeness C, the box with
      completeness >= C and the highest purity. It is tuned on the evaluation data itself, so it
      is an optimistic baseline; the learned ranking uses no truth at all.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from typing import Any

import numpy as np
import pandas as pd

from workflow_scripts.contracts import flux_to_mag, write_text_atomic
from workflow_scripts.rank import feature_matrix, parse_settings, rank_settings, read_candidates

TARGETS: dict[str, float] = {"z65": 6.5, "z57": 5.7}
J_APERTURE_PX = 6.0
GRID_QUANTILES = np.linspace(0.0, 1.0, 21)
DEFAULT_CUTS = {"min_i_minus_z": 1.5, "min_z_minus_y": 0.8}


def target_mask(truth: pd.DataFrame, min_z: float) -> np.ndarray:
    return ((truth["class"] == "quasar") & (truth["redshift"] > min_z)).to_numpy()


def is_original(truth: pd.DataFrame) -> np.ndarray:
    if "duplicate_of" not in truth:
        return np.ones(len(truth), dtype=bool)
    return (truth["duplicate_of"].fillna(-1).astype(np.int64) == -1).to_numpy()


def selection_metrics(selected: np.ndarray, target: np.ndarray, original: np.ndarray,
                      weight: np.ndarray) -> dict[str, float]:
    """Completeness (originals), purity and re-weighted purity of a boolean selection."""
    selected = np.asarray(selected, bool)
    n_sel = int(selected.sum())
    n_target = int((target & original).sum())
    hit = int((selected & target & original).sum())
    w_sel = float(weight[selected].sum())
    return {
        "n_selected": n_sel,
        "n_target": n_target,
        "n_target_selected": hit,
        "completeness": hit / n_target if n_target else float("nan"),
        "purity": float((selected & target).sum()) / n_sel if n_sel else float("nan"),
        "purity_rw": float(weight[selected & target].sum()) / w_sel if w_sel > 0 else float("nan"),
    }


def top_k_metrics(rank: np.ndarray, target: np.ndarray, original: np.ndarray, weight: np.ndarray,
                  ks: list[int]) -> dict[str, dict[str, float]]:
    return {str(k): {"k": int(k), **selection_metrics(rank <= k, target, original, weight)} for k in ks}


def knn_label_purity(x: np.ndarray, classes: np.ndarray, k: int) -> dict[str, dict[str, float]]:
    """Per class: mean fraction of each member's k nearest neighbours (itself excluded) of the same class."""
    classes = np.asarray(classes, dtype=object)
    n = len(x)
    if n < 2:
        return {}
    k = min(k, n - 1)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    same = (classes[nn] == classes[:, None]).mean(1)
    out = {}
    for c in sorted(set(classes.tolist())):
        m = classes == c
        out[str(c)] = {"n": int(m.sum()), "knn_purity": float(same[m].mean()), "chance": float(m.mean())}
    return out


def catalogue_score(df: pd.DataFrame, cuts: dict[str, float]) -> np.ndarray:
    """Colour margin above the branch's cut (mag): i-z - cut for i-dropouts, z-y - cut for z-dropouts."""
    iz = df["i_minus_z"].to_numpy(float) - cuts["min_i_minus_z"]
    zy = df["z_minus_y"].to_numpy(float) - cuts["min_z_minus_y"]
    branch = df["selection_branch"].astype(str).to_numpy()
    s = np.where(branch == "z_dropout", zy, iz)
    return np.nan_to_num(s, nan=-np.inf)


def rank_by(score: np.ndarray, object_id: np.ndarray) -> np.ndarray:
    order = np.lexsort((object_id, -score))
    r = np.empty(len(order), dtype=np.int64)
    r[order] = np.arange(1, len(order) + 1)
    return r


def box_mask(colours: dict[str, np.ndarray], box: dict[str, Any]) -> np.ndarray:
    iz, zy = colours["i_minus_z"], colours["z_minus_y"]
    m = (iz >= box["min_i_minus_z"]) & (zy >= box["min_z_minus_y"]) & (zy <= box["max_z_minus_y"])
    if box.get("y_minus_j_cut") is not None and "y_minus_J" in colours:
        yj = colours["y_minus_J"]
        m &= (yj >= box["y_minus_j_cut"]) if box["y_minus_j_dir"] == ">=" else (yj <= box["y_minus_j_cut"])
    return m


def _grid(values: np.ndarray) -> np.ndarray:
    v = values[np.isfinite(values)]
    return np.unique(np.quantile(v, GRID_QUANTILES)) if len(v) else np.array([0.0])


def box_grid(colours: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """All boxes on quantile grids of the colours (open-ended boxes included)."""
    iz = np.concatenate([[-np.inf], _grid(colours["i_minus_z"])])
    zy = _grid(colours["z_minus_y"])
    zlo = np.concatenate([[-np.inf], zy])
    zhi = np.concatenate([zy, [np.inf]])
    yj: list[tuple[Any, str]] = [(None, "")]
    if "y_minus_J" in colours:
        g = _grid(colours["y_minus_J"])[::2]
        yj += [(float(c), d) for c in g for d in (">=", "<=")]
    boxes = []
    for a, lo, hi, (c, d) in itertools.product(iz, zlo, zhi, yj):
        if lo <= hi:
            boxes.append({"min_i_minus_z": float(a), "min_z_minus_y": float(lo), "max_z_minus_y": float(hi),
                          "y_minus_j_cut": c, "y_minus_j_dir": d})
    return boxes


def box_counts(colours: dict[str, np.ndarray], boxes: list[dict[str, Any]], target: np.ndarray,
               original: np.ndarray, weight: np.ndarray, chunk: int = 4096) -> pd.DataFrame:
    """Per box: n selected, targets selected (all / originals), weights selected (all / targets)."""
    rows = []
    t, to = target.astype(float), (target & original).astype(float)
    for s in range(0, len(boxes), chunk):
        m = np.stack([box_mask(colours, b) for b in boxes[s:s + chunk]]).astype(float)
        rows.append(np.column_stack([m.sum(1), m @ t, m @ to, m @ weight, m @ (weight * t)]))
    a = np.concatenate(rows) if rows else np.zeros((0, 5))
    return pd.DataFrame(a, columns=["n_selected", "n_target_sel_all", "n_target_selected", "w_sel", "w_target"])


def best_box(colours: dict[str, np.ndarray], target: np.ndarray, original: np.ndarray, weight: np.ndarray,
             min_completeness: float, boxes: list[dict[str, Any]] | None = None,
             counts: pd.DataFrame | None = None) -> dict[str, Any]:
    """The box with completeness >= min_completeness (> 0) and the highest purity (ties: more complete, fewer selected)."""
    boxes = boxes if boxes is not None else box_grid(colours)
    c = counts if counts is not None else box_counts(colours, boxes, target, original, weight)
    n_target = int((target & original).sum())
    none = {"box": None, "completeness": float("nan"), "purity": float("nan"), "purity_rw": float("nan")}
    if not n_target or not len(c):
        return none
    comp = c["n_target_selected"].to_numpy() / n_target
    purity = np.divide(c["n_target_sel_all"].to_numpy(), c["n_selected"].to_numpy(),
                       out=np.full(len(c), np.nan), where=c["n_selected"].to_numpy() > 0)
    ok = (c["n_selected"].to_numpy() > 0) & (comp > 0) & (comp >= min_completeness - 1e-12)
    if not ok.any():
        return none
    idx = np.flatnonzero(ok)
    order = np.lexsort((c["n_selected"].to_numpy()[idx], -comp[idx], -purity[idx]))
    i = int(idx[order[0]])
    return {"box": boxes[i], **selection_metrics(box_mask(colours, boxes[i]), target, original, weight)}


def j_band_mag(ir_paths: list[str], object_ids: np.ndarray, radius_px: float = J_APERTURE_PX) -> np.ndarray:
    """J AB magnitude from the aperture sum around each object's pixel position (NaN: no coverage / flux <= 0)."""
    flux = pd.Series(np.nan, index=pd.Index(object_ids))
    for path in ir_paths:
        with np.load(path, allow_pickle=False) as z:
            ids = z["object_id"]
            bands = [str(b) for b in z["bands"]]
            if "J" not in bands or not len(ids):
                continue
            j = bands.index("J")
            img = z["flux"][:, j].astype(float)
            cov = z["coverage"][:, j].astype(float) > 0 if "coverage" in z.files else np.isfinite(img)
            h, w = img.shape[-2:]
            yy, xx = np.mgrid[0:h, 0:w]
            xy = z["pixel_xy"] if "pixel_xy" in z.files else np.full((len(ids), 2), [(w - 1) / 2, (h - 1) / 2])
            for i, oid in enumerate(ids):
                ap = (xx - xy[i, 0]) ** 2 + (yy - xy[i, 1]) ** 2 <= radius_px ** 2
                if oid in flux.index and cov[i][ap].mean() > 0.9:
                    flux.loc[oid] = np.nansum(np.where(cov[i], img[i], 0.0)[ap])
    return flux_to_mag(flux.to_numpy())


def evaluate(ranked: pd.DataFrame, embeddings: pd.DataFrame, candidates: pd.DataFrame, truth: pd.DataFrame,
             settings: dict[str, Any], enrichment: float, j_mag: pd.Series | None = None,
             cuts: dict[str, float] | None = None) -> dict[str, Any]:
    p = rank_settings(settings)
    ks = [int(k) for k in p.get("top_k", [25, 50, 100])]
    cuts = {**DEFAULT_CUTS, **(cuts or {})}
    tcols = ["object_id", "class", "redshift"] + [c for c in ("duplicate_of", "enrichment_weight") if c in truth]
    df = candidates[[c for c in candidates.columns if c not in ("class", "redshift")]].merge(
        truth[tcols], on="object_id", how="left", validate="one_to_one")
    df = df.merge(ranked[["object_id", "rank", "score"]], on="object_id", how="left")
    n_unranked = int(df["rank"].isna().sum())
    df["rank"] = df["rank"].fillna(len(df) + 1).astype(np.int64)  # no representation: last
    weight = df["enrichment_weight"].fillna(1.0).to_numpy(float) if "enrichment_weight" in df else np.ones(len(df))
    original = is_original(df)
    oid = df["object_id"].to_numpy()
    colours = {"i_minus_z": df["i_minus_z"].to_numpy(float), "z_minus_y": df["z_minus_y"].to_numpy(float)}
    if j_mag is not None:
        colours["y_minus_J"] = df["y_mag"].to_numpy(float) - df["object_id"].map(j_mag).to_numpy(float)
    boxes = box_grid(colours)
    cat_rank = rank_by(catalogue_score(df, cuts), oid)
    out: dict[str, Any] = {
        "enrichment": float(enrichment),
        "note": (f"quasars are {enrichment:g}x denser than on the real sky; *_rw purities re-weight every "
                 "object by the truth's enrichment_weight to real sky densities"),
        "n_candidates": int(len(df)), "n_unranked": n_unranked, "top_k": ks,
        "class_counts": {str(k): int(v) for k, v in df["class"].fillna("unknown").value_counts().items()},
        "targets": {},
    }
    for name, zmin in TARGETS.items():
        target = target_mask(df, zmin)
        base = selection_metrics(np.ones(len(df), bool), target, original, weight)
        learned = top_k_metrics(df["rank"].to_numpy(), target, original, weight, ks)
        catalog = top_k_metrics(cat_rank, target, original, weight, ks)
        random = {str(k): {"k": k, "completeness": min(k, len(df)) / len(df) if len(df) else float("nan"),
                           "purity": base["purity"], "purity_rw": base["purity_rw"]} for k in ks}
        counts = box_counts(colours, boxes, target, original, weight)
        box = {}
        for k in ks:
            c = learned[str(k)]["completeness"]
            box[str(k)] = best_box(colours, target, original, weight, c if np.isfinite(c) else 0.0, boxes, counts)
        beats = {}
        for k in ks:
            l, b = learned[str(k)], box[str(k)]
            beats[str(k)] = {
                "completeness": l["completeness"],
                "purity_learned": l["purity"], "purity_box": b["purity"], "purity_catalog_cut": catalog[str(k)]["purity"],
                "purity_random_cut": base["purity"],
                "purity_gain_vs_box": l["purity"] - b["purity"] if b.get("box") else float("nan"),
                "purity_rw_learned": l["purity_rw"], "purity_rw_box": b["purity_rw"],
                "learned_beats_box": bool(l["purity"] > b["purity"]) if b.get("box") else None,
                "learned_beats_catalog_cut": bool(l["purity"] > catalog[str(k)]["purity"]
                                                  and l["completeness"] >= catalog[str(k)]["completeness"]),
            }
        out["targets"][name] = {"min_redshift": zmin, "all_candidates": base, "learned": learned,
                                "catalog_cut_colour_order": catalog, "catalog_cut_random_order": random,
                                "best_box": box, "comparison": beats}
    has = df["object_id"].isin(embeddings["object_id"]).to_numpy()
    emb = embeddings.drop_duplicates("object_id").set_index("object_id")
    x = feature_matrix(emb.loc[df["object_id"][has]].reset_index())
    df = df[has]
    cls = df["class"].fillna("unknown").astype(str).to_numpy(dtype=object)
    cls = np.where((cls == "quasar") & (df["redshift"].to_numpy(float) > 6.5), "quasar_z>6.5", cls)
    cls = np.where(cls == "quasar", "quasar_z<=6.5", cls)
    out["knn_label_purity"] = {"k": int(p["k_neighbors"]), "per_class": knn_label_purity(x, cls, int(p["k_neighbors"]))}
    out["cuts"] = cuts
    out["box_search"] = {"n_boxes": len(boxes), "colours": sorted(colours), "tuned_on": "truth of the same candidates"}
    return out


def _f(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.3f}"


def metrics_markdown(m: dict[str, Any]) -> str:
    lines = [f"# Evaluation against the mock truth", "",
             f"{m['n_candidates']} candidates; simulation enrichment x{m['enrichment']:g} ({m['note']}).", ""]
    for name, t in m["targets"].items():
        base = t["all_candidates"]
        lines += [f"## Quasars at z > {t['min_redshift']} ({base['n_target']} among the candidates)", "",
                  "| K | completeness | purity learned | purity best box (same completeness) | purity colour-ordered cut | "
                  "purity random cut | purity_rw learned | purity_rw box | learned beats box |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for k, c in t["comparison"].items():
            lines.append(f"| {k} | {_f(c['completeness'])} | {_f(c['purity_learned'])} | {_f(c['purity_box'])} | "
                         f"{_f(c['purity_catalog_cut'])} | {_f(c['purity_random_cut'])} | {_f(c['purity_rw_learned'])} | "
                         f"{_f(c['purity_rw_box'])} | {c['learned_beats_box']} |")
        verdicts = []
        for k, c in t["comparison"].items():
            g = c["purity_gain_vs_box"]
            if g is None or not np.isfinite(g):
                verdicts.append(f"top-{k}: no box reaches completeness {_f(c['completeness'])}")
            else:
                word = "beats" if g > 0 else ("ties" if g == 0 else "loses to")
                verdicts.append(f"top-{k}: learned {word} the best box by {g:+.3f} in purity "
                                f"(completeness {_f(c['completeness'])})")
        lines += ["", "Verdict: " + "; ".join(verdicts) + ".", ""]
    lines += ["## kNN label purity in representation space", "",
              f"k = {m['knn_label_purity']['k']}; chance = the class's share of the candidates.", "",
              "| class | n | kNN purity | chance |", "|---|---|---|---|"]
    for c, v in m["knn_label_purity"]["per_class"].items():
        lines.append(f"| {c} | {v['n']} | {_f(v['knn_purity'])} | {_f(v['chance'])} |")
    lines += ["", "The colour box is tuned on this very truth (optimistic); the learned ranking uses none.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Completeness / purity of the ranking vs baselines (mock truth).")
    parser.add_argument("--ranked", required=True)
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--candidates", nargs="+", required=True)
    parser.add_argument("--truths", nargs="+", required=True)
    parser.add_argument("--ir", nargs="*", default=None, help="results/cutouts/ir_on_hsc/{shard}.npz (adds y-J)")
    parser.add_argument("--settings", required=True, help="the run's settings (or its `rank` section) as JSON")
    parser.add_argument("--select", default=None, help="`select` config section as JSON (branch colour cuts)")
    parser.add_argument("--enrichment", type=float, required=True)
    parser.add_argument("--out-json", required=True)
    parser.add_argument("--out-md", required=True)
    args = parser.parse_args(argv)
    settings = parse_settings(args.settings)
    cuts = None
    if args.select:
        sel = parse_settings(args.select)
        cuts = {"min_i_minus_z": sel.get("i_dropout", {}).get("min_i_minus_z", 1.5),
                "min_z_minus_y": sel.get("z_dropout", {}).get("min_z_minus_y", 0.8)}
    candidates = read_candidates(args.candidates)
    truth = pd.concat([pd.read_parquet(p) for p in args.truths], ignore_index=True)
    truth = truth[truth["object_id"].isin(candidates["object_id"])]
    j_mag = None
    if args.ir:
        ids = candidates["object_id"].to_numpy()
        j_mag = pd.Series(j_band_mag(args.ir, ids), index=ids)
    metrics = evaluate(pd.read_parquet(args.ranked), pd.read_parquet(args.embeddings), candidates, truth,
                       settings, args.enrichment, j_mag, cuts)
    write_text_atomic(args.out_json, json.dumps(metrics, indent=2, default=float, allow_nan=True) + "\n")
    write_text_atomic(args.out_md, metrics_markdown(metrics))
    print(f"evaluate: -> {args.out_json}, {args.out_md}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

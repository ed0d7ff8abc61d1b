"""Stage `rank`: score and order the candidates in representation space.

Method (README "Ranking"):

1. **Representations** (``embeddings.parquet``, encoder output, not the projection head) are
   L2-normalised, so the inner product is the cosine similarity SimCLR was trained on.
2. **Score** = smoothed, similarity-weighted kNN vote of known objects. For every candidate the
   ``k_neighbors`` most similar *labelled* objects (``labels.parquet``; the object itself is
   left out, so a known object is scored by its neighbours only) vote with weight
   ``w = max(cos, 0)``: positives are known high-z quasars (``quasar_highz``), negatives every
   other label (``quasar_lowz``, ``brown_dwarf``, ``galaxy``, ``star``, ``other``)::

       score = (sum_j w_j [j is quasar_highz] + alpha * p0) / (sum_j w_j + alpha)

   ``p0`` is the fraction of positives among the labels and ``alpha`` (``PRIOR_STRENGTH``) a
   pseudo-weight, so an object far from every label (all ``w`` ~ 0) gets the prior ``p0``
   instead of a noisy 0 or 1.
3. **Structures**: HDBSCAN (``min_cluster_size``) on a PCA reduction (``PCA_COMPONENTS``) of the
   normalised representations; ``structure_id`` = -1 is noise. Flags (all without truth):

   * ``flag_bd_peninsula``: the object is in a structure whose labelled members are dominated by
     known brown dwarfs (at least ``BD_MIN_LABELS`` of them, a fraction >= ``BD_DOMINANCE`` of
     the structure's labels, and more than ``BD_OVER_QSO`` times its known high-z quasars).
   * ``flag_moving``: *moving-object-like photometry*: detected (S/N >= ``DETECT_SNR``) in
     exactly one band, every other band S/N < ``UNDETECTED_SNR``, and that band is not ``y``.
     (A real dropout keeps its continuum redward of Lyman-alpha, so the band redward of the
     detection must see it too; a y-only detection is exactly what a z ~ 7 quasar looks like and
     is left to the representation.) Whole structures where such objects make up
     >= ``STRUCTURE_FLAG_FRACTION`` of the members are flagged too.
   * ``flag_artefact``: a catalogue pixel flag at the centre (cosmic ray, saturated, bad, edge)
     in a band where the object is detected (S/N >= ``UNDETECTED_SNR``); or a saturated-like
     flux (any band brighter than ``SATURATION_MAG``); or, with ``--tensor-dir``, a masked
     fraction >= ``MASK_FRACTION`` in the central ``MASK_BOX_PX`` square of any grizy band.
     Structures with >= ``STRUCTURE_FLAG_FRACTION`` artefact-like members are flagged too.
4. **Order**: unflagged objects first, by descending score; then flagged ones, by descending
   score (``rank`` 1 = best; ties broken by object_id). ``flagged`` = any of the three flags.

Every tunable named in config comes from the run's ``rank`` settings (k_neighbors,
min_cluster_size); the constants above are documented defaults that the settings JSON may
override with the same names in lower case.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.cluster import HDBSCAN
from sklearn.decomposition import PCA

from workflow_scripts.contracts import BANDS, write_parquet_atomic

POSITIVE_LABEL = "quasar_highz"
CONTAMINANT_LABELS: tuple[str, ...] = ("quasar_lowz", "brown_dwarf", "galaxy", "star", "other")
ALL_LABELS: tuple[str, ...] = (POSITIVE_LABEL,) + CONTAMINANT_LABELS

DEFAULTS: dict[str, Any] = {
    "k_neighbors": 10,
    "min_cluster_size": 8,
    "prior_strength": 1.0,
    "pca_components": 16,
    "detect_snr": 5.0,
    "undetected_snr": 3.0,
    "bd_min_labels": 2,
    "bd_dominance": 0.6,
    "bd_over_qso": 2.0,
    "structure_flag_fraction": 0.5,
    "saturation_mag": 18.0,
    "mask_fraction": 0.3,
    "mask_box_px": 7,
}

FLAG_COLUMNS = ("flag_bd_peninsula", "flag_moving", "flag_artefact")
CENTRE_PIXEL_FLAGS = ("crcenter", "saturatedcenter", "bad", "edge")


def rank_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The `rank` section (accepts a whole run's settings or the section itself) with defaults filled."""
    section = settings.get("rank", settings) if isinstance(settings, dict) else {}
    return {**DEFAULTS, **{k: v for k, v in section.items()}}


def feature_matrix(embeddings: pd.DataFrame) -> np.ndarray:
    """The representation columns (h000, h001, ...) as float64, L2-normalised per row."""
    cols = sorted(c for c in embeddings.columns if c.startswith("h") and c[1:].isdigit())
    x = embeddings[cols].to_numpy(dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


@dataclass(frozen=True)
class KnnVote:
    score: np.ndarray          # (N,) smoothed fraction of high-z quasars among the labelled neighbours
    counts: pd.DataFrame       # (N, labels) neighbour counts per label
    nearest_index: np.ndarray  # (N,) index into the labelled set of the most similar labelled object (-1: none)
    nearest_sim: np.ndarray    # (N,) its cosine similarity
    prior: float


def knn_vote(x: np.ndarray, labels: np.ndarray, k: int, prior_strength: float = 1.0) -> KnnVote:
    """Similarity-weighted kNN vote of the labelled rows of *x* (rows with label "" are unlabelled).

    *x* must be L2-normalised. Each row's own label is left out (leave-one-out).
    """
    labels = np.asarray(labels, dtype=object)
    lab_idx = np.flatnonzero(np.isin(labels, ALL_LABELS))
    n = len(x)
    counts = pd.DataFrame(0, index=np.arange(n), columns=[f"knn_n_{l}" for l in ALL_LABELS])
    if len(lab_idx) == 0:
        return KnnVote(np.full(n, 0.0), counts, np.full(n, -1), np.full(n, np.nan), 0.0)
    lab = labels[lab_idx]
    positive = lab == POSITIVE_LABEL
    prior = float(positive.mean())
    sim = x @ x[lab_idx].T  # (N, L)
    sim[lab_idx, np.arange(len(lab_idx))] = -np.inf  # leave one out
    kk = max(1, min(k, len(lab_idx)))
    order = np.argsort(-sim, axis=1, kind="stable")[:, :kk]
    nn_sim = np.take_along_axis(sim, order, axis=1)
    valid = np.isfinite(nn_sim)
    w = np.where(valid, np.clip(nn_sim, 0.0, None), 0.0)
    pos = positive[order] & valid
    score = ((w * pos).sum(1) + prior_strength * prior) / (w.sum(1) + prior_strength)
    nn_lab = lab[order]
    for l in ALL_LABELS:
        counts[f"knn_n_{l}"] = ((nn_lab == l) & valid).sum(1)
    nearest = np.where(valid[:, 0], lab_idx[order[:, 0]], -1)
    return KnnVote(score, counts, nearest, np.where(valid[:, 0], nn_sim[:, 0], np.nan), prior)


def find_structures(x: np.ndarray, min_cluster_size: int, n_components: int = 16) -> np.ndarray:
    """HDBSCAN structure ids (-1 = noise) on a PCA reduction of the normalised representations."""
    n = len(x)
    if n < max(min_cluster_size, 3):
        return np.full(n, -1, dtype=np.int64)
    nc = int(min(n_components, x.shape[1], n - 1))
    z = PCA(n_components=nc, random_state=0).fit_transform(x) if nc < x.shape[1] else x
    model = HDBSCAN(min_cluster_size=int(min_cluster_size), min_samples=None, copy=True)
    return model.fit_predict(z).astype(np.int64)


def moving_like(candidates: pd.DataFrame, detect_snr: float = 5.0, undetected_snr: float = 3.0) -> np.ndarray:
    """Detected in exactly one band (S/N >= detect_snr, all others < undetected_snr), not the reddest band."""
    snr = candidates[[f"{b}_snr" for b in BANDS]].to_numpy(dtype=float)
    snr = np.nan_to_num(snr, nan=0.0)
    detected = snr >= detect_snr
    quiet = snr < undetected_snr
    one = (detected.sum(1) == 1) & ((detected | quiet).all(1))
    return one & ~detected[:, -1]


def artefact_like(candidates: pd.DataFrame, undetected_snr: float = 3.0, saturation_mag: float = 18.0,
                  mask_fraction: np.ndarray | None = None, max_mask_fraction: float = 0.3) -> np.ndarray:
    """Centre pixel flags in a band with signal, saturated-like brightness, or a mostly masked centre."""
    n = len(candidates)
    out = np.zeros(n, dtype=bool)
    for b in BANDS:
        snr = np.nan_to_num(candidates.get(f"{b}_snr", pd.Series(np.zeros(n))).to_numpy(dtype=float), nan=0.0)
        for flag in CENTRE_PIXEL_FLAGS:
            col = f"{b}_pixelflags_{flag}"
            if col in candidates:
                out |= candidates[col].fillna(False).to_numpy(dtype=bool) & (snr >= undetected_snr)
        mag_col, lim_col = f"{b}_mag", f"{b}_mag_is_limit"
        if mag_col in candidates:
            mag = candidates[mag_col].to_numpy(dtype=float)
            is_lim = candidates[lim_col].fillna(False).to_numpy(dtype=bool) if lim_col in candidates else False
            out |= (mag < saturation_mag) & ~is_lim
    if mask_fraction is not None:
        out |= np.nan_to_num(mask_fraction, nan=0.0) >= max_mask_fraction
    return out


def central_mask_fraction(tensor_dir: str | Path, object_ids: np.ndarray, box_px: int = 7,
                          n_bands: int = 5) -> np.ndarray:
    """Per object, the largest masked fraction over the grizy channels in the central box (NaN if absent)."""
    frac = pd.Series(np.nan, index=pd.Index(object_ids))
    for index_path in sorted(Path(tensor_dir).glob("*.index.parquet")):
        shard = index_path.name[: -len(".index.parquet")]
        mask_path = index_path.with_name(f"{shard}.mask.npy")
        if not mask_path.exists():
            continue
        ids = pd.read_parquet(index_path, columns=["object_id"])["object_id"].to_numpy()
        mask = np.load(mask_path, mmap_mode="r")
        h, w = mask.shape[-2:]
        y0, x0 = (h - box_px) // 2, (w - box_px) // 2
        centre = np.asarray(mask[:, :n_bands, y0:y0 + box_px, x0:x0 + box_px], dtype=bool)
        f = centre.reshape(len(ids), min(n_bands, mask.shape[1]), -1).mean(-1).max(1)
        s = pd.Series(f, index=ids)
        common = frac.index.intersection(s.index)
        frac.loc[common] = s.loc[common].to_numpy()
    return frac.to_numpy()


def structure_flags(structure: np.ndarray, labels: np.ndarray, moving: np.ndarray, artefact: np.ndarray,
                    p: dict[str, Any]) -> pd.DataFrame:
    """Per-structure label counts and the three structure-level flags (index = structure id >= 0)."""
    rows = []
    labels = np.asarray(labels, dtype=object)
    for sid in sorted(set(structure.tolist()) - {-1}):
        m = structure == sid
        lab = labels[m]
        n_lab = int(np.isin(lab, ALL_LABELS).sum())
        n_bd = int((lab == "brown_dwarf").sum())
        n_q = int((lab == POSITIVE_LABEL).sum())
        bd = (n_bd >= p["bd_min_labels"] and n_bd >= p["bd_dominance"] * n_lab and n_bd > p["bd_over_qso"] * n_q)
        rows.append({
            "structure_id": sid, "n": int(m.sum()), "n_labelled": n_lab, "n_brown_dwarf": n_bd,
            "n_quasar_highz": n_q, "moving_fraction": float(moving[m].mean()),
            "artefact_fraction": float(artefact[m].mean()),
            "bd_peninsula": bool(bd),
            "moving": bool(moving[m].mean() >= p["structure_flag_fraction"]),
            "artefact": bool(artefact[m].mean() >= p["structure_flag_fraction"]),
        })
    cols = ["structure_id", "n", "n_labelled", "n_brown_dwarf", "n_quasar_highz", "moving_fraction",
            "artefact_fraction", "bd_peninsula", "moving", "artefact"]
    return pd.DataFrame(rows, columns=cols).set_index("structure_id")


def order_candidates(score: np.ndarray, flagged: np.ndarray, object_id: np.ndarray) -> np.ndarray:
    """Rank (1 = best): unflagged before flagged, then descending score, then ascending object_id."""
    order = np.lexsort((object_id, -np.asarray(score, dtype=float), np.asarray(flagged, dtype=bool)))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(1, len(order) + 1)
    return rank


OUTPUT_BASE_COLUMNS = ["object_id", "ra", "dec", "shard", "selection_branch", "is_i_dropout", "is_z_dropout"]
PHOT_COLUMNS = ([f"{b}_{s}" for b in BANDS for s in ("mag", "magerr", "mag_is_limit", "snr")]
                + ["i_minus_z", "i_minus_z_limit", "z_minus_y", "z_minus_y_limit"])


def rank_candidates(embeddings: pd.DataFrame, candidates: pd.DataFrame, labels: pd.DataFrame | None,
                    settings: dict[str, Any], mask_fraction: pd.Series | None = None) -> pd.DataFrame:
    """The ranked candidate table (sorted by rank). Candidates without a representation are dropped."""
    p = rank_settings(settings)
    emb = embeddings.drop(columns=[c for c in ("shard",) if c in embeddings and c in candidates])
    df = candidates.merge(emb, on="object_id", how="inner", validate="one_to_one")
    df = df.reset_index(drop=True)
    x = feature_matrix(df)
    if labels is not None and len(labels):
        lab = labels.drop_duplicates("object_id").set_index("object_id")
        known = df["object_id"].map(lab["known_label"]).fillna("").astype(str).to_numpy(dtype=object)
        names = df["object_id"].map(lab.get("known_name", pd.Series(dtype=str))).fillna("").astype(str).to_numpy()
        kz = df["object_id"].map(lab.get("known_redshift", pd.Series(dtype=float))).to_numpy(dtype=float)
    else:
        known = np.full(len(df), "", dtype=object)
        names = np.full(len(df), "", dtype=object)
        kz = np.full(len(df), np.nan)
    vote = knn_vote(x, known, int(p["k_neighbors"]), float(p["prior_strength"]))
    structure = find_structures(x, int(p["min_cluster_size"]), int(p["pca_components"]))
    moving = moving_like(df, p["detect_snr"], p["undetected_snr"])
    mf = None if mask_fraction is None else df["object_id"].map(mask_fraction).to_numpy(dtype=float)
    artefact = artefact_like(df, p["undetected_snr"], p["saturation_mag"], mf, p["mask_fraction"])
    stats = structure_flags(structure, known, moving, artefact, p)

    def per_object(col: str) -> np.ndarray:
        s = pd.Series(structure).map(stats[col]) if len(stats) else pd.Series(np.full(len(df), np.nan))
        return s.fillna(False).to_numpy(dtype=bool)

    out = df[[c for c in OUTPUT_BASE_COLUMNS + PHOT_COLUMNS if c in df.columns]].copy()
    out["score"] = vote.score
    out["flag_bd_peninsula"] = per_object("bd_peninsula")
    out["flag_moving"] = moving | per_object("moving")
    out["flag_artefact"] = artefact | per_object("artefact")
    out["flagged"] = out[list(FLAG_COLUMNS)].any(axis=1)
    out["structure_id"] = structure
    out["known_label"] = known.astype(str)
    out["known_name"] = names.astype(str)
    out["known_redshift"] = kz
    has = vote.nearest_index >= 0
    ni = np.where(has, vote.nearest_index, 0)
    out["nearest_known_name"] = np.where(has, names[ni], "").astype(str)
    out["nearest_known_label"] = np.where(has, known[ni], "").astype(str)
    out["nearest_known_id"] = np.where(has, df["object_id"].to_numpy()[ni], -1).astype(np.int64)
    out["nearest_known_distance"] = 1.0 - vote.nearest_sim  # cosine distance in representation space
    for target, tag in ((POSITIVE_LABEL, "qso"), ("brown_dwarf", "bd")):
        idx = np.flatnonzero(known == target)
        if len(idx):
            s = x @ x[idx].T
            s[idx, np.arange(len(idx))] = -np.inf
            j = np.argmax(s, axis=1)
            best = s[np.arange(len(df)), j]
            ok = np.isfinite(best)
            out[f"nearest_known_{tag}_name"] = np.where(ok, names[idx[j]], "").astype(str)
            out[f"nearest_known_{tag}_distance"] = np.where(ok, 1.0 - best, np.nan)
        else:
            out[f"nearest_known_{tag}_name"] = ""
            out[f"nearest_known_{tag}_distance"] = np.nan
    for c in vote.counts.columns:
        out[c] = vote.counts[c].to_numpy(dtype=np.int64)
    out["rank"] = order_candidates(out["score"].to_numpy(), out["flagged"].to_numpy(), out["object_id"].to_numpy())
    cols = ["rank"] + [c for c in out.columns if c != "rank"]
    return out[cols].sort_values("rank").reset_index(drop=True)


def read_candidates(paths: list[str]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    frames = [f for f in frames if len(f)] or frames[:1]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def parse_settings(text: str) -> dict[str, Any]:
    """JSON text, or a path to a JSON file."""
    path = Path(text)
    if not text.lstrip().startswith("{") and path.exists():
        text = path.read_text()
    return json.loads(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rank candidates in representation space (kNN vote + HDBSCAN flags).")
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--candidates", nargs="+", required=True, help="results/candidates/{shard}.parquet, all shards")
    parser.add_argument("--labels", default=None, help="results/known/labels.parquet (optional: no labels = prior only)")
    parser.add_argument("--settings", required=True, help="the run's settings (or its `rank` section) as JSON")
    parser.add_argument("--tensor-dir", default=None, help="results/tensors/{scale}: adds the masked-centre artefact test")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    settings = parse_settings(args.settings)
    labels = pd.read_parquet(args.labels) if args.labels and Path(args.labels).exists() else None
    if labels is None:
        print("rank: no known-object labels; every score is the prior", file=sys.stderr)
    embeddings = pd.read_parquet(args.embeddings)
    candidates = read_candidates(args.candidates)
    mask_fraction = None
    if args.tensor_dir:
        p = rank_settings(settings)
        ids = candidates["object_id"].to_numpy()
        mask_fraction = pd.Series(central_mask_fraction(args.tensor_dir, ids, int(p["mask_box_px"])), index=ids)
    ranked = rank_candidates(embeddings, candidates, labels, settings, mask_fraction)
    write_parquet_atomic(pa.Table.from_pandas(ranked, preserve_index=False), args.out)
    print(f"rank: {len(ranked)} candidates, {int(ranked['flagged'].sum())} flagged, "
          f"{ranked['structure_id'].max() + 1 if len(ranked) else 0} structures -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

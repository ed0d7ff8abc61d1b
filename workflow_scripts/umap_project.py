"""Stage ``umap``: UMAP map of the encoder representations, structures on it, and figures.

The representations (``h000`` ...) of a run are projected with umap-learn using the run's
``umap`` settings (n_neighbors, min_dist, metric, n_components, seed). ``random_state`` is
always set, so the map is reproducible (umap-learn then runs single-threaded). Structures
are found with HDBSCAN (scikit-learn) on the map; ``structure`` = -1 marks noise.

Figures (PNG, one per colouring, each titled with the run and UMAP parameters): i-z, z-y
(upper/lower limits drawn as triangles), y magnitude, y-J (J in a 1" radius aperture on the
IR-on-HSC grid, aperture-corrected for a 0.9" FWHM VISTA PSF; only with IR), selection
branch, HDBSCAN structure, known labels (unknowns grey) and, on the mock sky only, the
true class and the true redshift of quasars - where the quasar track, the z ~ 7 island,
the brown-dwarf peninsula and the moving-object cluster should show.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from workflow_scripts.contracts import atomic_path, flux_to_mag

HSC_PIXEL_ARCSEC = 0.168
#: J aperture radius and the VISTA PSF assumed for its aperture correction.
J_APERTURE_ARCSEC = 1.0
VISTA_PSF_FWHM_ARCSEC = 0.9

DEFAULT_UMAP = {"n_neighbors": 15, "min_dist": 0.1, "metric": "cosine", "n_components": 2, "seed": 42}

#: True-class groups of the mock sky, in drawing order (rare classes last, on top), with colours.
TRUE_CLASS_COLOURS: dict[str, str] = {
    "star": "#bbbbbb",
    "galaxy": "#8c6d31",
    "galaxy LBG": "#e7969c",
    "artefact": "#7f7f7f",
    "moving object": "#17becf",
    "brown dwarf M": "#fdae6b",
    "brown dwarf L": "#e6550d",
    "brown dwarf T": "#7f2704",
    "quasar z<5.7": "#9ecae1",
    "quasar 5.7-6.5": "#3182bd",
    "quasar z>6.5": "#d62728",
    "other": "#dddddd",
}
KNOWN_COLOURS: dict[str, str] = {
    "quasar_highz": "#d62728", "quasar_lowz": "#3182bd", "brown_dwarf": "#e6550d",
    "galaxy": "#8c6d31", "star": "#2ca02c", "other": "#9467bd",
}
BRANCH_COLOURS: dict[str, str] = {"i_dropout": "#1f77b4", "z_dropout": "#d62728", "both": "#9467bd"}


# ----------------------------------------------------------------------------- projection


def representation_columns(columns: Sequence[str]) -> list[str]:
    """The representation columns h000, h001, ... in order."""
    cols = sorted(c for c in columns if len(c) > 1 and c[0] == "h" and c[1:].isdigit())
    if not cols:
        raise ValueError("embeddings have no representation columns (h000, h001, ...)")
    return cols


def umap_settings(settings: dict | None) -> dict:
    """The run's umap section with defaults filled."""
    out = dict(DEFAULT_UMAP)
    out.update(settings or {})
    unknown = set(out) - set(DEFAULT_UMAP)
    if unknown:
        raise ValueError(f"unknown UMAP setting(s) {sorted(unknown)}; allowed {sorted(DEFAULT_UMAP)}")
    return out


def project(features: np.ndarray, settings: dict | None = None) -> np.ndarray:
    """UMAP embedding (n, n_components) of *features*; deterministic for a given seed."""
    import umap

    s = umap_settings(settings)
    x = np.asarray(features, dtype=np.float32)
    n = x.shape[0]
    if n < s["n_components"] + 3:
        raise ValueError(f"UMAP needs at least {s['n_components'] + 3} objects, got {n}")
    n_neighbors = int(min(s["n_neighbors"], n - 1))
    reducer = umap.UMAP(n_neighbors=n_neighbors, min_dist=float(s["min_dist"]), metric=s["metric"],
                        n_components=int(s["n_components"]), random_state=int(s["seed"]),
                        transform_seed=int(s["seed"]), n_jobs=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
        warnings.filterwarnings("ignore", message=".*Graph is not fully connected.*")
        return np.asarray(reducer.fit_transform(x), dtype=np.float64)


def find_structures(coords: np.ndarray, min_cluster_size: int = 8) -> np.ndarray:
    """HDBSCAN cluster label per point of the map (-1 = noise)."""
    from sklearn.cluster import HDBSCAN

    n = coords.shape[0]
    if n < 2:
        return np.full(n, -1, dtype=np.int64)
    m = int(max(2, min(min_cluster_size, n)))
    return HDBSCAN(min_cluster_size=m, copy=True).fit_predict(np.asarray(coords, float)).astype(np.int64)


def umap_table(embeddings: pd.DataFrame, settings: dict | None = None, min_cluster_size: int = 8) -> pd.DataFrame:
    """object_id, x, y[, z], structure for every row of *embeddings*."""
    s = umap_settings(settings)
    coords = project(embeddings[representation_columns(embeddings.columns)].to_numpy(), s)
    out = pd.DataFrame({"object_id": embeddings["object_id"].to_numpy(np.int64)})
    for k, name in zip(range(coords.shape[1]), ("x", "y", "z")):
        out[name] = coords[:, k]
    out["structure"] = find_structures(coords, min_cluster_size)
    return out


# ----------------------------------------------------------------------------- derived columns


def aperture_flux(flux: np.ndarray, coverage: np.ndarray, pixel_xy: np.ndarray,
                  radius_px: float) -> np.ndarray:
    """Sum of *flux* (N, H, W) within *radius_px* of each object's (x, y); NaN if any pixel is uncovered."""
    n, h, w = flux.shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.full(n, np.nan)
    for i in range(n):
        x0, y0 = pixel_xy[i]
        if not (np.isfinite(x0) and np.isfinite(y0)):
            continue
        inside = (xx - x0) ** 2 + (yy - y0) ** 2 <= radius_px ** 2
        if not inside.any() or not coverage[i][inside].all():
            continue
        out[i] = float(np.sum(flux[i][inside], dtype=np.float64))
    return out


def j_magnitudes(ir_paths: Sequence[str | Path], pixel_scale_arcsec: float = HSC_PIXEL_ARCSEC) -> pd.DataFrame:
    """object_id, J_mag from the IR-on-HSC npz files (1" aperture, PSF aperture-corrected, AB)."""
    sigma = VISTA_PSF_FWHM_ARCSEC / 2.3548
    enclosed = 1.0 - np.exp(-J_APERTURE_ARCSEC ** 2 / (2 * sigma ** 2))
    frames = []
    for path in ir_paths:
        with np.load(path, allow_pickle=False) as z:
            bands = [str(b) for b in z["bands"]]
            if "J" not in bands:
                continue
            k = bands.index("J")
            ids = z["object_id"].astype(np.int64)
            flux = aperture_flux(z["flux"][:, k], z["coverage"][:, k], z["pixel_xy"],
                                 J_APERTURE_ARCSEC / pixel_scale_arcsec)
        frames.append(pd.DataFrame({"object_id": ids, "J_mag": flux_to_mag(flux / enclosed)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["object_id", "J_mag"])


def true_class_labels(truth: pd.DataFrame) -> pd.Series:
    """Plot groups of the true class (index object_id): quasars by redshift, brown dwarfs by type, LBGs apart."""
    cls = truth["class"].astype(str).to_numpy()
    sub = truth["subclass"].astype(str).to_numpy()
    z = truth["redshift"].to_numpy(float)
    label = np.full(len(truth), "other", dtype=object)
    label[cls == "star"] = "star"
    label[cls == "galaxy"] = "galaxy"
    label[(cls == "galaxy") & (sub == "lbg")] = "galaxy LBG"
    label[cls == "artefact"] = "artefact"
    label[cls == "moving_object"] = "moving object"
    for t in "MLT":
        label[(cls == "brown_dwarf") & (sub == t)] = f"brown dwarf {t}"
    q = cls == "quasar"
    label[q & (z > 6.5)] = "quasar z>6.5"
    label[q & (z > 5.7) & (z <= 6.5)] = "quasar 5.7-6.5"
    label[q & ~(z > 5.7)] = "quasar z<5.7"
    return pd.Series(label, index=truth["object_id"].to_numpy(np.int64), name="true_class")


# ----------------------------------------------------------------------------- figures


def _title(run: str, settings: dict, what: str) -> str:
    s = umap_settings(settings)
    return (f"{run}: UMAP n_neighbors={s['n_neighbors']}, min_dist={s['min_dist']}, metric={s['metric']}, "
            f"seed={s['seed']}\ncoloured by {what}")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _axes(title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    return fig, ax


def plot_continuous(data: pd.DataFrame, column: str, path: Path, title: str, cmap: str = "viridis",
                    limit_column: str | None = None, label: str | None = None) -> Path:
    """Map coloured by a continuous column; NaN grey; 'lower'/'upper' limits as up/down triangles."""
    fig, ax = _axes(title)
    values = data[column].to_numpy(float)
    ok = np.isfinite(values)
    ax.scatter(data["x"][~ok], data["y"][~ok], s=8, c="#cccccc", label="no value", zorder=1)
    limits = (data[limit_column].astype(str).to_numpy() if limit_column and limit_column in data
              else np.full(len(data), "", dtype=object))
    lo, hi = (np.nanpercentile(values[ok], [2, 98]) if ok.any() else (0.0, 1.0))
    sc = None
    for kind, marker, name in (("", "o", "measured"), ("lower", "^", "lower limit"), ("upper", "v", "upper limit")):
        sel = ok & ((limits == kind) if kind else ~np.isin(limits, ["lower", "upper"]))
        if sel.any():
            sc = ax.scatter(data["x"][sel], data["y"][sel], c=values[sel], cmap=cmap, vmin=lo, vmax=hi,
                            s=14 if kind == "" else 24, marker=marker, edgecolors="none", label=name, zorder=2)
    if sc is not None:
        fig.colorbar(sc, ax=ax, label=label or column)
    ax.legend(loc="best", fontsize=7, markerscale=1.2)
    return _save(fig, path)


def plot_categorical(data: pd.DataFrame, column: str, path: Path, title: str,
                     colours: dict[str, str] | None = None, background: Sequence[str] = ("",)) -> Path:
    """Map coloured by a categorical column; *background* categories grey underneath, rare ones on top."""
    import matplotlib.pyplot as plt

    fig, ax = _axes(title)
    values = data[column].fillna("").astype(str).to_numpy()
    bg = np.isin(values, list(background))
    if bg.any():
        ax.scatter(data["x"][bg], data["y"][bg], s=8, c="#cccccc", edgecolors="none",
                   label=f"unknown ({int(bg.sum())})" if "" in background else f"{', '.join(background)}", zorder=1)
    cats = [c for c in (colours or {}) if c in set(values[~bg])]
    cats += sorted(set(values[~bg]) - set(cats), key=lambda c: -np.sum(values == c))
    cycle = plt.get_cmap("tab20")
    for k, cat in enumerate(cats):
        sel = values == cat
        colour = (colours or {}).get(cat, cycle(k % 20))
        ax.scatter(data["x"][sel], data["y"][sel], s=16, color=colour, edgecolors="k", linewidths=0.2,
                   label=f"{cat} ({int(sel.sum())})", zorder=2 + k)
    ax.legend(loc="best", fontsize=7, markerscale=1.2)
    return _save(fig, path)


def plot_structures(data: pd.DataFrame, path: Path, title: str) -> Path:
    data = data.assign(structure_name=np.where(data["structure"] < 0, "noise",
                                                "structure " + data["structure"].astype(str)))
    return plot_categorical(data, "structure_name", path, title, background=("noise",))


def make_figures(data: pd.DataFrame, run: str, settings: dict, figures_dir: str | Path) -> list[Path]:
    """Every figure that the columns of *data* allow (x, y + candidate/known/truth columns)."""
    d = Path(figures_dir)
    out = [plot_structures(data, d / "umap_structure.png", _title(run, settings, "HDBSCAN structure (grey = noise)"))]
    if "i_minus_z" in data:
        out.append(plot_continuous(data, "i_minus_z", d / "umap_i_minus_z.png", _title(run, settings, "i - z"),
                                   "plasma", "i_minus_z_limit", "i - z (mag)"))
    if "z_minus_y" in data:
        out.append(plot_continuous(data, "z_minus_y", d / "umap_z_minus_y.png", _title(run, settings, "z - y"),
                                   "plasma", "z_minus_y_limit", "z - y (mag)"))
    if "y_mag" in data:
        lim = data["y_mag_is_limit"].map({True: "upper", False: ""}) if "y_mag_is_limit" in data else None
        dd = data.assign(y_mag_limit=lim) if lim is not None else data
        out.append(plot_continuous(dd, "y_mag", d / "umap_y_mag.png", _title(run, settings, "y magnitude"),
                                   "viridis_r", "y_mag_limit" if lim is not None else None, "y (AB mag)"))
    if "y_minus_J" in data and np.isfinite(data["y_minus_J"]).any():
        out.append(plot_continuous(data, "y_minus_J", d / "umap_y_minus_J.png",
                                   _title(run, settings, 'y - J (J in 1" aperture)'), "coolwarm", None, "y - J (mag)"))
    if "selection_branch" in data:
        out.append(plot_categorical(data, "selection_branch", d / "umap_selection_branch.png",
                                    _title(run, settings, "selection branch"), BRANCH_COLOURS, background=()))
    if "known_label" in data:
        out.append(plot_categorical(data, "known_label", d / "umap_known_labels.png",
                                    _title(run, settings, "known objects (grey = unknown)"), KNOWN_COLOURS))
    if "true_class" in data:
        out.append(plot_categorical(data, "true_class", d / "umap_true_class.png",
                                    _title(run, settings, "true class (mock sky)"), TRUE_CLASS_COLOURS, background=()))
    if "true_redshift" in data and np.isfinite(data["true_redshift"]).any():
        q = data.assign(qz=np.where(data["true_class"].astype(str).str.startswith("quasar"),
                                    data["true_redshift"], np.nan))
        out.append(plot_continuous(q, "qz", d / "umap_true_redshift.png",
                                   _title(run, settings, "true redshift of quasars (grey = not a quasar)"),
                                   "turbo", None, "true redshift"))
    return out


# ----------------------------------------------------------------------------- assembling


def assemble(umap_df: pd.DataFrame, candidates: pd.DataFrame | None = None, labels: pd.DataFrame | None = None,
             j_mag: pd.DataFrame | None = None, truth: pd.DataFrame | None = None) -> pd.DataFrame:
    """The map joined (by object_id) with candidate columns, known labels, J magnitude and truth."""
    data = umap_df.copy()
    if candidates is not None:
        keep = [c for c in ("object_id", "i_minus_z", "i_minus_z_limit", "z_minus_y", "z_minus_y_limit", "y_mag",
                            "y_mag_is_limit", "selection_branch") if c in candidates]
        data = data.merge(candidates[keep].drop_duplicates("object_id"), on="object_id", how="left")
    if labels is not None:
        data = data.merge(labels[["object_id", "known_label"]].drop_duplicates("object_id"), on="object_id", how="left")
        data["known_label"] = data["known_label"].fillna("")
    if j_mag is not None and len(j_mag) and "y_mag" in data:
        data = data.merge(j_mag.drop_duplicates("object_id"), on="object_id", how="left")
        y = data["y_mag"].where(~data.get("y_mag_is_limit", pd.Series(False, index=data.index)).astype(bool))
        data["y_minus_J"] = y - data["J_mag"]
    if truth is not None:
        tc = true_class_labels(truth)
        data["true_class"] = tc.reindex(data["object_id"].to_numpy()).fillna("other").to_numpy()
        z = truth.set_index("object_id")["redshift"]
        data["true_redshift"] = z[~z.index.duplicated()].reindex(data["object_id"].to_numpy()).to_numpy(float)
    return data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workflow_scripts.umap_project", description=__doc__.split("\n")[0])
    ap.add_argument("--embeddings", required=True)
    ap.add_argument("--candidates", nargs="*", default=[], help="results/candidates/{shard}.parquet (all shards)")
    ap.add_argument("--ir", nargs="*", default=[], help="results/cutouts/ir_on_hsc/{shard}.npz (optional)")
    ap.add_argument("--labels", default=None, help="results/known/labels.parquet")
    ap.add_argument("--settings", default="{}", help="JSON of the run's umap section")
    ap.add_argument("--min-cluster-size", type=int, default=8, help="HDBSCAN min_cluster_size (run's rank section)")
    ap.add_argument("--run", required=True)
    ap.add_argument("--out", required=True, help="results/runs/{run}/umap.parquet")
    ap.add_argument("--figures-dir", required=True)
    ap.add_argument("--truths", nargs="*", default=[], help="mock only: results/truth/{shard}.parquet")
    args = ap.parse_args(argv)

    settings = umap_settings(json.loads(args.settings))
    emb = pd.read_parquet(args.embeddings)
    table = umap_table(emb, settings, args.min_cluster_size)
    with atomic_path(args.out) as tmp:
        table.to_parquet(tmp, index=False)
    candidates = (pd.concat([pd.read_parquet(p) for p in args.candidates], ignore_index=True)
                  if args.candidates else None)
    labels = pd.read_parquet(args.labels) if args.labels else None
    j_mag = j_magnitudes(args.ir) if args.ir else None
    truth = (pd.concat([pd.read_parquet(p, columns=["object_id", "class", "subclass", "redshift"])
                        for p in args.truths], ignore_index=True) if args.truths else None)
    data = assemble(table, candidates, labels, j_mag, truth)
    paths = make_figures(data, args.run, settings, args.figures_dir)
    n_struct = int(table["structure"].max() + 1) if len(table) else 0
    print(f"umap: {len(table)} objects, {n_struct} structures, noise {int((table['structure'] < 0).sum())}; "
          f"wrote {args.out} and {len(paths)} figures in {args.figures_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

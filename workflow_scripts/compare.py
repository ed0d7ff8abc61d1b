"""Stage `compare`: every run's key settings and metrics side by side (the talk's tuning study).

Writes ``{prefix}.csv``, ``{prefix}.md`` and ``{prefix}.png`` (purity and completeness of the
z > 6.5 quasars at top-K per run, K = 50 where available). A run without ``metrics.json``
(real sky: no truth) gets empty metric cells.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workflow_scripts.contracts import atomic_path, write_text_atomic
from workflow_scripts.rank import parse_settings

PLOT_K = "50"


def run_parameters(settings: dict[str, Any]) -> dict[str, Any]:
    umap = settings.get("umap", {})
    return {
        "normalisation": settings.get("normalisation"), "temperature": settings.get("temperature"),
        "loss": settings.get("loss"), "epochs": settings.get("epochs"), "batch_size": settings.get("batch_size"),
        "scale_arcsec": settings.get("scale_arcsec"), "umap_n_neighbors": umap.get("n_neighbors"),
        "umap_min_dist": umap.get("min_dist"), "umap_metric": umap.get("metric"),
    }


def run_metrics(metrics: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not metrics:
        return out
    for name, t in metrics.get("targets", {}).items():
        for k, c in t.get("comparison", {}).items():
            out[f"{name}_completeness@{k}"] = c.get("completeness")
            out[f"{name}_purity@{k}"] = c.get("purity_learned")
            out[f"{name}_purity_rw@{k}"] = c.get("purity_rw_learned")
            out[f"{name}_purity_box@{k}"] = c.get("purity_box")
            out[f"{name}_purity_cut@{k}"] = c.get("purity_catalog_cut")
    for cls, v in metrics.get("knn_label_purity", {}).get("per_class", {}).items():
        out[f"knn_purity_{cls}"] = v.get("knn_purity")
    return out


def compare_table(runs: dict[str, Path], settings: dict[str, dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for name, folder in runs.items():
        path = Path(folder) / "metrics.json"
        metrics = json.loads(path.read_text()) if path.exists() else None
        rows.append({"run": name, **run_parameters(settings.get(name, {})), **run_metrics(metrics)})
    return pd.DataFrame(rows)


def table_markdown(df: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "–" if not np.isfinite(v) else f"{v:.3g}"
        return "–" if v is None else str(v)
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(["# Runs side by side", "", head, sep, *body, ""])


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(df) + 2), 3.5))
    x = np.arange(len(df))
    for off, col, lab in ((-0.2, f"z65_purity@{PLOT_K}", f"purity top-{PLOT_K}"),
                          (0.2, f"z65_completeness@{PLOT_K}", f"completeness top-{PLOT_K}")):
        vals = pd.to_numeric(df[col], errors="coerce").fillna(0).to_numpy() if col in df else np.zeros(len(df))
        ax.bar(x + off, vals, width=0.4, label=lab)
    ax.set_xticks(x, df["run"].tolist(), rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("z > 6.5 quasars")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="All runs' settings and metrics side by side.")
    parser.add_argument("--runs", nargs="+", required=True, help="NAME=results/runs/NAME")
    parser.add_argument("--settings", required=True, help="JSON: {run name: resolved run settings}")
    parser.add_argument("--out-prefix", required=True)
    args = parser.parse_args(argv)
    runs = dict(item.split("=", 1) for item in args.runs)
    df = compare_table({k: Path(v) for k, v in runs.items()}, parse_settings(args.settings))
    prefix = Path(args.out_prefix)
    with atomic_path(prefix.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)
    write_text_atomic(prefix.with_suffix(".md"), table_markdown(df))
    plot(df, prefix.with_suffix(".png"))
    print(f"compare: {len(df)} runs -> {prefix}.csv/.md/.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Selection report: cut flows of all shards side by side and in total, and the colour-colour figure.

Reads only what `select` wrote (reports, colour samples, candidates): it works the same
for the mock sky and the HSC archive.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.contracts import atomic_path, write_text_atomic

BRANCH_STYLE = {"i_dropout": ("tab:orange", "o"), "z_dropout": ("tab:red", "s")}


def cut_flow_table(reports: list[dict]) -> pd.DataFrame:
    """Long table (shard, branch, step, cut, remaining) with a `total` pseudo-shard summed over shards."""
    rows = []
    for rep in reports:
        rows.append({"shard": rep["shard"], "branch": "catalogue", "step": 0, "cut": "all rows", "remaining": rep["rows"]})
        for branch, flow in rep["branches"].items():
            rows += [
                {"shard": rep["shard"], "branch": branch, "step": i + 1, "cut": c["cut"], "remaining": c["remaining"]}
                for i, c in enumerate(flow)
            ]
        rows.append({"shard": rep["shard"], "branch": "any", "step": 99, "cut": "selected (either branch)",
                     "remaining": rep["selected"].get("any", 0)})
    table = pd.DataFrame(rows)
    total = table.groupby(["branch", "step", "cut"], as_index=False, sort=False)["remaining"].sum()
    total.insert(0, "shard", "total")
    return pd.concat([table, total], ignore_index=True)


def markdown_cut_flow(table: pd.DataFrame) -> str:
    """Cut flow as a Markdown table: one row per cut, one column per shard plus the total."""
    wide = table.pivot_table(index=["branch", "step", "cut"], columns="shard", values="remaining", sort=False)
    shards = [s for s in wide.columns if s != "total"] + ["total"]
    wide = wide[shards].astype(int).reset_index()
    header = "| branch | cut | " + " | ".join(shards) + " |"
    lines = [header, "|" + " --- |" * (2 + len(shards))]
    for _, row in wide.iterrows():
        lines.append(f"| {row['branch']} | {row['cut']} | " + " | ".join(str(row[s]) for s in shards) + " |")
    return "\n".join(lines) + "\n"


def plot_colour_colour(sample: pd.DataFrame, candidates: pd.DataFrame, select_cfg: dict, path: Path,
                       title: str = "Dropout selection", colour_by: str | None = None) -> None:
    """i - z versus z - y: clean bright point sources (grey), candidates, and the colour cuts.

    Limits are drawn as arrows: a lower limit on i - z points up, on z - y points right.
    With *colour_by*, candidates are coloured by that column (e.g. the true class).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    bg = sample[~sample.get("selected", pd.Series(False, index=sample.index)).astype(bool)]
    ax.scatter(bg["z_minus_y"], bg["i_minus_z"], s=2, c="0.7", lw=0, label=f"clean bright point sources ({len(bg)})",
               rasterized=True)
    groups = (candidates.groupby(colour_by) if colour_by else candidates.groupby("selection_branch"))
    cmap = plt.get_cmap("tab10")
    xlim, ylim = (-1.0, 3.5), (-1.0, 5.0)
    for k, (label, grp) in enumerate(groups):
        colour, marker = BRANCH_STYLE.get(label, (cmap(k % 10), "o"))
        # i and z both undetected: i - z is unknown; park such sources at the top, arrow up
        grp = grp.assign(i_minus_z=grp["i_minus_z"].fillna(ylim[1] - 0.3),
                         i_minus_z_limit=grp["i_minus_z_limit"].replace("none", "lower"))
        ax.scatter(grp["z_minus_y"], grp["i_minus_z"], s=14, color=colour, marker=marker, lw=0.3,
                   edgecolor="k", label=f"{label} ({len(grp)})", zorder=3)
        up = grp["i_minus_z_limit"] == "lower"
        right = grp["z_minus_y_limit"] == "lower"
        ax.quiver(grp.loc[up, "z_minus_y"], grp.loc[up, "i_minus_z"], 0, 1, color=colour, scale=30, width=0.003,
                  zorder=2)
        ax.quiver(grp.loc[right, "z_minus_y"], grp.loc[right, "i_minus_z"], 1, 0, color=colour, scale=30,
                  width=0.003, zorder=2)
    ax.text(xlim[0] + 0.05, ylim[1] - 0.12, "i and z undetected (i - z unknown)", ha="left", va="top", fontsize=7, color="0.3")
    ax.axhline(ylim[1] - 0.55, color="0.6", lw=0.5)
    if select_cfg["i_dropout"]["enabled"]:
        cut = select_cfg["i_dropout"]["min_i_minus_z"]
        ax.axhline(cut, color="tab:orange", ls="--", lw=1)
        ax.text(xlim[0] + 0.05, cut + 0.05, f"i-dropout: i - z > {cut}", color="tab:orange", fontsize=8)
    if select_cfg["z_dropout"]["enabled"]:
        cut = select_cfg["z_dropout"]["min_z_minus_y"]
        ax.axvline(cut, color="tab:red", ls="--", lw=1)
        ax.text(cut + 0.05, ylim[0] + 0.1, f"z-dropout: z - y > {cut}", color="tab:red", fontsize=8, rotation=90)
    ax.set(xlim=xlim, ylim=ylim, xlabel="z - y (AB, extinction-corrected)", ylabel="i - z (AB, extinction-corrected)",
           title=title)
    ax.legend(loc="lower right", fontsize=7, markerscale=1.5)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def read_all(paths: list[str]) -> pd.DataFrame:
    frames = [pd.read_parquet(p) for p in paths]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.read_parquet(paths[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Combine per-shard selection reports; draw the colour-colour figure.")
    parser.add_argument("--reports", nargs="+", required=True)
    parser.add_argument("--samples", nargs="+", required=True)
    parser.add_argument("--candidates", nargs="+", required=True)
    parser.add_argument("--select", required=True, help="`select` config section as JSON")
    parser.add_argument("--csv", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--figure", required=True)
    args = parser.parse_args(argv)

    reports = [json.loads(Path(p).read_text()) for p in args.reports]
    table = cut_flow_table(reports)
    with atomic_path(args.csv) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(args.markdown, "# Selection cut flow (sources remaining after each cut)\n\n" + markdown_cut_flow(table))
    candidates = read_all(args.candidates)
    plot_colour_colour(read_all(args.samples), candidates, json.loads(args.select), Path(args.figure),
                       title=f"Dropout selection: {len(candidates)} candidates in {len(reports)} shards")
    print(f"selection: {len(candidates)} candidates; report {args.markdown}; figure {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

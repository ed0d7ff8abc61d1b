"""Evaluate the catalogue selection against the mock sky's truth (the only stage here that reads truth).

Outputs the cut flow per true class (summed over shards), the completeness of true
high-redshift quasars brighter than the magnitude cuts, and the colour-colour figure
coloured by true class. Counts are on the enriched mock sky; the enrichment factor is
stated in every output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.contracts import flux_to_mag, write_text_atomic
from workflow_scripts.select import CutFlow, iter_catalog_batches, select_batch
from workflow_scripts.selection_report import plot_colour_colour, read_all

#: Truth-table label used for the per-class cut flow: class, with quasars split by redshift.
REDSHIFT_BINS = ((6.5, np.inf, "quasar z>6.5"), (5.7, 6.5, "quasar 5.7<z<6.5"), (-np.inf, 5.7, "quasar z<5.7"))


def truth_labels(truth: pd.DataFrame) -> pd.Series:
    """One label per object: the true class, quasars split into redshift bins, brown dwarfs by subclass,
    z ~ 6 Lyman-break galaxies apart from other galaxies."""
    label = truth["class"].astype(str).copy()
    bd = truth["class"] == "brown_dwarf"
    label[bd] = "brown_dwarf " + truth.loc[bd, "subclass"].astype(str)
    label[truth["subclass"] == "lbg"] = "galaxy lbg z~6"  # the Lyman-break galaxies that mimic quasars
    for lo, hi, name in REDSHIFT_BINS:
        label[(truth["class"] == "quasar") & (truth["redshift"] > lo) & (truth["redshift"] <= hi)] = name
    return pd.Series(label.to_numpy(), index=truth["object_id"].to_numpy())


def class_cut_flow(catalog_paths: list[str], truth_paths: list[str], select_cfg: dict) -> dict:
    """Stream every shard through the selection with true-class labels; return the summed cut flow."""
    flow = CutFlow()
    for cat_path, truth_path in zip(catalog_paths, truth_paths):
        labels = truth_labels(pd.read_parquet(truth_path))
        for batch in iter_catalog_batches(cat_path, select_cfg["batch_rows"]):
            groups = labels.reindex(batch["object_id"].to_numpy()).fillna("unknown").to_numpy()
            select_batch(batch, select_cfg, flow, groups)
    return flow.as_dict()


def completeness(truth: pd.DataFrame, candidates: pd.DataFrame, select_cfg: dict) -> dict:
    """Fraction of true quasars brighter than the magnitude cut that the selection keeps.

    "Brighter than the cut" uses the true (noiseless) flux in the branch's detection band:
    z < max_mag_z for z > 5.7 quasars (i-dropout regime), y < max_mag_y for z > 6.5.
    """
    selected = set(candidates["object_id"].tolist())
    out = {}
    # each physical object once: overlap re-detections (duplicate_of != -1) are not extra targets
    originals = truth[truth["duplicate_of"] == -1] if "duplicate_of" in truth else truth
    quasars = originals[originals["class"] == "quasar"]
    for name, zlo, zhi, band, key in (
        ("z>6.5", 6.5, np.inf, "y", ("z_dropout", "max_mag_y")),
        ("5.7<z<6.5", 5.7, 6.5, "z", ("i_dropout", "max_mag_z")),
        ("z>5.7", 5.7, np.inf, None, None),
    ):
        in_z = quasars[(quasars["redshift"] > zlo) & (quasars["redshift"] <= zhi)]
        if band is None:  # bright in either detection band
            bright = (flux_to_mag(in_z["flux_true_z"]) < select_cfg["i_dropout"]["max_mag_z"]) | (
                flux_to_mag(in_z["flux_true_y"]) < select_cfg["z_dropout"]["max_mag_y"])
            cut = "z < max_mag_z or y < max_mag_y"
        else:
            limit = select_cfg[key[0]][key[1]]
            bright = flux_to_mag(in_z[f"flux_true_{band}"]) < limit
            cut = f"true {band} < {limit}"
        pool = in_z[np.asarray(bright)]
        kept = int(pool["object_id"].isin(selected).sum())
        out[name] = {"brighter_than": cut, "true": len(pool), "selected": kept,
                     "completeness": kept / len(pool) if len(pool) else None}
    return out


def class_table_markdown(flow: dict) -> str:
    """Per-class cut flow: one row per (branch, cut), one column per class."""
    classes = sorted(flow["group_rows"])
    lines = ["| branch | cut | " + " | ".join(classes) + " |", "|" + " --- |" * (2 + len(classes))]
    lines.append("| catalogue | all rows | " + " | ".join(str(flow["group_rows"].get(c, 0)) for c in classes) + " |")
    for branch, steps in flow["group_branches"].items():
        for step in steps:
            lines.append(f"| {branch} | {step['cut']} | " + " | ".join(str(step["remaining"].get(c, 0)) for c in classes) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Selection versus mock truth: per-class cut flow and completeness.")
    parser.add_argument("--catalogs", nargs="+", required=True)
    parser.add_argument("--truths", nargs="+", required=True)
    parser.add_argument("--candidates", nargs="+", required=True)
    parser.add_argument("--samples", nargs="+", required=True)
    parser.add_argument("--select", required=True, help="`select` config section as JSON")
    parser.add_argument("--enrichment", required=True, type=float)
    parser.add_argument("--json", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--figure", required=True)
    args = parser.parse_args(argv)

    cfg = json.loads(args.select)
    flow = class_cut_flow(args.catalogs, args.truths, cfg)
    truth = read_all(args.truths)
    candidates = read_all(args.candidates)
    comp = completeness(truth, candidates, cfg)
    result = {"enrichment": args.enrichment, "completeness": comp, "cut_flow_by_class": flow}
    write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")

    comp_lines = [f"- {k}: {v['selected']}/{v['true']} selected ({v['brighter_than']})"
                  + (f" = {100 * v['completeness']:.1f} %" if v["completeness"] is not None else "")
                  for k, v in comp.items()]
    text = (f"# Selection versus truth (mock sky, quasar enrichment x{args.enrichment:g})\n\n"
            "## Completeness of true quasars brighter than the magnitude cut\n\n" + "\n".join(comp_lines) +
            "\n\n## Sources remaining after each cut, per true class\n\n" + class_table_markdown(flow))
    write_text_atomic(args.markdown, text)

    labels = truth_labels(truth)
    candidates = candidates.assign(true_class=labels.reindex(candidates["object_id"].to_numpy()).to_numpy())
    plot_colour_colour(read_all(args.samples), candidates, cfg, Path(args.figure), colour_by="true_class",
                       title=f"Candidates by true class (mock, enrichment x{args.enrichment:g})")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

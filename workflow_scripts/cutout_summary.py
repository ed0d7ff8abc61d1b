"""Summary of the cutout manifests: objects per status, per survey and band (and the failure reasons)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from workflow_scripts.cutout_cache import STATUSES, read_manifest
from workflow_scripts.contracts import write_text_atomic


def summarise(manifests: list[str]) -> pd.DataFrame:
    """Counts per (survey, band, status); the survey is the manifest's grandparent directory name."""
    frames = []
    for path in manifests:
        df = read_manifest(path)
        frames.append(df.assign(survey=Path(path).parent.parent.name, shard=Path(path).parent.name))
    allrows = pd.concat(frames, ignore_index=True)
    table = allrows.pivot_table(index=["survey", "band"], columns="status", values="object_id", aggfunc="count",
                                fill_value=0)
    return table.reindex(columns=list(STATUSES), fill_value=0).reset_index(), allrows


def markdown(table: pd.DataFrame, allrows: pd.DataFrame) -> str:
    lines = ["# Cutouts per survey, band and status", "", "| survey | band | " + " | ".join(STATUSES) + " |",
             "|" + " --- |" * (2 + len(STATUSES))]
    for _, row in table.iterrows():
        lines.append(f"| {row['survey']} | {row['band']} | " + " | ".join(str(row[s]) for s in STATUSES) + " |")
    failed = allrows[allrows["status"] == "failed"]
    if len(failed):
        lines += ["", "## Failure reasons", ""]
        lines += [f"- {reason} ({n})" for reason, n in failed["reason"].value_counts().items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    table, allrows = summarise(args.manifests)
    text = markdown(table, allrows)
    write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

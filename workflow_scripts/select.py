"""Dropout selection of z > 5.7 quasar candidates from an HSC catalogue shard.

Two redshift-aware branches (SCIENCE.md; SHELLQs, Matsuoka et al. 2016, 2018, 2022):

* ``i_dropout`` (z ~ 5.7-6.9): bright and significant in z, large i - z, undetected in g, r.
* ``z_dropout`` (z ~ 6.6-7.1): bright and significant in y, large z - y, undetected in g, r, i.

Both require a clean, point-like, primary detection. Magnitudes are PSF magnitudes
corrected for Galactic extinction; an undetected band enters magnitudes and colours as
an upper limit on its flux. A source passing both branches is labelled ``z_dropout``
(the higher-redshift reading) and keeps both boolean columns.

The shard is streamed in record batches, so memory is bounded by the batch size and not by
the catalogue size. Every cut is counted as a cumulative cut flow per branch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from workflow_scripts.contracts import (
    BANDS,
    NJY_ZEROPOINT_MAG,
    atomic_path,
    check_catalog_schema,
    write_parquet_atomic,
    write_text_atomic,
)

log = logging.getLogger(__name__)

BRANCHES: tuple[str, ...] = ("i_dropout", "z_dropout")
#: Band whose magnitude, S/N, morphology and flags define a detection in each branch.
DETECTION_BAND = {"i_dropout": "z", "z_dropout": "y"}
#: Colours derived for every row: (blue band, red band).
COLOURS: tuple[tuple[str, str], ...] = (("i", "z"), ("z", "y"))
#: Pogson's 2.5 / ln(10): magnitude error = this / S/N.
_MAG_ERR_PER_INV_SNR = 2.5 / np.log(10.0)


# --------------------------------------------------------------------------- photometry
def derive_photometry(df: pd.DataFrame, nondetection_snr: float, limit_snr: float) -> pd.DataFrame:
    """Extinction-corrected magnitudes, errors, S/N and colours with upper limits.

    For each band b: ``b_snr``; ``b_detected`` (S/N >= nondetection_snr); ``b_mag`` (the
    measured magnitude, or the ``limit_snr``-sigma limit when undetected); ``b_magerr`` (NaN
    for limits); ``b_mag_is_limit``. For each colour ``x_minus_y``: the value and
    ``x_minus_y_limit`` = ``""`` (measured), ``"lower"`` (blue band undetected: the true
    colour is redder), ``"upper"`` (red band undetected) or ``"none"`` (neither detected).
    """
    out = {}
    for b in BANDS:
        flux = df[f"{b}_psfflux_flux"].to_numpy(dtype=float)
        err = df[f"{b}_psfflux_fluxerr"].to_numpy(dtype=float)
        ext = df[f"a_{b}"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = np.where(err > 0, flux / err, np.nan)
            detected = snr >= nondetection_snr
            measured = -2.5 * np.log10(np.where(detected, flux, np.nan))
            limit = -2.5 * np.log10(np.where(err > 0, limit_snr * err, np.nan))
            magerr = np.where(detected, _MAG_ERR_PER_INV_SNR / snr, np.nan)
        out[f"{b}_snr"] = snr
        out[f"{b}_detected"] = detected
        out[f"{b}_mag"] = np.where(detected, measured, limit) + NJY_ZEROPOINT_MAG - ext
        out[f"{b}_magerr"] = magerr
        out[f"{b}_mag_is_limit"] = ~detected
    for blue, red in COLOURS:
        name = f"{blue}_minus_{red}"
        det_blue, det_red = out[f"{blue}_detected"], out[f"{red}_detected"]
        out[name] = out[f"{blue}_mag"] - out[f"{red}_mag"]
        kind = np.full(len(df), "", dtype=object)
        kind[~det_blue & det_red] = "lower"
        kind[det_blue & ~det_red] = "upper"
        kind[~det_blue & ~det_red] = "none"
        out[f"{name}_limit"] = kind
        # A colour with both bands undetected says nothing.
        out[name] = np.where(kind == "none", np.nan, out[name])
    return pd.DataFrame(out, index=df.index)


def colour_exceeds(value: np.ndarray, limit_kind: np.ndarray, threshold: float) -> np.ndarray:
    """True where a colour is known to exceed *threshold*: measured or a lower limit above it."""
    with np.errstate(invalid="ignore"):
        above = value > threshold
    return above & ((limit_kind == "") | (limit_kind == "lower"))


# --------------------------------------------------------------------------- cuts
@dataclass(frozen=True)
class Cut:
    """One named selection step (cumulative within its branch)."""

    name: str
    mask: np.ndarray


def branch_cuts(df: pd.DataFrame, phot: pd.DataFrame, cfg: dict, branch: str) -> list[Cut]:
    """The ordered cuts of *branch* as boolean masks over *df* (not yet cumulative)."""
    bcfg = cfg[branch]
    det = DETECTION_BAND[branch]
    det_bands = ("z", "y") if branch == "i_dropout" else ("y",)
    n = len(df)
    cuts = [Cut("isprimary", df["isprimary"].to_numpy(bool) if cfg["require_primary"] else np.ones(n, bool))]

    flags = np.zeros(n, bool)
    for b in det_bands:
        for flag in cfg["reject_pixel_flags"]:
            flags |= df[f"{b}_pixelflags_{flag}"].to_numpy(bool)
    cuts.append(Cut(f"clean pixels ({','.join(det_bands)}: no {'/'.join(cfg['reject_pixel_flags'])})", ~flags))

    if cfg["reject_psfflux_flag"]:
        bad = np.zeros(n, bool)
        for b in det_bands:
            bad |= df[f"{b}_psfflux_flag"].to_numpy(bool)
        cuts.append(Cut(f"psfflux ok ({','.join(det_bands)})", ~bad))

    visits = np.ones(n, bool)
    for b in det_bands:
        visits &= df[f"{b}_inputcount_value"].to_numpy() >= cfg["min_inputcount"]
    cuts.append(Cut(f"inputcount >= {cfg['min_inputcount']} ({','.join(det_bands)})", visits))

    point = np.zeros(n, bool)
    with np.errstate(invalid="ignore"):
        for b in bcfg["morphology_bands"]:
            point |= df[f"{b}_extendedness_value"].to_numpy(float) < cfg["max_extendedness"]
    morph = " or ".join(bcfg["morphology_bands"])
    cuts.append(Cut(f"point-like ({morph} extendedness < {cfg['max_extendedness']})", point))

    mag_key, snr_key = f"max_mag_{det}", f"min_snr_{det}"
    mag = phot[f"{det}_mag"].to_numpy()
    with np.errstate(invalid="ignore"):
        cuts.append(Cut(f"{det} < {bcfg[mag_key]}", (mag < bcfg[mag_key]) & ~phot[f"{det}_mag_is_limit"].to_numpy()))
        cuts.append(Cut(f"S/N({det}) > {bcfg[snr_key]}", phot[f"{det}_snr"].to_numpy() > bcfg[snr_key]))

    blue = bcfg["undetected_bands"]
    if blue:
        undetected = np.ones(n, bool)
        for b in blue:
            undetected &= ~phot[f"{b}_detected"].to_numpy()
        cuts.append(Cut(f"undetected in {','.join(blue)} (S/N < {cfg['nondetection_snr']})", undetected))

    if branch == "i_dropout":
        if bcfg["require_y_detection"]:
            cuts.append(Cut("detected in y", phot["y_detected"].to_numpy()))
        iz = colour_exceeds(phot["i_minus_z"].to_numpy(), phot["i_minus_z_limit"].to_numpy(), bcfg["min_i_minus_z"])
        cuts.append(Cut(f"i - z > {bcfg['min_i_minus_z']}", iz))
        if bcfg["max_z_minus_y"] is not None:
            with np.errstate(invalid="ignore"):
                flat = phot["z_minus_y"].to_numpy() < bcfg["max_z_minus_y"]
            cuts.append(Cut(f"z - y < {bcfg['max_z_minus_y']}", flat))
    else:
        zy = colour_exceeds(phot["z_minus_y"].to_numpy(), phot["z_minus_y_limit"].to_numpy(), bcfg["min_z_minus_y"])
        cuts.append(Cut(f"z - y > {bcfg['min_z_minus_y']}", zy))
    return cuts


def colour_sample_mask(cuts: list[Cut]) -> np.ndarray:
    """Rows that pass every cut of a branch except the colour and non-detection cuts.

    These are the clean, bright point sources drawn as the background population of the
    colour-colour figure.
    """
    mask = np.ones(len(cuts[0].mask), bool)
    for cut in cuts:
        if cut.name.startswith(("undetected", "i - z", "z - y", "detected in")):
            continue
        mask &= cut.mask
    return mask


def count_labels(target: dict, labels: np.ndarray) -> None:
    """Add the occurrences of each label to *target*."""
    values, counts = np.unique(labels, return_counts=True)
    for value, count in zip(values, counts):
        target[str(value)] = target.get(str(value), 0) + int(count)


@dataclass
class CutFlow:
    """Cumulative counts after each cut, per branch; summed over batches.

    With group labels (e.g. the true class of each row on the mock sky) it also counts
    every step per group.
    """

    rows: int = 0
    counts: dict[str, list[list]] = field(default_factory=dict)
    selected: dict[str, int] = field(default_factory=dict)
    group_rows: dict[str, int] = field(default_factory=dict)
    group_counts: dict[str, list[dict]] = field(default_factory=dict)

    def add_rows(self, n: int, groups: np.ndarray | None = None) -> None:
        self.rows += n
        if groups is not None:
            count_labels(self.group_rows, groups)

    def add(self, branch: str, cuts: list[Cut], groups: np.ndarray | None = None) -> np.ndarray:
        """Accumulate the cumulative counts of *cuts* (and per group label); return the final mask."""
        mask = np.ones(len(cuts[0].mask), bool)
        flow = self.counts.setdefault(branch, [[c.name, 0] for c in cuts])
        per_group = self.group_counts.setdefault(branch, [{} for _ in cuts])
        for entry, step_groups, cut in zip(flow, per_group, cuts):
            mask &= cut.mask
            entry[1] += int(mask.sum())
            if groups is not None:
                count_labels(step_groups, groups[mask])
        return mask

    def as_dict(self) -> dict:
        out = {
            "rows": self.rows,
            "branches": {b: [{"cut": n, "remaining": c} for n, c in flow] for b, flow in self.counts.items()},
            "selected": self.selected,
        }
        if self.group_rows:
            out["group_rows"] = self.group_rows
            out["group_branches"] = {
                b: [{"cut": name, "remaining": dict(sorted(g.items()))} for (name, _), g in zip(self.counts[b], groups)]
                for b, groups in self.group_counts.items()
            }
        return out


# --------------------------------------------------------------------------- deterministic sampling
def object_hash(object_id: np.ndarray) -> np.ndarray:
    """splitmix64 of object_id: a stable, uniform key for deterministic subsampling."""
    with np.errstate(over="ignore"):
        z = object_id.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def keep_smallest_hash(sample: pd.DataFrame, k: int) -> pd.DataFrame:
    """Bottom-k by object hash: a uniform sample of fixed size that does not depend on batch order."""
    if len(sample) <= k:
        return sample
    keys = object_hash(sample["object_id"].to_numpy())
    idx = np.argpartition(keys, k - 1)[:k]
    return sample.iloc[np.sort(idx)]


# --------------------------------------------------------------------------- per-batch selection
def select_batch(
    df: pd.DataFrame, cfg: dict, flow: CutFlow, groups: np.ndarray | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply both branches to one batch; return (candidates, colour-sample rows).

    *groups* (one label per row, optional) adds per-group counts to the cut flow.
    """
    phot = derive_photometry(df, cfg["nondetection_snr"], cfg["limit_snr"])
    flow.add_rows(len(df), groups)
    passed, sample = {}, np.zeros(len(df), bool)
    for branch in BRANCHES:
        if not cfg[branch]["enabled"]:
            continue
        cuts = branch_cuts(df, phot, cfg, branch)
        passed[branch] = flow.add(branch, cuts, groups)
        flow.selected[branch] = flow.selected.get(branch, 0) + int(passed[branch].sum())
        sample |= colour_sample_mask(cuts)
    is_i = passed.get("i_dropout", np.zeros(len(df), bool))
    is_z = passed.get("z_dropout", np.zeros(len(df), bool))
    keep = is_i | is_z
    flow.selected["any"] = flow.selected.get("any", 0) + int(keep.sum())

    phot = phot.drop(columns=[f"{b}_detected" for b in BANDS])
    cand = pd.concat([df[keep], phot[keep]], axis=1)
    cand["is_i_dropout"] = is_i[keep]
    cand["is_z_dropout"] = is_z[keep]
    cand["selection_branch"] = np.where(is_z[keep], "z_dropout", "i_dropout")
    sample_cols = ["object_id", "z_mag", "y_mag", "i_minus_z", "i_minus_z_limit", "z_minus_y", "z_minus_y_limit"]
    sample_df = pd.concat([df[["object_id"]], phot[sample_cols[1:]]], axis=1)[sample]
    sample_df = sample_df.assign(selected=keep[sample])
    return cand, sample_df


def iter_catalog_batches(path: str | Path, batch_rows: int) -> Iterable[pd.DataFrame]:
    """Stream a catalogue shard as pandas batches after checking its schema against the contract."""
    # pre_buffer (pyarrow's default) keeps every row group it has read: memory would grow with the file.
    pf = pq.ParquetFile(path, pre_buffer=False)
    check_catalog_schema(pf.schema_arrow, path)
    if pf.metadata.num_rows == 0:  # a shard off the footprint: select nothing, but write a valid file
        yield pf.schema_arrow.empty_table().to_pandas()
        return
    for batch in pf.iter_batches(batch_size=batch_rows):
        yield batch.to_pandas()


def select_shard(catalog_path: str | Path, cfg: dict, out_path: str | Path, shard: str) -> tuple[dict, pd.DataFrame]:
    """Select candidates from one catalogue shard, streaming; write them atomically.

    Returns the cut-flow report and the colour-sample rows. The candidate file is
    written through a temporary file so that a failure leaves the previous one intact.
    """
    flow = CutFlow()
    sample = pd.DataFrame()
    writer = None
    with atomic_path(out_path) as tmp:
        try:
            for batch in iter_catalog_batches(catalog_path, cfg["batch_rows"]):
                cand, batch_sample = select_batch(batch, cfg, flow)
                sample = keep_smallest_hash(pd.concat([sample, batch_sample]), cfg["colour_sample_rows"])
                cand.insert(len(cand.columns), "shard", shard)
                table = pa.Table.from_pandas(cand, preserve_index=False)
                if writer is None:
                    writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
                writer.write_table(table.cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()
    report = {"shard": shard, "catalog": str(catalog_path), **flow.as_dict()}
    return report, sample.reset_index(drop=True)


# --------------------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Dropout selection of one catalogue shard (streaming).")
    parser.add_argument("--catalog", required=True, help="catalogue shard parquet")
    parser.add_argument("--shard", required=True, help="shard name")
    parser.add_argument("--select", required=True, help="the `select` config section as JSON")
    parser.add_argument("--out", required=True, help="candidate parquet")
    parser.add_argument("--report", required=True, help="cut-flow report JSON")
    parser.add_argument("--sample", required=True, help="colour-sample parquet (for the figure)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = json.loads(args.select)
    report, sample = select_shard(args.catalog, cfg, args.out, args.shard)
    write_parquet_atomic(pa.Table.from_pandas(sample, preserve_index=False), args.sample)
    write_text_atomic(args.report, json.dumps(report, indent=2) + "\n")
    log.info("%s: %d rows -> %d candidates (%s)", args.shard, report["rows"], report["selected"].get("any", 0),
             ", ".join(f"{k} {v}" for k, v in report["selected"].items() if k != "any"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

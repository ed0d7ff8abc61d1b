"""Persistent cutout cache and the per-shard cutout manifest.

Cache entries are keyed by (survey, release, rerun, size, object_id, band), so a rerun
after a changed selection fetches only objects not fetched before, and an interrupted
run resumes without refetching what was complete (every entry is written atomically).
A band that the service has no data for is remembered as a ``.nocov`` marker, so it is
not asked for again either. The cache lives outside ``results/`` (``cutouts.cache_dir``)
because Snakemake deletes a rule's outputs before rerunning it.

Manifest (``results/cutouts/{survey}/{shard}/manifest.parquet``): one row per object
and band: ``object_id`` (int64), ``band``, ``path`` (the cached FITS, or ""), ``status``
(``ok``, ``no_coverage``, ``failed``) and ``reason``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from workflow_scripts.contracts import atomic_path, write_parquet_atomic, write_text_atomic

STATUSES = ("ok", "no_coverage", "failed")
MANIFEST_SCHEMA = pa.schema([
    pa.field("object_id", pa.int64()),
    pa.field("band", pa.string()),
    pa.field("path", pa.string()),
    pa.field("status", pa.string()),
    pa.field("reason", pa.string()),
])


@dataclass(frozen=True)
class CutoutRequest:
    """One cutout to fetch: an object, a band and the requested semi-width (arcsec)."""

    object_id: int
    ra: float
    dec: float
    band: str
    half_size_arcsec: float


@dataclass(frozen=True)
class CutoutCache:
    """Files of one (survey, release, rerun, size) under *root*."""

    root: Path
    survey: str  # "hsc" or "vhs"
    release: str  # e.g. "pdr3" / "VHSDR6" / "mock-<seed>"
    rerun: str  # e.g. "pdr3_wide"; "" where the survey has none
    size_arcsec: float

    @property
    def directory(self) -> Path:
        size = f"{self.size_arcsec:g}arcsec"
        return Path(self.root) / self.survey / self.release / (self.rerun or "_") / size

    def path(self, object_id: int, band: str) -> Path:
        # 1000 sub-directories keep directory listings short at 10^6 objects
        return self.directory / f"{int(object_id) % 1000:03d}" / f"{int(object_id)}_{band}.fits"

    def _nocov_path(self, object_id: int, band: str) -> Path:
        return self.path(object_id, band).with_suffix(".nocov")

    def lookup(self, object_id: int, band: str) -> str | None:
        """"ok" or "no_coverage" when cached, None when it still has to be fetched."""
        if self.path(object_id, band).exists():
            return "ok"
        if self._nocov_path(object_id, band).exists():
            return "no_coverage"
        return None

    def put(self, object_id: int, band: str, data: bytes) -> Path:
        """Store one cutout (bytes of a validated FITS file) atomically; return its path."""
        target = self.path(object_id, band)
        with atomic_path(target) as tmp:
            Path(tmp).write_bytes(data)
        return target

    def mark_no_coverage(self, object_id: int, band: str, reason: str) -> None:
        write_text_atomic(self._nocov_path(object_id, band), json.dumps({"reason": reason}))

    def no_coverage_reason(self, object_id: int, band: str) -> str:
        try:
            return json.loads(self._nocov_path(object_id, band).read_text())["reason"]
        except (OSError, ValueError, KeyError):
            return "no coverage"


def manifest_row(cache: CutoutCache, object_id: int, band: str, status: str | None = None,
                 reason: str = "") -> dict:
    """A manifest row for one object and band, from the cache state unless *status* is given."""
    status = status or cache.lookup(object_id, band) or "failed"
    if status == "no_coverage" and not reason:
        reason = cache.no_coverage_reason(object_id, band)
    if status == "failed" and not reason:
        reason = "not in cache after fetching"
    path = str(cache.path(object_id, band)) if status == "ok" else ""
    return {"object_id": int(object_id), "band": band, "path": path, "status": status, "reason": reason}


def write_manifest(rows: list[dict], path: str | os.PathLike) -> pd.DataFrame:
    """Write the manifest atomically (sorted by object, band); return it."""
    df = pd.DataFrame(rows, columns=MANIFEST_SCHEMA.names)
    bad = set(df["status"]) - set(STATUSES)
    if bad:
        raise ValueError(f"{path}: unknown manifest status {sorted(bad)}")
    df = df.sort_values(["object_id", "band"], kind="stable").reset_index(drop=True)
    write_parquet_atomic(pa.Table.from_pandas(df, schema=MANIFEST_SCHEMA, preserve_index=False), path)
    return df


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = set(MANIFEST_SCHEMA.names) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: manifest lacks column(s) {sorted(missing)}")
    return df

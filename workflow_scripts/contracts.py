"""Data contracts between pipeline stages (see DESIGN.md, "Data contracts").

The catalogue contract uses HSC-SSP PDR3 column names so that the mock sky and the
real archive are interchangeable: no stage after ``catalog`` may know which source
produced a shard.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

#: HSC broad bands in wavelength order; lower-case as in PDR3 column names.
BANDS: tuple[str, ...] = ("g", "r", "i", "z", "y")

#: HSC PSF-flux zero point: mag = -2.5 log10(flux / nJy) + 31.4 (AB).
NJY_ZEROPOINT_MAG = 31.4

#: Pixel flags carried per band (PDR3 ``forced`` table, ``<b>_pixelflags_<name>``).
PIXEL_FLAGS: tuple[str, ...] = ("edge", "crcenter", "saturatedcenter", "bad", "interpolatedcenter")


def _catalog_fields() -> list[pa.Field]:
    fields = [
        pa.field("object_id", pa.int64()),
        pa.field("ra", pa.float64()),
        pa.field("dec", pa.float64()),
        pa.field("isprimary", pa.bool_()),
    ]
    for b in BANDS:
        fields += [
            pa.field(f"{b}_psfflux_flux", pa.float64()),
            pa.field(f"{b}_psfflux_fluxerr", pa.float64()),
            pa.field(f"{b}_psfflux_flag", pa.bool_()),
            pa.field(f"{b}_extendedness_value", pa.float64()),
        ]
        fields += [pa.field(f"{b}_pixelflags_{flag}", pa.bool_()) for flag in PIXEL_FLAGS]
        fields.append(pa.field(f"{b}_inputcount_value", pa.int32()))
    fields += [pa.field(f"a_{b}", pa.float64()) for b in BANDS]
    return fields


#: Arrow schema of a catalogue shard ``results/catalog/{shard}.parquet``.
CATALOG_SCHEMA: pa.Schema = pa.schema(_catalog_fields())
CATALOG_COLUMNS: tuple[str, ...] = tuple(CATALOG_SCHEMA.names)

#: Columns every truth table ``results/truth/{shard}.parquet`` has (mock only; more may follow).
TRUTH_REQUIRED_COLUMNS: tuple[str, ...] = ("object_id", "class", "subclass", "redshift", "spectral_type")


class ContractError(ValueError):
    """A file does not follow the data contract of its stage."""


def check_catalog_schema(schema: pa.Schema, path: str | os.PathLike) -> None:
    """Raise ContractError naming *path* and the offending columns if *schema* breaks the contract."""
    missing = [c for c in CATALOG_COLUMNS if c not in schema.names]
    if missing:
        raise ContractError(f"{path}: catalogue shard lacks required column(s) {missing}")
    wrong = [
        f"{c} is {schema.field(c).type}, expected {CATALOG_SCHEMA.field(c).type}"
        for c in CATALOG_COLUMNS
        if not schema.field(c).type.equals(CATALOG_SCHEMA.field(c).type)
    ]
    if wrong:
        raise ContractError(f"{path}: catalogue shard has wrong column type(s): {'; '.join(wrong)}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside *path*; rename it onto *path* only if the block succeeds.

    Readers never see a half-written file and an earlier good file survives a failure.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write *text* (UTF-8) to *path* atomically (temporary file, then rename); return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike) -> None:
    """Write *table* to *path* atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def flux_to_mag(flux_njy):
    """AB magnitude of a flux in nJy (NaN for non-positive flux)."""
    import numpy as np

    flux = np.asarray(flux_njy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, -2.5 * np.log10(flux) + NJY_ZEROPOINT_MAG, np.nan)


def mag_to_flux(mag):
    """Flux in nJy of an AB magnitude."""
    import numpy as np

    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - NJY_ZEROPOINT_MAG))

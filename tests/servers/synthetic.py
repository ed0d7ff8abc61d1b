"""Small synthetic catalogues following ``workflow_scripts.contracts.CATALOG_SCHEMA``.

Not a sky model (that is ``workflow_scripts.sky``): just rows with the right
columns, dtypes and the awkward values real shards have (NaN fluxes and
extendedness, set flags, non-primary rows), for protocol and I/O tests.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow_scripts.contracts import BANDS, CATALOG_COLUMNS, CATALOG_SCHEMA, PIXEL_FLAGS


def make_catalog(
    n: int = 200,
    *,
    seed: int = 0,
    ra: tuple[float, float] = (150.0, 151.0),
    dec: tuple[float, float] = (1.0, 2.0),
    first_id: int = 36_000_000_000_000_000,
    nan_fraction: float = 0.05,
) -> pd.DataFrame:
    """*n* random rows with exactly ``CATALOG_COLUMNS`` in contract dtypes.

    RA is drawn uniformly in *ra* and wrapped into [0, 360), so ``ra=(359, 361)``
    gives a patch straddling RA = 0.
    """
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {
        "object_id": first_id + np.arange(n, dtype=np.int64) * 7 + rng.integers(0, 7, n),
        "ra": rng.uniform(*ra, n) % 360.0,
        "dec": rng.uniform(*dec, n),
        "isprimary": rng.random(n) < 0.85,
    }
    for b in BANDS:
        flux = rng.lognormal(mean=5.0, sigma=1.5, size=n)  # ~150 nJy median, wide spread
        flux[rng.random(n) < nan_fraction] = np.nan
        data[f"{b}_psfflux_flux"] = flux
        data[f"{b}_psfflux_fluxerr"] = rng.uniform(5.0, 30.0, n)
        data[f"{b}_psfflux_flag"] = rng.random(n) < 0.05
        ext = (rng.random(n) < 0.6).astype(np.float64)
        ext[rng.random(n) < nan_fraction] = np.nan
        data[f"{b}_extendedness_value"] = ext
        for flag in PIXEL_FLAGS:
            data[f"{b}_pixelflags_{flag}"] = rng.random(n) < 0.03
        data[f"{b}_inputcount_value"] = rng.integers(0, 12, n).astype(np.int32)
    for b in BANDS:
        data[f"a_{b}"] = rng.uniform(0.0, 0.1, n)
    df = pd.DataFrame({c: data[c] for c in CATALOG_COLUMNS})
    return df


def catalog_table(df: pd.DataFrame) -> pa.Table:
    """*df*'s contract columns as an Arrow table with ``CATALOG_SCHEMA`` (NaN stays NaN)."""
    # pa.array(numpy) keeps NaN as NaN (from_pandas would turn it into null).
    return pa.table([pa.array(df[f.name].to_numpy(), type=f.type) for f in CATALOG_SCHEMA], schema=CATALOG_SCHEMA)

"""Small, explicit catalogue rows for unit tests (contract-compliant, no simulation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow_scripts.contracts import BANDS, CATALOG_SCHEMA, PIXEL_FLAGS, mag_to_flux

#: Typical 1-sigma PSF flux errors (nJy) at HSC Wide depth (5-sigma depths g 26.5 ... y 24.4).
SIGMA_NJY = {b: float(mag_to_flux(m)) / 5 for b, m in zip(BANDS, (26.5, 26.1, 25.9, 25.1, 24.4))}


def catalog_row(mags: dict[str, float | None], **overrides) -> dict:
    """One clean, primary, point-like row; a band with mag None has zero flux (undetected)."""
    row: dict = {"object_id": 1, "ra": 150.0, "dec": 2.0, "isprimary": True}
    for b in BANDS:
        mag = mags.get(b)
        row[f"{b}_psfflux_flux"] = 0.0 if mag is None else float(mag_to_flux(mag))
        row[f"{b}_psfflux_fluxerr"] = SIGMA_NJY[b]
        row[f"{b}_psfflux_flag"] = False
        row[f"{b}_extendedness_value"] = 0.0
        for flag in PIXEL_FLAGS:
            row[f"{b}_pixelflags_{flag}"] = False
        row[f"{b}_inputcount_value"] = 5
        row[f"a_{b}"] = 0.0
    row.update(overrides)
    return row


def catalog_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows as a DataFrame with contract dtypes; object_id made unique in order."""
    df = pd.DataFrame(rows)
    df["object_id"] = np.arange(1, len(df) + 1, dtype=np.int64) * 1000 + 7
    table = pa.Table.from_pandas(df[list(CATALOG_SCHEMA.names)], schema=CATALOG_SCHEMA, preserve_index=False)
    return table.to_pandas()


#: A bright z ~ 6.2 quasar-like i-dropout (no g, r; faint i; bright z, y).
I_DROPOUT_MAGS = {"g": None, "r": None, "i": 25.3, "z": 22.8, "y": 22.7}
#: A z ~ 6.9 quasar-like z-dropout (no g, r, i; z faint; bright y).
Z_DROPOUT_MAGS = {"g": None, "r": None, "i": None, "z": 24.6, "y": 23.0}
#: An ordinary blue star.
STAR_MAGS = {"g": 21.0, "r": 20.6, "i": 20.4, "z": 20.3, "y": 20.3}

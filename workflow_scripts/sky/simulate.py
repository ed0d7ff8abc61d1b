"""Simulate one catalogue shard of the mock HSC-SSP Wide sky with its truth table."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pyarrow as pa

from ..contracts import CATALOG_COLUMNS, CATALOG_SCHEMA
from .config import SkyBox, SkyConfig
from .noise import observe
from .photometry import ALL_BANDS
from .populations import concat, draw_brown_dwarfs, draw_galaxies, draw_lbgs, draw_quasars, draw_stars
from .transients import draw_bleed_trails, draw_chip_edges, draw_cosmic_rays, draw_moving_objects, saturated_bands

#: Bits of a shard's object_id reserved for the running index (4 M rows per shard).
INDEX_BITS = 22

TRUTH_COLUMNS = (
    ["object_id", "ra", "dec", "class", "subclass", "redshift", "spectral_type", "ebv"]
    + [f"flux_true_{b}" for b in ALL_BANDS]
    + [f"seeing_{b}" for b in "grizy"]
    + ["half_light_radius_arcsec", "axis_ratio", "position_angle_deg", "sersic_n", "moving_band",
       "trail_length_arcsec", "artefact_kind", "artefact_band", "image_fwhm_arcsec", "m_abs_1450",
       "enrichment_weight", "distance_pc", "teff_k", "qso_dalpha", "sed_young_fraction", "sed_dust_ebv",
       "uv_beta", "lya_ew_rest", "detected_in_truth", "duplicate_of"]
    + [f"psf_frac_{b}" for b in "grizy"]
)
_RENAME = {"hlr": "half_light_radius_arcsec", "pa": "position_angle_deg", "trail_length": "trail_length_arcsec",
           "image_fwhm": "image_fwhm_arcsec", "teff": "teff_k", "young_fraction": "sed_young_fraction",
           "dust_ebv": "sed_dust_ebv", "lya_ew": "lya_ew_rest"}


def stable_hash(name: str, bits: int = 63) -> int:
    """Process-independent non-negative hash of *name* (BLAKE2b), never Python's hash()."""
    h = int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "big")
    return h >> (64 - bits)


def _mark_saturated_stars(stars: dict) -> None:
    """Stars saturating in any band are catalogue artefacts (class artefact/saturated_star)."""
    sat = saturated_bands(stars["flux_true"])
    any_sat = sat.any(axis=1)
    stars["class"] = np.where(any_sat, "artefact", stars["class"]).astype(object)
    stars["subclass"] = np.where(any_sat, "saturated_star", stars["subclass"]).astype(object)
    stars["artefact_kind"] = np.where(any_sat, "saturated_core", "").astype(object)
    stars["artefact_band"] = np.array(["".join(b for b, s in zip("grizy", row) if s) for row in sat], dtype=object)


#: Fraction of objects detected a second time in a tract/patch overlap (HSC: a few per cent of rows).
OVERLAP_DUPLICATE_FRACTION = 0.03


def add_overlap_duplicates(pop: dict, rng: np.random.Generator) -> dict:
    """Append re-detections of a random few per cent of objects, as in HSC tract/patch overlaps.

    A duplicate is the same physical object, measured again with independent noise and a
    small astrometric offset; it is flagged ``primary = False`` and remembers the index of
    its original in ``duplicate_of`` (turned into an object_id later).
    """
    n = pop["ra"].size
    dup = np.flatnonzero(rng.uniform(size=n) < OVERLAP_DUPLICATE_FRACTION)
    out = {k: np.concatenate([v, v[dup]]) for k, v in pop.items()}
    offset_deg = rng.normal(0.0, 0.03 / 3600.0, (2, dup.size))
    out["ra"][n:] += offset_deg[0] / np.cos(np.deg2rad(out["dec"][n:]))
    out["dec"][n:] += offset_deg[1]
    out["primary"] = np.concatenate([np.ones(n, bool), np.zeros(dup.size, bool)])
    out["duplicate_of"] = np.concatenate([np.full(n, -1, np.int64), dup.astype(np.int64)])
    return out


def simulate_shard(box: SkyBox, shard_name: str, seed: int, sky: SkyConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Draw the sky in *box*, observe it, and return (catalogue, truth) DataFrames.

    Deterministic in (seed, shard_name, box, sky); shards are independent random streams.
    The catalogue follows ``contracts.CATALOG_SCHEMA``; the truth has one row per catalogue row.
    """
    sky = sky or SkyConfig()
    ss = np.random.SeedSequence([int(seed), stable_hash(shard_name)])
    rngs = [np.random.default_rng(s) for s in ss.spawn(10)]
    stars = draw_stars(rngs[4], box, sky)
    pops = [
        draw_quasars(rngs[0], box, sky),
        draw_lbgs(rngs[1], box, sky),
        draw_galaxies(rngs[2], box, sky),
        draw_brown_dwarfs(rngs[3], box, sky),
        stars,
        draw_moving_objects(rngs[5], box, sky),
        draw_cosmic_rays(rngs[6], box, sky),
        draw_chip_edges(rngs[7], box, sky),
        draw_bleed_trails(rngs[8], stars, sky, box),
    ]
    _mark_saturated_stars(stars)
    pop = add_overlap_duplicates(concat([p for p in pops]), np.random.default_rng(ss.spawn(1)[0]))
    cat, extra, detected = observe(pop, rngs[9], sky)

    keep = np.flatnonzero(detected)
    order = keep[np.lexsort((pop["dec"][keep], pop["ra"][keep]))]
    ids = (np.int64(stable_hash(shard_name, 63 - INDEX_BITS)) << INDEX_BITS) + np.arange(order.size, dtype=np.int64)
    # population index -> object_id, for pointing duplicates at their (detected) original
    id_of = np.full(pop["ra"].size, -1, np.int64)
    id_of[order] = ids
    dup_src = pop.pop("duplicate_of")
    # -1: an original; >= 0: object_id of the original; -2: re-detection of an object the catalogue missed
    original = id_of[np.maximum(dup_src, 0)]
    pop["duplicate_of"] = np.where(dup_src < 0, -1, np.where(original >= 0, original, -2))
    pop.pop("primary")

    catalog = {"object_id": ids, "ra": pop["ra"][order], "dec": pop["dec"][order]}
    catalog.update({k: v[order] for k, v in cat.items()})
    catalog_df = pd.DataFrame({c: catalog[c] for c in CATALOG_COLUMNS})
    for f in CATALOG_SCHEMA:
        catalog_df[f.name] = catalog_df[f.name].astype(f.type.to_pandas_dtype())

    truth: dict[str, np.ndarray] = {"object_id": ids}
    for k, v in pop.items():
        if k == "flux_true":
            for j, b in enumerate(ALL_BANDS):
                truth[f"flux_true_{b}"] = v[order, j]
        else:
            truth[_RENAME.get(k, k)] = v[order]
    truth.update({k: v[order] for k, v in extra.items()})
    truth["detected_in_truth"] = np.ones(order.size, bool)
    truth_df = pd.DataFrame({c: truth[c] for c in TRUTH_COLUMNS})
    for c in ("class", "subclass", "spectral_type", "moving_band", "artefact_kind", "artefact_band"):
        truth_df[c] = truth_df[c].astype(str)
    return catalog_df, truth_df


def truth_schema_table(truth_df: pd.DataFrame) -> pa.Table:
    """The truth table as Arrow (strings as plain UTF-8)."""
    return pa.Table.from_pandas(truth_df, preserve_index=False)

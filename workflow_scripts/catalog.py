"""Stage `catalog`: one catalogue shard in the HSC PDR3 contract, from the mock sky or the HSC archive.

Both sources write the same columns (contracts.CATALOG_SCHEMA); the mock also writes the
truth table that only evaluation stages read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import pyarrow as pa

from workflow_scripts.contracts import BANDS, CATALOG_SCHEMA, mag_to_flux, write_parquet_atomic

log = logging.getLogger(__name__)


def sky_box(spec: dict):
    """The mock sky's box for a shard spec {ra: [min, max], dec: [min, max]}."""
    from workflow_scripts.sky import SkyBox

    if "ra" not in spec:
        raise ValueError(f"shard {spec!r}: the mock sky needs an ra/dec box")
    return SkyBox(ra_min=spec["ra"][0], ra_max=spec["ra"][1], dec_min=spec["dec"][0], dec_max=spec["dec"][1])


def write_mock_shard(shard: str, spec: dict, seed: int, sky_cfg: dict, out: Path, truth_out: Path) -> int:
    """Simulate one shard of the mock sky; write catalogue and truth atomically; return the row count."""
    from workflow_scripts.sky import SkyConfig, simulate_shard

    catalog, truth = simulate_shard(sky_box(spec), shard_name=shard, seed=seed, sky=SkyConfig.from_dict(sky_cfg))
    write_parquet_atomic(pa.Table.from_pandas(truth, preserve_index=False), truth_out)
    write_parquet_atomic(pa.Table.from_pandas(catalog, schema=CATALOG_SCHEMA, preserve_index=False), out)
    return len(catalog)


def pushdown_min_flux(hsc_cfg: dict) -> dict[str, float]:
    """Minimum PSF flux (nJy) per band for the SQL pushdown, from hsc.pushdown_max_mag."""
    return {b: float(mag_to_flux(m)) for b, m in hsc_cfg["pushdown_max_mag"].items() if b in BANDS}


def hsc_client(hsc_cfg: dict):
    """An authenticated CAS client for the `hsc` config section (credentials from env or ~/.netrc)."""
    from workflow_scripts.services.credentials import get_credentials
    from workflow_scripts.services.hsc_cas import HscCasClient

    creds = get_credentials(hsc_cfg["cas_url"], user_env=hsc_cfg["user_env"], password_env=hsc_cfg["password_env"])
    return HscCasClient.from_config(hsc_cfg, creds)


def write_hsc_shard(shard: str, spec: dict, hsc_cfg: dict, out: Path) -> None:
    """Query one shard from the HSC CAS archive into the catalogue contract (atomic write)."""
    from workflow_scripts.services.hsc_cas import build_shard_query

    sql = build_shard_query(spec, schema=hsc_cfg["schema"], min_flux_njy=pushdown_min_flux(hsc_cfg))
    log.info("%s: submitting CAS query (%s, %s)", shard, hsc_cfg["release_version"], hsc_cfg["schema"])
    hsc_client(hsc_cfg).query_to_parquet(sql, out)


def check_source_ready(config: dict) -> None:
    """Fail early (at DAG construction) when the configured source cannot work, e.g. missing credentials."""
    if config["source"] == "hsc":
        from workflow_scripts.services.credentials import get_credentials

        hsc_cfg = config["hsc"]
        get_credentials(hsc_cfg["cas_url"], user_env=hsc_cfg["user_env"], password_env=hsc_cfg["password_env"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write one catalogue shard in the HSC PDR3 contract.")
    sub = parser.add_subparsers(dest="source", required=True)
    mock = sub.add_parser("mock", help="simulate the shard from the mock sky")
    hsc = sub.add_parser("hsc", help="query the shard from the HSC-SSP CAS archive")
    for p in (mock, hsc):
        p.add_argument("--shard", required=True)
        p.add_argument("--spec", required=True, help="shard spec as JSON")
        p.add_argument("--out", required=True, type=Path)
    mock.add_argument("--seed", required=True, type=int)
    mock.add_argument("--sky", required=True, help="`sky` config section as JSON")
    mock.add_argument("--truth-out", required=True, type=Path)
    hsc.add_argument("--hsc", required=True, help="`hsc` config section as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    spec = json.loads(args.spec)
    if args.source == "mock":
        n = write_mock_shard(args.shard, spec, args.seed, json.loads(args.sky), args.out, args.truth_out)
        log.info("%s: simulated %d catalogue rows -> %s", args.shard, n, args.out)
    else:
        write_hsc_shard(args.shard, spec, json.loads(args.hsc), args.out)
        log.info("%s: wrote %s", args.shard, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

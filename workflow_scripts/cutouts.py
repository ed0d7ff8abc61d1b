"""Stages `cutouts_hsc` and `cutouts_ir`: image cutouts around every candidate of a shard.

Two sources behind one interface, both filling the same persistent cache
(workflow_scripts.cutout_cache) and writing the same manifest:

* ``mock``: the simulated sky rendered as the services would deliver it
  (workflow_scripts.sky.render.MockImager; the mock *service* reads the sky model, as the real
  services read the real sky — no analysis stage reads the truth).
* ``hsc``: the HSC DAS cutout service (grizy) and the VISTA Science Archive (VHS J, Ks).

A band without data is a manifest status (``no_coverage``), never a crash; a cutout that
failed is ``failed`` with the reason and is retried by the next run (nothing was cached).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from workflow_scripts.contracts import BANDS
from workflow_scripts.cutout_cache import CutoutCache, CutoutRequest, manifest_row, write_manifest

log = logging.getLogger(__name__)

IR_BANDS: tuple[str, ...] = ("J", "Ks")
SURVEY_BANDS = {"hsc": BANDS, "vhs": IR_BANDS}


def cutout_requests(candidates: pd.DataFrame, bands: Iterable[str], half_size_arcsec: float) -> list[CutoutRequest]:
    """One request per candidate and band, in a stable order."""
    bands = list(bands)
    return [CutoutRequest(int(oid), float(ra), float(dec), band, half_size_arcsec)
            for oid, ra, dec in zip(candidates["object_id"], candidates["ra"], candidates["dec"]) for band in bands]


def mock_release(seed: int, sky_cfg: dict) -> str:
    """Cache release name of the mock sky: changes whenever the sky model's inputs change."""
    digest = hashlib.sha256(json.dumps(sky_cfg, sort_keys=True).encode()).hexdigest()[:10]
    return f"mock-{seed}-{digest}"


def fetch_rendered(requests: list[CutoutRequest], cache: CutoutCache,
                   render: Callable[[CutoutRequest], bytes | None]) -> list[dict]:
    """Fill the cache from a renderer (the mock services); return manifest rows.

    *render* returns the FITS bytes of one cutout, or None where the survey has no data.
    Cached entries (ok or no_coverage) are not rendered again.
    """
    rows = []
    for req in requests:
        if cache.lookup(req.object_id, req.band) is None:
            data = render(req)
            if data is None:
                cache.mark_no_coverage(req.object_id, req.band, "outside the survey footprint")
            else:
                cache.put(req.object_id, req.band, data)
        rows.append(manifest_row(cache, req.object_id, req.band))
    return rows


def mock_renderer(survey: str, catalogs: list[str], truths: list[str], seed: int, sky_cfg: dict):
    """A render(request) -> bytes | None over the mock sky of all given shards (neighbours across shard edges)."""
    from workflow_scripts.cutout_format import hsc_cutout_bytes, vhs_cutout_bytes
    from workflow_scripts.sky import SkyConfig
    from workflow_scripts.sky.render import MockImager

    imager = MockImager(pd.concat([pd.read_parquet(p) for p in catalogs], ignore_index=True),
                        pd.concat([pd.read_parquet(p) for p in truths], ignore_index=True),
                        seed=seed, sky=SkyConfig.from_dict(sky_cfg))

    def render(req: CutoutRequest) -> bytes | None:
        if survey == "hsc":
            return hsc_cutout_bytes(imager.hsc_cutout_at(req.ra, req.dec, req.band, req.half_size_arcsec))
        cut = imager.vhs_cutout_at(req.ra, req.dec, req.band, req.half_size_arcsec)
        return None if cut is None else vhs_cutout_bytes(cut)

    return render


def service_fetcher(survey: str, service_cfg: dict):
    """fetch(requests, cache) -> manifest rows, from the real (or loopback) service."""
    if survey == "hsc":
        from workflow_scripts.services.credentials import get_credentials
        from workflow_scripts.services.hsc_das import HscDasClient

        creds = get_credentials(service_cfg["das_url"], user_env=service_cfg["user_env"],
                                password_env=service_cfg["password_env"])
        return HscDasClient.from_config(service_cfg, creds).fetch
    from workflow_scripts.services.vhs import VhsClient

    return VhsClient.from_config(service_cfg).fetch


def shard_cutouts(survey: str, source: str, candidates_path: str, manifest_path: str, cutouts_cfg: dict,
                  service_cfg: dict, seed: int, sky_cfg: dict, catalogs: list[str], truths: list[str]) -> pd.DataFrame:
    """Fetch (or render) every cutout of one shard into the cache and write its manifest."""
    candidates = pd.read_parquet(candidates_path, columns=["object_id", "ra", "dec"])
    half = cutouts_cfg["half_size_arcsec"] if survey == "hsc" else cutouts_cfg["ir_half_size_arcsec"]
    requests = cutout_requests(candidates, SURVEY_BANDS[survey], half)
    if source == "mock":
        cache = CutoutCache(Path(cutouts_cfg["cache_dir"]), survey, mock_release(seed, sky_cfg), "mock", half)
    else:
        release = service_cfg["release_version"] if survey == "hsc" else service_cfg["database"]
        rerun = service_cfg["rerun"] if survey == "hsc" else ""
        cache = CutoutCache(Path(cutouts_cfg["cache_dir"]), survey, release, rerun, half)
    missing = sum(cache.lookup(r.object_id, r.band) is None for r in requests)
    log.info("%s: %d cutouts requested, %d already cached, fetching %d", survey, len(requests),
             len(requests) - missing, missing)
    if not missing:
        rows = [manifest_row(cache, r.object_id, r.band) for r in requests]
    elif source == "mock":
        rows = fetch_rendered(requests, cache, mock_renderer(survey, catalogs, truths, seed, sky_cfg))
    else:
        rows = service_fetcher(survey, service_cfg)(requests, cache)
    manifest = write_manifest(rows, manifest_path)
    counts = manifest["status"].value_counts().to_dict()
    log.info("%s cutouts of %d objects: %s", survey, len(candidates), counts)
    return manifest


def add_source_arguments(parser: argparse.ArgumentParser, cutouts_default: str | None = None) -> None:
    """Command-line arguments saying where cutouts come from: the mock sky model or the services."""
    parser.add_argument("--source", choices=("mock", "hsc"), required=True)
    parser.add_argument("--cutouts", required=cutouts_default is None, default=cutouts_default,
                        help="`cutouts` config section as JSON")
    parser.add_argument("--service", default="{}", help="`hsc` (or `vhs`) config section as JSON (source hsc)")
    parser.add_argument("--seed", type=int, default=0, help="mock sky seed (source mock)")
    parser.add_argument("--sky", default="{}", help="`sky` config section as JSON (source mock)")
    parser.add_argument("--catalogs", nargs="*", default=[], help="mock: catalogue shards of the sky model")
    parser.add_argument("--truths", nargs="*", default=[], help="mock: truth shards of the sky model")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Cutouts around a shard's candidates, into the cache + manifest.")
    parser.add_argument("--survey", choices=("hsc", "vhs"), required=True)
    parser.add_argument("--candidates", required=True)
    parser.add_argument("--manifest", required=True)
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    shard_cutouts(args.survey, args.source, args.candidates, args.manifest, json.loads(args.cutouts),
                  json.loads(args.service), args.seed, json.loads(args.sky), args.catalogs, args.truths)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the ``stack`` stage (fast DAS reader + windowed memmap writes) versus a naive astropy loop.

Builds a shard of N objects (default 10^4) x 5 bands of DAS-format FITS cutouts (49 x 49 px,
written with ``cutout_format``; cached under benchmarks/out/stack/), then measures, each in a
fresh process so that peak RSS is its own:

* ``stack``   ``tensors.stack_shard`` at 6" (35 px) on N objects, and on N/5 objects (memory vs N)
* ``naive``   for every object and band: ``fits.open``, ``WCS(header)``, world_to_pixel, cut, append
              to a list; then ``np.stack`` and ``np.save`` (same crops, same masks)

Printed side by side in one run: objects/s, peak RSS, and the ratios; the two outputs are
checked to be identical. Files are read from the page cache (they were just written), so
this measures CPU cost, not a cold network file system.

To keep the build short, 200 distinct synthetic objects (noise + a Moffat point source at a
random sub-pixel position, a few masked pixels) are rendered with ``cutout_format`` and their
bytes reused under fresh object ids; every object still has its own 5 files on disk.

    python -m benchmarks.stack [--objects 10000] [--small 2000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks._harness import child_main, peak_rss_mb, print_ratio, print_table, run_child

OUT = Path(__file__).resolve().parent / "out" / "stack"
SCALE = 6.0
TEMPLATES = 200


def _vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build_shard(n_objects: int) -> tuple[Path, Path]:
    """Candidates + HSC manifest for n_objects objects (files cached and reused across sizes)."""
    from astropy.io import fits

    from workflow_scripts.contracts import BANDS
    from workflow_scripts.cutout_format import (HSC_MASK_BITS, HSC_PIXEL_SCALE_ARCSEC, HscCutout, hsc_cutout_bytes,
                                                tan_wcs)

    cand_path, man_path = OUT / f"candidates_{n_objects}.parquet", OUT / f"manifest_{n_objects}.parquet"
    if cand_path.exists() and man_path.exists():
        return cand_path, man_path
    rng = np.random.default_rng(42)
    shape = (49, 49)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    templates = []
    for t in range(TEMPLATES):
        ra, dec = 150.0 + rng.uniform(0, 1), 2.0 + rng.uniform(0, 1)
        off = tuple(rng.uniform(-0.5, 0.5, 2))
        w = tan_wcs(ra, dec, shape, HSC_PIXEL_SCALE_ARCSEC, 0.0, off)
        x0, y0 = w.world_to_pixel_values(ra, dec)
        files = {}
        for b in BANDS:
            r2 = (xx - x0) ** 2 + (yy - y0) ** 2
            psf = (1 + r2 / 3.0**2) ** -2.5  # Moffat, beta 2.5, ~0.7" FWHM
            img = rng.normal(0, 1.0, shape) + rng.uniform(0, 50) * psf / psf.sum()
            mask = np.where(rng.random(shape) < 0.01, 1 << HSC_MASK_BITS["CR"], 0).astype(np.int32)
            mask |= np.where(r2 < 9, 1 << HSC_MASK_BITS["DETECTED"], 0).astype(np.int32)
            cut = HscCutout(image=img.astype(np.float32), mask=mask, variance=np.ones(shape, np.float32), wcs=w,
                            band=b, mask_bits=dict(HSC_MASK_BITS), header=fits.Header())
            files[b] = hsc_cutout_bytes(cut)
        templates.append((ra, dec, files))
    rows, objs = [], []
    for k in range(n_objects):
        oid = 10**15 + k
        ra, dec, files = templates[k % TEMPLATES]
        objs.append((oid, ra, dec))
        for b, data in files.items():
            p = OUT / "fits" / f"{k % 1000:03d}" / f"{oid}_{b}.fits"
            if not p.exists():
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(data)
            rows.append({"object_id": oid, "band": b, "path": str(p), "status": "ok", "reason": ""})
    pd.DataFrame(objs, columns=["object_id", "ra", "dec"]).to_parquet(cand_path)
    pd.DataFrame(rows).to_parquet(man_path)
    return cand_path, man_path


def naive_stack(cand: pd.DataFrame, manifest: pd.DataFrame, out_prefix: str) -> None:
    """The obvious loop: astropy for every file, a Python list of crops, np.stack at the end."""
    from astropy.io import fits
    from astropy.wcs import WCS

    from workflow_scripts.contracts import BANDS
    from workflow_scripts.cutout_format import HSC_NJY_PER_COUNT
    from workflow_scripts.tensors import DEFAULT_MASK_PLANES, odd_size

    n = odd_size(SCALE)
    h = n // 2
    paths = {(o, b): p for o, b, p in zip(manifest["object_id"], manifest["band"], manifest["path"])}
    images, masks = [], []
    for oid, ra, dec in zip(cand["object_id"], cand["ra"], cand["dec"]):
        chans, mchans = [], []
        for b in BANDS:
            with fits.open(paths[(oid, b)]) as hdul:
                img, bits = hdul[1].data.astype(np.float32), hdul[2].data
                bad = sum(1 << int(v) for k, v in hdul[2].header.items() if k[3:] in DEFAULT_MASK_PLANES)
                x, y = WCS(hdul[1].header).world_to_pixel_values(ra, dec)
            cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            cut = img[cy - h:cy + h + 1, cx - h:cx + h + 1] * np.float32(HSC_NJY_PER_COUNT)
            m = ~np.isfinite(cut) | ((bits[cy - h:cy + h + 1, cx - h:cx + h + 1] & bad) != 0)
            chans.append(np.where(m, 0, cut).astype(np.float32))
            mchans.append(m)
        images.append(np.stack(chans))
        masks.append(np.stack(mchans))
    np.save(out_prefix + ".images.npy", np.stack(images))
    np.save(out_prefix + ".mask.npy", np.stack(masks))


def measure(mode: str, cand_path: str | Path, man_path: str | Path) -> dict:
    from workflow_scripts.tensors import stack_shard

    cand, manifest = pd.read_parquet(cand_path), pd.read_parquet(man_path)
    rss_start = _vm_rss_mb()
    prefix = str(OUT / f"{mode}_{len(cand)}")
    start = time.perf_counter()
    if mode == "stack":
        stack_shard(cand, manifest, prefix, SCALE)
    else:
        naive_stack(cand, manifest, prefix)
    seconds = time.perf_counter() - start
    return {"mode": mode, "objects": len(cand), "seconds": seconds, "objects_per_s": len(cand) / seconds,
            "rss_start_mb": rss_start, "peak_rss_mb": peak_rss_mb(), "prefix": prefix}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "CANDIDATES", "MANIFEST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if child_main(args.child, measure):
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    big, small = build_shard(args.objects), build_shard(args.small)
    print(f"benchmark shards ready in {time.perf_counter() - t0:.0f} s ({args.objects:,} objects x 5 bands of FITS)")
    module = "benchmarks.stack"
    results = [run_child(module, "stack", *big), run_child(module, "stack", *small), run_child(module, "naive", *big)]
    print_table([("mode", "mode", "<7"), ("objects", "objects", ">8,"), ("seconds", "seconds", ">8.1f"),
                 ("objects_per_s", "objects/s", ">10,.0f"), ("rss_start_mb", "RSS start MB", ">13,.0f"),
                 ("peak_rss_mb", "peak RSS MB", ">12,.0f")], results)
    ours, ours_small, naive = results
    same = all(np.array_equal(np.load(f"{ours['prefix']}.{k}.npy", mmap_mode="r"),
                              np.load(f"{naive['prefix']}.{k}.npy", mmap_mode="r")) for k in ("images", "mask"))
    print(f"outputs identical (stack vs naive, images and mask): {same}")
    print_ratio(f"throughput stack / naive at {ours['objects']:,} objects",
                ours["objects_per_s"], naive["objects_per_s"], ".1f", "x (target >= 3x)")
    print_ratio(f"peak RSS naive / stack at {ours['objects']:,} objects", naive["peak_rss_mb"], ours["peak_rss_mb"], ".1f", "x")
    print_ratio(f"peak RSS stack {ours['objects']:,} / {ours_small['objects']:,} objects",
                ours["peak_rss_mb"], ours_small["peak_rss_mb"], ".2f", " (1 = independent of N)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

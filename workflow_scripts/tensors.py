"""Stage ``stack``: per shard and image scale, raw-flux + mask tensors from the cutouts; and ``meta.json``.

Size rule: a scale of s arcsec becomes n = the odd integer nearest s / 0.168 HSC pixels
(n = 2 floor(v / 2) + 1 with v = s / 0.168; an exact tie, v even, goes up). Odd, so the
object's pixel is *the* centre pixel and flips/rotations (the augmentations) keep it there.
6" -> 35 px (5.88"), 8" -> 47 px.

Crop: each band's cutout is cut to n x n centred on the pixel that contains the object
(ra/dec -> pixel through that cutout's own TAN WCS, pixel i spanning [i - 0.5, i + 0.5)).
Pixels of the window outside the cutout are masked.

Channels: g, r, i, z, y (+ J, Ks from ``reproject_ir``'s npz when IR is on). Units: nJy per
HSC pixel (counts x HSC_NJY_PER_COUNT; IR already is). Normalisation is NOT applied here.

Mask (True = not a sky+source measurement): non-finite values; the mask planes in
DEFAULT_MASK_PLANES; a band that is missing or unreadable (whole channel); pixels without IR
coverage. Default planes: NO_DATA (no input data), BAD (bad detector pixels), SAT (saturated:
value clipped), CR (cosmic ray: an artefact that mimics a dropout), UNMASKEDNAN. Not masked:
DETECTED / DETECTED_NEGATIVE (they mark sources, the signal itself), INTRP (coadd INTRP is an
OR over inputs and covers many good pixels), EDGE / SENSOR_EDGE / CLIPPED / REJECTED /
INEXACT_PSF / CROSSTALK / SUSPECT / NOT_DEBLENDED / BRIGHT_OBJECT (values are still
measurements; the catalogue flags handle them). Masked pixels are 0 in the image.

Outputs (each written to a temporary file and renamed only when all three are complete):
``{prefix}.images.npy`` float32 (N, C, n, n), ``{prefix}.mask.npy`` bool, ``{prefix}.index.parquet``
(``row``, ``object_id``, ``ra``, ``dec``, per channel ``<b>_status`` and ``<b>_coverage`` = the
unmasked fraction of the crop). The .npy files are created with ``np.lib.format.open_memmap``
and filled window by window (``chunk_rows`` objects at a time), so memory does not grow with N.

``meta.json``: bands, pixel scale, size in pixels and arcsec, and per-band robust statistics
over all shards (unmasked pixels only), streamed with bounded memory: every value goes into a
fixed histogram of 2^16 bins uniform in asinh(x / 1 nJy) over |x| < 1 nJy x sinh(32) (values
beyond clip into the end bins). The CDF is interpolated linearly (in asinh) inside a bin;
median and the 1st / 99.9th percentiles invert it, MAD is the half-width d with
CDF(median + d) - CDF(median - d) = 1/2 (bisection); sigma_mad = 1.4826 MAD. Errors are well
below one bin (a bin is ~0.1 % of |x| for |x| >> 1 nJy, ~1e-3 nJy near 0). Count, mean, std,
min and max are exact. 2^16 int64 counts per band: 0.5 MB, whatever N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from workflow_scripts.contracts import BANDS, atomic_path, write_text_atomic
from workflow_scripts.cutout_format import HSC_NJY_PER_COUNT, HSC_PIXEL_SCALE_ARCSEC, CutoutFormatError
from workflow_scripts.fits_fast import DasFile, read_das

IR_BANDS: tuple[str, ...] = ("J", "Ks")
DEFAULT_MASK_PLANES: tuple[str, ...] = ("NO_DATA", "BAD", "SAT", "CR", "UNMASKEDNAN")


def odd_size(scale_arcsec: float, pixel_scale_arcsec: float = HSC_PIXEL_SCALE_ARCSEC) -> int:
    """The odd number of pixels nearest scale / pixel scale (ties go up): 6" -> 35."""
    v = round(scale_arcsec / pixel_scale_arcsec, 6)  # rounding kills float noise at exact ties
    if v <= 0:
        raise ValueError(f"image scale must be positive, got {scale_arcsec}")
    return 2 * math.floor(v / 2) + 1


def scale_dirname(scale_arcsec: float) -> str:
    """Directory name of a scale: 6 -> '6arcsec'."""
    return f"{scale_arcsec:g}arcsec"


def channels(with_ir: bool) -> tuple[str, ...]:
    return BANDS + IR_BANDS if with_ir else BANDS


def centre_pixel(x: float, y: float) -> tuple[int, int]:
    """Index of the pixel containing 0-based position (x, y): pixel i spans [i - 0.5, i + 0.5)."""
    return int(math.floor(x + 0.5)), int(math.floor(y + 0.5))


def crop(array: np.ndarray, cx: int, cy: int, n: int, fill=0) -> tuple[np.ndarray, np.ndarray]:
    """n x n window of *array* centred on pixel (cx, cy); returns (window, inside) with outside = *fill*."""
    h = n // 2
    ny, nx = array.shape[-2:]
    out = np.full(array.shape[:-2] + (n, n), fill, dtype=array.dtype.newbyteorder("="))
    inside = np.zeros((n, n), dtype=bool)
    x0, y0 = cx - h, cy - h
    xa, xb, ya, yb = max(x0, 0), min(x0 + n, nx), max(y0, 0), min(y0 + n, ny)
    if xa < xb and ya < yb:
        out[..., ya - y0:yb - y0, xa - x0:xb - x0] = array[..., ya:yb, xa:xb]
        inside[ya - y0:yb - y0, xa - x0:xb - x0] = True
    return out, inside


def crop_hsc(das: DasFile, ra: float, dec: float, n: int, bad_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """One band cropped: (flux nJy float32 with masked pixels 0, mask bool)."""
    x, y = das.wcs.world_to_pixel(ra, dec)
    if not (np.isfinite(x) and np.isfinite(y)):
        return np.zeros((n, n), np.float32), np.ones((n, n), bool)
    cx, cy = centre_pixel(float(x), float(y))
    image, inside = crop(das.image, cx, cy, n)  # crop the big-endian view first, convert only n x n
    bits, _ = crop(das.mask, cx, cy, n)
    flux = image.astype(np.float32) * np.float32(HSC_NJY_PER_COUNT)
    mask = ~inside | ~np.isfinite(flux) | ((bits & bad_bits) != 0)
    flux[mask] = 0.0
    return flux, mask


def crop_ir(flux: np.ndarray, coverage: np.ndarray, pixel_xy: tuple[float, float], n: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """IR (2, H, W) on the object's HSC grid cropped like the HSC bands: (flux (2, n, n), mask (2, n, n))."""
    if not (np.isfinite(pixel_xy[0]) and np.isfinite(pixel_xy[1])):
        return np.zeros((2, n, n), np.float32), np.ones((2, n, n), bool)
    cx, cy = centre_pixel(*pixel_xy)
    f, inside = crop(np.asarray(flux, dtype=np.float32), cx, cy, n)
    cov, _ = crop(np.asarray(coverage, dtype=bool), cx, cy, n, fill=False)
    mask = ~cov | ~inside | ~np.isfinite(f)
    f[mask] = 0.0
    return f, mask


def _manifest_lookup(manifest: pd.DataFrame) -> dict[tuple[int, str], tuple[str, str]]:
    return {(int(o), str(b)): (str(s), str(p)) for o, b, s, p in
            zip(manifest["object_id"], manifest["band"], manifest["status"], manifest["path"])}


class _RowWriter:
    """An .npy file of shape (N, ...) created with open_memmap and filled window by window."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype):
        self.path, self.shape, self.dtype = path, shape, np.dtype(dtype)
        if shape[0] == 0:
            with open(path, "wb") as fh:  # mmap cannot map an empty file
                np.save(fh, np.zeros(shape, self.dtype))
            self.offset = 0
        else:
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=self.dtype, shape=shape)
            self.offset = mm.offset
            del mm
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def write(self, start: int, block: np.ndarray) -> None:
        if len(block) == 0:
            return
        mm = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=self.offset + start * self.row_bytes,
                       shape=block.shape)
        mm[:] = block
        mm.flush()
        del mm  # unmapping drops the pages from our RSS


@dataclass
class StackResult:
    n_objects: int
    channels: tuple[str, ...]
    size_px: int
    index: pd.DataFrame = field(repr=False)


def stack_shard(candidates: pd.DataFrame, hsc_manifest: pd.DataFrame, out_prefix: str | os.PathLike,
                scale_arcsec: float, ir=None, mask_planes: tuple[str, ...] = DEFAULT_MASK_PLANES,
                chunk_rows: int = 256) -> StackResult:
    """Write ``{out_prefix}.images.npy``, ``.mask.npy``, ``.index.parquet`` for the objects of *candidates*.

    *ir* is a ``reproject_ir.IrOnHsc`` (or None for grizy only). Objects keep the candidates' order.
    """
    n = odd_size(scale_arcsec)
    chans = channels(ir is not None)
    nb = len(BANDS)
    N = len(candidates)
    lookup = _manifest_lookup(hsc_manifest)
    ir_row = {int(o): i for i, o in enumerate(ir.object_id)} if ir is not None else {}
    ids = candidates["object_id"].to_numpy(np.int64)
    ras, decs = candidates["ra"].to_numpy(np.float64), candidates["dec"].to_numpy(np.float64)
    status = np.empty((N, len(chans)), dtype=object)
    coverage = np.zeros((N, len(chans)), dtype=np.float32)
    prefix = str(out_prefix)
    paths = [Path(prefix + s) for s in (".images.npy", ".mask.npy", ".index.parquet")]
    with ExitStack() as stack:
        t_img, t_mask, t_index = (stack.enter_context(atomic_path(p)) for p in paths)
        w_img = _RowWriter(t_img, (N, len(chans), n, n), np.float32)
        w_mask = _RowWriter(t_mask, (N, len(chans), n, n), bool)
        for start in range(0, N, chunk_rows):
            stop = min(start + chunk_rows, N)
            img = np.zeros((stop - start, len(chans), n, n), np.float32)
            msk = np.ones((stop - start, len(chans), n, n), bool)
            for k in range(start, stop):
                oid, ra, dec = int(ids[k]), float(ras[k]), float(decs[k])
                for c, band in enumerate(BANDS):
                    st, path = lookup.get((oid, band), ("failed", ""))
                    if st == "ok":
                        try:
                            das = read_das(path)
                            img[k - start, c], msk[k - start, c] = crop_hsc(das, ra, dec, n,
                                                                            das.mask_value(mask_planes))
                        except (OSError, CutoutFormatError):
                            st = "failed"
                    status[k, c] = st
                if ir is not None:
                    j = ir_row.get(oid)
                    if j is None:
                        status[k, nb:] = "failed"
                    else:
                        img[k - start, nb:], msk[k - start, nb:] = crop_ir(ir.flux[j], ir.coverage[j],
                                                                          tuple(ir.pixel_xy[j]), n)
                        status[k, nb:] = [str(s) for s in ir.status[j]]
            coverage[start:stop] = 1.0 - msk.mean(axis=(2, 3))
            w_img.write(start, img)
            w_mask.write(start, msk)
        cols: dict[str, object] = {"row": np.arange(N, dtype=np.int64), "object_id": ids, "ra": ras, "dec": decs}
        for c, b in enumerate(chans):
            cols[f"{b}_status"] = status[:, c].astype(str) if N else np.array([], dtype=str)
            cols[f"{b}_coverage"] = coverage[:, c]
        index = pd.DataFrame(cols)
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pandas(index, preserve_index=False), t_index, compression="zstd")
    return StackResult(n_objects=N, channels=chans, size_px=n, index=index)


# ---------------------------------------------------------------- meta.json: streaming statistics

HIST_BINS = 1 << 16
HIST_SOFT_NJY = 1.0
HIST_UMAX = 32.0


@dataclass
class RobustHistogram:
    """Bounded-memory summary of a stream of values (see module docstring for the accuracy)."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, np.int64))
    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf

    def add(self, values: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        u = np.arcsinh(v / HIST_SOFT_NJY)
        idx = np.clip(((u + HIST_UMAX) * (HIST_BINS / (2 * HIST_UMAX))).astype(np.int64), 0, HIST_BINS - 1)
        self.counts += np.bincount(idx, minlength=HIST_BINS)
        self.n += v.size
        self.total += float(v.sum())
        self.total_sq += float(np.dot(v, v))
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))

    @staticmethod
    def _edges_to_x(u: np.ndarray) -> np.ndarray:
        return HIST_SOFT_NJY * np.sinh(u)

    def quantile(self, q: float) -> float:
        if self.n == 0:
            return math.nan
        cum = np.cumsum(self.counts)
        target = q * self.n
        k = int(np.searchsorted(cum, target, side="left"))
        k = min(k, HIST_BINS - 1)
        below = cum[k - 1] if k > 0 else 0
        frac = (target - below) / self.counts[k] if self.counts[k] else 0.5
        du = 2 * HIST_UMAX / HIST_BINS
        x = float(self._edges_to_x(-HIST_UMAX + (k + frac) * du))
        return min(max(x, self.lo), self.hi)

    def cdf(self, x: float) -> float:
        """Fraction of values <= x, counts spread uniformly in asinh space inside each bin."""
        du = 2 * HIST_UMAX / HIST_BINS
        pos = (math.asinh(x / HIST_SOFT_NJY) + HIST_UMAX) / du
        k = min(max(int(math.floor(pos)), 0), HIST_BINS - 1)
        below = int(self.counts[:k].sum())
        return (below + min(max(pos - k, 0.0), 1.0) * int(self.counts[k])) / self.n

    def mad(self, median: float) -> float:
        """Median absolute deviation: the half-width d with F(median + d) - F(median - d) = 1/2 (bisection)."""
        if self.n == 0:
            return math.nan
        lo, hi = 0.0, max(self.hi - median, median - self.lo, 0.0)
        for _ in range(60):
            d = 0.5 * (lo + hi)
            if self.cdf(median + d) - self.cdf(median - d) < 0.5:
                lo = d
            else:
                hi = d
        return 0.5 * (lo + hi)

    def summary(self) -> dict[str, float]:
        med = self.quantile(0.5)
        mad = self.mad(med)
        mean = self.total / self.n if self.n else math.nan
        std = math.sqrt(max(self.total_sq / self.n - mean * mean, 0.0)) if self.n else math.nan
        return {"n_pixels": int(self.n), "median": med, "mad": mad, "sigma_mad": 1.4826 * mad,
                "p01": self.quantile(0.01), "p99_9": self.quantile(0.999), "mean": mean, "std": std,
                "min": self.lo if self.n else math.nan, "max": self.hi if self.n else math.nan}


def mask_path_for(images_path: str | os.PathLike) -> Path:
    p = str(images_path)
    if not p.endswith(".images.npy"):
        raise ValueError(f"{p}: expected a '<shard>.images.npy' path")
    return Path(p[: -len(".images.npy")] + ".mask.npy")


def compute_meta(images_paths: list[str | os.PathLike], scale_arcsec: float, chunk_rows: int = 512) -> dict:
    """meta.json content for one scale, streaming over every shard's memmaps."""
    n_px = odd_size(scale_arcsec)
    chans: tuple[str, ...] | None = None
    hists: list[RobustHistogram] = []
    masked: np.ndarray | None = None
    n_objects = 0
    shards = []
    for p in images_paths:
        img = np.load(p, mmap_mode="r")
        msk = np.load(mask_path_for(p), mmap_mode="r")
        if img.shape != msk.shape or img.ndim != 4 or img.shape[2:] != (n_px, n_px):
            raise ValueError(f"{p}: shape {img.shape} / mask {msk.shape} does not match scale {scale_arcsec}\" "
                             f"({n_px} px)")
        these = channels(img.shape[1] == len(BANDS) + len(IR_BANDS))
        if img.shape[1] not in (len(BANDS), len(BANDS) + len(IR_BANDS)) or (chans and these != chans):
            raise ValueError(f"{p}: {img.shape[1]} channels, expected {len(chans or BANDS)}")
        if chans is None:
            chans, hists, masked = these, [RobustHistogram() for _ in these], np.zeros(len(these), np.int64)
        for start in range(0, img.shape[0], chunk_rows):
            im, mk = np.asarray(img[start:start + chunk_rows]), np.asarray(msk[start:start + chunk_rows])
            for c in range(len(chans)):
                hists[c].add(im[:, c][~mk[:, c]])
                masked[c] += int(mk[:, c].sum())
        n_objects += img.shape[0]
        shards.append({"images": str(p), "n_objects": int(img.shape[0])})
        del img, msk
    chans = chans or BANDS
    stats = {}
    for c, b in enumerate(chans):
        s = hists[c].summary() if hists else RobustHistogram().summary()
        total = n_objects * n_px * n_px
        s["masked_fraction"] = float(masked[c]) / total if total and masked is not None else math.nan
        stats[b] = s
    return {"scale_arcsec": scale_arcsec, "pixel_scale_arcsec": HSC_PIXEL_SCALE_ARCSEC, "size_px": n_px,
            "size_arcsec": round(n_px * HSC_PIXEL_SCALE_ARCSEC, 6), "bands": list(chans), "units": "nJy per HSC pixel",
            "normalised": False, "n_objects": n_objects, "shards": shards, "stats": stats,
            "stats_method": (f"unmasked pixels only; fixed histogram of {HIST_BINS} bins uniform in "
                             f"asinh(x/{HIST_SOFT_NJY:g} nJy) for |u| < {HIST_UMAX:g}; quantiles interpolated within a "
                             "bin, MAD by bisection on that interpolated CDF (error << 1 bin: 0.1% of |x|, "
                             "1e-3 nJy near 0); "
                             "sigma_mad = 1.4826 MAD; n, mean, std, min, max exact")}


def write_meta(meta: dict, path: str | os.PathLike) -> None:
    write_text_atomic(path, json.dumps(meta, indent=2, allow_nan=True) + "\n")


# ---------------------------------------------------------------- CLI

def _parse_planes(text: str) -> tuple[str, ...]:
    return tuple(p.strip().upper() for p in text.split(",") if p.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.tensors", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stack", help="stack one shard at one scale")
    s.add_argument("--scale", type=float, required=True, help="image scale in arcsec (6 -> 35 px)")
    s.add_argument("--candidates", required=True)
    s.add_argument("--hsc-manifest", required=True)
    s.add_argument("--ir", default=None, help="reproject_ir npz; adds J, Ks channels")
    s.add_argument("--out-prefix", required=True, help="e.g. results/tensors/6arcsec/<shard>")
    s.add_argument("--mask-planes", default=",".join(DEFAULT_MASK_PLANES))
    m = sub.add_parser("meta", help="meta.json of one scale over all shards")
    m.add_argument("--scale", type=float, required=True)
    m.add_argument("--inputs", nargs="*", default=[], help="<shard>.images.npy files")
    m.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "stack":
        from workflow_scripts.cutout_cache import read_manifest
        from workflow_scripts.reproject_ir import load_ir

        cand = pd.read_parquet(args.candidates, columns=["object_id", "ra", "dec"])
        res = stack_shard(cand, read_manifest(args.hsc_manifest), args.out_prefix, args.scale,
                          ir=load_ir(args.ir) if args.ir else None, mask_planes=_parse_planes(args.mask_planes))
        print(f"stacked {res.n_objects} objects x {len(res.channels)} channels x {res.size_px}^2 px "
              f"-> {args.out_prefix}.*")
    else:
        write_meta(compute_meta(args.inputs, args.scale), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

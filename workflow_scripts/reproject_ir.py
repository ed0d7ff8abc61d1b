"""Stage ``reproject_ir``: VHS J and Ks resampled onto each object's HSC cutout grid, flux-conserving.

Per object and band: ADU -> nJy per native pixel (``VhsCutout.njy_per_adu``) -> surface
brightness (/ native pixel area, arcsec^2) -> ``reproject_exact`` onto the HSC cutout's WCS
-> x HSC pixel area = nJy per HSC pixel.

Why ``reproject_exact``: it averages surface brightness over the exact spherical overlap of
input and output pixels, so flux is conserved to round-off (measured 1e-11 relative on a
0.9" Gaussian, aligned and 37-degree rotated 0.34" grids; centroid error < 0.001") and its
footprint is the covered fraction of each output pixel. ``reproject_adaptive(conserve_flux=True)``
was ~1.5x faster (4.7 vs 6.5-8.8 ms per 49x49 band) but expects flux per pixel rather than
surface brightness and widens NaN holes by its kernel; ``reproject_interp`` does not conserve flux
by construction. At 10^6 objects x 2 bands exact costs ~4 CPU-hours, spread over shards.

Coverage: an HSC pixel is covered when its footprint is >= MIN_FOOTPRINT (fully inside the
VHS image) and its value is finite (reproject_exact propagates NaN from any overlapping input
pixel, so the edge of a NaN hole or partial tile is masked conservatively). Uncovered pixels
are NaN in ``flux`` and False in ``coverage``. Objects without a VHS cutout (status
no_coverage / failed), or without any readable HSC band to define the grid, get fully masked
channels.

Not done here: PSF matching. VISTA's PSF (~0.9") is broader than HSC's (~0.7"); the IR
channels keep their own PSF. An optional PSF-matching step can follow later.

Output ``results/cutouts/ir_on_hsc/{shard}.npz`` (uncompressed, written atomically):
``object_id`` (N,) int64, ``bands`` ["J", "Ks"], ``flux`` float32 (N, 2, H, W) nJy per HSC
pixel, ``coverage`` bool (N, 2, H, W), ``status`` (N, 2) ok / no_coverage / failed, ``reason``
(N, 2), ``pixel_xy`` (N, 2) float64 = the object's 0-based (x, y) on its HSC grid (NaN without
a grid), ``hsc_shape`` (N, 2). Arrays share the pixel indexing of the object's HSC cutout
(origin = its pixel (0, 0)); H, W = the largest HSC cutout shape in the shard (pixels beyond a
smaller cutout are reprojected too). ``load_ir`` memory-maps ``flux`` and ``coverage``; the
writer streams them from temporary memmaps, so memory does not grow with N.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workflow_scripts.contracts import BANDS, atomic_path
from workflow_scripts.cutout_format import CutoutFormatError, VhsCutout, read_vhs_cutout
from workflow_scripts.fits_fast import read_das

IR_BANDS: tuple[str, ...] = ("J", "Ks")
MIN_FOOTPRINT = 0.999  # fraction of an HSC pixel that must lie inside the VHS image


def pixel_area_arcsec2(wcs) -> float:
    """Area of one pixel at the reference point, arcsec^2 (TAN: constant to 1e-9 over a cutout)."""
    from astropy.wcs.utils import proj_plane_pixel_area

    return float(proj_plane_pixel_area(wcs.celestial)) * 3600.0 ** 2


def reproject_to_hsc(vhs: VhsCutout, target_wcs, shape: tuple[int, int], min_footprint: float = MIN_FOOTPRINT
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One VHS band on the HSC grid (*target_wcs*, *shape*): (flux nJy per HSC pixel float32 with NaN, coverage)."""
    from reproject import reproject_exact

    sb = np.asarray(vhs.image, dtype=np.float64) * (vhs.njy_per_adu / pixel_area_arcsec2(vhs.wcs))  # nJy/arcsec^2
    out, footprint = reproject_exact((sb, vhs.wcs), target_wcs, shape_out=tuple(shape), parallel=False)
    coverage = np.isfinite(out) & (footprint >= min_footprint)
    flux = np.where(coverage, out * pixel_area_arcsec2(target_wcs), np.nan).astype(np.float32)
    return flux, coverage


@dataclass
class IrOnHsc:
    """Contents of an ir_on_hsc npz (flux and coverage memory-mapped when the file is uncompressed)."""

    object_id: np.ndarray
    bands: tuple[str, ...]
    flux: np.ndarray
    coverage: np.ndarray
    status: np.ndarray
    reason: np.ndarray
    pixel_xy: np.ndarray
    hsc_shape: np.ndarray


def _npz_member_memmap(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """Memory-map one stored (uncompressed) .npy member of a zip; None if it cannot be."""
    info = zf.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        sig, *_rest = struct.unpack("<4s5H3I2H", fh.read(30))
        if sig != b"PK\x03\x04":
            return None
        name_len, extra_len = _rest[-2], _rest[-1]
        fh.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(fh)
        if fortran or dtype.hasobject or int(np.prod(shape)) == 0:
            return None
        return np.memmap(path, dtype=dtype, mode="r", offset=fh.tell(), shape=shape)


def load_ir(path: str | os.PathLike) -> IrOnHsc:
    """Open an ir_on_hsc npz; large arrays are memory-mapped (no pickles are ever loaded)."""
    path = Path(path)
    with np.load(path, allow_pickle=False) as z, zipfile.ZipFile(path) as zf:
        small = {k: z[k] for k in ("object_id", "bands", "status", "reason", "pixel_xy", "hsc_shape")}
        big = {}
        for k in ("flux", "coverage"):
            mm = _npz_member_memmap(path, zf, f"{k}.npy")
            big[k] = mm if mm is not None else z[k]
    return IrOnHsc(object_id=small["object_id"], bands=tuple(str(b) for b in small["bands"]), flux=big["flux"],
                   coverage=big["coverage"], status=small["status"], reason=small["reason"],
                   pixel_xy=small["pixel_xy"], hsc_shape=small["hsc_shape"])


def _hsc_grid(hsc_rows: dict[str, tuple[str, str]], ra: float, dec: float):
    """(pixel mapper, shape, pixel_xy) of the object's HSC grid from its first readable ok band, or None."""
    for band in BANDS:
        status, path = hsc_rows.get(band, ("failed", ""))
        if status != "ok":
            continue
        try:
            das = read_das(path)
        except (OSError, CutoutFormatError):
            continue
        x, y = das.wcs.world_to_pixel(ra, dec)
        return das.wcs, das.shape, (float(x), float(y))  # small; the astropy WCS is built when needed
    return None


def _rows_by_object(manifest: pd.DataFrame) -> dict[int, dict[str, tuple[str, str, str]]]:
    out: dict[int, dict[str, tuple[str, str, str]]] = {}
    for o, b, s, p, r in zip(manifest["object_id"], manifest["band"], manifest["status"], manifest["path"],
                             manifest["reason"]):
        out.setdefault(int(o), {})[str(b)] = (str(s), str(p), str(r))
    return out


def reproject_shard(candidates: pd.DataFrame, hsc_manifest: pd.DataFrame, vhs_manifest: pd.DataFrame,
                    out_path: str | os.PathLike) -> dict[str, int]:
    """Reproject every candidate's J and Ks onto its HSC grid; write the npz atomically; return status counts."""
    ids = candidates["object_id"].to_numpy(np.int64)
    ras, decs = candidates["ra"].to_numpy(np.float64), candidates["dec"].to_numpy(np.float64)
    N = len(ids)
    hsc = {o: {b: (s, p) for b, (s, p, _r) in rows.items()} for o, rows in _rows_by_object(hsc_manifest).items()}
    vhs = _rows_by_object(vhs_manifest)
    # pass 1: every object's HSC grid (headers only are needed; cheap), to size the arrays
    grids = [_hsc_grid(hsc.get(int(o), {}), float(r), float(d)) for o, r, d in zip(ids, ras, decs)]
    shapes = np.array([g[1] if g else (0, 0) for g in grids], dtype=np.int64).reshape(N, 2)
    H, W = (int(shapes[:, 0].max()), int(shapes[:, 1].max())) if N else (0, 0)
    status = np.full((N, 2), "failed", dtype="<U11")
    reason = np.full((N, 2), "", dtype=object)
    pixel_xy = np.array([g[2] if g else (np.nan, np.nan) for g in grids], dtype=np.float64).reshape(N, 2)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as tmpdir:
        shape4 = (N, 2, H, W)
        if N and H and W:
            flux = np.lib.format.open_memmap(Path(tmpdir) / "flux.npy", "w+", np.float32, shape4)
            cov = np.lib.format.open_memmap(Path(tmpdir) / "coverage.npy", "w+", bool, shape4)
            flux[:] = np.nan
        else:
            flux, cov = np.full(shape4, np.nan, np.float32), np.zeros(shape4, bool)
        for k in range(N):
            rows = vhs.get(int(ids[k]), {})
            for j, band in enumerate(IR_BANDS):
                st, path, why = rows.get(band, ("failed", "", "missing from the VHS manifest"))
                if st == "ok" and grids[k] is None:
                    st, why = "failed", "no readable HSC band to define the grid"
                if st == "ok":
                    try:
                        f, c = reproject_to_hsc(read_vhs_cutout(path, band=band), grids[k][0].to_astropy(), (H, W))
                        flux[k, j], cov[k, j] = f, c
                        if not c.any():
                            st, why = "no_coverage", "VHS cutout does not overlap the HSC grid"
                    except (OSError, CutoutFormatError, ValueError) as exc:
                        st, why = "failed", f"{type(exc).__name__}: {exc}"
                status[k, j], reason[k, j] = st, why
        with atomic_path(out_path) as tmp, open(tmp, "wb") as fh:
            # np.savez writes memmaps in 16 MiB chunks and stores them uncompressed (memory-mappable)
            np.savez(fh, object_id=ids, bands=np.array(IR_BANDS), flux=flux, coverage=cov, status=status,
                     reason=reason.astype(str) if N else np.zeros((0, 2), "<U1"), pixel_xy=pixel_xy,
                     hsc_shape=shapes)
        del flux, cov
    values, counts = np.unique(status, return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts)}


def main(argv: list[str] | None = None) -> int:
    from workflow_scripts.cutout_cache import read_manifest

    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.reproject_ir",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", required=True)
    parser.add_argument("--hsc-manifest", required=True)
    parser.add_argument("--vhs-manifest", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    cand = pd.read_parquet(args.candidates, columns=["object_id", "ra", "dec"])
    counts = reproject_shard(cand, read_manifest(args.hsc_manifest), read_manifest(args.vhs_manifest), args.out)
    print(f"reproject_ir: {len(cand)} objects -> {args.out} (band statuses {counts})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

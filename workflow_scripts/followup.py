"""Stage `followup`: proposal exports, observatory target lists and finding charts of a run's ranked candidates.

Input: ``results/runs/{run}/candidates.parquet`` (ranked; rank 1 = best). Outputs in the run directory:

* ``candidates.{ecsv,vot,csv}``: the top ``top_n_followup`` candidates; ``candidates_all.{ecsv,vot,csv}``: all of
  them. ECSV and VOTable carry units and column descriptions; magnitudes that are 3-sigma upper limits keep the
  limit value in ``{b}_mag``, a masked error and ``{b}_mag_is_limit = True``; in the CSV they read ``"> 25.30"``.
  Colours keep their limit marker (``""`` measured, ``lower``, ``upper``, ``none``); in the CSV a lower limit
  reads ``"> 1.61"``, an upper limit ``"< 0.20"`` and an unconstrained colour is empty.
* ``targets_magellan.cat``: Las Campanas Observatory / Magellan TCS catalogue (see `magellan_line`).
* ``targets_lbt.txt``: plain "name RA Dec equinox" star list (see `lbt_line`; no authoritative LBT OT import
  format was found, so this is the generic star-list layout, stated plainly).
* ``charts/{rank:03d}_{name}.png`` per charted candidate and ``finding_charts.pdf`` (one page each): z, y and
  (where VHS covers it) J panels of a 60" field, north up / east left, 10" scale bar, N/E arrows, reticle.

Chart cutouts go through the same cutout machinery and persistent cache as the ``cutouts_*`` stages
(workflow_scripts.cutouts), only with a larger half size (30" by default), so a rerun refetches nothing.

Every file is written atomically (temporary file + rename): a reader never sees half a list.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from astropy.wcs import WCS

from workflow_scripts.contracts import BANDS, atomic_path, write_text_atomic

log = logging.getLogger(__name__)

#: Colour columns and their limit-marker columns.
COLOURS: tuple[str, ...] = ("i_minus_z", "z_minus_y")
#: Boolean flag columns carried into the exports when present.
FLAG_COLUMNS: tuple[str, ...] = ("flag_bd_peninsula", "flag_moving", "flag_artefact")
#: Bands of the finding-chart panels: HSC z, y and VHS J.
CHART_HSC_BANDS: tuple[str, ...] = ("z", "y")
CHART_IR_BANDS: tuple[str, ...] = ("J",)
CHART_HALF_SIZE_ARCSEC = 30.0
SCALE_BAR_ARCSEC = 10.0


# ----------------------------------------------------------------------------------------------------------------
# Sexagesimal coordinates and IAU designations


def _split_units(total_units: int, per: Sequence[int]) -> list[int]:
    """Split an integer count of the smallest unit into mixed-radix parts (most significant first)."""
    parts = []
    for p in reversed(per):
        parts.append(total_units % p)
        total_units //= p
    parts.append(total_units)
    return parts[::-1]


def _to_units(value: float, scale: float, truncate: bool) -> int:
    """``value * scale`` as an integer, truncated (floor) or rounded half-up.

    Truncation adds 1e-6 of the last unit first so that a value printed with exactly the kept digits
    (e.g. 16.64 s stored as 16.639999...) is not truncated one unit too low.
    """
    x = value * scale
    return int(math.floor(x + 1e-6)) if truncate else int(math.floor(x + 0.5))


def ra_parts(ra_deg: float, ndp: int = 2, truncate: bool = False) -> tuple[int, int, int, int]:
    """(hours, minutes, seconds, fraction of a second in units of 10**-ndp), wrapped to [0, 24h)."""
    ra = float(ra_deg) % 360.0
    frac = 10 ** ndp
    units = _to_units(ra / 15.0 * 3600.0, frac, truncate) % (24 * 3600 * frac)
    h, m, s, f = _split_units(units, (60, 60, frac))
    return h, m, s, f


def dec_parts(dec_deg: float, ndp: int = 1, truncate: bool = False) -> tuple[str, int, int, int, int]:
    """(sign, degrees, arcmin, arcsec, fraction of an arcsec in units of 10**-ndp) of |dec|, sign kept."""
    dec = float(dec_deg)
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"declination {dec} outside [-90, 90]")
    sign = "-" if dec < 0 else "+"  # -0.0 is written "+": it lies on the equator
    frac = 10 ** ndp
    units = min(_to_units(abs(dec) * 3600.0, frac, truncate), 90 * 3600 * frac)
    d, m, s, f = _split_units(units, (60, 60, frac))
    return sign, d, m, s, f


def _sec(s: int, f: int, ndp: int) -> str:
    return f"{s:02d}.{f:0{ndp}d}" if ndp > 0 else f"{s:02d}"


def format_ra(ra_deg: float, sep: str = ":", ndp: int = 2, truncate: bool = False) -> str:
    """RA as ``hh:mm:ss.ss`` (rounded by default; *truncate* for designations)."""
    h, m, s, f = ra_parts(ra_deg, ndp, truncate)
    return f"{h:02d}{sep}{m:02d}{sep}{_sec(s, f, ndp)}"


def format_dec(dec_deg: float, sep: str = ":", ndp: int = 1, truncate: bool = False) -> str:
    """Dec as ``+dd:mm:ss.s`` with an explicit sign (``-00:00:00.0`` for a small negative Dec)."""
    sign, d, m, s, f = dec_parts(dec_deg, ndp, truncate)
    return f"{sign}{d:02d}{sep}{m:02d}{sep}{_sec(s, f, ndp)}"


def iau_name(ra: float, dec: float, prefix: str = "HSC") -> str:
    """IAU-style designation ``{prefix} JHHMMSS.ss+DDMMSS.s`` from ICRS (J2000) degrees.

    Following the IAU Recommendations for Nomenclature (IAU Commission 5 / WG Designations,
    https://cdsweb.u-strasbg.fr/Dic/iau-spec.html): the coordinates are *truncated*, never rounded, so the
    designation always names the box that contains the source; the sign of the declination is always written
    (``-000000.0`` for -0.00001 deg). RA 359.99999... truncates to ``235959.99``, never ``240000.00``.
    """
    return f"{prefix} J{format_ra(ra, '', 2, True)}{format_dec(dec, '', 1, True)}"


def file_safe(name: str) -> str:
    """A designation as a file-name part: spaces become underscores (``+`` and ``.`` are kept)."""
    return "".join(c if (c.isalnum() or c in "+-._") else "_" for c in name)


# ----------------------------------------------------------------------------------------------------------------
# Export tables


def _text_or_empty(values: Iterable) -> list[str]:
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]


def followup_table(ranked: pd.DataFrame, top_n: int | None = None, prefix: str = "HSC") -> pd.DataFrame:
    """The export columns of the ranked candidates, sorted by rank (best first), optionally the top *top_n*.

    Columns: rank, name, object_id, ra, dec (deg, ICRS), ra_hms, dec_dms (J2000 sexagesimal, rounded),
    shard, selection_branch, per band ``{b}_mag``/``{b}_magerr``/``{b}_mag_is_limit``, the colours with their
    ``_limit`` markers, score, flags, nearest_known_name/label.
    """
    df = ranked.sort_values("rank", kind="stable").reset_index(drop=True)
    if top_n is not None:
        df = df.head(int(top_n))
    out = pd.DataFrame({
        "rank": df["rank"].astype("int64"),
        "name": [iau_name(r, d, prefix) for r, d in zip(df["ra"], df["dec"])],
        "object_id": df["object_id"].astype("int64"),
        "ra": df["ra"].astype(float),
        "dec": df["dec"].astype(float),
        "ra_hms": [format_ra(r) for r in df["ra"]],
        "dec_dms": [format_dec(d) for d in df["dec"]],
    })
    for col in ("shard", "selection_branch"):
        out[col] = _text_or_empty(df[col]) if col in df else ""
    for b in BANDS:
        is_limit = df[f"{b}_mag_is_limit"].fillna(False).astype(bool) if f"{b}_mag_is_limit" in df else False
        out[f"{b}_mag"] = df[f"{b}_mag"].astype(float)
        out[f"{b}_magerr"] = df[f"{b}_magerr"].astype(float).where(~is_limit)
        out[f"{b}_mag_is_limit"] = is_limit
    for c in COLOURS:
        out[c] = df[c].astype(float)
        out[f"{c}_limit"] = _text_or_empty(df[f"{c}_limit"]) if f"{c}_limit" in df else ""
    out["score"] = df["score"].astype(float)
    for f in FLAG_COLUMNS:
        out[f] = df[f].fillna(False).astype(bool) if f in df else False
    for col in ("nearest_known_name", "nearest_known_label"):
        out[col] = _text_or_empty(df[col]) if col in df else ""
    return out


_DESCRIPTIONS: dict[str, str] = {
    "rank": "Rank of the candidate (1 = best)",
    "name": "IAU-style designation (truncated J2000 sexagesimal coordinates)",
    "object_id": "HSC PDR3 object_id (or mock-sky id)",
    "ra": "Right ascension (ICRS, J2000)",
    "dec": "Declination (ICRS, J2000)",
    "ra_hms": "Right ascension, hh:mm:ss.ss (ICRS, J2000; rounded)",
    "dec_dms": "Declination, +dd:mm:ss.s (ICRS, J2000; rounded)",
    "shard": "Sky shard of the pipeline",
    "selection_branch": "Colour-selection branch (i_dropout or z_dropout)",
    "score": "Ranking score of the run (higher = more quasar-like)",
    "flag_bd_peninsula": "In the brown-dwarf locus of colour space",
    "flag_moving": "Positions differ between bands/epochs (moving-object suspect)",
    "flag_artefact": "Image artefact suspect",
    "nearest_known_name": "Nearest known quasar / brown dwarf (name)",
    "nearest_known_label": "Nearest known object (class label)",
}


def _describe(col: str) -> str:
    if col in _DESCRIPTIONS:
        return _DESCRIPTIONS[col]
    for b in BANDS:
        if col == f"{b}_mag":
            return f"HSC {b} PSF magnitude (AB); the 3-sigma upper limit where {b}_mag_is_limit"
        if col == f"{b}_magerr":
            return f"Error of {b}_mag (mag); masked for upper limits"
        if col == f"{b}_mag_is_limit":
            return f"True: {b}_mag is a 3-sigma upper limit (source fainter than this)"
    for c in COLOURS:
        a, z = c.split("_minus_")
        if col == c:
            return f"Colour {a} - {z} (AB mag); a limit where {c}_limit is lower/upper"
        if col == f"{c}_limit":
            return f"'' measured, 'lower' (true colour redder), 'upper' (bluer), 'none' (unconstrained)"
    return ""


def to_astropy_table(export: pd.DataFrame, meta: dict | None = None):
    """An astropy Table of *export* with units, descriptions, masked errors/NaNs and table meta."""
    import astropy.units as u
    from astropy.table import MaskedColumn, Table

    t = Table()
    for col in export.columns:
        values = export[col].to_numpy()
        unit = None
        if col in ("ra", "dec"):
            unit = u.deg
        elif col.endswith("_mag") or col.endswith("_magerr") or col in COLOURS:
            unit = u.mag
        if values.dtype.kind == "f":
            t[col] = MaskedColumn(values, mask=np.isnan(values), unit=unit, description=_describe(col))
        elif values.dtype.kind == "O":
            t[col] = MaskedColumn(values.astype(str), unit=unit, description=_describe(col))
        else:
            t[col] = MaskedColumn(values, unit=unit, description=_describe(col))
    t.meta.update({
        "description": "z > 6.5 quasar candidates ranked for spectroscopic follow-up (hsc_highz_qso pipeline)",
        "frame": "ICRS", "equinox": "J2000", "mag_system": "AB",
        "upper_limits": "3-sigma; {b}_mag holds the limit where {b}_mag_is_limit is True",
    })
    t.meta.update(meta or {})
    return t


def _fmt_mag(mag: float, err: float, is_limit: bool) -> tuple[str, str]:
    if mag is None or not np.isfinite(mag):
        return "", ""
    if is_limit:
        return f"> {mag:.2f}", ""
    return f"{mag:.2f}", ("" if err is None or not np.isfinite(err) else f"{err:.2f}")


def _fmt_colour(value: float, limit: str) -> str:
    if limit == "none" or value is None or not np.isfinite(value):
        return ""
    return {"lower": f"> {value:.2f}", "upper": f"< {value:.2f}"}.get(limit, f"{value:.2f}")


def csv_frame(export: pd.DataFrame) -> pd.DataFrame:
    """The CSV form: magnitudes as text with ``"> 25.30"`` for upper limits, colours with ``>``/``<``."""
    out = export.copy()
    out["ra"] = [f"{v:.7f}" for v in export["ra"]]
    out["dec"] = [f"{v:+.7f}" for v in export["dec"]]
    for b in BANDS:
        pairs = [_fmt_mag(m, e, lim) for m, e, lim in
                 zip(export[f"{b}_mag"], export[f"{b}_magerr"], export[f"{b}_mag_is_limit"])]
        out[f"{b}_mag"] = [p[0] for p in pairs]
        out[f"{b}_magerr"] = [p[1] for p in pairs]
    for c in COLOURS:
        out[c] = [_fmt_colour(v, lim) for v, lim in zip(export[c], export[f"{c}_limit"])]
    out["score"] = [f"{v:.6g}" for v in export["score"]]
    return out


def write_exports(export: pd.DataFrame, out_dir: str | Path, stem: str = "candidates",
                  meta: dict | None = None) -> list[Path]:
    """Write ``{stem}.ecsv``, ``{stem}.vot`` and ``{stem}.csv`` atomically; return the paths."""
    out_dir = Path(out_dir)
    table = to_astropy_table(export, meta)
    paths = [out_dir / f"{stem}.ecsv", out_dir / f"{stem}.vot", out_dir / f"{stem}.csv"]
    with atomic_path(paths[0]) as tmp:
        table.write(tmp, format="ascii.ecsv", overwrite=True)
    with atomic_path(paths[1]) as tmp:
        vot = table.copy()
        vot.meta = {k: str(v) for k, v in vot.meta.items()}
        vot.write(tmp, format="votable", overwrite=True)
    with atomic_path(paths[2]) as tmp:
        csv_frame(export).to_csv(tmp, index=False)
    return paths


# ----------------------------------------------------------------------------------------------------------------
# Observatory target lists


def _tcs_name(name: str) -> str:
    """A target name without whitespace (both formats split fields on whitespace)."""
    return "".join(c if (c.isalnum() or c in "+-._") else "_" for c in name)


def magellan_line(ref: int, name: str, ra: float, dec: float, rotator_angle: float = 0.0,
                  rotator_mode: str = "EQU", equinox: float = 2000.0) -> str:
    """One target in the Las Campanas Observatory (Magellan Baade/Clay TCS) catalogue format.

    Source: LCO, "Observing Catalogs Format", https://www.lco.cl/observing-catalogs-format/ — 16
    whitespace-separated fields:

    1. reference number (integer); 2. object name (alphanumerics, ``+ - . _``, no whitespace);
    3. RA ``hh:mm:ss.s``; 4. Dec ``±dd:mm:ss``; 5. equinox ``yyyy.y``;
    6. proper motion in RA (seconds of time per year); 7. proper motion in Dec (arcsec per year);
    8. instrument rotator offset angle (deg, ``dd.d``); 9. instrument rotator offset mode;
    10-12. RA, Dec, equinox of guide probe 1; 13-15. of guide probe 2 (zeros when no guide star is preselected);
    16. epoch of the coordinates for proper motion (may be 0 for zero proper motion; we write the equinox).

    We write RA to 0.01 s and Dec to 0.1" (more digits than the page's minimum; both are rounded),
    zero proper motions and zero guide probes. The rotator mode is instrument dependent and "the responsibility
    of the observer": ``EQU`` (sky position angle) is our default, to be checked against the instrument manual.
    """
    zero_probe = "00:00:00.00 +00:00:00.0 0.0"
    return (f"{int(ref):d} {_tcs_name(name)} {format_ra(ra)} {format_dec(dec)} {equinox:.1f} 0.00 0.00 "
            f"{rotator_angle:.1f} {rotator_mode} {zero_probe} {zero_probe} {equinox:.1f}")


def magellan_catalog(export: pd.DataFrame, rotator_angle: float = 0.0, rotator_mode: str = "EQU") -> str:
    """The Magellan catalogue text of *export* (header lines start with ``#``); references = ranks."""
    lines = ["# Magellan/LCO TCS catalogue (https://www.lco.cl/observing-catalogs-format/)",
             "# ref name RA Dec equinox pmRA[s/yr] pmDec[\"/yr] rot_angle rot_mode "
             "probe1_RA probe1_Dec probe1_eq probe2_RA probe2_Dec probe2_eq epoch"]
    lines += [magellan_line(r, n, ra, dec, rotator_angle, rotator_mode)
              for r, n, ra, dec in zip(export["rank"], export["name"], export["ra"], export["dec"])]
    return "\n".join(lines) + "\n"


LBT_NAME_WIDTH = 20


def lbt_line(name: str, ra: float, dec: float, equinox: float = 2000.0, comment: str = "") -> str:
    """One target of a plain star list, ``name  hh mm ss.ss  +dd mm ss.s  2000.0  [# comment]``.

    No authoritative LBT Observing Tool (LUCI/MODS) target-import layout was found; this is the widely used
    generic telescope star-list form (name without spaces, left-justified in 20 columns; RA and Dec separated
    by spaces; equinox; ``#`` comments), as accepted by e.g. the ING TCS user catalogues
    (https://www.ing.iac.es/Astronomy/telescopes/wht/catformat.html) and CTIO's TCS coordinate files
    (http://www.ctio.noao.edu/noao/content/TCS-Format). Check it against the current LBTO OT before a run.
    """
    line = (f"{_tcs_name(name):<{LBT_NAME_WIDTH}s} {format_ra(ra, ' ')} {format_dec(dec, ' ')} {equinox:.1f}")
    return f"{line}  # {comment}" if comment else line


def lbt_starlist(export: pd.DataFrame) -> str:
    """The LBT star-list text of *export*; the comment carries rank, z and y (with ``>`` for limits)."""
    lines = ["# LBT target list: name RA(hh mm ss.ss) Dec(+dd mm ss.s) equinox  (ICRS ~ J2000)"]
    for row in export.itertuples(index=False):
        z = _fmt_mag(row.z_mag, row.z_magerr, row.z_mag_is_limit)[0]
        y = _fmt_mag(row.y_mag, row.y_magerr, row.y_mag_is_limit)[0]
        lines.append(lbt_line(row.name, row.ra, row.dec, comment=f"rank={row.rank} z={z} y={y}"))
    return "\n".join(lines) + "\n"



# ----------------------------------------------------------------------------------------------------------------
# Finding charts


@dataclass
class ChartPanel:
    """One band of a chart: the image as displayed (row 0 at the bottom), with its WCS and labels."""

    band: str
    image: np.ndarray
    wcs: WCS
    label: str = ""


@dataclass
class OrientedImage:
    """An image turned north up / east left (as far as flips/transposes and, if needed, resampling allow)."""

    image: np.ndarray
    target_xy: tuple[float, float]  # pixel of the target in *image* (x = column, y = row; 0-based)
    pixel_scale_arcsec: float
    north: tuple[float, float]  # unit vector of north in display pixels (x right, y up)
    east: tuple[float, float]
    resampled: bool


def sky_jacobian(wcs: WCS, x: float, y: float) -> np.ndarray:
    """[[dE/dx, dE/dy], [dN/dx, dN/dy]] in arcsec per pixel at pixel (x, y) (0-based), by finite differences."""
    c0 = wcs.pixel_to_world(x, y)
    jac = np.empty((2, 2))
    for k, (dx, dy) in enumerate(((1.0, 0.0), (0.0, 1.0))):
        c1 = wcs.pixel_to_world(x + dx, y + dy)
        de, dn = c0.spherical_offsets_to(c1)
        jac[0, k], jac[1, k] = de.to_value("arcsec"), dn.to_value("arcsec")
    return jac


def _world_px(wcs: WCS, ra: float, dec: float) -> tuple[float, float]:
    x, y = wcs.all_world2pix([[ra, dec]], 0)[0]
    return float(x), float(y)


def orient_north_up(image: np.ndarray, wcs: WCS, ra: float, dec: float,
                    max_rotation_deg: float = 0.5) -> OrientedImage:
    """Turn *image* north up / east left for display with ``origin='lower'``.

    Axis swaps and flips are exact (no resampling); a residual rotation above *max_rotation_deg* (e.g. the
    rotated VHS tile grid) is removed by resampling onto a north-up TAN grid at the native pixel scale with
    ``reproject`` (bilinear). The returned N/E vectors are computed from the final WCS, so arrows are true.
    """
    img = np.asarray(image, dtype=float)
    ny, nx = img.shape
    tx, ty = _world_px(wcs, ra, dec)
    jac = sky_jacobian(wcs, tx, ty)
    scale = float(math.sqrt(abs(np.linalg.det(jac))))
    resampled = False
    # residual rotation of north away from +y after the best swap/flip
    if abs(jac[0, 1]) > abs(jac[0, 0]):  # x runs north-south: swap axes
        img, jac, (tx, ty), (nx, ny) = img.T, jac[:, ::-1], (ty, tx), (ny, nx)
    if jac[0, 0] > 0:  # east to the right: flip x
        img, jac, tx = img[:, ::-1], jac * np.array([[-1, 1], [-1, 1]]), nx - 1 - tx
    if jac[1, 1] < 0:  # north down: flip y
        img, jac, ty = img[::-1, :], jac * np.array([[1, -1], [1, -1]]), ny - 1 - ty
    rotation = math.degrees(math.atan2(-jac[1, 0], jac[1, 1])) if jac[1, 1] else 90.0
    if abs(rotation) > max_rotation_deg:
        from reproject import reproject_interp

        from workflow_scripts.cutout_format import tan_wcs

        n = int(max(image.shape))
        target = tan_wcs(ra, dec, (n, n), scale)
        data, _ = reproject_interp((np.asarray(image, dtype=float), wcs), target, shape_out=(n, n), order="bilinear")
        tx, ty = _world_px(target, ra, dec)
        jac = sky_jacobian(target, tx, ty)
        img, resampled = data, True
    inv = np.linalg.inv(jac)  # display-pixel step per (east, north) arcsec
    north, east = inv @ np.array([0.0, 1.0]), inv @ np.array([1.0, 0.0])
    north, east = north / np.hypot(*north), east / np.hypot(*east)
    return OrientedImage(np.ascontiguousarray(img), (float(tx), float(ty)), scale,
                         (float(north[0]), float(north[1])), (float(east[0]), float(east[1])), resampled)


def _display_limits(img: np.ndarray) -> tuple[float, float]:
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    med = float(np.median(finite))
    mad = float(np.median(np.abs(finite - med))) * 1.4826 or float(np.std(finite)) or 1.0
    return med - 2.0 * mad, med + 12.0 * mad


def draw_panel(ax, oriented: OrientedImage, title: str, field_arcsec: float,
               scale_bar_arcsec: float = SCALE_BAR_ARCSEC) -> dict:
    """Draw one oriented panel: inverted grey scale, reticle, 10" scale bar, N/E arrows; return its artists."""
    from matplotlib.lines import Line2D

    img = oriented.image
    lo, hi = _display_limits(img)
    ax.imshow(img, origin="lower", cmap="gray_r", vmin=lo, vmax=hi, interpolation="nearest")
    tx, ty = oriented.target_xy
    s = oriented.pixel_scale_arcsec
    half = 0.5 * field_arcsec / s
    ax.set_xlim(tx - half, tx + half)
    ax.set_ylim(ty - half, ty + half)
    # reticle: four ticks from 1.5" to 4" around the target, open in the middle
    r0, r1 = 1.5 / s, 4.0 / s
    reticle = []
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ln = Line2D([tx + dx * r0, tx + dx * r1], [ty + dy * r0, ty + dy * r1], color="red", lw=1.6, gid="reticle")
        ax.add_line(ln)
        reticle.append(ln)
    # scale bar, bottom left
    bar_px = scale_bar_arcsec / s
    x0, y0 = tx - half + 0.08 * 2 * half, ty - half + 0.08 * 2 * half
    bar = Line2D([x0, x0 + bar_px], [y0, y0], color="blue", lw=2.5, gid="scalebar")
    ax.add_line(bar)
    ax.text(x0 + bar_px / 2, y0 + 0.03 * 2 * half, f'{scale_bar_arcsec:g}"', color="blue", ha="center",
            va="bottom", fontsize=9)
    # N/E arrows, top right
    ax_len = 0.15 * 2 * half
    ox, oy = tx + half - 0.1 * 2 * half, ty + half - 0.2 * 2 * half
    arrows = {}
    for label, (vx, vy) in (("N", oriented.north), ("E", oriented.east)):
        arrows[label] = ax.annotate("", xy=(ox + vx * ax_len, oy + vy * ax_len), xytext=(ox, oy),
                                    arrowprops=dict(arrowstyle="->", color="darkgreen", lw=1.5))
        ax.text(ox + vx * ax_len * 1.25, oy + vy * ax_len * 1.25, label, color="darkgreen", ha="center",
                va="center", fontsize=9)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    return {"scalebar": bar, "scalebar_px": bar_px, "reticle": reticle, "arrows": arrows}


def _mag_text(row: pd.Series, band: str) -> str:
    mag = row.get(f"{band}_mag")
    if mag is None or not np.isfinite(mag):
        return f"{band}=–"
    if bool(row.get(f"{band}_mag_is_limit", False)):
        return f"{band}>{mag:.2f}"
    err = row.get(f"{band}_magerr")
    return f"{band}={mag:.2f}" + (f"±{err:.2f}" if err is not None and np.isfinite(err) else "")


def chart_title(row: pd.Series) -> str:
    """Name, rank, coordinates and i, z, y magnitudes (``>`` for upper limits) of one candidate."""
    mags = "  ".join(_mag_text(row, b) for b in ("i", "z", "y"))
    return (f"#{int(row['rank'])}  {row['name']}\n"
            f"RA {row['ra_hms']}  Dec {row['dec_dms']} (ICRS J2000)   {mags}")


def finding_chart(row: pd.Series, panels: Sequence[ChartPanel], field_arcsec: float = 2 * CHART_HALF_SIZE_ARCSEC):
    """A matplotlib Figure: one panel per band (z, y, J where present); returns (figure, per-panel artists)."""
    from matplotlib.figure import Figure

    n = max(len(panels), 1)
    fig = Figure(figsize=(3.6 * n, 4.3))
    artists = []
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(1, n, k + 1)
        oriented = orient_north_up(panel.image, panel.wcs, float(row["ra"]), float(row["dec"]))
        artists.append(draw_panel(ax, oriented, panel.label or panel.band, field_arcsec))
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no image data", ha="center", va="center")
        ax.set_axis_off()
    fig.suptitle(chart_title(row), fontsize=10)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.80, wspace=0.05)
    return fig, artists


def save_figure_atomic(fig, path: str | Path, fmt: str = "png", dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return Path(path)


def write_charts(export: pd.DataFrame, panels_of: Callable[[pd.Series], list[ChartPanel]], out_dir: str | Path,
                 n_charts: int, field_arcsec: float = 2 * CHART_HALF_SIZE_ARCSEC) -> list[Path]:
    """PNG per candidate (``charts/{rank:03d}_{name}.png``) and ``finding_charts.pdf`` with all of them."""
    from matplotlib.backends.backend_pdf import PdfPages

    out_dir = Path(out_dir)
    pngs = []
    rows = export.sort_values("rank", kind="stable").head(int(n_charts))
    with atomic_path(out_dir / "finding_charts.pdf") as tmp_pdf:
        with PdfPages(tmp_pdf) as pdf:
            for _, row in rows.iterrows():
                fig, _ = finding_chart(row, panels_of(row), field_arcsec)
                png = out_dir / "charts" / f"{int(row['rank']):03d}_{file_safe(row['name'])}.png"
                save_figure_atomic(fig, png)
                pdf.savefig(fig)
                pngs.append(png)
    return pngs


# ----------------------------------------------------------------------------------------------------------------
# Cutouts for the charts (through the cutout cache)


def chart_panels_from_cache(hsc_cache, vhs_cache) -> Callable[[pd.Series], list[ChartPanel]]:
    """panels_of(row) reading the cached z, y (HSC, nJy) and J (VHS, nJy) cutouts of one object."""
    from workflow_scripts.cutout_format import HSC_NJY_PER_COUNT, read_hsc_cutout, read_vhs_cutout

    def panels_of(row: pd.Series) -> list[ChartPanel]:
        oid = int(row["object_id"])
        panels = []
        for band in CHART_HSC_BANDS:
            if hsc_cache is not None and hsc_cache.lookup(oid, band) == "ok":
                cut = read_hsc_cutout(hsc_cache.path(oid, band), band)
                panels.append(ChartPanel(band, cut.image * HSC_NJY_PER_COUNT, cut.wcs, f"HSC {band}"))
        for band in CHART_IR_BANDS:
            if vhs_cache is not None and vhs_cache.lookup(oid, band) == "ok":
                cut = read_vhs_cutout(vhs_cache.path(oid, band), band)
                panels.append(ChartPanel(band, cut.image * cut.njy_per_adu, cut.wcs, f"VHS {band}"))
        return panels

    return panels_of


def fetch_chart_cutouts(export: pd.DataFrame, source: str, cutouts_cfg: dict, service_cfg: dict, vhs_cfg: dict | None,
                        seed: int, sky_cfg: dict, catalogs: list[str], truths: list[str],
                        half_size_arcsec: float = CHART_HALF_SIZE_ARCSEC, with_ir: bool = True):
    """Fill the cutout cache with chart-size z, y (and J) cutouts of *export*; return (hsc_cache, vhs_cache).

    ``mock``: rendered by `cutouts.mock_renderer`; ``hsc``: fetched by `cutouts.service_fetcher` (DAS; VSA
    for J when *vhs_cfg* is given). Cached entries are not fetched again.
    """
    from workflow_scripts.cutout_cache import CutoutCache
    from workflow_scripts.cutouts import cutout_requests, fetch_rendered, mock_release, mock_renderer, service_fetcher

    root = Path(cutouts_cfg.get("cache_dir", "cache"))
    jobs = [("hsc", CHART_HSC_BANDS)] + ([("vhs", CHART_IR_BANDS)] if with_ir and (source == "mock" or vhs_cfg) else [])
    caches: dict[str, object] = {"hsc": None, "vhs": None}
    for survey, bands in jobs:
        if source == "mock":
            cache = CutoutCache(root, survey, mock_release(seed, sky_cfg), "mock", half_size_arcsec)
        elif survey == "hsc":
            cache = CutoutCache(root, survey, service_cfg["release_version"], service_cfg["rerun"], half_size_arcsec)
        else:
            cache = CutoutCache(root, survey, vhs_cfg["database"], "", half_size_arcsec)
        requests = [r for r in cutout_requests(export, bands, half_size_arcsec)
                    if cache.lookup(r.object_id, r.band) is None]
        log.info("charts: %s: %d cutouts to fetch", survey, len(requests))
        if requests:
            if source == "mock":
                fetch_rendered(requests, cache, mock_renderer(survey, catalogs, truths, seed, sky_cfg))
            else:
                service_fetcher(survey, service_cfg if survey == "hsc" else vhs_cfg)(requests, cache)
        caches[survey] = cache
    return caches["hsc"], caches["vhs"]


# ----------------------------------------------------------------------------------------------------------------
# Stage


def run_followup(ranked_path: str | Path, out_dir: str | Path, top_n: int, n_charts: int, source: str,
                 cutouts_cfg: dict, service_cfg: dict, vhs_cfg: dict | None, seed: int, sky_cfg: dict,
                 catalogs: list[str], truths: list[str], prefix: str = "HSC",
                 half_size_arcsec: float = CHART_HALF_SIZE_ARCSEC, with_ir: bool = True) -> dict[str, list[Path]]:
    """Exports, target lists and finding charts of one run; returns the written paths by kind."""
    ranked = pd.read_parquet(ranked_path)
    out_dir = Path(out_dir)
    meta = {"source_table": str(ranked_path), "top_n": int(top_n)}
    full = followup_table(ranked, None, prefix)
    top = full.head(int(top_n))
    written = {"exports": write_exports(top, out_dir, "candidates", meta)
               + write_exports(full, out_dir, "candidates_all", meta)}
    written["targets"] = [write_text_atomic(out_dir / "targets_magellan.cat", magellan_catalog(top)),
                          write_text_atomic(out_dir / "targets_lbt.txt", lbt_starlist(top))]
    charted = top.head(int(n_charts))
    if len(charted):
        hsc_cache, vhs_cache = fetch_chart_cutouts(charted, source, cutouts_cfg, service_cfg, vhs_cfg, seed, sky_cfg,
                                                   catalogs, truths, half_size_arcsec, with_ir)
        written["charts"] = write_charts(charted, chart_panels_from_cache(hsc_cache, vhs_cache), out_dir,
                                         len(charted), 2 * half_size_arcsec)
    log.info("followup: %d candidates exported (%d in full list), %d charts", len(top), len(full),
             len(written.get("charts", [])))
    return written


def main(argv: list[str] | None = None) -> int:
    from workflow_scripts.cutouts import add_source_arguments

    parser = argparse.ArgumentParser(description="Proposal exports, target lists and finding charts of a ranked run.")
    parser.add_argument("--ranked", required=True, help="results/runs/{run}/candidates.parquet")
    parser.add_argument("--out-dir", required=True, help="results/runs/{run}/")
    parser.add_argument("--top-n", type=int, default=50, help="candidates in the exports and target lists")
    parser.add_argument("--charts", type=int, default=20, help="finding charts for the best N of the top-n")
    add_source_arguments(parser, cutouts_default='{"cache_dir": "cache"}')
    parser.add_argument("--vhs", default="", help="`vhs` config section as JSON (source hsc; J panels)")
    parser.add_argument("--no-ir", action="store_true", help="no J panels")
    parser.add_argument("--half-size", type=float, default=CHART_HALF_SIZE_ARCSEC, help="chart half size (arcsec)")
    parser.add_argument("--prefix", default="HSC", help="designation prefix")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import matplotlib

    matplotlib.use("Agg")
    run_followup(args.ranked, args.out_dir, args.top_n, args.charts, args.source, json.loads(args.cutouts),
                 json.loads(args.service), json.loads(args.vhs) if args.vhs else None, args.seed,
                 json.loads(args.sky), args.catalogs, args.truths, args.prefix, args.half_size, not args.no_ir)
    return 0


if __name__ == "__main__":
    sys.exit(main())

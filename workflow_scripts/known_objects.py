"""Stage ``known_labels``: lists of known objects, read and cross-matched to the candidates.

An astronomer brings lists of spectroscopically known objects (quasars with redshifts,
brown dwarfs with spectral types, a few galaxies and stars) as CSV, ECSV or VOTable files
with RA/Dec in whatever column names and formats the source used. ``load_known`` reads any
of them into one normalised table (``ra``, ``dec`` in degrees ICRS, ``name``, ``label``,
``redshift``, ``spectral_type``); ``crossmatch`` gives each candidate its nearest known
object within a radius (``known_label`` = quasar_highz for quasars at z > 5.6, quasar_lowz,
brown_dwarf, galaxy, star, other).

On the mock sky there are no literature lists, so ``mock_known_lists`` draws realistic ones
from the truth: only objects brighter than the selection magnitude limits are eligible, on
average ``fraction`` of each class is "known", and the chance of being known falls with
magnitude (spectroscopic follow-up is biased bright). Galaxies and stars are only a few.
The lists are written as an ECSV (quasars), a VOTable (brown dwarfs) and a CSV with
sexagesimal coordinates (galaxies and stars), so the pipeline's own run exercises every
reader. Known positions carry a 0.1" literature astrometric scatter.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from workflow_scripts.contracts import atomic_path, flux_to_mag

#: Labels a list may carry (config ``known_objects.lists[].label``), plus the split quasar labels.
INPUT_LABELS: tuple[str, ...] = ("quasar", "brown_dwarf", "galaxy", "star", "other")
#: Labels of the cross-match output.
OUTPUT_LABELS: tuple[str, ...] = ("quasar_highz", "quasar_lowz", "brown_dwarf", "galaxy", "star", "other")
#: A known quasar above this redshift is labelled quasar_highz.
HIGHZ_QUASAR_MIN_Z = 5.6

#: Accepted spellings of a label (after lower-casing and turning spaces / hyphens into "_").
LABEL_SYNONYMS: dict[str, str] = {
    "qso": "quasar", "quasars": "quasar", "agn": "quasar",
    "quasar_highz": "quasar_highz", "quasar_lowz": "quasar_lowz",
    "bd": "brown_dwarf", "brown_dwarfs": "brown_dwarf", "browndwarf": "brown_dwarf",
    "ultracool_dwarf": "brown_dwarf", "ucd": "brown_dwarf",
    "gal": "galaxy", "galaxies": "galaxy", "stars": "star",
}

#: Column names (lower case, in order of preference) for each normalised field.
RA_NAMES: tuple[str, ...] = ("ra", "raj2000", "_raj2000", "ra_icrs", "ra_deg", "radeg", "ra_j2000",
                             "alpha_j2000", "ra2000", "ramean", "right_ascension")
DEC_NAMES: tuple[str, ...] = ("dec", "dej2000", "_dej2000", "decj2000", "de_icrs", "dec_icrs", "dec_deg",
                              "dedeg", "decdeg", "dec_j2000", "delta_j2000", "dec2000", "decmean",
                              "declination")
NAME_NAMES: tuple[str, ...] = ("name", "object_name", "designation", "main_id", "id", "source_id", "objid")
REDSHIFT_NAMES: tuple[str, ...] = ("redshift", "z_spec", "zspec", "z_best", "zbest", "specz", "z")
SPTYPE_NAMES: tuple[str, ...] = ("spectral_type", "sptype", "sp_type", "spt", "spectype", "spec_type")

#: Name prefixes of the mock lists, per truth class.
NAME_PREFIX: dict[str, str] = {"quasar": "QSO", "brown_dwarf": "BD", "galaxy": "GAL", "star": "STAR"}

MATCH_COLUMNS: tuple[str, ...] = ("object_id", "known_label", "known_redshift", "known_spectral_type",
                                  "known_name", "known_sep_arcsec")


class KnownListError(ValueError):
    """A list of known objects cannot be read; the message names the file and the column."""


# ----------------------------------------------------------------------------- reading


def _find_column(colnames: Sequence[str], candidates: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in colnames}
    for name in candidates:
        if name in lower:
            return lower[name]
    return None


def normalise_label(value: object) -> str | None:
    """Canonical label of *value* (one of INPUT_LABELS or quasar_highz/quasar_lowz), None if unknown."""
    text = str(value).strip().lower().replace(" ", "_").replace("-", "_")
    if text in INPUT_LABELS:
        return text
    return LABEL_SYNONYMS.get(text)


def _angles_deg(col, path: str, colname: str, hourangle: bool):
    """Column *col* as float degrees; strings are sexagesimal (RA in hours) or decimal degrees."""
    import astropy.units as u
    from astropy.coordinates import Angle

    values = np.asarray(col)
    if values.dtype.kind in "USO":
        strings = [str(v).strip() for v in values]
        try:
            return np.array([float(s) for s in strings])  # decimal degrees stored as text
        except ValueError:
            pass
        try:
            unit = u.hourangle if hourangle else u.deg
            return Angle(strings, unit=unit).to_value(u.deg)
        except Exception as exc:  # astropy raises several kinds for unparseable angles
            raise KnownListError(f"{path}: column '{colname}' holds values that are neither degrees nor "
                                 f"sexagesimal ({exc})") from exc
    try:
        out = np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)
    except (TypeError, ValueError) as exc:
        raise KnownListError(f"{path}: column '{colname}' is not numeric ({exc})") from exc
    unit = getattr(col, "unit", None)
    if unit is not None and str(unit) not in ("", "deg"):
        try:
            out = (out * unit).to_value(u.deg)
        except Exception as exc:
            raise KnownListError(f"{path}: column '{colname}' has unit '{unit}', not an angle") from exc
    return out


def _read_table(path: Path):
    from astropy.table import Table

    suffix = path.suffix.lower()
    fmt = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".vot": "votable", ".xml": "votable",
           ".votable": "votable"}.get(suffix)
    if fmt is None:
        raise KnownListError(f"{path}: unknown list format '{suffix}'; use .csv, .ecsv or .vot/.xml (VOTable)")
    if not path.exists():
        raise KnownListError(f"{path}: file not found")
    try:
        return Table.read(path, format=fmt)
    except Exception as exc:  # parsers raise many kinds; the file name is what the user needs
        raise KnownListError(f"{path}: cannot be read as {fmt} ({type(exc).__name__}: {exc})") from exc


def load_known(path: str | Path, label: str | None = None, label_column: str | None = None):
    """Read a list of known objects (CSV / ECSV / VOTable by extension) into a normalised Table.

    Columns out: ``ra``, ``dec`` (deg), ``name``, ``label`` (one of INPUT_LABELS or
    quasar_highz / quasar_lowz), ``redshift`` (NaN when absent), ``spectral_type`` ("" when
    absent). RA/Dec columns are found case-insensitively (ra/dec, RAJ2000/DEJ2000, ...) and
    may be decimal degrees, carry an angle unit, or be sexagesimal strings (RA in hours).
    The label comes from *label* (whole list) or *label_column* (per row); with neither, a
    column named ``label`` / ``class`` / ``type`` is used if present.
    """
    from astropy.table import Table

    path = Path(path)
    table = _read_table(path)
    cols = list(table.colnames)
    ra_col, dec_col = _find_column(cols, RA_NAMES), _find_column(cols, DEC_NAMES)
    if ra_col is None or dec_col is None:
        missing = "RA" if ra_col is None else "Dec"
        raise KnownListError(f"{path}: no {missing} column found among {cols}; expected one of "
                             f"{list(RA_NAMES if ra_col is None else DEC_NAMES)} (any case)")
    n = len(table)
    ra = _angles_deg(table[ra_col], str(path), ra_col, hourangle=True)
    dec = _angles_deg(table[dec_col], str(path), dec_col, hourangle=False)
    bad = ~np.isfinite(ra) | ~np.isfinite(dec) | (dec < -90) | (dec > 90)
    if bad.any():
        raise KnownListError(f"{path}: {int(bad.sum())} row(s) with missing or impossible coordinates in "
                             f"'{ra_col}'/'{dec_col}' (first at row {int(np.flatnonzero(bad)[0])})")
    ra = np.mod(ra, 360.0)

    if label is not None and label_column is not None:
        raise KnownListError(f"{path}: give either a label or a label_column, not both")
    if label is not None:
        canon = normalise_label(label)
        if canon is None:
            raise KnownListError(f"{path}: label '{label}' is not one of {list(INPUT_LABELS)}")
        labels = np.full(n, canon, dtype=object)
    else:
        col = label_column
        if col is None:
            col = _find_column(cols, ("label", "class", "type", "otype"))
            if col is None:
                raise KnownListError(f"{path}: no label given and no label column ('label', 'class', 'type') "
                                     f"found among {cols}")
        elif col not in cols:
            found = _find_column(cols, (col.lower(),))
            if found is None:
                raise KnownListError(f"{path}: label column '{col}' not found among {cols}")
            col = found
        raw = [str(v) for v in np.ma.filled(np.ma.asarray(table[col]).astype(str), "")]
        labels = np.array([normalise_label(v) for v in raw], dtype=object)
        unknown = sorted({r for r, c in zip(raw, labels) if c is None})
        if unknown:
            raise KnownListError(f"{path}: column '{col}' holds unknown label(s) {unknown[:10]}; allowed: "
                                 f"{list(INPUT_LABELS)} (or quasar_highz / quasar_lowz)")

    z_col = _find_column(cols, REDSHIFT_NAMES)
    if z_col is not None and z_col.lower() == "z" and np.asarray(table[z_col]).dtype.kind not in "fi":
        z_col = None
    if z_col is not None:
        try:
            redshift = np.ma.filled(np.ma.asarray(table[z_col], dtype=float), np.nan)
        except (TypeError, ValueError) as exc:
            raise KnownListError(f"{path}: redshift column '{z_col}' is not numeric ({exc})") from exc
        if np.any(redshift[np.isfinite(redshift)] < 0):
            raise KnownListError(f"{path}: redshift column '{z_col}' has negative values")
    else:
        redshift = np.full(n, np.nan)
    sp_col = _find_column(cols, SPTYPE_NAMES)
    spt = (np.ma.filled(np.ma.asarray(table[sp_col]).astype(str), "") if sp_col else np.full(n, ""))
    spt = np.array([("" if s in ("--", "nan", "None") else s.strip()) for s in spt], dtype=object)
    name_col = _find_column(cols, NAME_NAMES)
    if name_col is not None:
        names = np.array([str(v).strip() for v in np.ma.filled(np.ma.asarray(table[name_col]).astype(str), "")],
                         dtype=object)
    else:
        names = np.array([f"{path.stem}:{i}" for i in range(n)], dtype=object)

    return Table({"ra": ra.astype(float), "dec": dec.astype(float), "name": names.astype(str),
                  "label": labels.astype(str), "redshift": np.asarray(redshift, float),
                  "spectral_type": spt.astype(str)}, meta={"source": str(path)})


# ----------------------------------------------------------------------------- matching


def output_label(label: str, redshift: float) -> str:
    """Cross-match label: quasars split at z = 5.6 (a quasar without redshift counts as low-z)."""
    if label == "quasar":
        return "quasar_highz" if np.isfinite(redshift) and redshift > HIGHZ_QUASAR_MIN_Z else "quasar_lowz"
    return label if label in OUTPUT_LABELS else "other"


def crossmatch(candidates: pd.DataFrame, known_tables: Iterable, radius_arcsec: float) -> pd.DataFrame:
    """Nearest known object within *radius_arcsec* of each candidate (one row per candidate, in order).

    Known tables are normalised ones from ``load_known``/``mock_known_lists``. Columns:
    ``object_id``, ``known_label``, ``known_redshift``, ``known_spectral_type``,
    ``known_name``, ``known_sep_arcsec``; NaN / "" where nothing lies within the radius.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import vstack

    if radius_arcsec <= 0:
        raise ValueError(f"radius_arcsec must be > 0, got {radius_arcsec}")
    n = len(candidates)
    out = pd.DataFrame({
        "object_id": candidates["object_id"].to_numpy(np.int64),
        "known_label": np.full(n, "", dtype=object),
        "known_redshift": np.full(n, np.nan),
        "known_spectral_type": np.full(n, "", dtype=object),
        "known_name": np.full(n, "", dtype=object),
        "known_sep_arcsec": np.full(n, np.nan),
    })
    tables = [t for t in known_tables if len(t)]
    if n == 0 or not tables:
        return out
    known = vstack([t[["ra", "dec", "name", "label", "redshift", "spectral_type"]] for t in tables],
                   metadata_conflicts="silent")
    cand = SkyCoord(candidates["ra"].to_numpy(float) * u.deg, candidates["dec"].to_numpy(float) * u.deg)
    cat = SkyCoord(np.asarray(known["ra"], float) * u.deg, np.asarray(known["dec"], float) * u.deg)
    idx, sep2d, _ = cand.match_to_catalog_sky(cat)
    sep = sep2d.to_value(u.arcsec)
    hit = sep <= radius_arcsec
    j = idx[hit]
    z = np.asarray(known["redshift"], float)
    labels = np.asarray(known["label"]).astype(str)
    out.loc[hit, "known_label"] = [output_label(labels[k], z[k]) for k in j]
    out.loc[hit, "known_redshift"] = z[j]
    out.loc[hit, "known_spectral_type"] = np.asarray(known["spectral_type"]).astype(str)[j]
    out.loc[hit, "known_name"] = np.asarray(known["name"]).astype(str)[j]
    out.loc[hit, "known_sep_arcsec"] = sep[hit]
    return out


# ----------------------------------------------------------------------------- mock lists


def iau_name(prefix: str, ra_deg: np.ndarray, dec_deg: np.ndarray) -> list[str]:
    """IAU-style designations "PREFIX Jhhmmss.ss+ddmmss.s" (truncated, not rounded)."""
    names = []
    for ra, dec in zip(np.asarray(ra_deg, float), np.asarray(dec_deg, float)):
        cs = int(np.floor(ra / 15.0 * 360000.0 + 1e-6))  # centiseconds of time
        h, rem = divmod(cs, 360000)
        m, rem = divmod(rem, 6000)
        sign = "+" if dec >= 0 else "-"
        ds = int(np.floor(abs(dec) * 36000.0 + 1e-6))  # deciseconds of arc
        d, drem = divmod(ds, 36000)
        dm, drem = divmod(drem, 600)
        names.append(f"{prefix} J{h:02d}{m:02d}{rem / 100:05.2f}{sign}{d:02d}{dm:02d}{drem / 10:04.1f}")
    return names


def bright_biased_probability(mag: np.ndarray, fraction: float, width_mag: float = 0.5) -> np.ndarray:
    """P(known) = logistic((m50 - mag) / width), with m50 chosen so that the mean is *fraction*."""
    mag = np.asarray(mag, float)
    if mag.size == 0 or fraction <= 0:
        return np.zeros(mag.size)

    def mean_p(m50: float) -> float:
        return float(np.mean(1.0 / (1.0 + np.exp(np.clip((mag - m50) / width_mag, -50, 50)))))

    lo, hi = float(mag.min()) - 20 * width_mag, float(mag.max()) + 20 * width_mag
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mean_p(mid) < fraction else (lo, mid)
    return 1.0 / (1.0 + np.exp(np.clip((mag - 0.5 * (lo + hi)) / width_mag, -50, 50)))


def _read_truths(paths: Sequence[str | Path]) -> pd.DataFrame:
    cols = ["object_id", "ra", "dec", "class", "subclass", "redshift", "spectral_type", "duplicate_of",
            "flux_true_z", "flux_true_y"]
    frames = [pd.read_parquet(p, columns=cols) for p in paths]
    truth = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    return truth[truth["duplicate_of"] < 0]  # each physical object once (no overlap re-detections)


def mock_known_lists(truth_paths: Sequence[str | Path], fraction: float, seed: int,
                     max_mag_z: float = 24.5, max_mag_y: float = 24.0,
                     max_extra: int = 40, astrometric_sigma_arcsec: float = 0.1) -> dict:
    """Realistic lists of "known" objects drawn from the mock truth (see module docstring).

    Eligible: true z < *max_mag_z* or true y < *max_mag_y* (the selection limits). Per group
    (high-z quasars, low-z quasars, brown dwarfs) each eligible object is known with a
    bright-biased probability averaging *fraction*; galaxies and stars get at most about
    *max_extra* each. Returns {"known_quasars", "known_brown_dwarfs", "known_other"} ->
    astropy Table with RA, DEC (deg), name, label, redshift, spectral_type, mag_y.
    """
    from astropy.table import Table

    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    truth = _read_truths(truth_paths)
    mag_z, mag_y = flux_to_mag(truth["flux_true_z"]), flux_to_mag(truth["flux_true_y"])
    eligible = (mag_z < max_mag_z) | (mag_y < max_mag_y)
    mag = np.fmin(mag_z, mag_y)
    cls = truth["class"].to_numpy(str)
    z_true = truth["redshift"].to_numpy(float)
    groups = {
        "quasar_highz": (cls == "quasar") & (z_true > HIGHZ_QUASAR_MIN_Z),
        "quasar_lowz": (cls == "quasar") & ~(z_true > HIGHZ_QUASAR_MIN_Z),
        "brown_dwarf": cls == "brown_dwarf",
        "galaxy": cls == "galaxy",
        "star": cls == "star",
    }
    chosen = np.zeros(len(truth), bool)
    for group, sel in groups.items():
        pool = np.flatnonzero(sel & eligible)
        f = fraction if group not in ("galaxy", "star") else min(fraction, max_extra / max(pool.size, 1))
        p = bright_biased_probability(mag[pool], f)
        chosen[pool[rng.uniform(size=pool.size) < p]] = True

    known = truth[chosen].copy()
    known["mag"] = mag[chosen]
    sigma = astrometric_sigma_arcsec / 3600.0
    known["ra"] = np.mod(known["ra"] + rng.normal(0, sigma, len(known)) / np.cos(np.deg2rad(known["dec"])), 360)
    known["dec"] = known["dec"] + rng.normal(0, sigma, len(known))
    zq = known["redshift"].to_numpy(float)
    known["z_obs"] = np.round(zq + rng.normal(0, 0.002, len(known)) * (1 + np.nan_to_num(zq)), 4)

    def table(rows: pd.DataFrame, ra_name: str, dec_name: str, with_z: bool, with_spt: bool) -> Table:
        rows = rows.sort_values("ra")
        prefixes = [NAME_PREFIX.get(c, "OBJ") for c in rows["class"]]
        names = [iau_name(p, [r], [d])[0] for p, r, d in zip(prefixes, rows["ra"], rows["dec"])]
        t = Table()
        t["name"] = np.array(names, dtype=str)
        t[ra_name] = rows["ra"].to_numpy(float)
        t[ra_name].unit = "deg"
        t[dec_name] = rows["dec"].to_numpy(float)
        t[dec_name].unit = "deg"
        t["label"] = rows["class"].to_numpy(str)
        t["redshift"] = rows["z_obs"].to_numpy(float) if with_z else np.full(len(rows), np.nan)
        t["spectral_type"] = (rows["spectral_type"].fillna("").to_numpy(str) if with_spt
                              else np.full(len(rows), "", dtype=str))
        t["mag_y"] = np.round(rows["mag"].to_numpy(float), 2)
        t["mag_y"].unit = "mag"
        return t

    kc = known["class"].to_numpy(str)
    lists = {
        "known_quasars": table(known[kc == "quasar"], "RA", "DEC", True, False),
        "known_brown_dwarfs": table(known[kc == "brown_dwarf"], "RAJ2000", "DEJ2000", False, True),
        "known_other": table(known[np.isin(kc, ["galaxy", "star"])], "ra", "dec", True, False),
    }
    for name, t in lists.items():
        t.meta["description"] = (f"Mock list of known objects ({name}), drawn from the simulated truth: "
                                 f"bright-biased, mean fraction {fraction} of those brighter than "
                                 f"z < {max_mag_z} or y < {max_mag_y}; seed {seed}")
    return lists


#: File name per mock list; each format once, so every reader runs in the pipeline.
MOCK_LIST_FILES: dict[str, str] = {"known_quasars": "known_quasars.ecsv",
                                   "known_brown_dwarfs": "known_brown_dwarfs.vot",
                                   "known_other": "known_other.csv"}


def write_known_lists(lists: dict, directory: str | Path) -> list[Path]:
    """Write the mock lists atomically (ECSV / VOTable / CSV with sexagesimal RA/Dec); return paths."""
    import astropy.units as u
    from astropy.coordinates import Angle

    directory = Path(directory)
    paths = []
    for key, t in lists.items():
        filename = MOCK_LIST_FILES.get(key, f"{key}.ecsv")
        path = directory / filename
        t = t.copy()
        if path.suffix == ".csv":  # as many catalogues ship them: sexagesimal strings
            ra_col, dec_col = _find_column(t.colnames, RA_NAMES), _find_column(t.colnames, DEC_NAMES)
            ra = Angle(np.asarray(t[ra_col], float), u.deg)
            dec = Angle(np.asarray(t[dec_col], float), u.deg)
            t.replace_column(ra_col, ra.to_string(unit=u.hourangle, sep=":", precision=3, pad=True))
            t.replace_column(dec_col, dec.to_string(unit=u.deg, sep=":", precision=2, alwayssign=True, pad=True))
            t.meta = {}
        fmt = {".ecsv": "ascii.ecsv", ".vot": "votable", ".csv": "ascii.csv"}[path.suffix]
        with atomic_path(path) as tmp:
            t.write(tmp, format=fmt, overwrite=True)
        paths.append(path)
    return paths


# ----------------------------------------------------------------------------- CLI


def parse_list_arg(spec: str) -> tuple[str, str | None, str | None]:
    """"PATH:LABEL" or "PATH:column=NAME" (or bare PATH with a label column) -> (path, label, label_column)."""
    path, sep, tail = spec.rpartition(":")
    if not sep or "/" in tail or "." in tail and "=" not in tail:
        return spec, None, None
    if tail.startswith("column="):
        return path, None, tail[len("column="):]
    return path, tail, None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m workflow_scripts.known_objects", description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", nargs="+", required=True, help="results/candidates/{shard}.parquet (all shards)")
    ap.add_argument("--truths", nargs="*", default=[], help="mock only: results/truth/{shard}.parquet -> mock lists")
    ap.add_argument("--fraction", type=float, default=0.3, help="mock: mean known fraction (known_objects.mock_known_fraction)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-mag-z", type=float, default=24.5, help="mock: selection limit (select.i_dropout.max_mag_z)")
    ap.add_argument("--max-mag-y", type=float, default=24.0, help="mock: selection limit (select.z_dropout.max_mag_y)")
    ap.add_argument("--lists-dir", default="results/known", help="where the mock lists are written")
    ap.add_argument("--list", dest="lists", action="append", default=[],
                    help="PATH:LABEL or PATH:column=NAME (repeatable); config known_objects.lists")
    ap.add_argument("--radius", type=float, default=1.0, help="match radius, arcsec")
    ap.add_argument("--out", required=True, help="labels parquet, e.g. results/known/labels.parquet")
    args = ap.parse_args(argv)

    tables = []
    if args.truths:
        lists = mock_known_lists(args.truths, args.fraction, args.seed, args.max_mag_z, args.max_mag_y)
        for path in write_known_lists(lists, args.lists_dir):
            tables.append(load_known(path, label_column="label"))
            print(f"known_labels: wrote {path} ({len(tables[-1])} objects)")
    for spec in args.lists:
        path, label, column = parse_list_arg(spec)
        tables.append(load_known(path, label=label, label_column=column))
        print(f"known_labels: read {path} ({len(tables[-1])} objects)")
    candidates = pd.concat([pd.read_parquet(p, columns=["object_id", "ra", "dec"]) for p in args.candidates],
                           ignore_index=True)
    matched = crossmatch(candidates, tables, args.radius)
    with atomic_path(args.out) as tmp:
        matched.to_parquet(tmp, index=False)
    counts = matched.loc[matched["known_label"] != "", "known_label"].value_counts().to_dict()
    print(f"known_labels: {len(matched)} candidates, {sum(counts.values())} matched within {args.radius}\": {counts}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KnownListError as exc:
        print(f"known_labels: error: {exc}", file=sys.stderr)
        sys.exit(2)

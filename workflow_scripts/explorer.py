"""Stage ``explorer``: one self-contained ``explorer.html`` per run (DESIGN.md, "Run").

The page draws the UMAP map with WebGL (canvas 2D as a fallback), colours it by any
column, shows an object's catalogue values and cutout thumbnails on hover/click, and
exports a box or lasso selection as CSV. Everything is inline (data as base64 typed
arrays, thumbnails as base64 WebP sprite sheets), so the file opens offline from
``file://``. The page itself is ``explorer_template.html`` beside this module.

Python API: :func:`build_explorer`; CLI: ``python -m workflow_scripts.explorer --help``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from workflow_scripts.contracts import write_text_atomic

#: Band order of the tensors (``meta.json`` says so for a real stack).
DEFAULT_BANDS: tuple[str, ...] = ("g", "r", "i", "z", "y", "J", "Ks")
#: Composite channels (red, green, blue): long wavelength to red, so dropouts look red.
COMPOSITE_BANDS: tuple[str, str, str] = ("y", "z", "i")
#: Objects with thumbnails: the best ranked plus every labelled one.
DEFAULT_MAX_THUMBNAILS = 5000
#: Columns that mark an object as labelled (a known quasar, brown dwarf, ...), first found wins.
LABEL_COLUMNS: tuple[str, ...] = ("known_label", "label")
#: Raw catalogue columns left out of the page (too many, and the derived ones say it better).
EXCLUDE_PATTERNS: tuple[str, ...] = (r"_psfflux_", r"_pixelflags_", r"_inputcount_value$",
                                     r"_extendedness_value$", r"^a_[grizy]$", r"_magerr$", r"^isprimary$",
                                     r"^row$", r"^is_[iz]_dropout$")
#: Categories coloured individually; the rest share "other".
MAX_COLOURED_CATEGORIES = 20
#: Objects per sprite sheet (one row of tiles per object).
OBJECTS_PER_SHEET = 256
#: WebP quality of the sprite sheets.
SPRITE_QUALITY = 70
TEMPLATE = "explorer_template.html"


# --------------------------------------------------------------------------- data columns

def _b64(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def _is_categorical(series: pd.Series) -> bool:
    if series.name == "rank":
        return False
    if isinstance(series.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(series):
        return True
    if not pd.api.types.is_numeric_dtype(series):
        return True
    # Small integer labels (an HDBSCAN structure id, a flag bitmask) read better as categories.
    return pd.api.types.is_integer_dtype(series) and series.nunique() <= MAX_COLOURED_CATEGORIES


def encode_column(series: pd.Series) -> dict | None:
    """One column as a JSON-able dict: numeric (base64 float32/64) or categorical (codes + names)."""
    name = str(series.name)
    if _is_categorical(series):
        text = series.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        counts = text[text != ""].value_counts()
        categories = [""] + list(counts.index)           # code 0 = missing
        if len(categories) > 65535:
            return None
        lookup = {c: i for i, c in enumerate(categories)}
        codes = text.map(lookup).to_numpy(np.uint16)
        return {"name": name, "kind": "cat", "categories": categories, "data": _b64(codes)}
    values = pd.to_numeric(series, errors="coerce").to_numpy(np.float64)
    finite = values[np.isfinite(values)]
    # float64 where float32 would lose digits that matter: coordinates and large integers.
    wide = name in ("ra", "dec") or (finite.size and np.abs(finite).max() > 2**24
                                     and np.all(finite == np.round(finite)))
    dtype = np.float64 if wide else np.float32
    return {"name": name, "kind": "num", "dtype": "f64" if wide else "f32", "data": _b64(values.astype(dtype))}


def page_columns(frame: pd.DataFrame) -> list[str]:
    """Columns worth showing: everything but the raw catalogue columns, ids and coordinates."""
    keep = []
    for col in frame.columns:
        if col in ("object_id", "x", "y") or any(re.search(p, str(col)) for p in EXCLUDE_PATTERNS):
            continue
        keep.append(col)
    return keep


def merge_inputs(umap_df: pd.DataFrame, candidates_df: pd.DataFrame | None) -> pd.DataFrame:
    """The map's points with the candidates' columns (left join on object_id).

    Rows are ordered so that the best ranked are drawn last, i.e. on top.
    """
    frame = umap_df.copy()
    if candidates_df is not None and len(candidates_df):
        extra = [c for c in candidates_df.columns if c == "object_id" or c not in frame.columns]
        frame = frame.merge(candidates_df[extra].drop_duplicates("object_id"), on="object_id", how="left")
    frame = frame[np.isfinite(frame["x"].to_numpy(float)) & np.isfinite(frame["y"].to_numpy(float))]
    if "rank" in frame.columns:
        order = np.argsort(-pd.to_numeric(frame["rank"], errors="coerce").fillna(np.inf).to_numpy(), kind="stable")
        frame = frame.iloc[order]
    return frame.reset_index(drop=True)


def label_column(frame: pd.DataFrame) -> str | None:
    return next((c for c in LABEL_COLUMNS if c in frame.columns), None)


def thumbnail_ids(frame: pd.DataFrame, max_n: int = DEFAULT_MAX_THUMBNAILS) -> list[int]:
    """Object ids that get thumbnails: the top *max_n* by rank plus every labelled object."""
    ids: list[int] = []
    if "rank" in frame.columns:
        ranked = frame.assign(_r=pd.to_numeric(frame["rank"], errors="coerce")).dropna(subset=["_r"])
        ids += ranked.nsmallest(max_n, "_r")["object_id"].astype("int64").tolist()
    else:
        ids += frame["object_id"].astype("int64").head(max_n).tolist()
    col = label_column(frame)
    if col is not None:
        labelled = frame[col].notna() & (frame[col].astype(str).str.strip() != "")
        ids += frame.loc[labelled, "object_id"].astype("int64").tolist()
    return list(dict.fromkeys(ids))


# --------------------------------------------------------------------------- thumbnails

def _noise(stamp: np.ndarray) -> float:
    """Robust noise of a stamp (MAD of its pixels); 1 when the stamp is flat."""
    finite = stamp[np.isfinite(stamp)]
    if finite.size == 0:
        return 1.0
    sigma = 1.4826 * np.median(np.abs(finite - np.median(finite)))
    return float(sigma) if sigma > 0 else 1.0


def band_stamp(stamp: np.ndarray) -> np.ndarray:
    """One band as 8-bit grey: asinh stretch softened at the noise, from -2 sigma to the peak."""
    stamp = np.nan_to_num(stamp.astype(np.float64))
    sigma = _noise(stamp)
    lo, hi = -2.0, max(np.arcsinh(stamp.max() / sigma), 3.0)
    grey = (np.arcsinh(stamp / sigma) - lo) / (hi - lo)
    return (np.clip(grey, 0, 1) * 255).astype(np.uint8)


def composite_stamp(red: np.ndarray, green: np.ndarray, blue: np.ndarray) -> np.ndarray:
    """RGB composite with one common asinh stretch (Lupton et al. 2004), so colours keep flux ratios."""
    rgb = np.nan_to_num(np.stack([red, green, blue], axis=-1).astype(np.float64))
    soft = np.mean([_noise(rgb[..., k]) for k in range(3)])
    intensity = rgb.mean(axis=-1)
    top = max(np.arcsinh(np.percentile(intensity, 99.5) / soft), 3.0)
    scale = np.arcsinh(np.clip(intensity, 0, None) / soft) / top / np.where(intensity > 0, intensity, 1.0)
    out = np.clip(rgb, 0, None) * scale[..., None]
    out /= max(out.max(), 1.0)   # keep hue where a channel saturates
    return (np.clip(out, 0, 1) * 255).astype(np.uint8)


def _webp_data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="WEBP", quality=SPRITE_QUALITY, method=6)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(stamp_size: int) -> int:
    """Sprite cell size: the stamp padded to a multiple of 16 px (WebP macroblocks never mix two stamps)."""
    return -(-stamp_size // 16) * 16


def sprite_sheets(stamps: list[np.ndarray], bands: tuple[str, ...]) -> dict:
    """Sprite sheets for the objects' stamps (C x H x W each, flux in nJy).

    Each object is one row of cells: a colour sheet (one RGB composite) and a grey sheet (one
    cell per band), *OBJECTS_PER_SHEET* rows per sheet; a stamp sits at the top left of its cell.
    Lossy WebP: noise-dominated stamps hardly compress losslessly (~8 kB per object as PNG,
    ~4 kB as WebP). Returns the sheets as data URLs and the layout.
    """
    layout = {"n": len(stamps), "bands": list(bands), "perSheet": OBJECTS_PER_SHEET,
              "composite": list(COMPOSITE_BANDS), "size": [0, 0], "cell": 0, "colour": [], "grey": []}
    if not stamps:
        return layout
    n_bands, height, width = stamps[0].shape
    cell = _cell(max(height, width))
    channels = [bands.index(b) if b in bands else None for b in COMPOSITE_BANDS]
    for start in range(0, len(stamps), OBJECTS_PER_SHEET):
        chunk = stamps[start:start + OBJECTS_PER_SHEET]
        rgb = np.zeros((len(chunk) * cell, cell, 3), np.uint8)
        grey = np.zeros((len(chunk) * cell, n_bands * cell), np.uint8)
        for row, stamp in enumerate(chunk):
            top = row * cell
            planes = [stamp[c] if c is not None else np.zeros((height, width)) for c in channels]
            rgb[top:top + height, :width] = composite_stamp(*planes)
            for band in range(n_bands):
                grey[top:top + height, band * cell:band * cell + width] = band_stamp(stamp[band])
        layout["colour"].append(_webp_data_url(rgb))
        layout["grey"].append(_webp_data_url(grey))
    layout.update(size=[width, height], cell=cell)
    return layout


def load_thumbnails(image_paths: list[str | Path], object_ids: list[int] | None = None) -> tuple[dict, tuple]:
    """Stamps from tensor shards (``{shard}.images.npy`` + ``.mask.npy`` + ``.index.parquet``).

    Reads only the rows of *object_ids* (all when None) from the memmaps; masked pixels become 0.
    Returns ``({object_id: C x H x W float32}, bands)``; bands come from ``meta.json`` if present.
    """
    wanted = None if object_ids is None else set(int(i) for i in object_ids)
    thumbs: dict[int, np.ndarray] = {}
    bands = DEFAULT_BANDS
    for path in map(Path, image_paths):
        stem = str(path)[: -len(".images.npy")]
        meta = path.parent / "meta.json"
        if meta.exists():
            bands = tuple(json.loads(meta.read_text()).get("bands", bands))
        images = np.load(path, mmap_mode="r")
        mask_path = Path(stem + ".mask.npy")
        masks = np.load(mask_path, mmap_mode="r") if mask_path.exists() else None
        index = pd.read_parquet(stem + ".index.parquet", columns=["object_id"])
        rows = np.arange(len(index)) if "row" not in index else index["row"].to_numpy()
        for row, oid in zip(rows, index["object_id"].astype("int64")):
            if wanted is None or int(oid) in wanted:
                stamp = np.array(images[row], dtype=np.float32)
                if masks is not None:
                    stamp[np.asarray(masks[row])] = 0.0
                thumbs[int(oid)] = stamp
    return thumbs, bands


# --------------------------------------------------------------------------- the page

def explorer_payload(frame: pd.DataFrame, thumbnails: dict | None, bands: tuple[str, ...],
                     title: str, max_thumbnails: int | None = None) -> dict:
    """Everything the page needs, JSON-able (typed arrays as base64)."""
    ids = frame["object_id"].astype("int64").to_numpy()
    thumbs = thumbnails or {}
    thumb_index = np.full(len(frame), -1, np.int32)
    stamps = []
    for i, oid in enumerate(ids):
        stamp = thumbs.get(int(oid))
        if stamp is not None:
            thumb_index[i] = len(stamps)
            stamps.append(np.asarray(stamp))
    columns = [c for c in (encode_column(frame[name]) for name in page_columns(frame)) if c is not None]
    default_colour = next((c for c in ("structure", "selection_branch", "score") if c in frame.columns),
                          columns[0]["name"] if columns else "")
    return {
        "title": title,
        "n": int(len(frame)),
        "objectId": _b64(ids),
        "x": _b64(frame["x"].to_numpy(np.float32)),
        "y": _b64(frame["y"].to_numpy(np.float32)),
        "columns": columns,
        "defaultColour": default_colour,
        "thumbIndex": _b64(thumb_index),
        "thumbs": sprite_sheets(stamps, tuple(bands)),
        "thumbNote": thumbnail_note(len(frame), len(stamps), max_thumbnails, label_column(frame)),
    }


def thumbnail_note(n_points: int, n_thumbs: int, max_thumbnails: int | None, label_col: str | None) -> str:
    if n_thumbs == 0:
        return "No cutout thumbnails in this page: objects show catalogue values only."
    if n_thumbs >= n_points:
        return "Every object has cutout thumbnails."
    rule = ""
    if max_thumbnails:
        rule = f" (the top {max_thumbnails:,} ranked" + (f" and every object labelled in '{label_col}')" if label_col else ")")
    return f"Thumbnails for {n_thumbs:,} of {n_points:,} objects{rule}; the others show catalogue values only."


def render_html(payload: dict) -> str:
    template = resources.files("workflow_scripts").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # "</" inside a <script> would end it early; JSON allows the escaped form.
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")
    title = (payload["title"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;"))
    return template.replace("__TITLE__", title).replace("/*__DATA__*/null", data)


def build_explorer(umap_df: pd.DataFrame, candidates_df: pd.DataFrame | None, thumbnails: dict | None,
                   out_path: str | Path, title: str = "Quasar candidate explorer", *,
                   bands: tuple[str, ...] = DEFAULT_BANDS, max_thumbnails: int | None = None) -> int:
    """Write the self-contained explorer page to *out_path* (atomically); return its size in bytes.

    *umap_df* has ``object_id``, ``x``, ``y`` (and e.g. ``structure``); *candidates_df* adds the
    catalogue and ranking columns (joined on ``object_id``). *thumbnails* maps object_id to a
    C x H x W flux stamp in *bands* order; objects without one show values only.
    """
    frame = merge_inputs(umap_df, candidates_df)
    html = render_html(explorer_payload(frame, thumbnails, tuple(bands), title, max_thumbnails))
    write_text_atomic(out_path, html)
    return Path(out_path).stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflow_scripts.explorer", description=__doc__.split("\n")[0])
    parser.add_argument("--umap", required=True, help="umap.parquet (object_id, x, y, structure)")
    parser.add_argument("--ranked", help="ranked candidates.parquet")
    parser.add_argument("--images", nargs="*", default=[], help="tensor shards {shard}.images.npy for thumbnails")
    parser.add_argument("--max-thumbnails", type=int, default=DEFAULT_MAX_THUMBNAILS,
                        help="top-ranked objects with thumbnails (labelled objects always have them)")
    parser.add_argument("--out", required=True, help="explorer.html")
    parser.add_argument("--title", default="Quasar candidate explorer")
    args = parser.parse_args(argv)

    umap_df = pd.read_parquet(args.umap)
    candidates = pd.read_parquet(args.ranked) if args.ranked else None
    thumbnails, bands = None, DEFAULT_BANDS
    if args.images:
        ids = thumbnail_ids(merge_inputs(umap_df, candidates), args.max_thumbnails)
        thumbnails, bands = load_thumbnails(args.images, ids)
    size = build_explorer(umap_df, candidates, thumbnails, args.out, args.title, bands=bands,
                          max_thumbnails=args.max_thumbnails)
    print(f"explorer: {len(umap_df):,} points, {len(thumbnails or {}):,} with thumbnails -> "
          f"{args.out} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

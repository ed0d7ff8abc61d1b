"""explorer.html in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

The page is opened from file:// with every non-file request aborted, as on a laptop offline.
Install: `pip install -e '.[test]'` (playwright) and `tests/browser/install_chromium.sh` (chromium).
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workflow_scripts.explorer import DEFAULT_BANDS, build_explorer, main

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_SCHEMES = ("file:", "data:", "blob:")
BOX = (3.0, 5.0, 3.0, 5.0)      # data-space selection box x0, x1, y0, y1
LASSO = (6.0, 8.0, 1.0, 2.5)    # a rectangle drawn with the lasso
EDGE = 0.1                      # no synthetic point this close to a selection edge (pixel rounding)


# --------------------------------------------------------------------------- synthetic inputs

def synthetic_inputs(n: int, n_thumbs: int, seed: int = 0):
    """A UMAP map uniform on [0, 10]^2, ranked candidates, and stamps for the top *n_thumbs*."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 10, (2, 3 * n))
    near_edge = np.zeros_like(x, bool)
    for x0, x1, y0, y1 in (BOX, LASSO):
        for edge in (x0, x1):
            near_edge |= (np.abs(x - edge) < EDGE) & (y > y0 - EDGE) & (y < y1 + EDGE)
        for edge in (y0, y1):
            near_edge |= (np.abs(y - edge) < EDGE) & (x > x0 - EDGE) & (x < x1 + EDGE)
    x, y = x[~near_edge][:n], y[~near_edge][:n]
    ids = 70_000_000_000_000_000 + np.arange(n, dtype=np.int64) * 7919   # beyond 2^53: ids must stay exact
    umap_df = pd.DataFrame({"object_id": ids, "x": x, "y": y, "structure": (x > 5).astype(int) + 2 * (y > 5)})
    score = rng.random(n)
    cands = pd.DataFrame({
        "object_id": ids, "ra": 135 + x / 10, "dec": y / 10 - 0.5,
        "selection_branch": np.where(rng.random(n) < 0.7, "i_dropout", "z_dropout"),
        **{f"{b}_mag": rng.normal(25, 1, n) for b in "grizy"},
        "i_minus_z": rng.normal(1.5, 0.5, n), "z_minus_y": rng.normal(0.2, 0.3, n),
        "score": score, "rank": (-score).argsort().argsort() + 1, "flags": "",
        "nearest_known_label": np.where(rng.random(n) < 0.1, "quasar", None),
    })
    stamps = rng.normal(0, 5, (n_thumbs, len(DEFAULT_BANDS), 35, 35)).astype(np.float32)
    yy, xx = np.mgrid[:35, :35]
    stamps[:, 3:] += 200 * np.exp(-((xx - 17) ** 2 + (yy - 17) ** 2) / 8.0)   # a red point source
    top = cands.sort_values("rank")["object_id"].to_numpy()[:n_thumbs]
    return umap_df, cands, {int(oid): stamp for oid, stamp in zip(top, stamps)}


def inside(df: pd.DataFrame, region) -> set[str]:
    x0, x1, y0, y1 = region
    keep = (df.x > x0) & (df.x < x1) & (df.y > y0) & (df.y < y1)
    return set(df.loc[keep, "object_id"].astype(str))


# --------------------------------------------------------------------------- browser fixtures

@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (/usr/bin/chromium): run tests/browser/install_chromium.sh")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright missing: pip install -e '.[test]'")
    with sync_api.sync_playwright() as pw:
        profile = tmp_path_factory.mktemp("chromium-profile")   # a fresh user-data dir
        context = pw.chromium.launch_persistent_context(str(profile), executable_path=str(CHROMIUM), headless=True,
                                                        args=LAUNCH_ARGS, accept_downloads=True,
                                                        viewport={"width": 1280, "height": 800})
        yield context
        context.close()


class Page:
    """A page on a fresh tab that records console errors and any request leaving file://."""

    def __init__(self, context):
        self.page = context.new_page()
        self.errors: list[str] = []
        self.remote: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: r.url.startswith(LOCAL_SCHEMES) or self.remote.append(r.url))
        self.page.route("**/*", self._route)

    def _route(self, route):
        if route.request.url.startswith(LOCAL_SCHEMES):
            route.continue_()
        else:   # never let the page reach the network
            self.remote.append(route.request.url)
            route.abort()

    def open(self, path: Path, query: str = "") -> float:
        t0 = time.perf_counter()
        self.page.goto(path.resolve().as_uri() + query)
        self.page.wait_for_function("window.explorer && window.explorer.ready && window.explorer.frames > 0")
        return time.perf_counter() - t0

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def check_clean(self):
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.remote == [], f"network requests: {self.remote}"


@pytest.fixture(scope="module")
def small_page(tmp_path_factory):
    out = tmp_path_factory.mktemp("explorer") / "explorer.html"
    umap_df, cands, thumbs = synthetic_inputs(2000, n_thumbs=300)
    size = build_explorer(umap_df, cands, thumbs, out, title="Synthetic run <test>")
    assert size == out.stat().st_size > 0
    return out, umap_df, cands, thumbs


# --------------------------------------------------------------------------- tests

@pytest.mark.parametrize("renderer", ["auto", "2d"])
def test_small_map_hover_and_box_selection(browser, small_page, renderer, tmp_path):
    out, umap_df, cands, thumbs = small_page
    page = Page(browser)
    page.open(out, "" if renderer == "auto" else "?renderer=2d")
    state = page.js("({n: explorer.n, drawn: explorer.drawnPoints, renderer: explorer.renderer, thumbs: explorer.nThumbnails})")
    assert state["n"] == state["drawn"] == 2000
    assert state["thumbs"] == 300
    if renderer == "2d":
        assert state["renderer"] == "canvas2d"
    print(f"renderer in use: {state['renderer']}")
    assert page.page.title() == "Synthetic run <test>"

    # Hover an isolated point that has a thumbnail: its composite and band stamps appear, with its values.
    xy = umap_df[["x", "y"]].to_numpy()
    dist = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)) + np.eye(len(xy)) * 99
    with_thumb = umap_df["object_id"].isin(list(thumbs)).to_numpy()
    isolated = np.flatnonzero(with_thumb & (dist.min(1) > 0.12))
    oid = str(umap_df.object_id.iloc[isolated[0]])   # not via a row: a mixed row is float64
    pos = page.js("id => explorer.screenPosition(id)", oid)
    page.page.mouse.move(pos["x"], pos["y"])
    composite = page.page.locator("#thumb-composite")
    composite.wait_for(state="visible")
    page.page.wait_for_function("document.getElementById('thumb-composite').src.startsWith('data:image/png')")
    page.page.wait_for_function("[...document.querySelectorAll('.band-stamp')].every(i => i.src.startsWith('data:'))")
    assert page.page.locator(".band-stamp").count() == len(DEFAULT_BANDS)
    assert page.js("explorer.hoveredId") == oid
    assert oid in page.page.locator("#object-id").inner_text()
    values = page.page.locator("#values").inner_text()
    row = cands.set_index("object_id").loc[int(oid)]
    assert f"rank\t{int(row['rank'])}" in values
    assert f"{row['ra']:.6f}" in values
    # The decoded thumbnail is the 35 x 35 stamp.
    assert page.js("[document.getElementById('thumb-composite').naturalWidth,"
                   " document.getElementById('thumb-composite').naturalHeight]") == [35, 35]

    # A point without a thumbnail shows values only.
    bare = str(umap_df.object_id.iloc[np.flatnonzero(~with_thumb & (dist.min(1) > 0.12))[0]])
    pos = page.js("id => explorer.screenPosition(id)", bare)
    page.page.mouse.move(pos["x"], pos["y"])
    page.page.wait_for_function("id => explorer.shownObjectId === id", arg=bare)
    assert page.page.locator("#no-thumb").is_visible() and not composite.is_visible()

    # Box selection over a known region, exported as CSV.
    x0, x1, y0, y1 = BOX
    a = page.js("([x, y]) => explorer.dataToPage(x, y)", [x0, y1])
    b = page.js("([x, y]) => explorer.dataToPage(x, y)", [x1, y0])
    page.page.click("#tool-box")
    page.page.mouse.move(a["x"], a["y"])
    page.page.mouse.down()
    page.page.mouse.move((a["x"] + b["x"]) / 2, (a["y"] + b["y"]) / 2, steps=5)
    page.page.mouse.move(b["x"], b["y"], steps=5)
    page.page.mouse.up()
    expected = inside(umap_df, BOX)
    assert page.js("explorer.selectedCount") == len(expected) > 20
    rows = export_csv(page, tmp_path)
    assert {r["object_id"] for r in rows} == expected
    assert list(rows[0]) == ["object_id", "ra", "dec", "rank", "score"]
    ranks = [int(r["rank"]) for r in rows]
    assert ranks == sorted(ranks)
    by_id = cands.set_index(cands.object_id.astype(str))
    for r in rows[:20]:   # full precision of ra / dec / score survives
        assert float(r["ra"]) == pytest.approx(by_id.loc[r["object_id"], "ra"], abs=1e-12)
        assert float(r["score"]) == pytest.approx(by_id.loc[r["object_id"], "score"], rel=1e-6)

    # Lasso: a rectangle drawn freehand selects the points inside it.
    x0, x1, y0, y1 = LASSO
    corners = [page.js("([x, y]) => explorer.dataToPage(x, y)", c) for c in ([x0, y0], [x1, y0], [x1, y1], [x0, y1])]
    page.page.click("#tool-lasso")
    page.page.mouse.move(corners[0]["x"], corners[0]["y"])
    page.page.mouse.down()
    for c in corners[1:] + corners[:1]:
        page.page.mouse.move(c["x"], c["y"], steps=8)
    page.page.mouse.up()
    expected = inside(umap_df, LASSO)
    assert {r["object_id"] for r in export_csv(page, tmp_path)} == expected

    # Colour by another column: categorical legend lists its categories.
    page.js("explorer.setColour('selection_branch')")
    legend = page.page.locator("#legend").inner_text()
    assert "i_dropout" in legend and "z_dropout" in legend
    page.js("explorer.setColour('score')")
    assert page.page.locator("#legend canvas").count() == 1

    # Click pins an object: its panel stays while the mouse moves on.
    pos = page.js("id => explorer.screenPosition(id)", oid)
    page.page.mouse.click(pos["x"], pos["y"])
    page.page.mouse.move(5, 5)
    assert page.js("explorer.pinnedId") == oid
    page.page.wait_for_function("document.getElementById('thumb-composite').src.startsWith('data:image/png')")
    assert oid in page.page.locator("#object-id").inner_text()

    shot = tmp_path / f"explorer_{renderer}.png"
    page.page.screenshot(path=str(shot))
    shutil.copy(shot, Path("/tmp") / shot.name)   # for a look by eye
    page.check_clean()
    page.page.close()


def export_csv(page: Page, tmp_path: Path) -> list[dict]:
    with page.page.expect_download() as info:
        page.page.click("#export-csv")
    download = info.value
    target = tmp_path / download.suggested_filename
    download.save_as(target)
    with open(target, newline="") as fh:
        return list(csv.DictReader(fh))


def test_hundred_thousand_points_load_fast(browser, tmp_path):
    n = 100_000
    umap_df, cands, thumbs = synthetic_inputs(n, n_thumbs=500, seed=1)
    out = tmp_path / "explorer.html"
    size = build_explorer(umap_df, cands, thumbs, out, title="100k")
    print(f"page size for {n:,} points and {len(thumbs)} thumbnails: {size / 1e6:.1f} MB")
    page = Page(browser)
    seconds = page.open(out)
    state = page.js("({drawn: explorer.drawnPoints, renderer: explorer.renderer, ms: explorer.lastDrawMs})")
    print(f"loaded in {seconds:.2f} s, renderer {state['renderer']}, one frame {state['ms']:.1f} ms")
    assert state["drawn"] == n
    assert seconds < 10
    # Nearest-point lookups go through the grid: a thousand cost well under a frame each.
    ms = page.js("""() => { const t0 = performance.now(); let hits = 0;
        for (let k = 0; k < 1000; k++) hits += explorer.nearest(100 + (k * 37) % 700, 100 + (k * 53) % 500, 8) >= 0;
        return (performance.now() - t0); }""")
    print(f"1000 nearest-point lookups: {ms:.1f} ms")
    assert ms < 500
    page.check_clean()
    page.page.close()


def test_cli_with_tensor_shards(tmp_path):
    """The CLI reads umap/candidates parquet and tensor shards (images + mask + index)."""
    umap_df, cands, thumbs = synthetic_inputs(200, n_thumbs=40, seed=2)
    umap_df.to_parquet(tmp_path / "umap.parquet")
    cands.to_parquet(tmp_path / "candidates.parquet")
    ids = list(thumbs)
    images = np.stack([thumbs[i] for i in ids])
    np.save(tmp_path / "s1.images.npy", images)
    np.save(tmp_path / "s1.mask.npy", np.zeros(images.shape, bool))
    pd.DataFrame({"row": np.arange(len(ids)), "object_id": ids}).to_parquet(tmp_path / "s1.index.parquet")
    out = tmp_path / "runs" / "r" / "explorer.html"
    assert main(["--umap", str(tmp_path / "umap.parquet"), "--ranked", str(tmp_path / "candidates.parquet"),
                 "--images", str(tmp_path / "s1.images.npy"), "--max-thumbnails", "25",
                 "--out", str(out), "--title", "cli"]) == 0
    html = out.read_text()
    assert "https://" not in html and "http://" not in html
    assert "Thumbnails for 25 of 200 objects" in html
    assert not list(out.parent.glob("*.part"))

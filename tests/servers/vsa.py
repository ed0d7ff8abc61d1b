"""Loopback VISTA Science Archive ``GetImage`` server (protocol of ``astroquery.vsa``/``astroquery.wfau``).

- ``GET <base>GetImage?database=&programmeID=&sys=J&ra=&dec=&filterID=&obsType=object&
  frameType=&mfid=&xsize=&ysize=`` (sizes: full side in arcmin) -> an HTML result page
  shaped like the real one (astroquery's ``ukidss/tests/data/image_results.html``):
  a table with one ``<a href=".../getImage?file=...&mfid=...&ra=&dec=&band=&xsize=">``
  per matching frame and "N rows returned."; no frame -> "0 rows returned.".
  Bad parameters -> a page saying "Error: ...".
- ``GET <base>getFImage?...`` (the link with ``getImage`` -> ``getFImage``) -> the FITS
  cutout from ``provider(ra, dec, band, half_size_arcsec)``; ``getImage`` itself
  answers a small HTML preview page.

Faults (:class:`Faults`, ``server.faults``): 503 on the first N requests, a stall
longer than the client timeout on the first K requests, the next N FITS downloads
truncated (Content-Length announced, half sent), a corrupt FITS for given
(ra, dec, band), an extra first link to a corrupt frame (``bad_first_link``), pages
that say "Processing ..." without the result for the first N GetImage polls.

CLI (for the workflow test)::

    python -m tests.servers.vsa --config config.yaml --port-file PORT
"""

from __future__ import annotations

import logging
import sys
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from tests.servers.base import (
    LoopbackHandler,
    LoopbackServer,
    Provider,
    TransportFaults,
    cli_parser,
    garbled,
    near,
    read_config,
    serve_cli,
    start_cli,
    start_with_faults,
)

logger = logging.getLogger(__name__)

BASE_PATH = "/vdfs/"
BAND_OF_FILTER = {"1": "Z", "2": "Y", "3": "J", "4": "H", "5": "Ks"}
REQUIRED = ("database", "programmeID", "sys", "ra", "dec", "filterID", "obsType", "frameType", "mfid", "xsize", "ysize")


@dataclass
class Faults(TransportFaults):
    """Fault injection (``fail_503``, ``delay_s``, ``delay_first`` of :class:`TransportFaults`, plus these)."""

    truncate_downloads: int = 0
    corrupt: list[tuple[float, float, str]] = field(default_factory=list)
    bad_first_link: bool = False
    pending_pages: int = 0  # GetImage answers "Processing ..." this many times first


class VsaServer(LoopbackServer):
    """The loopback VSA: an HTTP server thread plus a cutout provider."""

    label = "VSA"
    unavailable_type = "text/plain"

    def __init__(self, provider: Provider, *, host: str = "127.0.0.1", port: int = 0, base_path: str = BASE_PATH,
                 database_prefix: str = "VHSDR", faults: Faults | None = None) -> None:
        super().__init__(faults or Faults(), base_path if base_path.endswith("/") else base_path + "/")
        self.provider = provider
        self.database_prefix = database_prefix
        #: Every request: {"endpoint", "params"}.
        self.requests: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self._serve(host, port, _Handler)  # ``url`` ends in ``/`` (astroquery's ``conf.server`` form)

    def count(self, endpoint: str) -> int:
        return sum(1 for r in self.requests if r["endpoint"] == endpoint)

    # ------------------------------------------------------------------ protocol
    def handle(self, handler: "_Handler") -> None:
        url = urllib.parse.urlsplit(handler.path)
        params = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        endpoint = url.path[len(self.base_path):] if url.path.startswith(self.base_path) else url.path
        with self._lock:
            self.requests.append({"endpoint": endpoint, "params": params})
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.fault_before(handler):
                return
            if endpoint == "GetImage":
                self._get_image(handler, params)
            elif endpoint in ("getImage", "getFImage"):
                self._frame(handler, params, fits_file=endpoint == "getFImage")
            else:
                handler.send_body(404, b"not found", "text/plain")
        finally:
            with self._lock:
                self.active -= 1

    def _page(self, handler: "_Handler", body: str) -> None:
        page = f"<HTML><HEAD></HEAD><h3>GetImage cut-out results</h3>\n{body}\n</HTML>\n"
        handler.send_body(200, page.encode("utf-8"), "text/html; charset=utf-8")

    def _get_image(self, handler: "_Handler", p: dict[str, str]) -> None:
        missing = [k for k in REQUIRED if k not in p]
        try:
            if missing:
                raise ValueError(f"missing parameter(s) {missing}")
            if not p["database"].startswith(self.database_prefix) or p["sys"] != "J" or p["obsType"] != "object":
                raise ValueError("unsupported database/sys/obsType")
            band = BAND_OF_FILTER[p["filterID"]]
            ra, dec, xsize, ysize = (float(p[k]) for k in ("ra", "dec", "xsize", "ysize"))
            if not (0 < xsize <= 15 and 0 < ysize <= 90):
                raise ValueError("image size out of range")
        except (KeyError, ValueError) as exc:
            self._page(handler, f"<p>Error: {exc}</p>")
            return
        if self.take_fault("pending_pages"):
            self._page(handler, "<br>Processing ...<br>Connecting to database")
            return
        head = (f"<br><b>J2000 coords:</b> RA: {ra} Dec:{dec}<br><b>Programme:</b> {p['programmeID']}"
                f"<br><b>Filter:</b> {band}<br>Processing ...<br>Connecting to database: {p['database']}<p>")
        half = xsize * 60.0 / 2.0
        if self.provider(ra, dec, band, half) is None:  # no frame covers the position
            self._page(handler, head + "<table border=\"1\"></table>\n0 rows returned.")
            return
        frames = (["bad", "good"] if self.faults.bad_first_link else ["good"])
        rows = []
        for i, kind in enumerate(frames):
            query = urllib.parse.urlencode({"file": f"/disk47/vhs/v2015_{i:02d}_st_tl.fit", "mfid": 5000 + i,
                                            "extNo": 1, "ra": repr(ra), "dec": repr(dec), "band": band,
                                            "xsize": repr(xsize), "kind": kind})
            link = f"http://{handler.headers.get('Host')}{self.base_path}getImage?{query}"
            rows.append(f'<tr><td><a href="{link}" target=show>show</a></td><td nowrap>{5000 + i}</td>'
                        f"<td nowrap>tilestack</td><td nowrap>OBJECT</td><td nowrap>{p['filterID']}</td></tr>")
        self._page(handler, head + '<table border="1">' + "".join(rows) + f"</table>\n{len(rows)} rows returned.")

    def _frame(self, handler: "_Handler", p: dict[str, str], *, fits_file: bool) -> None:
        try:
            ra, dec, xsize = float(p["ra"]), float(p["dec"]), float(p["xsize"])
            band = p["band"]
        except (KeyError, ValueError):
            handler.send_body(400, b"bad frame request", "text/plain")
            return
        if not fits_file:
            self._page(handler, f"<img src='preview.jpg'> {band} at {ra} {dec}")
            return
        data = self.provider(ra, dec, band, xsize * 60.0 / 2.0)
        if data is None:
            handler.send_body(404, b"no such frame", "text/plain")
            return
        if p.get("kind") == "bad" or any(near((ra, dec, band), c) for c in self.faults.corrupt):
            data = garbled(data)
        handler.send_body(200, data, "application/fits", truncate=self.take_fault("truncate_downloads"))


class _Handler(LoopbackHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.app.handle(self)


def start_vsa_server(provider: Provider, **options: Any) -> VsaServer:
    """Start a loopback VSA on 127.0.0.1 (free port); *options*: :class:`Faults` fields plus
    ``host``, ``port``, ``base_path``, ``database_prefix``."""
    return start_with_faults(VsaServer, Faults, provider, **options)


# ---------------------------------------------------------------------------- CLI
def mock_provider(config: dict[str, Any]) -> Provider:
    """Provider drawing VHS cutouts of the config's mock sky (``MockImager``); None off VHS."""
    from tests.servers.images import hdul_bytes, mock_imager_from_config
    from workflow_scripts.cutout_format import vhs_cutout_hdul

    imager = mock_imager_from_config(config)

    def provider(ra: float, dec: float, band: str, half: float) -> bytes | None:
        cut = imager.vhs_cutout_at(ra, dec, band, half)
        return None if cut is None else hdul_bytes(vhs_cutout_hdul(cut))

    return provider


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser(__doc__.split("\n")[0], account=False)
    args = start_cli(parser, argv)
    config = read_config(args.config)
    return serve_cli(VsaServer(mock_provider(config), host=args.host, port=args.port), args.port_file)


if __name__ == "__main__":
    sys.exit(main())

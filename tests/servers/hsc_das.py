"""Loopback HSC-SSP DAS cutout server (protocol of ``downloadCutout.py``).

Speaks what the official HSC data-access-tools client speaks (shared/HSC_ACCESS.md §2
and the loopback checklist):

- ``POST <base_path>``: HTTP Basic auth (401 on mismatch), ``multipart/form-data``
  with one field ``list``: a ``#?`` header naming the columns (any order; the
  official ``rerun type filter tract ra dec sw sh image mask variance`` or the
  manual's ``rerun ra dec sw sh filter image mask variance type name``), then one
  row per cutout. Angles take ``deg``, ``arcmin``/``amin``, ``arcsec``/``asec``,
  ``rad`` suffixes, bare degrees, ``12:34:56.7`` (RA hours, Dec degrees),
  ``12h34m56s`` and ``-1d23m45s``; ``sw``/``sh`` are SEMI-width/height; filters
  ``HSC-G`` ... or ``g`` ...; booleans ``true``/``false``; tract int or ``any``.
  A malformed row -> 400 naming the line. The reply is an uncompressed tar stream
  (chunked, or close-delimited with ``chunked=False``) whose members are
  ``arch-<n>-<n>/<lineno>-cutout-<FILTER>-<tract>-<rerun>.fits`` (``coadd/bg``:
  ``-coadd+bg-``; a ``name`` column gives ``<name>.fits``); rows without data get
  no member. Cutouts come from ``provider(ra, dec, band, half_size_arcsec)``,
  called while streaming.
- ``GET <base_path>?ra=&dec=&sw=&sh=&filter=&type=&tract=&rerun=...``: one bare
  FITS, or 404 where there is no data.

Faults (:class:`Faults`, ``server.faults``; counters count down as they fire): 503
on the first N requests, a stall longer than the client timeout then a dropped
connection on the first K requests, a tar cut after M members (at a member boundary
or in the middle of the next one), a corrupt FITS member for given (ra, dec, band),
a cap on rows per POST (400 beyond it), 401 for every request. A provider that
raises (even ``KeyboardInterrupt``) drops the connection mid-stream, like a server
killed while sending.

CLI (for the workflow test with ``source: hsc``)::

    python -m tests.servers.hsc_das --config config.yaml --port-file PORT \\
        --user alice --password-env HSC_SSP_CAS_PASSWORD
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import hmac
import logging
import math
import os
import re
import sys
import tarfile
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Iterator

from tests.servers.base import (
    LoopbackHandler,
    LoopbackServer,
    Provider,
    TransportFaults,
    cli_parser,
    garbled,
    near,
    password_from_env,
    read_config,
    serve_cli,
    start_cli,
    start_with_faults,
    tract_grid,
)

logger = logging.getLogger(__name__)

BASE_PATH = "/das_cutout/pdr3/cgi-bin/cutout"  # as on hsc-release.mtk.nao.ac.jp
FILTERS = {"g": "HSC-G", "r": "HSC-R", "i": "HSC-I", "z": "HSC-Z", "y": "HSC-Y"}
BAND_OF = {v: k for k, v in FILTERS.items()} | {k: k for k in FILTERS}
RERUNS = ("pdr3_wide", "pdr3_dud", "pdr3_dud_rev")
TYPES = ("coadd", "coadd/bg")
DEFAULTS = {"rerun": "pdr3_wide", "type": "coadd", "tract": "any", "image": "true", "mask": "false",
            "variance": "false"}
REQUIRED = ("ra", "dec", "sw", "sh", "filter")


class ListError(ValueError):
    """The uploaded list is malformed (message names the line)."""


# ---------------------------------------------------------------------------- list parsing
_UNITS = {"deg": 1.0, "arcmin": 1 / 60, "amin": 1 / 60, "arcsec": 1 / 3600, "asec": 1 / 3600,
          "rad": 180.0 / math.pi}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_UNIT_RE = re.compile(rf"^({_NUM})(deg|arcmin|amin|arcsec|asec|rad)?$")
_COLON_RE = re.compile(r"^([-+]?)(\d+):(\d+):(\d+(?:\.\d*)?)$")
_HMS_RE = re.compile(r"^([-+]?)(\d+)h(\d+)m(\d+(?:\.\d*)?)s?$")
_DMS_RE = re.compile(r"^([-+]?)(\d+)d(\d+)m(\d+(?:\.\d*)?)s?$")


def parse_angle(text: str, *, hours: bool = False) -> float:
    """An angle in degrees; sexagesimal ``a:b:c`` is hours when *hours* (an RA column)."""
    if m := _UNIT_RE.match(text):
        return float(m[1]) * _UNITS[m[2] or "deg"]
    for pattern, scale in ((_COLON_RE, 15.0 if hours else 1.0), (_HMS_RE, 15.0), (_DMS_RE, 1.0)):
        if m := pattern.match(text):
            value = (int(m[2]) + int(m[3]) / 60.0 + float(m[4]) / 3600.0) * scale
            return -value if m[1] == "-" else value
    raise ValueError(f"cannot parse angle {text!r}")


def _bool(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(f"boolean must be true or false, got {text!r}")
    return text.lower() == "true"


@dataclass
class Row:
    """One parsed list row."""

    lineno: int
    rerun: str
    type: str
    band: str
    tract: str
    ra: float
    dec: float
    sw_deg: float
    sh_deg: float
    image: bool
    mask: bool
    variance: bool
    name: str | None = None

    @property
    def half_size_arcsec(self) -> float:
        return max(self.sw_deg, self.sh_deg) * 3600.0


def _row(values: dict[str, str], lineno: int) -> Row:
    v = DEFAULTS | values
    if v["rerun"] not in RERUNS:
        raise ValueError(f"unknown rerun {v['rerun']!r}")
    if v["type"] not in TYPES:
        raise ValueError(f"unsupported type {v['type']!r}")
    if v["filter"] not in BAND_OF:
        raise ValueError(f"unknown filter {v['filter']!r}")
    if v["tract"] != "any" and not v["tract"].isdigit():
        raise ValueError(f"tract must be an integer or 'any', got {v['tract']!r}")
    row = Row(lineno=lineno, rerun=v["rerun"], type=v["type"], band=BAND_OF[v["filter"]], tract=v["tract"],
              ra=parse_angle(v["ra"], hours=True), dec=parse_angle(v["dec"]), sw_deg=parse_angle(v["sw"]),
              sh_deg=parse_angle(v["sh"]), image=_bool(v["image"]), mask=_bool(v["mask"]),
              variance=_bool(v["variance"]), name=values.get("name"))
    if not -90.0 <= row.dec <= 90.0 or row.sw_deg <= 0 or row.sh_deg <= 0:
        raise ValueError("dec must be in [-90, 90] and sw, sh positive")
    return row


def parse_list(text: str) -> list[Row]:
    """Rows of an uploaded list; ``lineno`` counts every line from 1 (the ``#?`` header)."""
    columns: list[str] | None = None
    rows: list[Row] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith("#?"):
            columns = stripped[2:].split()
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise ListError(f"line {lineno}: header lacks column(s) {missing}")
            continue
        if not stripped or stripped.startswith("#"):
            continue
        if columns is None:
            raise ListError(f"line {lineno}: data before the '#?' header")
        fields = stripped.split()
        if len(fields) != len(columns):
            raise ListError(f"line {lineno}: {len(fields)} fields for {len(columns)} columns")
        try:
            rows.append(_row(dict(zip(columns, fields)), lineno))
        except ValueError as exc:
            raise ListError(f"line {lineno}: {exc}") from None
    if columns is None:
        raise ListError("the list has no '#?' header line")
    return rows


def tract_of(ra: float, dec: float, tract_deg: float = 1.5) -> int:
    """A plausible tract number (the loopback servers' coarse RA/Dec grid, :func:`~tests.servers.base.tract_grid`)."""
    return int(tract_grid(ra, dec, tract_deg)[2])


def member_name(row: Row, archive: str, tract: int) -> str:
    if row.name:
        return f"{archive}/{row.name}.fits"
    kind = "cutout" if row.type == "coadd" else "coadd+bg"
    return f"{archive}/{row.lineno}-{kind}-{FILTERS[row.band]}-{tract}-{row.rerun}.fits"


def tar_member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + b"\0" * (-len(data) % 512)


def tar_end(written: int) -> bytes:
    """Two zero blocks, padded to tarfile's 10240-byte record."""
    end = written + 1024
    return b"\0" * (1024 + (-end % tarfile.RECORDSIZE))


# ---------------------------------------------------------------------------- server
@dataclass
class Faults(TransportFaults):
    """Fault injection (``fail_503``, ``delay_s``, ``delay_first`` of :class:`TransportFaults`, plus these)."""

    reject_auth: bool = False  # 401 even for the right password
    truncate_after: int | None = None  # close the tar stream after this many members...
    truncate_times: int = 1  # ...in this many responses
    truncate_mid_member: bool = False  # cut inside the next member instead of at its start
    corrupt: list[tuple[float, float, str]] = field(default_factory=list)  # (ra, dec, band) -> garbage FITS
    max_rows: int | None = None  # rows per POST above this -> HTTP 400
    member_delay_s: float = 0.0  # pause before each member (makes batches overlap)


class DasServer(LoopbackServer):
    """The loopback DAS: an HTTP server thread plus a cutout provider."""

    label = "DAS"

    def __init__(self, provider: Provider, user: str, password: str, *, host: str = "127.0.0.1", port: int = 0,
                 base_path: str = BASE_PATH, chunked: bool = True, faults: Faults | None = None) -> None:
        super().__init__(faults or Faults(), base_path)
        self.provider = provider
        self.user = user
        self._password = password
        self.chunked = chunked
        #: Every request: {"method", "rows" (parsed), "list" (raw text), "auth_header"}.
        self.requests: list[dict[str, Any]] = []
        self.active = 0
        self.max_active = 0
        self._archives = 0
        self._serve(host, port, _Handler)

    @property
    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    # ------------------------------------------------------------------ protocol
    def _authorized(self, handler: "_Handler") -> bool:
        header = handler.headers.get("Authorization", "")
        if self.faults.reject_auth or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode("utf-8").partition(":")
        except ValueError:
            return False
        return user == self.user and hmac.compare_digest(password.encode(), self._password.encode())

    def handle(self, handler: "_Handler", method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0)) if method == "POST" else b""
        record: dict[str, Any] = {"method": method, "rows": [], "list": None,
                                  "auth_header": "Authorization" in handler.headers}
        self._log_request(record)
        if url.path != self.base_path:
            handler.send_text(404, "not found")
            return
        if self.fault_before(handler):
            return
        if not self._authorized(handler):
            handler.send_response(401)
            handler.send_header("WWW-Authenticate", 'Basic realm="HSC-SSP"')
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if method == "GET":
            self._get(handler, urllib.parse.parse_qs(url.query, keep_blank_values=True), record)
        else:
            self._post(handler, body, record)

    def _get(self, handler: "_Handler", query: dict[str, list[str]], record: dict[str, Any]) -> None:
        q = {k: v[0] for k, v in query.items()}
        try:
            values = {k: q[k] for k in REQUIRED}
            values |= {k: q[k] for k in ("rerun", "type") if q.get(k)}
            values |= {k: ("true" if q[k] == "on" else "false") for k in ("image", "mask", "variance") if k in q}
            values["tract"] = q.get("tract") or "any"
            row = _row(values, 0)
        except (KeyError, ValueError) as exc:
            handler.send_text(400, f"bad request: {exc}")
            return
        record["rows"] = [row]
        data = self._cutout(row)
        if data is None:
            handler.send_text(404, "No data found for this position")
            return
        handler.send_body(200, data, "application/fits")

    def _post(self, handler: "_Handler", body: bytes, record: dict[str, Any]) -> None:
        try:
            text = _multipart_field(handler.headers.get("Content-Type", ""), body, "list")
            record["list"] = text
            rows = parse_list(text)
        except (ListError, ValueError) as exc:
            handler.send_text(400, str(exc))
            return
        record["rows"] = rows
        if self.faults.max_rows is not None and len(rows) > self.faults.max_rows:
            handler.send_text(400, f"too many lines in the list: {len(rows)} > {self.faults.max_rows}")
            return
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._archives += 1
            archive = f"arch-{time.strftime('%y%m%d')}-{os.getpid() % 100000:05d}{self._archives:03d}"
            truncate = self.faults.truncate_after is not None and self._take_locked("truncate_times")
        try:
            self._stream_tar(handler, rows, archive, self.faults.truncate_after if truncate else None)
        finally:
            with self._lock:
                self.active -= 1

    def _cutout(self, row: Row) -> bytes | None:
        data = self.provider(row.ra, row.dec, row.band, row.half_size_arcsec)
        if data is not None and any(near((row.ra, row.dec, row.band), c) for c in self.faults.corrupt):
            data = garbled(data)
        return data

    def _members(self, rows: list[Row], archive: str) -> Iterator[bytes]:
        for row in rows:
            if self.faults.member_delay_s:
                time.sleep(self.faults.member_delay_s)
            data = self._cutout(row)
            if data is not None:
                tract = int(row.tract) if row.tract != "any" else tract_of(row.ra, row.dec)
                yield tar_member(member_name(row, archive, tract), data)

    def _stream_tar(self, handler: "_Handler", rows: list[Row], archive: str, truncate_after: int | None) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-tar")
        handler.send_header("Content-Disposition", f'attachment; filename="{archive}.tar"')
        if self.chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        written = 0
        try:
            for count, member in enumerate(self._members(rows, archive)):
                if truncate_after is not None and count >= truncate_after:
                    if self.faults.truncate_mid_member:
                        handler.send_chunk(member[: len(member) // 2], self.chunked)
                    handler.abort()
                    return
                handler.send_chunk(member, self.chunked)
                written += len(member)
        except BaseException as exc:  # a provider that raises: the server "dies" mid-stream
            logger.warning("loopback DAS: provider raised %s; dropping the connection", type(exc).__name__)
            handler.abort()
            return
        handler.send_chunk(tar_end(written), self.chunked)
        if self.chunked:
            handler.wfile.write(b"0\r\n\r\n")


def _multipart_field(content_type: str, body: bytes, name: str) -> str:
    """The text of form field *name* of a multipart/form-data body."""
    if not content_type.startswith("multipart/form-data"):
        raise ValueError(f"expected multipart/form-data, got {content_type!r}")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body
    )
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            return part.get_payload(decode=True).decode("utf-8")
    raise ValueError(f"multipart body has no field {name!r}")


class _Handler(LoopbackHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.server.app.handle(self, "POST")

    def do_GET(self) -> None:  # noqa: N802
        self.server.app.handle(self, "GET")

    def send_chunk(self, data: bytes, chunked: bool) -> None:
        if not data:
            return
        if chunked:
            self.wfile.write(f"{len(data):x}\r\n".encode("ascii") + data + b"\r\n")
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def abort(self) -> None:
        """Drop the connection without finishing the body."""
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass


def start_das_server(provider: Provider, user: str, password: str, **options: Any) -> DasServer:
    """Start a loopback DAS on 127.0.0.1 (free port); use as a context manager or call ``.stop()``.

    *options*: any :class:`Faults` field (``fail_503=2``, ``truncate_after=3``, ...)
    plus ``host``, ``port``, ``base_path``, ``chunked``.
    """
    return start_with_faults(DasServer, Faults, provider, user, password, **options)


# ---------------------------------------------------------------------------- CLI
def mock_provider(config: dict[str, Any]) -> Provider:
    """Provider drawing DAS cutouts of the config's mock sky (``MockImager``)."""
    from tests.servers.images import mock_imager_from_config
    from workflow_scripts.cutout_format import hsc_cutout_bytes

    imager = mock_imager_from_config(config)

    def provider(ra: float, dec: float, band: str, half: float) -> bytes | None:
        cut = imager.hsc_cutout_at(ra, dec, band, half)
        return None if cut is None else hsc_cutout_bytes(cut)

    return provider


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser(__doc__.split("\n")[0], account=True)
    args = start_cli(parser, argv)
    password = password_from_env(parser, args)
    config = read_config(args.config)
    return serve_cli(DasServer(mock_provider(config), args.user, password, host=args.host, port=args.port),
                     args.port_file)


if __name__ == "__main__":
    sys.exit(main())

"""Client for the HSC-SSP DAS cutout service (bulk list upload, tar stream reply).

Protocol source: the official NAOJ script ``pdr3/downloadCutout/downloadCutout.py``
of the HSC ``data-access-tools`` project and its README (summarised in
shared/HSC_ACCESS.md §2):

- POST ``multipart/form-data`` to ``.../das_cutout/pdr3/cgi-bin/cutout`` with HTTP
  Basic auth (same account as CAS) and one form field ``list`` (file name
  ``coordlist.txt``) holding ``#? rerun type filter tract ra dec sw sh image mask
  variance`` and one row per cutout; angles printed ``%.16e`` + ``deg``; ``sw``/``sh``
  are the SEMI-width/-height of the box; at most 990 rows per POST; at most ~4
  parallel connections (the server refuses more).
- The reply is an uncompressed tar stream with members
  ``arch-<n>-<n>/<lineno>-cutout-<FILTER>-<tract>-<rerun>.fits``; ``lineno`` is the
  1-based line of the uploaded list (first data row = 2). Rows without data produce
  no member.
- Single-cutout debugging mode (third-party clients): GET with ``ra, dec, sw, sh,
  type, image, mask, variance, filter, tract, rerun`` query parameters -> one FITS.

Released astroquery has no PDR3 HSC module (see :mod:`.hsc_cas`), hence this
reimplementation on :mod:`.http`. The tar is parsed while it streams (``tarfile``
mode ``"r|"``), every member is validated with
:func:`workflow_scripts.cutout_format.read_hsc_cutout` and stored atomically in the
:class:`~workflow_scripts.cutout_cache.CutoutCache`, so an interrupted or truncated
download keeps every complete cutout and a rerun requests only what is missing.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import tarfile
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import requests
import requests.auth

from workflow_scripts.cutout_cache import CutoutCache, CutoutRequest, manifest_row
from workflow_scripts.cutout_format import HSC_FILTERS, CutoutFormatError, read_hsc_cutout

from .credentials import Credentials
from .http import (
    CHUNK_SIZE,
    MAX_CONNECTIONS,
    AuthenticationError,
    Cancelled,
    RetryPolicy,
    ServiceError,
    TruncatedResponseError,
    body_snippet,
    check_credentials,
    check_http_url,
    config_kwargs,
    connection_broke,
    make_session,
    raise_for_status,
    rejected_credentials,
    run_cancellable,
    send_with_retry,
)

logger = logging.getLogger(__name__)

__all__ = ["CutoutRequest", "HscDasClient", "DEFAULT_DAS_URL", "LIST_HEADER"]

DEFAULT_DAS_URL = "https://hsc-release.mtk.nao.ac.jp/das_cutout/pdr3/cgi-bin/cutout"
RERUNS = ("pdr3_wide", "pdr3_dud", "pdr3_dud_rev")
IMAGE_TYPES = ("coadd", "coadd/bg")  # "warp" replies are directories of visits: not supported
#: Columns sent by the official ``downloadCutout.py``, in its order.
LIST_COLUMNS = ("rerun", "type", "filter", "tract", "ra", "dec", "sw", "sh", "image", "mask", "variance")
LIST_HEADER = "#? " + " ".join(LIST_COLUMNS)
#: The official client chunks at 990 rows, "smaller than the server's limit".
MAX_BATCH_SIZE = 990
#: Member names: ``arch-<n>-<n>/<lineno>-<kind>-<FILTER>-<tract>-<rerun>.fits``.
MEMBER_RE = re.compile(
    r"^(?:.*/)?(?P<lineno>\d+)-(?P<kind>cutout|coadd\+bg)-(?P<filter>[A-Za-z0-9_]+(?:-[A-Za-z0-9_]+)?)"
    r"-(?P<tract>\d+|any)-(?P<rerun>[A-Za-z0-9_]+)\.fits$"
)
_TAR_BLOCK = 512

Key = tuple[int, str]  # (object_id, band)
Outcome = tuple[str, str]  # (status, reason) for "failed" (and "ok"/"no_coverage" as cached)


# ============================================================================ requests
def request_key(request: CutoutRequest) -> Key:
    """The cache/manifest key of a request: (object_id, band)."""
    return (int(request.object_id), request.band)


def check_requests(requests_: Sequence[CutoutRequest], bands: Iterable[str]) -> None:
    """Refuse malformed requests, and a mix of sizes (one cache holds one size)."""
    allowed = set(bands)
    sizes = {r.half_size_arcsec for r in requests_}
    if len(sizes) > 1:
        raise ValueError(f"all requests of one fetch must share half_size_arcsec, got {sorted(sizes)}")
    for r in requests_:
        if r.band not in allowed:
            raise ValueError(f"object {r.object_id}: band must be one of {sorted(allowed)}, got {r.band!r}")
        if not (math.isfinite(r.ra) and math.isfinite(r.dec) and -90.0 <= r.dec <= 90.0):
            raise ValueError(f"object {r.object_id}: bad position ra={r.ra!r} dec={r.dec!r}")
        if not (math.isfinite(r.half_size_arcsec) and r.half_size_arcsec > 0):
            raise ValueError(f"object {r.object_id}: half_size_arcsec must be > 0, got {r.half_size_arcsec!r}")


def split_cached(requests_: Sequence[CutoutRequest], cache: CutoutCache) -> tuple[list[CutoutRequest], list[Key]]:
    """(requests still to fetch, keys in request order); duplicates of (object, band) dropped."""
    seen: set[Key] = set()
    order: list[Key] = []
    todo: list[CutoutRequest] = []
    for r in requests_:
        key = request_key(r)
        if key in seen:
            continue
        seen.add(key)
        order.append(key)
        if cache.lookup(*key) is None:
            todo.append(r)
    return todo, order


def manifest_rows(cache: CutoutCache, order: Sequence[Key], failures: Mapping[Key, str]) -> list[dict]:
    """Manifest rows in request order: cache state, or ``failed`` with the recorded reason."""
    rows = []
    for key in order:
        if key in failures and cache.lookup(*key) is None:
            rows.append(manifest_row(cache, *key, status="failed", reason=failures[key]))
        else:
            rows.append(manifest_row(cache, *key))
    return rows


def _angle(deg: float) -> str:
    return f"{deg:.16e}deg"


def chunked(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# ============================================================================ tar stream
class _BodyReader:
    """File-like view of a streamed response body for ``tarfile`` mode ``"r|"``.

    Counts the bytes delivered; a broken connection or read timeout becomes a
    :class:`TruncatedResponseError` (no ``requests`` exception is chained).
    """

    def __init__(self, response: requests.Response, chunk_size: int = CHUNK_SIZE) -> None:
        self._chunks = response.iter_content(chunk_size=chunk_size)
        self._buf = bytearray()
        self.position = 0
        self.eof = False
        self._error: TruncatedResponseError | None = None

    def _fill(self) -> None:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.eof = True
            return
        except requests.RequestException as exc:
            failure = connection_broke(self.position + len(self._buf), exc)
        else:
            self._buf += chunk
            return
        raise TruncatedResponseError(f"HSC DAS tar stream: {failure}")

    def read(self, size: int = -1) -> bytes:
        # Like a socket: a break is reported only once the bytes before it were delivered,
        # so tarfile still sees every member that arrived completely.
        while (size < 0 or len(self._buf) < size) and not self.eof:
            if self._error is not None:
                if self._buf:
                    break
                raise self._error
            try:
                self._fill()
            except TruncatedResponseError as exc:
                self._error = exc
        n = len(self._buf) if size < 0 else min(size, len(self._buf))
        out = bytes(self._buf[:n])
        del self._buf[:n]
        self.position += n
        return out

    def drain(self) -> int:
        """Read to the end; return the total body length."""
        while self.read(CHUNK_SIZE):
            pass
        return self.position


# ============================================================================ client
class HscDasClient:
    """HSC-SSP DAS cutout client (protocol of ``downloadCutout.py``).

    :meth:`fetch` is the pipeline entry point; :meth:`fetch_one` is for debugging.
    Exceptions raised (only :class:`AuthenticationError` escapes :meth:`fetch`; other
    service failures become ``failed`` manifest rows) never contain the password.
    """

    bands = tuple(HSC_FILTERS)

    def __init__(
        self,
        url: str,
        credentials: Credentials,
        rerun: str = "pdr3_wide",
        image_type: str = "coadd",
        batch_size: int = MAX_BATCH_SIZE,
        max_connections: int = 4,
        timeout_s: float = 600.0,
        max_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
        *,
        retry_base_delay_s: float = 30.0,
        retry_max_delay_s: float = 600.0,
        session: requests.Session | None = None,
    ) -> None:
        check_http_url(url)
        check_credentials(credentials)
        if not re.match(r"^[a-z0-9_]+$", rerun):
            raise ValueError(f"rerun must match ^[a-z0-9_]+$ (e.g. {', '.join(RERUNS)}), got {rerun!r}")
        if image_type not in IMAGE_TYPES:
            raise ValueError(f"image_type must be one of {IMAGE_TYPES}, got {image_type!r}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be in [1, {MAX_BATCH_SIZE}], got {batch_size!r}")
        if not 1 <= max_connections <= MAX_CONNECTIONS:
            raise ValueError(f"max_connections must be in [1, {MAX_CONNECTIONS}], got {max_connections!r}")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.url = url
        self.rerun = rerun
        self.image_type = image_type
        self.batch_size = int(batch_size)
        self.max_connections = int(max_connections)
        self.timeout_s = float(timeout_s)
        self._credentials = credentials
        self._auth = requests.auth.HTTPBasicAuth(credentials.user, credentials.password)
        self._policy = RetryPolicy(max_retries, retry_base_delay_s, retry_max_delay_s, sleep=sleep)
        # One pooled session shared by the worker threads (urllib3 pools are thread-safe).
        self._session = session or make_session(pool_maxsize=self.max_connections)
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, hsc_cfg: Mapping[str, Any], credentials: Credentials, **overrides: Any) -> "HscDasClient":
        """Client from the config's ``hsc`` section: ``das_url``, ``rerun`` (else ``schema``),
        ``das_image_type``, ``das_batch_size``, ``das_max_connections``, ``das_timeout_s``,
        ``max_retries`` (unrelated keys are ignored)."""
        return cls(credentials=credentials, **config_kwargs(hsc_cfg, {
            "url": ("das_url", DEFAULT_DAS_URL),
            "rerun": ("rerun", hsc_cfg.get("schema", "pdr3_wide")),
            "image_type": ("das_image_type", "coadd"),
            "batch_size": ("das_batch_size", MAX_BATCH_SIZE),
            "max_connections": ("das_max_connections", 4),
            "timeout_s": ("das_timeout_s", 600),
            "max_retries": ("max_retries", 3),
        }, overrides))

    def __repr__(self) -> str:
        return f"HscDasClient(url={self.url!r}, user={self._credentials.user!r}, rerun={self.rerun!r})"

    @property
    def _secrets(self) -> tuple[str]:
        return (self._credentials.password,)

    # ------------------------------------------------------------------ list format
    def list_row(self, request: CutoutRequest, tract: int | str = "any") -> str:
        """One row of the upload list, exactly as ``downloadCutout.py`` formats it."""
        half_deg = request.half_size_arcsec / 3600.0
        return " ".join([
            self.rerun, self.image_type, HSC_FILTERS[request.band], str(tract),
            _angle(request.ra), _angle(request.dec), _angle(half_deg), _angle(half_deg),
            "true", "true", "true",
        ])

    def coord_list(self, batch: Sequence[CutoutRequest]) -> str:
        """The ``coordlist.txt`` of one POST (header line 1, data rows from line 2)."""
        return "\n".join([LIST_HEADER, *(self.list_row(r) for r in batch)]) + "\n"

    # ------------------------------------------------------------------ transport
    def _check_response(self, response: requests.Response, what: str) -> None:
        if response.status_code == 401:
            response.close()
            raise rejected_credentials("HSC DAS", self._credentials)
        raise_for_status(response, what, self._secrets)

    def _post_list(self, batch: Sequence[CutoutRequest], what: str) -> requests.Response:
        files = {"list": ("coordlist.txt", self.coord_list(batch).encode("ascii"), "text/plain")}
        response = send_with_retry(
            self._session, "POST", self.url, policy=self._policy, timeout_s=self.timeout_s, what=what,
            secrets=self._secrets, files=files, auth=self._auth, stream=True,
        )
        self._check_response(response, what)
        return response

    # ------------------------------------------------------------------ one POST
    def _read_tar(
        self, response: requests.Response, pending: dict[int, CutoutRequest], cache: CutoutCache,
        failures: dict[Key, str],
    ) -> None:
        """Consume one tar reply: cache valid members, record corrupt ones; pop both from *pending*.

        Raises :class:`TruncatedResponseError` if the stream ends before the tar's
        end-of-archive blocks (members already cached stay cached).
        """
        reader = _BodyReader(response)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                for member in tar:
                    if self._stop.is_set():
                        raise Cancelled()
                    if not member.isfile():
                        continue
                    data = self._member_bytes(tar, member)
                    self._store_member(member.name, data, pending, cache, failures)
                end = tar.offset
            if reader.drain() < end + _TAR_BLOCK:
                raise TruncatedResponseError(f"HSC DAS tar stream ended without end-of-archive marker after {end} bytes")
        except tarfile.TarError as exc:
            message = f"HSC DAS tar stream is truncated or malformed after {reader.position} bytes ({exc})"
        else:
            return
        finally:
            response.close()
        raise TruncatedResponseError(message)

    @staticmethod
    def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
        fh = tar.extractfile(member)
        data = fh.read() if fh is not None else b""
        if len(data) != member.size:
            raise tarfile.ReadError(f"member {member.name} has {len(data)} of {member.size} bytes")
        return data

    def _store_member(
        self, name: str, data: bytes, pending: dict[int, CutoutRequest], cache: CutoutCache,
        failures: dict[Key, str],
    ) -> None:
        match = MEMBER_RE.match(name)
        if match is None:
            logger.warning("HSC DAS: ignoring unexpected tar member %r", name)
            return
        request = pending.pop(int(match["lineno"]), None)
        if request is None:  # a second tract for a row already served, or an unknown line
            logger.debug("HSC DAS: ignoring extra member %r", name)
            return
        expected = HSC_FILTERS[request.band]
        if match["filter"] != expected:
            failures[request_key(request)] = f"HSC DAS returned filter {match['filter']} for a {expected} request ({name})"
            return
        try:
            read_hsc_cutout(data, band=request.band)
        except CutoutFormatError as exc:
            failures[request_key(request)] = f"invalid cutout from HSC DAS: {exc}"
            logger.warning("HSC DAS: object %d band %s: %s", request.object_id, request.band, exc)
            return
        cache.put(request.object_id, request.band, data)

    def _fetch_batch(self, batch: Sequence[CutoutRequest], cache: CutoutCache, label: str) -> dict[Key, str]:
        """Fetch one batch (retrying the rest of it after truncation); return failures."""
        failures: dict[Key, str] = {}
        remaining = list(batch)
        last = ""
        for attempt in range(self._policy.max_retries + 1):
            if self._stop.is_set():
                raise Cancelled()
            what = f"HSC DAS {label} ({len(remaining)} rows)"
            pending = {lineno: r for lineno, r in enumerate(remaining, start=2)}
            try:
                self._read_tar(self._post_list(remaining, what), pending, cache, failures)
            except TruncatedResponseError as exc:
                last = str(exc)
            except AuthenticationError:
                raise
            except ServiceError as exc:  # retries exhausted, or a 4xx (not retried)
                return failures | {request_key(r): str(exc) for r in pending.values()}
            else:
                reason = f"HSC DAS has no {self.rerun} {self.image_type} data here"
                for r in pending.values():
                    cache.mark_no_coverage(r.object_id, r.band, f"{reason} ({HSC_FILTERS[r.band]})")
                logger.info("%s: done (%d without data, %d failed)", what, len(pending), len(failures))
                return failures
            remaining = list(pending.values())
            if attempt < self._policy.max_retries:
                delay = self._policy.delay(attempt)
                logger.warning("%s; %d rows left, retry %d/%d in %.1f s", last, len(remaining), attempt + 1,
                               self._policy.max_retries, delay)
                self._policy.sleep(delay)
        reason = f"{last} (after {self._policy.max_retries + 1} attempt(s))"
        return failures | {request_key(r): reason for r in remaining}

    # ------------------------------------------------------------------ public
    def fetch(self, requests_: list[CutoutRequest], cache: CutoutCache) -> list[dict]:
        """Fetch every (object, band) not yet in *cache*; return manifest rows in request order.

        Up to ``max_connections`` POSTs of up to ``batch_size`` rows run at once.
        Raises :class:`AuthenticationError` for a rejected account (and re-raises
        ``KeyboardInterrupt``); complete cutouts stay cached either way.
        """
        if cache.rerun != self.rerun:
            raise ValueError(f"cache is for rerun {cache.rerun!r}, client fetches {self.rerun!r}")
        check_requests(requests_, self.bands)
        todo, order = split_cached(requests_, cache)
        logger.info("HSC DAS: %d of %d cutouts cached, %d to fetch in batches of %d",
                    len(order) - len(todo), len(order), len(todo), self.batch_size)
        failures: dict[Key, str] = {}
        batches = chunked(todo, self.batch_size)
        if batches:
            failures = self._run_batches(batches, cache)
        return manifest_rows(cache, order, failures)

    def _run_batches(self, batches: Sequence[Sequence[CutoutRequest]], cache: CutoutCache) -> dict[Key, str]:
        """Up to ``max_connections`` batches at once; running batches stop at their next member on a failure."""
        tasks = [functools.partial(self._fetch_batch, batch, cache, f"batch {i + 1}/{len(batches)}")
                 for i, batch in enumerate(batches)]
        failures: dict[Key, str] = {}
        for batch_failures in run_cancellable(tasks, max_workers=self.max_connections, stop=self._stop,
                                              thread_name_prefix="das"):
            failures.update(batch_failures)
        return failures

    def fetch_one(self, ra: float, dec: float, band: str, half_size_arcsec: float, *, tract: int | str = "") -> bytes | None:
        """One cutout by GET (debugging): validated FITS bytes, or None when the server has no data (404)."""
        if band not in HSC_FILTERS:
            raise ValueError(f"band must be one of {tuple(HSC_FILTERS)}, got {band!r}")
        params = {
            "ra": repr(float(ra)), "dec": repr(float(dec)),
            "sw": f"{half_size_arcsec!r}asec", "sh": f"{half_size_arcsec!r}asec",
            "type": self.image_type, "image": "on", "mask": "on", "variance": "on",
            "filter": HSC_FILTERS[band], "tract": str(tract), "rerun": self.rerun,
        }
        what = f"HSC DAS cutout at ({ra:.5f}, {dec:+.5f}) {HSC_FILTERS[band]}"
        response = send_with_retry(self._session, "GET", self.url, policy=self._policy, timeout_s=self.timeout_s,
                                   what=what, secrets=self._secrets, params=params, auth=self._auth)
        if response.status_code == 404:
            logger.info("%s: no data (HTTP 404: %s)", what, body_snippet(response, self._secrets, 200))
            return None
        self._check_response(response, what)
        data = response.content
        try:
            read_hsc_cutout(data, band=band)
        except CutoutFormatError as exc:
            raise ServiceError(f"{what}: invalid cutout: {exc}") from None
        return data

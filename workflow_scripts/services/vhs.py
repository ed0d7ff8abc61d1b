"""Client for VISTA Hemisphere Survey (VHS) J/Ks cutouts from the VISTA Science Archive.

Protocol source: ``astroquery.vsa`` / ``astroquery.wfau`` (``BaseWFAUClass.get_image_list``;
summarised in shared/HSC_ACCESS.md §4): GET ``<server>GetImage`` with ``database``,
``programmeID`` (VHS = 110), ``sys=J``, ``ra``, ``dec`` (deg), ``filterID`` (J = 3,
Ks = 5), ``obsType=object``, ``frameType=tilestack``, ``mfid=``, ``xsize``/``ysize``
(full box side in arcmin) returns an HTML page; each ``href`` containing
``getImage`` is one matching frame, and the same link with ``getFImage`` serves
the FITS cutout. Public VHS data need no login.

Why not ``Vsa.get_images`` as-is (checked with astroquery 0.4.11): the URL can be
repointed (instance ``IMAGE_URL``), but ``_check_page`` re-fetches the page with a
module-level ``requests.get`` that has no timeout (a stalled server hangs the job
forever) and always sleeps a hard-coded 1 s (1 s per cutout at 10^5 cutouts), there
is no retry on 5xx/timeouts, any page mentioning "error" raises, the FITS goes
through astropy's own download cache (not our per-object atomic cache, no
validation), and ``programme_id=110`` (an int) silently becomes ``programmeID=None``.
So astroquery builds the GetImage parameters (``get_query_payload=True``: exactly
astroquery's names and values) and transport, retries and caching are ours
(:mod:`.http`).
"""

from __future__ import annotations

import functools
import html
import logging
import re
import threading
import time
import urllib.parse
from typing import Any, Callable, Mapping, Sequence

import requests

from workflow_scripts.cutout_cache import CutoutCache, CutoutRequest
from workflow_scripts.cutout_format import CutoutFormatError, read_vhs_cutout

from .hsc_das import Key, check_requests, manifest_rows, request_key, split_cached
from .http import (
    MAX_CONNECTIONS,
    Cancelled,
    RetryPolicy,
    ServiceError,
    body_snippet,
    check_http_url,
    config_kwargs,
    make_session,
    raise_for_status,
    read_body,
    retry_truncated,
    run_cancellable,
    send_with_retry,
)

logger = logging.getLogger(__name__)

DEFAULT_VSA_URL = "http://vsa.roe.ac.uk:8080/vdfs/"  # astroquery.vsa.conf.server
#: VISTA filterID of the VHS bands we use (astroquery ``VsaClass.filters``).
VHS_FILTER_IDS = {"J": 3, "Ks": 5}
_HREF_RE = re.compile(r"""href\s*=\s*["']([^"']+)["']""", re.IGNORECASE)
#: astroquery waits for this keyword ("N rows returned") before trusting a page.
_DONE_RE = re.compile(r"\brows?\b", re.IGNORECASE)
_ERROR_RE = re.compile(r"error", re.IGNORECASE)


def image_links(page: str, page_url: str) -> list[str]:
    """``getFImage`` URLs of the frames listed on a GetImage result page (astroquery's rewrite)."""
    links = []
    for href in _HREF_RE.findall(page):
        href = html.unescape(href)
        if "getImage" in href:
            links.append(urllib.parse.urljoin(page_url, href.replace("getImage", "getFImage")))
    return links


class VhsClient:
    """VHS J/Ks cutouts from the VSA ``GetImage`` service (public data, no login)."""

    bands = tuple(VHS_FILTER_IDS)

    def __init__(
        self,
        url: str = DEFAULT_VSA_URL,
        database: str = "VHSDR6",
        programme_id: int = 110,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_connections: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        *,
        frame_type: str = "tilestack",
        page_polls: int = 30,
        retry_base_delay_s: float = 2.0,
        retry_max_delay_s: float = 120.0,
        session: requests.Session | None = None,
    ) -> None:
        check_http_url(url)
        if not re.match(r"^[A-Za-z0-9_]+$", database):
            raise ValueError(f"database must be a VSA database name such as VHSDR6, got {database!r}")
        if not 1 <= max_connections <= MAX_CONNECTIONS or timeout_s <= 0 or page_polls < 1:
            raise ValueError(f"need 1 <= max_connections <= {MAX_CONNECTIONS}, timeout_s > 0, page_polls >= 1")
        from astroquery.vsa import VsaClass  # lazy: astroquery import is slow

        if frame_type not in VsaClass.frame_types:
            raise ValueError(f"frame_type must be one of {sorted(VsaClass.frame_types)}, got {frame_type!r}")
        self.url = url if url.endswith("/") else url + "/"
        self.database = database
        self.programme_id = int(programme_id)
        self.frame_type = frame_type
        self.timeout_s = float(timeout_s)
        self.max_connections = int(max_connections)
        self.page_polls = int(page_polls)
        self._sleep = sleep
        self._policy = RetryPolicy(max_retries, retry_base_delay_s, retry_max_delay_s, sleep=sleep)
        self._session = session or make_session(pool_maxsize=self.max_connections)
        self._vsa = VsaClass(database=database, programme_id="all")
        self._vsa.IMAGE_URL = self.url + "GetImage"
        self._vsa_lock = threading.Lock()
        self._stop = threading.Event()

    @classmethod
    def from_config(cls, vhs_cfg: Mapping[str, Any], **overrides: Any) -> "VhsClient":
        """Client from the config's ``vhs`` section: ``url``, ``database``, ``programme_id``,
        ``timeout_s``, ``max_retries``, ``max_connections``, ``frame_type`` (others ignored)."""
        return cls(**config_kwargs(vhs_cfg, {
            "url": ("url", DEFAULT_VSA_URL),
            "database": ("database", "VHSDR6"),
            "programme_id": ("programme_id", 110),
            "timeout_s": ("timeout_s", 60),
            "max_retries": ("max_retries", 3),
            "max_connections": ("max_connections", 4),
            "frame_type": ("frame_type", "tilestack"),
        }, overrides))

    def __repr__(self) -> str:
        return f"VhsClient(url={self.url!r}, database={self.database!r}, programme_id={self.programme_id})"

    # ------------------------------------------------------------------ protocol
    def query_params(self, request: CutoutRequest) -> dict[str, str]:
        """GetImage parameters for one cutout, as astroquery's ``get_image_list`` builds them."""
        import astropy.units as u
        from astropy.coordinates import SkyCoord

        with self._vsa_lock:  # astroquery objects are not meant to be shared across threads
            payload = self._vsa.get_image_list(
                SkyCoord(request.ra, request.dec, unit="deg"), waveband=request.band, frame_type=self.frame_type,
                image_width=2.0 * request.half_size_arcsec * u.arcsec, get_query_payload=True,
            )
        payload["programmeID"] = self.programme_id  # astroquery maps an int id to None
        return {k: (repr(float(v)) if k in ("ra", "dec", "xsize", "ysize") else str(v)) for k, v in payload.items()}

    def _get(self, url: str, what: str, **kwargs: Any) -> requests.Response:
        response = send_with_retry(self._session, "GET", url, policy=self._policy, timeout_s=self.timeout_s,
                                   what=what, **kwargs)
        raise_for_status(response, what)
        return response

    def image_urls(self, request: CutoutRequest) -> list[str] | None:
        """``getFImage`` URLs for one cutout ([] = no frame covers it; None = the page never completed)."""
        what = f"VSA GetImage for object {request.object_id} {request.band}"
        params = self.query_params(request)
        for poll in range(self.page_polls):
            response = self._get(self.url + "GetImage", what, params=params)
            page = response.text
            links = image_links(page, response.url)
            if links:
                return links
            if _ERROR_RE.search(page):
                raise ServiceError(f"{what}: the service reported an error: {body_snippet(response, limit=300)}")
            if _DONE_RE.search(page):
                return []
            logger.debug("%s: page not complete yet (poll %d/%d)", what, poll + 1, self.page_polls)
            self._sleep(1.0)
        return None

    def _download(self, url: str, request: CutoutRequest) -> bytes:
        """One FITS, retried when truncated; validated (CutoutFormatError if not a VHS cutout)."""
        what = f"VSA getFImage for object {request.object_id} {request.band}"
        data = retry_truncated(lambda: read_body(self._get(url, what, stream=True), what), self._policy, log=False)
        read_vhs_cutout(data, band=request.band)
        return data

    def _fetch_request(self, request: CutoutRequest, cache: CutoutCache) -> str | None:
        """Fetch one (object, band) into *cache*; return a failure reason or None."""
        if self._stop.is_set():
            raise Cancelled()
        try:
            urls = self.image_urls(request)
            if urls is None:
                return f"VSA GetImage page did not complete after {self.page_polls} polls"
            if not urls:
                cache.mark_no_coverage(request.object_id, request.band,
                                       f"no VHS {self.frame_type} frame in {self.database} ({request.band})")
                return None
            problems = []
            for url in urls:
                try:
                    data = self._download(url, request)
                except CutoutFormatError as exc:
                    problems.append(f"invalid cutout from VSA: {exc}")
                    continue
                cache.put(request.object_id, request.band, data)
                return None
            return "; ".join(problems)
        except ServiceError as exc:
            return str(exc)

    # ------------------------------------------------------------------ public
    def fetch(self, requests_: list[CutoutRequest], cache: CutoutCache) -> list[dict]:
        """Fetch every (object, band) not yet in *cache*; return manifest rows in request order."""
        check_requests(requests_, self.bands)
        todo, order = split_cached(requests_, cache)
        logger.info("VSA: %d of %d cutouts cached, %d to fetch", len(order) - len(todo), len(order), len(todo))
        failures: dict[Key, str] = {}
        if todo:
            failures = self._run(todo, cache)
        n_failed = sum(1 for key in order if key in failures)
        if n_failed:
            logger.warning("VSA: %d cutout(s) failed (see the manifest reasons)", n_failed)
        return manifest_rows(cache, order, failures)

    def _run(self, todo: Sequence[CutoutRequest], cache: CutoutCache) -> dict[Key, str]:
        """Up to ``max_connections`` requests at once; no new one starts after a failure."""
        reasons = run_cancellable([functools.partial(self._fetch_request, r, cache) for r in todo],
                                  max_workers=self.max_connections, stop=self._stop, thread_name_prefix="vsa")
        return {request_key(r): reason for r, reason in zip(todo, reasons) if reason is not None}

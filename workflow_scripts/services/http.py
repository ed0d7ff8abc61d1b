"""Shared HTTP plumbing for the service clients (HSC CAS, HSC DAS cutouts, VHS, ...).

- :func:`make_session` -- a ``requests.Session`` with a project User-Agent.
- :class:`RetryPolicy` + :func:`send_with_retry` -- exponential backoff with full
  jitter on timeouts, connection errors, HTTP 5xx and 429 (``Retry-After`` honoured).
- :class:`ServiceError` and subclasses -- what callers catch.
- :func:`stream_to_file`, :func:`read_body` -- streaming downloads (atomic into a
  file, or into memory) that detect truncated bodies (Content-Length mismatch,
  dropped connection, caller's format check); :func:`retry_truncated` retries them.
- Client construction: :func:`check_http_url`, :func:`check_credentials`,
  :func:`rejected_credentials`, :func:`config_kwargs`.
- :func:`run_cancellable` -- a worker pool that stops every worker on the first error.

Secrets: request bodies of some services (the HSC CAS API, see ``hsc_cas``) carry
the password, and ``requests`` exceptions keep a reference to the request. We never
chain such exceptions into ours (errors are raised outside the ``except`` block),
and every server-provided or exception text passes through :func:`scrub`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.parse
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import requests
import requests.adapters
import requests.auth

from workflow_scripts import __version__
from workflow_scripts.contracts import atomic_path

from .credentials import Credentials

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024  # as the official HSC scripts read downloads
USER_AGENT = f"hsc-highz-qso/{__version__} (+requests {requests.__version__})"
#: Most parallel connections a client may open to one service.
MAX_CONNECTIONS = 16

T = TypeVar("T")


# ---------------------------------------------------------------------------- errors
class ServiceError(RuntimeError):
    """A remote service failed; the message is safe to log (no secrets)."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class AuthenticationError(ServiceError):
    """The service rejected the account (HTTP 401)."""


class QueryError(ServiceError):
    """The service rejected or failed a query; the message is the server's text."""


class TruncatedResponseError(ServiceError):
    """A response body ended early or failed its format check."""


class ServiceUnavailableError(ServiceError):
    """Transient failures (timeouts, 5xx, 429) persisted after all retries."""


# ---------------------------------------------------------------------------- secrets
def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """*text* with every secret (raw, JSON-escaped or URL-encoded) replaced by ``***``."""
    for secret in secrets:
        if not secret:
            continue
        variants = {secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
        variants.add(secret.encode("unicode_escape").decode("ascii").replace('"', '\\"'))
        for v in sorted(variants, key=len, reverse=True):
            text = text.replace(v, "***")
    return text


def body_snippet(response: requests.Response, secrets: Iterable[str | None] = (), limit: int = 2000) -> str:
    """The start of a (non-streamed) response body as scrubbed text."""
    try:
        text = response.content[:limit].decode(response.encoding or "utf-8", errors="replace")
    except requests.RequestException:
        return "<body unreadable>"
    return scrub(text.strip(), secrets)


def rejected_credentials(service: str, credentials: Credentials, hint: str = "") -> AuthenticationError:
    """The error for an HTTP 401: names the account and where it came from, never the password."""
    return AuthenticationError(
        f"{service} rejected the account name or password (HTTP 401) for account "
        f"{credentials.user!r} (credentials from {credentials.source}){hint}",
        status_code=401,
    )


# ---------------------------------------------------------------------------- clients
def check_http_url(url: str, name: str = "url") -> None:
    """Refuse anything but an http(s) URL (ValueError naming the parameter *name*)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"{name} must be an http(s) URL, got {url!r}")


def check_credentials(credentials: Any) -> None:
    if not isinstance(credentials, Credentials):
        raise TypeError("credentials must be a Credentials instance (see get_credentials)")


def config_kwargs(section: Mapping[str, Any], keys: Mapping[str, tuple[str, Any]], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a config section: ``{param: (config key, default)}``, then *overrides*."""
    kwargs = {param: section.get(key, default) for param, (key, default) in keys.items()}
    kwargs.update(overrides)
    return kwargs


# ---------------------------------------------------------------------------- sessions
class _NoAuth(requests.auth.AuthBase):
    """Explicitly "no HTTP auth": stops requests from adding netrc Basic auth on its own."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def make_session(user_agent: str = USER_AGENT, pool_maxsize: int = 4) -> requests.Session:
    """A session with connection pooling and our User-Agent.

    ``trust_env`` stays on so cluster proxies from ``HTTPS_PROXY`` work, but its
    implicit netrc lookup is disabled (``session.auth`` set to a no-op): credentials
    go only where a client puts them (CAS: JSON body; DAS: set ``session.auth``).
    """
    session = requests.Session()
    session.headers["User-Agent"] = user_agent
    session.auth = _NoAuth()
    adapter = requests.adapters.HTTPAdapter(pool_connections=pool_maxsize, pool_maxsize=pool_maxsize)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


# ---------------------------------------------------------------------------- retries
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: sleep U(0, min(max_delay, base * 2**attempt))."""

    max_retries: int = 5
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)
    rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError("retry settings must be non-negative")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number *attempt* (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay_s)
        cap = min(self.max_delay_s, self.base_delay_s * (2.0**attempt))
        return self.rng.uniform(0.0, cap)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:  # HTTP-date form: fall back to our own backoff
        return None


def send_with_retry(
    session: requests.Session,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    timeout_s: float,
    what: str,
    secrets: Iterable[str | None] = (),
    **kwargs: Any,
) -> requests.Response:
    """Send a request, retrying transient failures; return the first non-transient response.

    The caller maps 4xx statuses (see :func:`raise_for_status`). After
    ``policy.max_retries`` retries a :class:`ServiceUnavailableError` is raised whose
    message names *what* and the last failure (scrubbed), with no exception chained.
    """
    secrets = tuple(secrets)
    last_failure = ""
    for attempt in range(policy.max_retries + 1):
        retry_after = None
        try:
            response = session.request(method, url, timeout=(timeout_s, timeout_s), **kwargs)
        except (requests.Timeout, requests.ConnectionError) as exc:
            last_failure = scrub(f"{type(exc).__name__}: {exc}", secrets)
        else:
            if response.status_code not in RETRY_STATUS:
                return response
            retry_after = _retry_after(response)
            last_failure = f"HTTP {response.status_code} {response.reason}"
            response.close()
        if attempt == policy.max_retries:
            break
        wait = policy.delay(attempt, retry_after)
        logger.warning(
            "%s failed (%s); retry %d/%d in %.1f s", what, last_failure, attempt + 1, policy.max_retries, wait
        )
        policy.sleep(wait)
    raise ServiceUnavailableError(
        f"{what} failed after {policy.max_retries + 1} attempt(s); last error: {last_failure}"
    )


def raise_for_status(response: requests.Response, what: str, secrets: Iterable[str | None] = ()) -> None:
    """Raise a :class:`ServiceError` (401: :class:`AuthenticationError`) for HTTP >= 400."""
    code = response.status_code
    if code < 400:
        return
    snippet = body_snippet(response, secrets)
    response.close()
    if code == 401:
        raise AuthenticationError(f"{what}: the service rejected the credentials (HTTP 401)", status_code=401)
    raise ServiceError(f"{what} failed: HTTP {code} {response.reason}: {snippet}", status_code=code)


# ---------------------------------------------------------------------------- downloads
def connection_broke(received: int, exc: BaseException) -> str:
    """How a body that broke off after *received* bytes is described."""
    return f"connection broke after {received} bytes ({type(exc).__name__})"


def _copy_body(response: requests.Response, write: Callable[[bytes], Any], chunk_size: int) -> tuple[int, str | None]:
    """Stream *response*'s body into *write*; return (bytes, why it is incomplete or None).

    Incomplete: the connection broke (or a read timed out), or fewer bytes arrived than
    the Content-Length announced (wire bytes when a Content-Encoding applies).
    """
    written = 0
    try:
        for chunk in response.iter_content(chunk_size=chunk_size):
            write(chunk)
            written += len(chunk)
    except requests.RequestException as exc:  # dropped connection, IncompleteRead, read timeout
        return written, connection_broke(written, exc)
    expected = response.headers.get("Content-Length")
    if expected is not None:
        received = response.raw.tell() if "Content-Encoding" in response.headers else written
        if received != int(expected):
            return written, f"received {received} of {expected} announced bytes"
    return written, None


def read_body(response: requests.Response, what: str, chunk_size: int = CHUNK_SIZE) -> bytes:
    """The whole body of *response* (opened with ``stream=True``); TruncatedResponseError if incomplete."""
    data = bytearray()
    try:
        _, failure = _copy_body(response, data.extend, chunk_size)
    finally:
        response.close()
    if failure:
        raise TruncatedResponseError(f"{what}: truncated response: {failure}")
    return bytes(data)


def retry_truncated(attempt: Callable[[], T], policy: RetryPolicy, *, log: bool = True) -> T:
    """``attempt()``, again after a backoff while it raises TruncatedResponseError (policy.max_retries times).

    Then a TruncatedResponseError with the last message and the attempt count; with
    *log* every retry is logged as a warning.
    """
    last = ""
    for n in range(policy.max_retries + 1):
        try:
            return attempt()
        except TruncatedResponseError as exc:
            last = str(exc)
        if n < policy.max_retries:
            wait_s = policy.delay(n)
            if log:
                logger.warning("%s (retry %d/%d in %.1f s)", last, n + 1, policy.max_retries, wait_s)
            policy.sleep(wait_s)
    raise TruncatedResponseError(f"{last} (after {policy.max_retries + 1} attempt(s))")


def stream_to_file(
    response: requests.Response,
    dest: str | Path,
    *,
    validate: Callable[[Path], None] | None = None,
    chunk_size: int = CHUNK_SIZE,
    what: str = "download",
) -> int:
    """Stream *response* (opened with ``stream=True``) atomically into *dest*; return bytes.

    The body is written to a temporary file beside *dest* and renamed only when it
    is complete: the announced Content-Length was received and *validate* (a
    format check that raises :class:`TruncatedResponseError`) passed. On any
    failure *dest* is left as it was (absent, or an older good file).
    """
    try:
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as fh:
                written, failure = _copy_body(response, fh.write, chunk_size)
            if failure is not None:
                raise TruncatedResponseError(f"{what}: truncated response body: {failure}")
            if validate is not None:
                validate(tmp)
    finally:
        response.close()
    logger.debug("%s: %d bytes written to %s", what, written, dest)
    return written


# ---------------------------------------------------------------------------- parallel fetches
class Cancelled(Exception):
    """Raised by a worker of :func:`run_cancellable` that sees *stop* set: another one failed."""


def run_cancellable(
    tasks: Sequence[Callable[[], T]], *, max_workers: int, stop: threading.Event, thread_name_prefix: str
) -> list[T]:
    """Run *tasks* on up to *max_workers* threads; return their results in order.

    The first exception (``KeyboardInterrupt`` included; :class:`Cancelled` is only
    the echo of another) sets *stop* (running tasks check it and raise
    :class:`Cancelled`), cancels the tasks not yet started, waits for the running
    ones and is re-raised.
    """
    stop.clear()
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(tasks)), thread_name_prefix=thread_name_prefix)
    futures = [pool.submit(task) for task in tasks]
    try:
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in futures:
            if future in done and (exc := future.exception()) is not None and not isinstance(exc, Cancelled):
                raise exc
        results = [future.result() for future in futures]
    except BaseException:
        stop.set()  # running tasks stop at their next check; queued ones never start
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results

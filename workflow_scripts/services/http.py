"""Shared HTTP plumbing for the service clients (HSC CAS, HSC DAS cutouts, VHS, ...).

- :func:`make_session` -- a ``requests.Session`` with a project User-Agent.
- :class:`RetryPolicy` + :func:`send_with_retry` -- exponential backoff with full
  jitter on timeouts, connection errors, HTTP 5xx and 429 (``Retry-After`` honoured).
- :class:`ServiceError` and subclasses -- what callers catch.
- :func:`stream_to_file` -- atomic streaming download that detects truncated
  bodies (Content-Length mismatch, dropped connection, caller's format check).

Secrets: request bodies of some services (the HSC CAS API, see ``hsc_cas``) carry
the password, and ``requests`` exceptions keep a reference to the request. We never
chain such exceptions into ours (errors are raised outside the ``except`` block),
and every server-provided or exception text passes through :func:`scrub`.
"""

from __future__ import annotations

import logging
import random
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import requests
import requests.adapters
import requests.auth

from workflow_scripts import __version__
from workflow_scripts.contracts import atomic_path

logger = logging.getLogger(__name__)

CHUNK_SIZE = 64 * 1024  # as the official HSC scripts read downloads
USER_AGENT = f"hsc-highz-qso/{__version__} (+requests {requests.__version__})"


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
    expected = response.headers.get("Content-Length")
    encoded = "Content-Encoding" in response.headers  # then Content-Length counts wire bytes
    failure = None
    written = 0
    try:
        with atomic_path(dest) as tmp:
            with open(tmp, "wb") as fh:
                try:
                    for chunk in response.iter_content(chunk_size=chunk_size):
                        fh.write(chunk)
                        written += len(chunk)
                except requests.RequestException as exc:  # dropped connection, IncompleteRead, read timeout
                    failure = f"connection broke after {written} bytes ({type(exc).__name__})"
                if failure is None and expected is not None:
                    received = response.raw.tell() if encoded else written
                    if received != int(expected):
                        failure = f"received {received} of {expected} announced bytes"
            if failure is not None:
                raise TruncatedResponseError(f"{what}: truncated response body: {failure}")
            if validate is not None:
                validate(tmp)
    finally:
        response.close()
    logger.debug("%s: %d bytes written to %s", what, written, dest)
    return written

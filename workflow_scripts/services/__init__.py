"""Clients for the external data services used with ``source: hsc``.

- :mod:`.credentials` -- HSC-SSP account from environment variables or ~/.netrc.
- :mod:`.http` -- shared HTTP plumbing: sessions, retry with backoff, error types,
  atomic streaming downloads with truncation detection.
- :mod:`.hsc_cas` -- HSC-SSP CAS catalogue SQL job API (protocol of the official
  ``hscReleaseQuery.py`` from the HSC data-access-tools).

Nothing in this package may log, print or put into an exception text a password.
"""

from .credentials import Credentials, MissingCredentialsError, get_credentials
from .http import (
    AuthenticationError,
    QueryError,
    ServiceError,
    ServiceUnavailableError,
    TruncatedResponseError,
)

__all__ = [
    "AuthenticationError",
    "Credentials",
    "MissingCredentialsError",
    "QueryError",
    "ServiceError",
    "ServiceUnavailableError",
    "TruncatedResponseError",
    "get_credentials",
]

"""HSC-SSP account credentials from environment variables or a netrc file.

The official HSC data-access-tools scripts (``hscReleaseQuery.py``,
``downloadCutout.py``) read the password from the environment variable
``HSC_SSP_CAS_PASSWORD`` and take the account name on the command line; third-party
wrappers read the name from ``HSC_SSP_CAS_USER``. For unattended pipeline runs we
also accept a ``machine <host> login <user> password <pw>`` entry in ``~/.netrc``
(path overridable with the ``NETRC`` environment variable, the convention of curl
and requests; the stdlib ``netrc`` module itself only knows ``~/.netrc``).

The password never appears in ``repr``/``str`` of :class:`Credentials` nor in any
exception text raised here.
"""

from __future__ import annotations

import logging
import netrc
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

DEFAULT_USER_ENV = "HSC_SSP_CAS_USER"
DEFAULT_PASSWORD_ENV = "HSC_SSP_CAS_PASSWORD"


class MissingCredentialsError(RuntimeError):
    """No usable account name and password were found (message says where we looked)."""


@dataclass(frozen=True)
class Credentials:
    """An account name and password; the password is hidden from repr/str."""

    user: str
    password: str = field(repr=False)
    #: Where the credentials came from (for error messages; never secret).
    source: str = field(default="explicit", compare=False)

    def __repr__(self) -> str:
        return f"Credentials(user={self.user!r}, password='***', source={self.source!r})"

    __str__ = __repr__


def netrc_path() -> Path:
    """The netrc file consulted: ``$NETRC`` if set, else ``~/.netrc``."""
    env = os.environ.get("NETRC")
    return Path(env).expanduser() if env else Path("~/.netrc").expanduser()


def _host_of(url: str) -> str:
    host = urlsplit(url).hostname
    if not host:
        raise ValueError(f"cannot find a host name in URL {url!r}")
    return host


def _netrc_entry(path: Path, host: str) -> tuple[str, str] | None:
    """(login, password) for *host* (or the ``default`` entry) in *path*, if any."""
    if not path.is_file():
        return None
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            logger.warning("netrc file %s is readable by others; run: chmod 600 %s", path, path)
        parsed = netrc.netrc(str(path))
    except netrc.NetrcParseError as exc:
        # exc.msg may quote a token (possibly a password): report only file and line.
        raise MissingCredentialsError(
            f"cannot parse netrc file {path} (line {exc.lineno}); fix its syntax"
        ) from None
    except OSError as exc:
        raise MissingCredentialsError(f"cannot read netrc file {path}: {exc.strerror}") from None
    auth = parsed.authenticators(host)
    if auth is None:
        return None
    login, _account, password = auth
    if not login or not password:
        return None
    return login, password


def get_credentials(
    url: str,
    user_env: str = DEFAULT_USER_ENV,
    password_env: str = DEFAULT_PASSWORD_ENV,
) -> Credentials:
    """Credentials for the service at *url*.

    Environment variables win field by field; a netrc entry for the URL's host
    fills what is missing. A netrc password is used only if its login matches the
    user name from the environment (when one is set), so a stray entry for another
    account is never combined with it.
    """
    host = _host_of(url)
    env_user = os.environ.get(user_env) or None
    env_password = os.environ.get(password_env) or None
    if env_user and env_password:
        return Credentials(env_user, env_password, source=f"environment ({user_env}, {password_env})")

    path = netrc_path()
    entry = _netrc_entry(path, host)
    if entry is not None:
        login, nrc_password = entry
        if env_password and not env_user:
            return Credentials(login, env_password, source=f"{path} login + environment ({password_env})")
        if env_user is None or env_user == login:
            return Credentials(login, nrc_password, source=f"{path} (machine {host})")

    raise MissingCredentialsError(
        f"no HSC-SSP account credentials for {host}: set the environment variables "
        f"{user_env} (account name) and {password_env} (password), or add a line "
        f"'machine {host} login <account> password <password>' to {path} "
        f"(chmod 600; the NETRC environment variable overrides this path)"
    )

"""Client-side helpers for tests that run a service client against a loopback server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from workflow_scripts.services.http import make_session


class Sleeps(list):
    """A no-op ``sleep`` that records what it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def loopback_client_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """*kwargs* for a client constructor, defaulted for a loopback server: a recording no-op
    ``sleep``, ``timeout_s=5`` and a session that ignores proxy settings."""
    kwargs.setdefault("sleep", Sleeps())
    kwargs.setdefault("timeout_s", 5)
    session = make_session()
    session.trust_env = False  # a CI HTTP_PROXY must not capture 127.0.0.1
    kwargs.setdefault("session", session)
    return kwargs


def no_part_files(root: Path) -> bool:
    """No partial download (``*.part``) is left anywhere below *root*."""
    return not [p for p in root.rglob("*") if p.name.endswith(".part")]

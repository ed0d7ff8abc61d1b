"""What the loopback CAS, DAS and VSA servers share.

- :class:`LoopbackServer` -- an HTTP server thread on 127.0.0.1 (``port``, ``url``,
  ``stop``, context manager), the request log ``requests``, the fault switches
  ``faults`` with :meth:`~LoopbackServer.take_fault` (counters count down as faults
  fire) and the common transport faults (:meth:`~LoopbackServer.fault_before`: a
  stall then a dropped connection, or HTTP 503).
- :class:`TransportFaults` -- the fault fields every server has.
- :class:`LoopbackHandler` -- the request handler base (``send_body``, ``send_text``,
  a body cut in half, debug logging under the server module's logger).
- :func:`near`, :func:`garbled` -- the ``corrupt`` cutout fault; :func:`tract_grid` -- tract numbers.
- :func:`start_with_faults` -- the ``start_*_server(**options)`` split of options into
  fault fields and constructor arguments.
- CLI helpers: :func:`cli_parser`, :func:`start_cli`, :func:`password_from_env`, :func:`read_config`, :func:`simulate_config_shards`,
  :func:`write_port_file`, :func:`serve_until_signalled`, :func:`serve_cli`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import numpy as np

logger = logging.getLogger(__name__)

#: ``provider(ra, dec, band, half_size_arcsec) -> FITS bytes | None`` (None: no data there); see :mod:`.images`.
Provider = Callable[[float, float, str, float], "bytes | None"]

TEXT_PLAIN = "text/plain; charset=utf-8"


# ---------------------------------------------------------------------------- faults
@dataclass
class TransportFaults:
    """Faults of every loopback server; counters count down as faults fire (change them any time)."""

    fail_503: int = 0  # the next N requests get HTTP 503
    delay_s: float = 0.0  # stall this long, then drop the connection unanswered...
    delay_first: int = 0  # ...for the next K requests (set delay_s > client timeout)


def near(a: tuple[float, float, str], b: tuple[float, float, str]) -> bool:
    """Same (ra, dec, band) to 1e-7 deg: how ``corrupt`` fault entries match a cutout."""
    return abs(a[0] - b[0]) < 1e-7 and abs(a[1] - b[1]) < 1e-7 and a[2] == b[2]


def garbled(data: bytes) -> bytes:
    """*data*'s length of ``CORRUPT `` bytes (a FITS that fails validation)."""
    return (b"CORRUPT " * (len(data) // 8 + 1))[: len(data)]


def tract_grid(ra: Any, dec: Any, tract_deg: float = 1.5) -> tuple[Any, Any, Any]:
    """(ix, iy, tract) of the coarse RA/Dec grid standing in for HSC tracts (arrays or scalars, int64).

    The loopback CAS derives its ``tract``/``patch`` columns and the loopback DAS its
    member names from this one grid, so the two servers agree on tract numbers.
    """
    iy = np.floor((np.asarray(dec) + 90.0) / tract_deg).astype(np.int64)
    ix = np.floor((np.asarray(ra) % 360.0) / tract_deg).astype(np.int64)
    return ix, iy, iy * int(np.ceil(360.0 / tract_deg)) + ix


def start_with_faults(server_cls: type, faults_cls: type, *args: Any, **options: Any) -> Any:
    """``server_cls(*args, faults=faults_cls(<fault options>), **<other options>)``."""
    names = set(faults_cls.__dataclass_fields__)
    faults = faults_cls(**{k: v for k, v in options.items() if k in names})
    return server_cls(*args, faults=faults, **{k: v for k, v in options.items() if k not in names})


# ---------------------------------------------------------------------------- server
class LoopbackServer:
    """An HTTP server thread serving *handler* requests, with a request log and fault switches.

    Subclasses call ``super().__init__(faults, base_path)`` first and :meth:`_serve`
    last in their ``__init__`` (so nothing is served before they are ready).
    """

    #: Short name for the server thread and log lines (``CAS``, ``DAS``, ``VSA``).
    label = "loopback"
    #: Content type of the 503 answer.
    unavailable_type = TEXT_PLAIN

    def __init__(self, faults: Any, base_path: str) -> None:
        self.faults = faults
        self.base_path = base_path
        #: Every request seen (what a record holds is up to the server; no secrets).
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _serve(self, host: str, port: int, handler: type) -> None:
        self._httpd = _HTTPServer((host, port), handler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"{self.label.lower()}-loopback", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL of the service (``base_path`` on this host and port)."""
        return f"http://{self._httpd.server_address[0]}:{self.port}{self.base_path}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "LoopbackServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ faults
    def _log_request(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(record)

    def _take_locked(self, name: str) -> bool:
        if getattr(self.faults, name) > 0:
            setattr(self.faults, name, getattr(self.faults, name) - 1)
            return True
        return False

    def take_fault(self, name: str) -> bool:
        """True (and count the fault counter *name* down) if it is still positive."""
        with self._lock:
            return self._take_locked(name)

    def fault_before(self, handler: "LoopbackHandler") -> bool:
        """Apply the delay/503 faults; True if the request was answered (or dropped)."""
        with self._lock:
            delay = self.faults.delay_s > 0 and self._take_locked("delay_first")
            fail = not delay and self._take_locked("fail_503")
        if delay:
            time.sleep(self.faults.delay_s)
            handler.close_connection = True  # the client gave up long ago: drop it unanswered
            return True
        if fail:
            handler.send_body(503, b"Service Temporarily Unavailable", self.unavailable_type)
        return fail


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, app: LoopbackServer) -> None:
        self.app = app
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # clients that time out or hang up are part of the tests
        super().handle_error(request, client_address)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Handler base: subclasses add ``do_GET``/``do_POST`` calling ``self.server.app``."""

    protocol_version = "HTTP/1.1"  # keep-alive, like the real servers behind their proxies
    server: _HTTPServer

    def send_body(self, code: int, payload: bytes, content_type: str, *, truncate: bool = False) -> None:
        """Answer with *payload*; with *truncate* announce all of it, send half, close."""
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if truncate:
            self.wfile.write(payload[: len(payload) // 2])
            self.close_connection = True
            return
        self.wfile.write(payload)

    def send_text(self, code: int, text: str) -> None:
        self.send_body(code, text.encode("utf-8"), TEXT_PLAIN)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        app = self.server.app
        logging.getLogger(type(app).__module__).debug(f"loopback {app.label}: " + format, *args)


# ---------------------------------------------------------------------------- CLI
def cli_parser(description: str, *, account: bool) -> argparse.ArgumentParser:
    """The servers' common options (``--config``, ``--port-file``, ``--host``, ``--port``;
    with *account* also ``--user`` and ``--password-env``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", required=True, type=Path, help="pipeline config YAML (seed, sky, shards)")
    parser.add_argument("--port-file", required=True, type=Path, help="write the listening port here")
    if account:
        parser.add_argument("--user", required=True, help="account name the server accepts")
        parser.add_argument("--password-env", default="HSC_SSP_CAS_PASSWORD", help="env var holding the password")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    return parser


def start_cli(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse *argv* and set up logging."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return args


def read_config(path: Path) -> dict[str, Any]:
    """The pipeline config YAML at *path* ({} if empty)."""
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def password_from_env(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The password from ``--password-env`` (a usage error if it is unset or empty)."""
    password = os.environ.get(args.password_env)
    if not password:
        parser.error(f"environment variable {args.password_env} is not set")
    return password


def simulate_config_shards(config: dict[str, Any]) -> tuple[Any, list[tuple[str, Any, Any]]]:
    """(``SkyConfig``, [(name, catalogue, truth) per shard]) of a pipeline config, simulated with
    ``workflow_scripts.sky`` (``seed``, ``sky``, ``shards``; RA/Dec box shards only)."""
    from workflow_scripts.sky import SkyBox, SkyConfig, simulate_shard  # lazy: heavy, and written in parallel

    sky = SkyConfig.from_dict(config.get("sky") or {})
    shards = []
    for name, shard in (config.get("shards") or {}).items():
        if "ra" not in shard or "dec" not in shard:
            raise SystemExit(f"shard {name!r}: only RA/Dec box shards can be simulated")
        (ra_min, ra_max), (dec_min, dec_max) = shard["ra"], shard["dec"]
        cat, truth = simulate_shard(SkyBox(ra_min, ra_max, dec_min, dec_max), shard_name=name,
                                    seed=config.get("seed", 0), sky=sky)
        shards.append((name, cat, truth))
    if not shards:
        raise SystemExit("config has no shards")
    return sky, shards


def write_port_file(path: str | Path, port: int) -> None:
    """Write *port* so that readers never see a half-written file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)


def serve_until_signalled(stop_server) -> None:
    """Block until SIGTERM/SIGINT, then call *stop_server*."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    stop_server()


def serve_cli(server: LoopbackServer, port_file: Path) -> int:
    """Publish *server*'s port in *port_file* and serve until SIGTERM/SIGINT; exit status 0."""
    write_port_file(port_file, server.port)
    logging.getLogger(type(server).__module__).info("loopback %s listening at %s", server.label, server.url)
    serve_until_signalled(server.stop)
    return 0

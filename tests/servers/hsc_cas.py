"""Loopback HSC-SSP CAS catalogue job server (protocol of ``hscReleaseQuery.py``).

Speaks what the official HSC data-access-tools client speaks (shared/HSC_ACCESS.md
§1, §1b): POST JSON with ``clientVersion`` and ``credential`` at
``<base>submit|status|download|cancel|delete|preview``; 401 on a wrong account;
406 with the SQL error text when the syntax pre-check fails; jobs with int ids that
are ``running`` for a configurable number of status polls, then ``done`` or
``error`` (with ``error`` text); downloads as CSV (``#`` metainfo lines, ``# ``
header row, booleans ``t``/``f`` like PostgreSQL) or csv.gz.

The submitted SQL really runs: rows live in an in-memory sqlite3 database attached
under the schema name (``pdr3_wide``) with the PDR3 vertical split into
``forced`` and ``forced2`` (``<b>_psfflux_*``), so the client's join and cuts are
exercised. sqlite is not PostgreSQL: plain SELECT/JOIN/WHERE work, PostgreSQL-only
functions (``conesearch``) do not.

Fault switches live in :class:`Faults` (``server.faults``), settable per test.

CLI (for the workflow test with ``source: hsc``)::

    python -m tests.servers.hsc_cas --config config.yaml --port-file PORT \\
        --user alice --password-env HSC_SSP_CAS_PASSWORD
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

OPERATIONS = ("submit", "status", "download", "cancel", "delete", "preview")
RELEASE_VERSIONS = ("pdr1", "pdr2", "pdr2-citus", "pdr3", "pdr3-citus", "pdr3-citus-columnar")
BASE_PATH = "/datasearch/api/catalog_jobs/"  # as on hsc-release.mtk.nao.ac.jp
_PSF_RE = re.compile(r"^[grizy]_psfflux_")
_SCHEMA_RE = re.compile(r"^[a-z0-9_]+$")


@dataclass
class Faults:
    """Fault injection; counters count down as faults fire (change them any time)."""

    reject_auth: bool = False  # answer 401 even to the right password
    fail_503: int = 0  # the next N requests (any operation) get HTTP 503
    delay_s: float = 0.0  # stall this long, then drop the connection unanswered...
    delay_first: int = 0  # ...for the next K requests (set delay_s > client timeout)
    truncate_downloads: int = 0  # next N downloads: full Content-Length announced, half sent, closed
    job_error: str | None = None  # jobs end in status "error" with this text
    polls_until_done: int = 1  # status polls answered "running" before "done"


@dataclass
class _Job:
    id: int
    sql: str
    out_format: str
    include_metainfo: bool
    release_version: str
    created_at: str
    polls_left: int
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    error: str | None = None
    state: str = "running"

    def as_json(self, user: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "user_id": 1,
            "name": f"catalog-job {self.created_at[:10]}",
            "status": self.state,
            "sql": self.sql,
            "error": self.error if self.state == "error" else None,
            "out_format": self.out_format,
            "include_metainfo_to_body": self.include_metainfo,
            "release_version": self.release_version,
            "created_at": self.created_at,
            "submitted_from": "api",
            "account_name": user,
        }


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sql_type(dtype: Any) -> str:
    if pd.api.types.is_bool_dtype(dtype):
        return "BOOLEAN"
    if pd.api.types.is_integer_dtype(dtype):
        return "INTEGER"
    if pd.api.types.is_float_dtype(dtype):
        return "REAL"
    return "TEXT"


def add_tract_patch(df: pd.DataFrame, tract_deg: float = 1.5, patches: int = 9) -> pd.DataFrame:
    """Plausible ``tract``/``patch`` from a coarse RA/Dec grid (PDR3 patch = 100*x + y)."""
    out = df.copy()
    ra = out["ra"].to_numpy() % 360.0
    dec = out["dec"].to_numpy()
    iy = np.floor((dec + 90.0) / tract_deg).astype(np.int64)
    ix = np.floor(ra / tract_deg).astype(np.int64)
    out["tract"] = (iy * int(np.ceil(360.0 / tract_deg)) + ix).astype(np.int64)
    px = np.clip(((ra - ix * tract_deg) / tract_deg * patches).astype(np.int64), 0, patches - 1)
    py = np.clip(((dec + 90.0 - iy * tract_deg) / tract_deg * patches).astype(np.int64), 0, patches - 1)
    out["patch"] = (100 * px + py).astype(np.int64)
    return out


class CasServer:
    """The loopback CAS: an HTTP server thread plus a sqlite catalogue and a job table."""

    def __init__(
        self,
        catalog_df: pd.DataFrame,
        user: str,
        password: str,
        *,
        schema: str = "pdr3_wide",
        host: str = "127.0.0.1",
        port: int = 0,
        base_path: str = BASE_PATH,
        preview_rows: int = 10,
        faults: Faults | None = None,
    ) -> None:
        if not _SCHEMA_RE.match(schema):
            raise ValueError(f"bad schema name {schema!r}")
        self.user = user
        self._password = password
        self.schema = schema
        self.base_path = base_path if base_path.endswith("/") else base_path + "/"
        self.preview_rows = preview_rows
        self.faults = faults or Faults()
        #: Every request seen: {"op", "body", "http_auth"}, the body's password replaced by "***".
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._jobs: dict[int, _Job] = {}
        self._next_id = 1000
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"ATTACH DATABASE ':memory:' AS {schema}")
        self._bool_columns: set[str] = set()
        self.load_catalog(catalog_df)
        self._httpd = _HTTPServer((host, port), _Handler, self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="cas-loopback", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        """Base URL of the job API, ending in ``/`` (pass as ``api_url``)."""
        return f"http://{self._httpd.server_address[0]}:{self.port}{self.base_path}"

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "CasServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def jobs(self) -> dict[int, str]:
        """Job id -> state of jobs not yet deleted."""
        with self._lock:
            return {j.id: j.state for j in self._jobs.values()}

    # ------------------------------------------------------------------ data
    def load_catalog(self, df: pd.DataFrame) -> None:
        """Load rows (contract columns; ``tract``/``patch`` added if absent) into forced/forced2."""
        if "tract" not in df.columns or "patch" not in df.columns:
            df = add_tract_patch(df)
        dupes = int(df["object_id"].duplicated().sum())
        if dupes:
            logger.warning("dropping %d rows with duplicate object_id", dupes)
            df = df.drop_duplicates("object_id")
        forced2 = ["object_id"] + [c for c in df.columns if _PSF_RE.match(c)]
        forced = [c for c in df.columns if c not in forced2[1:]]
        self._bool_columns |= {c for c in df.columns if pd.api.types.is_bool_dtype(df[c].dtype)}
        with self._lock:
            for table, cols in (("forced", forced), ("forced2", forced2)):
                decl = ", ".join(
                    "object_id INTEGER PRIMARY KEY" if c == "object_id" else f'"{c}" {_sql_type(df[c].dtype)}'
                    for c in cols
                )
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {self.schema}.{table} ({decl})")
                # tolist() gives Python scalars (sqlite cannot bind numpy types); NaN is stored as NULL.
                rows = zip(*(df[c].tolist() for c in cols))
                marks = ", ".join("?" * len(cols))
                names = ", ".join(f'"{c}"' for c in cols)
                self._db.executemany(f"INSERT INTO {self.schema}.{table} ({names}) VALUES ({marks})", rows)
            self._db.commit()
        logger.info("loopback CAS: %d rows loaded into %s.forced/forced2", len(df), self.schema)

    def _run_sql(self, sql: str, *, check_only: bool = False) -> tuple[list[str], list[tuple]]:
        head = re.sub(r"^(\s|--[^\n]*\n)*", "", sql).lower()
        if not head.startswith(("select", "with")):
            raise sqlite3.OperationalError("only SELECT statements are allowed")
        with self._lock:
            cur = self._db.execute(("EXPLAIN " + sql) if check_only else sql)
            rows = cur.fetchall()
            columns = [d[0] for d in cur.description]
        return columns, rows

    # ------------------------------------------------------------------ protocol
    def _check_faults_before(self, handler: "_Handler") -> bool:
        """Apply delay/503 faults; True if the request was answered (or dropped)."""
        with self._lock:
            delay = self.faults.delay_first > 0 and self.faults.delay_s > 0
            if delay:
                self.faults.delay_first -= 1
            fail = not delay and self.faults.fail_503 > 0
            if fail:
                self.faults.fail_503 -= 1
        if delay:
            time.sleep(self.faults.delay_s)
            handler.close_connection = True  # the client gave up long ago: drop it unanswered
            return True
        if fail:
            handler.send_text(503, "Service Temporarily Unavailable")
            return True
        return False

    def handle(self, handler: "_Handler") -> None:
        if not handler.path.startswith(self.base_path):
            handler.send_text(404, "not found")
            return
        op = handler.path[len(self.base_path):].strip("/")
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        if self._check_faults_before(handler):
            return
        if op not in OPERATIONS:
            handler.send_text(404, f"unknown operation {op!r}")
            return
        try:
            body = json.loads(raw)
            assert isinstance(body, dict)
        except (ValueError, AssertionError):
            handler.send_text(400, "request body must be a JSON object")
            return
        cred = body.get("credential") or {}
        logged = dict(body, credential={"account_name": cred.get("account_name"), "password": "***"})
        with self._lock:
            self.requests.append({"op": op, "body": logged, "http_auth": "Authorization" in handler.headers})
        if self.faults.reject_auth or cred.get("account_name") != self.user or cred.get("password") != self._password:
            handler.send_text(401, "invalid id or password")
            return
        getattr(self, f"_op_{op}")(handler, body)

    def _job(self, handler: "_Handler", body: dict) -> _Job | None:
        with self._lock:
            job = self._jobs.get(body.get("id"))  # type: ignore[arg-type]
        if job is None:
            handler.send_text(404, f"job {body.get('id')!r} not found")
        return job

    def _op_submit(self, handler: "_Handler", body: dict) -> None:
        spec = body.get("catalog_job") or {}
        sql, out_format = spec.get("sql"), spec.get("out_format", "csv")
        release = spec.get("release_version", "pdr3")
        if not isinstance(sql, str) or out_format not in ("csv", "csv.gz") or release not in RELEASE_VERSIONS:
            handler.send_text(400, "catalog_job needs sql, out_format csv|csv.gz and a known release_version")
            return
        if not body.get("skip_syntax_check", False):
            try:
                self._run_sql(sql, check_only=True)
            except sqlite3.Error as exc:
                handler.send_text(406, f"SQL error: {exc}")
                return
        with self._lock:
            self._next_id += 1
            job = _Job(
                id=self._next_id,
                sql=sql,
                out_format=out_format,
                include_metainfo=bool(spec.get("include_metainfo_to_body", False)),
                release_version=release,
                created_at=_now(),
                polls_left=self.faults.polls_until_done,
            )
            self._jobs[job.id] = job
        try:
            job.columns, job.rows = self._run_sql(sql)
        except sqlite3.Error as exc:
            job.error = f"SQL error: {exc}"
        if self.faults.job_error is not None:
            job.error = self.faults.job_error
        handler.send_json(200, job.as_json(self.user))

    def _op_status(self, handler: "_Handler", body: dict) -> None:
        if (job := self._job(handler, body)) is None:
            return
        with self._lock:
            if job.state == "running":
                if job.polls_left > 0:
                    job.polls_left -= 1
                else:
                    job.state = "error" if job.error else "done"
        handler.send_json(200, job.as_json(self.user))

    def _op_download(self, handler: "_Handler", body: dict) -> None:
        if (job := self._job(handler, body)) is None:
            return
        if job.state != "done":
            handler.send_text(400, f"job {job.id} is {job.state}, not done")
            return
        payload = self.render_csv(job)
        content_type = "text/csv; charset=utf-8"
        if job.out_format == "csv.gz":
            payload, content_type = gzip.compress(payload, mtime=0), "application/gzip"
        with self._lock:
            truncate = self.faults.truncate_downloads > 0
            if truncate:
                self.faults.truncate_downloads -= 1
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if truncate:
            handler.wfile.write(payload[: len(payload) // 2])
            handler.close_connection = True
            return
        handler.wfile.write(payload)

    def _op_cancel(self, handler: "_Handler", body: dict) -> None:
        if (job := self._job(handler, body)) is None:
            return
        with self._lock:
            if job.state == "running":
                job.state = "cancelled"
        handler.send_json(200, job.as_json(self.user))

    def _op_delete(self, handler: "_Handler", body: dict) -> None:
        if (job := self._job(handler, body)) is None:
            return
        with self._lock:
            self._jobs.pop(job.id, None)
        handler.send_json(200, {})

    def _op_preview(self, handler: "_Handler", body: dict) -> None:
        spec = body.get("catalog_job") or {}
        try:
            columns, rows = self._run_sql(str(spec.get("sql")))
        except sqlite3.Error as exc:
            handler.send_text(406, f"SQL error: {exc}")
            return
        top = [list(r) for r in rows[: self.preview_rows]]
        handler.send_json(200, {"result": {"fields": columns, "rows": top, "count": len(rows)}})

    def render_csv(self, job: _Job) -> bytes:
        """The job's result as the HSC server writes it (metainfo, ``# `` header, t/f)."""
        buf = io.StringIO()
        if job.include_metainfo:
            buf.write(f"# job_id: {job.id}\n# release_version: {job.release_version}\n")
            buf.write(f"# created_at: {job.created_at}\n# sql: {' '.join(job.sql.split())}\n")
        buf.write("# " + ",".join(job.columns) + "\n")
        bools = [c in self._bool_columns for c in job.columns]
        writer = csv.writer(buf, lineterminator="\n")
        for row in job.rows:
            writer.writerow(
                "" if v is None else ("t" if v else "f") if is_bool else repr(v) if isinstance(v, float) else v
                for v, is_bool in zip(row, bools)
            )
        return buf.getvalue().encode("utf-8")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type, app: CasServer) -> None:
        self.app = app
        super().__init__(address, handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # clients that time out or hang up are part of the tests
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real server behind its proxy
    server: _HTTPServer

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.server.app.handle(self)

    def do_GET(self) -> None:  # noqa: N802
        self.send_text(405, "the catalogue job API only accepts POST")

    def send_text(self, code: int, text: str) -> None:
        self._send(code, text.encode("utf-8"), "text/plain; charset=utf-8")

    def send_json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode("utf-8"), "application/json")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        logger.debug("loopback CAS: " + format, *args)


def start_cas_server(catalog_df: pd.DataFrame, user: str, password: str, **options: Any) -> CasServer:
    """Start a loopback CAS on 127.0.0.1 (free port); use as a context manager or call ``.stop()``.

    *options*: any :class:`Faults` field (``fail_503=2``, ``truncate_downloads=1``,
    ...) plus ``schema``, ``host``, ``port``, ``base_path``, ``preview_rows``.
    """
    fault_names = set(Faults.__dataclass_fields__)
    faults = Faults(**{k: v for k, v in options.items() if k in fault_names})
    rest = {k: v for k, v in options.items() if k not in fault_names}
    return CasServer(catalog_df, user, password, faults=faults, **rest)


# ---------------------------------------------------------------------------- CLI
def simulate_config_catalog(config: dict[str, Any]) -> pd.DataFrame:
    """Every shard of a pipeline config simulated with ``workflow_scripts.sky``, concatenated."""
    from workflow_scripts.sky import SkyBox, SkyConfig, simulate_shard  # lazy: heavy, and written in parallel

    sky = SkyConfig.from_dict(config.get("sky") or {})
    frames = []
    for name, shard in (config.get("shards") or {}).items():
        if "ra" not in shard or "dec" not in shard:
            raise SystemExit(f"shard {name!r}: the loopback CAS can only simulate RA/Dec box shards")
        (ra_min, ra_max), (dec_min, dec_max) = shard["ra"], shard["dec"]
        cat_df, _truth = simulate_shard(
            SkyBox(ra_min, ra_max, dec_min, dec_max), shard_name=name, seed=config.get("seed", 0), sky=sky
        )
        frames.append(cat_df)
        logger.info("shard %s: %d rows simulated", name, len(cat_df))
    if not frames:
        raise SystemExit("config has no shards")
    return pd.concat(frames, ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="pipeline config YAML (seed, sky, shards)")
    parser.add_argument("--port-file", required=True, type=Path, help="write the listening port here")
    parser.add_argument("--user", required=True, help="account name the server accepts")
    parser.add_argument("--password-env", default="HSC_SSP_CAS_PASSWORD", help="env var holding the password")
    parser.add_argument("--schema", default=None, help="schema name (default: config hsc.schema or pdr3_wide)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    import yaml

    password = os.environ.get(args.password_env)
    if not password:
        parser.error(f"environment variable {args.password_env} is not set")
    config = yaml.safe_load(args.config.read_text()) or {}
    schema = args.schema or (config.get("hsc") or {}).get("schema") or "pdr3_wide"
    server = CasServer(simulate_config_catalog(config), args.user, password, schema=schema, host=args.host, port=args.port)

    tmp = args.port_file.with_name(args.port_file.name + ".tmp")
    tmp.write_text(f"{server.port}\n")
    os.replace(tmp, args.port_file)  # readers never see a half-written port
    logger.info("loopback CAS listening at %s", server.url)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

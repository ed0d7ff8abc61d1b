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

import csv
import gzip
import io
import json
import logging
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd

from tests.servers.base import (
    LoopbackHandler,
    LoopbackServer,
    TransportFaults,
    cli_parser,
    password_from_env,
    read_config,
    serve_cli,
    simulate_config_shards,
    start_cli,
    start_with_faults,
    tract_grid,
)

logger = logging.getLogger(__name__)

OPERATIONS = ("submit", "status", "download", "cancel", "delete", "preview")
RELEASE_VERSIONS = ("pdr1", "pdr2", "pdr2-citus", "pdr3", "pdr3-citus", "pdr3-citus-columnar")
BASE_PATH = "/datasearch/api/catalog_jobs/"  # as on hsc-release.mtk.nao.ac.jp
_PSF_RE = re.compile(r"^[grizy]_psfflux_")
_SCHEMA_RE = re.compile(r"^[a-z0-9_]+$")


@dataclass
class Faults(TransportFaults):
    """Fault injection (``fail_503``, ``delay_s``, ``delay_first`` of :class:`TransportFaults`, any operation, plus these)."""

    reject_auth: bool = False  # answer 401 even to the right password
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
    ix, iy, tract = tract_grid(ra, dec, tract_deg)
    out["tract"] = tract.astype(np.int64)
    px = np.clip(((ra - ix * tract_deg) / tract_deg * patches).astype(np.int64), 0, patches - 1)
    py = np.clip(((dec + 90.0 - iy * tract_deg) / tract_deg * patches).astype(np.int64), 0, patches - 1)
    out["patch"] = (100 * px + py).astype(np.int64)
    return out


class CasServer(LoopbackServer):
    """The loopback CAS: an HTTP server thread plus a sqlite catalogue and a job table."""

    label = "CAS"

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
        super().__init__(faults or Faults(), base_path if base_path.endswith("/") else base_path + "/")
        self.user = user
        self._password = password
        self.schema = schema
        self.preview_rows = preview_rows
        #: Every request seen: {"op", "body", "http_auth"}, the body's password replaced by "***".
        self.requests: list[dict[str, Any]] = []
        self._jobs: dict[int, _Job] = {}
        self._next_id = 1000
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute(f"ATTACH DATABASE ':memory:' AS {schema}")
        self._bool_columns: set[str] = set()
        self.load_catalog(catalog_df)
        self._serve(host, port, _Handler)  # ``url``: the job API, ending in ``/`` (pass as ``api_url``)

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
    def handle(self, handler: "_Handler") -> None:
        if not handler.path.startswith(self.base_path):
            handler.send_text(404, "not found")
            return
        op = handler.path[len(self.base_path):].strip("/")
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        if self.fault_before(handler):
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
        self._log_request({"op": op, "body": logged, "http_auth": "Authorization" in handler.headers})
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
        # truncate_downloads: full Content-Length announced, half sent, closed
        handler.send_body(200, payload, content_type, truncate=self.take_fault("truncate_downloads"))

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


class _Handler(LoopbackHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        self.server.app.handle(self)

    def do_GET(self) -> None:  # noqa: N802
        self.send_text(405, "the catalogue job API only accepts POST")

    def send_json(self, code: int, obj: Any) -> None:
        self.send_body(code, json.dumps(obj).encode("utf-8"), "application/json")


def start_cas_server(catalog_df: pd.DataFrame, user: str, password: str, **options: Any) -> CasServer:
    """Start a loopback CAS on 127.0.0.1 (free port); use as a context manager or call ``.stop()``.

    *options*: any :class:`Faults` field (``fail_503=2``, ``truncate_downloads=1``,
    ...) plus ``schema``, ``host``, ``port``, ``base_path``, ``preview_rows``.
    """
    return start_with_faults(CasServer, Faults, catalog_df, user, password, **options)


# ---------------------------------------------------------------------------- CLI
def simulate_config_catalog(config: dict[str, Any]) -> pd.DataFrame:
    """Every shard of a pipeline config simulated with ``workflow_scripts.sky``, concatenated."""
    _sky, shards = simulate_config_shards(config)
    for name, cat_df, _truth in shards:
        logger.info("shard %s: %d rows simulated", name, len(cat_df))
    return pd.concat([cat_df for _, cat_df, _ in shards], ignore_index=True)


def main(argv: list[str] | None = None) -> int:
    parser = cli_parser(__doc__.split("\n")[0], account=True)
    parser.add_argument("--schema", default=None, help="schema name (default: config hsc.schema or pdr3_wide)")
    args = start_cli(parser, argv)
    password = password_from_env(parser, args)
    config = read_config(args.config)
    schema = args.schema or (config.get("hsc") or {}).get("schema") or "pdr3_wide"
    server = CasServer(simulate_config_catalog(config), args.user, password, schema=schema, host=args.host, port=args.port)
    return serve_cli(server, args.port_file)


if __name__ == "__main__":
    sys.exit(main())

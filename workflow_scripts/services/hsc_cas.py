"""Client for the HSC-SSP CAS catalogue SQL job API, and the per-shard query.

Protocol source: the official NAOJ script ``pdr3/hscReleaseQuery/hscReleaseQuery.py``
of the HSC ``data-access-tools`` project (summarised in shared/HSC_ACCESS.md §1):
every operation is an HTTP POST of a JSON body to ``<api_url><operation>`` with
``clientVersion`` (20190514.1) and ``credential: {account_name, password}`` in the
body; operations ``submit``, ``status``, ``download``, ``cancel``, ``delete``,
``preview``. A job is submitted, its ``status`` polled (interval doubling from 1 s
to 300 s) until ``done`` or ``error``, then downloaded (CSV with ``#`` metainfo
lines and a ``# ``-prefixed header row) and deleted. HTTP 401 means a wrong
account/password, 406 carries the server's SQL error text.

Released astroquery has no HSC module (checked: astroquery 0.4.11 has no
``astroquery.hsc`` and nothing speaking ``catalog_jobs``), so this is a
vendor-free reimplementation in astroquery's style: a login-aware client class
with a configurable endpoint. We do not subclass ``astroquery.query.QueryWithLogin``
because its response cache keys on the request body, which here holds the password.

Columns are the PDR3 vertical tables: ``<b>_psfflux_*`` in ``forced2``, the rest of
the catalogue contract (:data:`workflow_scripts.contracts.CATALOG_COLUMNS`) in
``forced``, joined ``USING (object_id)``.
"""

from __future__ import annotations

import gzip
import logging
import math
import numbers
import re
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import requests

from workflow_scripts.contracts import (
    BANDS,
    CATALOG_COLUMNS,
    CATALOG_SCHEMA,
    ContractError,
    atomic_path,
    check_catalog_schema,
)

from .credentials import Credentials
from .http import (
    QueryError,
    RetryPolicy,
    ServiceError,
    TruncatedResponseError,
    body_snippet,
    check_credentials,
    check_http_url,
    config_kwargs,
    make_session,
    raise_for_status,
    rejected_credentials,
    retry_truncated,
    scrub,
    send_with_retry,
    stream_to_file,
)

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://hsc-release.mtk.nao.ac.jp/datasearch/api/catalog_jobs/"
#: ``clientVersion`` sent by the PDR3 ``hscReleaseQuery.py``.
CLIENT_VERSION = 20190514.1
RELEASE_VERSIONS = ("pdr1", "pdr2", "pdr2-citus", "pdr3", "pdr3-citus", "pdr3-citus-columnar")
#: The API also offers ``sqlite3`` and ``fits``; we parse CSV only.
OUT_FORMATS = ("csv", "csv.gz")
#: Job states that will never become ``done`` (only ``done``/``error`` are confirmed).
_DEAD_STATES = frozenset({"cancelled", "canceled", "deleted", "killed"})

FORCED2_COLUMNS: frozenset[str] = frozenset(
    f"{b}_psfflux_{q}" for b in BANDS for q in ("flux", "fluxerr", "flag")
)
_SCHEMA_RE = re.compile(r"^[a-z0-9_]+$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# PostgreSQL prints booleans as t/f; other writers use true/false or 1/0.
TRUE_VALUES = ["t", "true", "True", "TRUE", "1"]
FALSE_VALUES = ["f", "false", "False", "FALSE", "0"]
NULL_VALUES = ["", "NULL", "null"]


# ============================================================================ query
def _finite_number(value: Any, what: str) -> float:
    """*value* as a finite float; strings and booleans are refused (no SQL through config)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{what} must be finite, got {value!r}")
    return number


def _pair(shard: Mapping[str, Any], key: str) -> tuple[float, float]:
    value = shard[key]
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"shard {key!r} must be [min, max], got {value!r}")
    return _finite_number(value[0], f"shard {key} min"), _finite_number(value[1], f"shard {key} max")


def _tracts(value: Any) -> list[int]:
    items = value if isinstance(value, Sequence) and not isinstance(value, (str, bytes)) else [value]
    if not items:
        raise ValueError("shard 'tract' list is empty")
    tracts = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral) or int(item) < 0:
            raise ValueError(f"shard tract must be a non-negative integer, got {item!r}")
        tracts.append(int(item))
    return sorted(set(tracts))


def _qualified(column: str) -> str:
    return f"{'forced2' if column in FORCED2_COLUMNS else 'forced'}.{column}"


def shard_conditions(shard: Mapping[str, Any]) -> list[str]:
    """SQL conditions selecting a shard's sky (box with RA wrap, and/or tract list)."""
    allowed = {"ra", "dec", "tract"}
    unknown = set(shard) - allowed
    if unknown:
        raise ValueError(f"unknown shard key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    if ("ra" in shard) != ("dec" in shard):
        raise ValueError("a shard box needs both 'ra' and 'dec'")
    if "ra" not in shard and "tract" not in shard:
        raise ValueError("a shard needs 'ra' and 'dec' ([min, max] in deg) or 'tract'")
    conditions = []
    if "ra" in shard:
        ra_min, ra_max = _pair(shard, "ra")
        dec_min, dec_max = _pair(shard, "dec")
        if not (0.0 <= ra_min <= 360.0 and 0.0 <= ra_max <= 360.0) or ra_min == ra_max:
            raise ValueError(f"shard ra must be two different values in [0, 360], got {shard['ra']!r}")
        if not (-90.0 <= dec_min < dec_max <= 90.0):
            raise ValueError(f"shard dec must be [min, max] with -90 <= min < max <= 90, got {shard['dec']!r}")
        if ra_min < ra_max:
            conditions.append(f"forced.ra BETWEEN {ra_min!r} AND {ra_max!r}")
        else:  # the box crosses RA = 0/360
            conditions.append(f"(forced.ra >= {ra_min!r} OR forced.ra <= {ra_max!r})")
        conditions.append(f"forced.dec BETWEEN {dec_min!r} AND {dec_max!r}")
    if "tract" in shard:
        conditions.append(f"forced.tract IN ({', '.join(str(t) for t in _tracts(shard['tract']))})")
    return conditions


def build_shard_query(
    shard: Mapping[str, Any],
    *,
    schema: str = "pdr3_wide",
    min_flux_njy: Mapping[str, float] | None = None,
) -> str:
    """PostgreSQL query returning exactly ``CATALOG_COLUMNS`` for one shard.

    *shard* is ``{"ra": [min, max], "dec": [min, max]}`` (RA may wrap: min > max)
    or ``{"tract": int | [ints]}`` (both forms may be combined). Cheap cuts run on
    the server: ``isprimary`` always, and with *min_flux_njy* (band -> nJy) an OR
    of ``<b>_psfflux_flux > X`` over the given bands (NULL fluxes fail it).
    """
    if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
        raise ValueError(f"schema must match ^[a-z0-9_]+$, got {schema!r}")
    if not isinstance(shard, Mapping):
        raise ValueError(f"shard must be a mapping, got {type(shard).__name__}")
    conditions = ["forced.isprimary", *shard_conditions(shard)]
    if min_flux_njy is not None:
        if not min_flux_njy:
            raise ValueError("min_flux_njy must name at least one band (or be None)")
        terms = []
        for band, flux in min_flux_njy.items():
            if band not in BANDS:
                raise ValueError(f"min_flux_njy band must be one of {BANDS}, got {band!r}")
            terms.append(f"forced2.{band}_psfflux_flux > {_finite_number(flux, f'min_flux_njy[{band}]')!r}")
        conditions.append(f"({' OR '.join(terms)})")
    columns = ",\n    ".join(_qualified(c) for c in CATALOG_COLUMNS)
    where = "\n  AND ".join(conditions)
    return (
        f"SELECT\n    {columns}\n"
        f"FROM {schema}.forced\n"
        f"LEFT JOIN {schema}.forced2 USING (object_id)\n"
        f"WHERE {where}\n"
    )


# ============================================================================ result files
def check_csv_complete(path: Path) -> None:
    """A CSV body must be non-empty and end with a newline (else it was cut off)."""
    size = path.stat().st_size
    if size == 0:
        raise TruncatedResponseError(f"CAS result {path.name} is empty")
    with open(path, "rb") as fh:
        fh.seek(size - 1)
        if fh.read(1) != b"\n":
            raise TruncatedResponseError(f"CAS result {path.name} does not end with a newline (truncated)")


def check_gzip_complete(path: Path) -> None:
    """A csv.gz body must decompress to its end-of-stream marker (CRC checked) and end in a newline."""
    last = b""
    try:
        with gzip.open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                last = chunk[-1:]
    except EOFError:
        raise TruncatedResponseError(f"CAS result {path.name}: gzip stream ends early (truncated)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        message = f"CAS result {path.name}: corrupt gzip data ({exc})"
        raise TruncatedResponseError(message) from None
    if last != b"\n":
        raise TruncatedResponseError(f"CAS result {path.name}: CSV inside gzip does not end with a newline")


def _header_fields(line: bytes) -> list[str] | None:
    """Column names if *line* (``# a,b,c`` or ``a,b,c``) looks like a header row."""
    text = line.decode("utf-8", errors="replace").strip().lstrip("#").strip()
    fields = [f.strip().strip('"') for f in text.split(",")]
    return fields if fields and all(_IDENT_RE.match(f) for f in fields) else None


def _read_header(fh: BinaryIO, name: str) -> list[str]:
    """Consume leading ``#`` metainfo lines and the header row; return the column names.

    The HSC server prefixes the header with ``# `` (HSC_ACCESS.md §1), so the last
    comment line that looks like a header is it; otherwise the first plain line is.
    """
    last_comment: bytes | None = None
    while True:
        pos = fh.tell()
        line = fh.readline()
        if not line.startswith(b"#"):
            break
        last_comment = line
    if last_comment is not None and (fields := _header_fields(last_comment)) and "object_id" in fields:
        fh.seek(pos)  # the line just read is data
        return fields
    if line and (fields := _header_fields(line)):
        return fields
    raise ServiceError(f"CAS result {name} has no header row")


def _conform(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Columns in contract order and types; null floats become NaN (the contract's missing value)."""
    arrays = []
    for field in CATALOG_SCHEMA:
        column = batch.column(field.name)
        if pa.types.is_floating(field.type) and column.null_count:
            column = pc.fill_null(column, pa.scalar(math.nan, field.type))
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, schema=CATALOG_SCHEMA)


def csv_to_parquet(
    src: str | Path,
    out_path: str | Path,
    *,
    compressed: bool = False,
    block_size: int = 8 << 20,
) -> int:
    """Stream an HSC CAS CSV result into a contract catalogue parquet file; return the row count.

    Extra columns are ignored, missing ones raise ``ContractError``. *out_path* is
    written atomically and left untouched on failure.
    """
    src = Path(src)
    opener: Callable[..., BinaryIO] = gzip.open if compressed else open  # type: ignore[assignment]
    rows = 0
    with opener(src, "rb") as fh:
        header = _read_header(fh, src.name)
        if len(set(header)) != len(header):
            raise ContractError(f"{src.name}: duplicate column names in CAS result header")
        as_read = pa.schema([(c, CATALOG_SCHEMA.field(c).type if c in CATALOG_COLUMNS else pa.string()) for c in header])
        check_catalog_schema(as_read, src.name)
        read_options = pacsv.ReadOptions(column_names=header, block_size=block_size)
        convert_options = pacsv.ConvertOptions(
            column_types={c: CATALOG_SCHEMA.field(c).type for c in CATALOG_COLUMNS},
            include_columns=list(CATALOG_COLUMNS),
            true_values=TRUE_VALUES,
            false_values=FALSE_VALUES,
            null_values=NULL_VALUES,
            strings_can_be_null=True,
        )
        with atomic_path(out_path) as tmp:
            with pq.ParquetWriter(tmp, CATALOG_SCHEMA, compression="zstd") as writer:
                try:
                    reader = pacsv.open_csv(
                        fh,
                        read_options=read_options,
                        parse_options=pacsv.ParseOptions(newlines_in_values=False),
                        convert_options=convert_options,
                    )
                    for batch in reader:
                        writer.write_batch(_conform(batch))
                        rows += batch.num_rows
                except pa.ArrowInvalid as exc:
                    raise ServiceError(f"CAS result {src.name} is malformed: {exc}") from None
            check_catalog_schema(pq.read_schema(tmp), out_path)
    return rows


# ============================================================================ client
class HscCasClient:
    """HSC-SSP CAS catalogue job client (protocol of ``hscReleaseQuery.py``).

    All network errors surface as :class:`~workflow_scripts.services.http.ServiceError`
    subclasses whose texts never contain the password.
    """

    def __init__(
        self,
        api_url: str,
        credentials: Credentials,
        release_version: str = "pdr3",
        out_format: str = "csv",
        timeout_s: float = 60,
        max_retries: int = 5,
        poll_initial_s: float = 1.0,
        poll_max_s: float = 300,
        sleep: Callable[[float], None] = time.sleep,
        *,
        nomail: bool = True,
        skip_syntax_check: bool = False,
        retry_base_delay_s: float = 1.0,
        retry_max_delay_s: float = 60.0,
        session: requests.Session | None = None,
        schema: str = "pdr3_wide",
    ) -> None:
        check_http_url(api_url, "api_url")
        if release_version not in RELEASE_VERSIONS:
            raise ValueError(f"release_version must be one of {RELEASE_VERSIONS}, got {release_version!r}")
        if out_format not in OUT_FORMATS:
            raise ValueError(f"out_format must be one of {OUT_FORMATS}, got {out_format!r}")
        if timeout_s <= 0 or poll_initial_s <= 0 or poll_max_s < poll_initial_s:
            raise ValueError("timeout_s and poll_initial_s must be > 0 and poll_max_s >= poll_initial_s")
        check_credentials(credentials)
        self.api_url = api_url if api_url.endswith("/") else api_url + "/"
        self.release_version = release_version
        self.out_format = out_format
        self.timeout_s = float(timeout_s)
        self.poll_initial_s = float(poll_initial_s)
        self.poll_max_s = float(poll_max_s)
        self.nomail = nomail
        self.skip_syntax_check = skip_syntax_check
        self.schema = schema
        self._credentials = credentials
        self._sleep = sleep
        self._policy = RetryPolicy(max_retries, retry_base_delay_s, retry_max_delay_s, sleep=sleep)
        # Best-effort cleanup (delete/cancel) must not stall a failing run for minutes.
        self._cleanup_policy = RetryPolicy(min(max_retries, 1), retry_base_delay_s, retry_max_delay_s, sleep=sleep)
        self._session = session or make_session()

    @classmethod
    def from_config(cls, hsc_cfg: Mapping[str, Any], credentials: Credentials, **overrides: Any) -> "HscCasClient":
        """Client from the pipeline config's ``hsc`` section (unrelated keys are ignored)."""
        return cls(credentials=credentials, **config_kwargs(hsc_cfg, {
            "api_url": ("cas_url", DEFAULT_API_URL),
            "release_version": ("release_version", "pdr3"),
            "schema": ("schema", "pdr3_wide"),
            "out_format": ("out_format", "csv"),
            "timeout_s": ("timeout_s", 60),
            "max_retries": ("max_retries", 5),
            "poll_max_s": ("poll_max_interval_s", 300),
        }, overrides))

    def __repr__(self) -> str:
        return f"HscCasClient(api_url={self.api_url!r}, user={self._credentials.user!r}, release_version={self.release_version!r})"

    # ------------------------------------------------------------------ transport
    @property
    def _secrets(self) -> tuple[str]:
        return (self._credentials.password,)

    def _post(self, operation: str, payload: Mapping[str, Any], *, stream: bool = False, cleanup: bool = False) -> requests.Response:
        body = {
            "clientVersion": CLIENT_VERSION,
            "credential": {"account_name": self._credentials.user, "password": self._credentials.password},
            **payload,
        }
        what = f"HSC CAS {operation}"
        response = send_with_retry(
            self._session,
            "POST",
            self.api_url + operation,
            policy=self._cleanup_policy if cleanup else self._policy,
            timeout_s=self.timeout_s,
            what=what,
            secrets=self._secrets,
            json=body,
            stream=stream,
        )
        if response.status_code == 401:
            response.close()
            raise rejected_credentials("HSC CAS", self._credentials,
                                       "; check them at https://hsc-release.mtk.nao.ac.jp/datasearch/")
        if response.status_code == 406:
            raise QueryError(f"{what} rejected (HTTP 406): {body_snippet(response, self._secrets)}", status_code=406)
        raise_for_status(response, what, self._secrets)
        return response

    def _post_json(self, operation: str, payload: Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        response = self._post(operation, payload, **kwargs)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ServiceError(f"HSC CAS {operation}: expected a JSON object, got: {body_snippet(response, self._secrets, 300)}")
        return data

    # ------------------------------------------------------------------ operations
    def submit(self, sql: str) -> int:
        """Submit *sql* as a catalogue job; return the job id."""
        payload = {
            "catalog_job": {
                "sql": sql,
                "out_format": self.out_format,
                "include_metainfo_to_body": True,
                "release_version": self.release_version,
            },
            "nomail": self.nomail,
            "skip_syntax_check": self.skip_syntax_check,
        }
        job = self._post_json("submit", payload)
        try:
            job_id = int(job["id"])
        except (KeyError, TypeError, ValueError):
            raise ServiceError(f"HSC CAS submit: reply has no job id (keys: {sorted(job)})") from None
        logger.info("HSC CAS job %d submitted (%s, %s)", job_id, self.release_version, self.out_format)
        logger.debug("HSC CAS job %d SQL:\n%s", job_id, sql)
        return job_id

    def status(self, job_id: int) -> dict[str, Any]:
        """The server's job object (``status``, and ``error`` when failed)."""
        return self._post_json("status", {"id": int(job_id)})

    def wait(self, job_id: int) -> dict[str, Any]:
        """Poll until the job is ``done`` (returned) or failed (:class:`QueryError`)."""
        interval = self.poll_initial_s
        while True:
            job = self.status(job_id)
            state = job.get("status")
            if state == "done":
                logger.info("HSC CAS job %d done", job_id)
                return job
            if state == "error" or state in _DEAD_STATES:
                message = scrub(str(job.get("error") or f"job is {state}"), self._secrets)
                raise QueryError(f"HSC CAS job {job_id} failed: {message}")
            logger.debug("HSC CAS job %d is %s; next poll in %.0f s", job_id, state, interval)
            self._sleep(interval)
            interval = min(interval * 2.0, self.poll_max_s)

    def download(self, job_id: int, dest: str | Path) -> int:
        """Stream the job's result into *dest* atomically; retry truncated bodies; return bytes."""
        validate = check_gzip_complete if self.out_format == "csv.gz" else check_csv_complete
        what = f"HSC CAS download of job {job_id}"

        def attempt() -> int:
            response = self._post("download", {"id": int(job_id)}, stream=True)
            return stream_to_file(response, dest, validate=validate, what=what)

        size = retry_truncated(attempt, self._policy)
        logger.info("HSC CAS job %d: downloaded %d bytes", job_id, size)
        return size

    def cancel(self, job_id: int) -> None:
        """Ask the server to stop the job (response ignored, as in the official script)."""
        self._post("cancel", {"id": int(job_id)}, cleanup=True).close()

    def delete(self, job_id: int) -> None:
        """Free the job's server-side storage (response ignored)."""
        self._post("delete", {"id": int(job_id)}, cleanup=True).close()

    def preview(self, sql: str) -> dict[str, Any]:
        """Synchronous quick query: ``{"fields": [...], "rows": [[...]], "count": n}`` (top rows only)."""
        reply = self._post_json("preview", {"catalog_job": {"sql": sql, "release_version": self.release_version}})
        result = reply.get("result")
        if not isinstance(result, dict):
            raise ServiceError("HSC CAS preview: reply has no 'result' object")
        if result.get("count", 0) > len(result.get("rows", [])):
            logger.warning("HSC CAS preview: only top %d of %s rows returned", len(result.get("rows", [])), result["count"])
        return result

    # ------------------------------------------------------------------ workflows
    def _quietly(self, action: Callable[[int], None], job_id: int) -> None:
        try:
            action(job_id)
        except ServiceError as exc:
            logger.warning("HSC CAS %s of job %d failed (ignored): %s", action.__name__, job_id, exc)

    def fetch(self, sql: str, dest: str | Path) -> int:
        """submit -> wait -> download into *dest* -> delete (also on failure; cancel on Ctrl-C)."""
        job_id = self.submit(sql)
        try:
            self.wait(job_id)
            return self.download(job_id, dest)
        except KeyboardInterrupt:
            logger.warning("interrupted: cancelling HSC CAS job %d", job_id)
            self._quietly(self.cancel, job_id)
            raise
        finally:
            self._quietly(self.delete, job_id)

    def query_to_parquet(self, sql: str, out_path: str | Path) -> int:
        """Run *sql* and write the contract catalogue parquet *out_path* atomically; return rows."""
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        # Keep the raw result beside the output: same file system, not a small /tmp.
        with tempfile.TemporaryDirectory(prefix=f".{out_path.name}.cas-", dir=out_path.parent) as tmpdir:
            raw = Path(tmpdir) / f"result.{self.out_format}"
            self.fetch(sql, raw)
            rows = csv_to_parquet(raw, out_path, compressed=self.out_format == "csv.gz")
        logger.info("wrote %d catalogue rows to %s", rows, out_path)
        return rows

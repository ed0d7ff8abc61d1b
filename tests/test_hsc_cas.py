"""HSC CAS client, shard query, credentials and HTTP helpers against the loopback CAS.

Fast (no real sleeping: clients get a recording no-op ``sleep``); the only wall
time spent is the deliberate sub-second client timeouts of the timeout tests.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from tests.servers.clients import Sleeps, loopback_client_kwargs
from tests.servers.hsc_cas import add_tract_patch, start_cas_server
from tests.servers.synthetic import catalog_table, make_catalog
from workflow_scripts.contracts import CATALOG_COLUMNS, CATALOG_SCHEMA, ContractError
from workflow_scripts.services.credentials import Credentials, MissingCredentialsError, get_credentials
from workflow_scripts.services.hsc_cas import (
    CLIENT_VERSION,
    DEFAULT_API_URL,
    HscCasClient,
    build_shard_query,
    check_csv_complete,
    check_gzip_complete,
    csv_to_parquet,
)
from workflow_scripts.services.http import (
    AuthenticationError,
    QueryError,
    RetryPolicy,
    ServiceUnavailableError,
    TruncatedResponseError,
    scrub,
)

pytestmark = pytest.mark.timeout(60)

USER = "alice"
PASSWORD = "pw-Zq9!x\"secret"  # distinctive, with characters that JSON/URL encoding change
BOX = {"ra": [150.2, 150.8], "dec": [1.1, 1.9]}
CUTS = {"z": 150.0, "y": 200.0}


# ---------------------------------------------------------------------------- helpers
def make_client(url: str, password: str = PASSWORD, **kwargs) -> HscCasClient:
    return HscCasClient(url, Credentials(USER, password, source="test"), **loopback_client_kwargs(kwargs))


def expected_rows(df: pd.DataFrame, box: dict | None = None, cuts: dict | None = None) -> pd.DataFrame:
    """The rows the shard query must return, computed in pandas."""
    keep = df["isprimary"].to_numpy().copy()
    if box is not None:
        (ra0, ra1), (dec0, dec1) = box["ra"], box["dec"]
        ra = df["ra"]
        in_ra = (ra >= ra0) & (ra <= ra1) if ra0 < ra1 else (ra >= ra0) | (ra <= ra1)
        keep &= (in_ra & (df["dec"] >= dec0) & (df["dec"] <= dec1)).to_numpy()
    if cuts:
        passed = np.zeros(len(df), dtype=bool)
        for b, x in cuts.items():
            passed |= (df[f"{b}_psfflux_flux"] > x).to_numpy()
        keep &= passed
    return df[keep].sort_values("object_id").reset_index(drop=True)


def read_sorted(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas().sort_values("object_id").reset_index(drop=True)


def assert_no_secret(exc: BaseException, secret: str = PASSWORD) -> None:
    """Neither the exception nor anything chained to it shows or holds the secret."""
    assert secret not in "".join(traceback.format_exception(exc))
    seen: BaseException | None = exc
    while seen is not None:
        assert secret not in str(seen) and secret not in repr(seen)
        assert getattr(seen, "request", None) is None, "a requests object (with the body) is attached"
        seen = seen.__cause__ or seen.__context__


@pytest.fixture(scope="module")
def catalog() -> pd.DataFrame:
    return make_catalog(400, seed=1)


@pytest.fixture
def server(catalog):
    with start_cas_server(catalog, USER, PASSWORD) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _debug_logs(caplog):
    """Capture everything at DEBUG and check no test ever logged the password."""
    caplog.set_level(logging.DEBUG)
    yield
    assert PASSWORD not in caplog.text
    assert scrub(PASSWORD, []) not in caplog.text


# ---------------------------------------------------------------------------- query building
def _select_list(sql: str) -> list[str]:
    return [c.strip() for c in re.search(r"SELECT(.*?)FROM", sql, re.S).group(1).split(",")]


def test_query_selects_exactly_the_contract_columns_from_the_right_tables():
    sql = build_shard_query(BOX)
    selected = _select_list(sql)
    assert [c.split(".", 1)[1] for c in selected] == list(CATALOG_COLUMNS)
    for qualified in selected:
        table, column = qualified.split(".")
        assert table == ("forced2" if "_psfflux_" in column else "forced"), qualified
    assert "FROM pdr3_wide.forced\nLEFT JOIN pdr3_wide.forced2 USING (object_id)" in sql
    assert "FROM pdr3_dud.forced\nLEFT JOIN pdr3_dud.forced2" in build_shard_query(BOX, schema="pdr3_dud")


def test_query_pushes_cheap_cuts_into_sql():
    sql = build_shard_query(BOX, min_flux_njy=CUTS)
    assert "WHERE forced.isprimary" in sql
    assert "(forced2.z_psfflux_flux > 150.0 OR forced2.y_psfflux_flux > 200.0)" in sql
    assert "forced.ra BETWEEN 150.2 AND 150.8" in sql and "forced.dec BETWEEN 1.1 AND 1.9" in sql
    assert "psfflux_flux >" not in build_shard_query(BOX)  # no flux cut unless asked
    assert "forced2.y_psfflux_flux > 10.5)" in build_shard_query(BOX, min_flux_njy={"y": 10.5})


def test_query_handles_ra_wrap_and_tracts():
    sql = build_shard_query({"ra": [359.5, 0.5], "dec": [-1, 1]})
    assert "(forced.ra >= 359.5 OR forced.ra <= 0.5)" in sql and "BETWEEN 359.5" not in sql
    assert "forced.tract IN (9813)" in build_shard_query({"tract": 9813})
    assert "forced.tract IN (9812, 9813)" in build_shard_query({"tract": [9813, 9812, 9813]})
    assert "forced.tract IN (9813)" in build_shard_query({"tract": np.int64(9813)})


@pytest.mark.parametrize(
    "shard, kwargs",
    [
        ({"ra": ["150; DROP TABLE x", 151], "dec": [1, 2]}, {}),
        ({"ra": [150, 151], "dec": ["1", 2]}, {}),
        ({"ra": [True, 151], "dec": [1, 2]}, {}),
        ({"ra": [float("nan"), 151], "dec": [1, 2]}, {}),
        ({"ra": [150, float("inf")], "dec": [1, 2]}, {}),
        ({"ra": [150, 361], "dec": [1, 2]}, {}),
        ({"ra": [150, 150], "dec": [1, 2]}, {}),
        ({"ra": [150, 151], "dec": [2, 1]}, {}),
        ({"ra": [150, 151], "dec": [1, 91]}, {}),
        ({"ra": [150, 151, 152], "dec": [1, 2]}, {}),
        ({"ra": "150,151", "dec": [1, 2]}, {}),
        ({"ra": [150, 151]}, {}),
        ({}, {}),
        ({"ra": [150, 151], "dec": [1, 2], "where": "1=1"}, {}),
        ({"tract": "9813) OR (1=1"}, {}),
        ({"tract": -1}, {}),
        ({"tract": 9813.0}, {}),
        ({"tract": []}, {}),
        (BOX, {"schema": "pdr3_wide; DROP TABLE x"}),
        (BOX, {"schema": "PDR3_WIDE"}),
        (BOX, {"min_flux_njy": {"q": 1.0}}),
        (BOX, {"min_flux_njy": {"z": "1 OR 1=1"}}),
        (BOX, {"min_flux_njy": {}}),
    ],
)
def test_query_rejects_bad_input(shard, kwargs):
    with pytest.raises(ValueError):
        build_shard_query(shard, **kwargs)


# ---------------------------------------------------------------------------- credentials
@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in ("HSC_SSP_CAS_USER", "HSC_SSP_CAS_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # never read the developer's ~/.netrc
    return tmp_path / "netrc"


def _write_netrc(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def test_credentials_from_environment(clean_env, monkeypatch):
    monkeypatch.setenv("HSC_SSP_CAS_USER", USER)
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)
    creds = get_credentials(DEFAULT_API_URL)
    assert (creds.user, creds.password) == (USER, PASSWORD)
    monkeypatch.setenv("MY_PW", "other")
    assert get_credentials(DEFAULT_API_URL, password_env="MY_PW").password == "other"


def test_credentials_from_netrc(clean_env, monkeypatch):
    _write_netrc(clean_env, f"machine elsewhere.org login bob password nope\nmachine hsc-release.mtk.nao.ac.jp login {USER} password pw-netrc\n")
    creds = get_credentials(DEFAULT_API_URL)
    assert (creds.user, creds.password) == (USER, "pw-netrc")
    # env password + netrc login; env user matching netrc login
    monkeypatch.setenv("HSC_SSP_CAS_PASSWORD", PASSWORD)
    assert (get_credentials(DEFAULT_API_URL).user, get_credentials(DEFAULT_API_URL).password) == (USER, PASSWORD)
    monkeypatch.delenv("HSC_SSP_CAS_PASSWORD")
    monkeypatch.setenv("HSC_SSP_CAS_USER", USER)
    assert get_credentials(DEFAULT_API_URL).password == "pw-netrc"
    # a netrc password for another account is never combined with the env user
    monkeypatch.setenv("HSC_SSP_CAS_USER", "carol")
    with pytest.raises(MissingCredentialsError):
        get_credentials(DEFAULT_API_URL)


def test_missing_credentials_message_is_clear(clean_env):
    with pytest.raises(MissingCredentialsError) as info:
        get_credentials("http://127.0.0.1:8080/datasearch/api/catalog_jobs/")
    message = str(info.value)
    for part in ("HSC_SSP_CAS_USER", "HSC_SSP_CAS_PASSWORD", "machine 127.0.0.1", str(clean_env)):
        assert part in message


def test_unparsable_netrc_does_not_echo_tokens(clean_env):
    _write_netrc(clean_env, f'machine hsc-release.mtk.nao.ac.jp login {USER} password {PASSWORD} "unterminated\n')
    try:
        creds = get_credentials(DEFAULT_API_URL)
    except MissingCredentialsError as exc:
        assert_no_secret(exc)
    else:  # some netrc versions parse this leniently; then it must at least not show in repr
        assert PASSWORD not in repr(creds)


def test_credentials_repr_hides_password():
    creds = Credentials(USER, PASSWORD)
    for text in (repr(creds), str(creds), f"{creds}", f"{creds!r}", repr([creds]), repr({"c": creds})):
        assert PASSWORD not in text and USER in text


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("out_format", ["csv", "csv.gz"])
def test_round_trip_matches_source_rows(catalog, tmp_path, out_format):
    with start_cas_server(catalog, USER, PASSWORD, polls_until_done=3) as srv:
        client = make_client(srv.url, out_format=out_format, poll_initial_s=1.0, poll_max_s=3.0)
        out = tmp_path / "catalog" / "shard.parquet"
        rows = client.query_to_parquet(build_shard_query(BOX, min_flux_njy=CUTS), out)
        assert srv.jobs == {}, "job not deleted after download"
        ops = [r["op"] for r in srv.requests]
        submit = srv.requests[0]["body"]
    expected = expected_rows(catalog, BOX, CUTS)
    assert 0 < rows == len(expected) < len(catalog)
    assert pq.read_schema(out).equals(CATALOG_SCHEMA)
    pd.testing.assert_frame_equal(read_sorted(out), expected)
    assert ops == ["submit", "status", "status", "status", "status", "download", "delete"]
    assert client._sleep == [1.0, 2.0, 3.0]  # doubling, capped at poll_max_s
    assert submit["clientVersion"] == CLIENT_VERSION
    assert submit["credential"]["account_name"] == USER
    assert submit["catalog_job"] == {
        "sql": build_shard_query(BOX, min_flux_njy=CUTS),
        "out_format": out_format,
        "include_metainfo_to_body": True,
        "release_version": "pdr3",
    }
    assert {"nomail", "skip_syntax_check"} <= set(submit)


def test_round_trip_ra_wrap_and_tract(tmp_path):
    df = make_catalog(300, seed=2, ra=(358.0, 362.0), dec=(-1.0, 1.0))
    box = {"ra": [359.0, 1.0], "dec": [-0.5, 0.5]}
    with start_cas_server(df, USER, PASSWORD) as srv:
        client = make_client(srv.url)
        client.query_to_parquet(build_shard_query(box), tmp_path / "wrap.parquet")
        tracted = add_tract_patch(df)
        tract = int(tracted["tract"].mode()[0])
        client.query_to_parquet(build_shard_query({"tract": [tract]}), tmp_path / "tract.parquet")
    got = read_sorted(tmp_path / "wrap.parquet")
    assert (got["ra"] < 1.0).any() and (got["ra"] > 359.0).any()
    pd.testing.assert_frame_equal(got, expected_rows(df, box))
    want = expected_rows(df[(tracted["tract"] == tract).to_numpy()])
    pd.testing.assert_frame_equal(read_sorted(tmp_path / "tract.parquet"), want)


def test_preview_and_from_config(server):
    cfg = {"cas_url": server.url, "release_version": "pdr3", "schema": "pdr3_wide", "out_format": "csv.gz",
           "timeout_s": 5, "max_retries": 2, "poll_max_interval_s": 30, "das_url": "ignored"}
    client = HscCasClient.from_config(cfg, Credentials(USER, PASSWORD), sleep=Sleeps(), session=make_client(server.url)._session)
    assert (client.out_format, client.poll_max_s, client.schema) == ("csv.gz", 30.0, "pdr3_wide")
    assert PASSWORD not in repr(client)
    result = client.preview("SELECT object_id, ra FROM pdr3_wide.forced")
    assert result["fields"] == ["object_id", "ra"] and result["count"] == 400 and len(result["rows"]) == 10


# ---------------------------------------------------------------------------- CSV parsing
def test_csv_parsing_variants(tmp_path, catalog):
    """Header with or without '# ', metainfo lines, t/true/True/1 booleans, empty -> NaN, extra columns."""
    table = catalog_table(catalog.head(4))
    cols = list(CATALOG_COLUMNS)
    bool_spellings = [("t", "f"), ("true", "false"), ("True", "False"), ("1", "0")]
    lines = ["# job_id: 7", "# sql: SELECT object_id, ra, dec FROM x", "# extra," + ",".join(cols)]
    for i, row in enumerate(table.to_pylist()):
        t, f = bool_spellings[i]
        cells = ["x"]
        for c in cols:
            v = row[c]
            cells.append((t if v else f) if isinstance(v, bool) else "" if v != v else repr(v))
        lines.append(",".join(cells))
    src = tmp_path / "r.csv"
    src.write_text("\n".join(lines) + "\n")
    assert csv_to_parquet(src, tmp_path / "a.parquet") == 4
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "a.parquet").to_pandas(), table.to_pandas())
    # plain header (no '#'), gzip
    plain = tmp_path / "r2.csv.gz"
    plain.write_bytes(gzip.compress(("\n".join(lines[2:])[2:] + "\n").encode()))
    assert csv_to_parquet(plain, tmp_path / "b.parquet", compressed=True) == 4
    # a float cell left empty becomes NaN (not null)
    assert pq.read_table(tmp_path / "a.parquet").column("g_psfflux_flux").null_count == 0


def test_csv_missing_column_is_a_contract_error(tmp_path):
    src = tmp_path / "r.csv"
    src.write_text("# object_id,ra,dec\n1,2.0,3.0\n")
    with pytest.raises(ContractError, match="g_psfflux_flux"):
        csv_to_parquet(src, tmp_path / "a.parquet")
    assert not (tmp_path / "a.parquet").exists()


def test_format_checks_detect_truncation(tmp_path):
    body = b"# a,b\n1,2\n3,4\n"
    (tmp_path / "ok.csv").write_bytes(body)
    check_csv_complete(tmp_path / "ok.csv")
    (tmp_path / "cut.csv").write_bytes(body[:-3])
    with pytest.raises(TruncatedResponseError):
        check_csv_complete(tmp_path / "cut.csv")
    packed = gzip.compress(body * 1000)
    (tmp_path / "ok.gz").write_bytes(packed)
    check_gzip_complete(tmp_path / "ok.gz")
    (tmp_path / "cut.gz").write_bytes(packed[: len(packed) - 10])
    with pytest.raises(TruncatedResponseError):
        check_gzip_complete(tmp_path / "cut.gz")


# ---------------------------------------------------------------------------- faults
def test_wrong_password_is_an_authentication_error(server, tmp_path):
    with pytest.raises(AuthenticationError) as info:
        make_client(server.url, password="wrong-" + PASSWORD).submit("SELECT 1")
    assert "HSC CAS rejected the account name or password (HTTP 401)" in str(info.value)
    assert USER in str(info.value)
    assert_no_secret(info.value)
    assert_no_secret(info.value, "wrong-" + PASSWORD)
    server.faults.reject_auth = True
    with pytest.raises(AuthenticationError) as info:
        make_client(server.url).query_to_parquet(build_shard_query(BOX), tmp_path / "x.parquet")
    assert_no_secret(info.value)
    assert not (tmp_path / "x.parquet").exists()


def test_sql_syntax_error_is_surfaced(server, tmp_path):
    with pytest.raises(QueryError, match=r"406.*no such column: forced\.nonexistent") as info:
        make_client(server.url).query_to_parquet("SELECT forced.nonexistent FROM pdr3_wide.forced", tmp_path / "x.parquet")
    assert_no_secret(info.value)
    assert not (tmp_path / "x.parquet").exists()


def test_job_error_is_surfaced_and_job_deleted(server, tmp_path):
    server.faults.job_error = "ERROR: canceling statement due to statement timeout"
    with pytest.raises(QueryError, match="statement timeout"):
        make_client(server.url).query_to_parquet(build_shard_query(BOX), tmp_path / "x.parquet")
    assert server.jobs == {}
    assert [r["op"] for r in server.requests][-1] == "delete"


def test_503_then_success(server, catalog, tmp_path):
    server.faults.fail_503 = 3
    client = make_client(server.url, max_retries=5, retry_base_delay_s=0.5, retry_max_delay_s=4.0)
    client.query_to_parquet(build_shard_query(BOX), tmp_path / "x.parquet")
    pd.testing.assert_frame_equal(read_sorted(tmp_path / "x.parquet"), expected_rows(catalog, BOX))
    backoff = client._sleep[:3]  # three retries before the first status poll
    assert all(0 <= s <= cap for s, cap in zip(backoff, (0.5, 1.0, 2.0)))


def test_503_exhausted_is_service_unavailable(server, tmp_path):
    server.faults.fail_503 = 100
    with pytest.raises(ServiceUnavailableError, match=r"HSC CAS submit failed after 3 attempt\(s\).*503"):
        make_client(server.url, max_retries=2).query_to_parquet(build_shard_query(BOX), tmp_path / "x.parquet")


def test_timeout_then_success(server, catalog, tmp_path):
    server.faults.delay_s, server.faults.delay_first = 1.5, 1
    client = make_client(server.url, timeout_s=0.3)
    client.query_to_parquet(build_shard_query(BOX), tmp_path / "x.parquet")
    pd.testing.assert_frame_equal(read_sorted(tmp_path / "x.parquet"), expected_rows(catalog, BOX))


def test_timeout_exhausted_is_a_clear_error(server, tmp_path):
    server.faults.delay_s, server.faults.delay_first = 1.5, 10
    with pytest.raises(ServiceUnavailableError, match=r"HSC CAS submit failed after 2 attempt\(s\).*[Tt]imeout") as info:
        make_client(server.url, timeout_s=0.2, max_retries=1).submit(build_shard_query(BOX))
    assert_no_secret(info.value)


@pytest.mark.parametrize("out_format", ["csv", "csv.gz"])
def test_truncated_body_leaves_no_output_and_keeps_old_file(server, tmp_path, out_format):
    server.faults.truncate_downloads = 100
    out = tmp_path / "shard.parquet"
    with pytest.raises(TruncatedResponseError, match="truncated"):
        make_client(server.url, out_format=out_format, max_retries=1).query_to_parquet(build_shard_query(BOX), out)
    assert list(tmp_path.iterdir()) == [], "partial output or temporary files left behind"
    assert server.jobs == {}
    # an earlier good file survives a failed rerun
    out.write_bytes(b"previous good shard")
    with pytest.raises(TruncatedResponseError):
        make_client(server.url, out_format=out_format, max_retries=0).query_to_parquet(build_shard_query(BOX), out)
    assert out.read_bytes() == b"previous good shard"
    assert list(tmp_path.iterdir()) == [out]


def test_truncated_once_then_retried(server, catalog, tmp_path):
    server.faults.truncate_downloads = 1
    make_client(server.url).query_to_parquet(build_shard_query(BOX), tmp_path / "x.parquet")
    pd.testing.assert_frame_equal(read_sorted(tmp_path / "x.parquet"), expected_rows(catalog, BOX))
    assert [r["op"] for r in server.requests].count("download") == 2


def test_interrupt_cancels_and_deletes_the_job(server, tmp_path):
    def interrupted_sleep(_seconds: float) -> None:
        raise KeyboardInterrupt

    server.faults.polls_until_done = 5
    with pytest.raises(KeyboardInterrupt):
        make_client(server.url, sleep=interrupted_sleep).query_to_parquet(build_shard_query(BOX), tmp_path / "x.parquet")
    assert [r["op"] for r in server.requests][-2:] == ["cancel", "delete"]
    assert server.jobs == {}


# ---------------------------------------------------------------------------- http helpers
def test_full_jitter_backoff_bounds():
    policy = RetryPolicy(max_retries=5, base_delay_s=1.0, max_delay_s=10.0)
    for attempt, cap in enumerate([1, 2, 4, 8, 10, 10]):
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2
    assert policy.delay(0, retry_after=30) == 10.0


def test_scrub_removes_encoded_forms():
    text = f'body={{"password": "{PASSWORD.replace(chr(34), chr(92) + chr(34))}"}} url=?pw=pw-Zq9%21x%22secret'
    assert PASSWORD.replace('"', '\\"') in text
    cleaned = scrub(text, [PASSWORD])
    assert "Zq9" not in cleaned and cleaned.count("***") == 2


def test_netrc_is_not_sent_as_http_basic_auth(server, clean_env, monkeypatch):
    """requests would add netrc Basic auth on its own; the CAS body carries the credential."""
    _write_netrc(clean_env, f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    for var in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    client = HscCasClient(server.url, get_credentials(server.url), sleep=Sleeps(), timeout_s=5)
    client.status(client.submit("SELECT object_id FROM pdr3_wide.forced"))
    assert [r["http_auth"] for r in server.requests] == [False, False]


# ---------------------------------------------------------------------------- CLI
def test_cli_simulates_config_shards(monkeypatch, catalog):
    """The CLI's catalogue comes from workflow_scripts.sky per config shard (stubbed here)."""
    import sys
    import types

    from tests.servers import hsc_cas as server_module

    calls = []
    fake = types.ModuleType("workflow_scripts.sky")
    fake.SkyBox = lambda *box: box
    fake.SkyConfig = types.SimpleNamespace(from_dict=lambda d: ("sky", tuple(sorted(d))))

    def simulate_shard(box, *, shard_name, seed, sky):
        calls.append((box, shard_name, seed, sky))
        part = catalog.iloc[:100] if shard_name == "a" else catalog.iloc[100:150]
        return part, pd.DataFrame({"object_id": part["object_id"]})

    fake.simulate_shard = simulate_shard
    monkeypatch.setitem(sys.modules, "workflow_scripts.sky", fake)
    config = {"seed": 7, "sky": {"density": 1}, "shards": {"a": {"ra": [1, 2], "dec": [3, 4]}, "b": {"ra": [5, 6], "dec": [7, 8]}}}
    df = server_module.simulate_config_catalog(config)
    assert len(df) == 150
    assert calls == [((1, 2, 3, 4), "a", 7, ("sky", ("density",))), ((5, 6, 7, 8), "b", 7, ("sky", ("density",)))]


def test_cli_serves_until_terminated(tmp_path):
    """End to end through ``python -m tests.servers.hsc_cas`` (needs workflow_scripts.sky)."""
    import signal
    import subprocess
    import sys
    import time

    import yaml

    sky = pytest.importorskip("workflow_scripts.sky")
    if not hasattr(sky, "simulate_shard"):
        pytest.skip("workflow_scripts.sky.simulate_shard not written yet")
    config = {"seed": 3, "sky": {}, "shards": {"s1": {"ra": [150.0, 150.05], "dec": [2.0, 2.05]}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    port_file = tmp_path / "port"
    env = dict(os.environ, LOOPBACK_PW=PASSWORD, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.hsc_cas", "--config", str(tmp_path / "config.yaml"),
         "--port-file", str(port_file), "--user", USER, "--password-env", "LOOPBACK_PW"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 50
        while not port_file.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "loopback CAS did not start"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{int(port_file.read_text())}/datasearch/api/catalog_jobs/"
        rows = make_client(url).query_to_parquet(build_shard_query(config["shards"]["s1"]), tmp_path / "s1.parquet")
        assert rows == pq.read_metadata(tmp_path / "s1.parquet").num_rows
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, output
    assert PASSWORD not in output

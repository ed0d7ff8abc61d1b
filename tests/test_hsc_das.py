"""HSC DAS cutout client against the loopback DAS (bulk list POST, tar stream reply).

Fast: clients get a recording no-op ``sleep``; the only wall time spent is the
deliberate sub-second client timeout of the timeout test.
"""

from __future__ import annotations

import logging
import traceback

import pytest

from tests.servers.clients import Sleeps, loopback_client_kwargs, no_part_files
from tests.servers.hsc_das import parse_angle, parse_list, start_das_server
from tests.servers.images import Footprint, GaussianProvider
from workflow_scripts.cutout_cache import CutoutCache, CutoutRequest
from workflow_scripts.cutout_format import read_hsc_cutout
from workflow_scripts.services.credentials import Credentials
from workflow_scripts.services.hsc_das import DEFAULT_DAS_URL, LIST_HEADER, HscDasClient
from workflow_scripts.services.http import AuthenticationError

pytestmark = pytest.mark.timeout(60)

USER = "alice"
PASSWORD = "pw-Zq9!x\"secret"
HALF = 3.0  # arcsec: a 6" cutout
FOOTPRINT = Footprint(ra=(149.0, 151.0), dec=(0.0, 3.0))


def make_client(url: str, password: str = PASSWORD, **kwargs) -> HscDasClient:
    return HscDasClient(url, Credentials(USER, password, source="test"), **loopback_client_kwargs(kwargs))


def make_requests(n: int, bands: str = "gi", first_id: int = 1000, ra0: float = 150.0) -> list[CutoutRequest]:
    return [CutoutRequest(first_id + k, ra0 + 0.001 * k, 1.5 + 0.0007 * k, b, HALF) for k in range(n) for b in bands]


def statuses(rows: list[dict]) -> dict[tuple[int, str], str]:
    return {(r["object_id"], r["band"]): r["status"] for r in rows}


def requested(server) -> list[tuple[float, float, str]]:
    return [(r.ra, r.dec, r.band) for post in server.posts for r in post["rows"]]


@pytest.fixture
def provider() -> GaussianProvider:
    return GaussianProvider("hsc", FOOTPRINT)


@pytest.fixture
def server(provider):
    with start_das_server(provider, USER, PASSWORD) as srv:
        yield srv


@pytest.fixture
def cache(tmp_path) -> CutoutCache:
    return CutoutCache(tmp_path / "cache", "hsc", "pdr3", "pdr3_wide", HALF)  # keyed by the semi-width (workflow_scripts.cutouts)


# ---------------------------------------------------------------------------- list format
def test_list_format_matches_download_cutout_py():
    client = make_client("http://127.0.0.1:9/cutout")
    req = CutoutRequest(1, 150.123456789012345, -1.5, "i", 3.0)
    text = client.coord_list([req, CutoutRequest(2, 10.0, 2.0, "y", 3.0)])
    lines = text.splitlines()
    assert lines[0] == LIST_HEADER == "#? rerun type filter tract ra dec sw sh image mask variance"
    half_deg = 3.0 / 3600.0
    assert lines[1] == (f"pdr3_wide coadd HSC-I any {150.123456789012345:.16e}deg {-1.5:.16e}deg "
                        f"{half_deg:.16e}deg {half_deg:.16e}deg true true true")
    assert lines[2].split()[2] == "HSC-Y" and text.endswith("\n")
    # the loopback parser reads it back exactly (lineno 2 = first data row; sw is the SEMI-width)
    rows = parse_list(text)
    assert [r.lineno for r in rows] == [2, 3]
    assert rows[0].ra == req.ra and rows[0].half_size_arcsec == pytest.approx(3.0)


def test_loopback_list_parser_accepts_the_manual_forms():
    assert parse_angle("30asec") == pytest.approx(30 / 3600)
    assert parse_angle("0.5arcmin") == parse_angle("0.5amin") == pytest.approx(0.5 / 60)
    assert parse_angle("12:00:00", hours=True) == pytest.approx(180.0)
    assert parse_angle("-1d30m0s") == pytest.approx(-1.5)
    assert parse_angle("1h0m0s") == pytest.approx(15.0)
    rows = parse_list("#? rerun ra dec sw sh filter image mask variance type name\n"
                      "pdr3_wide 12:34:56.789 +01:23:45.67 30asec 30asec i true true true coadd J1234_HSC-i\n")
    assert rows[0].band == "i" and rows[0].name == "J1234_HSC-i" and rows[0].lineno == 2
    with pytest.raises(ValueError, match="line 2"):
        parse_list("#? ra dec sw sh filter\n1deg 2deg 3asec 3asec HSC-Q\n")


# ---------------------------------------------------------------------------- fetching
def test_fetch_batches_concurrency_and_lineno_mapping(provider, cache, tmp_path):
    reqs = make_requests(7, bands="gizy")  # 28 cutouts
    reqs.insert(5, CutoutRequest(99, 20.0, 1.5, "i", HALF))  # off the footprint: no member, lineno gap
    with start_das_server(provider, USER, PASSWORD, max_rows=5, member_delay_s=0.01) as srv:
        client = make_client(srv.url, batch_size=5, max_connections=2)
        rows = client.fetch(reqs, cache)
        assert len(srv.posts) == 6 and all(len(p["rows"]) <= 5 for p in srv.posts)
        assert srv.max_active == 2  # batches overlap, never more than max_connections
        assert all(p["auth_header"] for p in srv.posts)
        assert sorted(requested(srv)) == sorted((r.ra, r.dec, r.band) for r in reqs)
    assert [(r["object_id"], r["band"]) for r in rows] == [(r.object_id, r.band) for r in reqs]
    st = statuses(rows)
    assert st.pop((99, "i")) == "no_coverage"
    assert set(st.values()) == {"ok"}
    for req in reqs:  # every file is the cutout of its own row: lineno mapping is right
        if req.object_id == 99:
            continue
        cut = read_hsc_cutout(cache.path(req.object_id, req.band))
        assert cut.band == req.band
        assert tuple(cut.wcs.wcs.crval) == pytest.approx((req.ra, req.dec), abs=1e-9)
    assert no_part_files(tmp_path)


def test_batch_above_the_server_limit_fails_with_reason(provider, cache):
    with start_das_server(provider, USER, PASSWORD, max_rows=3) as srv:
        rows = make_client(srv.url, batch_size=4).fetch(make_requests(2, "gi"), cache)
    assert {r["status"] for r in rows} == {"failed"}
    assert "HTTP 400" in rows[0]["reason"] and "too many lines" in rows[0]["reason"]


def test_cache_hits_are_not_requested_again(server, cache):
    client = make_client(server.url, batch_size=4)
    reqs = make_requests(3) + [CutoutRequest(77, 30.0, 1.0, "g", HALF)]
    first = client.fetch(reqs, cache)
    assert statuses(first)[(77, "g")] == "no_coverage"
    n = len(server.requests)
    again = client.fetch(reqs, cache)  # ok and no_coverage both cached
    assert len(server.requests) == n
    assert again == first
    more = reqs + make_requests(2, first_id=5000, ra0=150.5)  # a changed cut: only the new ones
    rows = client.fetch(more, cache)
    new = [(r.ra, r.dec, r.band) for r in make_requests(2, first_id=5000, ra0=150.5)]
    assert sorted(requested(server)[-len(new):]) == sorted(new)
    assert len(server.posts) == 3 and len(rows) == len(more)  # 2 batches of 7 rows, then 1 of 4


def test_503_mid_batch_then_success(server, cache):
    server.faults.fail_503 = 2
    sleeps = Sleeps()
    rows = make_client(server.url, sleep=sleeps, batch_size=3, max_connections=1).fetch(make_requests(3), cache)
    assert {r["status"] for r in rows} == {"ok"}
    assert len(sleeps) == 2


def test_timeout_then_success(server, cache):
    server.faults.delay_s, server.faults.delay_first = 1.5, 1
    rows = make_client(server.url, timeout_s=0.4, max_connections=1).fetch(make_requests(2), cache)
    assert {r["status"] for r in rows} == {"ok"}


@pytest.mark.parametrize("chunked", [True, False])
@pytest.mark.parametrize("mid_member", [False, True])
def test_truncated_tar_keeps_complete_members_and_retries_the_rest(provider, cache, tmp_path, chunked, mid_member):
    reqs = make_requests(3)  # 6 rows, one batch
    with start_das_server(provider, USER, PASSWORD, chunked=chunked, truncate_after=2,
                          truncate_mid_member=mid_member) as srv:
        rows = make_client(srv.url).fetch(reqs, cache)
        assert [len(p["rows"]) for p in srv.posts] == [6, 4]  # the 2 complete members were kept
    assert {r["status"] for r in rows} == {"ok"}
    assert no_part_files(tmp_path)


def test_truncated_tar_exhausted_marks_the_rest_failed(provider, cache, tmp_path):
    with start_das_server(provider, USER, PASSWORD, truncate_after=1, truncate_times=99) as srv:
        rows = make_client(srv.url, max_retries=2).fetch(make_requests(2), cache)  # 4 rows
        assert [len(p["rows"]) for p in srv.posts] == [4, 3, 2]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed"]
    assert "after 3 attempt(s)" in rows[-1]["reason"] and "broke" in rows[-1]["reason"]
    assert no_part_files(tmp_path)


def test_corrupt_member_fails_alone_and_is_retried_next_run(provider, cache):
    reqs = make_requests(3)
    bad = reqs[3]
    with start_das_server(provider, USER, PASSWORD, corrupt=[(bad.ra, bad.dec, bad.band)]) as srv:
        client = make_client(srv.url)
        rows = client.fetch(reqs, cache)
        st = statuses(rows)
        assert st.pop((bad.object_id, bad.band)) == "failed" and set(st.values()) == {"ok"}
        assert "invalid cutout" in rows[3]["reason"]
        assert cache.lookup(*(bad.object_id, bad.band)) is None
        srv.faults.corrupt = []
        rows = client.fetch(reqs, cache)
        assert {r["status"] for r in rows} == {"ok"}
        assert [(r.ra, r.dec, r.band) for r in srv.posts[-1]["rows"]] == [(bad.ra, bad.dec, bad.band)]


def test_interrupted_client_run_resumes_without_refetching(server, cache, tmp_path, monkeypatch):
    reqs = make_requests(5)  # 10 cutouts
    put = CutoutCache.put
    calls = []

    def put_then_die(self, object_id, band, data):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append((object_id, band))
        return put(self, object_id, band, data)

    client = make_client(server.url, batch_size=3, max_connections=2)
    monkeypatch.setattr(CutoutCache, "put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        client.fetch(reqs, cache)
    monkeypatch.setattr(CutoutCache, "put", put)
    done = {k for k in calls}
    assert len(done) == 4 and all(cache.lookup(*k) == "ok" for k in done)
    assert no_part_files(tmp_path)
    n_posts = len(server.posts)
    rows = client.fetch(reqs, cache)
    assert {r["status"] for r in rows} == {"ok"}
    second = {(r.ra, r.dec, r.band) for p in server.posts[n_posts:] for r in p["rows"]}
    assert second == {(r.ra, r.dec, r.band) for r in reqs if (r.object_id, r.band) not in done}


def test_server_killed_mid_stream_then_rerun_completes(cache, tmp_path):
    good = GaussianProvider("hsc", FOOTPRINT)
    served = []

    def dying(ra, dec, band, half):
        if len(served) == 3:
            raise KeyboardInterrupt  # the server process dies while sending
        served.append((ra, dec, band))
        return good(ra, dec, band, half)

    reqs = make_requests(4)
    with start_das_server(dying, USER, PASSWORD) as srv:
        rows = make_client(srv.url, max_retries=0).fetch(reqs, cache)
    assert sum(r["status"] == "ok" for r in rows) == 3
    assert {r["status"] for r in rows[3:]} == {"failed"}
    with start_das_server(good, USER, PASSWORD) as srv:
        rows = make_client(srv.url).fetch(reqs, cache)
        assert sorted(requested(srv)) == sorted((r.ra, r.dec, r.band) for r in reqs[3:])
    assert {r["status"] for r in rows} == {"ok"}
    assert no_part_files(tmp_path)


def test_wrong_password_is_an_authentication_error_without_the_password(server, cache, caplog):
    caplog.set_level(logging.DEBUG)
    client = make_client(server.url, password="wrong-" + PASSWORD)
    with pytest.raises(AuthenticationError) as info:
        client.fetch(make_requests(2), cache)
    text = "".join(traceback.format_exception(info.value)) + repr(client) + caplog.text
    assert "401" in str(info.value) and USER in str(info.value)
    assert PASSWORD not in text and "wrong-" not in text
    with pytest.raises(AuthenticationError):
        client.fetch_one(150.0, 1.5, "i", HALF)


def test_fetch_one_get_mode(server):
    client = make_client(server.url)
    data = client.fetch_one(150.2, 1.4, "z", HALF)
    cut = read_hsc_cutout(data)
    assert cut.band == "z" and tuple(cut.wcs.wcs.crval) == pytest.approx((150.2, 1.4))
    get = [r for r in server.requests if r["method"] == "GET"][-1]["rows"][0]
    assert get.half_size_arcsec == pytest.approx(HALF) and get.band == "z"
    assert client.fetch_one(10.0, 1.4, "z", HALF) is None


def test_requests_must_match_the_cache(server, cache):
    client = make_client(server.url)
    with pytest.raises(ValueError, match="half_size_arcsec"):
        client.fetch([CutoutRequest(1, 150.0, 1.0, "i", 5.0), CutoutRequest(2, 150.0, 1.0, "i", HALF)], cache)
    with pytest.raises(ValueError, match="band"):
        client.fetch([CutoutRequest(1, 150.0, 1.0, "J", HALF)], cache)
    with pytest.raises(ValueError, match="rerun"):
        client.fetch([], CutoutCache(cache.root, "hsc", "pdr3", "pdr3_dud", HALF))


def test_from_config():
    creds = Credentials(USER, PASSWORD)
    client = HscDasClient.from_config({"schema": "pdr3_dud", "das_batch_size": 100, "cas_url": "x"}, creds)
    assert client.url == DEFAULT_DAS_URL and client.rerun == "pdr3_dud" and client.batch_size == 100
    assert PASSWORD not in repr(client)
    with pytest.raises(ValueError):
        HscDasClient(DEFAULT_DAS_URL, creds, batch_size=991)


def test_cli_providers_draw_from_the_mock_imager(monkeypatch):
    """Both servers' CLI providers come from MockImager over every config shard (sky stubbed here)."""
    import sys
    import types

    import pandas as pd

    from tests.servers import hsc_das, vsa
    from tests.servers.images import gaussian_hsc_cutout, gaussian_vhs_cutout
    from workflow_scripts.cutout_format import read_vhs_cutout

    made = []

    class FakeImager:
        def __init__(self, catalog, truth, *, seed, sky):
            made.append((list(catalog["object_id"]), list(truth["object_id"]), seed, sky))

        def hsc_cutout_at(self, ra, dec, band, half):
            return gaussian_hsc_cutout(ra, dec, band, half)

        def vhs_cutout_at(self, ra, dec, band, half):
            return gaussian_vhs_cutout(ra, dec, band, half) if dec > 0 else None

    sky = types.ModuleType("workflow_scripts.sky")
    sky.SkyBox = lambda *box: box
    sky.SkyConfig = types.SimpleNamespace(from_dict=lambda d: ("sky", tuple(sorted(d))))
    sky.simulate_shard = lambda box, *, shard_name, seed, sky: (
        pd.DataFrame({"object_id": [len(shard_name), box[0]]}), pd.DataFrame({"object_id": [seed]}))
    render = types.ModuleType("workflow_scripts.sky.render")
    render.MockImager = FakeImager
    monkeypatch.setitem(sys.modules, "workflow_scripts.sky", sky)
    monkeypatch.setitem(sys.modules, "workflow_scripts.sky.render", render)
    config = {"seed": 7, "sky": {"enrichment": 5}, "shards": {"a": {"ra": [1, 2], "dec": [3, 4]},
                                                               "bb": {"ra": [5, 6], "dec": [7, 8]}}}
    das = hsc_das.mock_provider(config)
    assert read_hsc_cutout(das(150.0, 1.0, "i", HALF)).band == "i"
    vhs = vsa.mock_provider(config)
    assert read_vhs_cutout(vhs(150.0, 1.0, "J", HALF)) is not None and vhs(150.0, -1.0, "J", HALF) is None
    assert made[0] == ([1, 1, 2, 5], [7, 7], 7, ("sky", ("enrichment",)))

"""VHS (VSA GetImage) cutout client against the loopback VSA.

Fast: clients get a recording no-op ``sleep``; the only wall time spent is the
deliberate sub-second client timeout of the timeout test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers.clients import Sleeps, loopback_client_kwargs, no_part_files
from tests.servers.images import Footprint, GaussianProvider
from tests.servers.vsa import start_vsa_server
from workflow_scripts.cutout_cache import CutoutCache, CutoutRequest
from workflow_scripts.cutout_format import read_vhs_cutout
from workflow_scripts.services.vhs import DEFAULT_VSA_URL, VhsClient, image_links

pytestmark = pytest.mark.timeout(60)

HALF = 3.0
FOOTPRINT = Footprint(ra=(149.0, 151.0), dec=(0.0, 3.0))
ASTROQUERY_PAGE = Path(__import__("astroquery").__file__).parent / "ukidss/tests/data/image_results.html"


def make_client(url: str, **kwargs) -> VhsClient:
    return VhsClient(url, **loopback_client_kwargs(kwargs))


def make_requests(n: int, first_id: int = 1000, ra0: float = 150.0) -> list[CutoutRequest]:
    return [CutoutRequest(first_id + k, ra0 + 0.001 * k, 1.5, b, HALF) for k in range(n) for b in ("J", "Ks")]


@pytest.fixture
def provider() -> GaussianProvider:
    return GaussianProvider("vhs", FOOTPRINT)


@pytest.fixture
def server(provider):
    with start_vsa_server(provider) as srv:
        yield srv


@pytest.fixture
def cache(tmp_path) -> CutoutCache:
    return CutoutCache(tmp_path / "cache", "vhs", "VHSDR6", "", HALF)  # keyed by the semi-width (workflow_scripts.cutouts)


def test_query_parameters_are_astroquerys(server):
    client = make_client(server.url)
    params = client.query_params(CutoutRequest(1, 150.25, -1.5, "Ks", HALF))
    assert params == {"database": "VHSDR6", "programmeID": "110", "sys": "J", "ra": "150.25", "dec": "-1.5",
                      "filterID": "5", "obsType": "object", "frameType": "tilestack", "mfid": "",
                      "xsize": "0.1", "ysize": "0.1"}
    assert client.query_params(CutoutRequest(1, 150.25, -1.5, "J", HALF))["filterID"] == "3"


def test_links_of_a_real_wfau_page_are_rewritten_to_getfimage():
    links = image_links(ASTROQUERY_PAGE.read_text(), "http://surveys.roe.ac.uk/wsa/x")
    assert len(links) == 1 and "getFImage.cgi?file=/disk05/wsa/" in links[0] and "&mfid=1737581" in links[0]


def test_fetch_ok_no_coverage_and_cache(server, cache, tmp_path):
    client = make_client(server.url, max_connections=3)
    reqs = make_requests(3) + [CutoutRequest(77, 30.0, 1.0, "J", HALF)]
    rows = client.fetch(reqs, cache)
    assert [(r["object_id"], r["band"]) for r in rows] == [(r.object_id, r.band) for r in reqs]
    assert [r["status"] for r in rows] == ["ok"] * 6 + ["no_coverage"]
    assert server.max_active <= 3
    for req in reqs[:6]:
        cut = read_vhs_cutout(cache.path(req.object_id, req.band))
        assert tuple(cut.wcs.wcs.crval) == pytest.approx((req.ra, req.dec))
    n = len(server.requests)
    assert client.fetch(reqs, cache) == rows and len(server.requests) == n  # all cached: no HTTP at all
    more = reqs + make_requests(1, first_id=5000, ra0=150.5)
    client.fetch(more, cache)
    new = server.requests[n:]
    assert len(new) == 4 and {r["params"]["ra"] for r in new} == {"150.5"}
    assert no_part_files(tmp_path)


def test_first_valid_link_wins_and_all_corrupt_fails(provider, cache):
    reqs = make_requests(2)
    with start_vsa_server(provider, bad_first_link=True, corrupt=[(reqs[0].ra, reqs[0].dec, "J")]) as srv:
        rows = make_client(srv.url).fetch(reqs, cache)
        assert srv.count("getFImage") == 8
    assert [r["status"] for r in rows] == ["failed", "ok", "ok", "ok"]
    assert rows[0]["reason"].count("invalid cutout") == 2


@pytest.mark.parametrize("fault", [{"fail_503": 2}, {"delay_s": 1.5, "delay_first": 1}, {"truncate_downloads": 2},
                                   {"pending_pages": 2}])
def test_transient_faults_then_success(provider, cache, fault):
    with start_vsa_server(provider, **fault) as srv:
        sleeps = Sleeps()
        rows = make_client(srv.url, timeout_s=0.4, max_connections=1, sleep=sleeps).fetch(make_requests(1), cache)
    assert {r["status"] for r in rows} == {"ok"}
    if "pending_pages" in fault:
        assert sleeps == [1.0, 1.0]


def test_truncation_exhausted_is_failed_with_reason(provider, cache, tmp_path):
    with start_vsa_server(provider, truncate_downloads=99) as srv:
        rows = make_client(srv.url, max_retries=1).fetch(make_requests(1), cache)
    assert {r["status"] for r in rows} == {"failed"}
    assert "truncated" in rows[0]["reason"] and "after 2 attempt(s)" in rows[0]["reason"]
    assert no_part_files(tmp_path)


def test_interrupted_run_resumes_without_refetching(server, cache, monkeypatch, tmp_path):
    put = CutoutCache.put
    done = []

    def put_then_die(self, object_id, band, data):
        if len(done) == 3:
            raise KeyboardInterrupt
        done.append((object_id, band))
        return put(self, object_id, band, data)

    reqs = make_requests(4)
    client = make_client(server.url, max_connections=1)
    monkeypatch.setattr(CutoutCache, "put", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        client.fetch(reqs, cache)
    monkeypatch.setattr(CutoutCache, "put", put)
    n = server.count("GetImage")
    rows = client.fetch(reqs, cache)
    assert {r["status"] for r in rows} == {"ok"}
    assert server.count("GetImage") - n == len(reqs) - 3
    assert no_part_files(tmp_path)


def test_error_page_is_a_failure(server, cache):
    client = make_client(server.url, database="VIKINGDR4")  # the loopback serves VHSDR* only
    rows = client.fetch(make_requests(1), cache)
    assert {r["status"] for r in rows} == {"failed"} and "reported an error" in rows[0]["reason"]


def test_from_config_and_validation():
    client = VhsClient.from_config({"database": "VHSDR5", "max_connections": 2})
    assert client.url == DEFAULT_VSA_URL and client.database == "VHSDR5" and client.max_connections == 2
    with pytest.raises(ValueError):
        VhsClient(DEFAULT_VSA_URL, database="VHS; DROP")

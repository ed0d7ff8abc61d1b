"""The pipeline end to end: dry-run of the full DAG, a real run on a tiny mock sky, and the
same run with `source: hsc` against a loopback CAS server (same candidates)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workflow_scripts.contracts import CATALOG_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "source": "mock",
    "seed": 7,
    "shards": {"t1": {"ra": [135.0, 135.2], "dec": [0.5, 0.7]}, "t2": {"ra": [135.2, 135.4], "dec": [0.5, 0.7]}},
    "sky": {"enrichment": 3000},
}


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {**os.environ, **(env or {})}
    environ["PATH"] = f"{Path(sys.executable).parent}:{environ['PATH']}"  # rules call `python`
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir),
         "--profile", str(ROOT / "profiles" / "local"), *args],
        capture_output=True, text=True, env=environ, cwd=workdir)


def write_config(workdir: Path, config: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))


def test_dry_run_of_the_default_dag(tmp_path):
    write_config(tmp_path, yaml.safe_load((ROOT / "config.yaml").read_text()))
    proc = snakemake(tmp_path, "--dry-run", "--quiet", "rules")
    assert proc.returncode == 0, proc.stderr
    for rule, count in {"catalog": 4, "select": 4, "selection_report": 1, "evaluate_selection": 1}.items():
        assert any(line.split()[:2] == [rule, str(count)] for line in proc.stdout.splitlines()), proc.stdout


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mock")
    write_config(workdir, TINY)
    proc = snakemake(workdir)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_mock_run_outputs_follow_the_contracts(mock_run):
    res = mock_run / "results"
    for shard in TINY["shards"]:
        cat = pd.read_parquet(res / "catalog" / f"{shard}.parquet")
        assert list(cat.columns) == list(CATALOG_COLUMNS) and len(cat) > 100
        truth = pd.read_parquet(res / "truth" / f"{shard}.parquet")
        assert set(truth["object_id"]) == set(cat["object_id"])
        cand = pd.read_parquet(res / "candidates" / f"{shard}.parquet")
        assert set(cand["object_id"]) <= set(cat["object_id"])
        assert set(cand["selection_branch"]) <= {"i_dropout", "z_dropout"}
    report = (res / "candidates" / "selection_report.md").read_text()
    assert "i_dropout" in report and "total" in report
    truth_md = (res / "evaluation" / "selection_truth.md").read_text()
    assert "enrichment x3000" in truth_md and "z>6.5" in truth_md
    for png in (res / "candidates" / "colour_colour.png", res / "evaluation" / "colour_colour_truth.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert not list(res.rglob("*.part")), "temporary files left behind"


@pytest.mark.slow
def test_second_run_has_nothing_to_do(mock_run):
    proc = snakemake(mock_run, "--dry-run")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_changing_a_selection_threshold_reruns_select_not_catalog(mock_run):
    proc = snakemake(mock_run, "--dry-run", "--quiet", "rules", "--config", "select={i_dropout: {max_mag_z: 24.0}}")
    assert proc.returncode == 0, proc.stderr
    rules = {line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip() and not line.startswith(("job", "-", "total"))}
    assert "select" in rules and "catalog" not in rules, proc.stdout


@pytest.mark.slow
def test_hsc_source_against_loopback_cas_gives_the_same_candidates(mock_run, tmp_path):
    workdir = tmp_path / "hsc"
    port_file = tmp_path / "port"
    server_cfg = tmp_path / "server.yaml"
    server_cfg.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "HSC_SSP_CAS_USER": "astro", "LOOPBACK_PW": "s3cret-pw", "HSC_SSP_CAS_PASSWORD": "s3cret-pw"}
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.servers.hsc_cas", "--config", str(server_cfg), "--port-file", str(port_file),
         "--user", "astro", "--password-env", "LOOPBACK_PW"], cwd=ROOT, env=env)
    try:
        for _ in range(600):
            if port_file.exists() and port_file.read_text().strip():
                break
            assert server.poll() is None, "loopback CAS server died"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{port_file.read_text().strip()}/datasearch/api/catalog_jobs/"
        write_config(workdir, {**TINY, "source": "hsc", "hsc": {"cas_url": url, "timeout_s": 20}})
        proc = snakemake(workdir, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        log_text = "".join(p.read_text() for p in (workdir / "results" / "logs").rglob("*.log"))
        assert "s3cret-pw" not in log_text + proc.stdout + proc.stderr
        assert not (workdir / "results" / "truth").exists()
        for shard in TINY["shards"]:
            ours = pd.read_parquet(workdir / "results" / "candidates" / f"{shard}.parquet").sort_values("object_id")
            mock = pd.read_parquet(mock_run / "results" / "candidates" / f"{shard}.parquet").sort_values("object_id")
            pd.testing.assert_frame_equal(ours.reset_index(drop=True), mock.reset_index(drop=True), check_exact=False)
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_missing_credentials_stop_before_any_job(tmp_path):
    write_config(tmp_path, {**TINY, "source": "hsc"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSC_SSP_CAS")}
    env["NETRC"] = str(tmp_path / "no-netrc")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "-n"],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode != 0
    assert "HSC_SSP_CAS_PASSWORD" in proc.stdout + proc.stderr
    assert not (tmp_path / "results").exists()

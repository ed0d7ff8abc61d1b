"""The pipeline end to end: dry-run of the full DAG, a real run on a tiny mock sky, and the
same run with `source: hsc` against a loopback CAS server (same candidates)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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
    "training": {"epochs": 2, "batch_size": 16, "encoder": {"width": 8}},
}


def pipeline_env(extra: dict | None = None, *, path_prefix: str = "") -> dict:
    """This environment with the test interpreter's bin first on PATH: rules (and sbatch --export=ALL)
    call `python`. `path_prefix` ("dir:") goes before it."""
    environ = {**os.environ, **(extra or {})}
    environ["PATH"] = f"{path_prefix}{Path(sys.executable).parent}:{environ['PATH']}"
    return environ


def snakemake(workdir: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = pipeline_env(env)
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
    expected = {"catalog": 4, "select": 4, "selection_report": 1, "evaluate_selection": 1, "cutouts_hsc": 4,
                "cutouts_ir": 4, "reproject_ir": 4, "stack": 4, "tensor_meta": 1, "cutout_summary": 1,
                "train": 1, "embed": 1}
    for rule, count in expected.items():
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
    meta = json.loads((res / "tensors" / "6arcsec" / "meta.json").read_text())
    assert meta["bands"] == ["g", "r", "i", "z", "y", "J", "Ks"] and meta["size_px"] == 35
    for shard in TINY["shards"]:
        cand = pd.read_parquet(res / "candidates" / f"{shard}.parquet")
        images = np.load(res / "tensors" / "6arcsec" / f"{shard}.images.npy", mmap_mode="r")
        mask = np.load(res / "tensors" / "6arcsec" / f"{shard}.mask.npy", mmap_mode="r")
        index = pd.read_parquet(res / "tensors" / "6arcsec" / f"{shard}.index.parquet")
        assert images.shape == mask.shape == (len(cand), 7, 35, 35) and images.dtype == np.float32
        assert np.isfinite(images).all() and (images[mask] == 0).all()
        assert sorted(index["object_id"]) == sorted(cand["object_id"])
        manifest = pd.read_parquet(res / "cutouts" / "hsc" / shard / "manifest.parquet")
        assert len(manifest) == 5 * len(cand) and set(manifest["status"]) <= {"ok", "no_coverage", "failed"}
    history = pd.read_csv(res / "runs" / "default" / "history.csv")
    assert list(history["epoch"]) == [1, 2] and history["loss"].notna().all()
    emb = pd.read_parquet(res / "runs" / "default" / "embeddings.parquet")
    n_cand = sum(len(pd.read_parquet(res / "candidates" / f"{s}.parquet")) for s in TINY["shards"])
    assert len(emb) == n_cand and {"object_id", "shard", "h000", "h127"} <= set(emb.columns)
    assert not (res / "runs" / "default" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_proposal_outputs_and_report(mock_run):
    run = mock_run / "results" / "runs" / "default"
    ranked = pd.read_parquet(run / "candidates.parquet")
    assert list(ranked.sort_values("rank")["rank"]) == list(range(1, len(ranked) + 1))
    assert {"score", "flag_bd_peninsula", "flag_moving", "flag_artefact"} <= set(ranked.columns)
    for name in ("candidates.ecsv", "candidates.vot", "candidates.csv", "targets_magellan.cat", "targets_lbt.txt",
                 "explorer.html", "metrics.json", "umap.parquet"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "finding_charts.pdf").read_bytes()[:4] == b"%PDF"
    assert "http://" not in (run / "explorer.html").read_text().replace("http://www.w3.org", "")
    metrics = json.loads((run / "metrics.json").read_text())
    assert "enrichment" in json.dumps(metrics)
    proc = snakemake(mock_run, "--report", "results/report.html")
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = (mock_run / "results" / "report.html").read_text()
    assert "Cut flow of the dropout selection" in html and "Finding charts of the top candidates" in html


@pytest.mark.slow
def test_second_run_has_nothing_to_do(mock_run):
    proc = snakemake(mock_run, "--dry-run")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_raising_train_restarts_reruns_nothing(mock_run):
    proc = snakemake(mock_run, "--dry-run", "--config", "train_restarts=8")
    assert proc.returncode == 0, proc.stderr
    assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_changing_a_selection_threshold_reruns_select_not_catalog(mock_run):
    proc = snakemake(mock_run, "--dry-run", "--quiet", "rules", "--config", "select={i_dropout: {max_mag_z: 24.0}}")
    assert proc.returncode == 0, proc.stderr
    rules = {line.split()[0] for line in proc.stdout.splitlines()[2:] if line.strip() and not line.startswith(("job", "-", "total"))}
    assert "select" in rules and "catalog" not in rules, proc.stdout


def planned_rules(workdir: Path, *config_args: str) -> set[str]:
    """Rules a dry run would execute after the given --config overrides."""
    proc = snakemake(workdir, "--dry-run", "--quiet", "rules", "--config", *config_args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("job")) + 2
    return {line.split()[0] for line in lines[start:] if line.strip() and not line.startswith("total")}


@pytest.mark.slow
@pytest.mark.parametrize("override, expected, untouched", [
    ("training={temperature: 0.2}", {"train", "embed"}, {"stack", "cutouts_hsc", "select"}),
    ("training={normalisation: per_band}", {"train", "embed"}, {"stack", "tensor_meta"}),
    ("training={embed_batch_size: 64}", {"embed"}, {"train", "stack"}),
    ("runs={default: {}, t005: {temperature: 0.05}}", {"train", "embed"}, {"stack", "select"}),
    ("training={umap: {n_neighbors: 5}}", {"umap", "explorer"}, {"train", "embed", "rank", "stack"}),
    ("training={rank: {k_neighbors: 5}} ", {"rank", "followup", "explorer", "evaluate"}, {"train", "embed", "stack"}),
    ("tensors={scales_arcsec: [5.0]}|training={scale_arcsec: 5.0}", {"stack", "tensor_meta", "train"},
     {"cutouts_hsc", "cutouts_ir", "select", "catalog"}),
    ("select={z_dropout: {min_z_minus_y: 1.0}}", {"select", "cutouts_hsc", "stack", "train"}, {"catalog"}),
])
def test_a_config_change_reruns_exactly_the_affected_rules(mock_run, override, expected, untouched):
    rules = planned_rules(mock_run, *override.strip().split("|"))
    assert expected <= rules and not (untouched & rules), rules


@pytest.mark.slow
def test_a_looser_cut_fetches_only_the_new_objects(mock_run, tmp_path):
    import shutil

    workdir = tmp_path / "rerun"
    shutil.copytree(mock_run, workdir, symlinks=True)
    (workdir / "cache").exists() or pytest.skip("no cache")
    before = len(pd.read_parquet(workdir / "results" / "candidates" / "t1.parquet"))
    proc = snakemake(workdir, "--config", "select={i_dropout: {min_i_minus_z: 1.2}}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = len(pd.read_parquet(workdir / "results" / "candidates" / "t1.parquet"))
    assert after > before
    log = (workdir / "results" / "logs" / "cutouts_hsc" / "t1.log").read_text()
    assert f"{5 * after} cutouts requested, {5 * before} already cached, fetching {5 * (after - before)}" in log


def start_server(module: str, args: list[str], workdir: Path, env: dict) -> tuple[subprocess.Popen, int]:
    """Start a loopback service (tests/servers/<module>) on the mock sky; return (process, port)."""
    port_file = workdir / f"{module}.port"
    proc = subprocess.Popen([sys.executable, "-m", f"tests.servers.{module}", "--port-file", str(port_file), *args],
                            cwd=ROOT, env=env)
    for _ in range(1200):
        if port_file.exists() and port_file.read_text().strip():
            return proc, int(port_file.read_text().strip())
        assert proc.poll() is None, f"loopback {module} server died"
        time.sleep(0.1)
    raise AssertionError(f"loopback {module} server did not start")


@pytest.mark.slow
def test_hsc_source_against_loopback_services_gives_the_same_candidates_and_tensors(mock_run, tmp_path):
    """source: hsc against loopback CAS, DAS and VSA servers serving the same mock sky."""
    workdir = tmp_path / "hsc"
    server_cfg = tmp_path / "server.yaml"
    server_cfg.write_text(yaml.safe_dump(TINY))
    env = {**os.environ, "HSC_SSP_CAS_USER": "astro", "LOOPBACK_PW": "s3cret-pw", "HSC_SSP_CAS_PASSWORD": "s3cret-pw"}
    auth = ["--user", "astro", "--password-env", "LOOPBACK_PW"]
    servers = []
    try:
        for module, args in (("hsc_cas", auth), ("hsc_das", auth), ("vsa", [])):
            servers.append(start_server(module, ["--config", str(server_cfg), *args], tmp_path, env))
        (_, cas), (_, das), (_, vsa) = servers
        write_config(workdir, {**TINY, "source": "hsc",
                               "hsc": {"cas_url": f"http://127.0.0.1:{cas}/datasearch/api/catalog_jobs/",
                                       "das_url": f"http://127.0.0.1:{das}/das_cutout/pdr3/cgi-bin/cutout",
                                       "timeout_s": 20, "das_timeout_s": 30},
                               "vhs": {"url": f"http://127.0.0.1:{vsa}/vdfs/", "timeout_s": 20}})
        proc = snakemake(workdir, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    finally:
        for server, _ in servers:
            server.terminate()
            server.wait(timeout=10)
    res, ref = workdir / "results", mock_run / "results"
    log_text = "".join(p.read_text() for p in (res / "logs").rglob("*.log"))
    assert "s3cret-pw" not in log_text + proc.stdout + proc.stderr
    assert not (res / "truth").exists()
    for shard in TINY["shards"]:
        ours = pd.read_parquet(res / "candidates" / f"{shard}.parquet").sort_values("object_id")
        mock = pd.read_parquet(ref / "candidates" / f"{shard}.parquet").sort_values("object_id")
        pd.testing.assert_frame_equal(ours.reset_index(drop=True), mock.reset_index(drop=True), check_exact=False)
        for kind in ("images", "mask"):
            a = np.load(res / "tensors" / "6arcsec" / f"{shard}.{kind}.npy")
            b = np.load(ref / "tensors" / "6arcsec" / f"{shard}.{kind}.npy")
            np.testing.assert_array_equal(a, b)
    assert (res / "cutouts" / "summary.md").read_text() == (ref / "cutouts" / "summary.md").read_text()


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

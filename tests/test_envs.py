"""envs/*.yaml pin the same versions as pyproject.toml, so a cluster conda run matches a local run."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.test_workflow import pipeline_env

ROOT = Path(__file__).resolve().parents[1]


def project_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name, _, version = dep.partition("==")
        pins[name.lower().replace("_", "-")] = version
    return pins


@pytest.mark.parametrize("env_file", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_env_versions_match_pyproject(env_file):
    pins = project_pins()
    env = yaml.safe_load(env_file.read_text())
    checked = 0
    pip_deps = [d for dep in env["dependencies"] if isinstance(dep, dict) for d in dep.get("pip", [])]
    for dep in [*env["dependencies"], *pip_deps]:
        if not isinstance(dep, str) or "=" not in dep or dep.startswith("-"):
            continue
        name, version = re.split(r"=+", dep, maxsplit=1)
        name = name.lower().replace("_", "-")
        if name == "python":
            continue
        assert name in pins, f"{env_file.name}: {name} is not a project dependency"
        assert version == pins[name], f"{env_file.name}: {name}={version}, pyproject pins {pins[name]}"
        checked += 1
    assert checked > 0


def test_every_rule_names_an_existing_conda_env():
    """So `--software-deployment-method conda` works on a cluster for every job."""
    rule_block = re.compile(r"^\s*rule (\w+):\n(.*?)(?=^\s*rule \w+:|\Z)", re.M | re.S)
    checked = 0
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for name, body in rule_block.findall(smk.read_text()):
            env = re.search(r'conda:\s*\n\s*"([^"]+)"', body)
            assert env, f"{smk.name}: rule {name} names no conda env"
            assert (smk.parent / env.group(1)).resolve().is_file(), f"{smk.name}: rule {name}: {env.group(1)} missing"
            checked += 1
    assert checked >= 15


def conda_env(workdir: Path) -> dict:
    """PATH with a conda front end: the real conda where one is installed, else tests/conda_front
    (answers Snakemake's pre-flight queries only; see its docstring)."""
    if shutil.which("conda"):
        return pipeline_env()
    return pipeline_env({"CONDA_FRONT_PREFIX": str(workdir / "conda-prefix")},
                        path_prefix=f"{ROOT / 'tests' / 'conda_front'}:")


@pytest.mark.parametrize("profile", ["local", "slurm"])
def test_conda_dry_run_lists_every_env(tmp_path, profile):
    """`--software-deployment-method conda --dry-run` on the default config: all four envs resolve
    and would be created (so a cluster run with that flag deploys one env per rule family)."""
    shutil.copy(ROOT / "config.yaml", tmp_path / "config.yaml")
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
            "--profile", str(ROOT / "profiles" / profile), "--software-deployment-method", "conda"]
    environ = conda_env(tmp_path)
    proc = subprocess.run([*base, "--dry-run"], capture_output=True, text=True, env=environ, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    env_files = sorted(p.name for p in (ROOT / "envs").glob("*.yaml"))
    created = sorted(Path(m).name for m in re.findall(r"Conda environment (\S+) will be created", out))
    assert created == env_files, out[-3000:]
    listed = subprocess.run([*base, "--list-conda-envs"], capture_output=True, text=True, env=environ, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr[-3000:]
    rows = [line.split("\t") for line in listed.stdout.splitlines() if line.endswith("_") and "\t" in line]
    assert sorted(Path(row[0]).name for row in rows) == env_files, listed.stdout
    assert all(row[-1].startswith(".snakemake/conda/") for row in rows), rows

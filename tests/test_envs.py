"""envs/*.yaml pin the same versions as pyproject.toml, so a cluster conda run matches a local run."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

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

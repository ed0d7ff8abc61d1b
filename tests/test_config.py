"""Config validation: defaults, clear errors naming the key, README table in step with the schema."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from workflow_scripts.config import ConfigError, load_config, schema_markdown, validate_config

ROOT = Path(__file__).resolve().parents[1]
BOX = {"a": {"ra": [10, 11], "dec": [0, 1]}}


def test_default_config_is_valid_and_filled():
    cfg = load_config(ROOT / "config.yaml")
    assert cfg["source"] == "mock" and cfg["select"]["i_dropout"]["max_mag_z"] == 24.5
    assert cfg["hsc"]["release_version"] == "pdr3" and cfg["sky"]["depth_5sigma"]["y"] == 24.4


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"source": "mok", "shards": BOX}, r"'source'.*'mok'.*allowed values: \['mock', 'hsc'\]"),
        ({"shards": BOX, "sky": {"enrichmnt": 2}}, r"unknown key\(s\) \['enrichmnt'\] under 'sky'.*'enrichment'"),
        ({"shards": BOX, "select": {"i_dropout": {"max_mag_z": "faint"}}}, r"'select.i_dropout.max_mag_z'.*wrong type"),
        ({"shards": {"a": {"ra": [10, 11]}}}, r"'shards.a'.*either a box"),
        ({"shards": {"a": {"ra": [10, 11], "dec": [2, 1]}}}, r"'shards.a.dec': min 2 must be below max 1"),
        ({"shards": {"a": {"tract": 9813}}}, r"'shards.a.tract'.*source: hsc"),
        ({"shards": {"bad name": {"tract": 1}}, "source": "hsc"}, r"shard name 'bad name'"),
        ({"shards": BOX, "hsc": {"pushdown_max_mag": {"z": 24.6}}}, r"'hsc.pushdown_max_mag.z'"),
        ({}, r"'shards' is a required property"),
    ],
)
def test_invalid_configs_name_the_key(config, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_config(config)


def test_hsc_tract_shards_are_valid():
    cfg = validate_config({"source": "hsc", "shards": {"t1": {"tract": [9813, 9814]}}})
    assert cfg["shards"]["t1"]["tract"] == [9813, 9814]


def test_snakemake_stops_before_any_job_on_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"source": "mock", "shards": BOX, "select": {"max_extendedness": "x"}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(bad), "-d", str(tmp_path / "wd"),
         "-s", str(ROOT / "Snakefile")],
        capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0
    assert "select.max_extendedness" in proc.stdout + proc.stderr
    assert not (tmp_path / "wd" / "results").exists()


def test_readme_configuration_table_is_generated_from_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert schema_markdown() in readme, "regenerate with: python -m workflow_scripts.config --update-readme README.md"


def test_command_line_strings_are_coerced_to_schema_types():
    # `snakemake --config select='{i_dropout: {max_mag_z: 24.0}}'` delivers nested values as strings
    cfg = validate_config({"shards": BOX, "seed": "3", "select": {"i_dropout": {"max_mag_z": "24.0", "enabled": "false",
                                                                                 "max_z_minus_y": "null"}}})
    assert cfg["seed"] == 3 and cfg["select"]["i_dropout"]["max_mag_z"] == 24.0
    assert cfg["select"]["i_dropout"]["enabled"] is False and cfg["select"]["i_dropout"]["max_z_minus_y"] is None
    with pytest.raises(ConfigError, match="max_mag_z"):
        validate_config({"shards": BOX, "select": {"i_dropout": {"max_mag_z": "faint"}}})

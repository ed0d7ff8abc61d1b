"""Configuration: load config.yaml, validate it against schemas/config.schema.yaml, fill defaults.

Validation happens when the Snakefile is parsed, so a wrong key, type or value stops the
run before any job starts, with a message naming the key and the allowed values.

``python -m workflow_scripts.config --markdown`` prints the README's configuration table
(generated from the schema, so the two cannot drift).
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key and what is allowed."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def _key_path(path: Iterator[Any]) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "(top level)"


def _subschema(schema: dict, path: list) -> dict:
    """The schema node that validates the instance at *path* (properties/additionalProperties walk)."""
    node = schema
    for key in path:
        node = _deref(schema, node)
        if isinstance(key, int):
            node = node.get("items", {})
        elif key in node.get("properties", {}):
            node = node["properties"][key]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    return _deref(schema, node)


def _deref(schema: dict, node: dict) -> dict:
    """Follow a local `$ref` (e.g. "#/properties/training")."""
    while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/"):
        target = schema
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def _describe(error: jsonschema.ValidationError, schema: dict) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(_subschema(schema, list(error.absolute_path)).get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return f"unknown key(s) {unknown} under '{where}'; allowed keys: {allowed}"
    if error.validator == "enum":
        return f"key '{where}': {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if error.validator == "type":
        return f"key '{where}': {error.instance!r} has the wrong type; expected {error.validator_value}"
    if error.validator == "oneOf" and error.absolute_path and error.absolute_path[0] == "shards":
        return (f"key '{where}': a shard is either a box {{ra: [min, max], dec: [min, max]}} "
                f"or an HSC tract {{tract: N}}; got {error.instance!r}")
    if error.validator == "pattern" and list(error.absolute_path) == ["shards"]:  # from propertyNames
        return (f"key '{where}': shard name {error.instance!r} must match "
                f"{error.validator_value} (letters, digits, _ and -)")
    return f"key '{where}': {error.message}"


def _fill_defaults(instance: dict, schema: dict) -> None:
    """Insert schema defaults for absent keys, recursively (defaults of nested objects too)."""
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if isinstance(instance.get(key), dict) and sub.get("type") == "object":
            _fill_defaults(instance[key], sub)


def _coerce_scalar(value: str, types: list[str]):
    """A string from `snakemake --config` (which parses nested values as strings) in the schema's type."""
    parsed = yaml.safe_load(value) if value.strip() else value
    if isinstance(parsed, bool):
        return parsed if "boolean" in types else value
    if isinstance(parsed, int) and ("integer" in types or "number" in types):
        return parsed
    if isinstance(parsed, float) and "number" in types:
        return parsed
    if parsed is None and "null" in types:
        return None
    return value


def _coerce_strings(instance, root: dict, path: tuple = ()):
    """Walk *instance* alongside the schema, converting numeric/boolean strings where a number/boolean is expected."""
    if isinstance(instance, dict):
        return {k: _coerce_strings(v, root, path + (k,)) for k, v in instance.items()}
    if isinstance(instance, list):
        return [_coerce_strings(v, root, path + (i,)) for i, v in enumerate(instance)]
    if isinstance(instance, str):
        types = _subschema(root, list(path)).get("type", [])
        types = [types] if isinstance(types, str) else list(types)
        if set(types) & {"number", "integer", "boolean", "null"}:
            return _coerce_scalar(instance, types)
    return instance


def validate_config(config: dict, schema: dict | None = None, source_name: str = "config") -> dict:
    """Return a validated copy of *config* with defaults filled; raise ConfigError listing every problem."""
    schema = schema if schema is not None else load_schema()
    if not isinstance(config, dict):
        raise ConfigError(f"{source_name}: expected a mapping of keys, got {type(config).__name__}")
    resolved = _coerce_strings(copy.deepcopy(config), schema)
    _fill_defaults(resolved, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(resolved), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e, schema) for e in errors]
    problems += _semantic_problems(resolved) if not problems else []
    if problems:
        raise ConfigError(f"{source_name} is invalid:\n  - " + "\n  - ".join(problems))
    return resolved


def _semantic_problems(config: dict) -> list[str]:
    """Checks a JSON schema cannot express."""
    problems = []
    for name, shard in config["shards"].items():
        if "dec" in shard and shard["dec"][0] >= shard["dec"][1]:
            problems.append(f"key 'shards.{name}.dec': min {shard['dec'][0]} must be below max {shard['dec'][1]}")
        if "ra" in shard and shard["ra"][0] == shard["ra"][1]:
            problems.append(f"key 'shards.{name}.ra': empty range {shard['ra']}")
        if "tract" in shard and config["source"] == "mock":
            problems.append(f"key 'shards.{name}.tract': the mock sky needs ra/dec boxes; tracts need source: hsc")
    select = config["select"]
    pushdown = config["hsc"]["pushdown_max_mag"]
    for branch, band, key in (("i_dropout", "z", "max_mag_z"), ("z_dropout", "y", "max_mag_y")):
        limit = select[branch][key]
        if select[branch]["enabled"] and band in pushdown and pushdown[band] < limit + 0.5:
            problems.append(f"key 'hsc.pushdown_max_mag.{band}': {pushdown[band]} must be at least 0.5 mag "
                            f"fainter than select.{branch}.{key} = {limit} (extinction correction brightens)")
    if not (select["i_dropout"]["enabled"] or select["z_dropout"]["enabled"]):
        problems.append("keys 'select.i_dropout.enabled' and 'select.z_dropout.enabled': enable at least one branch")
    for name, run in resolve_runs(config).items():
        if run["scale_arcsec"] not in config["tensors"]["scales_arcsec"]:
            problems.append(f"key 'runs.{name}.scale_arcsec': {run['scale_arcsec']} is not one of "
                            f"tensors.scales_arcsec {config['tensors']['scales_arcsec']}")
    largest = max(config["tensors"]["scales_arcsec"])
    if config["cutouts"]["half_size_arcsec"] < largest / 2 + 0.5:
        problems.append(f"key 'cutouts.half_size_arcsec': {config['cutouts']['half_size_arcsec']} must be at least "
                        f"0.5 arcsec more than half the largest tensors.scales_arcsec ({largest})")
    return problems


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of *base* with *override* merged in, recursively for nested mappings."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_runs(config: dict) -> dict[str, dict]:
    """Every named run's full settings: the `training` defaults with the run's overrides merged in."""
    return {name: deep_merge(config["training"], override or {}) for name, override in config["runs"].items()}


def load_config(path: str | Path) -> dict:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        with open(path) as fh:
            raw = yaml.safe_load(fh) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return validate_config(raw, source_name=str(path))


def _schema_rows(schema: dict, prefix: str = "") -> Iterator[tuple[str, str, str, str]]:
    for key, sub in schema.get("properties", {}).items():
        name = f"{prefix}{key}"
        nested = sub.get("properties")
        # Sections (default {}) expand into their keys; small value maps (e.g. per-band depths) stay one row.
        if nested and sub.get("type") == "object" and not sub.get("default"):
            yield from _schema_rows(sub, prefix=f"{name}.")
            continue
        kind = sub.get("type", "oneOf" if "oneOf" in sub else "")
        kind = " or ".join(kind) if isinstance(kind, list) else kind
        if "enum" in sub:
            kind = " / ".join(f"`{v}`" for v in sub["enum"])
        default = "required"
        if "default" in sub:
            dumped = yaml.safe_dump(sub["default"], default_flow_style=True, width=1000)
            default = f"`{dumped.removesuffix(chr(10)).removesuffix('...').strip()}`"
        text = " ".join(sub.get("description", "").split())
        yield name, kind, default, text.replace("|", "\\|")


def schema_markdown(schema: dict | None = None) -> str:
    """Markdown table of every config key (name, type, default, description)."""
    schema = schema if schema is not None else load_schema()
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    lines += [f"| `{n}` | {k} | {d} | {t} |" for n, k, d, t in _schema_rows(schema)]
    return "\n".join(lines) + "\n"


README_MARKERS = ("<!-- config-table:start -->\n", "<!-- config-table:end -->")


def update_readme(path: Path) -> None:
    """Replace the README's configuration table (between the markers) with the one generated from the schema."""
    text = path.read_text()
    start, end = README_MARKERS
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    if not rest:
        raise ConfigError(f"{path}: markers {start.strip()} ... {end} not found")
    path.write_text(head + start + schema_markdown() + end + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--validate", metavar="CONFIG", help="validate a config file and print the resolved config")
    group.add_argument("--markdown", action="store_true", help="print the configuration table for the README")
    group.add_argument("--update-readme", metavar="README", help="rewrite the table between the config-table markers")
    args = parser.parse_args(argv)
    if args.update_readme:
        update_readme(Path(args.update_readme))
        return 0
    if args.markdown:
        sys.stdout.write(schema_markdown())
        return 0
    try:
        resolved = load_config(args.validate)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    yaml.safe_dump(resolved, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

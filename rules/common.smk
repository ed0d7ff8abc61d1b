# Helpers shared by all rules: shard expansion, path helpers, params as JSON.
import json

from workflow_scripts.catalog import check_source_ready
from workflow_scripts.config import resolve_runs

SHARDS = list(config["shards"])
MOCK = config["source"] == "mock"
RESULTS = "results"

# Fail before any job when the source cannot work (e.g. HSC credentials missing).
try:
    check_source_ready(config)
except Exception as exc:  # the message is written for the user; it never contains a password
    raise WorkflowError(str(exc)) from None

wildcard_constraints:
    shard="|".join(SHARDS),
    scale=r"[0-9.]+arcsec",
    run="|".join(config["runs"]),


def as_json(value):
    """A config section as canonical JSON: a stable `params:` value for the params rerun trigger."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def pick(section, *keys):
    """Only the keys of a config section a rule depends on, as JSON (so other keys never rerun it)."""
    return as_json({k: config[section][k] for k in keys})


SCALES = [f"{s:g}arcsec" for s in config["tensors"]["scales_arcsec"]]
IR = config["cutouts"]["ir"]


def scale_arcsec(wildcards):
    return float(wildcards.scale.removesuffix("arcsec"))


def shard_spec(wildcards):
    return as_json(config["shards"][wildcards.shard])


def per_shard(pattern):
    return expand(pattern, shard=SHARDS)


def all_outputs():
    targets = per_shard(f"{RESULTS}/catalog/{{shard}}.parquet")
    targets += per_shard(f"{RESULTS}/candidates/{{shard}}.parquet")
    targets += [
        f"{RESULTS}/candidates/selection_report.md",
        f"{RESULTS}/candidates/colour_colour.png",
    ]
    targets += expand(f"{RESULTS}/tensors/{{scale}}/{{shard}}.images.npy", scale=SCALES, shard=SHARDS)
    targets += expand(f"{RESULTS}/tensors/{{scale}}/meta.json", scale=SCALES)
    targets += [f"{RESULTS}/cutouts/summary.md"]
    runs = list(config["runs"])
    targets += expand(f"{RESULTS}/runs/{{run}}/embeddings.parquet", run=runs)
    targets += expand(f"{RESULTS}/runs/{{run}}/{{name}}", run=runs,
                      name=["umap.parquet", "candidates.parquet", "candidates.ecsv", "finding_charts.pdf",
                            "explorer.html"])
    if MOCK:
        targets += expand(f"{RESULTS}/runs/{{run}}/metrics.json", run=runs)
    targets += [f"{RESULTS}/compare.md"]
    if MOCK:
        targets += [f"{RESULTS}/evaluation/selection_truth.md", f"{RESULTS}/evaluation/colour_colour_truth.png"]
    return targets

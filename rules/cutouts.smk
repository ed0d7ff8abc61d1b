# Stages `cutouts_hsc`, `cutouts_ir`, `reproject_ir`: cutouts around every candidate, via the persistent cache.

# The mock services render from the sky model of all shards (neighbours across shard edges).
MOCK_SKY = (
    {"catalogs": per_shard(f"{RESULTS}/catalog/{{shard}}.parquet"), "truths": per_shard(f"{RESULTS}/truth/{{shard}}.parquet")}
    if MOCK
    else {}
)
HSC_SERVICE_KEYS = ("das_url", "rerun", "release_version", "das_batch_size", "das_max_connections", "das_timeout_s",
                    "user_env", "password_env", "timeout_s", "max_retries")


def cutout_source_args(survey):
    """Command-line arguments that say where the cutouts come from (sky model or service)."""
    if MOCK:
        return f"--source mock --seed {config['seed']} --sky '{as_json(config['sky'])}'"
    service = pick("hsc", *HSC_SERVICE_KEYS) if survey == "hsc" else as_json(config["vhs"])
    return f"--source hsc --service '{service}'"


rule cutouts_hsc:
    input:
        candidates=f"{RESULTS}/candidates/{{shard}}.parquet",
        **MOCK_SKY,
    output:
        manifest=f"{RESULTS}/cutouts/hsc/{{shard}}/manifest.parquet",
    params:
        cutouts=pick("cutouts", "cache_dir", "half_size_arcsec"),
        source=cutout_source_args("hsc"),
        sky_model=lambda wc, input: f"--catalogs {' '.join(input.catalogs)} --truths {' '.join(input.truths)}" if MOCK else "",
    log:
        f"{RESULTS}/logs/cutouts_hsc/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cutouts_hsc/{{shard}}.tsv"
    conda:
        "../envs/imaging.yaml"
    retries: 0 if MOCK else 2
    resources:
        mem_mb=3000,
        runtime=120,
        hsc_das_jobs=1,  # cap concurrent shards hitting the DAS with --resources hsc_das_jobs=N
    shell:
        "python -m workflow_scripts.cutouts --survey hsc --candidates {input.candidates} --manifest {output.manifest}"
        " --cutouts '{params.cutouts}' {params.source} {params.sky_model} > {log} 2>&1"


rule cutouts_ir:
    input:
        candidates=f"{RESULTS}/candidates/{{shard}}.parquet",
        **MOCK_SKY,
    output:
        manifest=f"{RESULTS}/cutouts/ir/{{shard}}/manifest.parquet",
    params:
        cutouts=pick("cutouts", "cache_dir", "ir_half_size_arcsec"),
        source=cutout_source_args("vhs"),
        sky_model=lambda wc, input: f"--catalogs {' '.join(input.catalogs)} --truths {' '.join(input.truths)}" if MOCK else "",
    log:
        f"{RESULTS}/logs/cutouts_ir/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/cutouts_ir/{{shard}}.tsv"
    conda:
        "../envs/imaging.yaml"
    retries: 0 if MOCK else 2
    resources:
        mem_mb=3000,
        runtime=120,
    shell:
        "python -m workflow_scripts.cutouts --survey vhs --candidates {input.candidates} --manifest {output.manifest}"
        " --cutouts '{params.cutouts}' {params.source} {params.sky_model} > {log} 2>&1"


rule reproject_ir:
    input:
        candidates=f"{RESULTS}/candidates/{{shard}}.parquet",
        hsc=f"{RESULTS}/cutouts/hsc/{{shard}}/manifest.parquet",
        ir=f"{RESULTS}/cutouts/ir/{{shard}}/manifest.parquet",
    output:
        f"{RESULTS}/cutouts/ir_on_hsc/{{shard}}.npz",
    log:
        f"{RESULTS}/logs/reproject_ir/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/reproject_ir/{{shard}}.tsv"
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        "python -m workflow_scripts.reproject_ir --candidates {input.candidates} --hsc-manifest {input.hsc}"
        " --vhs-manifest {input.ir} --out {output} > {log} 2>&1"


rule cutout_summary:
    input:
        hsc=per_shard(f"{RESULTS}/cutouts/hsc/{{shard}}/manifest.parquet"),
        ir=per_shard(f"{RESULTS}/cutouts/ir/{{shard}}/manifest.parquet") if IR else [],
    output:
        report(f"{RESULTS}/cutouts/summary.md", caption="../report/cutouts.rst", category="1. Selection"),
    log:
        f"{RESULTS}/logs/cutout_summary.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    shell:
        "python -m workflow_scripts.cutout_summary --manifests {input.hsc} {input.ir} --out {output} > {log} 2>&1"

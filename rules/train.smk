# Stages `train` and `embed`, per named run (config `runs:`, each inheriting `training:`).
# train gets only the settings it depends on, so e.g. a later UMAP setting never retrains.

RUN_SETTINGS = resolve_runs(config)
RUNS = list(RUN_SETTINGS)
# settings read after training: changing them never retrains
EMBED_ONLY_KEYS = ("embed_batch_size", "umap", "rank")


def run_scale(wildcards):
    return f"{RUN_SETTINGS[wildcards.run]['scale_arcsec']:g}arcsec"


def run_tensors(wildcards):
    return expand(f"{RESULTS}/tensors/{run_scale(wildcards)}/{{shard}}.{{kind}}.npy", shard=SHARDS, kind=("images", "mask"))


def train_settings(wildcards):
    settings = {k: v for k, v in RUN_SETTINGS[wildcards.run].items() if k not in EMBED_ONLY_KEYS}
    return as_json(settings)


def image_paths(input_files):
    return " ".join(p for p in input_files if p.endswith(".images.npy"))


rule train:
    input:
        tensors=run_tensors,
        meta=lambda wc: f"{RESULTS}/tensors/{run_scale(wc)}/meta.json",
    output:
        model=f"{RESULTS}/runs/{{run}}/model.pt",
        history=report(f"{RESULTS}/runs/{{run}}/history.csv", caption="../report/history.rst",
                       category="2. Training", subcategory="{run}"),
    params:
        settings=train_settings,
        images=lambda wc, input: image_paths(input.tensors),
    log:
        f"{RESULTS}/logs/train/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{run}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    # exit 75 = checkpointed after SIGTERM/SIGURG (preemption, time limit), or killed at the hard time
    # limit (SLURM resubmits): the rerun resumes from the checkpoint
    retries: config["train_restarts"]
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "OMP_NUM_THREADS={threads} python -m workflow_scripts.ssl.train --settings '{params.settings}' --meta {input.meta}"
        " --images {params.images} --out-dir {RESULTS}/runs/{wildcards.run} > {log} 2>&1"


rule embed:
    input:
        model=f"{RESULTS}/runs/{{run}}/model.pt",
        tensors=run_tensors,
    output:
        f"{RESULTS}/runs/{{run}}/embeddings.parquet",
    params:
        batch_size=lambda wc: RUN_SETTINGS[wc.run]["embed_batch_size"],
        images=lambda wc, input: image_paths(input.tensors),
    log:
        f"{RESULTS}/logs/embed/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/embed/{{run}}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "OMP_NUM_THREADS={threads} python -m workflow_scripts.embed --model {input.model} --images {params.images}"
        " --batch-size {params.batch_size} --out {output} > {log} 2>&1"

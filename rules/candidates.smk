# From embeddings to proposals: known-object labels, UMAP map, ranking, follow-up exports, explorer,
# evaluation against the mock truth, and the comparison of all runs.

CANDIDATE_SHARDS = per_shard(f"{RESULTS}/candidates/{{shard}}.parquet")
IR_ON_HSC = per_shard(f"{RESULTS}/cutouts/ir_on_hsc/{{shard}}.npz") if IR else []
TRUTHS = per_shard(f"{RESULTS}/truth/{{shard}}.parquet") if MOCK else []


UMAP_FIGURES = (["structure", "selection_branch", "known_labels", "i_minus_z", "z_minus_y", "y_mag"]
                + (["y_minus_J"] if IR else []) + (["true_class", "true_redshift"] if MOCK else []))


def run_section(section):
    return lambda wc: as_json(RUN_SETTINGS[wc.run][section])


def known_list_args():
    args = []
    for item in config["known_objects"]["lists"]:
        kind = f"column={item['label_column']}" if "label_column" in item else item.get("label", "")
        args.append(f"--list '{item['path']}:{kind}'")
    return " ".join(args)


rule known_labels:
    input:
        candidates=CANDIDATE_SHARDS,
        truths=TRUTHS,
        lists=[item["path"] for item in config["known_objects"]["lists"]],
    output:
        f"{RESULTS}/known/labels.parquet",
    params:
        radius=config["known_objects"]["match_radius_arcsec"],
        lists=known_list_args(),
        mock=(
            f"--fraction {config['known_objects']['mock_known_fraction']} --seed {config['seed']}"
            f" --max-mag-z {config['select']['i_dropout']['max_mag_z']}"
            f" --max-mag-y {config['select']['z_dropout']['max_mag_y']} --lists-dir {RESULTS}/known"
            if MOCK
            else ""
        ),
    log:
        f"{RESULTS}/logs/known_labels.log",
    conda:
        "../envs/catalog.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m workflow_scripts.known_objects --candidates {input.candidates}"
        " {params.mock} $( [ -n '{input.truths}' ] && echo --truths {input.truths} ) {params.lists}"
        " --radius {params.radius} --out {output} > {log} 2>&1"


rule umap:
    input:
        embeddings=f"{RESULTS}/runs/{{run}}/embeddings.parquet",
        candidates=CANDIDATE_SHARDS,
        labels=f"{RESULTS}/known/labels.parquet",
        ir=IR_ON_HSC,
        truths=TRUTHS,
    output:
        umap=f"{RESULTS}/runs/{{run}}/umap.parquet",
        figures=report(
            expand(f"{RESULTS}/runs/{{{{run}}}}/figures/umap_{{name}}.png", name=UMAP_FIGURES),
            caption="../report/umap.rst", category="3. Map", subcategory="{run}",
        ),
    params:
        umap=run_section("umap"),
        min_cluster_size=lambda wc: RUN_SETTINGS[wc.run]["rank"]["min_cluster_size"],
        optional=lambda wc, input: " ".join(
            ([f"--ir {' '.join(input.ir)}"] if input.ir else []) + ([f"--truths {' '.join(input.truths)}"] if input.truths else [])
        ),
    log:
        f"{RESULTS}/logs/umap/{{run}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/umap/{{run}}.tsv"
    conda:
        "../envs/umap.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m workflow_scripts.umap_project --embeddings {input.embeddings} --candidates {input.candidates}"
        " --labels {input.labels} --settings '{params.umap}' --min-cluster-size {params.min_cluster_size}"
        " --run {wildcards.run} {params.optional} --out {output.umap}"
        " --figures-dir {RESULTS}/runs/{wildcards.run}/figures > {log} 2>&1"


rule rank:
    input:
        embeddings=f"{RESULTS}/runs/{{run}}/embeddings.parquet",
        candidates=CANDIDATE_SHARDS,
        labels=f"{RESULTS}/known/labels.parquet",
        tensors=run_tensors,
    output:
        f"{RESULTS}/runs/{{run}}/candidates.parquet",
    params:
        rank=run_section("rank"),
        tensor_dir=lambda wc: f"{RESULTS}/tensors/{run_scale(wc)}",
    log:
        f"{RESULTS}/logs/rank/{{run}}.log",
    conda:
        "../envs/umap.yaml"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "python -m workflow_scripts.rank --embeddings {input.embeddings} --candidates {input.candidates}"
        " --labels {input.labels} --settings '{params.rank}' --tensor-dir {params.tensor_dir} --out {output}"
        " > {log} 2>&1"


rule followup:
    input:
        ranked=f"{RESULTS}/runs/{{run}}/candidates.parquet",
        **MOCK_SKY,
    output:
        ecsv=f"{RESULTS}/runs/{{run}}/candidates.ecsv",
        vot=f"{RESULTS}/runs/{{run}}/candidates.vot",
        csv=report(f"{RESULTS}/runs/{{run}}/candidates.csv", caption="../report/candidates.rst",
                   category="4. Candidates", subcategory="{run}"),
        magellan=f"{RESULTS}/runs/{{run}}/targets_magellan.cat",
        lbt=f"{RESULTS}/runs/{{run}}/targets_lbt.txt",
        charts=report(f"{RESULTS}/runs/{{run}}/finding_charts.pdf", caption="../report/charts.rst",
                      category="4. Candidates", subcategory="{run}"),
    params:
        top_n=lambda wc: RUN_SETTINGS[wc.run]["rank"]["top_n_followup"],
        cutouts=pick("cutouts", "cache_dir", "ir"),
        source=(
            f"--source mock --seed {config['seed']} --sky '{as_json(config['sky'])}'"
            if MOCK
            else f"--source hsc --service '{pick('hsc', *HSC_SERVICE_KEYS)}' --vhs '{as_json(config['vhs'])}'"
        ),
        sky_model=lambda wc, input: f"--catalogs {' '.join(input.catalogs)} --truths {' '.join(input.truths)}" if MOCK else "",
        no_ir="" if IR else "--no-ir",
    log:
        f"{RESULTS}/logs/followup/{{run}}.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=3000,
        runtime=60,
    shell:
        "python -m workflow_scripts.followup --ranked {input.ranked} --top-n {params.top_n} --charts 20"
        " --out-dir {RESULTS}/runs/{wildcards.run} --cutouts '{params.cutouts}' {params.source} {params.sky_model}"
        " {params.no_ir} > {log} 2>&1"


rule explorer:
    input:
        umap=f"{RESULTS}/runs/{{run}}/umap.parquet",
        ranked=f"{RESULTS}/runs/{{run}}/candidates.parquet",
        tensors=run_tensors,
    output:
        f"{RESULTS}/runs/{{run}}/explorer.html",
    params:
        images=lambda wc, input: image_paths(input.tensors),
    log:
        f"{RESULTS}/logs/explorer/{{run}}.log",
    conda:
        "../envs/catalog.yaml"
    resources:
        mem_mb=3000,
        runtime=20,
    shell:
        "python -m workflow_scripts.explorer --umap {input.umap} --ranked {input.ranked} --images {params.images}"
        " --out {output} --title 'z > 6.5 quasar candidates: run {wildcards.run}' > {log} 2>&1"


rule evaluate:
    input:
        ranked=f"{RESULTS}/runs/{{run}}/candidates.parquet",
        embeddings=f"{RESULTS}/runs/{{run}}/embeddings.parquet",
        candidates=CANDIDATE_SHARDS,
        truths=TRUTHS,
        ir=IR_ON_HSC,
    output:
        json=f"{RESULTS}/runs/{{run}}/metrics.json",
        md=report(f"{RESULTS}/runs/{{run}}/metrics.md", caption="../report/metrics.rst",
                  category="5. Evaluation", subcategory="{run}"),
    params:
        rank=run_section("rank"),
        select=pick("select", "i_dropout", "z_dropout"),
        enrichment=config["sky"]["enrichment"],
        ir=lambda wc, input: f"--ir {' '.join(input.ir)}" if input.ir else "",
    log:
        f"{RESULTS}/logs/evaluate/{{run}}.log",
    conda:
        "../envs/umap.yaml"
    resources:
        mem_mb=3000,
        runtime=20,
    shell:
        "python -m workflow_scripts.evaluate --ranked {input.ranked} --embeddings {input.embeddings}"
        " --candidates {input.candidates} --truths {input.truths} {params.ir} --settings '{params.rank}'"
        " --select '{params.select}' --enrichment {params.enrichment} --out-json {output.json} --out-md {output.md}"
        " > {log} 2>&1"


rule compare:
    input:
        metrics=expand(f"{RESULTS}/runs/{{run}}/metrics.json", run=RUNS) if MOCK else [],
        ranked=expand(f"{RESULTS}/runs/{{run}}/candidates.parquet", run=RUNS),
    output:
        csv=f"{RESULTS}/compare.csv",
        md=f"{RESULTS}/compare.md",
        png=report(f"{RESULTS}/compare.png", caption="../report/compare.rst", category="5. Evaluation"),
    params:
        runs=" ".join(f"{run}={RESULTS}/runs/{run}" for run in RUNS),
        settings=as_json(RUN_SETTINGS),
    log:
        f"{RESULTS}/logs/compare.log",
    conda:
        "../envs/umap.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m workflow_scripts.compare --runs {params.runs} --settings '{params.settings}'"
        " --out-prefix {RESULTS}/compare > {log} 2>&1"

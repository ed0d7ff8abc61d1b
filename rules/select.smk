# Stage `select`: dropout candidates per shard, the selection report, and (mock) the check against truth.


rule select:
    input:
        f"{RESULTS}/catalog/{{shard}}.parquet",
    output:
        candidates=f"{RESULTS}/candidates/{{shard}}.parquet",
        report=f"{RESULTS}/candidates/{{shard}}.report.json",
        sample=f"{RESULTS}/candidates/{{shard}}.colour_sample.parquet",
    params:
        select=as_json(config["select"]),
    conda:
        "../envs/catalog.yaml"
    log:
        f"{RESULTS}/logs/select/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/select/{{shard}}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m workflow_scripts.select --catalog {input} --shard {wildcards.shard} --select {params.select:q}"
        " --out {output.candidates} --report {output.report} --sample {output.sample} > {log} 2>&1"


rule selection_report:
    input:
        reports=per_shard(f"{RESULTS}/candidates/{{shard}}.report.json"),
        samples=per_shard(f"{RESULTS}/candidates/{{shard}}.colour_sample.parquet"),
        candidates=per_shard(f"{RESULTS}/candidates/{{shard}}.parquet"),
    output:
        csv=report(f"{RESULTS}/candidates/selection_report.csv", caption="../report/selection_report.rst",
                   category="1. Selection"),
        markdown=f"{RESULTS}/candidates/selection_report.md",
        figure=report(f"{RESULTS}/candidates/colour_colour.png", caption="../report/colour_colour.rst",
                      category="1. Selection"),
    params:
        select=as_json(config["select"]),
    conda:
        "../envs/catalog.yaml"
    log:
        f"{RESULTS}/logs/selection_report.log",
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m workflow_scripts.selection_report --reports {input.reports} --samples {input.samples}"
        " --candidates {input.candidates} --select {params.select:q} --csv {output.csv}"
        " --markdown {output.markdown} --figure {output.figure} > {log} 2>&1"


if MOCK:

    rule evaluate_selection:
        input:
            catalogs=per_shard(f"{RESULTS}/catalog/{{shard}}.parquet"),
            truths=per_shard(f"{RESULTS}/truth/{{shard}}.parquet"),
            candidates=per_shard(f"{RESULTS}/candidates/{{shard}}.parquet"),
            samples=per_shard(f"{RESULTS}/candidates/{{shard}}.colour_sample.parquet"),
        output:
            json=f"{RESULTS}/evaluation/selection_truth.json",
            markdown=f"{RESULTS}/evaluation/selection_truth.md",
            figure=report(f"{RESULTS}/evaluation/colour_colour_truth.png", caption="../report/colour_colour_truth.rst",
                          category="1. Selection"),
        params:
            select=as_json(config["select"]),
            enrichment=config["sky"]["enrichment"],
        conda:
            "../envs/catalog.yaml"
        log:
            f"{RESULTS}/logs/evaluate_selection.log",
        resources:
            mem_mb=3000,
            runtime=10,
        shell:
            "python -m workflow_scripts.evaluate_selection --catalogs {input.catalogs} --truths {input.truths}"
            " --candidates {input.candidates} --samples {input.samples} --select {params.select:q}"
            " --enrichment {params.enrichment} --json {output.json} --markdown {output.markdown}"
            " --figure {output.figure} > {log} 2>&1"

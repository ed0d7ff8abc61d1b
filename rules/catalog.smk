# Stage `catalog`: one HSC-PDR3-contract catalogue shard per shard, from the mock sky or the archive.

if MOCK:

    rule catalog:
        output:
            catalog=f"{RESULTS}/catalog/{{shard}}.parquet",
            truth=f"{RESULTS}/truth/{{shard}}.parquet",
        params:
            spec=shard_spec,
            seed=config["seed"],
            sky=as_json(config["sky"]),
        conda:
            "../envs/catalog.yaml"
        log:
            f"{RESULTS}/logs/catalog/{{shard}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/catalog/{{shard}}.tsv"
        resources:
            mem_mb=3000,
            runtime=20,
        shell:
            "python -m workflow_scripts.catalog mock --shard {wildcards.shard} --spec {params.spec:q}"
            " --seed {params.seed} --sky {params.sky:q} --out {output.catalog} --truth-out {output.truth}"
            " > {log} 2>&1"

else:

    rule catalog:
        output:
            catalog=f"{RESULTS}/catalog/{{shard}}.parquet",
        params:
            spec=shard_spec,
            hsc=as_json(config["hsc"]),
        conda:
            "../envs/catalog.yaml"
        log:
            f"{RESULTS}/logs/catalog/{{shard}}.log",
        benchmark:
            f"{RESULTS}/benchmarks/catalog/{{shard}}.tsv"
        retries: 2
        resources:
            mem_mb=3000,
            runtime=240,
            hsc_cas_jobs=1,  # cap concurrent archive jobs with --resources hsc_cas_jobs=N
        shell:
            "python -m workflow_scripts.catalog hsc --shard {wildcards.shard} --spec {params.spec:q}"
            " --hsc {params.hsc:q} --out {output.catalog} > {log} 2>&1"

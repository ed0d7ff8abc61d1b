# Stage `stack`: per shard and image scale, raw-flux tensors + masks (memmaps) and an index; `tensor_meta`
# streams over all shards for the per-band robust statistics. Normalisation is a training-time choice.


rule stack:
    input:
        candidates=f"{RESULTS}/candidates/{{shard}}.parquet",
        hsc=f"{RESULTS}/cutouts/hsc/{{shard}}/manifest.parquet",
        ir=f"{RESULTS}/cutouts/ir_on_hsc/{{shard}}.npz" if IR else [],
    output:
        images=f"{RESULTS}/tensors/{{scale}}/{{shard}}.images.npy",
        mask=f"{RESULTS}/tensors/{{scale}}/{{shard}}.mask.npy",
        index=f"{RESULTS}/tensors/{{scale}}/{{shard}}.index.parquet",
    params:
        scale=scale_arcsec,
        ir=lambda wc, input: f"--ir {input.ir}" if IR else "",
    log:
        f"{RESULTS}/logs/stack/{{scale}}/{{shard}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/stack/{{scale}}/{{shard}}.tsv"
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=2000,
        runtime=60,
    shell:
        "python -m workflow_scripts.tensors stack --scale {params.scale} --candidates {input.candidates}"
        " --hsc-manifest {input.hsc} {params.ir} --out-prefix {RESULTS}/tensors/{wildcards.scale}/{wildcards.shard}"
        " > {log} 2>&1"


rule tensor_meta:
    input:
        images=expand(f"{RESULTS}/tensors/{{{{scale}}}}/{{shard}}.images.npy", shard=SHARDS),
        masks=expand(f"{RESULTS}/tensors/{{{{scale}}}}/{{shard}}.mask.npy", shard=SHARDS),
    output:
        f"{RESULTS}/tensors/{{scale}}/meta.json",
    params:
        scale=scale_arcsec,
    log:
        f"{RESULTS}/logs/tensor_meta/{{scale}}.log",
    conda:
        "../envs/imaging.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m workflow_scripts.tensors meta --scale {params.scale} --inputs {input.images} --out {output}"
        " > {log} 2>&1"

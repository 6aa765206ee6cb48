rule dataset_manifest:
    input:
        unpack(get_dataset_manifest_input),
    output:
        "results/datasets/{dataset}/manifest.tsv",
    log:
        "logs/dataset_manifest/{dataset}.log",
    benchmark:
        "logs/benchmarks/dataset_manifest/{dataset}.tsv"
    wildcard_constraints:
        dataset="|".join(SOURCED) or "^$",
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        source=get_dataset_manifest_source,
    shell:
        "synface manifest {params.source} --out {output} > {log} 2>&1"


rule mixed_manifest:
    input:
        get_mixed_manifest_input,
    output:
        "results/datasets/{mixed}/manifest.tsv",
    log:
        "logs/mixed_manifest/{mixed}.log",
    benchmark:
        "logs/benchmarks/mixed_manifest/{mixed}.tsv"
    wildcard_constraints:
        mixed="|".join(MIXED) or "^$",
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        parts=lambda wildcards, input: " ".join(f"--part {path}" for path in input),
    shell:
        "synface mix-manifests {params.parts} --out {output} > {log} 2>&1"

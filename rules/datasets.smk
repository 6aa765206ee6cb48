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
        "synface manifest {params.source:q} --out {output:q} > {log:q} 2>&1"

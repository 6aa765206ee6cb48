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


rule align_faces:
    input:
        images=get_align_faces_input,
    output:
        images=directory("results/aligned/{faces}/images"),
        rejected="results/aligned/{faces}/rejected.tsv",
    log:
        "logs/align_faces/{faces}.log",
    benchmark:
        "logs/benchmarks/align_faces/{faces}.tsv"
    wildcard_constraints:
        faces="|".join(ALIGNED) or "^$",
    conda:
        "../envs/synface.yaml"
    threads: config["embedding"]["threads"]
    resources:
        mem_mb=4000,
        runtime=720,
    params:
        face_size=config["face_size"],
        settings=get_align_faces_params(),
        out_dir=output_folder("rejected"),
    shell:
        "synface align-faces --images {input.images:q} --out-dir {params.out_dir:q} "
        "--face-size {params.face_size:q} --settings {params.settings:q} "
        "--threads {threads:q} > {log:q} 2>&1"


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
        parts=lambda wildcards, input: [arg for path in input for arg in ("--part", path)],
    shell:
        "synface mix-manifests {params.parts:q} --out {output:q} > {log:q} 2>&1"

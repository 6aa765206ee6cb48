rule synthesize:
    input:
        unpack(get_first_stage_files),
        unpack(get_synthesize_judge),
        contexts=get_pool_contexts,
        ldm=get_ldm_checkpoint(),
    output:
        shard="results/synthetic/pools/{pool}/shards/{first}-{last}.json",
    log:
        "logs/synthesize/{pool}/{first}-{last}.log",
    benchmark:
        "logs/benchmarks/synthesize/{pool}/{first}-{last}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["synthesis"]["threads"]
    resources:
        gpu=min(config["synthesis"]["gpus"], 1),
        mem_mb=8000,
        runtime=get_synthesize_runtime,
    params:
        first_stage=input_folder("spec"),
        images_per_identity=lambda wildcards: POOLS[wildcards.pool]["images_per_identity"],
        out_dir=lambda wildcards, output: pool_images(output.shard),
        face_size=config["face_size"],
        settings=get_synthesis_params,
        judge=get_synthesize_judge_args,
    shell:
        "synface synthesize --ldm {input.ldm:q} --first-stage {params.first_stage:q} "
        "--contexts {input.contexts:q} "
        "--first {wildcards.first:q} --last {wildcards.last:q} "
        "--images-per-identity {params.images_per_identity:q} "
        "--out-dir {params.out_dir:q} --done-marker {output.shard:q} "
        "--face-size {params.face_size:q} --settings {params.settings:q} {params.judge:q} "
        "--threads {threads:q} > {log:q} 2>&1"


rule synthetic_set_manifest:
    input:
        unpack(get_set_manifest_input),
    output:
        dataset="results/datasets/{set}/manifest.tsv",
        synthetic="results/synthetic/{set}/manifest.tsv",
    log:
        "logs/synthetic_set_manifest/{set}.log",
    benchmark:
        "logs/benchmarks/synthetic_set_manifest/{set}.tsv"
    wildcard_constraints:
        set="|".join(SYNTHETIC) or "^$",
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        identities=lambda wildcards: config["datasets"][wildcards.set]["identities"],
        args=get_set_manifest_args,
    shell:
        "synface set-manifest --out {output.dataset:q} --identities {params.identities:q} "
        "{params.args:q} --synthetic-out {output.synthetic:q} > {log:q} 2>&1"


rule context_faces_manifest:
    input:
        faces=rules.select_contexts.output.faces,
    output:
        dataset="results/datasets/{control}/manifest.tsv",
    log:
        "logs/context_faces_manifest/{control}.log",
    benchmark:
        "logs/benchmarks/context_faces_manifest/{control}.tsv"
    wildcard_constraints:
        control="|".join(CONTEXT_ONLY) or "^$",
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        identities=lambda wildcards: config["datasets"][wildcards.control]["identities"],
        repeats=lambda wildcards: config["datasets"][wildcards.control]["oversample"],
    shell:
        "synface set-manifest --out {output.dataset:q} --identities {params.identities:q} "
        "--faces {input.faces:q} --repeats {params.repeats:q} > {log:q} 2>&1"


rule identity_consistency:
    input:
        embeddings=rules.extract_embeddings.output.embeddings.format(faceset="synthetic_{set}"),
        manifest=rules.synthetic_set_manifest.output.synthetic,
    output:
        json=report(
            "results/consistency/{set}.json",
            caption="../workflow/report/consistency.rst",
            category="Synthetic data",
        ),
        png=report(
            "results/consistency/{set}.png",
            caption="../workflow/report/consistency.rst",
            category="Synthetic data",
        ),
    log:
        "logs/identity_consistency/{set}.log",
    benchmark:
        "logs/benchmarks/identity_consistency/{set}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        embeddings=input_folder("embeddings"),
    shell:
        "synface identity-consistency --embeddings {params.embeddings:q} "
        "--manifest {input.manifest:q} --out-json {output.json:q} --out-png {output.png:q} "
        "> {log:q} 2>&1"

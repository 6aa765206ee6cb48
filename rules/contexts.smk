rule make_context_candidates:
    input:
        unpack(get_make_context_candidates_input),
    output:
        **get_make_context_candidates_output(),
    log:
        "logs/make_context_candidates/make_context_candidates.log",
    benchmark:
        "logs/benchmarks/make_context_candidates/make_context_candidates.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["synthesis"]["threads"]
    resources:
        gpu=min(config["synthesis"]["gpus"], 1),
        mem_mb=8000,
        runtime=240,
    params:
        args=get_make_context_candidates_args,
        out_dir=output_folder("manifest"),
    shell:
        "synface make-contexts {params.args} --out-dir {params.out_dir} "
        "--threads {threads} > {log} 2>&1"


rule uniform_contexts:
    output:
        contexts="results/contexts/uniform/contexts.npy",
    log:
        "logs/uniform_contexts/uniform_contexts.log",
    benchmark:
        "logs/benchmarks/uniform_contexts/uniform_contexts.tsv"
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        identities=get_uniform_identities(),
        seed=config["contexts"]["seed"],
        out_dir=output_folder("contexts"),
    shell:
        "synface make-contexts --source uniform --count {params.identities} --seed {params.seed} "
        "--out-dir {params.out_dir} > {log} 2>&1"


rule select_contexts:
    input:
        unpack(get_first_stage_files),
        **get_embedding_files(),
        embeddings=get_candidate_embeddings(),
        manifest=rules.make_context_candidates.output.manifest,
        ldm=get_ldm_checkpoint(),
    output:
        contexts="results/contexts/selected/contexts.npy",
        faces="results/contexts/selected/faces.tsv",
        selected="results/contexts/selected/selected.tsv",
        dropped="results/contexts/selected/dropped.tsv",
    log:
        "logs/select_contexts/select_contexts.log",
    benchmark:
        "logs/benchmarks/select_contexts/select_contexts.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["synthesis"]["threads"]
    resources:
        gpu=min(config["synthesis"]["gpus"], 1),
        mem_mb=8000,
        runtime=600,
    params:
        candidates=input_folder("embeddings"),
        first_stage=input_folder("spec"),
        settings=get_select_contexts_params(),
        out_dir=output_folder("contexts"),
    shell:
        "synface select-contexts --candidates {params.candidates} --manifest {input.manifest} "
        "--ldm {input.ldm} --first-stage {params.first_stage} "
        "--embedding-weights {input.weights} --out-dir {params.out_dir} "
        "--settings '{params.settings}' --threads {threads} > {log} 2>&1"


rule spread_contexts:
    input:
        contexts=rules.select_contexts.output.contexts,
    output:
        contexts="results/contexts/spread/contexts.npy",
        summary="results/contexts/spread/spread.json",
    log:
        "logs/spread_contexts/spread_contexts.log",
    benchmark:
        "logs/benchmarks/spread_contexts/spread_contexts.tsv"
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=settings(config["contexts"]["spread"]),
        out_dir=output_folder("contexts"),
    shell:
        "synface spread-contexts --contexts {input.contexts} --out-dir {params.out_dir} "
        "--settings '{params.settings}' > {log} 2>&1"

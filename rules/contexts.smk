rule make_context_candidates:
    input:
        unpack(get_make_context_candidates_input),
    output:
        shard="results/contexts/candidates/shards/{first}-{last}.tsv",
    log:
        "logs/make_context_candidates/{first}-{last}.log",
    benchmark:
        "logs/benchmarks/make_context_candidates/{first}-{last}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["synthesis"]["threads"]
    resources:
        gpu=min(config["synthesis"]["gpus"], 1),
        mem_mb=8000,
        runtime=get_make_context_candidates_runtime,
    params:
        args=get_make_context_candidates_args,
        out_dir=get_candidates_folder,
    shell:
        "synface make-contexts {params.args:q} --first {wildcards.first:q} "
        "--last {wildcards.last:q} --out-dir {params.out_dir:q} --done-marker {output.shard:q} "
        "--threads {threads:q} > {log:q} 2>&1"


rule context_candidates:
    input:
        unpack(get_context_candidates_input),
    output:
        **get_context_candidates_output(),
    log:
        "logs/context_candidates/context_candidates.log",
    benchmark:
        "logs/benchmarks/context_candidates/context_candidates.tsv"
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        command=get_context_candidates_command,
    shell:
        "synface {params.command:q} > {log:q} 2>&1"


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
        "synface make-contexts --source uniform --count {params.identities:q} "
        "--seed {params.seed:q} --out-dir {params.out_dir:q} > {log:q} 2>&1"


rule probe_contexts:
    input:
        unpack(get_first_stage_files),
        **get_embedding_files(),
        embeddings=get_candidate_embeddings(),
        ldm=get_ldm_checkpoint(),
    output:
        scores="results/contexts/probes/{first}-{last}.tsv",
    log:
        "logs/probe_contexts/{first}-{last}.log",
    benchmark:
        "logs/benchmarks/probe_contexts/{first}-{last}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["synthesis"]["threads"]
    resources:
        gpu=min(config["synthesis"]["gpus"], 1),
        mem_mb=8000,
        runtime=get_probe_contexts_runtime,
    params:
        candidates=input_folder("embeddings"),
        first_stage=input_folder("spec"),
        settings=get_probe_contexts_params(),
    shell:
        "synface probe-contexts --candidates {params.candidates:q} "
        "--first {wildcards.first:q} --last {wildcards.last:q} --ldm {input.ldm:q} "
        "--first-stage {params.first_stage:q} --embedding-weights {input.weights:q} "
        "--out {output.scores:q} --settings {params.settings:q} --threads {threads:q} "
        "> {log:q} 2>&1"


rule select_contexts:
    input:
        embeddings=get_candidate_embeddings(),
        manifest=rules.context_candidates.output.manifest,
        probes=get_probe_shards,
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
        mem_mb=8000,
        runtime=60,
    params:
        candidates=input_folder("embeddings"),
        settings=get_select_contexts_params(),
        out_dir=output_folder("contexts"),
    shell:
        "synface select-contexts --candidates {params.candidates:q} "
        "--manifest {input.manifest:q} --probes {input.probes:q} "
        "--out-dir {params.out_dir:q} --settings {params.settings:q} --threads {threads:q} "
        "> {log:q} 2>&1"


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
        "synface spread-contexts --contexts {input.contexts:q} --out-dir {params.out_dir:q} "
        "--settings {params.settings:q} > {log:q} 2>&1"

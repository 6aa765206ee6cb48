rule train_autoencoder:
    input:
        manifest=f"results/datasets/{config['ldm']['dataset']}/manifest.tsv",
    output:
        encoder="results/first_stage/first_stage_encoder_state_dict.pt",
        decoder="results/first_stage/first_stage_decoder_state_dict.pt",
    log:
        "logs/train_autoencoder/train_autoencoder.log",
    benchmark:
        "logs/benchmarks/train_autoencoder/train_autoencoder.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["first_stage"]["threads"]
    resources:
        gpu=min(config["ldm"]["gpus"], 1),
        mem_mb=8000,
        runtime=600,
    params:
        settings=get_train_autoencoder_params(),
        run_dir="results/runs/first_stage",
    shell:
        "synface train-autoencoder --manifest {input.manifest} --out-dir results/first_stage "
        "--run-dir {params.run_dir} --settings '{params.settings}' --threads {threads} "
        "> {log} 2>&1"


rule encode_latents:
    input:
        unpack(get_first_stage_files),
        manifest="results/datasets/{dataset}/manifest.tsv",
        embeddings="results/embeddings/{dataset}/embeddings.npy",
    output:
        latents="results/latents/{dataset}/latents.npy",
        contexts="results/latents/{dataset}/contexts.npy",
        info="results/latents/{dataset}/latents.json",
    log:
        "logs/encode_latents/{dataset}.log",
    benchmark:
        "logs/benchmarks/encode_latents/{dataset}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["ldm"]["threads"]
    resources:
        gpu=min(config["ldm"]["gpus"], 1),
        mem_mb=16000,
        runtime=600,
    params:
        first_stage=get_first_stage_dir(),
        spec=get_first_stage_spec(),
        image_size=config["ldm"]["image_size"],
    shell:
        "synface encode-latents --manifest {input.manifest} "
        "--embeddings results/embeddings/{wildcards.dataset} "
        "--first-stage {params.first_stage} --first-stage-spec '{params.spec}' "
        "--image-size {params.image_size} --out-dir results/latents/{wildcards.dataset} "
        "--threads {threads} > {log} 2>&1"


rule train_ldm:
    input:
        unpack(get_first_stage_files),
        latents=f"results/latents/{config['ldm']['dataset']}/latents.npy",
        contexts=f"results/latents/{config['ldm']['dataset']}/contexts.npy",
    output:
        checkpoint="results/ldm/ema_averaged_model.ckpt",
        spec="results/ldm/ema_averaged_model.json",
    log:
        "logs/train_ldm/train_ldm.log",
    benchmark:
        "logs/benchmarks/train_ldm/train_ldm.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["ldm"]["threads"]
    resources:
        gpu=config["ldm"]["gpus"],
        mem_mb=32000,
        runtime=4320,
    params:
        launcher=get_train_ldm_launcher(),
        settings=get_train_ldm_params(),
        first_stage=get_first_stage_dir(),
        spec=get_first_stage_spec(),
        latents=folder_of("latents"),
        # Outside the declared outputs: a rerun resumes from here (specs/snakemake.md §5.4).
        run_dir="results/runs/ldm",
    shell:
        "{params.launcher} train-ldm --latents {params.latents} --out {output.checkpoint} "
        "--run-dir {params.run_dir} --settings '{params.settings}' "
        "--first-stage {params.first_stage} --first-stage-spec '{params.spec}' "
        "--threads {threads} > {log} 2>&1"


rule identity_check:
    input:
        unpack(get_first_stage_files),
        **get_embedding_files(),
        ldm=get_ldm_checkpoint(),
        contexts="results/embeddings/heldout/embeddings.npy",
    output:
        json=report(
            "results/ldm/identity_check.json",
            caption="../workflow/report/identity_check.rst",
            category="Generator",
        ),
        grid="results/ldm/identity_check.png",
    log:
        "logs/identity_check/identity_check.log",
    benchmark:
        "logs/benchmarks/identity_check/identity_check.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["ldm"]["threads"]
    resources:
        gpu=min(config["ldm"]["gpus"], 1),
        mem_mb=8000,
        runtime=120,
    params:
        first_stage=get_first_stage_dir(),
        spec=get_first_stage_spec(),
        settings=get_identity_check_params(),
    shell:
        "synface check-identity --ldm {input.ldm} --first-stage {params.first_stage} "
        "--first-stage-spec '{params.spec}' --embedding-weights {input.weights} "
        "--contexts results/embeddings/heldout --out {output.json} "
        "--settings '{params.settings}' --threads {threads} > {log} 2>&1"

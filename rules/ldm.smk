rule train_autoencoder:
    input:
        manifest=f"results/datasets/{config['ldm']['dataset']}/manifest.tsv",
    output:
        encoder="results/first_stage/first_stage_encoder_state_dict.pt",
        decoder="results/first_stage/first_stage_decoder_state_dict.pt",
        spec="results/first_stage/first_stage.json",
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
        out_dir=output_folder("spec"),
        run_dir="results/runs/first_stage",
    shell:
        "synface train-autoencoder --manifest {input.manifest:q} --out-dir {params.out_dir:q} "
        "--run-dir {params.run_dir:q} --settings {params.settings:q} --threads {threads:q} "
        "> {log:q} 2>&1"


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
        first_stage=input_folder("spec"),
        embeddings=input_folder("embeddings"),
        image_size=config["ldm"]["image_size"],
        out_dir=output_folder("latents"),
    shell:
        "synface encode-latents --manifest {input.manifest:q} --embeddings {params.embeddings:q} "
        "--first-stage {params.first_stage:q} --image-size {params.image_size:q} "
        "--out-dir {params.out_dir:q} --threads {threads:q} > {log:q} 2>&1"


rule train_ldm:
    input:
        unpack(get_first_stage_files),
        latents=rules.encode_latents.output.latents.format(dataset=config["ldm"]["dataset"]),
        contexts=rules.encode_latents.output.contexts.format(dataset=config["ldm"]["dataset"]),
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
        launcher=launcher("ldm"),
        settings=get_train_ldm_params(),
        first_stage=input_folder("spec"),
        latents=input_folder("latents"),
        # Outside the declared outputs: Snakemake keeps it, so a rerun resumes from here.
        run_dir="results/runs/ldm",
    shell:
        "{params.launcher:q} train-ldm --latents {params.latents:q} --out {output.checkpoint:q} "
        "--run-dir {params.run_dir:q} --settings {params.settings:q} "
        "--first-stage {params.first_stage:q} --threads {threads:q} > {log:q} 2>&1"


rule identity_check:
    input:
        unpack(get_first_stage_files),
        **get_embedding_files(),
        ldm=get_ldm_checkpoint(),
        contexts=rules.extract_embeddings.output.embeddings.format(faceset="heldout"),
    output:
        json=report(
            "results/ldm/identity_check.json",
            caption="../workflow/report/identity_check.rst",
            category="Generator",
        ),
        grid=report(
            "results/ldm/identity_check.png",
            caption="../workflow/report/identity_check.rst",
            category="Generator",
        ),
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
        first_stage=input_folder("spec"),
        contexts=input_folder("contexts"),
        settings=get_identity_check_params(),
    shell:
        "synface check-identity --ldm {input.ldm:q} --first-stage {params.first_stage:q} "
        "--embedding-weights {input.weights:q} --contexts {params.contexts:q} "
        "--out {output.json:q} --settings {params.settings:q} --threads {threads:q} > {log:q} 2>&1"

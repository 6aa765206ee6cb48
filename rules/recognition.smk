rule train_recognition:
    input:
        index="results/tfrecords/{dataset}/TFR-{dataset}.txt",
        shards="results/tfrecords/{dataset}/TFR-{dataset}",
    output:
        backbone="results/recognition/{dataset}/backbone.pth",
        spec="results/recognition/{dataset}/backbone.json",
    log:
        "logs/train_recognition/{dataset}.log",
    benchmark:
        "logs/benchmarks/train_recognition/{dataset}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["recognition"]["threads"]
    resources:
        gpu=config["recognition"]["gpus"],
        mem_mb=16000,
        runtime=2880,
    params:
        settings=get_train_recognition_params(),
        launcher=get_train_recognition_launcher(),
        # Checkpoints live outside the declared outputs, so a rerun resumes instead of
        # starting over (Snakemake deletes outputs before a job runs).
        run_dir="results/runs/recognition/{dataset}",
    shell:
        "{params.launcher} train-recognition --index {input.index} "
        "--data-root results/tfrecords/{wildcards.dataset} --out {output.backbone} "
        "--run-dir {params.run_dir} --settings '{params.settings}' --threads {threads} "
        "> {log} 2>&1"

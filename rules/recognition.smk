rule train_recognition:
    input:
        index=rules.pack_tfrecords.output.index,
        shards=rules.pack_tfrecords.output.shards,
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
        settings=get_train_recognition_params,
        launcher=launcher("recognition"),
        data_root=input_folder("index"),
        # Checkpoints live outside the declared outputs, so a rerun resumes instead of
        # starting over (Snakemake deletes outputs before a job runs).
        run_dir="results/runs/recognition/{dataset}",
    shell:
        "{params.launcher:q} train-recognition --index {input.index:q} "
        "--data-root {params.data_root:q} --out {output.backbone:q} "
        "--run-dir {params.run_dir:q} --settings {params.settings:q} --threads {threads:q} "
        "> {log:q} 2>&1"


# One more training of a dataset's model per recognition.seeds entry (the table's mean ± std).
use rule train_recognition as train_recognition_seed with:
    output:
        backbone="results/recognition/{dataset}-seed{seed}/backbone.pth",
        spec="results/recognition/{dataset}-seed{seed}/backbone.json",
    log:
        "logs/train_recognition_seed/{dataset}-seed{seed}.log",
    benchmark:
        "logs/benchmarks/train_recognition_seed/{dataset}-seed{seed}.tsv"
    params:
        settings=get_train_recognition_seed_params,
        launcher=launcher("recognition"),
        data_root=input_folder("index"),
        run_dir="results/runs/recognition/{dataset}-seed{seed}",

rule pack_tfrecords:
    input:
        manifest="results/datasets/{dataset}/manifest.tsv",
    output:
        shards=directory("results/tfrecords/{dataset}/TFR-{dataset}"),
        index="results/tfrecords/{dataset}/TFR-{dataset}.txt",
        rejected="results/tfrecords/{dataset}/rejected.tsv",
        summary="results/tfrecords/{dataset}/pack.json",
    log:
        "logs/pack_tfrecords/{dataset}.log",
    benchmark:
        "logs/benchmarks/pack_tfrecords/{dataset}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["packing"]["threads"]
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        image_size=config["face_size"],
        records_per_shard=config["packing"]["records_per_shard"],
        out_dir=output_folder("index"),
        name=lambda wildcards, output: Path(output.shards).name,
    shell:
        "synface pack-tfrecords --manifest {input.manifest:q} "
        "--out-dir {params.out_dir:q} --name {params.name:q} "
        "--image-size {params.image_size:q} --records-per-shard {params.records_per_shard:q} "
        "--threads {threads:q} > {log:q} 2>&1"

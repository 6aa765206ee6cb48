rule export_embedding_model:
    input:
        **get_embedding_files(),
    output:
        model="results/embedding/model.onnx",
    log:
        "logs/export_embedding_model/export_embedding_model.log",
    benchmark:
        "logs/benchmarks/export_embedding_model/export_embedding_model.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["embedding"]["threads"]
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "synface export-embedding-model --weights {input.weights:q} --out {output.model:q} "
        "--threads {threads:q} > {log:q} 2>&1"


rule extract_embeddings:
    input:
        model=rules.export_embedding_model.output.model,
        manifest=get_faceset_manifest,
    output:
        embeddings="results/embeddings/{faceset}/embeddings.npy",
        names="results/embeddings/{faceset}/names.txt",
    log:
        "logs/extract_embeddings/{faceset}.log",
    benchmark:
        "logs/benchmarks/extract_embeddings/{faceset}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["embedding"]["threads"]
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        batch_size=config["embedding"]["batch_size"],
        out_dir=output_folder("embeddings"),
    shell:
        "synface extract-embeddings --model {input.model:q} --manifest {input.manifest:q} "
        "--out-dir {params.out_dir:q} --batch-size {params.batch_size:q} "
        "--threads {threads:q} > {log:q} 2>&1"

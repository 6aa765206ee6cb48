rule demo_world:
    output:
        manifest="results/demo_world/train/manifest.tsv",
        images=directory("results/demo_world/train/images"),
        heldout=directory("results/demo_world/heldout/images"),
        heldout_manifest="results/demo_world/heldout/manifest.tsv",
        packs=expand("results/demo_world/benchmarks/{name}.bin", name=BENCHMARKS),
        info="results/demo_world/world.json",
    log:
        "logs/demo_world/demo_world.log",
    benchmark:
        "logs/benchmarks/demo_world/demo_world.tsv"
    conda:
        "../envs/synface.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        settings=get_demo_world_params(),
        out=output_folder("info"),
    shell:
        "synface demo-world --out {params.out:q} --settings {params.settings:q} "
        "--threads {threads:q} > {log:q} 2>&1"

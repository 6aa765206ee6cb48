# The report's figures: each drawn by one `synface plot-*` job from the data files a run wrote,
# so a changed file gives a changed figure. Cheap (about a second each), so `all` makes them and
# `snakemake --report` shows them beside the rule graph and runtimes Snakemake adds itself.


rule plot_recognition_training:
    input:
        get_shown_backbones(),
    output:
        report(
            "results/figures/recognition_training.png",
            caption="../workflow/report/recognition_training.rst",
            category="Training",
            subcategory="Recognition",
        ),
    log:
        "logs/plot_recognition_training/plot_recognition_training.log",
    benchmark:
        "logs/benchmarks/plot_recognition_training/plot_recognition_training.tsv"
    localrule: True
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        logs=get_recognition_training_logs(),
        title="recognition training",
    shell:
        "synface plot-curves {params.logs:q} --title {params.title:q} "
        "--out {output:q} > {log:q} 2>&1"


rule plot_ldm_training:
    input:
        rules.train_ldm.output.checkpoint,
    output:
        curves=report(
            "results/figures/ldm_training.png",
            caption="../workflow/report/ldm_training.rst",
            category="Training",
            subcategory="Generator (LDM)",
        ),
        previews=report(
            "results/figures/ldm_previews.png",
            caption="../workflow/report/ldm_previews.rst",
            category="Training",
            subcategory="Generator (LDM)",
        ),
    log:
        "logs/plot_ldm_training/plot_ldm_training.log",
    benchmark:
        "logs/benchmarks/plot_ldm_training/plot_ldm_training.tsv"
    localrule: True
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        run_dir=rules.train_ldm.params.run_dir,
        log=f"LDM={rules.train_ldm.params.run_dir}/loss.tsv",
        title="LDM training",
    shell:
        "synface plot-curves --log {params.log:q} --title {params.title:q} "
        "--out {output.curves:q} > {log:q} 2>&1 && "
        "synface plot-previews --run-dir {params.run_dir:q} --out {output.previews:q} "
        ">> {log:q} 2>&1"


rule plot_roc:
    input:
        **get_plot_roc_input(),
    output:
        report(
            "results/figures/roc.png",
            caption="../workflow/report/roc.rst",
            category="Results",
        ),
    log:
        "logs/plot_roc/plot_roc.log",
    benchmark:
        "logs/benchmarks/plot_roc/plot_roc.tsv"
    localrule: True
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        rows=get_evaluation_rows,
    shell:
        "synface plot-roc {params.rows:q} --out {output:q} > {log:q} 2>&1"


rule plot_samples:
    input:
        unpack(get_plot_samples_input),
    output:
        report(
            "results/figures/samples/{set}.png",
            caption="../workflow/report/samples.rst",
            category="Synthetic data",
            subcategory="{set}",
        ),
    log:
        "logs/plot_samples/{set}.log",
    benchmark:
        "logs/benchmarks/plot_samples/{set}.tsv"
    localrule: True
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        faces=get_plot_samples_faces,
    shell:
        "synface plot-samples --manifest {input.manifest:q} {params.faces:q} "
        "--out {output:q} > {log:q} 2>&1"


rule plot_contexts:
    input:
        candidates=rules.context_candidates.output.manifest,
        selected=rules.select_contexts.output.selected,
        dropped=rules.select_contexts.output.dropped,
    output:
        report(
            "results/figures/contexts.png",
            caption="../workflow/report/contexts.rst",
            category="Synthetic data",
            subcategory="Context selection",
        ),
    log:
        "logs/plot_contexts/plot_contexts.log",
    benchmark:
        "logs/benchmarks/plot_contexts/plot_contexts.tsv"
    localrule: True
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "synface plot-contexts --candidates {input.candidates:q} --selected {input.selected:q} "
        "--dropped {input.dropped:q} --out {output:q} > {log:q} 2>&1"

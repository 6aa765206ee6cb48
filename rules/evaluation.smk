rule evaluate:
    input:
        unpack(get_evaluate_input),
    output:
        json="results/evaluation/{dataset}.json",
    log:
        "logs/evaluate/{dataset}.log",
    benchmark:
        "logs/benchmarks/evaluate/{dataset}.tsv"
    conda:
        "../envs/synface.yaml"
    threads: config["evaluation"]["threads"]
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        packs=get_evaluate_pack_args,
        batch_size=config["evaluation"]["batch_size"],
        precision=config["evaluation"]["precision"],
    shell:
        "synface evaluate --weights {input.weights:q} {params.packs:q} --out {output.json:q} "
        "--batch-size {params.batch_size:q} --precision {params.precision:q} "
        "--threads {threads:q} > {log:q} 2>&1"


use rule evaluate as evaluate_seed with:
    input:
        unpack(get_evaluate_seed_input),
    output:
        json="results/evaluation/{dataset}-seed{seed}.json",
    log:
        "logs/evaluate_seed/{dataset}-seed{seed}.log",
    benchmark:
        "logs/benchmarks/evaluate_seed/{dataset}-seed{seed}.tsv"


rule results_table:
    input:
        unpack(get_results_table_input),
    output:
        markdown=report(
            "results/tables/results.md",
            caption="../workflow/report/results.rst",
            category="Results",
        ),
        csv="results/tables/results.csv",
        json="results/tables/results.json",
        mean_std=report(
            "results/tables/results_mean_std.csv",
            caption="../workflow/report/results.rst",
            category="Results",
        ),
    log:
        "logs/results_table/results_table.log",
    benchmark:
        "logs/benchmarks/results_table/results_table.tsv"
    localrule: True
    conda:
        "../envs/synface.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        rows=get_results_table_rows,
    shell:
        "synface results-table {params.rows:q} --markdown {output.markdown:q} "
        "--csv {output.csv:q} --json {output.json:q} --mean-std-csv {output.mean_std:q} "
        "> {log:q} 2>&1"

# `make demo-weights`: remake the shipped demo-world weights with this workflow's own rules.
# Defined only for a demo-world config that trains its components (use_demo_weights: false).
if not config["use_demo_weights"] and "demo_world" in config:

    rule demo_weights_commands:
        output:
            commands="results/demo_weights/commands.json",
        log:
            "logs/demo_weights_commands/demo_weights_commands.log",
        benchmark:
            "logs/benchmarks/demo_weights_commands/demo_weights_commands.tsv"
        localrule: True
        conda:
            "../envs/synface.yaml"
        threads: 1
        resources:
            mem_mb=500,
            runtime=5,
        params:
            commands=get_demo_weights_commands,
        run:
            Path(output.commands).write_text(params.commands)

    rule pack_demo_weights:
        input:
            **get_embedding_files(),
            **dict(rules.train_autoencoder.output.items()),
            ldm=rules.train_ldm.output.checkpoint,
            identity_check=rules.identity_check.output.json,
            commands=rules.demo_weights_commands.output.commands,
        output:
            provenance="demo_weights/PROVENANCE.json",
        log:
            "logs/pack_demo_weights/pack_demo_weights.log",
        benchmark:
            "logs/benchmarks/pack_demo_weights/pack_demo_weights.tsv"
        localrule: True
        conda:
            "../envs/synface.yaml"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=10,
        params:
            settings=get_demo_weights_config(),
            made_on=get_machine_description(),
            first_stage=input_folder("spec"),
            out=output_folder("provenance"),
        shell:
            "synface pack-demo-weights --embedding-weights {input.weights:q} "
            "--first-stage {params.first_stage:q} --ldm {input.ldm:q} "
            "--identity-check {input.identity_check:q} --settings {params.settings:q} "
            "--commands {input.commands:q} --benchmarks logs/benchmarks "
            "--made-on {params.made_on:q} --out {params.out:q} > {log:q} 2>&1"

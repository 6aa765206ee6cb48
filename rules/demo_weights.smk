# `make demo-weights`: remake the shipped demo-world weights with this workflow's own rules.
# Defined only for a demo-world config that trains its components (use_demo_weights: false).
if not config["use_demo_weights"] and "demo_world" in config:

    rule demo_weights_commands:
        output:
            "results/demo_weights/commands.json",
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
            Path(output[0]).write_text(params.commands)

    rule pack_demo_weights:
        input:
            **get_embedding_files(),
            first_stage="results/first_stage/first_stage_encoder_state_dict.pt",
            ldm="results/ldm/ema_averaged_model.ckpt",
            identity_check="results/ldm/identity_check.json",
            commands="results/demo_weights/commands.json",
        output:
            "demo_weights/PROVENANCE.json",
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
        shell:
            "synface pack-demo-weights --embedding-weights {input.weights} "
            "--first-stage results/first_stage --ldm {input.ldm} "
            "--identity-check {input.identity_check} --settings '{params.settings}' "
            "--commands {input.commands} --benchmarks logs/benchmarks "
            "--made-on '{params.made_on}' --out demo_weights > {log} 2>&1"

# synface: synthetic face-recognition data from an identity-conditioned LDM, and the proof of
# its worth (recognition models trained on it, benchmarked like the ADMIS paper).
# `snakemake --cores all` runs the demo world; `--configfile config/frcsyn.yaml` the paper scale.
from snakemake.utils import min_version

min_version("9.20")


# A config given with --configfile is complete on its own (config/frcsyn.yaml, or the demo
# config plus a small diff); the demo default is read only when none is given, so the demo's
# datasets never leak into a paper-scale run through Snakemake's config merging.
if not workflow.overwrite_configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo_world.smk"
include: "rules/datasets.smk"
include: "rules/packing.smk"
include: "rules/recognition.smk"
include: "rules/evaluation.smk"
include: "rules/embeddings.smk"
include: "rules/ldm.smk"
include: "rules/contexts.smk"
include: "rules/synthesis.smk"
include: "rules/demo_weights.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


# Partial targets (README "Running parts of the pipeline"): `snakemake --cores all <name>`.
rule recognition_real:
    input:
        expand(rules.evaluate.output.json, dataset=SOURCED),


rule ldm:
    input:
        get_ldm_checkpoint(),
        get_identity_check_report(),


rule synthetic_sets:
    input:
        expand("results/datasets/{dataset}/manifest.tsv", dataset=[*SYNTHETIC, *CONTEXT_ONLY]),
        get_consistency_reports(),


rule evaluations:
    input:
        rules.results_table.output,

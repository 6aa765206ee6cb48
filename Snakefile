# synface: synthetic face-recognition data from an identity-conditioned LDM, and the proof of
# its worth (recognition models trained on it, benchmarked like the ADMIS paper).
# `snakemake --cores all` runs the demo world; `--configfile config/frcsyn.yaml` the paper scale.
from snakemake.utils import min_version

min_version("9.20")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo_world.smk"
include: "rules/datasets.smk"
include: "rules/packing.smk"
include: "rules/recognition.smk"
include: "rules/evaluation.smk"


rule all:
    input:
        get_final_output(),
    default_target: True

import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from synface.configcheck import ConfigError, read_sources, validate_config
from synface.evaluation.table import COLUMNS as BENCHMARKS

try:
    validate_config(
        config,
        Path(workflow.basedir) / "workflow/schemas/config.schema.yaml",
        {
            **read_sources([Path(path) for path in workflow.configfiles]),
            "--config": workflow.config_settings.overwrite_config,
        },
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None

DATASETS = list(config["datasets"])


wildcard_constraints:
    dataset="|".join(DATASETS),


def is_demo(source):
    return source["source"] == "demo"


def check_real_inputs():
    """Fail at start-up, before any job runs, when user-supplied data is not in place."""
    problems = []
    for name, dataset in config["datasets"].items():
        if is_demo(dataset):
            continue
        folder = Path(dataset.get("path", ""))
        if not dataset.get("path") or not folder.is_dir():
            problems.append(
                f"datasets.{name}: image folder '{folder}' not found. Put the aligned 112x112 "
                f"faces there as <identity>/<n>.jpg (e.g. CASIA-WebFace, see README "
                f"'Running on real data'), or set datasets.{name}.path"
            )
    if not is_demo(config["benchmarks"]):
        folder = Path(config["benchmarks"]["path"])
        missing = [n for n in BENCHMARKS if not (folder / f"{n}.bin").exists()]
        if missing:
            problems.append(
                f"benchmarks: {', '.join(f'{folder}/{n}.bin' for n in missing)} not found. "
                "Copy the insightface verification packs (from the faces_emore / MS1M-ArcFace "
                "download) there, or set benchmarks.path"
            )
    if problems:
        raise WorkflowError("missing real inputs:\n  " + "\n  ".join(problems))


check_real_inputs()


def settings(value):
    """A config section as the one-line JSON the CLI's --settings takes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def get_final_output():
    return [
        "results/tables/results.md",
        "results/tables/results.csv",
        "results/tables/results.json",
    ]


def get_demo_world_params():
    return settings({**config.get("demo_world", {}), "image_size": config["face_size"]})


def get_dataset_manifest_input(wildcards):
    if is_demo(config["datasets"][wildcards.dataset]):
        return {"manifest": "results/demo_world/train/manifest.tsv"}
    return {"images": config["datasets"][wildcards.dataset]["path"]}


def get_dataset_manifest_source(wildcards, input):
    if "manifest" in input.keys():
        return f"--manifest {input.manifest}"
    return f"--images {input.images}"


def get_benchmark_packs():
    if is_demo(config["benchmarks"]):
        return {n: f"results/demo_world/benchmarks/{n}.bin" for n in BENCHMARKS}
    return {n: f"{config['benchmarks']['path']}/{n}.bin" for n in BENCHMARKS}


def get_evaluate_input(wildcards):
    return {
        "weights": rules.train_recognition.output.backbone.format(dataset=wildcards.dataset),
        **get_benchmark_packs(),
    }


def get_evaluate_pack_args(wildcards, input):
    return " ".join(f"--pack {name}={input[name]}" for name in BENCHMARKS)


def get_train_recognition_params():
    recognition = config["recognition"]
    return settings(
        {
            "image_size": config["face_size"],
            **{k: recognition[k] for k in ("backbone", "head", "train", "augment")},
        }
    )


def get_train_recognition_launcher():
    """One process per GPU through torchrun when a job gets several (specs/snakemake.md §4)."""
    gpus = config["recognition"]["gpus"]
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} --module synface.cli"
    return "synface"


def get_results_table_rows(wildcards, input):
    return " ".join(
        f"--row '{config['datasets'][name]['label']}={input[name]}'" for name in DATASETS
    )

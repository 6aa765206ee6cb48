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
        if dataset["source"] != "folder":
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


def folder_of(item):
    """A params function: the folder of input ``item`` (stages take folders, rules track files)."""

    def folder(wildcards, input):
        return str(Path(input[item]).parent)

    return folder


def settings(value):
    """A config section as the one-line JSON the CLI's --settings takes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def get_final_output():
    outputs = [
        "results/tables/results.md",
        "results/tables/results.csv",
        "results/tables/results.json",
    ]
    if config["ldm"]["identity_check"]["faces"]:
        outputs.append("results/ldm/identity_check.json")
    outputs += [f"results/consistency/{name}.json" for name in SYNTHETIC]
    return outputs


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


# --- the generative half -------------------------------------------------------------------

DEMO_WEIGHTS = Path("demo_weights")
FACESETS = [*DATASETS, "heldout"]


def check_demo_weights():
    """The shipped weights fit only the world and architectures they were trained for."""
    provenance_path = DEMO_WEIGHTS / "PROVENANCE.json"
    if not provenance_path.exists():
        raise WorkflowError(
            f"{provenance_path} is missing: run `make demo-weights` to make the demo weights, "
            "or set use_demo_weights: false to train every component in the workflow"
        )
    recorded = json.loads(provenance_path.read_text())["config"]
    for key in ("face_size", "demo_world", "first_stage", "ldm"):
        mine = config.get(key)
        theirs = recorded.get(key)
        if key == "ldm":
            mine = {k: mine[k] for k in ("image_size", "unet")}
            theirs = {k: theirs[k] for k in ("image_size", "unet")}
        elif key == "first_stage":
            mine = {k: mine[k] for k in ("ddconfig", "embed_dim", "n_embed")}
            theirs = {k: theirs[k] for k in ("ddconfig", "embed_dim", "n_embed")}
        if mine != theirs:
            raise WorkflowError(
                f"config key '{key}' differs from the one the shipped demo weights were made "
                f"with ({provenance_path}): restore it, set use_demo_weights: false to train "
                "everything from scratch, or remake the weights with `make demo-weights`"
            )


if config["use_demo_weights"]:
    check_demo_weights()


def component_source(section):
    """'demo' (shipped weights), 'trained' (made by this workflow) or 'file' (user-supplied)."""
    return "demo" if config["use_demo_weights"] else config[section]["source"]


def get_embedding_weights():
    source = component_source("embedding")
    if source == "demo":
        return str(DEMO_WEIGHTS / "embedding" / "backbone.pth")
    if source == "trained":
        return f"results/recognition/{config['embedding']['dataset']}/backbone.pth"
    return config["embedding"]["weights"]


def get_embedding_files():
    weights = get_embedding_weights()
    return {"weights": weights, "spec": str(Path(weights).with_suffix(".json"))}


def get_first_stage_dir():
    source = component_source("first_stage")
    if source == "demo":
        return str(DEMO_WEIGHTS / "first_stage")
    if source == "trained":
        return "results/first_stage"
    return config["first_stage"]["path"]


def get_first_stage_files(wildcards):
    folder = Path(get_first_stage_dir())
    return {
        "encoder": str(folder / "first_stage_encoder_state_dict.pt"),
        "decoder": str(folder / "first_stage_decoder_state_dict.pt"),
    }


def get_first_stage_spec():
    return settings({k: config["first_stage"][k] for k in ("ddconfig", "embed_dim", "n_embed")})


def get_ldm_checkpoint():
    source = component_source("ldm")
    if source == "demo":
        return str(DEMO_WEIGHTS / "ldm" / "ema_averaged_model.ckpt")
    if source == "trained":
        return "results/ldm/ema_averaged_model.ckpt"
    return config["ldm"]["checkpoint"]


def get_faceset_manifest(wildcards):
    if wildcards.faceset == "heldout":
        faces = config["ldm"]["identity_check"]["faces"]
        return "results/demo_world/heldout/manifest.tsv" if faces == "demo" else faces
    if wildcards.faceset == "candidates":
        return "results/contexts/candidates/manifest.tsv"
    if wildcards.faceset.startswith("synthetic_"):
        return f"results/synthetic/{wildcards.faceset.removeprefix('synthetic_')}/manifest.tsv"
    return f"results/datasets/{wildcards.faceset}/manifest.tsv"


def get_train_autoencoder_params():
    first_stage = config["first_stage"]
    spec = {k: first_stage[k] for k in ("ddconfig", "embed_dim", "n_embed")}
    return settings(
        {"spec": spec, "image_size": config["ldm"]["image_size"], **first_stage["train"]}
    )


def get_train_ldm_launcher():
    gpus = config["ldm"]["gpus"]
    if gpus > 1:
        return f"torchrun --standalone --nproc-per-node {gpus} --module synface.cli"
    return "synface"


def get_train_ldm_params():
    return settings({"unet": config["ldm"]["unet"], **config["ldm"]["train"]})


def get_identity_check_params():
    check = dict(config["ldm"]["identity_check"])
    check.pop("faces")
    return settings(check)


def get_demo_weights_config():
    keys = ("face_size", "demo_world", "recognition", "embedding", "first_stage", "ldm")
    return settings({key: config[key] for key in keys})


def get_demo_weights_commands(wildcards):
    """The command templates of the rules that make the shipped components, in order."""
    names = (
        "demo_world",
        "dataset_manifest",
        "pack_tfrecords",
        "train_recognition",
        "export_embedding_model",
        "extract_embeddings",
        "train_autoencoder",
        "encode_latents",
        "train_ldm",
        "identity_check",
    )
    return settings([getattr(rules, name).rule.shellcmd for name in names])


def get_machine_description():
    import os
    import platform

    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{platform.node()}: {os.cpu_count()} CPUs, {device}, torch {torch.__version__}"


# --- synthetic people ------------------------------------------------------------------------

SYNTHETIC = [n for n, d in config["datasets"].items() if d["source"] == "synthetic"]
CONTEXT_ONLY = [n for n, d in config["datasets"].items() if d["source"] == "context_faces"]
SOURCED = [n for n, d in config["datasets"].items() if d["source"] in ("demo", "folder")]
FACESETS.extend(["candidates", *(f"synthetic_{name}" for name in SYNTHETIC)])


wildcard_constraints:
    faceset="|".join(FACESETS),
    set="|".join(SYNTHETIC) or "^$",


def check_synthetic_sets():
    for name in [*SYNTHETIC, *CONTEXT_ONLY]:
        dataset = config["datasets"][name]
        needed = ["identities"]
        if dataset["source"] == "synthetic":
            needed += ["contexts", "images_per_identity"]
        missing = [key for key in needed if key not in dataset]
        if missing:
            raise WorkflowError(
                f"config key datasets.{name} (source {dataset['source']}) needs "
                f"{', '.join(missing)}"
            )


check_synthetic_sets()


def get_selected_identities():
    """How many selected contexts the sets need: the largest set using them."""
    sizes = [
        config["datasets"][n]["identities"]
        for n in [*SYNTHETIC, *CONTEXT_ONLY]
        if config["datasets"][n].get("contexts", "selected") == "selected"
    ]
    return max(sizes, default=0)


def get_uniform_identities():
    sizes = [
        config["datasets"][n]["identities"]
        for n in SYNTHETIC
        if config["datasets"][n]["contexts"] == "uniform"
    ]
    return max(sizes, default=0)


def get_candidates_dir():
    """Candidate embeddings: ADMIS's released ones for a database that ships them, else ours."""
    if config["contexts"]["source"] == "database" and config["contexts"]["embed_npy"]:
        return "results/contexts/candidates/imported"
    return "results/embeddings/candidates"


def get_make_context_candidates_args(wildcards, input):
    contexts = config["contexts"]
    if contexts["source"] == "database":
        args = f"--source database --images {contexts['images']}"
        if contexts["embed_npy"]:
            args += (
                f" --embed-npy {contexts['embed_npy']} --names-pkl {contexts['names_pkl']}"
                " --embeddings-out results/contexts/candidates/imported"
            )
        return args
    common = (
        f"--count {contexts['candidates']} --seed {contexts['seed']} "
        f"--steps {contexts['steps']} --batch-size {contexts['batch_size']} "
        f"--face-size {config['face_size']}"
    )
    if contexts["generator"] == "diffusers":
        return f"--source diffusers --model-dir {contexts['model_dir']} {common}"
    return (
        f"--source ldm --ldm {input.ldm} --first-stage {get_first_stage_dir()} "
        f"--first-stage-spec '{get_first_stage_spec()}' {common}"
    )


def get_make_context_candidates_input(wildcards):
    if config["contexts"]["source"] == "unconditional" and config["contexts"]["generator"] == "ldm":
        return {"ldm": get_ldm_checkpoint(), **get_first_stage_files(wildcards)}
    return {}


def get_select_contexts_params():
    return settings({"identities": get_selected_identities(), **config["contexts"]["selection"]})


def pool_of(name):
    """Sets with the same contexts and images per identity share one pool of generated faces:
    the noise of image k of identity i depends only on (seed, i, k), so a 100-identity set is
    the first 100 identities of a 300-identity one, and is not generated twice."""
    dataset = config["datasets"][name]
    return f"{dataset['contexts']}-{dataset['images_per_identity']}"


POOLS = {}
for _name in SYNTHETIC:
    POOLS[pool_of(_name)] = max(
        POOLS.get(pool_of(_name), 0), config["datasets"][_name]["identities"]
    )


wildcard_constraints:
    pool="|".join(POOLS) or "^$",


def pool_shards(pool):
    from synface.shards import shard_ranges

    return shard_ranges(POOLS[pool], config["synthesis"]["ids_per_shard"])


def get_pool_contexts(wildcards):
    if wildcards.pool.startswith("uniform-"):
        return "results/contexts/uniform/contexts.npy"
    return "results/contexts/selected/contexts.npy"


def get_pool_images_per_identity(wildcards):
    return int(wildcards.pool.rsplit("-", 1)[1])


def get_set_shards(wildcards):
    """The pool's shards holding the set's identities."""
    pool = pool_of(wildcards.set)
    identities = config["datasets"][wildcards.set]["identities"]
    return [
        f"results/synthetic/pools/{pool}/shards/{r.start}-{r.stop}.json"
        for r in pool_shards(pool)
        if r.start < identities
    ]


def get_synthesis_params():
    keys = ("seed", "sampler", "steps", "guidance_scale", "eta", "batch_size")
    return settings({key: config["synthesis"][key] for key in keys})


def get_set_manifest_input(wildcards):
    inputs = {"shards": get_set_shards(wildcards)}
    if config["datasets"][wildcards.set].get("oversample", 0):
        inputs["faces"] = "results/contexts/selected/faces.tsv"
    return inputs


def get_set_manifest_args(wildcards, input):
    dataset = config["datasets"][wildcards.set]
    args = f"--images results/synthetic/pools/{pool_of(wildcards.set)}/images"
    if dataset.get("oversample", 0):
        args += f" --faces {input.faces} --repeats {dataset['oversample']}"
    return args

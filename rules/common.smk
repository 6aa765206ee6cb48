import json
import math
from pathlib import Path

from snakemake.exceptions import WorkflowError

from synface.configcheck import ConfigError, config_sources, validate_config
from synface.evaluation.table import COLUMNS as BENCHMARKS
from synface.recognition.switches import augment_record

# The checkout: the schema and the shipped demo weights are found beside the Snakefile, so
# `snakemake -s <checkout>/Snakefile --directory <elsewhere>` works. Results and user data
# (resources/) are relative to the working directory.
CHECKOUT = Path(workflow.basedir)
DEMO_WEIGHTS = CHECKOUT / "demo_weights"

try:
    validate_config(
        config,
        CHECKOUT / "workflow/schemas/config.schema.yaml",
        config_sources(workflow.configfiles, workflow.config_settings.overwrite_config),
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None

DATASETS = list(config["datasets"])
SYNTHETIC = [n for n, d in config["datasets"].items() if d["source"] == "synthetic"]
CONTEXT_ONLY = [n for n, d in config["datasets"].items() if d["source"] == "context_faces"]
SOURCED = [n for n, d in config["datasets"].items() if d["source"] in ("demo", "folder")]
# Face folders aligned to the ArcFace template before use: datasets with `align: true`, and the
# context database (a name no dataset can take: dataset names have no hyphen).
CONTEXT_DATABASE = "context-database"
ALIGNED = [n for n, d in config["datasets"].items() if d["source"] == "folder" and d["align"]]
if config["contexts"]["source"] == "database" and config["contexts"]["align"]:
    ALIGNED.append(CONTEXT_DATABASE)
    if config["contexts"]["embed_npy"]:
        raise WorkflowError(
            "contexts.align: true and contexts.embed_npy are set: ADMIS's embeddings describe its "
            "own faces, not new aligned copies. Set contexts.align: false to use them, or "
            "contexts.embed_npy: null to embed the aligned faces"
        )
MIXED = [n for n, d in config["datasets"].items() if d["source"] == "mixed"]
# recognition.seeds: each dataset's model trained (and evaluated) once per seed; [] = once, with
# recognition.train.seed, at the plain paths.
SEEDS = config["recognition"]["seeds"]
FACESETS = [*DATASETS, "heldout", "candidates", *(f"synthetic_{name}" for name in SYNTHETIC)]


wildcard_constraints:
    dataset="|".join(DATASETS),
    faceset="|".join(FACESETS),
    set="|".join(SYNTHETIC) or "^$",
    seed=r"\d+",


def is_demo(source):
    return source["source"] == "demo"


def input_folder(key):
    """A params function: the folder of input ``key`` (stages take folders, rules track files)."""

    def folder(wildcards, input):
        return str(Path(input[key]).parent)

    return folder


def output_folder(key):
    """A params function: the folder of output ``key``, where a stage writes its files."""

    def folder(wildcards, output):
        return str(Path(output[key]).parent)

    return folder


# Shell commands get every value through Snakemake's quoting ({x:q}); a helper that gives several
# arguments returns them as a list, whose items {x:q} quotes one by one.


def settings(value):
    """A config section as the one-line JSON the CLI's --settings takes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def launcher(section):
    """One process per GPU through torchrun when a job gets several, on GPUs no other running
    job holds (``synface gpu-slots`` sets CUDA_VISIBLE_DEVICES before torchrun starts); plain
    synface otherwise, which takes its one GPU itself."""
    gpus = config[section]["gpus"]
    if gpus > 1:
        return [
            *("synface", "gpu-slots", "--count", str(gpus), "--"),
            *("torchrun", "--standalone", "--nproc-per-node", str(gpus)),
            *("--module", "synface.cli"),
        ]
    return ["synface"]


# --- the recognition half --------------------------------------------------------------------


def get_demo_world_params():
    return settings({**config.get("demo_world", {}), "image_size": config["face_size"]})


def aligned_images(faces):
    return rules.align_faces.output.images.format(faces=faces)


def get_dataset_manifest_input(wildcards):
    if is_demo(config["datasets"][wildcards.dataset]):
        return {"manifest": rules.demo_world.output.manifest}
    if wildcards.dataset in ALIGNED:
        return {"images": aligned_images(wildcards.dataset)}
    return {"images": config["datasets"][wildcards.dataset]["path"]}


def get_align_faces_input(wildcards):
    if wildcards.faces == CONTEXT_DATABASE:
        return config["contexts"]["images"]
    return config["datasets"][wildcards.faces]["path"]


def get_align_faces_params():
    return settings(config["alignment"])


def get_dataset_manifest_source(wildcards, input):
    if "manifest" in input.keys():
        return ["--manifest", input.manifest]
    return ["--images", input.images]


def get_benchmark_packs():
    if is_demo(config["benchmarks"]):
        return dict(zip(BENCHMARKS, rules.demo_world.output.packs))
    return {n: f"{config['benchmarks']['path']}/{n}.bin" for n in BENCHMARKS}


def get_evaluate_input(wildcards):
    return {
        "weights": rules.train_recognition.output.backbone.format(dataset=wildcards.dataset),
        **get_benchmark_packs(),
    }


def get_evaluate_pack_args(wildcards, input):
    return [arg for name in BENCHMARKS for arg in ("--pack", f"{name}={input[name]}")]


def recognition_settings(dataset, **train):
    """The recognition sections for one dataset: its own ``augment`` keys over
    recognition.augment, recognition.train with ``train`` replaced."""
    recognition = config["recognition"]
    augment = {**recognition["augment"], **config["datasets"][dataset].get("augment", {})}
    return settings(
        {
            "image_size": config["face_size"],
            **{k: recognition[k] for k in ("backbone", "head")},
            "train": {**recognition["train"], **train},
            "augment": augment_record(augment),
        }
    )


def get_train_recognition_params(wildcards):
    return recognition_settings(wildcards.dataset)


def get_train_recognition_seed_params(wildcards):
    """The recipe of one repeat: recognition.train with its seed replaced."""
    return recognition_settings(wildcards.dataset, seed=int(wildcards.seed))


def get_evaluate_seed_input(wildcards):
    return {
        "weights": rules.train_recognition_seed.output.backbone.format(**wildcards),
        **get_benchmark_packs(),
    }


def table_runs(name):
    """(input key, evaluation file) of each run of a dataset's row."""
    if not SEEDS:
        return [(name, rules.evaluate.output.json.format(dataset=name))]
    template = rules.evaluate_seed.output.json
    return [(f"{name}-seed{s}", template.format(dataset=name, seed=s)) for s in SEEDS]


def get_results_table_input(wildcards):
    inputs = {key: path for name in DATASETS for key, path in table_runs(name)}
    if config["evaluation"]["consistency_columns"]:
        for name in SYNTHETIC:
            inputs[f"consistency_{name}"] = rules.identity_consistency.output.json.format(set=name)
    return inputs


def get_results_table_rows(wildcards, input):
    """A --row per run (a label given again is one more run of its row), then the synthetic
    sets' consistency reports when the table shows them."""
    labels = {name: dataset["label"] for name, dataset in config["datasets"].items()}
    runs = [(labels[n], input[key]) for n in DATASETS for key, _ in table_runs(n)]
    rows = [arg for label, path in runs for arg in ("--row", f"{label}={path}")]
    reports = {n: input.get(f"consistency_{n}") for n in SYNTHETIC}
    rows += [arg for n, p in reports.items() if p for arg in ("--consistency", f"{labels[n]}={p}")]
    return rows


def get_final_output():
    return [
        *rules.results_table.output,
        *get_identity_check_report(),
        *get_consistency_reports(),
        *get_report_figures(),
    ]


# --- the generative half ---------------------------------------------------------------------


def component_source(section):
    """'demo' (shipped weights), 'trained' (made by this workflow) or 'file' (user-supplied)."""
    return "demo" if config["use_demo_weights"] else config[section]["source"]


def get_embedding_weights():
    source = component_source("embedding")
    if source == "demo":
        return str(DEMO_WEIGHTS / "embedding" / "backbone.pth")
    if source == "trained":
        return rules.train_recognition.output.backbone.format(
            dataset=config["embedding"]["dataset"]
        )
    return config["embedding"]["weights"]


def get_embedding_files():
    weights = get_embedding_weights()
    return {"weights": weights, "embedding_spec": str(Path(weights).with_suffix(".json"))}


FIRST_STAGE_FILES = {
    "encoder": "first_stage_encoder_state_dict.pt",
    "decoder": "first_stage_decoder_state_dict.pt",
    "spec": "first_stage.json",
}


def get_first_stage_files(wildcards):
    """The first stage's folder: its two state dicts and first_stage.json (its architecture)."""
    source = component_source("first_stage")
    if source == "trained":
        return dict(rules.train_autoencoder.output.items())
    folder = (
        DEMO_WEIGHTS / "first_stage" if source == "demo" else Path(config["first_stage"]["path"])
    )
    return {key: str(folder / name) for key, name in FIRST_STAGE_FILES.items()}


def get_ldm_checkpoint():
    source = component_source("ldm")
    if source == "demo":
        return str(DEMO_WEIGHTS / "ldm" / "ema_averaged_model.ckpt")
    if source == "trained":
        return rules.train_ldm.output.checkpoint
    return config["ldm"]["checkpoint"]


def get_faceset_manifest(wildcards):
    faceset = wildcards.faceset
    if faceset == "heldout":
        faces = config["ldm"]["identity_check"]["faces"]
        return rules.demo_world.output.heldout_manifest if faces == "demo" else faces
    if faceset == "candidates":
        return rules.context_candidates.output.manifest
    if faceset.startswith("synthetic_"):
        return rules.synthetic_set_manifest.output.synthetic.format(
            set=faceset.removeprefix("synthetic_")
        )
    return f"results/datasets/{faceset}/manifest.tsv"


def get_train_autoencoder_params():
    first_stage = config["first_stage"]
    spec = {k: first_stage[k] for k in ("ddconfig", "embed_dim", "n_embed")}
    return settings(
        {"spec": spec, "image_size": config["ldm"]["image_size"], **first_stage["train"]}
    )


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
        if dataset.get("contexts") == "uniform" and dataset["oversample"]:
            raise WorkflowError(
                f"config key datasets.{name}.oversample is {dataset['oversample']}, but uniform "
                "contexts have no context faces to add: set oversample: 0"
            )


check_synthetic_sets()


def check_mixed_sets():
    for name in MIXED:
        parts = config["datasets"][name].get("parts", [])
        wrong = [p for p in parts if p not in DATASETS or p in MIXED]
        if len(parts) < 2 or wrong:
            raise WorkflowError(
                f"config key datasets.{name}.parts is {parts}: a mixed dataset names two or "
                f"more other datasets of the config, none of them mixed (not: {wrong})"
            )


check_mixed_sets()


def get_mixed_manifest_input(wildcards):
    parts = config["datasets"][wildcards.mixed]["parts"]
    return [f"results/datasets/{part}/manifest.tsv" for part in parts]


def uses_selected_contexts():
    return bool(CONTEXT_ONLY) or any(
        config["datasets"][n]["contexts"] in ("selected", "spread") for n in SYNTHETIC
    )


def uses_generator():
    return bool(SYNTHETIC or CONTEXT_ONLY or config["ldm"]["identity_check"]["faces"])


def get_selected_identities():
    """How many selected contexts the sets need: the largest set using them."""
    sizes = [
        config["datasets"][n]["identities"]
        for n in [*SYNTHETIC, *CONTEXT_ONLY]
        if config["datasets"][n].get("contexts", "selected") in ("selected", "spread")
    ]
    return max(sizes, default=0)


def get_uniform_identities():
    sizes = [
        config["datasets"][n]["identities"]
        for n in SYNTHETIC
        if config["datasets"][n]["contexts"] == "uniform"
    ]
    return max(sizes, default=0)


CANDIDATES = "results/contexts/candidates"
# Minutes a GPU job needs besides its items (start-up, loading the models, writing the rest):
# its SLURM runtime is this plus its items times their config's seconds per item.
JOB_START_MINUTES = 10


def gpu_runtime(items, seconds_per_item):
    """A GPU job's SLURM runtime in minutes, from its share of the work."""
    return JOB_START_MINUTES + math.ceil(items * seconds_per_item / 60)


def shard_size(wildcards):
    return int(wildcards.last) - int(wildcards.first)


def generates_candidates():
    return config["contexts"]["source"] == "unconditional"


def imports_candidate_embeddings():
    """A context database that ships ADMIS's embeddings: they are imported, not recomputed."""
    contexts = config["contexts"]
    return contexts["source"] == "database" and bool(contexts["embed_npy"])


def candidate_ranges(per_shard):
    """Shards of the candidates (embedding rows): generated ones are numbered up front; a
    database's are its faces, counted when the plan needs them."""
    from synface.io.manifest import database_faces
    from synface.shards import shard_ranges

    contexts = config["contexts"]
    count = (
        contexts["candidates"]
        if generates_candidates()
        else len(database_faces(contexts["images"]))
    )
    return shard_ranges(count, per_shard)


def get_candidate_shards(wildcards):
    if not generates_candidates():
        return []
    return [
        rules.make_context_candidates.output.shard.format(first=r.start, last=r.stop)
        for r in candidate_ranges(config["contexts"]["candidates_per_shard"])
    ]


def get_context_candidates_output():
    outputs = {"manifest": f"{CANDIDATES}/manifest.tsv"}
    if imports_candidate_embeddings():
        outputs["embeddings"] = f"{CANDIDATES}/imported/embeddings.npy"
    return outputs


def get_context_database():
    """The context faces of `source: database`: the folder itself, or its aligned copies."""
    if CONTEXT_DATABASE in ALIGNED:
        return aligned_images(CONTEXT_DATABASE)
    return config["contexts"]["images"]


def get_context_candidates_input(wildcards):
    if generates_candidates():
        return {"shards": get_candidate_shards(wildcards)}
    if CONTEXT_DATABASE in ALIGNED:
        return {"database": get_context_database()}
    return {}


def get_context_candidates_command(wildcards, input, output):
    """Join the generated shards' manifests, or list (and import) the context database."""
    if generates_candidates():
        return ["join-manifests", "--out", output.manifest, *input.shards]
    contexts = config["contexts"]
    args = ["make-contexts", "--source", "database", "--images", get_context_database()]
    args += ["--out-dir", str(Path(output.manifest).parent)]
    if imports_candidate_embeddings():
        args += ["--embed-npy", contexts["embed_npy"], "--names-pkl", contexts["names_pkl"]]
        args += ["--embeddings-out", str(Path(output.embeddings).parent)]
    return args


def get_make_context_candidates_input(wildcards):
    if config["contexts"]["generator"] == "ldm":
        return {"ldm": get_ldm_checkpoint(), **get_first_stage_files(wildcards)}
    return {}


def get_make_context_candidates_args(wildcards, input, output):
    contexts = config["contexts"]
    common = [
        *("--seed", contexts["seed"], "--steps", contexts["steps"]),
        *("--batch-size", contexts["batch_size"], "--face-size", config["face_size"]),
    ]
    if contexts["align"]:
        common += ["--align", get_align_faces_params()]
    if contexts["generator"] == "diffusers":
        return ["--source", "diffusers", "--model-dir", contexts["model_dir"], *common]
    first_stage = str(Path(input.spec).parent)
    return ["--source", "ldm", "--ldm", input.ldm, "--first-stage", first_stage, *common]


def get_candidates_folder(wildcards, output):
    """The candidates' folder, above the folder of its shard manifests."""
    return str(Path(output.shard).parent.parent)


def get_make_context_candidates_runtime(wildcards):
    return gpu_runtime(shard_size(wildcards), config["contexts"]["seconds_per_candidate"])


def get_candidate_embeddings():
    if imports_candidate_embeddings():
        return rules.context_candidates.output.embeddings
    return rules.extract_embeddings.output.embeddings.format(faceset="candidates")


def get_probe_shards(wildcards):
    return [
        rules.probe_contexts.output.scores.format(first=r.start, last=r.stop)
        for r in candidate_ranges(config["contexts"]["selection"]["candidates_per_shard"])
    ]


def get_probe_contexts_params():
    keys = ("probe_samples", "steps", "seed", "batch_size")
    return settings({key: config["contexts"]["selection"][key] for key in keys})


def get_probe_contexts_runtime(wildcards):
    probes = shard_size(wildcards) * config["contexts"]["selection"]["probe_samples"]
    return gpu_runtime(probes, config["contexts"]["seconds_per_probe"])


def get_select_contexts_params():
    keys = ("probe_samples", "intra_threshold", "inter_threshold", "batch_size")
    selection = {key: config["contexts"]["selection"][key] for key in keys}
    return settings({"identities": get_selected_identities(), **selection})


def pool_of(name):
    """Sets with the same contexts, images per identity and sampling overrides share one pool
    of generated faces: the noise of image k of identity i depends only on (seed, i, k), so a
    100-identity set is the first 100 identities of a 300-identity one, and is not generated
    twice. A set's own ``synthesis`` overrides add a digest of them to the pool's name."""
    import hashlib

    dataset = config["datasets"][name]
    pool = f"{dataset['contexts']}-{dataset['images_per_identity']}"
    overrides = dataset.get("synthesis")
    if not overrides:
        return pool
    return f"{pool}-{hashlib.sha256(settings(overrides).encode()).hexdigest()[:8]}"


def make_pools():
    """Each pool's contexts, images per identity and identities (those of its largest set)."""
    pools = {}
    for name in SYNTHETIC:
        dataset = config["datasets"][name]
        pool = pools.setdefault(
            pool_of(name),
            {
                "contexts": dataset["contexts"],
                "images_per_identity": dataset["images_per_identity"],
                "synthesis": {**config["synthesis"], **dataset.get("synthesis", {})},
                "identities": 0,
            },
        )
        pool["identities"] = max(pool["identities"], dataset["identities"])
    return pools


POOLS = make_pools()


wildcard_constraints:
    pool="|".join(POOLS) or "^$",


def pool_shards(pool):
    from synface.shards import shard_ranges

    return shard_ranges(POOLS[pool]["identities"], config["synthesis"]["ids_per_shard"])


def pool_images(shard):
    """A pool's image folder, beside the folder of its shard markers."""
    return str(Path(shard).parent.parent / "images")


def get_pool_contexts(wildcards):
    contexts = POOLS[wildcards.pool]["contexts"]
    if contexts == "uniform":
        return rules.uniform_contexts.output.contexts
    if contexts == "spread":
        return rules.spread_contexts.output.contexts
    return rules.select_contexts.output.contexts


def filters(pool):
    return POOLS[pool]["synthesis"]["filter_threshold"] is not None


def get_synthesize_judge(wildcards):
    """The embedding model, for a pool whose faces pass the intra-class filter."""
    return get_embedding_files() if filters(wildcards.pool) else {}


def get_synthesize_judge_args(wildcards, input):
    return ["--embedding-weights", input.weights] if filters(wildcards.pool) else []


def get_set_shards(wildcards):
    """The pool's shards holding the set's identities."""
    pool = pool_of(wildcards.set)
    identities = config["datasets"][wildcards.set]["identities"]
    return [
        rules.synthesize.output.shard.format(pool=pool, first=r.start, last=r.stop)
        for r in pool_shards(pool)
        if r.start < identities
    ]


def get_synthesize_runtime(wildcards):
    images = shard_size(wildcards) * POOLS[wildcards.pool]["images_per_identity"]
    return gpu_runtime(images, config["synthesis"]["seconds_per_image"])


SAMPLING_KEYS = ("seed", "sampler", "steps", "guidance_scale", "eta", "antialias", "batch_size")
# The switches beyond ADMIS, and torch.compile: passed only when on, so that a config without
# them keeps its synthesize jobs' params (and Snakemake does not rerun them).
SWITCH_KEYS = ("negative_scale", "unconditional_steps", "compile")


def get_synthesis_params(wildcards):
    chosen = POOLS[wildcards.pool]["synthesis"]
    params = {key: chosen[key] for key in SAMPLING_KEYS}
    params |= {key: chosen[key] for key in SWITCH_KEYS if chosen[key]}
    if chosen["filter_threshold"] is not None:
        params["filter_threshold"] = chosen["filter_threshold"]
        params["filter_draws_per_image"] = chosen["filter_draws_per_image"]
    return settings(params)


def get_set_manifest_input(wildcards):
    inputs = {"shards": get_set_shards(wildcards)}
    if config["datasets"][wildcards.set]["oversample"]:
        inputs["faces"] = rules.select_contexts.output.faces
    return inputs


def get_set_manifest_args(wildcards, input):
    dataset = config["datasets"][wildcards.set]
    args = ["--images", pool_images(input.shards[0])]
    if dataset["oversample"]:
        args += ["--faces", input.faces, "--repeats", dataset["oversample"]]
    return args


def get_identity_check_report():
    """The generator's identity check, when the config names held-out faces for it."""
    return [rules.identity_check.output.json] if config["ldm"]["identity_check"]["faces"] else []


def get_consistency_reports():
    return expand(rules.identity_consistency.output.json, set=SYNTHETIC)


# --- the report's figures --------------------------------------------------------------------


def get_report_figures():
    """Every figure the run's data supports: the LDM's only when this run trained it, the
    context selection's only when a set uses selected contexts."""
    figures = [
        *rules.plot_recognition_training.output,
        *rules.plot_roc.output,
        *expand(rules.plot_samples.output, set=SYNTHETIC),
    ]
    if uses_selected_contexts():
        figures += rules.plot_contexts.output
    if component_source("ldm") == "trained":
        figures += rules.plot_ldm_training.output
    return figures


def named_paths(flag, paths):
    """``--flag LABEL=path`` per dataset, as arguments for a ``{params.x:q}`` (labels hold any
    character, so Snakemake quotes them)."""
    labels = {name: config["datasets"][name]["label"] for name in paths}
    return [arg for name, path in paths.items() for arg in (flag, f"{labels[name]}={path}")]


def shown_run(name):
    """The recognition run of a dataset that the report's figures show: its only one, or its
    first seed's when recognition.seeds repeats it: (wildcards, training rule, evaluate rule)."""
    if not SEEDS:
        return {"dataset": name}, rules.train_recognition, rules.evaluate
    return {"dataset": name, "seed": SEEDS[0]}, rules.train_recognition_seed, rules.evaluate_seed


def get_shown_backbones():
    return [train.output.backbone.format(**w) for w, train, _ in map(shown_run, DATASETS)]


def get_recognition_training_logs():
    runs = {name: shown_run(name) for name in DATASETS}
    logs = {n: f"{train.params.run_dir.format(**w)}/loss.tsv" for n, (w, train, _) in runs.items()}
    return named_paths("--log", logs)


def get_plot_roc_input():
    runs = {name: shown_run(name) for name in DATASETS}
    return {n: evaluate.output.json.format(**w) for n, (w, _, evaluate) in runs.items()}


def get_evaluation_rows(wildcards, input):
    """``--row LABEL=evaluation JSON`` per dataset, in the config's order."""
    return named_paths("--row", {name: input[name] for name in DATASETS})


def get_plot_samples_input(wildcards):
    inputs = {"manifest": rules.synthetic_set_manifest.output.synthetic}
    if config["datasets"][wildcards.set]["contexts"] == "selected":
        inputs["faces"] = rules.select_contexts.output.faces
    return inputs


def get_plot_samples_faces(wildcards, input):
    return ["--faces", input.faces] if "faces" in input.keys() else []


# --- start-up checks -------------------------------------------------------------------------


def check_demo_weights():
    """The shipped weights fit only the world and architectures they were trained for."""
    provenance_path = DEMO_WEIGHTS / "PROVENANCE.json"
    if not provenance_path.exists():
        raise WorkflowError(
            f"{provenance_path} is missing: run `make demo-weights` to make the demo weights, "
            "or set use_demo_weights: false to train every component in the workflow"
        )
    recorded = json.loads(provenance_path.read_text())["config"]
    compared = {"ldm": ("image_size", "unet"), "first_stage": ("ddconfig", "embed_dim", "n_embed")}
    for key in ("face_size", "demo_world", "first_stage", "ldm"):
        mine = config.get(key)
        theirs = recorded.get(key)
        if key in compared:
            mine = {k: mine[k] for k in compared[key]}
            theirs = {k: theirs[k] for k in compared[key]}
        if mine != theirs:
            raise WorkflowError(
                f"config key '{key}' differs from the one the shipped demo weights were made "
                f"with ({provenance_path}): restore it, set use_demo_weights: false to train "
                "everything from scratch, or remake the weights with `make demo-weights`"
            )


def missing(path, key, fix):
    """A preflight problem when ``path`` (from config key ``key``) is not there, else None."""
    if not path:
        return f"{key}: not set. {fix}"
    if Path(path).exists():
        return None
    return f"{key}: '{path}' not found. {fix}"


def dataset_problems():
    for name, dataset in config["datasets"].items():
        path = dataset.get("path")
        if dataset["source"] == "folder" and not (path and Path(path).is_dir()):
            yield (
                f"datasets.{name}.path: image folder '{path}' not found. Put the aligned "
                "112x112 faces there as <identity>/<n>.jpg (e.g. CASIA-WebFace)"
            )
    if not is_demo(config["benchmarks"]):
        folder = Path(config["benchmarks"]["path"])
        absent = [f"{folder}/{n}.bin" for n in BENCHMARKS if not (folder / f"{n}.bin").exists()]
        if absent:
            yield (
                f"benchmarks.path: {', '.join(absent)} not found. Copy the insightface "
                "verification packs (from the faces_emore / MS1M-ArcFace download) there"
            )


def component_problems():
    """The user-supplied generative components (source: file) that are not in place."""
    if component_source("embedding") == "file":
        weights = config["embedding"]["weights"]
        yield missing(
            weights,
            "embedding.weights",
            "Put the identity encoder's backbone state dict there (ElasticFace-Arc: "
            "295672backbone.pth from the ElasticFace release)",
        )
        yield missing(
            str(Path(weights).with_suffix(".json")),
            "embedding.weights",
            'Write its architecture there, e.g. {"name": "iresnet", "args": {"depth": 100}} '
            "for ElasticFace-Arc",
        )
    if component_source("first_stage") == "file":
        first_stage = config["first_stage"]
        folder = Path(first_stage["path"])
        fix = (
            "Put the released CompVis VQ-f4 (latent-diffusion's vq-f4), split into IDiff-Face's "
            "encoder and decoder state dicts, there"
        )
        for key in ("encoder", "decoder"):
            yield missing(str(folder / FIRST_STAGE_FILES[key]), "first_stage.path", fix)
        spec = {k: first_stage[k] for k in ("ddconfig", "embed_dim", "n_embed") if k in first_stage}
        yield missing(
            str(folder / FIRST_STAGE_FILES["spec"]),
            "first_stage.path",
            f"Write the first stage's architecture there: {json.dumps(spec, sort_keys=True)}",
        )
    if component_source("ldm") == "file":
        weights = config["ldm"]["checkpoint"]
        fix = (
            "Put the released ADMIS checkpoint there (ckpt/ADMIS_FRCSyn_ckpt/"
            "ema_averaged_model_200000.ckpt, Google Drive link in the ADMIS README); another "
            "architecture needs its model yaml beside it, same name with .yaml"
        )
        yield missing(weights, "ldm.checkpoint", fix) or ldm_spec_problem(weights)


def ldm_spec_problem(checkpoint):
    """The UNet description beside a supplied LDM checkpoint, read as sampling will read it."""
    from synface.ldm.model import read_ldm_spec

    try:
        read_ldm_spec(checkpoint)
    except ValueError as error:
        return f"ldm.checkpoint: {error}"
    return None


def context_problems():
    """The context generator or database the selected contexts start from."""
    contexts = config["contexts"]
    if contexts["source"] == "unconditional" and contexts["generator"] == "diffusers":
        yield missing(
            contexts.get("model_dir"),
            "contexts.model_dir",
            "Put a diffusers unconditional UNet folder there (ADMIS: a DDPM trained on FFHQ)",
        )
    if contexts["source"] == "database":
        yield missing(
            contexts.get("images"),
            "contexts.images",
            "Put the context faces there, one per person (ADMIS's context_database/images)",
        )
        if contexts["embed_npy"]:
            for key in ("embed_npy", "names_pkl"):
                yield missing(
                    contexts[key],
                    f"contexts.{key}",
                    "Put ADMIS's context_database file there, or set contexts.embed_npy: null "
                    "to embed the faces here",
                )


def check_real_inputs():
    """Fail at start-up, before any job runs, listing every user-supplied input not in place."""
    checks = [dataset_problems()]
    if uses_generator():
        checks.append(component_problems())
        faces = config["ldm"]["identity_check"]["faces"]
        if faces and faces != "demo":
            fix = "Write a manifest of held-out faces there, or set it to null to skip the check"
            checks.append([missing(faces, "ldm.identity_check.faces", fix)])
    if uses_selected_contexts():
        checks.append(context_problems())
    problems = [problem for check in checks for problem in check if problem]
    if problems:
        raise WorkflowError(
            "missing real inputs (resources/README.md says where to get each):\n  "
            + "\n  ".join(problems)
        )


if config["use_demo_weights"]:
    check_demo_weights()
check_real_inputs()

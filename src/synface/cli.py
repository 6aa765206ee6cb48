"""The synface command: one sub-command per pipeline stage.

The CLI only parses; each stage is a function of the package that tests call directly.
Nested hyper-parameters arrive as one JSON object (``--settings``), checked against the config
schema's section of the stage, so a Snakemake rule passes its ``params`` verbatim and a change
in any of them reruns the rule.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from synface.settings import SettingsError, check_settings, section_keys

T = TypeVar("T")

DESCRIPTION = (
    "synface: one command per stage of the pipeline. The Snakemake rules call these commands; "
    "`synface COMMAND --help` lists what each flag of a command takes."
)

if TYPE_CHECKING:
    from synface.align import AlignSettings


def _settings(text: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@path/to/file.json``."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as error:
            raise argparse.ArgumentTypeError(f"cannot read {text[1:]}: {error.strerror}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object, e.g. '{\"seed\": 1}'")
    return value


def _stage_settings(args: argparse.Namespace, build: Callable[[dict[str, Any]], T]) -> T:
    """``--settings`` as the stage's settings: its values checked against the config schema's
    section (``args.settings_section``, set by ``_settings_option``) as the workflow checks the
    config, then built by ``build`` (a ``from_settings``: unknown keys refused, omitted ones
    from the schema's defaults). A problem ends in one line naming the flag and the key."""
    try:
        check_settings(args.settings_section, args.settings)
        return build(args.settings)
    except (ValueError, TypeError) as error:
        raise SettingsError(f"--settings: {error}") from None


def _named_path(text: str) -> tuple[str, Path]:
    """``name=path`` pairs, for benchmark packs and table rows."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, Path(path)


def _call(stage: Callable[..., Any], args: argparse.Namespace, **converted: Any) -> Any:
    """Call ``stage`` with the parsed options named like its parameters.

    Each option's ``dest`` is the parameter it feeds, so a command lists only the values that
    need more than argparse's ``type`` (a settings dataclass, a loaded array, a range) in
    ``converted``; a stage parameter that no option names keeps the stage's default.
    """
    given = {**vars(args), **converted}
    names = inspect.signature(stage).parameters
    return stage(**{name: given[name] for name in names if name in given})


def run_demo_world(args: argparse.Namespace) -> None:
    from synface.demo_world.world import DemoWorldConfig, build_demo_world

    _call(build_demo_world, args, cfg=_stage_settings(args, DemoWorldConfig.from_settings))


def run_manifest(args: argparse.Namespace) -> None:
    from synface.io.manifest import read_manifest, scan_image_folder, write_manifest

    entries = scan_image_folder(args.images) if args.images else read_manifest(args.manifest)
    count = write_manifest(args.out, entries)
    logging.getLogger("synface").info("wrote %d images to %s", count, args.out)


def run_pack(args: argparse.Namespace) -> None:
    from synface.packing import pack_tfrecords

    _call(pack_tfrecords, args)


def run_train_recognition(args: argparse.Namespace) -> None:
    from synface.recognition.train import RecognitionTrainConfig, train_recognition

    _call(train_recognition, args, cfg=_stage_settings(args, RecognitionTrainConfig.from_settings))


def run_evaluate(args: argparse.Namespace) -> None:
    from synface.evaluation.benchmark import evaluate_backbone

    _call(evaluate_backbone, args, packs=dict(args.packs))


def run_export_embedding_model(args: argparse.Namespace) -> None:
    from synface.embeddings import export_onnx

    _call(export_onnx, args)


def run_extract_embeddings(args: argparse.Namespace) -> None:
    from synface.embeddings import extract_embeddings

    _call(extract_embeddings, args)


def run_train_autoencoder(args: argparse.Namespace) -> None:
    from synface.ldm.first_stage import AutoencoderTrainConfig, train_autoencoder

    _call(train_autoencoder, args, cfg=_stage_settings(args, AutoencoderTrainConfig.from_settings))


def run_encode_latents(args: argparse.Namespace) -> None:
    from synface.ldm.latents import encode_latents

    _call(encode_latents, args)


def run_train_ldm(args: argparse.Namespace) -> None:
    from synface.ldm.train import LDMTrainConfig, train_ldm

    _call(train_ldm, args, cfg=_stage_settings(args, LDMTrainConfig.from_settings))


def run_check_identity(args: argparse.Namespace) -> None:
    from synface.ldm.identity_check import IdentityCheckSettings, check_identity

    _call(check_identity, args, settings=_stage_settings(args, IdentityCheckSettings.from_settings))


def _config_sections(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` when each key is a top-level section of the config."""
    known = section_keys("")
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingsError(
            f"unknown config key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    return values


def run_pack_demo_weights(args: argparse.Namespace) -> None:
    from synface.demo_weights import pack_demo_weights

    config = _stage_settings(args, _config_sections)
    commands = json.loads(args.commands.read_text()) if args.commands else []
    _call(pack_demo_weights, args, config=config, commands=commands)


def run_identity_consistency(args: argparse.Namespace) -> None:
    from synface.consistency import consistency_report

    _call(consistency_report, args)


def run_synthesize(args: argparse.Namespace) -> None:
    import numpy as np

    from synface.synthesis import SynthesisSettings, synthesize_shard

    settings = _stage_settings(args, SynthesisSettings.from_settings)
    contexts, identities = np.load(args.contexts), range(args.first, args.last)
    _call(synthesize_shard, args, contexts=contexts, identities=identities, settings=settings)


def run_make_contexts(args: argparse.Namespace) -> None:
    from synface import contexts

    if args.source == "database":
        manifest = args.out_dir / "manifest.tsv"
        contexts.database_manifest(args.images, manifest)
        if args.embed_npy:
            contexts.import_admis_embeddings(
                args.embed_npy, args.names_pkl, manifest, args.embeddings_out
            )
        return
    make = {
        "uniform": contexts.write_uniform_contexts,
        "ldm": contexts.generate_ldm_faces,
        "diffusers": contexts.generate_diffusers_faces,
    }
    last = args.count if args.last is None else args.last
    _call(make[args.source], args, indices=range(args.first, last), align=_align_settings(args))


def _align_settings(args: argparse.Namespace) -> AlignSettings | None:
    """The ``alignment`` settings of ``--align``, checked like ``--settings``; None without."""
    from synface.align import AlignSettings

    if args.align is None:
        return None
    try:
        check_settings("alignment", args.align)
        return AlignSettings.from_settings(args.align)
    except (ValueError, TypeError) as error:
        raise SettingsError(f"--align: {error}") from None


def run_align_faces(args: argparse.Namespace) -> None:
    from synface.align import AlignSettings, align_folder

    _call(align_folder, args, settings=_stage_settings(args, AlignSettings.from_settings))


def run_join_manifests(args: argparse.Namespace) -> None:
    from synface.io.manifest import join_manifests

    _call(join_manifests, args)


def run_probe_contexts(args: argparse.Namespace) -> None:
    from synface.probes import ProbeSettings, probe_shard

    settings = _stage_settings(args, ProbeSettings.from_settings)
    _call(probe_shard, args, rows=range(args.first, args.last), settings=settings)


def run_select_contexts(args: argparse.Namespace) -> None:
    from synface.contexts import SelectionConfig, select_contexts

    _call(select_contexts, args, cfg=_stage_settings(args, SelectionConfig.from_settings))


def run_spread_contexts(args: argparse.Namespace) -> None:
    from synface.contexts import SpreadConfig, write_spread_contexts

    _call(write_spread_contexts, args, cfg=_stage_settings(args, SpreadConfig.from_settings))


def run_mix_manifests(args: argparse.Namespace) -> None:
    from synface.io.manifest import mix_manifests

    _call(mix_manifests, args)


def run_set_manifest(args: argparse.Namespace) -> None:
    from synface.oversample import write_set_manifests

    _call(write_set_manifests, args)


def run_results_table(args: argparse.Namespace) -> None:
    from synface.evaluation.table import to_markdown, write_results_table

    evaluations: dict[str, list[Path]] = {}
    for label, path in args.evaluations:  # a label given again: one more run of that row
        evaluations.setdefault(label, []).append(path)
    runs = {label: paths[0] if len(paths) == 1 else paths for label, paths in evaluations.items()}
    consistency = dict(args.consistency) if args.consistency else None
    rows = _call(write_results_table, args, evaluations=runs, consistency=consistency)
    print(to_markdown(rows), end="")


def run_plot_curves(args: argparse.Namespace) -> None:
    from synface.figures import plot_curves

    _call(plot_curves, args, logs=dict(args.logs))


def run_plot_roc(args: argparse.Namespace) -> None:
    from synface.figures import plot_roc

    _call(plot_roc, args, evaluations=dict(args.evaluations))


def run_plot_samples(args: argparse.Namespace) -> None:
    from synface.figures import plot_samples

    _call(plot_samples, args)


def run_plot_contexts(args: argparse.Namespace) -> None:
    from synface.figures import plot_contexts

    _call(plot_contexts, args)


def run_plot_previews(args: argparse.Namespace) -> None:
    from synface.figures import plot_previews

    _call(plot_previews, args)


def _threads(
    sub: argparse.ArgumentParser,
    help: str = "CPU threads of the job (torch and data loading; the rule's threads)",
    dest: str = "threads",
) -> None:
    sub.add_argument("--threads", type=int, default=1, help=f"{help}; default 1", dest=dest)


def _settings_option(
    sub: argparse.ArgumentParser, section: str, takes: str = "", leaves: Sequence[str] = ()
) -> None:
    """``--settings``: the keys of config section ``section`` (``""``: the top level) but
    ``leaves`` (those the rule uses itself), plus what ``takes`` describes; one JSON object,
    inline or ``@file.json`` (see ``_settings``), checked by ``_stage_settings``."""
    keys = [key for key in section_keys(section) if key not in leaves]
    where = f"config section {section}" if section else "the config's sections"
    help = f"{where} as one JSON object, or @FILE.json. Keys: {', '.join(keys)}"
    help += f"; also {takes}" if takes else ""
    help += ". Keys left out take the config schema's defaults (config/README.md)"
    sub.add_argument("--settings", type=_settings, required=True, help=help, metavar="JSON")
    sub.set_defaults(settings_section=section)


def _path(
    sub: argparse.ArgumentParser,
    flag: str,
    dest: str,
    help: str,
    required: bool = True,
) -> None:
    """A path option that feeds the stage parameter ``dest`` (see ``_call``)."""
    sub.add_argument(flag, type=Path, required=required, help=help, dest=dest)


def _named_paths(
    sub: argparse.ArgumentParser, flag: str, dest: str, metavar: str, help: str
) -> None:
    """A repeated ``NAME=PATH`` option, collected in order into the list ``dest``."""
    sub.add_argument(
        flag,
        type=_named_path,
        action="append",
        required=True,
        dest=dest,
        metavar=metavar,
        help=help,
    )


def _first_stage(
    sub: argparse.ArgumentParser, required: bool = True, help: str = "", dest: str = "first_stage"
) -> None:
    help = help or "VQ-f4 folder: the two state dicts and first_stage.json"
    _path(sub, "--first-stage", dest, help, required)


def _ldm(
    sub: argparse.ArgumentParser,
    required: bool = True,
    help: str = "LDM checkpoint (ADMIS format) with its .json beside it",
) -> None:
    _path(sub, "--ldm", "ldm_checkpoint", help, required)


def add_demo_world(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--out", "out_dir", "output folder")
    _settings_option(sub, "demo_world", "image_size (face size in pixels: config face_size)")
    _threads(sub, dest="workers")


def add_manifest(sub: argparse.ArgumentParser) -> None:
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="an images/<identity>/<n>.jpg folder")
    source.add_argument("--manifest", type=Path, help="an existing manifest to re-root")
    sub.add_argument("--out", type=Path, required=True, help="manifest to write (path<TAB>label)")


def add_pack_tfrecords(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--manifest", type=Path, required=True, help="faces to pack (path<TAB>label)")
    sub.add_argument("--out-dir", type=Path, required=True, help="folder of the <NAME>/ shards")
    sub.add_argument("--name", required=True, help="TFRecord dataset name (must contain TFR)")
    sub.add_argument("--image-size", type=int, required=True, help="face size in pixels")
    sub.add_argument(
        "--records-per-shard", type=int, default=500_000, help="records per shard; default 500000"
    )
    _threads(sub, "decoding processes", dest="workers")


def add_train_recognition(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--index", "index_path", "4-column TFace training index")
    sub.add_argument("--data-root", type=Path, required=True, help="folder of the TFR-* dirs")
    _path(sub, "--out", "backbone_out", "final backbone state dict")
    sub.add_argument("--run-dir", type=Path, required=True, help="checkpoints, kept for resume")
    _settings_option(
        sub, "recognition", "image_size (config face_size)", ("gpus", "threads", "seeds")
    )
    _threads(sub)


def add_evaluate(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--weights", type=Path, required=True, help="backbone (+ .json spec)")
    help = "a benchmark and its insightface .bin pack, e.g. lfw=lfw.bin; repeat for each"
    _named_paths(sub, "--pack", "packs", "NAME=PATH", help)
    _path(sub, "--out", "out_json", "JSON of accuracy, std, threshold and XNorm per benchmark")
    sub.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    sub.add_argument("--precision", default="bf16", help="bf16 or fp32 (evaluation.precision)")
    _threads(sub)


def add_export_embedding_model(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--weights", type=Path, required=True, help="backbone (+ .json spec)")
    _path(sub, "--out", "onnx_out", "model.onnx (+ model.onnx.json)")
    _threads(sub)


def add_extract_embeddings(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--model", "onnx_model", "from export-embedding-model")
    sub.add_argument("--manifest", type=Path, required=True, help="faces to embed")
    sub.add_argument("--out-dir", type=Path, required=True, help="embeddings.npy + names.txt")
    sub.add_argument("--batch-size", type=int, default=64, help="images per ONNX Runtime call")
    _threads(sub)


def add_train_autoencoder(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--manifest", type=Path, required=True, help="faces to train on")
    sub.add_argument(
        "--out-dir", type=Path, required=True, help="first_stage_*_state_dict.pt + .json"
    )
    sub.add_argument("--run-dir", type=Path, required=True, help="checkpoints, kept for resume")
    takes = "image_size (config ldm.image_size), spec (config first_stage's architecture keys)"
    _settings_option(sub, "first_stage.train", takes)
    _threads(sub)


def add_encode_latents(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--manifest", type=Path, required=True, help="the faces that were embedded")
    _path(sub, "--embeddings", "embeddings_dir", "extract-embeddings output")
    _first_stage(sub, dest="first_stage_dir")
    sub.add_argument("--image-size", type=int, required=True, help="LDM input size in pixels")
    sub.add_argument("--out-dir", type=Path, required=True, help="latents.npy, contexts.npy")
    sub.add_argument("--batch-size", type=int, default=64, help="images per encoder pass")
    _threads(sub)


def add_train_ldm(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--latents", "latents_dir", "encode-latents output")
    _path(sub, "--out", "out_checkpoint", "ADMIS-format EMA checkpoint")
    sub.add_argument("--run-dir", type=Path, required=True, help="checkpoints and previews")
    _settings_option(sub, "ldm.train", "unet (config ldm.unet)")
    _first_stage(sub, required=False, help="VQ-f4 folder, for preview grids")
    _threads(sub)


def add_check_identity(sub: argparse.ArgumentParser) -> None:
    _ldm(sub, help="LDM checkpoint (+ .json)")
    _first_stage(sub)
    sub.add_argument("--embedding-weights", type=Path, required=True, help="backbone (+ .json)")
    _path(sub, "--contexts", "contexts_dir", "embeddings of held-out faces")
    _path(sub, "--out", "out_json", "JSON (a PNG grid goes beside it)")
    _settings_option(sub, "ldm.identity_check", leaves=("faces",))
    _threads(sub)


def add_pack_demo_weights(sub: argparse.ArgumentParser) -> None:
    help = "embedding backbone (+ .json)"
    sub.add_argument("--embedding-weights", type=Path, required=True, help=help)
    _first_stage(sub, dest="first_stage_dir")
    _ldm(sub)
    help = "the check-identity JSON the LDM passed"
    sub.add_argument("--identity-check", type=Path, required=True, help=help)
    made_with = ("face_size", "demo_world", "recognition", "embedding", "first_stage", "ldm")
    others = [key for key in section_keys("") if key not in made_with]
    _settings_option(sub, "", leaves=others)
    sub.add_argument("--commands", type=Path, help="JSON list of the commands that made them")
    _path(sub, "--benchmarks", "benchmarks_dir", "Snakemake benchmark tsvs")
    sub.add_argument("--made-on", default="", help="the machine, in words")
    _path(sub, "--out", "out_dir", "demo_weights/ folder: the weights and PROVENANCE.json")


def add_identity_consistency(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--embeddings", "embeddings_dir", "extract-embeddings output")
    sub.add_argument("--manifest", type=Path, required=True, help="the manifest it was made from")
    sub.add_argument("--out-json", type=Path, required=True, help="cosines, EER, FDR as JSON")
    sub.add_argument("--out-png", type=Path, required=True, help="score histograms")
    sub.add_argument("--max-impostor-pairs", type=int, default=200_000, help="sample cap")
    sub.add_argument("--seed", type=int, default=0, help="impostor sampling seed")


# Keys of config section synthesis that the rules use themselves (sharding, resources).
SYNTHESIS_RULE_KEYS = ("ids_per_shard", "gpus", "threads", "seconds_per_image")


def add_synthesize(sub: argparse.ArgumentParser) -> None:
    _ldm(sub, help="LDM checkpoint (+ .json)")
    _first_stage(sub)
    sub.add_argument("--contexts", type=Path, required=True, help="(N, 512) unit rows, .npy")
    sub.add_argument("--first", type=int, required=True, help="first identity (context row)")
    sub.add_argument("--last", type=int, required=True, help="one past the last identity")
    sub.add_argument("--images-per-identity", type=int, required=True, help="faces per identity")
    sub.add_argument("--out-dir", type=Path, required=True, help="<identity>/<k>.png go here")
    sub.add_argument("--done-marker", type=Path, required=True, help="shard summary, written last")
    sub.add_argument("--face-size", type=int, required=True, help="saved face size in pixels")
    _settings_option(sub, "synthesis", leaves=SYNTHESIS_RULE_KEYS)
    help = "the embedding model that judges faces (+ .json; needed with filter_threshold)"
    sub.add_argument("--embedding-weights", type=Path, help=help)
    _threads(sub)


def add_make_contexts(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--source",
        choices=["uniform", "ldm", "diffusers", "database"],
        required=True,
        help="uniform: random unit vectors; ldm, diffusers: faces from an unconditional "
        "generator; database: a folder of context faces",
    )
    help = "contexts.npy (uniform) or images/ and manifest.tsv"
    sub.add_argument("--out-dir", type=Path, required=True, help=help)
    sub.add_argument("--count", type=int, default=0, help="contexts or faces to make")
    sub.add_argument("--first", type=int, default=0, help="ldm, diffusers: the shard's first face")
    sub.add_argument("--last", type=int, help="ldm, diffusers: one past its last (--count)")
    _path(sub, "--done-marker", "done_marker", "ldm, diffusers: the shard's manifest", False)
    sub.add_argument("--dim", type=int, default=512, help="uniform: embedding width")
    sub.add_argument("--seed", type=int, default=0, help="face i starts from noise (seed, i)")
    sub.add_argument("--face-size", type=int, default=112, help="saved face size in pixels")
    sub.add_argument("--steps", type=int, default=50, help="sampling steps")
    sub.add_argument("--batch-size", type=int, default=100, help="faces per sampling batch")
    _ldm(sub, required=False, help="ldm: the LDM checkpoint (+ .json)")
    _first_stage(sub, required=False, help="ldm: the VQ-f4 folder")
    sub.add_argument("--model-dir", type=Path, help="diffusers: unconditional UNet folder")
    sub.add_argument("--images", type=Path, help="database: folder of context faces")
    sub.add_argument("--embed-npy", type=Path, help="database: ADMIS elastic_embed.npy")
    sub.add_argument("--names-pkl", type=Path, help="database: ADMIS image_names.pkl")
    sub.add_argument("--embeddings-out", type=Path, help="database: where imports go")
    sub.add_argument(
        "--align",
        type=_settings,
        help="ldm, diffusers: align each face to the ArcFace template with these settings "
        "of config section alignment (JSON, {} for the defaults) instead of resizing it",
    )
    _threads(sub)


def add_align_faces(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--images", "images", "folder of face images (any depth)")
    _path(sub, "--out-dir", "out_dir", "aligned copies go to OUT_DIR/images/, + rejected.tsv")
    help = "side of the aligned crops in pixels; default 112"
    sub.add_argument("--face-size", type=int, default=112, help=help)
    _settings_option(sub, "alignment")
    _threads(sub)


def add_join_manifests(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--out", "out_manifest", "the joined manifest")
    sub.add_argument("manifests", type=Path, nargs="+", help="manifests to join, in order")


def add_probe_contexts(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--candidates", "candidates_dir", "candidate embeddings")
    sub.add_argument("--first", type=int, required=True, help="first candidate (embedding row)")
    sub.add_argument("--last", type=int, required=True, help="one past the last candidate")
    _ldm(sub)
    _first_stage(sub)
    help = "embedding backbone (+ .json) that embeds the probe faces"
    sub.add_argument("--embedding-weights", type=Path, required=True, help=help)
    sub.add_argument("--out", type=Path, required=True, help="the shard's scores (.tsv)")
    leaves = ("intra_threshold", "inter_threshold", "candidates_per_shard")
    _settings_option(sub, "contexts.selection", leaves=leaves)
    _threads(sub)


def add_select_contexts(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--candidates", "candidates_dir", "candidate embeddings")
    _path(sub, "--manifest", "candidates_manifest", "candidate faces")
    help = "the probe-contexts score files, one per shard"
    sub.add_argument("--probes", type=Path, nargs="+", required=True, help=help)
    help = "contexts.npy, faces.tsv, selected.tsv, dropped.tsv"
    sub.add_argument("--out-dir", type=Path, required=True, help=help)
    leaves = ("steps", "seed", "candidates_per_shard")
    _settings_option(sub, "contexts.selection", "identities (how many contexts to keep)", leaves)
    _threads(sub)


def add_spread_contexts(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--contexts", "contexts_npy", "selected contexts, .npy")
    help = "the spread contexts.npy and spread.json (pairwise cosines before and after)"
    sub.add_argument("--out-dir", type=Path, required=True, help=help)
    _settings_option(sub, "contexts.spread")


def add_mix_manifests(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--part",
        type=Path,
        action="append",
        dest="parts",
        required=True,
        help="a dataset manifest; give two or more, labels follow in this order",
    )
    _path(sub, "--out", "out_manifest", "the mixed manifest")


def add_set_manifest(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--out", "out_manifest", "the set's training manifest")
    help = "synthetic people in the set (the first of the pool)"
    sub.add_argument("--identities", type=int, required=True, help=help)
    _path(sub, "--images", "images_dir", "synthesized <id>/<k>.png folder", required=False)
    _path(sub, "--faces", "faces_manifest", "context faces manifest", required=False)
    sub.add_argument("--repeats", type=int, default=0, help="copies of each context face")
    _path(
        sub,
        "--synthetic-out",
        "synthetic_manifest",
        "manifest of the generated images only",
        required=False,
    )


def run_gpu_slots(args: argparse.Namespace) -> None:
    from synface.gpu_slots import run_with_slots

    command = args.child[1:] if args.child[:1] == ["--"] else args.child
    run_with_slots(args.count, command)


def add_gpu_slots(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--count", type=int, required=True, help="how many GPUs the command needs")
    help = "-- then the command and its arguments, run with CUDA_VISIBLE_DEVICES set to its GPUs"
    sub.add_argument("child", nargs=argparse.REMAINDER, help=help)


def add_results_table(sub: argparse.ArgumentParser) -> None:
    help = "a table row: its title and the evaluate JSON, in order; a label given again adds a run"
    _named_paths(sub, "--row", "evaluations", "LABEL=PATH", help)
    help = "a synthetic row's identity-consistency JSON: its EER, FDR and genuine scores"
    sub.add_argument(
        "--consistency", type=_named_path, action="append", metavar="LABEL=PATH", help=help
    )
    sub.add_argument("--markdown", type=Path, required=True, help="the table as Markdown")
    _path(sub, "--csv", "csv_path", "the table as CSV")
    _path(sub, "--json", "json_path", "the table as JSON, one object per row")
    _path(sub, "--mean-std-csv", "mean_std_csv", "mean ± std per benchmark, for the report", False)


def add_plot_curves(sub: argparse.ArgumentParser) -> None:
    help = "a training run's loss.tsv and its label; repeat for several runs"
    _named_paths(sub, "--log", "logs", "LABEL=PATH", help)
    sub.add_argument("--title", required=True, help="the figure's title")
    sub.add_argument("--out", type=Path, required=True, help="the figure (PNG)")


def add_plot_roc(sub: argparse.ArgumentParser) -> None:
    help = "a model's evaluation JSON and its label; repeat for several models"
    _named_paths(sub, "--row", "evaluations", "LABEL=PATH", help)
    sub.add_argument("--out", type=Path, required=True, help="the figure (PNG)")


def add_plot_samples(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--manifest", type=Path, required=True, help="the set's generated faces")
    sub.add_argument("--faces", type=Path, help="context faces manifest (label = identity)")
    sub.add_argument("--identities", type=int, default=6, help="rows (identities); default 6")
    sub.add_argument("--samples", type=int, default=7, help="samples per row; default 7")
    sub.add_argument("--out", type=Path, required=True, help="the figure (PNG)")


def add_plot_contexts(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--candidates", "candidates_manifest", "the candidate faces' manifest")
    sub.add_argument("--selected", type=Path, required=True, help="select-contexts selected.tsv")
    sub.add_argument("--dropped", type=Path, required=True, help="select-contexts dropped.tsv")
    sub.add_argument("--out", type=Path, required=True, help="the figure (PNG)")


def add_plot_previews(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--run-dir", type=Path, required=True, help="train-ldm run folder")
    sub.add_argument("--out", type=Path, required=True, help="the figure (PNG)")


Handler = Callable[[argparse.Namespace], None]
Arguments = Callable[[argparse.ArgumentParser], None]

# name, what it runs, its arguments, its help line: one row per pipeline stage.
COMMANDS: tuple[tuple[str, Handler, Arguments, str], ...] = (
    ("demo-world", run_demo_world, add_demo_world, "render the procedural demo world"),
    ("manifest", run_manifest, add_manifest, "write a dataset manifest (path<TAB>label)"),
    (
        "align-faces",
        run_align_faces,
        add_align_faces,
        "align a folder of faces to the ArcFace 112 template (5 landmarks)",
    ),
    ("pack-tfrecords", run_pack, add_pack_tfrecords, "pack a manifest into TFace TFRecord shards"),
    (
        "train-recognition",
        run_train_recognition,
        add_train_recognition,
        "train IR + ArcFace (torchrun-ready)",
    ),
    ("evaluate", run_evaluate, add_evaluate, "10-fold verification on insightface .bin packs"),
    (
        "export-embedding-model",
        run_export_embedding_model,
        add_export_embedding_model,
        "export a backbone to ONNX and check ONNX Runtime parity with torch",
    ),
    (
        "extract-embeddings",
        run_extract_embeddings,
        add_extract_embeddings,
        "L2-normalised embeddings of a manifest",
    ),
    (
        "train-autoencoder",
        run_train_autoencoder,
        add_train_autoencoder,
        "train a VQ-f4 on demo faces",
    ),
    (
        "encode-latents",
        run_encode_latents,
        add_encode_latents,
        "encode every face (and mirror) once",
    ),
    (
        "train-ldm",
        run_train_ldm,
        add_train_ldm,
        "train the identity-conditioned LDM (torchrun-ready)",
    ),
    (
        "check-identity",
        run_check_identity,
        add_check_identity,
        "nearest-context retrieval of samples",
    ),
    (
        "pack-demo-weights",
        run_pack_demo_weights,
        add_pack_demo_weights,
        "ship demo weights + provenance",
    ),
    (
        "identity-consistency",
        run_identity_consistency,
        add_identity_consistency,
        "genuine/impostor cosine distributions, EER and FDR of a labelled embedding set",
    ),
    (
        "synthesize",
        run_synthesize,
        add_synthesize,
        "synthesize the faces of one shard of identities",
    ),
    (
        "make-contexts",
        run_make_contexts,
        add_make_contexts,
        "context candidates of synthetic people",
    ),
    (
        "join-manifests",
        run_join_manifests,
        add_join_manifests,
        "one manifest from the manifests of a set's shards",
    ),
    (
        "probe-contexts",
        run_probe_contexts,
        add_probe_contexts,
        "score one shard of context candidates with LDM probe samples",
    ),
    (
        "select-contexts",
        run_select_contexts,
        add_select_contexts,
        "keep consistent, distinct contexts",
    ),
    (
        "spread-contexts",
        run_spread_contexts,
        add_spread_contexts,
        "move selected contexts apart on the hypersphere",
    ),
    ("mix-manifests", run_mix_manifests, add_mix_manifests, "unite datasets, labels kept apart"),
    (
        "set-manifest",
        run_set_manifest,
        add_set_manifest,
        "a synthetic set's manifest (oversampled)",
    ),
    ("results-table", run_results_table, add_results_table, "the paper-style results table"),
    ("plot-curves", run_plot_curves, add_plot_curves, "training curves from loss.tsv logs"),
    ("plot-roc", run_plot_roc, add_plot_roc, "ROC curves of every model per benchmark"),
    ("plot-samples", run_plot_samples, add_plot_samples, "a synthetic set's sample grid"),
    ("plot-contexts", run_plot_contexts, add_plot_contexts, "selected and dropped contexts"),
    ("plot-previews", run_plot_previews, add_plot_previews, "the LDM's previews over training"),
    (
        "gpu-slots",
        run_gpu_slots,
        add_gpu_slots,
        "run a command on GPUs no other running job holds (CUDA_VISIBLE_DEVICES)",
    ),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synface", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func, add_arguments, help in COMMANDS:
        sub = commands.add_parser(name, help=help, description=help)
        sub.set_defaults(func=func)
        add_arguments(sub)
    return parser


def _is_user_error(error: BaseException) -> bool:
    """synface's own errors, and missing named inputs, already say what to fix: no traceback."""
    return isinstance(error, FileNotFoundError) or type(error).__module__.startswith("synface.")


def main(argv: Sequence[str] | None = None) -> None:
    """Run one stage; an error it explains ends the process with one line and exit code 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        args.func(args)
    except Exception as error:
        if not _is_user_error(error):
            raise
        logging.getLogger("synface").debug("traceback", exc_info=True)
        print(f"synface {args.command}: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

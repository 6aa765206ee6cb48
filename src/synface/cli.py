"""The ``synface`` command: one sub-command per pipeline stage.

The CLI only parses; each stage is a function of the package that tests call directly.
Nested hyper-parameters arrive as one JSON object (``--settings``),
so a Snakemake rule passes its ``params`` verbatim and a change in any of them reruns the rule.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def _settings(text: str) -> dict[str, Any]:
    """A JSON object given inline or as ``@path/to/file.json``."""
    if text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"--settings is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--settings must be a JSON object")
    return value


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

    _call(build_demo_world, args, cfg=DemoWorldConfig.from_settings(args.settings))


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

    _call(train_recognition, args, cfg=RecognitionTrainConfig.from_settings(args.settings))


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

    _call(train_autoencoder, args, cfg=AutoencoderTrainConfig.from_settings(args.settings))


def run_encode_latents(args: argparse.Namespace) -> None:
    from synface.ldm.latents import encode_latents

    _call(encode_latents, args)


def run_train_ldm(args: argparse.Namespace) -> None:
    from synface.ldm.train import LDMTrainConfig, train_ldm

    _call(train_ldm, args, cfg=LDMTrainConfig.from_settings(args.settings))


def run_check_identity(args: argparse.Namespace) -> None:
    from synface.ldm.identity_check import IdentityCheckSettings, check_identity

    _call(check_identity, args, settings=IdentityCheckSettings.from_settings(args.settings))


def run_pack_demo_weights(args: argparse.Namespace) -> None:
    from synface.demo_weights import pack_demo_weights

    commands = json.loads(args.commands.read_text()) if args.commands else []
    _call(pack_demo_weights, args, config=args.settings, commands=commands)


def run_identity_consistency(args: argparse.Namespace) -> None:
    from synface.consistency import consistency_report

    _call(consistency_report, args)


def run_synthesize(args: argparse.Namespace) -> None:
    import numpy as np

    from synface.synthesis import SynthesisSettings, synthesize_shard

    contexts, identities = np.load(args.contexts), range(args.first, args.last)
    settings = SynthesisSettings.from_settings(args.settings)
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
    _call(make[args.source], args)


def run_select_contexts(args: argparse.Namespace) -> None:
    from synface.contexts import SelectionConfig, select_contexts

    _call(select_contexts, args, cfg=SelectionConfig.from_settings(args.settings))


def run_spread_contexts(args: argparse.Namespace) -> None:
    from synface.contexts import SpreadConfig, write_spread_contexts

    _call(write_spread_contexts, args, cfg=SpreadConfig.from_settings(args.settings))


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


def _threads(
    sub: argparse.ArgumentParser, help: str = "CPU threads", dest: str = "threads"
) -> None:
    sub.add_argument("--threads", type=int, default=1, help=help, dest=dest)


def _settings_option(sub: argparse.ArgumentParser, help: str) -> None:
    """The stage's settings as one JSON object, inline or ``@file.json`` (see ``_settings``)."""
    sub.add_argument("--settings", type=_settings, required=True, help=f"{help} (JSON or @file)")


def _path(
    sub: argparse.ArgumentParser,
    flag: str,
    dest: str,
    help: str | None = None,
    required: bool = True,
) -> None:
    """A path option that feeds the stage parameter ``dest`` (see ``_call``)."""
    sub.add_argument(flag, type=Path, required=required, help=help, dest=dest)


def _first_stage(
    sub: argparse.ArgumentParser, required: bool = True, help: str = "", dest: str = "first_stage"
) -> None:
    help = help or "VQ-f4 folder: the two state dicts and first_stage.json"
    _path(sub, "--first-stage", dest, help, required)


def _ldm(sub: argparse.ArgumentParser, required: bool = True, help: str | None = None) -> None:
    _path(sub, "--ldm", "ldm_checkpoint", help, required)


def add_demo_world(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--out", "out_dir", "output folder")
    _settings_option(sub, "the demo_world config plus image_size, e.g. '{\"image_size\": 32}'")
    _threads(sub, dest="workers")


def add_manifest(sub: argparse.ArgumentParser) -> None:
    source = sub.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="an images/<identity>/<n>.jpg folder")
    source.add_argument("--manifest", type=Path, help="an existing manifest to re-root")
    sub.add_argument("--out", type=Path, required=True)


def add_pack_tfrecords(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--manifest", type=Path, required=True)
    sub.add_argument("--out-dir", type=Path, required=True)
    sub.add_argument("--name", required=True, help="TFRecord dataset name (must contain TFR)")
    sub.add_argument("--image-size", type=int, required=True, help="face size in pixels")
    sub.add_argument("--records-per-shard", type=int, default=500_000)
    _threads(sub, "decoding processes", dest="workers")


def add_train_recognition(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--index", "index_path", "4-column TFace training index")
    sub.add_argument("--data-root", type=Path, required=True, help="folder of the TFR-* dirs")
    _path(sub, "--out", "backbone_out", "final backbone state dict")
    sub.add_argument("--run-dir", type=Path, required=True, help="checkpoints, kept for resume")
    _settings_option(sub, "recognition config")
    _threads(sub)


def add_evaluate(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--weights", type=Path, required=True, help="backbone (+ .json spec)")
    sub.add_argument("--pack", type=_named_path, action="append", required=True, dest="packs")
    _path(sub, "--out", "out_json")
    sub.add_argument("--batch-size", type=int, default=64)
    sub.add_argument("--precision", default="bf16", help="bf16 or fp32 (evaluation.precision)")
    _threads(sub)


def add_export_embedding_model(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--weights", type=Path, required=True, help="backbone (+ .json spec)")
    _path(sub, "--out", "onnx_out", "model.onnx (+ model.onnx.json)")
    _threads(sub)


def add_extract_embeddings(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--model", "onnx_model", "from export-embedding-model")
    sub.add_argument("--manifest", type=Path, required=True)
    sub.add_argument("--out-dir", type=Path, required=True, help="embeddings.npy + names.txt")
    sub.add_argument("--batch-size", type=int, default=64)
    _threads(sub)


def add_train_autoencoder(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--manifest", type=Path, required=True)
    sub.add_argument(
        "--out-dir", type=Path, required=True, help="first_stage_*_state_dict.pt + .json"
    )
    sub.add_argument("--run-dir", type=Path, required=True, help="checkpoints, kept for resume")
    _settings_option(sub, "first-stage config")
    _threads(sub)


def add_encode_latents(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--manifest", type=Path, required=True)
    _path(sub, "--embeddings", "embeddings_dir", "extract-embeddings output")
    _first_stage(sub, dest="first_stage_dir")
    sub.add_argument("--image-size", type=int, required=True, help="LDM input size in pixels")
    sub.add_argument("--out-dir", type=Path, required=True)
    sub.add_argument("--batch-size", type=int, default=64)
    _threads(sub)


def add_train_ldm(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--latents", "latents_dir", "encode-latents output")
    _path(sub, "--out", "out_checkpoint", "ADMIS-format EMA checkpoint")
    sub.add_argument("--run-dir", type=Path, required=True, help="checkpoints and previews")
    _settings_option(sub, "ldm training config")
    _first_stage(sub, required=False, help="VQ-f4 folder, for preview grids")
    _threads(sub)


def add_check_identity(sub: argparse.ArgumentParser) -> None:
    _ldm(sub, help="LDM checkpoint (+ .json)")
    _first_stage(sub)
    sub.add_argument("--embedding-weights", type=Path, required=True, help="backbone (+ .json)")
    _path(sub, "--contexts", "contexts_dir", "embeddings of held-out faces")
    _path(sub, "--out", "out_json", "JSON (a PNG grid goes beside it)")
    _settings_option(sub, "num_contexts, samples_per_context, steps, batch_size")
    _threads(sub)


def add_pack_demo_weights(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--embedding-weights", type=Path, required=True)
    _first_stage(sub, dest="first_stage_dir")
    _ldm(sub)
    sub.add_argument("--identity-check", type=Path, required=True)
    _settings_option(sub, "the config they fit")
    sub.add_argument("--commands", type=Path, help="JSON list of the commands that made them")
    _path(sub, "--benchmarks", "benchmarks_dir", "Snakemake benchmark tsvs")
    sub.add_argument("--made-on", default="", help="the machine, in words")
    _path(sub, "--out", "out_dir")


def add_identity_consistency(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--embeddings", "embeddings_dir", "extract-embeddings output")
    sub.add_argument("--manifest", type=Path, required=True, help="the manifest it was made from")
    sub.add_argument("--out-json", type=Path, required=True)
    sub.add_argument("--out-png", type=Path, required=True, help="score histograms")
    sub.add_argument("--max-impostor-pairs", type=int, default=200_000, help="sample cap")
    sub.add_argument("--seed", type=int, default=0, help="impostor sampling seed")


def add_synthesize(sub: argparse.ArgumentParser) -> None:
    _ldm(sub, help="LDM checkpoint (+ .json)")
    _first_stage(sub)
    sub.add_argument("--contexts", type=Path, required=True, help="(N, 512) unit rows, .npy")
    sub.add_argument("--first", type=int, required=True, help="first identity (context row)")
    sub.add_argument("--last", type=int, required=True, help="one past the last identity")
    sub.add_argument("--images-per-identity", type=int, required=True)
    sub.add_argument("--out-dir", type=Path, required=True, help="<identity>/<k>.png go here")
    sub.add_argument("--done-marker", type=Path, required=True, help="shard summary, written last")
    sub.add_argument("--face-size", type=int, required=True, help="saved face size in pixels")
    _settings_option(sub, "the synthesis section's keys, e.g. seed, sampler, steps, batch_size")
    sub.add_argument(
        "--embedding-weights",
        type=Path,
        help="the embedding model that judges faces (needed with filter_threshold)",
    )
    _threads(sub)


def add_make_contexts(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--source", choices=["uniform", "ldm", "diffusers", "database"], required=True)
    sub.add_argument("--out-dir", type=Path, required=True)
    sub.add_argument("--count", type=int, default=0, help="contexts or faces to make")
    sub.add_argument("--dim", type=int, default=512, help="uniform: embedding width")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--face-size", type=int, default=112)
    sub.add_argument("--steps", type=int, default=50, help="sampling steps")
    sub.add_argument("--batch-size", type=int, default=100)
    _ldm(sub, required=False, help="ldm: the LDM checkpoint (+ .json)")
    _first_stage(sub, required=False, help="ldm: the VQ-f4 folder")
    sub.add_argument("--model-dir", type=Path, help="diffusers: unconditional UNet folder")
    sub.add_argument("--images", type=Path, help="database: folder of context faces")
    sub.add_argument("--embed-npy", type=Path, help="database: ADMIS elastic_embed.npy")
    sub.add_argument("--names-pkl", type=Path, help="database: ADMIS image_names.pkl")
    sub.add_argument("--embeddings-out", type=Path, help="database: where imports go")
    _threads(sub)


def add_select_contexts(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--candidates", "candidates_dir", "candidate embeddings")
    _path(sub, "--manifest", "candidates_manifest", "candidate faces")
    _ldm(sub)
    _first_stage(sub)
    sub.add_argument("--embedding-weights", type=Path, required=True)
    sub.add_argument("--out-dir", type=Path, required=True)
    _settings_option(sub, "selection config")
    _threads(sub)


def add_spread_contexts(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--contexts", "contexts_npy", "selected contexts, .npy")
    sub.add_argument("--out-dir", type=Path, required=True)
    _settings_option(sub, "steps, lr, temperature, pull")


def add_mix_manifests(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--part",
        type=Path,
        action="append",
        dest="parts",
        required=True,
        help="a dataset manifest; give two or more, labels follow in this order",
    )
    _path(sub, "--out", "out_manifest")


def add_set_manifest(sub: argparse.ArgumentParser) -> None:
    _path(sub, "--out", "out_manifest")
    sub.add_argument("--identities", type=int, required=True)
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


def add_results_table(sub: argparse.ArgumentParser) -> None:
    sub.add_argument(
        "--row",
        type=_named_path,
        action="append",
        required=True,
        dest="evaluations",
        help="LABEL=evaluation.json; a label given again adds a run (mean ± std)",
    )
    sub.add_argument(
        "--consistency",
        type=_named_path,
        action="append",
        help="LABEL=consistency.json: the row's EER, FDR and genuine scores",
    )
    sub.add_argument("--markdown", type=Path, required=True)
    _path(sub, "--csv", "csv_path")
    _path(sub, "--json", "json_path")


Handler = Callable[[argparse.Namespace], None]
Arguments = Callable[[argparse.ArgumentParser], None]

# name, what it runs, its arguments, its help line: one row per pipeline stage.
COMMANDS: tuple[tuple[str, Handler, Arguments, str], ...] = (
    ("demo-world", run_demo_world, add_demo_world, "render the procedural demo world"),
    ("manifest", run_manifest, add_manifest, "write a dataset manifest (path<TAB>label)"),
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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synface", description=__doc__.splitlines()[0])
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

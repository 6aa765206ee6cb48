"""Identity embeddings: the ElasticFace encoder as ONNX, batched extraction, ADMIS embedding files.

The generative stage conditions on one L2-normalised ElasticFace-Arc (iresnet100) embedding per
image. Extraction runs under ONNX Runtime: one exported
file serves the CPU provider on a laptop and the CUDA provider on a GPU node, with no torch model
code at extraction time. In the demo world the recognition backbone trained there plays
ElasticFace's role through the same two steps.

Files:
- `export_onnx`: `<weights>` + `<weights>.json` spec → `model.onnx` (raw embedding, dynamic batch)
  and `model.onnx.json` (input size, normalisation, parity figures).
- `extract_embeddings`: manifest → `embeddings.npy` (N × D float32, unit rows) + `names.txt`
  (manifest-relative paths, same order), the one link between an image and its row,
  + `rejected.tsv` (images skipped as unreadable).

Reading these files, and ADMIS's `elastic_embed.npy` + `image_names.pkl`, is
`synface.io.embeddings`'.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synface import runtime
from synface.evaluation.verification import l2_normalize
from synface.io.atomic import atomic_path, write_json
from synface.io.embeddings import EMBEDDINGS_FILE, write_names
from synface.io.images import DatasetImages
from synface.io.manifest import read_manifest, relative_name
from synface.io.npy import write_rows
from synface.models.spec import load_backbone
from synface.progress import progress

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
# Progress lines in a job's log: one every this many batches.
PROGRESS_EVERY_BATCHES = 50

# Parity inputs: two batch sizes, so the check also covers the dynamic batch axis.
PARITY_BATCH_SIZES = (1, 4)
PARITY_SEED = 0
# Gates on the L2-normalised embeddings, the quantity extraction writes.
PARITY_MAX_ABS_DIFF = 1e-4
PARITY_MIN_COSINE = 0.9999

# ElasticFace / insightface input normalisation: (x − 127.5) / 127.5.
NORMALISATION = "(x - 127.5) / 127.5, RGB, NCHW float32"


class OnnxParityError(RuntimeError):
    """ONNX Runtime and torch disagree on the exported model's embeddings."""


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime (CPU) vs torch on the same seeded inputs, over all parity batches.

    `max_abs_diff` and `min_cosine` compare L2-normalised embeddings and are the gated figures;
    `raw_max_abs_diff` compares the raw outputs, whose scale `raw_max_abs` gives.
    """

    batch_sizes: tuple[int, ...]
    max_abs_diff: float
    min_cosine: float
    raw_max_abs_diff: float
    raw_max_abs: float


def export_onnx(
    weights: Path,
    onnx_out: Path,
    threads: int = 1,
    max_abs_diff: float = PARITY_MAX_ABS_DIFF,
    min_cosine: float = PARITY_MIN_COSINE,
) -> Parity:
    """Export the backbone of `weights` (+ its `.json` spec) to ONNX and prove parity.

    The model maps (batch, 3, s, s) float32 in [-1, 1] to raw (batch, D) embeddings; extraction
    normalises. Exporter: `torch.onnx.export(dynamo=True)`, the torch.export-based exporter that
    torch ≥ 2.9 uses by default; the TorchScript exporter (`dynamo=False`) still works on torch
    2.14.1 but warns that it will be removed. Weights are embedded in the one file
    (`external_data=False`, fine below ONNX's 2 GB limit; iresnet100 is 261 MB), so the file can be
    moved atomically.

    The file is written under a temporary name and only moved to `onnx_out` once ONNX Runtime
    reproduces torch within `max_abs_diff` and `min_cosine`; otherwise `OnnxParityError` is raised
    and nothing is left at `onnx_out`. `onnx_out` + ".json" records the input contract and the
    figures.
    """
    weights, onnx_out = Path(weights), Path(onnx_out)
    runtime.set_threads(threads)
    model, input_size = load_backbone(weights)
    spec = json.loads(weights.with_suffix(".json").read_text())
    with atomic_path(onnx_out) as tmp:
        _export(model, input_size, tmp)
        parity = _check_parity(model, input_size, tmp, threads)
        log.info("ONNX Runtime vs torch for %s: %s", weights, parity)
        if parity.max_abs_diff > max_abs_diff or parity.min_cosine < min_cosine:
            raise OnnxParityError(
                f"{weights}: the ONNX export disagrees with torch (normalised max |diff| "
                f"{parity.max_abs_diff:.3g} > {max_abs_diff:g} or cosine {parity.min_cosine:.6f} "
                f"< {min_cosine}); {onnx_out} was not written. Check the architecture spec "
                f"{weights.with_suffix('.json')} and the torch / onnxscript / onnxruntime versions"
            )

    info = {
        "onnx": onnx_out.name,
        "weights": str(weights),
        "architecture": spec,
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, input_size, input_size],
            "normalisation": NORMALISATION,
            "resize": f"bilinear, antialiased, to {input_size}x{input_size} when sizes differ",
        },
        "output": {"name": OUTPUT_NAME, "l2_normalised": False},
        "parity": asdict(parity)
        | {"gate_max_abs_diff": max_abs_diff, "gate_min_cosine": min_cosine},
    }
    write_json(_onnx_info_path(onnx_out), info)
    return parity


def _onnx_info_path(onnx_out: Path) -> Path:
    # `model.onnx.json`, not `model.json`: the latter could be a weights spec in the same folder.
    return onnx_out.with_name(onnx_out.name + ".json")


def _export(model: torch.nn.Module, input_size: int, path: Path) -> None:
    # Batch 2 as the example: torch.export specialises sizes 0 and 1, which would pin the axis.
    example = torch.zeros(2, 3, input_size, input_size)
    batch = torch.export.Dim("batch")
    torch.onnx.export(
        model,
        (example,),
        path,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        external_data=False,
    )


def _check_parity(model: torch.nn.Module, input_size: int, onnx_path: Path, threads: int) -> Parity:
    """Run both on seeded uniform [-1, 1) inputs (the normalised image range)."""
    session = _cpu_session(onnx_path, threads)
    generator = torch.Generator().manual_seed(PARITY_SEED)
    abs_diff, cosine, raw_diff, raw_max = 0.0, 1.0, 0.0, 0.0
    for batch_size in PARITY_BATCH_SIZES:
        x = torch.rand(batch_size, 3, input_size, input_size, generator=generator) * 2 - 1
        with torch.inference_mode():
            expected = model(x).double().numpy()
        actual = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0].astype(np.float64)
        if actual.shape != expected.shape:
            raise OnnxParityError(
                f"{onnx_path}: ONNX output shape {actual.shape} != torch's {expected.shape} "
                f"at batch size {batch_size}"
            )
        unit_actual, unit_expected = l2_normalize(actual), l2_normalize(expected)
        abs_diff = max(abs_diff, float(np.abs(unit_actual - unit_expected).max()))
        cosine = min(cosine, float((unit_actual * unit_expected).sum(axis=1).min()))
        raw_diff = max(raw_diff, float(np.abs(actual - expected).max()))
        raw_max = max(raw_max, float(np.abs(expected).max()))
    return Parity(PARITY_BATCH_SIZES, abs_diff, cosine, raw_diff, raw_max)


def _cpu_session(onnx_path: Path, threads: int) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(
        str(onnx_path), _session_options(threads), providers=["CPUExecutionProvider"]
    )


def _session_options(threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One pool: a second busy pool on the job's cores only oversubscribes them (runtime.py).
    options.inter_op_num_threads = 1
    return options


def _extraction_session(onnx_model: Path, threads: int) -> Any:
    """CUDA provider when ORT has it and a GPU is present, else CPU."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        # onnxruntime-gpu loads cuDNN/cuBLAS from the nvidia wheels torch also uses.
        ort.preload_dlls()
        # The GPU slot this job holds, so concurrent extraction jobs use different GPUs.
        device = {"device_id": runtime.pick_device().index}
        providers.insert(0, ("CUDAExecutionProvider", device))
    session = ort.InferenceSession(str(onnx_model), _session_options(threads), providers=providers)
    log.info("ONNX Runtime providers for %s: %s", onnx_model, session.get_providers())
    return session


@dataclass(frozen=True)
class ExtractionSummary:
    """What `extract_embeddings` wrote."""

    count: int
    dim: int
    input_size: int
    providers: tuple[str, ...]


def extract_embeddings(
    onnx_model: Path, manifest: Path, out_dir: Path, batch_size: int, threads: int
) -> ExtractionSummary:
    """Embed every usable manifest image; write `embeddings.npy` (N × D float32), `names.txt`
    and `rejected.tsv`.

    Preprocessing follows ElasticFace as ADMIS applies it: RGB, (x − 127.5) /
    127.5, then a bilinear resize to the model's input size when the image differs (128-px CASIA
    → 112), single view (no flip), and each output row L2-normalised. Images that
    `synface.io.images` refuses are skipped and listed in `rejected.tsv`; the rows are the other
    images in manifest order, and `names.txt` line i is row i's path relative to the manifest's
    folder (`synface.io.embeddings.aligned_entries` joins them back). Both files are written
    under temporary names and renamed, so an interrupted job leaves no partial output.

    Raises:
        ValueError: naming the files when no image of the manifest is usable.
    """
    onnx_model, manifest, out_dir = Path(onnx_model), Path(manifest), Path(out_dir)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    runtime.set_threads(threads)
    entries = read_manifest(manifest)
    if not entries:
        raise ValueError(f"{manifest}: the manifest lists no images")
    session = _extraction_session(onnx_model, threads)
    input_size, dim = _model_io(session, onnx_model)
    names = [relative_name(entry.path, manifest) for entry in entries]
    images = DatasetImages([entry.path for entry in entries], names, input_size, threads)
    kept: list[int] = []
    # A memory map of the final array: N × D never has to fit in RAM (CASIA: 490k rows).
    with (
        write_rows(out_dir / EMBEDDINGS_FILE, (len(entries), dim), np.float32) as rows,
        progress(
            len(entries), "extract-embeddings", PROGRESS_EVERY_BATCHES * batch_size, unit="images"
        ) as bar,
    ):
        for indices, batch in images.batches(batch_size):
            raw = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
            rows.append(l2_normalize(raw.astype(np.float64)))
            kept += indices
            bar.update(indices[-1] + 1 - bar.n)
        images.finish(out_dir, manifest)
    write_names(out_dir, [names[i] for i in kept])
    summary = ExtractionSummary(len(kept), dim, input_size, tuple(session.get_providers()))
    log.info("wrote %s", summary)
    return summary


def _model_io(session: Any, onnx_model: Path) -> tuple[int, int]:
    """Input side and embedding width from the graph, which `export_onnx` leaves static."""
    (inputs,), (outputs,) = session.get_inputs(), session.get_outputs()
    in_shape, out_shape = inputs.shape, outputs.shape
    if inputs.name != INPUT_NAME or len(in_shape) != 4 or not isinstance(in_shape[2], int):
        raise ValueError(
            f"{onnx_model}: expected input '{INPUT_NAME}' of shape (batch, 3, s, s), got "
            f"'{inputs.name}' {in_shape}; export the model with `synface export-embedding-model`"
        )
    if len(out_shape) != 2 or not isinstance(out_shape[1], int):
        raise ValueError(f"{onnx_model}: expected a (batch, D) output, got {out_shape}")
    return in_shape[2], out_shape[1]

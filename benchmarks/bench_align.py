"""Face alignment cost per face: MTCNN detection + similarity warp, against a plain resize.

``contexts.align`` replaces the resize of a generator's whole frame (the baseline, what
unconditional contexts get without alignment) by detection, a least-squares fit to the ArcFace
template and a bilinear warp. The frames are the real photograph scikit-image ships
(``astronaut``), cropped around the face and scaled to the FFHQ DDPM's 256 px, each under its own
random rotation (±30°), scale (0.8-1.2) and shift, as generated faces vary.

    python benchmarks/bench_align.py                 # 64 frames, batches of 1 and 16
    python benchmarks/bench_align.py --frames 16 --repeats 1
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import skimage.data
import torch
from common import Row, best_of, report
from PIL import Image

from synface import runtime
from synface.align import AlignSettings, FaceAligner, template, umeyama, warp_faces
from synface.ldm.faces import resize_faces

FRAME = 256  # the FFHQ DDPM's frame
FACE_SIZE = 112


def frames(count: int, seed: int) -> torch.Tensor:
    """``count`` 256 px frames of the astronaut's face, each moved by a random similarity."""
    photo = Image.fromarray(skimage.data.astronaut()).crop((96, 0, 352, 256))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        angle, scale = math.radians(rng.uniform(-30, 30)), rng.uniform(0.8, 1.2)
        rotation = scale * np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        centre = np.array([FRAME / 2, FRAME / 2])
        shift = centre + rng.uniform(-20, 20, 2) - rotation @ centre
        inverse = np.linalg.inv(np.vstack([np.c_[rotation, shift], [0, 0, 1]]))[:2]
        moved = photo.transform(
            (FRAME, FRAME), Image.AFFINE, tuple(inverse.ravel()), Image.BILINEAR
        )
        out.append(torch.from_numpy(np.array(moved)).permute(2, 0, 1))
    return torch.stack(out)


def rate(work, images: torch.Tensor, batch: int) -> float:
    """Faces per second of ``work`` over ``images`` in batches of ``batch``."""
    started = time.perf_counter()
    for first in range(0, len(images), batch):
        work(images[first : first + batch])
    return len(images) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    runtime.set_threads(args.threads)
    images = frames(args.frames, seed=0)
    aligner = FaceAligner(AlignSettings.from_settings({}), FACE_SIZE)
    found = aligner.landmarks(images)
    missed = sum(isinstance(f, str) for f in found)
    points = [f for f in found if not isinstance(f, str)]
    matrices = torch.tensor(np.array([umeyama(p, template(FACE_SIZE)) for p in points]))
    kept = images[[i for i, f in enumerate(found) if not isinstance(f, str)]]
    measures = {
        "resize (baseline)": lambda: rate(lambda b: resize_faces(b, FACE_SIZE), images, 16),
        "align, batch 1": lambda: rate(aligner, images, 1),
        "align, batch 16": lambda: rate(aligner, images, 16),
        "detection only, batch 16": lambda: rate(aligner.landmarks, images, 16),
        "warp only, batch 16": lambda: rate(
            lambda b: warp_faces(b, matrices[: len(b)], FACE_SIZE), kept, 16
        ),
    }
    rates = best_of(measures, args.repeats)
    base = rates["resize (baseline)"]
    rows: list[Row] = [(name, r, r / base) for name, r in rates.items()]
    report(
        [
            (
                f"{args.frames} frames of {FRAME} px -> {FACE_SIZE} px crops, CPU, "
                f"{args.threads} threads",
                rows,
            )
        ],
        {
            "ms_per_face_align_batch1": round(1000 / rates["align, batch 1"], 1),
            "ms_per_face_align_batch16": round(1000 / rates["align, batch 16"], 1),
            "ms_per_face_warp": round(1000 / rates["warp only, batch 16"], 2),
            "frames_without_face": missed,
            "threads": args.threads,
        },
    )


if __name__ == "__main__":
    main()

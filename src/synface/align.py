"""Face alignment: five landmarks, a similarity transform to the ArcFace template, a warp.

Face-recognition models (ElasticFace, the TFace IR family) and the LDM trained on CASIA-WebFace
all see *aligned* 112×112 crops: eyes, nose tip and mouth corners at fixed places. ADMIS's
context database holds such crops ("sample and crop"); faces from an unconditional generator
(a 256 px FFHQ frame) or a user's photographs do not. This module makes them so:
detect → five landmarks → least-squares similarity (Umeyama, no reflection) onto the template
→ bilinear warp with a black border (insightface's ``norm_crop``: ``cv2.warpAffine``,
``borderValue=0``). A face that is not found, too small or not confident enough is dropped
with its reason.

The detector is MTCNN, from ``facenet-pytorch`` (its P/R/O-Net weights ship inside the wheel,
so nothing is downloaded at run time; pure torch, so it runs wherever the pipeline runs). It was
chosen over the other detectors whose weights come in a registry package by the landmark
consistency they keep under known similarity transforms of a real photograph (scikit-image's
``astronaut``, 512 px, face ≈ 42 px between the eyes; 45 transforms: rotation −30…30°, scale
0.7–1.4, shifts up to 30 px; each detection mapped back by the transform's inverse and compared
with the detection on the untouched photo; one CPU thread):

========================================  =========  ============  ======  ==========
detector (package)                        found      mean error    > 5 px  time/image
========================================  =========  ============  ======  ==========
MTCNN (facenet-pytorch 2.5.3)             45 / 45    1.34 px       0       306 ms
dlib HOG + 68 points → 5 (dlib-bin 20.0,  45 / 45    19.3 px       7       276 ms
face-recognition-models 0.3.0)                       (0.91 inliers)
========================================  =========  ============  ======  ==========

dlib's frontal HOG detector misplaces the face at ±30° (errors up to 265 px) and its models need
a 100 MB package that imports the removed ``pkg_resources``. MediaPipe was not usable: releases
from 0.10.30 on ship neither the legacy solutions nor any ``.tflite`` model (the Tasks API
downloads them), and 0.10.21, the last with them, requires numpy < 2. OpenCV's YuNet
(``cv2.FaceDetectorYN``) needs an ``.onnx`` file that no registry package ships; its Haar
cascades give no landmarks. facenet-pytorch 2.6.0 pins torch 2.2; 2.5.3 declares no pins and
installs beside torch 2.14.1 unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synface import runtime
from synface.io.atomic import atomic_path
from synface.io.images import BadImageError, read_rgb
from synface.io.manifest import IMAGE_SUFFIXES
from synface.io.rejected import no_usable_images, write_rejected
from synface.settings import StageSettings

log = logging.getLogger(__name__)

# The ArcFace 112×112 five-point template (left eye, right eye, nose tip, left and right mouth
# corner, in pixels): insightface ``python-package/insightface/utils/face_align.py``
# ``arcface_dst``, the crop every ArcFace-family model (ElasticFace, TFace) and CASIA-WebFace's
# aligned release assume.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
TEMPLATE_SIZE = 112


@dataclass(frozen=True)
class AlignSettings(StageSettings, section="alignment"):
    """When a detection counts as a face (config section ``alignment``, defaults in the schema).

    ``min_confidence`` is MTCNN's final (O-Net) face probability; ``min_face`` the smallest face
    box side in pixels of the source image that is searched for and kept: a smaller face
    stretched to the crop is mostly blur.
    """

    min_confidence: float
    min_face: int


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 similarity (rotation, uniform scale, shift; no reflection) that maps the points
    ``src`` onto ``dst`` with the least squared error (Umeyama 1991, eq. 40-42)."""
    src, dst = np.asarray(src, dtype=np.float64), np.asarray(dst, dtype=np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    u, s, vt = np.linalg.svd(dst_c.T @ src_c / len(src))
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1  # the best rotation, not the best reflection
    rotation = u @ np.diag(sign) @ vt
    scale = (s * sign).sum() / (src_c**2).sum(1).mean()
    shift = dst_mean - scale * rotation @ src_mean
    return np.c_[scale * rotation, shift]


def template(size: int) -> np.ndarray:
    """The ArcFace template for a ``size``-pixel crop (scaled from its 112 px original)."""
    return ARCFACE_TEMPLATE * (size / TEMPLATE_SIZE)


def warp_faces(images: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """Crops (N, 3, size, size) uint8 of ``images`` (N, 3, H, W) uint8 under ``matrices``
    (N, 2, 3), each mapping source pixels to crop pixels: bilinear, black outside the source.

    Pixel centres sit on integer coordinates (OpenCV's ``warpAffine`` convention, the one the
    template's coordinates are in); ``grid_sample`` with ``align_corners=False`` puts the
    centres half a pixel in, hence the ``+ 0.5``.
    """
    n, _, height, width = images.shape
    full = torch.cat(
        [matrices.double(), matrices.new_tensor([0, 0, 1]).double().expand(n, 1, 3)], 1
    )
    inverse = torch.linalg.inv(full)[:, :2]
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pixels = torch.stack([xs, ys, torch.ones_like(xs)], -1).double().to(inverse.device)
    source = torch.einsum("nij,hwj->nhwi", inverse, pixels)
    extent = torch.tensor([width, height], dtype=torch.float64, device=source.device)
    grid = ((source + 0.5) / extent * 2 - 1).to(torch.float32)
    warped = F.grid_sample(images.float(), grid.to(images.device), align_corners=False)
    return warped.round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class AlignedBatch:
    """Crops of the faces found, their positions in the batch, and the others with a reason."""

    faces: torch.Tensor
    kept: list[int] = field(default_factory=list)
    dropped: list[tuple[int, str]] = field(default_factory=list)


class FaceAligner:
    """MTCNN landmarks → ArcFace-template crops of ``size`` pixels, a batch at a time."""

    def __init__(
        self, settings: AlignSettings, size: int, device: torch.device | None = None
    ) -> None:
        from facenet_pytorch import MTCNN

        self.settings, self.size = settings, size
        self.device = device or torch.device("cpu")
        self.mtcnn = MTCNN(min_face_size=settings.min_face, device=self.device).eval()

    def landmarks(self, images: torch.Tensor) -> list[np.ndarray | str]:
        """Per image of ``images`` (N, 3, H, W) uint8, one size: the largest face's five
        landmarks (5, 2), or why there is none."""
        with torch.inference_mode():
            batch = images.permute(0, 2, 3, 1).to(self.device)
            boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
        return [self._judge(*found) for found in zip(boxes, probs, points, strict=True)]

    def _judge(self, boxes: np.ndarray | None, probs: np.ndarray, points: np.ndarray | None):
        """The largest face's landmarks (MTCNN sorts largest first), or why it is refused."""
        if boxes is None or points is None:
            return f"no face found (faces of {self.settings.min_face} px and more searched)"
        side = float(min(boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]))
        if side < self.settings.min_face:
            return f"face too small: {side:.0f} px < alignment.min_face {self.settings.min_face}"
        if probs[0] < self.settings.min_confidence:
            return (
                f"face confidence {probs[0]:.3f} < alignment.min_confidence "
                f"{self.settings.min_confidence}"
            )
        return np.asarray(points[0], dtype=np.float64)

    def __call__(self, images: torch.Tensor) -> AlignedBatch:
        """Aligned crops (on the CPU) of the faces in ``images`` (N, 3, H, W) uint8."""
        found = self.landmarks(images)
        kept = [i for i, f in enumerate(found) if not isinstance(f, str)]
        dropped = [(i, f) for i, f in enumerate(found) if isinstance(f, str)]
        dst = template(self.size)
        matrices = torch.tensor(np.array([umeyama(found[i], dst) for i in kept]).reshape(-1, 2, 3))
        faces = warp_faces(images[kept], matrices, self.size) if kept else images[:0, :, :1, :1]
        return AlignedBatch(faces.cpu(), kept, dropped)


def align_folder(
    images: Path,
    out_dir: Path,
    face_size: int,
    settings: AlignSettings,
    threads: int = 1,
) -> int:
    """Aligned copies of every face image under ``images`` (any depth), written as PNG under
    ``out_dir/images/`` at the same relative path (suffix ``.png``); images without a usable
    face, or unreadable ones, are listed in ``out_dir/rejected.tsv`` (path relative to
    ``images``). Returns the number of faces written."""
    runtime.set_threads(threads)
    images, out_dir = Path(images), Path(out_dir)
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: no such folder of face images to align")
    files = sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{images} holds no .jpg/.png face images to align")
    aligner = FaceAligner(settings, face_size, runtime.pick_device())
    rejected: list[tuple[str, str]] = []
    for path in files:
        name = path.relative_to(images).as_posix()
        reason = _align_file(aligner, path, out_dir / "images" / Path(name).with_suffix(".png"))
        if reason:
            rejected.append((name, reason))
            log.warning("dropped %s: %s", name, reason)
    write_rejected(out_dir, rejected)
    if len(rejected) == len(files):
        raise no_usable_images(images, rejected, out_dir)
    log.info("aligned %d of %d faces of %s", len(files) - len(rejected), len(files), images)
    return len(files) - len(rejected)


def _align_file(aligner: FaceAligner, path: Path, out: Path) -> str | None:
    """Write the aligned crop of ``path`` to ``out``; the reason when there is none."""
    try:
        image = read_rgb(path)
    except BadImageError as error:
        return error.reason
    batch = aligner(image[None])
    if batch.dropped:
        return batch.dropped[0][1]
    with atomic_path(out) as tmp:
        Image.fromarray(batch.faces[0].permute(1, 2, 0).numpy()).save(tmp, format="PNG")
    return None

"""Same seed, same bytes: a small demo world rendered today matches the bytes pinned here.

The shipped demo weights and the README's results were made from demo worlds rendered by this
code, so a change to the renderer, the default nuisances, the seeding or the file formats that
alters a single byte breaks their reproduction. The world below uses the default training and pack
nuisances (only the sizes are small), so each pinned file covers one of them.

If a change of bytes is deliberate, update the digests here and rebuild the demo weights
(`make demo-weights`), since they no longer match the world the workflow renders.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from synface.demo_world.world import DemoWorldConfig, build_demo_world

PACKS = ("lfw", "cfp_fp", "cplfw", "agedb_30", "calfw")

# `sha256sum` lines of every file the world below writes.
PINNED = """
95c4a78b6380bc093c4b09f65a51bae2b526fb06d833d72421a5e7f9afa26412  benchmarks/agedb_30.bin
c1c24a28d68bf4e0d2d71b6ad347bea38e7636a0e76781e46c33545fa7e75c20  benchmarks/calfw.bin
d92549a9f9bfa3aa5b5ac78a8da5be686f5a8ae8b3ea8b7bd0b4bb8a37d11571  benchmarks/cfp_fp.bin
3db10e7af12c585b7e13141f404e2d6d6e5a0b0878b0d24d2d31efdcdffc674d  benchmarks/cplfw.bin
0f33ce4e5de5de6c0c382f669cf8e5ef26d2aa5f92f7dfabb0fb78fe73589257  benchmarks/lfw.bin
65a95c3cf0754a998438a5a33899e90287ee7bed6716fb4e3abcfffa2fa4f635  heldout/images/00000/0.jpg
004f54b6dbd243cd46f13c735098b6a3c3f6ad54690b2a74de7b26b518e70102  heldout/manifest.tsv
a4b906f9656852eb67bf39a1e3966f2caa0eb9ae61b62821e03437aca880b3f8  train/images/00000/000.jpg
c21668b301ee42b6dee23411ea5b1c440b7fc25a6d081cc087d522922fd104d0  train/images/00000/001.jpg
3d02bc5654517e8a122c2ad151e2a07957e26d22b8ba82a3eee0cea6b2d56aa6  train/images/00001/000.jpg
a8700d4fd60bbf74cf699349a71cdf38ca3aabb28bb37980edeb5bbe90393bff  train/images/00001/001.jpg
44d2afe4176f6293c9b42c331d54532c10cc4596efd426be9e54d0c4967633a1  train/manifest.tsv
57f0f412bf1aae9286cebc05864012f6dea856bbee30669c6d545993608c46ea  world.json
"""
PINNED_SHA256 = {
    name: digest for digest, name in (line.split() for line in PINNED.strip().splitlines())
}


def test_a_small_demo_world_has_the_pinned_bytes(tmp_path: Path) -> None:
    cfg = DemoWorldConfig.from_settings(
        {
            "seed": 3,
            "image_size": 32,
            "train_identities": 2,
            "images_per_identity": 2,
            "heldout_identities": 1,
            "benchmarks": {name: {"pairs_per_fold": 2, "identities_per_fold": 2} for name in PACKS},
        }
    )
    build_demo_world(cfg, tmp_path)
    rendered = {
        path.relative_to(tmp_path).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(tmp_path.rglob("*"))
        if path.is_file()
    }
    changed = sorted(
        name
        for name in PINNED_SHA256.keys() | rendered.keys()
        if PINNED_SHA256.get(name) != rendered.get(name)
    )
    assert not changed, f"demo world bytes changed in {changed}"

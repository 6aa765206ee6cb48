"""Pickles from outside (benchmark packs, ADMIS name lists), loaded without running their code.

Unpickling resolves globals by name and calls them, so a downloaded pickle can run anything.
Every third-party pickle synface reads goes through `load_restricted`, whose global lookup is an
allow-list given by the caller: the plain types its format needs and nothing else.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO


class UnsafePickleError(ValueError):
    """A pickle names a global outside the allow-list; it was refused, not executed."""


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose global lookup is an allow-list; everything else is refused unexecuted."""

    def __init__(
        self,
        file: BinaryIO,
        path: Path,
        allowed: Mapping[tuple[str, str], object],
        refusal: str,
        encoding: str,
    ) -> None:
        super().__init__(file, encoding=encoding)
        self._path, self._allowed, self._refusal = path, allowed, refusal

    def find_class(self, module: str, name: str) -> object:
        allowed = self._allowed.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"{self._path}: refused to load global '{module}.{name}'; {self._refusal}"
            )
        return allowed


def load_restricted(
    path: Path,
    allowed: Mapping[tuple[str, str], object],
    refusal: str,
    encoding: str = "ASCII",
    error: type[ValueError] = ValueError,
) -> object:
    """Unpickle ``path`` resolving only the ``allowed`` globals.

    ``refusal`` completes the message of a refused global: what the format needs and how to
    re-create the file. ``encoding`` decodes Python 2 ``str`` (``"bytes"`` keeps them as bytes).
    A file that is not a pickle raises ``error`` naming it.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            return _RestrictedUnpickler(f, path, allowed, refusal, encoding).load()
        except (EOFError, pickle.UnpicklingError, UnicodeDecodeError) as exc:
            raise error(f"{path}: not a readable pickle ({exc})") from exc

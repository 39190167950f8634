"""Class vocabularies: names with synonyms, the background class, and the text queries they give.

File format (``classes.txt`` and ``ttd/assets/classes/*.txt``): one class per line, index = line
number starting at 0, synonyms comma-separated, the first name being the class's display name.
A first class named ``background`` marks a dataset with a background class: the threshold rule
scores it with a constant channel; the softmax rule queries the names that follow ``background``
on its line (the word ``background`` itself when none follow).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import TTDError
from .io import asset

__all__ = ["BUILTIN_VOCABULARIES", "Vocabulary"]

BUILTIN_VOCABULARIES = (
    "voc21",
    "voc20",
    "context60",
    "context59",
    "coco_object",
    "coco_stuff171",
    "cityscapes",
    "ade20k",
)
BACKGROUND = "background"


@dataclass(frozen=True)
class Vocabulary:
    """Per class, its names (first = display name); class 0 may be the background."""

    names: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        if not self.names:
            raise TTDError("a vocabulary needs at least one class")
        for i, syn in enumerate(self.names):
            if not syn or not all(n.strip() for n in syn):
                raise TTDError(f"class {i} of the vocabulary has an empty name")

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_lines(cls, lines: Sequence[str], source: str = "vocabulary") -> Vocabulary:
        while lines and not lines[-1].strip():
            lines = lines[:-1]
        names = []
        for i, line in enumerate(lines):
            syn = tuple(n.strip() for n in line.split(",") if n.strip())
            if not syn:
                raise TTDError(f"{source}:{i + 1}: empty line (class {i}); every line names one class")
            names.append(syn)
        if not names:
            raise TTDError(f"{source} lists no classes")
        return cls(tuple(names))

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise TTDError(f"class-name file not found: {path}")
        return cls.from_lines(path.read_text(encoding="utf-8").splitlines(), str(path))

    @classmethod
    def builtin(cls, name: str) -> Vocabulary:
        """The shipped class names of one of the eight benchmarks."""
        if name not in BUILTIN_VOCABULARIES:
            raise TTDError(f"no built-in class names for {name!r}; choose one of {', '.join(BUILTIN_VOCABULARIES)}")
        text = asset("classes", f"{name}.txt").read_text(encoding="utf-8")
        return cls.from_lines(text.splitlines(), f"classes/{name}.txt")

    @classmethod
    def from_spec(cls, spec: str, background: bool = True) -> Vocabulary:
        """``--classes``: a classes.txt file, else comma-separated names. A lone ``*.txt`` that is
        not a file is a missing file, not a class named after it; a list naming no class is refused."""
        from .io import is_file

        if is_file(Path(spec)):
            return cls.from_file(spec)
        if "," not in spec and spec.strip().lower().endswith(".txt"):
            raise TTDError(f"class-name file not found: {spec}")
        if not any(n.strip() for n in spec.split(",")):
            raise TTDError(f"--classes {spec!r} names no class; give names like 'cat,dog,grass' or a classes.txt file")
        return cls.from_names(spec, background=background)

    @classmethod
    def from_names(cls, names: Sequence[str] | str, background: bool = False) -> Vocabulary:
        """Plain class names (a list or ``"cat,dog,grass"``), optionally behind a background class."""
        if isinstance(names, str):
            names = names.split(",")
        classes = [(n.strip(),) for n in names if n.strip()]
        if background and not (classes and classes[0][0].lower() == BACKGROUND):
            classes.insert(0, (BACKGROUND,))
        return cls(tuple(classes))

    # --- views --------------------------------------------------------------------------------
    @property
    def has_background(self) -> bool:
        return self.names[0][0].lower() == BACKGROUND

    @property
    def display_names(self) -> list[str]:
        return [syn[0] for syn in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def queries(self, synonyms: bool, background_rule: str) -> tuple[list[str], list[int]]:
        """The text queries and, for each, the class it scores.

        Under the threshold rule the background is a constant channel, so it has no query.
        """
        queries, owners = [], []
        for idx, syn in enumerate(self.names):
            if idx == 0 and self.has_background:
                if background_rule == "threshold":
                    continue
                syn = syn[1:] or (BACKGROUND,)
            for name in syn if synonyms or (idx == 0 and self.has_background) else syn[:1]:
                queries.append(name)
                owners.append(idx)
        return queries, owners

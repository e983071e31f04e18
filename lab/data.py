"""Real text as byte tokens: by default the running interpreter's own standard library."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

__all__ = ["Corpus", "load_corpus"]


class Corpus:
    """Byte tokens with a deterministic split: the last ``val_fraction`` is validation."""

    def __init__(self, data: bytes, sources: list[str], val_fraction: float = 0.1) -> None:
        tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        cut = int(len(tokens) * (1 - val_fraction))
        self.train, self.val = tokens[:cut], tokens[cut:]
        self.sources = sources

    def batch(
        self, split: str, batch: int, ctx: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        src = self.train if split == "train" else self.val
        i = torch.randint(0, len(src) - ctx - 1, (batch,), generator=gen)
        idx = i[:, None] + torch.arange(ctx + 1)
        window = src[idx]
        return window[:, :-1], window[:, 1:]


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.is_file() and "__pycache__" not in q.parts)
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"corpus path {str(p)!r} does not exist")
    return out


def load_corpus(paths: list[str] | None, max_bytes: int) -> Corpus:
    """Concatenate files (sorted, deterministic) up to ``max_bytes``. Default: the stdlib's
    top-level ``*.py`` files shipped with this interpreter (no download)."""
    if paths:
        files = _files([Path(p) for p in paths])
    else:
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(stdlib.glob("*.py"))
    chunks, total, used = [], 0, []
    for f in files:
        data = f.read_bytes()
        if not data:
            continue
        chunks.append(data[: max_bytes - total])
        used.append(str(f))
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    if total < 4096:
        raise ValueError(f"the corpus has only {total} bytes; give at least 4 KiB of text")
    return Corpus(b"".join(chunks), used)

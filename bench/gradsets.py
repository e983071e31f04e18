"""Gradient sets shaped like real models (shapes only; values are drawn by each backend)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GRADSETS", "GradSet", "big_1e9", "gpt2_124m", "small_tensors"]


@dataclass(frozen=True)
class GradSet:
    name: str
    shapes: tuple[tuple[int, ...], ...]

    @property
    def numel(self) -> int:
        total = 0
        for s in self.shapes:
            n = 1
            for d in s:
                n *= d
            total += n
        return total

    def describe(self) -> str:
        return f"{len(self.shapes)} tensors, {self.numel / 1e6:.1f}M elements"


def gpt2_124m() -> GradSet:
    """GPT-2 small: wte, wpe, 12 blocks of (ln_1, attn, ln_2, mlp) weights+biases, ln_f."""
    d, v, ctx, layers = 768, 50257, 1024, 12
    shapes: list[tuple[int, ...]] = [(v, d), (ctx, d)]
    for _ in range(layers):
        shapes += [
            (d,),
            (d,),  # ln_1
            (d, 3 * d),
            (3 * d,),
            (d, d),
            (d,),  # attn c_attn, c_proj
            (d,),
            (d,),  # ln_2
            (d, 4 * d),
            (4 * d,),
            (4 * d, d),
            (d,),  # mlp c_fc, c_proj
        ]
    shapes += [(d,), (d,)]  # ln_f
    return GradSet("gpt2-124m", tuple(shapes))


def small_tensors(count: int = 4000) -> GradSet:
    """Many small tensors (LayerNorms, biases, small MoE experts): sizes 64..4096."""
    sizes = (64, 256, 1024, 4096)
    return GradSet(f"small-{count}", tuple((sizes[i % len(sizes)],) for i in range(count)))


def big_1e9() -> GradSet:
    """About 1e9 elements (4 GB of float32 gradients): a GPT-2-style decoder with d=2048,
    18 blocks, a 50,304-token embedding (tied output) and 2,048 positions; 220 tensors."""
    d, v, ctx, layers = 2048, 50304, 2048, 18
    shapes: list[tuple[int, ...]] = [(v, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,)]
        shapes += [(d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return GradSet("big-1e9", tuple(shapes))


GRADSETS = {"gpt2": gpt2_124m, "small": small_tensors, "big": big_1e9}

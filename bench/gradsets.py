"""Gradient sets shaped like real models (shapes only; values are drawn by each backend)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GRADSETS", "GradSet", "gpt2_124m", "small_tensors"]


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


GRADSETS = {"gpt2": gpt2_124m, "small": small_tensors}

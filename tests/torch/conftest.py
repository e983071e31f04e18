from __future__ import annotations

import pathlib
import sysconfig

import pytest

torch = pytest.importorskip("torch")


@pytest.fixture
def text_bytes() -> torch.Tensor:
    """Real text: a file of the Python standard library, as byte tokens."""
    data = pathlib.Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_bytes()
    return torch.tensor(list(data[:20000]), dtype=torch.long)


class TinyLM(torch.nn.Module):
    """Byte-level next-token model: embedding -> MLP -> logits, with a tied output layer."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(256, d)
        self.hidden = torch.nn.Linear(2 * d, d)
        self.norm = torch.nn.LayerNorm(d)
        self.out = torch.nn.Linear(d, 256, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)  # (B, 2, d): the two previous bytes
        h = torch.tanh(self.hidden(e.flatten(1)))
        return self.out(self.norm(h))


def batches(tokens: torch.Tensor, n: int, batch: int = 64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        i = torch.randint(0, len(tokens) - 3, (batch,), generator=gen)
        x = torch.stack([tokens[i], tokens[i + 1]], dim=1)
        yield x, tokens[i + 2]

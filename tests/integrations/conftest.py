from __future__ import annotations

import pathlib
import sysconfig

import pytest

torch = pytest.importorskip("torch")


def text_tokens(n: int = 4096) -> torch.Tensor:
    """Real text (a file of the standard library) as byte tokens."""
    data = pathlib.Path(sysconfig.get_paths()["stdlib"], "textwrap.py").read_bytes()
    return torch.tensor(list(data[:n]), dtype=torch.long)


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    """A random-init GPT-2 (tied embeddings), no download."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(
        vocab_size=256,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        tie_word_embeddings=True,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # Lightning restores no RNG state
    )
    return transformers.GPT2LMHeadModel(cfg)


def lm_rows(seq: int = 16, rows: int = 64) -> list[dict[str, torch.Tensor]]:
    tok = text_tokens(seq * rows)
    return [
        {"input_ids": tok[i * seq : (i + 1) * seq], "labels": tok[i * seq : (i + 1) * seq]}
        for i in range(rows)
    ]


def assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps one process-wide state; each test sets its own precision."""
    yield
    import sys

    state = sys.modules.get("accelerate.state")
    if state is not None:
        state.AcceleratorState._reset_state(True)
        state.PartialState._reset_state()

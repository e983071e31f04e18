"""AdaGC in a small real PyTorch training loop: a byte-level MLP language model trained with
AdamW on a file of the Python standard library, with AdaGC clipping before every step.
At step 200 one tensor's gradient is multiplied by 1e3 (a transient "hardware fault"); AdaGC
clips that tensor back to its own history and leaves the others alone.

    python examples/torch_train.py
"""

from __future__ import annotations

import pathlib
import sysconfig

import torch

from adagc.adapters.torch import AdaGC

torch.manual_seed(0)
text = pathlib.Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_bytes()
data = torch.tensor(list(text), dtype=torch.long)
split = int(0.9 * len(data))
train, val = data[:split], data[split:]
CTX = 8


class ByteMLP(torch.nn.Module):
    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(256, d)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(CTX * d, 128), torch.nn.GELU(), torch.nn.LayerNorm(128)
        )
        self.head = torch.nn.Linear(128, 256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.embed(x).flatten(1)))


def batch(src: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.randint(0, len(src) - CTX - 1, (n,))
    return src[i[:, None] + torch.arange(CTX)], src[i + CTX]


model = ByteMLP()
optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1)
clipper = AdaGC(model.named_parameters(), lambda_rel=1.04, beta=0.99, warmup_steps=50)

for step in range(400):
    x, y = batch(train, 64)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    if step == 200:
        model.mlp[0].weight.grad *= 1e3  # transient fault in one tensor
    stats = clipper.clip_()
    optimizer.step()
    if step % 50 == 0 or step in (199, 200, 201):
        worst = int(stats.coefficients.argmin())
        print(
            f"step {step:3d}  loss {loss.item():.3f}  "
            f"{'warmup  ' if stats.warmup else 'adaptive'}  "
            f"clipped {int(stats.num_clipped)}/{len(clipper.names)}  "
            f"min h {float(stats.coefficients[worst]):.2e} ({clipper.names[worst]})"
        )

with torch.no_grad():
    x, y = batch(val, 2000)
    print(f"validation loss {torch.nn.functional.cross_entropy(model(x), y).item():.3f}")

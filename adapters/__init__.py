"""Framework adapters, one module per framework, each in that framework's own idiom:

- ``adagc.adapters.torch``: ``AdaGC`` clipper / optimizer step pre-hook;
- ``adagc.adapters.jax``: ``adagc(...)``, an optax ``GradientTransformation``;
- ``adagc.adapters.paddle``: ``ClipGradByAdaGC``, a Paddle ``grad_clip=`` object.

Adapters hold no algorithm logic: they collect gradients, call :func:`adagc.update` and write
the results back.
"""

from __future__ import annotations

__all__: list[str] = []

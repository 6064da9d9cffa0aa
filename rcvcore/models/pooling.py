"""How a probed output becomes one feature vector per image: the layout of the output, decided
from the model (never guessed from the tensor's rank), and its pooling.

Layouts:
- ``nchw``: a CNN feature map ``(batch, channels, H, W)``: global average pooling over H and W;
- ``nhwc``: a channels-last map ``(batch, H, W, channels)`` (Swin and other timm models that
  declare ``output_fmt = "NHWC"``): the mean over H and W;
- ``tokens``: a token sequence ``(batch, n_tokens, channels)`` of a vision transformer whose
  first ``prefix_tokens`` tokens are the class and register tokens (timm's
  ``num_prefix_tokens``). Token pooling ``mean`` (default, the analogue of global average
  pooling) averages the patch tokens and leaves the prefix tokens out; ``cls`` takes the class
  token;
- ``vector``: already ``(batch, features)`` (logits, softmax, pooled heads): kept as it is.

An output whose shape does not fit the declared layout is refused with a message naming the
layer and its shape, rather than flattened into a regression on positions.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

LAYOUTS = ("nchw", "nhwc", "tokens", "vector")
TOKEN_POOLS = ("mean", "cls")
_RANK = {"nchw": 4, "nhwc": 4, "tokens": 3, "vector": 2}
_SHAPE = {"nchw": "(batch, channels, H, W)", "nhwc": "(batch, H, W, channels)",
          "tokens": "(batch, tokens, channels)", "vector": "(batch, features)"}


def model_layout(model: nn.Module) -> str:
    """Layout of the block outputs of a timm model, from what the model declares.

    Vision transformers (a ``patch_embed``, ``blocks`` and timm's ``num_prefix_tokens``) emit
    token sequences; models declaring ``output_fmt`` (Swin: ``NHWC``) emit that format; every
    other network is taken as a CNN (``nchw``) and each output is still checked against it.
    """
    if hasattr(model, "patch_embed") and hasattr(model, "blocks") and \
            isinstance(getattr(model, "num_prefix_tokens", None), int):
        return "tokens"
    fmt = str(getattr(model, "output_fmt", "") or "").upper()
    return {"NHWC": "nhwc", "NLC": "tokens"}.get(fmt, "nchw")


def pooling_name(layout: str, token_pool: str = "mean") -> str:
    """The pooling's name in cache keys: ``gap`` for CNN maps and vectors (as before),
    ``gap-nhwc`` and ``tokens-mean`` / ``tokens-cls`` otherwise."""
    if layout == "tokens":
        return f"tokens-{token_pool}"
    return "gap-nhwc" if layout == "nhwc" else "gap"


def check_token_pool(token_pool: str, *, arch: str = "", class_token: bool = True) -> None:
    """Refuse an unknown token pooling, or ``cls`` for a transformer without a class token."""
    if token_pool not in TOKEN_POOLS:
        raise UserError(f"--token-pool {token_pool!r}: choose {' or '.join(TOKEN_POOLS)} (mean "
                        "of the patch tokens, or the class token).")
    if token_pool == "cls" and not class_token:
        raise UserError(f"--token-pool cls: {arch or 'this model'} has no class token; use "
                        "--token-pool mean (the mean of its patch tokens).")


def pool(t: torch.Tensor, layout: str, *, layer: str, token_pool: str = "mean",
         prefix_tokens: int = 0) -> torch.Tensor:
    """``t`` in ``layout`` -> ``(batch, features)`` (see the module docstring).

    Raises:
        UserError: ``t``'s shape does not fit ``layout`` (the message names ``layer``).
    """
    if layout not in _RANK or t.ndim != _RANK[layout] or \
            (layout == "tokens" and t.shape[1] <= prefix_tokens):
        declared = (f"the model declares {layout} {_SHAPE[layout]}" if layout in _SHAPE
                    else f"its layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        raise UserError(
            f"Layer {layer!r} outputs shape {tuple(t.shape)}, but {declared}: rcvcore does not "
            "know how to pool it into one vector per image and refuses to guess. Probe other "
            "layers (--layers) or another architecture.")
    if layout == "nchw":
        return t.mean(dim=(2, 3))
    if layout == "nhwc":
        return t.mean(dim=(1, 2))
    if layout == "tokens":
        return t[:, 0] if token_pool == "cls" else t[:, prefix_tokens:].mean(dim=1)
    return t

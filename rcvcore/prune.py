"""Cut a network at a probe layer, add pooling and a new head.

Pooling follows the layout of the cut's output (:mod:`rcvcore.models.pooling`): global average
pooling of a CNN map, the mean over H and W of a Swin's NHWC map, the named token pooling of a
vision transformer's tokens. A transformer cut at block k keeps patch embedding + blocks 0..k,
then applies the network's final norm (``norm``) to the tokens, pools them, and applies its
pooled-vector norm (``fc_norm``) when it has one: the features the network's own head would see
had it ended at block k. Named deviation: the scan's ``blockK`` is pooled *before* that final
norm (the block's raw output, as every other network's probe), so a pruned transformer's features
at block k are the normalised version of what the scan scored there.

The pruned model is the FX trunk of the network up to the cut (``rcvcore._extract.trunk``): nothing
after the cut is computed or stored, and Inception's input transform stays inside the graph (we
never slice ``children()``). A new linear head sits on the globally average-pooled map; the whole
model stays trainable end to end.

``cut="none"`` is the paper's *full* model: the whole convolutional trunk (up to the last block,
after its ReLU, i.e. exactly what the ImageNet classifier pools), then GAP and a new head. The
ImageNet ``fc`` is dropped, as the paper's ``include_top=False`` + GAP + Dense(1) did.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ._extract import trunk
from ._shared import NONE
from .errors import UserError
from .models import (
    PRE_SOFTMAX,
    SOFTMAX,
    ArchSpec,
    Backbone,
    count_parameters,
    get_arch,
    resolve_backbone,
)
from .models.pooling import check_token_pool, pool


def cut_node(arch: ArchSpec, cut: str) -> str:
    """Graph node where ``arch`` is cut for ``cut`` (a probe layer name, or ``none``).

    Raises:
        UserError: ``cut`` is not a probe layer of ``arch``, or is ``pre_softmax``/``softmax``
            (the classifier output is not a feature map to prune at).
    """
    if cut in (None, "", NONE, "full"):
        return arch.full_node   # the last feature map: what the ImageNet classifier pools
    if cut in (PRE_SOFTMAX, SOFTMAX):
        raise UserError(f"--cut {cut}: the classifier output cannot be pruned at; choose a "
                        f"feature layer such as {arch.paper_cut or arch.layer_names[-3]!r}, or "
                        "'none' for the full convolutional trunk.")
    return arch.node(cut)  # raises UserError with the closest names


def is_full(arch: ArchSpec, cut: str) -> bool:
    """True when the network cut at ``cut`` is the full network (``none``, or the last
    feature layer, e.g. efficientnet_lite0's ``head``, inception_v3's ``mixed10``)."""
    return cut_node(arch, cut) == arch.full_node


def check_pruned(arch: ArchSpec, cut: str) -> None:
    """Refuse a cut named as a layer whose pruned model equals the full network.

    Raises:
        UserError: ``cut`` is a layer name (not ``none``) cut at ``arch``'s last feature map.
    """
    if cut not in (None, "", NONE, "full") and is_full(arch, cut):
        earlier = [n for n in arch.layer_names if n not in (PRE_SOFTMAX, SOFTMAX, cut)]
        hint = arch.paper_cut or (earlier[-1] if earlier else None)
        raise UserError(f"--cut {cut} is the last feature layer of {arch.name}: the model cut "
                        "there equals the full network, so comparing it with the full network "
                        "compares a model with itself. Use --cut none for the full network, or "
                        "an earlier layer to prune at" + (f" (e.g. {hint})." if hint else "."))


class PrunedNet(nn.Module):
    """Trunk up to the cut, pooling by the cut's layout, then a linear head.

    For regression the head predicts ``target_mean + target_std * linear(features)``, so it starts
    at the training mean and the optimiser works on a unit-scale output (with Adam this is the
    same optimisation as MSE on raw areas, whose gradient differs only by the factor ``std**2``).

    Args:
        body: the FX trunk returning ``{"features": map}``.
        n_features: channels of the map at the cut.
        n_outputs: 1 for regression, the number of classes for classification.
        layout, token_pool, prefix_tokens: how the map at the cut is pooled
            (:func:`rcvcore.models.pooling.pool`).
        norm, pooled_norm: a transformer's final norm on the tokens and on the pooled vector
            (copies, trainable), or None.
    """

    def __init__(self, body: nn.Module, n_features: int, n_outputs: int,
                 target_mean: float = 0.0, target_std: float = 1.0, *, layout: str = "nchw",
                 token_pool: str = "mean", prefix_tokens: int = 0,
                 norm: nn.Module | None = None, pooled_norm: nn.Module | None = None):
        super().__init__()
        self.body = body
        self.layout, self.token_pool, self.prefix_tokens = layout, token_pool, prefix_tokens
        # registered only when present, so a CNN's state dict keeps its keys
        if norm is not None:
            self.norm = norm
        if pooled_norm is not None:
            self.pooled_norm = pooled_norm
        self.head = nn.Linear(n_features, n_outputs)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (batch, 3, H, W) -> pooled features (batch, n_features)."""
        t = self.body(x)["features"]
        if hasattr(self, "norm"):
            t = self.norm(t)
        t = pool(t, self.layout, layer="features", token_pool=self.token_pool,
                 prefix_tokens=self.prefix_tokens)
        return self.pooled_norm(t) if hasattr(self, "pooled_norm") else t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw head output (batch, n_outputs): standardised values or class logits."""
        return self.head(self.features(x))

    def unscale(self, out: torch.Tensor) -> torch.Tensor:
        """Regression output in the target's units (e.g. nuclei area in px)."""
        return self.target_mean + self.target_std * out.squeeze(-1)


def cut_layout(arch: ArchSpec, node: str) -> str:
    """Layout of the output of graph node ``node`` (a node that is no probe layer, such as a
    CNN's full node: the layout of the deepest probed map)."""
    table = {n: arch.layout(name) for name, n in arch.all_layers
             if name not in (PRE_SOFTMAX, SOFTMAX)}
    maps = [lay for lay in table.values() if lay != "vector"]   # VGG's fc layers are vectors
    return table.get(node) or (maps[-1] if maps else "nchw")


def _norms(model: nn.Module, arch: ArchSpec, node: str) -> tuple[nn.Module | None, ...]:
    """Copies of the transformer norms a model cut at ``node`` applies (see the module doc)."""
    if cut_layout(arch, node) != "tokens":
        return None, None
    norm, pooled = (copy.deepcopy(model.get_submodule(n)) if n else None for n in arch.norms)
    return (None if node == arch.full_node else norm), pooled


def prune(model: nn.Module, arch: ArchSpec | str, cut: str, n_outputs: int = 1, *,
          seed: int = 0, target_mean: float = 0.0, target_std: float = 1.0,
          token_pool: str = "mean") -> PrunedNet:
    """Return a new model: ``model`` cut at ``cut``, then pooling and a fresh ``n_outputs``
    head.

    Args:
        model: a model from :func:`rcvcore.models.build_model`. It is deep-copied, never modified.
        arch: its registry entry or name.
        cut: probe layer name (``add_15``, ``mixed8``) or ``none`` for the full trunk.
        n_outputs: 1 (regression) or the number of classes.
        seed: seed of the head initialisation.
        target_mean, target_std: regression scale of the head (see :class:`PrunedNet`).
        token_pool: ``mean`` or ``cls``, for a transformer's tokens.
    """
    arch = get_arch(arch)
    if n_outputs < 1:
        raise UserError(f"prune: n_outputs must be >= 1, got {n_outputs}.")
    node = cut_node(arch, cut)
    layout = cut_layout(arch, node)
    if layout == "tokens":
        check_token_pool(token_pool, arch=arch.name, class_token=arch.class_token)
    body = trunk(copy.deepcopy(model).eval(), {node: "features"})
    norm, pooled_norm = _norms(model, arch, node)
    with torch.random.fork_rng(devices=[]):
        net = PrunedNet(body, 1, n_outputs, target_mean, target_std, layout=layout,
                        token_pool=token_pool, prefix_tokens=arch.prefix_tokens, norm=norm,
                        pooled_norm=pooled_norm)
        with torch.no_grad():
            size = arch.input_size
            n_features = int(net.eval().features(torch.zeros(1, 3, size, size)).shape[1])
        torch.manual_seed(seed)   # the head alone draws from the seed, as it always did
        net.head = nn.Linear(n_features, n_outputs)
    return net


def build_pruned(arch: ArchSpec | str | Backbone, weights: str = "imagenet", cut: str = NONE,
                 n_outputs: int = 1, *, seed: int = 0, target_mean: float = 0.0,
                 target_std: float = 1.0, token_pool: str = "mean") -> PrunedNet:
    """Build ``arch`` with ``weights`` (or a resolved :class:`Backbone`) and prune it (see
    :func:`prune`)."""
    bb = arch if isinstance(arch, Backbone) else resolve_backbone(arch, weights, seed)
    return prune(bb.build(), bb.spec, cut, n_outputs, seed=seed, target_mean=target_mean,
                 target_std=target_std, token_pool=token_pool)


def forward_flops(model: nn.Module, image_size: int) -> int:
    """Floating-point operations of one forward pass of one ``image_size`` image (2 per MAC)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


@dataclass(frozen=True)
class CutSummary:
    """Size and forward cost of a network before and after the cut.

    ``classifier_*`` is the original ImageNet classifier; ``full_*`` the paper's full model (whole
    trunk + GAP + head, ``--cut none``); ``pruned_*`` the model cut at ``cut``. FLOPs are for one
    image at ``image_size`` (2 FLOPs per multiply-add).
    """

    arch: str
    cut: str
    image_size: int
    n_outputs: int
    classifier_params: int
    classifier_flops: int
    full_params: int
    full_flops: int
    pruned_params: int
    pruned_flops: int

    @property
    def params_ratio(self) -> float:
        return self.pruned_params / self.full_params

    @property
    def flops_ratio(self) -> float:
        return self.pruned_flops / self.full_flops

    def to_dict(self) -> dict:
        d = asdict(self)
        d["params_ratio"] = self.params_ratio
        d["flops_ratio"] = self.flops_ratio
        return d


def cut_summary(arch: ArchSpec | str, weights: str = "random", cut: str = NONE,
                image_size: int | None = None, n_outputs: int = 1) -> CutSummary:
    """Parameter counts and forward FLOPs of the full and the pruned model.

    Counts do not depend on the weights' values, so the model is always built with random weights
    (``weights`` is accepted for a uniform API and never downloads anything).
    """
    del weights
    arch = get_arch(arch)
    size = int(image_size or arch.input_size)
    model = resolve_backbone(arch, "random").build()
    full = prune(model, arch, NONE, n_outputs)
    pruned = full if cut in (None, "", NONE, "full") else prune(model, arch, cut, n_outputs)
    return CutSummary(
        arch=arch.name, cut=cut or NONE, image_size=size, n_outputs=n_outputs,
        classifier_params=count_parameters(model), classifier_flops=forward_flops(model, size),
        full_params=count_parameters(full), full_flops=forward_flops(full, size),
        pruned_params=count_parameters(pruned), pruned_flops=forward_flops(pruned, size))

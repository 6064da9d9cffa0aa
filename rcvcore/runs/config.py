"""The configuration of a fine-tuning run (``config.json``) and its command-line form."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field

from .._shared import NONE, closest
from ..data.options import check_options, format_options
from ..errors import UserError

#: ``mpp``: regression on log2 µm/px, the measure of ``slides:`` datasets (``log2_mpp``)
TARGETS = {"nuclei-area": "regression", "magnification": "classification", "mpp": "regression"}
OPTIMIZERS = ("adam", "adamw", "sgd")
TRAINABLE = ("all", "head")
HEAD_INITS = ("rcv", "random")


@dataclass(frozen=True)
class Protocol:
    """How a run feeds and scores its network, apart from the optimisation flags.

    Attributes:
        name: ``recommended`` or ``paper``.
        input: ``weights`` (the weights' own mean/std normalisation) or ``raw255`` (pixel values
            0-255 as they are, as the paper's Keras code fed them).
        target: ``standardised`` (the head predicts ``mean + std * z`` and the loss is MSE on
            ``z``) or ``raw`` (the head predicts the area in px, MSE on raw areas).
        head_init: the default head initialisation (``rcv``: the scan's closed-form fit on the
            run's training split; ``random``: PyTorch's default init).
        std_ddof: the delta degrees of freedom of Table 2's std over seeds (the paper's
            ``np.std`` is 0; the sample std is 1).
        batch_norm: ``frozen`` (batch-norm layers keep the pretrained running statistics while
            their scale and shift train, so the features the head was fitted on do not shift
            at the first step) or ``train`` (batch statistics in training mode, as Keras
            fine-tuning did).
    """

    name: str
    input: str
    target: str
    head_init: str
    std_ddof: int
    batch_norm: str


PROTOCOLS = {
    "recommended": Protocol("recommended", "weights", "standardised", "rcv", 1, "frozen"),
    "paper": Protocol("paper", "raw255", "raw", "random", 0, "train"),
}
#: The paper's transfer optimisation (workshop Table 2): what ``--protocol paper`` means besides
#: its :class:`Protocol`. A paper run that changes one of them says so (:meth:`deviations`).
PAPER_SETTINGS = {"target": "nuclei-area", "epochs": 5, "batch_size": 32, "lr": 1e-4,
                  "optimizer": "adam", "weight_decay": 0.0, "trainable": "all",
                  "head_init": "random"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a fine-tuning run (``config.json``).

    Attributes:
        arch, weights: as in :func:`rcvcore.models.build_model`.
        cut: probe layer to prune at (``add_15``, ``mixed8``) or ``none`` (full trunk).
        dataset: dataset spec (``demo-histology``, ``janowczyk:PATH``, ``folder:PATH``).
        target: ``nuclei-area`` (regression on ``Sample.measure``, MSE) or ``magnification``
            (classification of ``Sample.label``, cross-entropy) or ``mpp`` (regression on log2
            µm/px, the measure of a ``slides:`` dataset; predictions report µm/px).
        epochs, batch_size, lr, optimizer, weight_decay: optimisation (paper: 5, 32, 1e-4, adam).
            ``batch_size`` is global; under DDP each process takes ``ceil(batch_size / world)``.
        trainable: ``all`` (paper) or ``head`` (trunk frozen).
        seed: model head initialisation (and random weights), data order.
        split_seed: the train/val/test split and the ``n`` subsample, when the dataset does not
            fix them; kept apart from ``seed`` so runs over several seeds share their splits.
        n: keep at most ``n`` images (quick runs).
        image_size: network input side; default the architecture's (224 ResNet, 299 Inception).
        val_fraction, test_fraction: grouped split fractions when the dataset has no splits.
        log_every: log a step line every this many steps.
        checkpoint_every: also checkpoint every this many steps (0: at epoch ends only).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:1`` | ``mps``.
        amp: float16 autocast (default: on CUDA only; bf16 on CPU is many times slower).
        channels_last: channels_last memory format (faster convolutions on CPU and CUDA).
        workers: data-loader processes (default: 0 on a 2-core CPU, else up to 8).
        dataset_cache_dir: where generated datasets are written (default: the user cache).
        dataset_options: the dataset loader's options (``--opt KEY=VALUE``), e.g.
            ``{"group_by": "patient"}`` for janowczyk or ``{"classes": "n02058221"}``.
        protocol: ``recommended`` (default) or ``paper`` (see :data:`PROTOCOLS`: input scaling,
            regression target, head initialisation, Table 2's std).
        head_init: ``rcv`` (the head starts at the closed-form ridge fit of the pooled features
            at the cut on the run's training split, as the scan fits its RCV) or ``random``;
            default: the protocol's (``rcv`` recommended, ``random`` paper).
        token_pool: how a vision transformer's tokens at the cut are pooled: ``mean`` of the
            patch tokens or ``cls`` (the class token); other networks ignore it.
    """

    arch: str = "efficientnet_lite0"   # ImageNet weights that install offline
    weights: str = "imagenet"
    cut: str = NONE
    dataset: str = "demo-histology"
    target: str = "nuclei-area"
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-4
    optimizer: str = "adam"
    weight_decay: float = 0.0
    trainable: str = "all"
    seed: int = 1001
    split_seed: int = 0
    n: int | None = None
    image_size: int | None = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    log_every: int = 1
    checkpoint_every: int = 0
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool = True
    workers: int | None = None
    dataset_cache_dir: str | None = None
    dataset_options: dict = field(default_factory=dict)
    protocol: str = "recommended"
    head_init: str | None = None
    token_pool: str = "mean"      # a transformer's tokens at the cut: "mean" | "cls"

    def __post_init__(self):
        # one spelling of the full network inside rcvcore (prune.NONE); "full" and "" are
        # accepted on input
        if self.cut in (None, "", "full"):
            object.__setattr__(self, "cut", NONE)
        # config.json always says which head initialisation the run used
        if self.head_init is None and self.protocol in PROTOCOLS:
            object.__setattr__(self, "head_init", PROTOCOLS[self.protocol].head_init)

    @property
    def protocol_spec(self) -> Protocol:
        return PROTOCOLS[self.protocol]

    def deviations(self) -> list[str]:
        """What a ``--protocol paper`` run changes of the paper's optimisation (``epochs=2
        (paper 5)``); empty for a faithful paper run and for the recommended protocol."""
        if self.protocol != "paper":
            return []
        return [f"{k}={getattr(self, k)} (paper {v})" for k, v in PAPER_SETTINGS.items()
                if getattr(self, k) != v]

    def __hash__(self) -> int:
        # frozen, but dataset_options is a dict: hash the JSON form (equal configs, equal hash)
        return hash(json.dumps(self.to_dict(), sort_keys=True, default=repr))

    def validate(self) -> TrainConfig:
        """Check every field; raise :class:`UserError` naming the flag and the valid values."""
        check_options(self.dataset_options)
        if self.protocol not in PROTOCOLS:
            raise UserError(f"--protocol {self.protocol!r} is unknown; use "
                            f"{' or '.join(PROTOCOLS)}.")
        if self.head_init not in HEAD_INITS:
            raise UserError(f"--head-init {self.head_init!r} is unknown; use "
                            f"{' or '.join(HEAD_INITS)}.")
        if self.protocol == "paper" and self.target != "nuclei-area":
            raise UserError("--protocol paper regresses the nuclei area (and maps it to the "
                            "nearest magnification); use --target nuclei-area, or the "
                            "recommended protocol for --target magnification.")
        # the registry and pruning import torch: only here, so that the configuration (and
        # the CLI's --help, which shows its defaults) loads without it
        from ..models import get_arch
        from ..models.pooling import check_token_pool
        from ..prune import check_pruned

        arch = get_arch(self.arch)
        check_pruned(arch, self.cut)   # also checks the layer name
        check_token_pool(self.token_pool, arch=arch.name,
                         class_token=arch.class_token or not arch.has_tokens)
        if arch.layouts and self.image_size not in (None, arch.input_size):
            # a transformer's position embeddings (and Swin's windows) fix its input size
            raise UserError(f"--image-size {self.image_size}: {arch.name} is a transformer "
                            f"built for {arch.input_size} px inputs; leave --image-size out "
                            f"(or give {arch.input_size}).")
        if self.target not in TARGETS:
            raise UserError(f"--target {self.target!r} is unknown.{closest(self.target, TARGETS)}"
                            f" Valid targets: {', '.join(TARGETS)}.")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer {self.optimizer!r} is unknown; use one of "
                            f"{', '.join(OPTIMIZERS)}.")
        if self.trainable not in TRAINABLE:
            raise UserError(f"--trainable {self.trainable!r}: use 'all' or 'head'.")
        # a head that starts at its closed-form fit is a model without any epoch
        min_epochs = 0 if self.head_init == "rcv" else 1
        if int(self.epochs) < min_epochs:
            raise UserError(f"--epochs must be >= 1, got {self.epochs}: a random head needs "
                            "training (--epochs 0 is for --head-init rcv, whose closed-form fit "
                            "is the model).")
        for name, lo in (("epochs", min_epochs), ("batch_size", 1), ("log_every", 1)):
            if int(getattr(self, name)) < lo:
                raise UserError(f"--{name.replace('_', '-')} must be >= {lo}, "
                                f"got {getattr(self, name)}.")
        if self.checkpoint_every < 0:
            raise UserError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be a positive number, got {self.lr}.")
        if self.weight_decay < 0:
            raise UserError(f"--weight-decay must be >= 0, got {self.weight_decay}.")
        if self.n is not None and self.n < 3:
            raise UserError(f"--n {self.n}: a run needs at least 3 images (train, val, test).")
        if self.image_size is not None and not 16 <= self.image_size <= 1024:
            raise UserError(f"--image-size must be between 16 and 1024, got {self.image_size}.")
        for name in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, name) < 0.5:
                raise UserError(f"--{name.replace('_', '-')} must be in (0, 0.5), "
                                f"got {getattr(self, name)}.")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"rcvcore_version"})
        if unknown:
            raise UserError(f"{source}: unknown configuration keys {unknown}; valid keys: "
                            f"{', '.join(sorted(known))}.")
        d = {k: v for k, v in d.items() if k in known}
        if "head_init" not in d:   # a run of an rcvcore before head_init: its head was random
            d["head_init"] = "random"
        return cls(**d)


def config_to_argv(config: TrainConfig) -> list[str]:
    """The ``python -m rcvcore train`` flags that reproduce ``config``."""
    argv = []
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        flag = "--" + f.name.replace("_", "-")
        if f.name == "amp":
            if v is not None:
                argv.append("--amp" if v else "--no-amp")
        elif f.name == "channels_last":
            if not v:
                argv.append("--no-channels-last")
        elif f.name == "dataset_options":
            argv += format_options(v or {})
        elif v is not None:
            argv += [flag, str(v)]
    return argv

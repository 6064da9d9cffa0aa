"""Fine-tuning runs: configuration, training loop, metrics log, checkpoints, resume, cancel.

A run is a directory:

- ``config.json``: the :class:`TrainConfig` (``--resume`` reads it back).
- ``metrics.jsonl``: one JSON object per line: ``{"kind": "step", ...}`` every ``log_every``
  steps (train loss, learning rate, images/s) and ``{"kind": "epoch", ...}`` per epoch (train
  loss, validation loss and metrics, learning rate, images/s).
- ``checkpoint.pt``: model, optimizer, epoch and step (plain dicts of tensors, numbers and
  strings: loads with ``torch.load(weights_only=True)``), written atomically (temporary file, then
  ``os.replace``) at the end of every epoch and, optionally, every ``checkpoint_every`` steps.
- ``status.json``: ``{"state": "running" | "done" | "failed" | "cancelled", "pid", "error", ...}``.
- ``result.json``: test (and last validation) metrics, the task (classes, training-set class
  means) and the parameter count / forward cost of the full and the pruned model.

Defaults follow the paper: Adam, lr 1e-4, batch 32, 5 epochs, all layers trainable, MSE on the
nuclei area. Under ``torchrun`` the loop runs data-parallel (DDP; gloo on CPU, NCCL on CUDA) and
rank 0 alone writes the run directory.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from .data.base import Dataset, ProgressFn, closest
from .errors import UserError
from .metrics import class_means, classification_metrics, nearest_class, regression_metrics

TARGETS = {"nuclei-area": "regression", "magnification": "classification"}
OPTIMIZERS = ("adam", "adamw", "sgd")
TRAINABLE = ("all", "head")
STATES = ("running", "done", "failed", "cancelled")
CHECKPOINT_FORMAT = 1


class RunFailed(RuntimeError):
    """The run stopped as ``failed`` (e.g. a NaN loss); the message says why and what to try."""


class RunCancelled(RuntimeError):
    """The run was cancelled (SIGTERM/SIGINT); its state is consistent and resumable."""


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a fine-tuning run (``config.json``).

    Attributes:
        arch, weights: as in :func:`rcvcore.models.build_model`.
        cut: probe layer to prune at (``add_15``, ``mixed8``) or ``none`` (full trunk).
        dataset: dataset spec (``demo-histology``, ``janowczyk:PATH``, ``folder:PATH``).
        target: ``nuclei-area`` (regression on ``Sample.measure``, MSE) or ``magnification``
            (classification of ``Sample.label``, cross-entropy).
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
    """

    arch: str = "resnet50"
    weights: str = "imagenet"
    cut: str = "none"
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
    log_every: int = 10
    checkpoint_every: int = 0
    device: str = "auto"
    amp: bool | None = None
    channels_last: bool = True
    workers: int | None = None
    dataset_cache_dir: str | None = None
    dataset_options: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        """Check every field; raise :class:`UserError` naming the flag and the valid values."""
        from .data.options import check_options
        from .models import get_arch
        from .prune import cut_node

        check_options(self.dataset_options)
        arch = get_arch(self.arch)
        cut_node(arch, self.cut)
        if self.target not in TARGETS:
            raise UserError(f"--target {self.target!r} is unknown.{closest(self.target, TARGETS)}"
                            f" Valid targets: {', '.join(TARGETS)}.")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"--optimizer {self.optimizer!r} is unknown; use one of "
                            f"{', '.join(OPTIMIZERS)}.")
        if self.trainable not in TRAINABLE:
            raise UserError(f"--trainable {self.trainable!r}: use 'all' or 'head'.")
        for name, lo in (("epochs", 1), ("batch_size", 1), ("log_every", 1)):
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
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"rcvcore_version"})
        if unknown:
            raise UserError(f"{source}: unknown configuration keys {unknown}; valid keys: "
                            f"{', '.join(sorted(known))}.")
        return cls(**{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------
# run directory: small pure functions (the dashboard polls these)


CONFIG, METRICS, CHECKPOINT, STATUS, RESULT, LOG = (
    "config.json", "metrics.jsonl", "checkpoint.pt", "status.json", "result.json", "train.log")


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_metrics(run_dir) -> list[dict]:
    """Every record of ``metrics.jsonl`` (a partly written last line is ignored)."""
    path = Path(run_dir) / METRICS
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class RunState:
    """A snapshot of a run directory, as :func:`read_run` finds it.

    ``state`` is the status file's state, except ``"launching"`` (no status yet) and
    ``"interrupted"`` (status says running but its process on this host is gone: resume it).
    """

    run_dir: str
    config: dict | None
    status: dict
    metrics: list[dict]
    result: dict | None

    @property
    def state(self) -> str:
        s = self.status.get("state")
        if s is None:
            return "launching"
        if (s == "running" and self.status.get("host") == socket.gethostname()
                and not _pid_alive(self.status.get("pid"))):
            return "interrupted"
        return s

    @property
    def epochs(self) -> list[dict]:
        return [m for m in self.metrics if m.get("kind") == "epoch"]

    @property
    def steps(self) -> list[dict]:
        return [m for m in self.metrics if m.get("kind") == "step"]


def read_run(run_dir) -> RunState:
    """Read a run directory (config, status, metrics, result); never raises for partial runs."""
    d = Path(run_dir)
    return RunState(str(d), _read_json(d / CONFIG), _read_json(d / STATUS) or {},
                    read_metrics(d), _read_json(d / RESULT))


def is_run_dir(d) -> bool:
    """Whether ``d`` looks like a run directory (a config, a status or a launch log)."""
    d = Path(d)
    return (d / CONFIG).is_file() or (d / STATUS).is_file() or (d / LOG).is_file()


def find_runs(root) -> list[RunState]:
    """Every run under ``root``: ``root`` itself, its sub-directories, and theirs (the run
    folders of a ``compare`` or of a dashboard group), sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{str(root)!r} is not a folder. Give the folder that holds run "
                        "directories (default $RCV_RUNS_DIR or ./runs).")
    if is_run_dir(root):
        return [read_run(root)]
    found = []
    for d in sorted(root.iterdir()):
        if not d.is_dir() or d.name.startswith((".", "_")):
            continue
        if is_run_dir(d):
            found.append(d)
        else:
            found += [r for r in sorted(d.iterdir()) if r.is_dir() and is_run_dir(r)]
    return [read_run(d) for d in found]


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
            from .data.options import format_options

            argv += format_options(v or {})
        elif v is not None:
            argv += [flag, str(v)]
    return argv


def launch(config: TrainConfig | None, run_dir, *, resume: bool = False,
           python: str | None = None, env: dict | None = None) -> subprocess.Popen:
    """Start ``python -m rcvcore train`` for ``config`` as a detached subprocess.

    Output goes to ``RUN_DIR/train.log``; the child writes its pid into ``status.json`` (use
    :func:`cancel` to stop it). With ``resume=True`` the configuration is read back from the run
    directory and ``config`` may be None.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    argv = [python or sys.executable, "-m", "rcvcore", "train", "--run-dir", str(run)]
    if resume:
        argv.append("--resume")
    else:
        if config is None:
            raise UserError("launch: give a TrainConfig, or resume=True for an existing run.")
        argv += config_to_argv(config.validate())
    log = open(run / LOG, "ab")
    try:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})})
    finally:
        log.close()


def cancel(run_dir, *, wait: float | None = 60.0) -> str:
    """Send SIGTERM to the run's process; it finishes its step, checkpoints, marks ``cancelled``.

    Args:
        run_dir: the run directory.
        wait: seconds to wait for the state to leave ``running`` (None: do not wait).

    Returns:
        The run's state afterwards (``cancelled``, or ``done``/``failed`` if it ended first).
    """
    st = read_run(run_dir)
    if st.state != "running":
        return st.state
    pid = st.status.get("pid")
    try:
        os.kill(int(pid), signal.SIGTERM)
    except (OSError, TypeError, ValueError):
        return read_run(run_dir).state
    deadline = time.monotonic() + (wait or 0)
    while wait is not None and time.monotonic() < deadline:
        s = read_run(run_dir).state
        if s not in ("running", "launching"):
            return s
        time.sleep(0.2)
    return read_run(run_dir).state


# --------------------------------------------------------------------------------------------
# data


def make_splits(ds: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.15,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Train / val / test indices: the dataset's own ``split`` values when it has them, otherwise
    a seeded split of its groups (of its images when it has no groups), so that no group
    straddles two splits.

    Raises:
        UserError: fewer than 3 groups, or a fixed split with an empty train or test part.
    """
    if any(s.split for s in ds.samples):
        out = {k: ds.split_indices(k) for k in ("train", "val", "test")}
        if len(out["train"]) == 0 or len(out["test"]) == 0:
            raise UserError(f"Dataset {ds.name!r} fixes its splits but has "
                            f"{len(out['train'])} train and {len(out['test'])} test images; "
                            "use a larger --n.")
        if len(out["val"]) == 0:  # carve a validation part out of train, by group
            sub = make_splits(ds.subset(out["train"]), val_fraction, 0.01, seed) \
                if len(out["train"]) >= 3 else None
            if sub is not None:
                tr = out["train"]
                out["val"] = tr[np.concatenate([sub["val"], sub["test"]])]
                out["train"] = tr[sub["train"]]
        return out
    groups = ds.groups if ds.groups is not None else np.asarray(ds.paths)
    uniq = sorted(set(groups.tolist()))
    if len(uniq) < 3:
        raise UserError(f"Dataset {ds.name!r} has {len(uniq)} "
                        f"{'groups' if ds.groups is not None else 'images'}; a run needs at "
                        "least 3 to split into train, val and test (use a larger --n).")
    rng = np.random.default_rng(seed)
    order = [uniq[i] for i in rng.permutation(len(uniq))]
    n_test = max(1, round(test_fraction * len(uniq)))
    n_val = max(1, round(val_fraction * len(uniq)))
    part = {g: "test" for g in order[:n_test]}
    part.update({g: "val" for g in order[n_test:n_test + n_val]})
    names = np.asarray([part.get(g, "train") for g in groups.tolist()])
    return {k: np.flatnonzero(names == k) for k in ("train", "val", "test")}


class ImageSet(torch.utils.data.Dataset):
    """(image tensor, target) pairs read with :func:`rcvcore.data.images.read_rgb`."""

    def __init__(self, paths, targets, transform):
        self.paths, self.targets, self.transform = list(paths), list(targets), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from .data.images import ImageReadError, read_rgb

        try:
            img = read_rgb(self.paths[i])
        except ImageReadError as e:
            raise RunFailed(f"Training image unreadable: {e}. Remove it from the dataset or "
                            "regenerate the dataset cache.") from None
        return self.transform(img), self.targets[i]


def train_transform(arch, image_size: int | None = None):
    """The network input of the run: the weights' normalisation, the image resized (shorter side)
    to ``image_size`` and centre-cropped to a square. 224-px patches are fed as they are to
    224-px networks (no 256-resize-then-crop, which would cut off the patch border)."""
    from .models import Preprocess, get_arch, preprocess_for

    arch = get_arch(arch) if isinstance(arch, str) else arch
    p = preprocess_for(arch)
    size = int(image_size or arch.input_size)
    return Preprocess(size, size, p.mean, p.std, p.interpolation)


@dataclass(frozen=True)
class Task:
    """What the head predicts and how outputs map to areas and classes (saved with the model).

    Attributes:
        target: ``nuclei-area`` or ``magnification``.
        kind: ``regression`` or ``classification``.
        classes: the dataset's classes in their natural order (may be empty for regression).
        class_means: mean training-set measure per class (regression: the nearest-class map).
        target_mean, target_std: training-set measure statistics (the head's scale).
        measure_name: what the measure is (``nuclei_area_px``).
        patch_size: side of the training images (pixels); larger images are tiled by predict.
        image_size: network input side.
    """

    target: str
    kind: str
    classes: tuple[str, ...]
    class_means: tuple[tuple[str, float], ...]
    target_mean: float
    target_std: float
    measure_name: str
    patch_size: int
    image_size: int

    @property
    def n_outputs(self) -> int:
        return 1 if self.kind == "regression" else len(self.classes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        d["class_means"] = [[c, m] for c, m in self.class_means]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        d = dict(d)
        d["classes"] = tuple(d["classes"])
        d["class_means"] = tuple((str(c), float(m)) for c, m in d["class_means"])
        return cls(**d)


def make_task(config: TrainConfig, ds: Dataset, train_idx: np.ndarray) -> Task:
    from PIL import Image

    from .models import get_arch

    arch = get_arch(config.arch)
    kind = TARGETS[config.target]
    y = ds.measures[train_idx]
    if not np.isfinite(ds.measures).all():
        bad = [s.path for s in ds.samples if not math.isfinite(s.measure)][:3]
        raise UserError(f"Dataset {ds.name!r} has non-finite measures (e.g. {bad}); fix the "
                        "labels before training.")
    labels = ds.labels
    classes = tuple(ds.classes) if labels is not None else ()
    if kind == "classification" and len(classes) < 2:
        raise UserError(f"--target magnification needs a dataset with at least 2 classes; "
                        f"{ds.name!r} has {len(classes)}. Use --target nuclei-area.")
    means = class_means(y, labels[train_idx], classes) if labels is not None else {}
    try:
        with Image.open(ds.samples[int(train_idx[0])].path) as im:
            patch = int(min(im.size))
    except Exception:
        patch = int(config.image_size or arch.input_size)
    std = float(y.std()) if len(y) > 1 and y.std() > 0 else 1.0
    return Task(config.target, kind, classes, tuple(means.items()), float(y.mean()), std,
                ds.measure_name, patch, int(config.image_size or arch.input_size))


# --------------------------------------------------------------------------------------------
# distributed


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def _init_distributed(device_pref: str) -> tuple[_Dist, torch.device]:
    from .extract import resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), resolve_device(device_pref)
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:  # share the cores between the local processes instead of oversubscribing them
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank, world, local), device


def _barrier(d: _Dist):
    if d.enabled:
        import torch.distributed as dist
        dist.barrier()


def _allreduce(d: _Dist, values: list[float], device) -> list[float]:
    if not d.enabled:
        return values
    import torch.distributed as dist
    t = torch.tensor(values, dtype=torch.float64,
                     device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def _epoch_batches(n: int, batch: int, seed: int, epoch: int, d: _Dist) -> list[list[int]]:
    """This process's batches of epoch ``epoch``: a permutation fixed by (seed, epoch), split
    across processes, cut into batches; a trailing batch of one image is dropped (BatchNorm)."""
    g = torch.Generator().manual_seed(int(seed) * 1000 + int(epoch))
    perm = torch.randperm(n, generator=g).tolist()
    if d.world > 1:
        pad = (-len(perm)) % d.world
        perm = perm + perm[:pad]
        perm = perm[d.rank::d.world]
    batches = [perm[i:i + batch] for i in range(0, len(perm), batch)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()
    return batches


# --------------------------------------------------------------------------------------------
# the loop


def _objective(out: torch.Tensor, y: torch.Tensor, task: Task) -> torch.Tensor:
    """MSE on the standardised measure (regression) or cross-entropy (classification)."""
    if task.kind == "regression":
        z = (y.float() - task.target_mean) / task.target_std
        return nn.functional.mse_loss(out.squeeze(-1).float(), z)
    return nn.functional.cross_entropy(out.float(), y.long())


class _Flag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps."""

    def __init__(self):
        self.set = False
        self.signal = None
        self._prev = {}

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._prev[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.set = True
        self.signal = signal.Signals(signum).name

    def restore(self):
        for sig, prev in self._prev.items():
            signal.signal(sig, prev)
        self._prev.clear()


@dataclass(frozen=True)
class RunResult:
    """How a run ended, and its ``result.json`` contents (None unless ``done``)."""

    run_dir: str
    state: str
    result: dict | None = None
    error: str | None = None


class _Run:
    """Everything rank 0 writes into the run directory."""

    def __init__(self, run_dir: Path, d: _Dist):
        self.dir, self.d = run_dir, d
        self.status: dict = {}

    def write_status(self, **kw):
        if not self.d.main:
            return
        self.status.update(kw, updated_at=time.time())
        write_json_atomic(self.dir / STATUS, self.status)

    def log(self, record: dict, on_record=None):
        if not self.d.main:
            return
        record = _json_safe({**record, "time": time.time()})
        with open(self.dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
        if on_record:
            on_record(record)

    def truncate_metrics(self, global_step: int, epochs_done: int):
        """Drop the records logged after the checkpoint we resume from."""
        if not self.d.main:
            return
        keep = [m for m in read_metrics(self.dir)
                if (m.get("kind") == "epoch" and m.get("epoch", 0) <= epochs_done)
                or (m.get("kind") != "epoch" and m.get("global_step", 0) <= global_step)]
        tmp = self.dir / f".{METRICS}.tmp"
        tmp.write_text("".join(json.dumps(m) + "\n" for m in keep))
        os.replace(tmp, self.dir / METRICS)


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` through a temporary file and ``os.replace``: a kill never leaves a torn
    checkpoint behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    """Read a run checkpoint with ``weights_only=True``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"No checkpoint at {p}; the run has not finished an epoch yet. Start it "
                        "again without --resume.")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"Checkpoint {p} cannot be read ({type(e).__name__}: {e}).") from None


def build_run_model(config: TrainConfig, task: Task, weights: str | None = None):
    """The pruned model of a run (fresh head); ``weights`` overrides ``config.weights``."""
    from .prune import build_pruned

    return build_pruned(config.arch, weights or config.weights, config.cut, task.n_outputs,
                        seed=config.seed, target_mean=task.target_mean,
                        target_std=task.target_std)


def _make_optimizer(config: TrainConfig, model: nn.Module):
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)


def _loader(ds: ImageSet, batches, workers: int, device):
    return torch.utils.data.DataLoader(ds, batch_sampler=batches, num_workers=workers,
                                       pin_memory=device.type == "cuda",
                                       persistent_workers=False)


@torch.no_grad()
def evaluate(model: nn.Module, images: ImageSet, task: Task, *, batch_size: int = 32,
             device="cpu", channels_last: bool = True, amp: bool = False,
             workers: int = 0, stop: Callable[[], bool] | None = None) -> dict:
    """Loss and metrics of ``model`` on ``images`` (eval mode; restores the previous mode).

    Returns:
        ``{"loss", "mae", "r2", "mse", "kappa", "kappa_quadratic", "accuracy",
        "confusion_matrix", "classes", "n"}`` (the ones that apply to the task), plus
        ``"predictions"`` (areas or class indices) for callers that want them.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    batches = [list(range(i, min(i + batch_size, len(images))))
               for i in range(0, len(images), batch_size)]
    outs, losses, n = [], 0.0, 0
    try:
        for x, y in _loader(images, batches, workers, device):
            if stop and stop():
                raise RunCancelled("cancelled during evaluation")
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = model(x)
            losses += float(_objective(out, y, task)) * len(x)
            n += len(x)
            outs.append(out.float().cpu())
    finally:
        model.train(was_training)
    if not n:
        return {"loss": None, "n": 0}
    out = torch.cat(outs)
    res: dict = {"loss": losses / n}
    labels_true = [task.classes[int(t)] for t in images.targets] if task.kind == "classification" \
        else None
    if task.kind == "regression":
        areas = (task.target_mean + task.target_std * out.squeeze(-1)).numpy().astype(float)
        res.update(regression_metrics(images.targets, areas))
        res["predictions"] = areas.tolist()
        if task.class_means and getattr(images, "labels", None) is not None:
            pred, _ = nearest_class(areas, dict(task.class_means))
            res.update(classification_metrics(images.labels, pred, task.classes))
    else:
        pred_idx = out.argmax(dim=1).numpy()
        res.update(classification_metrics(labels_true, [task.classes[i] for i in pred_idx],
                                          task.classes))
        res["predictions"] = pred_idx.tolist()
    return res


def _image_set(ds: Dataset, idx: np.ndarray, task: Task, transform) -> ImageSet:
    samples = [ds.samples[int(i)] for i in idx]
    if task.kind == "regression":
        targets = [float(s.measure) for s in samples]
    else:
        pos = {c: i for i, c in enumerate(task.classes)}
        targets = [pos[s.label] for s in samples]
    images = ImageSet([s.path for s in samples], targets, transform)
    images.labels = [s.label for s in samples] if ds.labels is not None else None
    return images


def _metric_view(res: dict, prefix: str) -> dict:
    keys = ("loss", "mae", "r2", "kappa", "kappa_quadratic", "accuracy")
    return {f"{prefix}_{k}": res[k] for k in keys if k in res}


def train(config: TrainConfig | None, run_dir, *, resume: bool = False,
          progress: ProgressFn | None = None, on_record: Callable[[dict], None] | None = None,
          handle_signals: bool = True, dataset: Dataset | None = None) -> RunResult:
    """Fine-tune a pruned network and write the run directory.

    Args:
        config: the run's configuration (ignored with ``resume=True``: read from the run dir).
        run_dir: the run directory (created; must not already hold a run unless resuming).
        resume: continue from ``checkpoint.pt`` with the configuration of ``config.json``.
        progress: optional ``progress(fraction, message)`` callback.
        on_record: optional callback receiving each ``metrics.jsonl`` record as it is written.
        handle_signals: install SIGTERM/SIGINT handlers (main thread only; restored at the end)
            that finish the current step, checkpoint, and mark the run ``cancelled``.
        dataset: an already loaded :class:`Dataset` to use instead of loading ``config.dataset``
            (Python callers and tests; ``--resume`` from the CLI reloads ``config.dataset``).

    Returns:
        :class:`RunResult` with state ``done`` (and the result), or ``cancelled``.

    Raises:
        UserError: a bad configuration, or a run directory that already holds a run.
        RunFailed: a NaN/infinite loss or an unreadable training image (status ``failed``).
    """
    from . import __version__

    run = Path(run_dir)
    d, device = _init_distributed(config.device if config and not resume else "auto")
    if resume:
        cfg_data = _read_json(run / CONFIG)
        if cfg_data is None:
            raise UserError(f"--resume: {run / CONFIG} is missing or unreadable; {run} is not a "
                            "run directory. Start a new run without --resume.")
        config = TrainConfig.from_dict(cfg_data, str(run / CONFIG))
        if d.world <= 1:
            from .extract import resolve_device
            device = resolve_device(config.device)
        st = _read_json(run / STATUS) or {}
        if st.get("state") == "done":
            return RunResult(str(run), "done", _read_json(run / RESULT))
    else:
        if config is None:
            raise UserError("train: give a TrainConfig (or resume=True).")
        config.validate()
        if (run / CONFIG).exists():
            raise UserError(f"--run-dir {run} already holds a run ({CONFIG} exists). Resume it "
                            "with --resume, or choose another --run-dir.")
    # every rank has looked at the run directory before rank 0 writes into it: a slower rank
    # must not mistake rank 0's fresh config.json for an earlier run
    _barrier(d)
    writer = _Run(run, d)
    if d.main:
        run.mkdir(parents=True, exist_ok=True)
        if not resume:
            write_json_atomic(run / CONFIG, {**config.to_dict(), "rcvcore_version": __version__})
            (run / METRICS).write_text("")
        prev = _read_json(run / STATUS) or {}
        writer.status = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                         "started_at": prev.get("started_at", time.time()),
                         "resumed": resume, "world_size": d.world, "epoch": 0,
                         "global_step": 0, "error": None, "message": "starting"}
        writer.write_status()
    flag = _Flag().install() if handle_signals else _Flag()
    try:
        return _train(config, run, writer, d, device, resume, flag, progress, on_record, dataset)
    except RunCancelled as e:
        writer.write_status(state="cancelled", error=None, message=str(e))
        return RunResult(str(run), "cancelled", None, str(e))
    except RunFailed as e:
        writer.write_status(state="failed", error=str(e), message="failed")
        raise
    except BaseException as e:
        msg = f"{type(e).__name__}: {e}"
        writer.write_status(state="failed", error=msg, message="failed")
        raise
    finally:
        flag.restore()


def _train(config: TrainConfig, run: Path, writer: _Run, d: _Dist, device, resume: bool,
           flag: _Flag, progress, on_record, dataset) -> RunResult:
    from .data.registry import load_dataset
    from .extract import default_workers
    from .models import get_arch

    def say(frac, msg):
        if progress and d.main:
            progress(frac, msg)

    arch = get_arch(config.arch)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2 ** 32))
    say(0.0, f"loading dataset {config.dataset}")
    if dataset is None:
        def load():
            return load_dataset(config.dataset, n=config.n, seed=config.split_seed,
                                cache_dir=config.dataset_cache_dir, **config.dataset_options)

        if d.main:  # rank 0 generates any cached dataset first; the others then just read it
            dataset = load()
        _barrier(d)
        if not d.main:
            dataset = load()
    else:
        from .data.base import limit
        dataset = limit(dataset, config.n, config.split_seed)
    splits = make_splits(dataset, config.val_fraction, config.test_fraction, config.split_seed)
    task = make_task(config, dataset, splits["train"])
    transform = train_transform(arch, config.image_size)
    sets = {k: _image_set(dataset, v, task, transform) for k, v in splits.items()}
    amp = (device.type == "cuda") if config.amp is None else bool(config.amp and
                                                                 device.type == "cuda")
    workers = default_workers(device) if config.workers is None else int(config.workers)
    per_rank = max(1, math.ceil(config.batch_size / d.world))

    say(0.02, f"building {config.arch} ({config.weights}) cut at {config.cut}")
    model = build_run_model(config, task)
    if config.trainable == "head":
        for p in model.body.parameters():
            p.requires_grad_(False)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(config, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, start_batch, global_step = 0, 0, 0
    if resume and (run / CHECKPOINT).exists():
        ck = load_checkpoint(run / CHECKPOINT)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if isinstance(ck.get("rng"), torch.Tensor):
            torch.set_rng_state(ck["rng"])
        start_epoch, start_batch = int(ck["epoch"]), int(ck["batch_in_epoch"])
        global_step = int(ck["global_step"])
        writer.truncate_metrics(global_step, start_epoch)
        say(0.03, f"resuming at epoch {start_epoch + 1}, step {global_step}")
    elif resume:
        writer.truncate_metrics(0, 0)

    summary = None
    if d.main:
        try:
            summary = _summary(arch.name, config.cut, task.image_size, task.n_outputs)
        except Exception as e:  # counting FLOPs must never stop a run
            summary = {"error": f"{type(e).__name__}: {e}"}
        writer.write_status(summary=summary, n_train=len(splits["train"]),
                            n_val=len(splits["val"]), n_test=len(splits["test"]))

    net = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(epochs_done: int, batch_in_epoch: int):
        if not d.main:
            return
        save_checkpoint(run / CHECKPOINT, {
            "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if amp else {},
            "epoch": epochs_done, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
            "task": task.to_dict(), "config": config.to_dict(), "rng": torch.get_rng_state()})

    def stop_requested() -> bool:
        return bool(_allreduce(d, [1.0 if flag.set else 0.0], device)[0] > 0)

    n_batches = len(_epoch_batches(len(sets["train"]), per_rank, config.seed, 0, d))
    total_steps = max(1, n_batches * config.epochs)
    last_val: dict = {}
    for epoch in range(start_epoch, config.epochs):
        batches = _epoch_batches(len(sets["train"]), per_rank, config.seed, epoch, d)
        first = start_batch if epoch == start_epoch else 0
        net.train()
        if config.trainable == "head":
            model.body.eval()
        ep_loss, ep_n, ep_time = 0.0, 0, 0.0
        win_loss, win_n, win_imgs, win_time = 0.0, 0, 0, 0.0
        t_prev = time.perf_counter()
        for b, (x, y) in enumerate(_loader(sets["train"], batches[first:], workers, device),
                                   start=first):
            x = x.to(device, non_blocking=True)
            if config.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = net(x)
            loss = _objective(out, y, task)
            lv = float(loss.detach())
            bad, loss_sum, count, stop = _allreduce(
                d, [0.0 if math.isfinite(lv) else 1.0, lv * len(x) if math.isfinite(lv) else 0.0,
                    float(len(x)), 1.0 if flag.set else 0.0], device)
            if bad:
                raise RunFailed(
                    f"The training loss became {lv if not math.isfinite(lv) else 'non-finite'} "
                    f"at epoch {epoch + 1}, step {global_step + 1} (lr {config.lr}). The run "
                    "stopped. Try a lower --lr, or check the dataset's targets for extreme "
                    "values.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            global_step += 1
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            step_loss = loss_sum / max(count, 1)
            ep_loss += loss_sum
            ep_n += int(count)
            ep_time += dt
            win_loss += loss_sum
            win_n += int(count)
            win_time += dt
            lr = optimizer.param_groups[0]["lr"]
            if global_step % config.log_every == 0:
                writer.log({"kind": "step", "epoch": epoch + 1, "step": b + 1,
                            "global_step": global_step, "loss": win_loss / max(win_n, 1),
                            "last_loss": step_loss, "lr": lr,
                            "images_per_s": win_n / max(win_time, 1e-9)}, on_record)
                win_loss, win_n, win_time = 0.0, 0, 0.0
            done_frac = global_step / total_steps
            say(0.05 + 0.85 * done_frac, f"epoch {epoch + 1}/{config.epochs} step {b + 1}/"
                f"{len(batches)} loss {step_loss:.4g}")
            if stop:
                checkpoint(epoch, b + 1)
                raise RunCancelled(f"cancelled by {flag.signal or 'a signal'} at epoch "
                                   f"{epoch + 1}, step {global_step}; resume with --resume")
            if (config.checkpoint_every and global_step % config.checkpoint_every == 0
                    and b + 1 < len(batches)):
                checkpoint(epoch, b + 1)
                writer.write_status(epoch=epoch, global_step=global_step)
        # validation (rank 0 evaluates the whole set; the others wait)
        if d.main:
            say(0.05 + 0.85 * global_step / total_steps, f"epoch {epoch + 1}: validating")
            try:
                val = evaluate(model, sets["val"], task, batch_size=per_rank, device=device,
                               channels_last=config.channels_last, amp=amp, workers=workers,
                               stop=lambda: flag.set)
                cancelled = False
            except RunCancelled:
                cancelled, val = True, {}
        else:
            val, cancelled = {}, False
        if stop_requested() or cancelled:
            checkpoint(epoch, len(batches))
            raise RunCancelled(f"cancelled by {flag.signal or 'a signal'} after the training "
                               f"part of epoch {epoch + 1}; resume with --resume")
        last_val = val
        writer.log({"kind": "epoch", "epoch": epoch + 1, "global_step": global_step,
                    "train_loss": ep_loss / max(ep_n, 1) if ep_n else None,
                    **_metric_view(val, "val"), "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": ep_n / ep_time if ep_time > 0 else None,
                    "epoch_time_s": ep_time}, on_record)
        checkpoint(epoch + 1, 0)
        writer.write_status(epoch=epoch + 1, global_step=global_step,
                            message=f"epoch {epoch + 1}/{config.epochs} done")

    # test
    result = None
    if d.main:
        say(0.93, "testing")
        test = evaluate(model, sets["test"], task, batch_size=per_rank, device=device,
                        channels_last=config.channels_last, amp=amp, workers=workers)
        if not last_val and len(sets["val"]):
            last_val = evaluate(model, sets["val"], task, batch_size=per_rank, device=device,
                                channels_last=config.channels_last, amp=amp, workers=workers)
        result = {"config": config.to_dict(), "task": task.to_dict(),
                  "test": {k: v for k, v in test.items() if k != "predictions"},
                  "val": {k: v for k, v in last_val.items() if k != "predictions"},
                  "n_train": len(splits["train"]), "n_val": len(splits["val"]),
                  "n_test": len(splits["test"]), "epochs": config.epochs,
                  "global_step": global_step, "world_size": d.world, "model": summary,
                  "test_predictions": [
                      {"path": p, "target": t, "prediction": q} for p, t, q in zip(
                          sets["test"].paths, sets["test"].targets,
                          test.get("predictions", []))]}
        write_json_atomic(run / RESULT, result)
        writer.write_status(state="done", message="done", error=None)
        say(1.0, "done")
    _barrier(d)
    return RunResult(str(run), "done", result)


@functools.lru_cache(maxsize=32)
def _cut_summary_cached(arch: str, cut: str, image_size: int, n_outputs: int):
    from .prune import cut_summary
    return cut_summary(arch, "random", cut, image_size, n_outputs)


def _summary(arch: str, cut: str, image_size: int, n_outputs: int) -> dict:
    """Parameters and forward FLOPs of the full and the pruned model (memoised: compare and
    repeated runs in one process count each configuration once)."""
    return _cut_summary_cached(arch, cut, image_size, n_outputs).to_dict()


def compare(*args, **kwargs):
    """See :func:`rcvcore.compare.compare` (re-exported here)."""
    from .compare import compare as _compare
    return _compare(*args, **kwargs)

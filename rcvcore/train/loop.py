"""The training loop of a run: optimisation, validation each epoch, test, checkpoints.

The optimisation defaults are the paper's (Adam, lr 1e-4, batch 32, 5 epochs, all layers
trainable); the protocol (:data:`rcvcore.runs.config.PROTOCOLS`) sets the input scaling, the
regression target (standardised, or the paper's raw areas) and the head's start (its closed-form
fit, :mod:`.head`, or random). A head-only run (``--trainable head``, one process) trains its
head on the cached pooled features at the cut (:class:`.head.FeatureSet`). Under ``torchrun``
the loop runs data-parallel (:mod:`.distributed`) and rank 0 alone writes the run directory
(:class:`rcvcore.runs.writer.RunWriter`). SIGTERM / SIGINT finish the current step, checkpoint, and
mark the run ``cancelled`` (resumable).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from .._extract import default_workers
from .._files import read_json, write_json
from .._runlock import claim_run_dir
from .._shared import ProgressFn
from ..data.base import Dataset, clean_temp_files, default_cache_dir, limit
from ..data.registry import load_dataset
from ..domain import DOMAIN, TrainingDomain, fit_domain
from ..errors import UserError, disk_error
from ..metrics import METRICS, classification_metrics, nearest_class, regression_metrics
from ..models import Backbone, get_arch, resolve_backbone
from ..prune import cut_node, cut_summary
from ..runs.checkpoint import CHECKPOINT_FORMAT, load_resume_checkpoint, save_checkpoint
from ..runs.config import TrainConfig
from ..runs.directory import (
    CHECKPOINT,
    CONFIG,
    RESULT,
    STATUS,
    RunCancelled,
    RunFailed,
    RunResult,
    clear_run_dir,
)
from ..runs.writer import RunWriter
from .data import ImageSet, Task, image_set, make_task, split_dataset
from .distributed import Dist, allreduce, barrier, epoch_batches, init_distributed
from .head import FeatureSet, cached_features, features_key, fit_head, head_store
from .model import build_run_model, run_transform


def _objective(out: torch.Tensor, y: torch.Tensor, task: Task) -> torch.Tensor:
    """MSE on the measure in the head's scale (standardised, or raw under the paper protocol;
    see :class:`Task`) for regression, cross-entropy for classification."""
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
            if channels_last and x.ndim == 4:
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


@torch.no_grad()
def _features_and_outputs(model: nn.Module, images: ImageSet, batch_size: int, device,
                          workers: int) -> tuple[np.ndarray, torch.Tensor]:
    """Pooled features (n, n_features) and raw head outputs of ``images`` (eval mode)."""
    was_training = model.training
    model.eval()
    batches = [list(range(i, min(i + batch_size, len(images))))
               for i in range(0, len(images), batch_size)]
    feats, outs = [], []
    try:
        for x, _ in _loader(images, batches, workers, device):
            f = model.features(x.to(device)).float()
            feats.append(f.cpu())
            outs.append(model.head(f).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats).numpy().astype(float), torch.cat(outs)


def training_domain(model: nn.Module, images: ImageSet, task: Task, *, batch_size: int = 32,
                    device="cpu", workers: int = 0, val_images: ImageSet | None = None
                    ) -> TrainingDomain:
    """The :class:`rcvcore.domain.TrainingDomain` of ``model`` (a :class:`PrunedNet`) on its
    training images (pooled features at the cut, class labels, measures); a classifier's
    probability thresholds come from ``val_images`` when given (see :func:`fit_domain`)."""
    device = torch.device(device)
    features, outs = _features_and_outputs(model, images, batch_size, device, workers)
    if task.kind == "regression":
        return fit_domain(features, labels=images.labels, classes=task.classes,
                          measures=np.asarray(images.targets, float),
                          measure_name=task.measure_name)

    def probs(out):   # float64: the end classes' log-odds (rcvcore.domain) must not underflow
        return torch.softmax(out.double(), dim=1).numpy()

    def names(imgs):
        return [task.classes[int(t)] for t in imgs.targets]

    calib = None
    if val_images is not None and len(val_images):
        _, vout = _features_and_outputs(model, val_images, batch_size, device, workers)
        calib = (probs(vout), names(val_images))
    return fit_domain(features, labels=names(images), classes=task.classes,
                      probabilities=probs(outs), calibration=calib,
                      measure_name=task.measure_name)


def _metric_view(res: dict, prefix: str) -> dict:
    keys = ("loss", *METRICS)
    return {f"{prefix}_{k}": res[k] for k in keys if k in res}


def train(config: TrainConfig | None, run_dir, *, resume: bool = False, restart: bool = False,
          progress: ProgressFn | None = None, on_record: Callable[[dict], None] | None = None,
          handle_signals: bool = True, dataset: Dataset | None = None) -> RunResult:
    """Fine-tune a pruned network and write the run directory.

    Args:
        config: the run's configuration (ignored with ``resume=True``: read from the run dir).
        run_dir: the run directory (created; must not already hold a run unless resuming).
        resume: continue from ``checkpoint.pt`` with the configuration of ``config.json`` (from
            ``checkpoint.prev.pt``, with a warning, when the latest one cannot be read).
        restart: remove the run already in ``run_dir`` (not a running one) and start afresh.
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
    run = Path(run_dir)
    # one writing process per run directory (issue 25); held until train returns
    claim = (claim_run_dir(run) if int(os.environ.get("RANK", "0")) == 0  # noqa: F841
             and (run.is_dir() or not resume) else None)
    config, done = _open_run(config, run, resume, restart)
    if done is not None:
        return done
    d, device = init_distributed(config.device)
    # every rank has looked at the run directory before rank 0 writes into it: a slower rank
    # must not mistake rank 0's fresh config.json for an earlier run
    barrier(d)
    writer = RunWriter(run, enabled=d.main)
    if d.main:
        _start_run_dir(writer, config, resume, d)
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
        full = disk_error(e, run, "or give a --run-dir on another disk")  # one line, issue 25
        msg = str(full) if full else f"{type(e).__name__}: {e}"
        with contextlib.suppress(OSError):   # a full disk may refuse the status too
            writer.write_status(state="failed", error=msg, message="failed")
        if full is not None:
            raise full from None
        raise
    finally:
        flag.restore()


def _open_run(config: TrainConfig | None, run: Path, resume: bool,
              restart: bool) -> tuple[TrainConfig | None, RunResult | None]:
    """The run's configuration (read back from ``config.json`` on resume), checked against
    what the run directory holds; ``(config, RunResult)`` when a resumed run is already done."""
    if restart and resume:
        raise UserError("train: --restart starts the run afresh and --resume continues it; "
                        "give one of them.")
    if restart and int(os.environ.get("RANK", "0")) == 0 and run.is_dir():
        clear_run_dir(run)
    if resume:
        # every rank reads the configuration first: the process group and the device are the
        # run's own (a DDP resume used to initialise on "auto" whatever config.json said)
        cfg_data = read_json(run / CONFIG)
        if cfg_data is None:
            raise UserError(f"--resume: {run / CONFIG} is missing or unreadable; {run} is not a "
                            "run directory. Start a new run without --resume.")
        config = TrainConfig.from_dict(cfg_data, str(run / CONFIG))
        st = read_json(run / STATUS) or {}
        if st.get("state") == "done":
            return config, RunResult(str(run), "done", read_json(run / RESULT))
        return config, None
    if config is None:
        raise UserError("train: give a TrainConfig (or resume=True).")
    config.validate()
    if (run / CONFIG).exists() and not restart:   # (rank 0 cleared it for --restart)
        raise UserError(f"--run-dir {run} already holds a run ({CONFIG} exists). Resume it "
                        "with --resume, start it afresh with --restart, or choose another "
                        "--run-dir.")
    return config, None


def _start_run_dir(writer: RunWriter, config: TrainConfig, resume: bool, d: Dist) -> None:
    """Rank 0: create the run directory, write ``config.json`` (new runs) and the first
    ``running`` status."""
    run = writer.dir
    run.mkdir(parents=True, exist_ok=True)
    clean_temp_files(run)          # temporary files of writes a kill interrupted
    if not resume:
        writer.write_config(config, __version__)
    prev = read_json(run / STATUS) or {}
    writer.status = {"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                     "started_at": prev.get("started_at", time.time()),
                     "resumed": resume, "world_size": d.world, "epoch": 0,
                     "global_step": 0, "error": None, "message": "starting",
                     # a resumed run keeps what its head was started from
                     **({"head_init": prev["head_init"]}
                        if resume and prev.get("head_init") else {})}
    writer.write_status()


def _train(config: TrainConfig, run: Path, writer: RunWriter, d: Dist, device, resume: bool,
           flag: _Flag, progress, on_record, dataset) -> RunResult:
    """The run, phase by phase: data, network, resume point, head, fit, test."""
    say = _reporter(progress, d)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2 ** 32))
    data = load_run_data(config, d, dataset, say)
    rt = _runtime(config, device, d)
    backbone, model = _build(config, data.task, rt, say)
    loop = _Loop(config, run, writer, d, rt, data.task, model, flag, say, on_record)
    start = loop.restore(resume)
    sets, scorer, head_info = _start_head(config, loop, data, backbone, start)
    summary = _write_summary(config, writer, d, data)
    last_val = loop.fit(sets, scorer, start)
    result = None
    if d.main:
        result = _test(loop, data, sets, scorer, last_val,
                       {"model": summary, "head_init": head_info
                        or writer.status.get("head_init") or {"method": config.head_init}})
    barrier(d)
    return RunResult(str(run), "done", result)


# --------------------------------------------------------------------------------------------
# the phases of a run, in order


@dataclass(frozen=True)
class _Data:
    """The run's data: the dataset, its train/val/test split, the task, the image sets."""

    dataset: Dataset
    splits: dict            # part -> dataset indices
    task: Task
    transform: object       # the input transform of the run's protocol
    sets: dict              # part -> ImageSet


@dataclass(frozen=True)
class _Runtime:
    """Where and how the run computes (this process's share under DDP)."""

    device: torch.device
    amp: bool
    workers: int
    per_rank: int           # batch size of this process


@dataclass(frozen=True)
class _Start:
    """Where the run starts: epoch 0, or a checkpoint's epoch, batch and step."""

    epoch: int = 0
    batch: int = 0
    global_step: int = 0
    sums: tuple | str | None = None   # the epoch's loss sums before a mid-epoch checkpoint
    from_checkpoint: bool = False


def _reporter(progress: ProgressFn | None, d: Dist) -> ProgressFn:
    """``progress`` on rank 0, a no-op elsewhere."""
    def say(frac, msg):
        if progress and d.main:
            progress(frac, msg)
    return say


def load_run_data(config: TrainConfig, d: Dist, dataset: Dataset | None, say) -> _Data:
    """Load (rank 0 first: it generates any cached dataset) and split the dataset."""
    say(0.0, f"loading dataset {config.dataset}")
    if dataset is None:
        def load():
            return load_dataset(config.dataset, n=config.n, seed=config.split_seed,
                                cache_dir=config.dataset_cache_dir, **config.dataset_options)

        if d.main:
            dataset = load()
        barrier(d)
        if not d.main:
            dataset = load()
    else:
        dataset = limit(dataset, config.n, config.split_seed)
    splits = split_dataset(dataset, config.val_fraction, config.test_fraction, config.split_seed)
    task = make_task(config, dataset, splits["train"])
    transform = run_transform(config)
    sets = {k: image_set(dataset, v, task, transform) for k, v in splits.items()}
    return _Data(dataset, splits, task, transform, sets)


def _runtime(config: TrainConfig, device, d: Dist) -> _Runtime:
    amp = (device.type == "cuda") if config.amp is None else bool(config.amp and
                                                                 device.type == "cuda")
    workers = default_workers(device) if config.workers is None else int(config.workers)
    return _Runtime(device, amp, workers, max(1, math.ceil(config.batch_size / d.world)))


def _build(config: TrainConfig, task: Task, rt: _Runtime, say) -> tuple[Backbone, nn.Module]:
    """The pruned network with its head, on the device (trunk frozen for ``trainable=head``)."""
    say(0.02, f"building {config.arch} ({config.weights}) cut at {config.cut}")
    backbone = resolve_backbone(config.arch, config.weights, config.seed)
    model = build_run_model(config, task, backbone=backbone)
    if config.trainable == "head":
        for p in model.body.parameters():
            p.requires_grad_(False)
    model = model.to(rt.device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return backbone, model


def _start_head(config: TrainConfig, loop: _Loop, data: _Data, backbone: Backbone,
                start: _Start) -> tuple[dict, nn.Module, dict | None]:
    """The head's closed-form start (``head_init=rcv``, new runs) and, for a frozen trunk in
    one process, the pooled features it trains on. Returns ``(sets, scorer, head_info)``:
    the sets the loop iterates, the module :func:`evaluate` runs on them, what was done."""
    feature_mode = config.trainable == "head" and not loop.d.enabled
    if not (feature_mode or (config.head_init == "rcv" and not start.from_checkpoint)):
        return data.sets, loop.model, None
    rt = loop.rt
    head_info, feature_sets = _prepare_head(
        config, loop.model, data.sets, data.splits, data.dataset, data.task, backbone,
        data.transform, rt.device, rt.per_rank, rt.amp, rt.workers,
        fit=not start.from_checkpoint, flag=loop.flag, say=loop.say,
        parts=("train", "val", "test") if feature_mode else ("train", "val"))
    if loop.d.main:
        loop.writer.write_status(head_init=head_info)
    if feature_mode:
        return feature_sets, loop.model.head, head_info
    return data.sets, loop.model, head_info


def _write_summary(config: TrainConfig, writer: RunWriter, d: Dist, data: _Data) -> dict | None:
    """Parameters and FLOPs of the full and pruned model, and the split sizes, into status."""
    if not d.main:
        return None
    try:
        summary = _summary(get_arch(config.arch).name, config.cut, data.task.image_size,
                           data.task.n_outputs)
    except Exception as e:  # counting FLOPs must never stop a run
        summary = {"error": f"{type(e).__name__}: {e}"}
    writer.write_status(summary=summary, n_train=len(data.splits["train"]),
                        n_val=len(data.splits["val"]), n_test=len(data.splits["test"]))
    return summary


def _test(loop: _Loop, data: _Data, sets: dict, scorer: nn.Module, last_val: dict,
          extra: dict) -> dict:
    """Rank 0: test (and, if no epoch ran, validation) metrics into ``result.json``."""
    config, writer = loop.config, loop.writer
    loop.say(0.93, "testing")
    test = loop.evaluate(scorer, sets["test"])
    if not last_val and len(sets["val"]):
        last_val = loop.evaluate(scorer, sets["val"])
    test_set = sets["test"]
    result = {"config": config.to_dict(), "task": data.task.to_dict(),
              "test": {k: v for k, v in test.items() if k != "predictions"},
              "val": {k: v for k, v in last_val.items() if k != "predictions"},
              "n_train": len(data.splits["train"]), "n_val": len(data.splits["val"]),
              "n_test": len(data.splits["test"]), "epochs": config.epochs,
              "global_step": loop.global_step, "world_size": loop.d.world, **extra,
              "protocol": config.protocol, "protocol_deviations": config.deviations(),
              "test_predictions": [
                  {"path": p, "target": t, "prediction": q,
                   **({} if lab is None else {"label": lab})} for p, t, q, lab in zip(
                      test_set.paths, test_set.targets, test.get("predictions", []),
                      test_set.labels or [None] * len(test_set))]}
    _write_domain(loop, data)
    writer.write_result(result)
    writer.write_status(state="done", message="done", error=None)
    loop.say(1.0, "done")
    return result


def _write_domain(loop: _Loop, data: _Data) -> None:
    """Rank 0: the training domain (:mod:`rcvcore.domain`) into ``domain.json``, from the
    training split only; a failure is recorded in the status, it never fails the run."""
    loop.say(0.96, "recording the training domain")
    try:
        dom = training_domain(loop.model, data.sets["train"], data.task,
                              batch_size=loop.rt.per_rank, device=loop.rt.device,
                              workers=loop.rt.workers, val_images=data.sets["val"])
        write_json(loop.run / DOMAIN, dom.to_dict(), indent=None)
    except (ValueError, RuntimeError, OSError) as e:
        loop.writer.write_status(domain_error=f"{type(e).__name__}: {e}")


class _Loop:
    """The optimisation of one run in this process: the model, its optimizer and scaler, the
    step counter; it checkpoints, trains epochs, validates, and stops on a signal."""

    def __init__(self, config: TrainConfig, run: Path, writer: RunWriter, d: Dist,
                 rt: _Runtime, task: Task, model: nn.Module, flag: _Flag, say, on_record):
        self.config, self.run, self.writer, self.d, self.rt = config, run, writer, d, rt
        self.task, self.model, self.flag, self.say = task, model, flag, say
        self.on_record = on_record
        self.optimizer = _make_optimizer(config, model)
        self.scaler = torch.amp.GradScaler("cuda", enabled=rt.amp)
        self.global_step = 0

    # ---- checkpoints
    def restore(self, resume: bool) -> _Start:
        """Load the checkpoint a resumed run continues from; drop later metrics records."""
        found = load_resume_checkpoint(self.run) if resume else None
        if found is None:
            if resume:
                self.writer.truncate_metrics(0, 0)
            return _Start()
        ck, _ = found
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        if isinstance(ck.get("rng"), torch.Tensor):
            torch.set_rng_state(ck["rng"])
        start = _Start(int(ck["epoch"]), int(ck["batch_in_epoch"]), int(ck["global_step"]),
                       from_checkpoint=True)
        if start.batch:
            sums = ck.get("epoch_sums")
            start = dataclasses.replace(start, sums=tuple(float(v) for v in sums)
                                        if isinstance(sums, list) else "unknown")
        self.global_step = start.global_step
        self.writer.truncate_metrics(start.global_step, start.epoch)
        self.say(0.03, f"resuming at epoch {start.epoch + 1}, step {start.global_step}")
        return start

    def checkpoint(self, epochs_done: int, batch_in_epoch: int, sums=(0.0, 0, 0.0)) -> None:
        if not self.d.main:
            return
        save_checkpoint(self.run / CHECKPOINT, {
            "format": CHECKPOINT_FORMAT, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.rt.amp else {},
            "epoch": epochs_done, "batch_in_epoch": batch_in_epoch,
            "global_step": self.global_step,
            # mid-epoch: the loss sum, image count and time of the epoch so far, so that the
            # epoch's train_loss after a resume covers the whole epoch
            "epoch_sums": [float(sums[0]), float(sums[1]), float(sums[2])],
            "task": self.task.to_dict(), "config": self.config.to_dict(),
            "rng": torch.get_rng_state()})

    def evaluate(self, scorer: nn.Module, images, stop=None) -> dict:
        return evaluate(scorer, images, self.task, batch_size=self.rt.per_rank,
                        device=self.rt.device, channels_last=self.config.channels_last,
                        amp=self.rt.amp, workers=self.rt.workers, stop=stop)

    def _cancel(self, epoch: int, batch: int, sums, when: str) -> RunCancelled:
        self.checkpoint(epoch, batch, sums)
        return RunCancelled(f"cancelled by {self.flag.signal or 'a signal'} {when}; resume "
                            "with --resume")

    # ---- epochs
    def fit(self, sets: dict, scorer: nn.Module, start: _Start) -> dict:
        """Train the remaining epochs; returns the last validation metrics."""
        config, d = self.config, self.d
        net = scorer
        if d.enabled:
            net = DistributedDataParallel(
                self.model,
                device_ids=[self.rt.device.index] if self.rt.device.type == "cuda" else None)
        n_batches = len(epoch_batches(len(sets["train"]), self.rt.per_rank, config.seed, 0, d))
        total_steps = max(1, n_batches * config.epochs)
        last_val: dict = {}
        for epoch in range(start.epoch, config.epochs):
            epoch_start = start if epoch == start.epoch else _Start(epoch)
            sums, partial, n = self._train_epoch(net, sets["train"], epoch, epoch_start,
                                                 total_steps)
            last_val = self._validate(scorer, sets["val"], epoch, n, sums, total_steps)
            self._end_epoch(epoch, sums, partial, last_val)
        if config.epochs == 0:   # the head's closed-form fit is the model: keep it for predict
            self.checkpoint(0, 0)
        return last_val

    def _set_modes(self, net: nn.Module) -> None:
        net.train()
        if self.config.trainable == "head":
            self.model.body.eval()
        elif self.config.protocol_spec.batch_norm == "frozen":
            _freeze_batch_norm(self.model.body)

    def _train_epoch(self, net, train_set, epoch: int, start: _Start, total_steps: int):
        """The training steps of one epoch (from ``start.batch`` when resuming mid-epoch).

        Returns ``((loss sum, images, seconds), partial, n_batches)``; ``partial``: the sums
        miss the part before a checkpoint of an older rcvcore.
        """
        config = self.config
        batches = epoch_batches(len(train_set), self.rt.per_rank, config.seed, epoch, self.d)
        self._set_modes(net)
        ep, partial = _Window(), start.batch > 0 and start.sums == "unknown"
        if start.batch and isinstance(start.sums, tuple):
            ep = _Window(start.sums[0], int(start.sums[1]), start.sums[2])
        win, t_prev = _Window(), time.perf_counter()
        loader = _loader(train_set, batches[start.batch:], self.rt.workers, self.rt.device)
        for b, (x, y) in enumerate(loader, start=start.batch):
            loss_sum, count, stop, step_loss = self._step(net, x, y, epoch)
            now = time.perf_counter()
            dt, t_prev = now - t_prev, now
            ep.add(loss_sum, count, dt)
            win.add(loss_sum, count, dt)
            if self.global_step % config.log_every == 0:
                self._log_steps(win, epoch, b, step_loss)
                win = _Window()
            self.say(0.05 + 0.85 * self.global_step / total_steps,
                     f"epoch {epoch + 1}/{config.epochs} step {b + 1}/{len(batches)} loss "
                     f"{step_loss:.4g}")
            if stop:
                raise self._cancel(epoch, b + 1, ep.sums,
                                   f"at epoch {epoch + 1}, step {self.global_step}")
            if (config.checkpoint_every and self.global_step % config.checkpoint_every == 0
                    and b + 1 < len(batches)):
                self.checkpoint(epoch, b + 1, ep.sums)
                self.writer.write_status(epoch=epoch, global_step=self.global_step)
        return ep.sums, partial, len(batches)

    def _step(self, net, x, y, epoch: int) -> tuple[float, float, float, float]:
        """One optimisation step; returns (loss sum over processes, images, stop?, loss)."""
        device = self.rt.device
        x = x.to(device, non_blocking=True)
        if self.config.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(y).to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=self.rt.amp):
            out = net(x)
        loss = _objective(out, y, self.task)
        lv = float(loss.detach())
        bad, loss_sum, count, stop = allreduce(
            self.d, [0.0 if math.isfinite(lv) else 1.0, lv * len(x) if math.isfinite(lv) else 0.0,
                     float(len(x)), 1.0 if self.flag.set else 0.0], device)
        if bad:
            raise RunFailed(
                f"The training loss became {lv if not math.isfinite(lv) else 'non-finite'} "
                f"at epoch {epoch + 1}, step {self.global_step + 1} (lr {self.config.lr}). The "
                "run stopped. Try a lower --lr, or check the dataset's targets for extreme "
                "values.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.global_step += 1
        return loss_sum, count, stop, loss_sum / max(count, 1)

    def _log_steps(self, win: _Window, epoch: int, b: int, step_loss: float) -> None:
        self.writer.log({"kind": "step", "epoch": epoch + 1, "step": b + 1,
                         "global_step": self.global_step, "loss": win.loss / max(win.n, 1),
                         "last_loss": step_loss, "lr": self.optimizer.param_groups[0]["lr"],
                         "images_per_s": win.n / max(win.time, 1e-9)}, self.on_record)

    def _validate(self, scorer, val_set, epoch: int, n_batches: int, sums,
                  total_steps: int) -> dict:
        """Rank 0 evaluates the whole validation set (the others wait); a signal during it
        or the epoch cancels the run here."""
        val, cancelled = {}, False
        if self.d.main:
            self.say(0.05 + 0.85 * self.global_step / total_steps,
                     f"epoch {epoch + 1}: validating")
            try:
                val = self.evaluate(scorer, val_set, stop=lambda: self.flag.set)
            except RunCancelled:
                cancelled, val = True, {}
        stop = bool(allreduce(self.d, [1.0 if self.flag.set else 0.0], self.rt.device)[0] > 0)
        if stop or cancelled:
            raise self._cancel(epoch, n_batches, sums,
                               f"after the training part of epoch {epoch + 1}")
        return val

    def _end_epoch(self, epoch: int, sums, partial: bool, val: dict) -> None:
        loss, n, seconds = sums
        self.writer.log({"kind": "epoch", "epoch": epoch + 1, "global_step": self.global_step,
                         "train_loss": loss / max(n, 1) if n else None,
                         **({"train_loss_partial": True} if partial else {}),
                         **_metric_view(val, "val"),
                         "lr": self.optimizer.param_groups[0]["lr"],
                         "images_per_s": n / seconds if seconds > 0 else None,
                         "epoch_time_s": seconds}, self.on_record)
        self.checkpoint(epoch + 1, 0)
        self.writer.write_status(epoch=epoch + 1, global_step=self.global_step,
                                 message=f"epoch {epoch + 1}/{self.config.epochs} done")


@dataclass
class _Window:
    """Loss sum, images and seconds over some steps (an epoch, or the steps of a log line)."""

    loss: float = 0.0
    n: int = 0
    time: float = 0.0

    def add(self, loss_sum: float, count: float, seconds: float) -> None:
        self.loss += loss_sum
        self.n += int(count)
        self.time += seconds

    @property
    def sums(self) -> tuple[float, int, float]:
        return self.loss, self.n, self.time


def _freeze_batch_norm(module: nn.Module) -> None:
    """Batch-norm layers to eval mode (running statistics; their affine parameters still
    train)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _prepare_head(config, model, sets, splits, dataset, task, backbone, transform, device,
                  batch_size, amp, workers, *, fit: bool, flag, say, parts) -> tuple[dict, dict]:
    """Pooled features at the cut of ``parts`` (cached), and the head's closed-form fit on the
    training part when ``fit`` and ``config.head_init == "rcv"``. Returns ``(head_info,
    {part: FeatureSet})``; ``head_info`` says what was done (written to status/result)."""
    root = Path(config.dataset_cache_dir).expanduser() if config.dataset_cache_dir \
        else default_cache_dir()
    node = cut_node(backbone.spec, config.cut)
    feats, hits, t0 = {}, 0, time.perf_counter()
    with head_store(root) as store:
        for i, part in enumerate(parts):
            say(0.03 + 0.02 * i / len(parts), f"pooled features at {config.cut} ({part})")
            # a transformer's features also depend on its token pooling (CNN keys unchanged)
            pooled = f"{node}|tokens-{config.token_pool}" if model.layout == "tokens" else node
            key = features_key(backbone.fingerprint, pooled, transform, sets[part].paths)
            feats[part], hit = cached_features(
                model, sets[part], key, store, device=device, batch_size=batch_size,
                channels_last=config.channels_last, amp=amp, workers=workers,
                stop=lambda: flag.set)
            hits += int(hit)
    info = {"method": config.head_init, "features_s": round(time.perf_counter() - t0, 3),
            "feature_cache": f"{hits}/{len(parts)} hit"}
    if fit and config.head_init == "rcv":
        t1 = time.perf_counter()
        groups = None if dataset.groups is None else dataset.groups[splits["train"]]
        info.update(fit_head(model, feats["train"], sets["train"], task, groups))
        info["fit_s"] = round(time.perf_counter() - t1, 3)
        if "val" in feats and len(feats["val"]):
            # where the model starts: the fit's validation metrics before any step
            val = evaluate(model.head, FeatureSet(feats["val"], sets["val"]), task,
                           batch_size=batch_size, device=device)
            info["val_before_training"] = _metric_view(val, "val")
    return info, {p: FeatureSet(feats[p], sets[p]) for p in parts}


@functools.lru_cache(maxsize=32)
def _cut_summary_cached(arch: str, cut: str, image_size: int, n_outputs: int):
    return cut_summary(arch, "random", cut, image_size, n_outputs)


def _summary(arch: str, cut: str, image_size: int, n_outputs: int) -> dict:
    """Parameters and forward FLOPs of the full and the pruned model (memoised: compare and
    repeated runs in one process count each configuration once)."""
    return _cut_summary_cached(arch, cut, image_size, n_outputs).to_dict()

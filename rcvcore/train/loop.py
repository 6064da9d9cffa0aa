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
import functools
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import __version__
from .._runlock import claim_run_dir
from .._shared import ProgressFn
from ..data.base import Dataset, clean_temp_files, default_cache_dir, limit
from ..data.registry import load_dataset
from ..errors import UserError, disk_error
from ..extract import default_workers
from ..files import read_json
from ..metrics import classification_metrics, nearest_class, regression_metrics
from ..models import get_arch, resolve_backbone
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


def _metric_view(res: dict, prefix: str) -> dict:
    keys = ("loss", "mae", "r2", "kappa", "kappa_quadratic", "accuracy")
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
    if restart and resume:
        raise UserError("train: --restart starts the run afresh and --resume continues it; "
                        "give one of them.")
    # one writing process per run directory (issue 25); held until train returns
    claim = (claim_run_dir(run) if int(os.environ.get("RANK", "0")) == 0  # noqa: F841
             and (run.is_dir() or not resume) else None)
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
            return RunResult(str(run), "done", read_json(run / RESULT))
    else:
        if config is None:
            raise UserError("train: give a TrainConfig (or resume=True).")
        config.validate()
        if (run / CONFIG).exists() and not restart:   # (rank 0 cleared it for --restart)
            raise UserError(f"--run-dir {run} already holds a run ({CONFIG} exists). Resume it "
                            "with --resume, start it afresh with --restart, or choose another "
                            "--run-dir.")
    d, device = init_distributed(config.device)
    # every rank has looked at the run directory before rank 0 writes into it: a slower rank
    # must not mistake rank 0's fresh config.json for an earlier run
    barrier(d)
    writer = RunWriter(run, enabled=d.main)
    if d.main:
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


def _train(config: TrainConfig, run: Path, writer: RunWriter, d: Dist, device, resume: bool,
           flag: _Flag, progress, on_record, dataset) -> RunResult:
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
        barrier(d)
        if not d.main:
            dataset = load()
    else:
        dataset = limit(dataset, config.n, config.split_seed)
    splits = split_dataset(dataset, config.val_fraction, config.test_fraction, config.split_seed)
    task = make_task(config, dataset, splits["train"])
    transform = run_transform(config)
    sets = {k: image_set(dataset, v, task, transform) for k, v in splits.items()}
    amp = (device.type == "cuda") if config.amp is None else bool(config.amp and
                                                                 device.type == "cuda")
    workers = default_workers(device) if config.workers is None else int(config.workers)
    per_rank = max(1, math.ceil(config.batch_size / d.world))

    say(0.02, f"building {config.arch} ({config.weights}) cut at {config.cut}")
    backbone = resolve_backbone(config.arch, config.weights, config.seed)
    model = build_run_model(config, task, backbone=backbone)
    if config.trainable == "head":
        for p in model.body.parameters():
            p.requires_grad_(False)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = _make_optimizer(config, model)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_epoch, start_batch, global_step = 0, 0, 0
    resumed_sums = None          # the epoch's loss sums before a mid-epoch checkpoint
    found = load_resume_checkpoint(run) if resume else None
    if found is not None:
        ck, _ = found
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        if isinstance(ck.get("rng"), torch.Tensor):
            torch.set_rng_state(ck["rng"])
        start_epoch, start_batch = int(ck["epoch"]), int(ck["batch_in_epoch"])
        global_step = int(ck["global_step"])
        if start_batch:
            sums = ck.get("epoch_sums")
            resumed_sums = tuple(float(v) for v in sums) if isinstance(sums, list) else "unknown"
        writer.truncate_metrics(global_step, start_epoch)
        say(0.03, f"resuming at epoch {start_epoch + 1}, step {global_step}")
    elif resume:
        writer.truncate_metrics(0, 0)

    # a frozen trunk in one process: the head trains on the pooled features at the cut
    feature_mode = config.trainable == "head" and not d.enabled
    head_info = None
    if feature_mode or (config.head_init == "rcv" and found is None):
        head_info, feature_sets = _prepare_head(config, model, sets, splits, dataset, task,
                                                backbone, transform, device, per_rank, amp,
                                                workers, fit=found is None, flag=flag, say=say,
                                                parts=("train", "val", "test") if feature_mode
                                                else ("train", "val"))
        if feature_mode:
            sets = feature_sets
        if d.main:
            writer.write_status(head_init=head_info)
    scorer = model.head if feature_mode else model   # what evaluate() runs on sets
    summary = None
    if d.main:
        try:
            summary = _summary(arch.name, config.cut, task.image_size, task.n_outputs)
        except Exception as e:  # counting FLOPs must never stop a run
            summary = {"error": f"{type(e).__name__}: {e}"}
        writer.write_status(summary=summary, n_train=len(splits["train"]),
                            n_val=len(splits["val"]), n_test=len(splits["test"]))

    net = scorer
    if d.enabled:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    def checkpoint(epochs_done: int, batch_in_epoch: int, sums=(0.0, 0, 0.0)):
        if not d.main:
            return
        save_checkpoint(run / CHECKPOINT, {
            "format": CHECKPOINT_FORMAT, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if amp else {},
            "epoch": epochs_done, "batch_in_epoch": batch_in_epoch, "global_step": global_step,
            # mid-epoch: the loss sum, image count and time of the epoch so far, so that the
            # epoch's train_loss after a resume covers the whole epoch
            "epoch_sums": [float(sums[0]), float(sums[1]), float(sums[2])],
            "task": task.to_dict(), "config": config.to_dict(), "rng": torch.get_rng_state()})

    def stop_requested() -> bool:
        return bool(allreduce(d, [1.0 if flag.set else 0.0], device)[0] > 0)

    n_batches = len(epoch_batches(len(sets["train"]), per_rank, config.seed, 0, d))
    total_steps = max(1, n_batches * config.epochs)
    last_val: dict = {}
    for epoch in range(start_epoch, config.epochs):
        batches = epoch_batches(len(sets["train"]), per_rank, config.seed, epoch, d)
        first = start_batch if epoch == start_epoch else 0
        net.train()
        if config.trainable == "head":
            model.body.eval()
        elif config.protocol_spec.batch_norm == "frozen":
            _freeze_batch_norm(model.body)
        ep_loss, ep_n, ep_time = 0.0, 0, 0.0
        partial = False
        if epoch == start_epoch and first:
            if resumed_sums == "unknown":   # a checkpoint of an older rcvcore: not recorded
                partial = True
            elif resumed_sums:
                ep_loss, ep_n, ep_time = resumed_sums[0], int(resumed_sums[1]), resumed_sums[2]
        win_loss, win_n, win_time = 0.0, 0, 0.0
        t_prev = time.perf_counter()
        for b, (x, y) in enumerate(_loader(sets["train"], batches[first:], workers, device),
                                   start=first):
            x = x.to(device, non_blocking=True)
            if config.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                out = net(x)
            loss = _objective(out, y, task)
            lv = float(loss.detach())
            bad, loss_sum, count, stop = allreduce(
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
                checkpoint(epoch, b + 1, (ep_loss, ep_n, ep_time))
                raise RunCancelled(f"cancelled by {flag.signal or 'a signal'} at epoch "
                                   f"{epoch + 1}, step {global_step}; resume with --resume")
            if (config.checkpoint_every and global_step % config.checkpoint_every == 0
                    and b + 1 < len(batches)):
                checkpoint(epoch, b + 1, (ep_loss, ep_n, ep_time))
                writer.write_status(epoch=epoch, global_step=global_step)
        # validation (rank 0 evaluates the whole set; the others wait)
        if d.main:
            say(0.05 + 0.85 * global_step / total_steps, f"epoch {epoch + 1}: validating")
            try:
                val = evaluate(scorer, sets["val"], task, batch_size=per_rank, device=device,
                               channels_last=config.channels_last, amp=amp, workers=workers,
                               stop=lambda: flag.set)
                cancelled = False
            except RunCancelled:
                cancelled, val = True, {}
        else:
            val, cancelled = {}, False
        if stop_requested() or cancelled:
            checkpoint(epoch, len(batches), (ep_loss, ep_n, ep_time))
            raise RunCancelled(f"cancelled by {flag.signal or 'a signal'} after the training "
                               f"part of epoch {epoch + 1}; resume with --resume")
        last_val = val
        writer.log({"kind": "epoch", "epoch": epoch + 1, "global_step": global_step,
                    "train_loss": ep_loss / max(ep_n, 1) if ep_n else None,
                    **({"train_loss_partial": True} if partial else {}),
                    **_metric_view(val, "val"), "lr": optimizer.param_groups[0]["lr"],
                    "images_per_s": ep_n / ep_time if ep_time > 0 else None,
                    "epoch_time_s": ep_time}, on_record)
        checkpoint(epoch + 1, 0)
        writer.write_status(epoch=epoch + 1, global_step=global_step,
                            message=f"epoch {epoch + 1}/{config.epochs} done")

    if config.epochs == 0:   # the head's closed-form fit is the model: keep it for predict
        checkpoint(0, 0)

    # test
    result = None
    if d.main:
        say(0.93, "testing")
        test = evaluate(scorer, sets["test"], task, batch_size=per_rank, device=device,
                        channels_last=config.channels_last, amp=amp, workers=workers)
        if not last_val and len(sets["val"]):
            last_val = evaluate(scorer, sets["val"], task, batch_size=per_rank, device=device,
                                channels_last=config.channels_last, amp=amp, workers=workers)
        result = {"config": config.to_dict(), "task": task.to_dict(),
                  "test": {k: v for k, v in test.items() if k != "predictions"},
                  "val": {k: v for k, v in last_val.items() if k != "predictions"},
                  "n_train": len(splits["train"]), "n_val": len(splits["val"]),
                  "n_test": len(splits["test"]), "epochs": config.epochs,
                  "global_step": global_step, "world_size": d.world, "model": summary,
                  "head_init": head_info or writer.status.get("head_init")
                  or {"method": config.head_init},
                  "protocol": config.protocol, "protocol_deviations": config.deviations(),
                  "test_predictions": [
                      {"path": p, "target": t, "prediction": q,
                       **({} if lab is None else {"label": lab})} for p, t, q, lab in zip(
                          sets["test"].paths, sets["test"].targets,
                          test.get("predictions", []),
                          sets["test"].labels or [None] * len(sets["test"]))]}
        writer.write_result(result)
        writer.write_status(state="done", message="done", error=None)
        say(1.0, "done")
    barrier(d)
    return RunResult(str(run), "done", result)


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
            key = features_key(backbone.fingerprint, node, transform, sets[part].paths)
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

"""``python -m rcvcore train | compare | predict``: fine-tuning runs of pruned networks.

``train`` writes a run directory (see :mod:`rcvcore.train`); ``train --resume --run-dir DIR``
continues it from its last checkpoint with the configuration read back from ``config.json``.
Exit status: 0 done, 1 failed (e.g. NaN loss), 2 bad input, 143 cancelled (SIGTERM).
``predict`` exits 1 when any file could not be predicted.

Heavy modules (torch, the registry) are imported inside the commands: ``--help`` stays instant.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time

from ..runs.config import TrainConfig
from ._types import COUNT, IMAGE_SIZE, NONNEG, SEED, number

EXIT_FAILED, EXIT_CANCELLED = 1, 143


def _add_config_flags(p: argparse.ArgumentParser, with_cut: bool = True) -> None:
    d = TrainConfig()
    g = p.add_argument_group("model and data")
    g.add_argument("--arch", help=f"architecture (default {d.arch}, as the dashboard: its "
                                  "ImageNet weights install offline; `python -m rcvcore models`)")
    g.add_argument("--weights", help="imagenet | random | PATH to a state dict "
                                     f"(default {d.weights})")
    if with_cut:
        g.add_argument("--cut", help="probe layer to prune at (add_15, mixed8 ...) or 'none' "
                                     "for the full trunk + GAP + head (default none, as the "
                                     "dashboard's 'none'); a layer whose cut is the full "
                                     "network (e.g. efficientnet_lite0's head) is refused")
    g.add_argument("--dataset", help=f"dataset spec (default {d.dataset})")
    g.add_argument("--target", choices=["nuclei-area", "magnification", "mpp"],
                   help="nuclei-area (regression, MSE; default) or magnification "
                        "(classification, cross-entropy)")
    g.add_argument("--n", type=COUNT, help="use at most N images (quick runs; the dashboard's "
                                           "'Images', where 0 = all)")
    g.add_argument("--image-size", type=IMAGE_SIZE, help="network input side in px (default: the "
                                                  "architecture's, 224 ResNet / 299 Inception)")
    g.add_argument("--split-seed", type=SEED, help="seed of the train/val/test split and of --n "
                                                  f"(default {d.split_seed})")
    g.add_argument("--val-fraction", type=number(0, 0.9), help=f"default {d.val_fraction}")
    g.add_argument("--test-fraction", type=number(0, 0.9), help=f"default {d.test_fraction}")
    g.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="a dataset loader option, repeatable (as for `inspect`), e.g. "
                        "--opt group_by=patient")
    g.add_argument("--dataset-cache-dir", "--cache-dir", dest="dataset_cache_dir",
                   help="where generated datasets are cached (default: the user cache dir)")
    o = p.add_argument_group("protocol and optimisation (optimisation defaults are the paper's)")
    o.add_argument("--protocol", choices=["recommended", "paper"],
                   help="recommended (default: the weights' input normalisation, standardised "
                        "area target, head started at its closed-form fit, sample std in "
                        "Table 2) or paper (raw 0-255 input, MSE on raw areas, random Dense(1) "
                        "head, Adam 1e-4, batch 32, 5 epochs, np.std in Table 2); README lists "
                        "each difference")
    o.add_argument("--head-init", choices=["rcv", "random"],
                   help="rcv: the head starts at the ridge fit of the pooled features at the "
                        "cut on the run's training split (the scan's RCV; with --epochs 0 that "
                        "fit is the model); random: PyTorch's init (default: the protocol's)")
    o.add_argument("--token-pool", choices=["mean", "cls"],
                   help="vision transformers: pool the tokens at the cut as the mean of the "
                        "patch tokens (default) or take the class token")
    o.add_argument("--epochs", type=NONNEG,
                   help=f"default {d.epochs} (0: the closed-form head only, --head-init rcv)")
    o.add_argument("--batch-size", type=COUNT, help=f"global batch size (default {d.batch_size})")
    o.add_argument("--lr", type=number(0, open_low=True), help=f"learning rate (default {d.lr})")
    o.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], help="default adam")
    o.add_argument("--weight-decay", type=number(0), help=f"default {d.weight_decay}")
    o.add_argument("--trainable", choices=["all", "head"], help="all layers (default) or head")
    o.add_argument("--seed", type=SEED, help=f"model/data-order seed (default {d.seed})")
    r = p.add_argument_group("runtime")
    r.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    r.add_argument("--amp", dest="amp", action="store_true", default=None,
                   help="float16 mixed precision (default: on for CUDA only)")
    r.add_argument("--no-amp", dest="amp", action="store_false")
    r.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   default=None, help="disable the channels_last memory format")
    r.add_argument("--workers", type=NONNEG, help="data-loader processes (default: 0 on 2 cores)")
    r.add_argument("--log-every", type=COUNT, help="log a step line every N steps (default "
                                                   f"{d.log_every}, as the dashboard)")
    r.add_argument("--checkpoint-every", type=NONNEG,
                   help="also checkpoint every N steps (default 0: every epoch only)")
    r.add_argument("--quiet", action="store_true", help="no progress lines")


def _config_from(args, **extra):
    from ..data.options import parse_options

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if getattr(args, "opt", None):
        given["dataset_options"] = parse_options(args.opt)
    given.update(extra)
    return TrainConfig(**given)


def _progress(args):
    if getattr(args, "quiet", False):
        return None
    last = [0.0, ""]

    def show(frac, msg):
        now = time.monotonic()
        if now - last[0] >= 1.0 or frac >= 1.0 or not msg.startswith(last[1][:8]):
            print(f"[{frac * 100:5.1f}%] {msg}", file=sys.stderr, flush=True)
            last[0], last[1] = now, msg
    return show


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a pruned network (writes a run directory)",
                       description="Prune a network at --cut, add GAP and a new head, fine-tune "
                                   "it end to end, and write a run directory (config.json, "
                                   "metrics.jsonl, checkpoint.pt, status.json, result.json). "
                                   "Under torchrun it trains data-parallel (DDP).")
    p.add_argument("--run-dir", required=True, help="the run directory")
    p.add_argument("--restart", action="store_true",
                   help="remove the run already in --run-dir (configuration, metrics, "
                        "checkpoints, result) and start it afresh with the flags given")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir from its last checkpoint (its "
                        "configuration is read from config.json)")
    _add_config_flags(p)
    p.set_defaults(func=_train)

    c = sub.add_parser("compare", help="train several cuts over several seeds; Table 2",
                       description="Train each cut over N replicates (seeds; by default each "
                                   "its own group split, shared by the cuts) and write "
                                   "comparison.json with mean, std and paired tests.")
    c.add_argument("--replicate", choices=("split", "seed"), default="split",
                   help="split (default): each seed trains on its own group split (split seed "
                        "= seed), so Table 2's tests replicate over data; seed: one split "
                        "(--split-seed) for every seed, differences not tested")
    c.add_argument("--cuts", required=True, help="comma-separated, first is the baseline "
                                                 "(e.g. none,add_15)")
    c.add_argument("--seeds", default="3", help="number of seeds (from --seed) or a list "
                                                 "1001,1002 (default 3)")
    c.add_argument("--run-dir", required=True, help="directory of the comparison")
    c.add_argument("--json", metavar="FILE", help="also write comparison.json's content here")
    c.add_argument("--parallel", type=COUNT, default=None, metavar="N",
                   help="train the runs as a run group in subprocesses, N at a time (as the "
                        "dashboard's 'Runs at a time'); default: one after the other in this "
                        "process. `runs RUN_DIR` shows the group, `cancel RUN_DIR` stops it")
    _add_config_flags(c, with_cut=False)
    c.set_defaults(func=_compare)

    q = sub.add_parser("predict", help="predict nuclei area / magnification with a run",
                       description="Predict image files with the model of a finished run. "
                                   "Larger images are tiled into training-size patches at "
                                   "native resolution; smaller ones are resized. Exit status 1 "
                                   "when any file failed.")
    q.add_argument("--run", required=True, help="a finished run directory")
    q.add_argument("files", nargs="+", help="image files")
    q.add_argument("--json", metavar="FILE", help="write one object per file to FILE")
    q.add_argument("--csv", metavar="FILE",
                   help="write one row per file to FILE (the dashboard's CSV columns: area, "
                        "class, out_of_range, range_reasons, feature_distance, p_/dist_ per class)")
    q.add_argument("--device", default="auto")
    q.add_argument("--batch-size", type=COUNT, default=16)
    q.add_argument("--max-tiles", type=COUNT, default=64,
                   help="at most this many patches per large image (default 64)")
    q.set_defaults(func=_predict)


def _train(args) -> int:
    if args.resume:
        ignored = [k for k, v in vars(args).items()
                   if v is not None and k not in ("run_dir", "resume", "restart", "func",
                                                  "command", "quiet")]
        if ignored:
            print(f"note: --resume reads the configuration from {args.run_dir}/config.json; "
                  f"ignoring {', '.join('--' + k.replace('_', '-') for k in ignored)}",
                  file=sys.stderr)
        config = None
    else:
        config = _config_from(args)
    code, _ = run_training(config, args.run_dir, resume=args.resume, restart=args.restart,
                           progress=_progress(args))
    return code


def run_training(config, run_dir, *, resume: bool, restart: bool, progress):
    """Train, print the result; ``(exit status, RunResult or None)`` (failed: 1, cancelled:
    143; a DDP worker other than rank 0 prints nothing)."""
    from ..runs.directory import RunFailed
    from ..train.loop import train

    try:
        res = train(config, run_dir, resume=resume, restart=restart, progress=progress)
    except RunFailed as e:
        print(f"error: run failed: {e}", file=sys.stderr)
        return EXIT_FAILED, None
    if res.state == "cancelled":
        print(f"cancelled: {res.error}", file=sys.stderr)
        return EXIT_CANCELLED, res
    if res.result is not None:
        _print_result(res.result)
    return 0, res


def _print_result(r: dict) -> None:
    from ..metrics import metric_summary

    m = r.get("model") or {}
    if "pruned_params" in m:
        print(f"model: {m['arch']} cut at {m['cut']} @ {m['image_size']} px: "
              f"{m['pruned_params'] / 1e6:.2f} M parameters, "
              f"{m['pruned_flops'] / 1e9:.2f} GFLOPs per image "
              f"(full trunk: {m['full_params'] / 1e6:.2f} M, {m['full_flops'] / 1e9:.2f} GFLOPs;"
              f" {m['params_ratio']:.0%} of the parameters, {m['flops_ratio']:.0%} of the cost)")
    t = r["test"]
    print(f"test ({r['n_test']} images): " + metric_summary(t))


def _compare(args) -> int:
    from ..compare import compare

    base = _config_from(args)
    comp = compare(base, args.cuts, args.seeds, args.run_dir, progress=_progress(args),
                   parallel=args.parallel, replicate=args.replicate)
    print(comp.table())
    print(comp.verdict())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(comp.to_dict(), f, indent=2)
    if comp.state == "cancelled":
        return EXIT_CANCELLED
    bad = [s for r in comp.rows for s in r["states"] if s != "done"]
    return EXIT_FAILED if bad else 0


def _predict(args) -> int:
    from ..predict import load_run_model, predict_files, prediction_row

    run = load_run_model(args.run, args.device)
    preds = predict_files(run, args.files, batch_size=args.batch_size, max_tiles=args.max_tiles)
    for p in preds:
        if p.error:
            print(f"{p.path}\terror: {p.error}")
            continue
        parts = []
        if p.mpp is not None:
            parts.append(f"mpp {p.mpp:.3g} µm/px (~{p.objective_power:g}x)")
        elif p.nuclei_area is not None:
            parts.append(f"nuclei_area {p.nuclei_area:.1f} px")
        if p.magnification is not None and p.mpp is None:
            parts.append(f"magnification {p.magnification}")
        if p.probabilities:
            parts.append("p=" + ",".join(f"{c}:{v:.2f}" for c, v in p.probabilities.items()))
        if p.note:
            parts.append(f"({p.note})")
        if p.out_of_range:
            parts.append("OUTSIDE THE MODEL'S RANGE: " + "; ".join(p.range_reasons))
        print(f"{p.path}\t" + "  ".join(parts))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([p.to_dict() for p in preds], f, indent=2)
    if args.csv:
        rows = [prediction_row(p.to_dict()) for p in preds]
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with open(args.csv, "w", newline="") as f:
            w = csv.DictWriter(f, cols)
            w.writeheader()
            w.writerows(rows)
    n_bad = sum(1 for p in preds if p.error)
    if n_bad:
        print(f"{n_bad} of {len(preds)} files could not be predicted", file=sys.stderr)
    return 1 if n_bad else 0

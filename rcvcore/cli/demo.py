"""``python -m rcvcore demo model | cut | transfer | slides``: the transfer demo on real H&E
(:mod:`rcvcore.demo`).

``demo model`` trains the Predict page's demo model (the same run as its button) in the
foreground; ``demo cut`` shows how its cut is chosen (a scan without its test source images);
``demo transfer`` runs scan -> cut -> compare -> Table 2 on ``demo-he``.
"""
from __future__ import annotations

import json

from .._shared import DEMO_CUT, DEMO_SETTINGS
from ._types import COUNT, IMAGE_SIZE
from .train import EXIT_CANCELLED, EXIT_FAILED, _progress, run_training


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the transfer demo on real H&E (demo model; scan -> cut -> "
                                    "compare)",
                       description="The transfer demo on demo-he with efficientnet_lite0 "
                                   "(ImageNet weights from its pip package).")
    dsub = p.add_subparsers(dest="demo_command", metavar="WHAT", required=True)
    m = dsub.add_parser("model", help="train the Predict page's demo model",
                        description=f"Train efficientnet_lite0 cut at {DEMO_CUT} to classify "
                                    "the magnification of demo-he patches (the Predict page's "
                                    "'Train the demo model'), then predict held-out patches.")
    m.add_argument("--runs-dir", help="runs root (default $RCV_RUNS_DIR or ./runs); the run "
                                      "goes to RUNS_DIR/demo-model")
    m.add_argument("--restart", action="store_true", help="train it afresh")
    m.add_argument("--epochs", type=COUNT, help=f"default {DEMO_SETTINGS['epochs']}")
    m.add_argument("--device", help="auto | cpu | cuda | mps (default auto)")
    m.add_argument("--quiet", action="store_true")
    m.set_defaults(func=_model)
    c = dsub.add_parser("cut", help="how the demo model's cut is chosen (no test data)",
                        description=f"Scan efficientnet_lite0 on demo-he (all layers, both "
                                    "controls) without the source images of the demo model's "
                                    "test split and print the cut it gives (the scan's "
                                    "suggested cut, or its highest mean R², rule "
                                    "untested-peak, when no layer is significant), beside "
                                    f"the demo model's cut, {DEMO_CUT}.")
    c.add_argument("--json", metavar="FILE", help="also write the choice as JSON here")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=_cut)
    t = dsub.add_parser("transfer", help="scan -> cut -> compare full vs cut -> Table 2",
                        description="Scan efficientnet_lite0 on demo-he (both controls) "
                                    "without the source images of any replicate's test split, "
                                    "cut where that scan suggests (its highest mean R², rule "
                                    "untested-peak, when nothing is significant, said so), "
                                    "compare the full and the cut network over replicates, "
                                    "each its own group split, print Table 2 with the paired "
                                    "tests over splits and the paper's numbers. Each "
                                    "replicate's test images leave the scan: many --seeds "
                                    "leave it few source images (10 seeds: 4 of 39).")
    t.add_argument("--runs-dir", help="runs root; the comparison goes to "
                                      "RUNS_DIR/demo-transfer")
    t.add_argument("--seeds", default="10", help="count or list (default 10, as the paper)")
    t.add_argument("--cut", help="cut here instead of the scan's choice")
    t.add_argument("--cut-choice", choices=["union", "per-replicate"], default="union",
                   help="union (default): one scan without every replicate's test split, one "
                        "cut for all; per-replicate: one scan per replicate without only its "
                        "own test split (nested), each replicate cut at its own scan's choice "
                        "(Table 2 row 'scan-cut')")
    t.add_argument("--epochs", type=COUNT, help=f"default {DEMO_SETTINGS['epochs']}")
    t.add_argument("--image-size", type=IMAGE_SIZE, help=f"default {DEMO_SETTINGS['image_size']}")
    t.add_argument("--protocol", choices=["recommended", "paper"], help="default recommended")
    t.add_argument("--head-init", choices=["rcv", "random"], help="default: the protocol's")
    t.add_argument("--device", help="auto | cpu | cuda | mps (default auto)")
    t.add_argument("--parallel", type=COUNT, metavar="N",
                   help="train N runs at a time in subprocesses (default: one after the other)")
    t.add_argument("--json", metavar="FILE", help="also write comparison.json's content here")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_transfer)
    s = dsub.add_parser("slides", help="train a resolution model on real H&E slides, check "
                                       "slides with right, tampered and missing headers",
                        description="Cut the CMU-1 region (demo-he's source) into pieces written "
                                    "as pyramidal TIFF slides, train --target mpp on six of "
                                    "them, check the others (right, tampered, missing headers) "
                                    "and the real SVS. A demonstration, not a general-purpose "
                                    "checker.")
    s.add_argument("--out", default="demo-slides", help="folder of the slides, model and "
                                                        "reports (default ./demo-slides)")
    s.add_argument("--epochs", type=COUNT, default=5)
    s.add_argument("--tiles", type=COUNT, default=32, help="tiles per checked slide")
    s.add_argument("--device", default="auto")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_slides)


def _over(args, names) -> dict:
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _model(args) -> int:
    from ..demo import demo_model_config, demo_model_dir, demo_model_next, held_out_patches
    from ..predict import load_run_model, predict_files

    run = demo_model_dir(args.runs_dir)
    config = demo_model_config(**_over(args, ("epochs", "device")))
    step = "fresh" if args.restart else demo_model_next(run)
    # done: train() returns the finished run as it is
    resume = step in ("resume", "done")
    code, _ = run_training(None if resume else config, run, resume=resume,
                           restart=not resume and run.is_dir(), progress=_progress(args))
    if code:
        return code
    held = held_out_patches(run, limit=8)
    model = load_run_model(run)
    preds = predict_files(model, [h.path for h in held])
    right = sum(1 for h, p in zip(held, preds) if p.magnification == h.label)
    print(f"demo model: {run}; {right} of {len(held)} held-out patches predicted right:")
    for h, p in zip(held, preds):
        print(f"  {h.label} -> {p.magnification or p.error}\t{h.path}")
    return 0


def _print_choice(info: dict) -> None:
    print(f"cut: {info['cut']} ({info['how']})")
    if info.get("excluded"):
        print(f"the scan left out {info['excluded']} images (every patch of the "
              f"{info.get('excluded_groups', '?')} source images in a test split) and scored "
              f"{info.get('scanned', '?')}")
    plateau = info.get("plateau") or {}
    if plateau.get("layers"):
        print(f"layers not significantly below the scan's peak {plateau.get('peak')}: "
              f"{len(plateau['layers'])} ({', '.join(plateau['layers'])})")


def _cut(args) -> int:
    from ..demo import demo_model_cut

    info = demo_model_cut(progress=_progress(args))
    _print_choice(info)
    same = info["cut"] == DEMO_CUT
    print(f"the demo model is cut at {DEMO_CUT}: "
          + ("the same." if same else "DIFFERENT: the data or the scan changed since the "
             "constant was derived (rcvcore/_shared.py DEMO_CUT)."))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "demo_cut": DEMO_CUT}, f, indent=2)
    return 0 if same else 1


def _transfer(args) -> int:
    from ..demo import transfer_demo

    comp, info = transfer_demo(args.runs_dir, seeds=args.seeds, cut=args.cut,
                               parallel=args.parallel, progress=_progress(args),
                               cut_choice=args.cut_choice,
                               **_over(args, ("epochs", "image_size", "protocol", "head_init",
                                              "device")))
    _print_choice(info)
    print(comp.table())
    print(comp.verdict())
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**comp.to_dict(), "cut_choice": info}, f, indent=2)
    if comp.state == "cancelled":
        return EXIT_CANCELLED
    return EXIT_FAILED if any(s != "done" for r in comp.rows for s in r["states"]) else 0


def _slides(args) -> int:
    from pathlib import Path

    from ..demo_slides import slides_demo
    from ..slidecheck import to_csv, to_html, to_json
    from .slides import print_checks

    checks, domain, run_dir = slides_demo(args.out, epochs=args.epochs, device=args.device,
                                          tiles=args.tiles, progress=_progress(args))
    out = Path(args.out)
    (out / "report.csv").write_text(to_csv(checks))
    (out / "report.json").write_text(to_json(checks, domain))
    (out / "report.html").write_text(to_html(checks, domain))
    print_checks(checks, domain)
    print(f"model: {run_dir}; reports: {out}/report.html, .csv, .json. A model trained on one "
          "region of one slide is a demonstration, not a general-purpose checker.")
    return 1 if any(c.verdict == "error" for c in checks) else 0

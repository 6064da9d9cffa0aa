"""``scan``: layer-wise held-out R² of scale RCVs, with controls (the CLI contract of issue 2)."""
from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from .._shared import CONTROLS, CUT_RULES
from ._types import COUNT, NONNEG, SEED, number


def add_parser(sub) -> None:
    p = sub.add_parser("scan", help="score every probe layer's scale RCV (held-out R²)",
                       description="Extract pooled activations (one forward pass, cached), fit "
                       "an RCV per layer on repeated 70/30 splits and report held-out R², next "
                       "to the shuffled-labels and random-weights controls.")
    p.add_argument("--arch", default="efficientnet_lite0",
                   help="architecture (see `python -m rcvcore models`; default "
                        "efficientnet_lite0, the dashboard's: its weights need no download)")
    p.add_argument("--weights", default="imagenet",
                   help="imagenet | random | PATH to a state-dict checkpoint (default imagenet)")
    p.add_argument("--dataset", default="demo-scale",
                   help="demo-scale, folder:PATH, ... (see `python -m rcvcore datasets`; default "
                        "demo-scale, the embedded data the dashboard opens on)")
    p.add_argument("--layers", default="paper", help="paper | all | comma-separated layers")
    p.add_argument("--n", "--n-images", dest="n", type=COUNT, default=None,
                   help="use at most N images (the Scan page's 'Images'; under torchrun spell "
                        "it --n-images: torchrun reads --n as an abbreviation of its own "
                        "options)")
    p.add_argument("--repeats", type=COUNT, default=10, help="random 70/30 splits (default 10)")
    p.add_argument("--model", default="ridge", choices=["ridge", "ols"],
                   help="ridge (penalty chosen on the training split) or ols (the paper's)")
    p.add_argument("--controls", default=",".join(CONTROLS),
                   help="comma-separated: shuffled (the measures shuffled over the images: "
                        "the page's 'shuffled labels'),random-weights (default both) or none")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--batch-size", type=COUNT, default=16)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--cache-dir", default=None,
                   help="activation and dataset cache (default: the user cache dir)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    pc = p.add_mutually_exclusive_group()
    pc.add_argument("--no-per-class", action="store_true",
                    help="pool all classes in one fit instead of one fit per class (the Scan "
                         "page's 'Scoring: pooled')")
    pc.add_argument("--per-class", action="store_true",
                    help="one fit per class even where the dataset pools by default (its "
                         "classes are a proxy of the measure, e.g. histology magnifications; "
                         "the Scan page's 'Scoring: per class')")
    p.add_argument("--ungrouped", action="store_true",
                   help="ignore the dataset's groups when splitting (crops of one photograph may "
                   "then sit in train and test: optimistic, for comparison only; the Scan "
                   "page's 'Grouped splits' unticked)")
    p.add_argument("--permutations", type=NONNEG, default=200,
                   help="permutations of the measure for the test against the shuffled control "
                        "(default 200; 0: no permutation test)")
    p.add_argument("--alpha", type=number(0, 1, open_low=True), default=0.05,
                   help="significance level after Benjamini-Hochberg over the layers (0.05)")
    p.add_argument("--exclude", action="append", metavar="SPEC", default=[],
                   help="leave images out of every fit, test and cut choice: a text file of "
                        "image paths (one per line), a run folder (its test patches) or a "
                        "comparison folder (the test patches of all its runs); repeatable. Use it "
                        "so that a cut is chosen without the data a comparison scores")
    p.add_argument("--cut-rule", default="peak", choices=list(CUT_RULES),
                   help="peak (default, the paper's): highest mean R² among layers significantly "
                        "above both controls; within-std: the last such layer within one std of "
                        "that peak; earliest-plateau: the earliest such layer not "
                        "significantly below the peak (prunes the most)")
    p.add_argument("--token-pool", default="mean", choices=["mean", "cls"],
                   help="vision transformers: pool each block's tokens as the mean of the patch "
                        "tokens (default; class and register tokens left out) or take the class "
                        "token; CNN and Swin maps are always averaged over space")
    p.add_argument("--opt", action="append", metavar="KEY=VALUE",
                   help="a dataset loader option, repeatable (as for `inspect`), e.g. "
                        "--opt classes=n02058221,n01608432 or --opt group_by=patient")
    p.add_argument("--target", default="measure", choices=["measure", "mpp"],
                   help="measure: the dataset's own measure (default); mpp: log2 µm/px, which "
                        "needs a slides: dataset (which layer knows the resolution?)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON")
    p.add_argument("--csv", metavar="FILE", help="write the result as CSV")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_scan)


def _progress_bar(quiet: bool):
    from tqdm import tqdm

    # a bar only on a terminal: redirected stderr (CI logs, pipes) stays readable
    bar = tqdm(total=1000, file=sys.stderr, disable=quiet or not sys.stderr.isatty(),
               leave=False, mininterval=0.2,
               bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def update(frac, msg):
        step = int(frac * 1000) - bar.n
        bar.set_postfix_str(msg, refresh=False)
        if step > 0:
            bar.update(step)

    return update, bar.close


def _scan(args) -> int:
    from ..data.options import parse_options
    from ..data.registry import parse_spec
    from ..data.slides import MEASURE_NAME as MPP_MEASURE
    from ..errors import Notice, UserError
    from ..exclusion import read_exclusions
    from ..scan import ScanConfig, run_scan

    if args.target == "mpp" and parse_spec(args.dataset)[0].measure_name != MPP_MEASURE:
        raise UserError(f"--target mpp scans log2 µm/px, the measure of a slides: dataset; "
                        f"{args.dataset!r} measures something else. Use --dataset slides:DIR.")

    config = ScanConfig(
        arch=args.arch, weights=args.weights, dataset=args.dataset, layers=args.layers, n=args.n,
        repeats=args.repeats, model=args.model,
        controls=tuple(c.strip() for c in args.controls.split(",") if c.strip()),
        device=args.device, batch_size=args.batch_size, seed=args.seed,
        cache_dir=args.cache_dir, use_cache=not args.no_cache,
        per_class=False if args.no_per_class else (True if args.per_class else None),
        grouped=not args.ungrouped, permutations=args.permutations, alpha=args.alpha,
        cut_rule=args.cut_rule, dataset_options=parse_options(args.opt),
        token_pool=args.token_pool,
        exclude=tuple(p for spec in args.exclude for p in read_exclusions(spec))).validate()
    progress, close = _progress_bar(args.quiet)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = run_scan(config, progress=progress)
        finally:
            close()
    if result is None:      # a torchrun rank other than 0: rank 0 reports and writes
        return 0
    for w in caught:
        if issubclass(w.category, Notice):        # SkippedFile included
            print(f"warning: {w.message}", file=sys.stderr)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result.to_json(), indent=2))
    if args.csv:
        Path(args.csv).write_text(result.to_csv())
    return 0


def _p(v) -> str:
    return "   -  " if v is None else (f"{v:6.3f}" if v >= 0.001 else f"{v:6.0e}")


def format_table(result) -> str:
    """The terminal table: one row per layer, true network next to its controls, the adjusted
    p-values of the tests against each control, and the suggested cut (or why there is none)."""
    ctrl = result.controls
    sig = result.significance()
    run_sh = any(t.get("shuffled") for t in sig.values())
    run_rw = any(t.get("random_weights") for t in sig.values())
    head = f"{'layer':<14} {'C':>5}  {'R² mean ± std':>16}  {'logmeanexp':>10}"
    if "shuffled" in ctrl:
        head += f"  {'shuffled':>16}"
    if "random_weights" in ctrl:
        head += f"  {'random weights':>16}"
    if run_sh:
        head += f"  {'p shuf':>6}"
    if run_rw:
        head += f"  {'p rand':>6}"
    if run_sh or run_rw:
        head += "  sig"
    scoring = result.scoring or {}
    lines = [f"{result.config.arch} ({result.weights_source}) on {result.dataset}: "
             f"{result.n_images} images, measure {result.measure_name}, "
             f"{result.config.repeats} repeats, {result.config.model}"
             + (f", {scoring['reason']}" if scoring.get("reason") else ""), head, "-" * len(head)]
    cut, reason = result.suggest_cut()
    for i, s in enumerate(result.layers):
        row = (f"{s.layer:<14} {s.n_features:>5}  {s.mean:>8.3f} ± {s.std:<5.3f}  "
               f"{s.logmeanexp:>10.3f}")
        for key in ("shuffled", "random_weights"):
            if key in ctrl:
                c = ctrl[key][i]
                row += f"  {c.mean:>8.3f} ± {c.std:<5.3f}"
        t = sig.get(s.layer, {})
        if run_sh:
            row += "  " + _p(t.get("shuffled", {}).get("p_adjusted"))
        if run_rw:
            row += "  " + _p(t.get("random_weights", {}).get("p_adjusted"))
        if run_sh or run_rw:
            row += "  " + (" * " if t.get("significant") else "   ")
        if s.layer == cut:
            row += "  <- suggested cut"
        lines.append(row)
    if run_sh or run_rw:
        tests = []
        if run_sh:
            tests.append(f"p shuf: permutation test, {result.test_info.get('permutations')} "
                         "permutations of the measure")
        if run_rw:
            tests.append("p rand: paired t-test vs random weights over the repeats "
                         "(Nadeau-Bengio corrected, one-sided)")
        lines.append("; ".join(tests) + f"; Benjamini-Hochberg adjusted over {len(result.layers)}"
                     f" layers; * = significant against every control tested at alpha="
                     f"{result.config.alpha:g}")
    plat, freq = result.plateau(), result.peak_frequency()
    if plat is not None:
        top = sorted(((f, l) for l, f in freq.items() if f > 0), reverse=True)
        lines.append(f"plateau (not significantly below the peak {plat['peak']}, corrected paired"
                     f" t over the repeats, BH): {', '.join(plat['layers'])}; peak over "
                     f"{plat['repeats']} repeats: "
                     + ", ".join(f"{l} {f:.0%}" for f, l in top))
    lines.append("± std: np.std over the repeats (ddof=0)")
    lines.append(("suggested cut: " + cut + ". " if cut else "") + reason)
    lines.append(f"skipped {len(result.skipped)} files; extract {result.timing['extract_s']:.1f} s,"
                 f" fit {result.timing['fit_s']:.1f} s; cache {result.cache['hits']} hits, "
                 f"{result.cache['misses']} misses"
                 + ("; scores from the result cache (nothing recomputed)"
                    if result.cache.get("result") == "hit" else ""))
    return "\n".join(lines)

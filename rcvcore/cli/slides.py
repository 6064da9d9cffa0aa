"""``python -m rcvcore check-slides SLIDE|DIR --run RUN``: header MPP vs. what the pixels show."""
from __future__ import annotations

import sys
from pathlib import Path

from ._types import COUNT, SEED


def add_parser(sub) -> None:
    p = sub.add_parser(
        "check-slides", help="check each slide's header resolution (MPP) against its pixels",
        description="Predict µm/px on tissue tiles of each slide with a --target mpp run and "
                    "compare with the header: consistent, mismatch, no header MPP, out of "
                    "domain. Exit status 1 when a slide could not be read.")
    p.add_argument("slides", nargs="+", help="slide files, folders of slides or list files")
    p.add_argument("--run", required=True, help="a finished run trained with --target mpp")
    p.add_argument("--tiles", type=COUNT, default=64, help="level-0 tissue tiles per slide "
                   "(default 64; a second level gets half as many)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="log2 units within which the header is consistent (default 0.5: √2)")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--csv", metavar="FILE", help="write the table as CSV")
    p.add_argument("--json", metavar="FILE", help="write the checks (with tile positions) as JSON")
    p.add_argument("--html", metavar="FILE", help="write an HTML report with thumbnails")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_check)


def _check(args) -> int:
    from ..slidecheck import check_slides, to_csv, to_html, to_json

    def progress(frac, msg):
        if not args.quiet:
            print(f"[{frac:4.0%}] {msg}", file=sys.stderr)

    checks, domain = check_slides(args.run, args.slides, n_tiles=args.tiles, seed=args.seed,
                                  device=args.device, tolerance=args.tolerance,
                                  progress=progress)
    print_checks(checks, domain)
    if args.csv:
        Path(args.csv).write_text(to_csv(checks))
    if args.json:
        Path(args.json).write_text(to_json(checks, domain))
    if args.html:
        Path(args.html).write_text(to_html(checks, domain))
    return 1 if any(c.verdict == "error" for c in checks) else 0


def print_checks(checks, domain) -> None:
    """The report table on stdout: slide, verdict, header, estimate and its interval, message."""
    print(f"training domain: {domain.description if domain else 'unknown'}")
    print(f"{'slide':<30} {'verdict':<14} {'header':>7} {'estimate':>8} {'95% interval':>13}  "
          "message")
    for c in checks:
        est = f"{c.mpp:8.3g}" if c.mpp else "       -"
        iv = f"{c.low:.3g}-{c.high:.3g}" if c.low else "-"
        hdr = f"{c.header_mpp:7.3g}" if c.header_mpp else "      -"
        print(f"{Path(c.path).name:<30} {c.verdict:<14} {hdr} {est} {iv:>13}  {c.message}")

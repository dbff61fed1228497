"""`erl-report`: ERL vs RLVR (and ablations) learning curves over seeds, from run folders.

    erl-report outputs/runs --out docs/results.md --plots docs/plots
    erl-report 'outputs/**/frozenlake-*' outputs/sokoban-erl-s0 --out docs/results.md

Every argument is a run folder, a folder holding run folders (searched recursively), or a glob
(quote it to let erl-report expand `**`). Writes a markdown file with a table per environment,
the paper's numbers next to it, and one PNG per environment (eval success by step and by
training minutes, mean over seeds with the min-max band). `--early DIR` adds the Early Experience
arms measured by scripts/early_compare.sh in DIR.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from erl.early.report import early_section
    from erl.report import ReportError, write_report

    p = argparse.ArgumentParser(prog="erl-report", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", help="run folders, folders of run folders, or globs")
    p.add_argument("--out", default="docs/results.md", help="the markdown file to write")
    p.add_argument("--plots", default=None, help="folder for the PNGs (default: plots/ next to --out)")
    p.add_argument("--early", action="append", default=[], metavar="DIR",
                   help="an Early Experience folder written by scripts/early_compare.sh: its arms' table (repeatable)")
    args = p.parse_args(argv)
    out = Path(args.out)
    plots = Path(args.plots) if args.plots else out.parent / "plots"
    command = shlex.join(["erl-report", *(sys.argv[1:] if argv is None else argv)])

    def warn(msg: str) -> None:
        print(f"erl-report: warning: {msg}", file=sys.stderr)

    try:
        sections = [early_section(Path(d), lambda p: os.path.relpath(p, out.parent)) for d in args.early]
    except ValueError as exc:  # no eval file, a damaged one
        print(f"erl-report: error: --early {exc}", file=sys.stderr)
        return 2
    try:
        write_report(args.runs, out, plots, command, warn, sections=sections)
    except ReportError as exc:
        print(f"erl-report: error: {exc}", file=sys.stderr)
        return 2
    print(f"erl-report: wrote {out} and {plots}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The harness command line.

::

    python -m bench run [--quick | --smoke] [--scenario NAME ...] [--data-dir D]
                        [--results-dir R] [--rounds N] [--keep] [--no-install]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .procs import install_stop_handler, stop_all
from .report import write
from .runner import PROFILES, SCENARIOS, Bench

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run scenarios and write bench/results/<date>-<host>.{md,json,png}")
    size = run.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="scaled-down datasets (minutes on 2 cores)")
    size.add_argument(
        "--smoke",
        action="store_true",
        help="tiny datasets, 1 round, peers not installed (the test suite's run)",
    )
    run.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        metavar="NAME",
        help=f"run only these ({', '.join(SCENARIOS)}); repeatable",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where datasets are generated and reused (default: a temp dir, removed after)",
    )
    run.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    run.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="targets, configs, logs (default: a temp dir, removed after unless --keep)",
    )
    run.add_argument("--rounds", type=int, default=None, help="rounds per tool (default 3; smoke 1)")
    run.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    run.add_argument("--no-install", action="store_true", help="never apt-get install rsync/rclone")
    args = ap.parse_args(argv)

    profile = PROFILES["smoke" if args.smoke else "quick" if args.quick else "full"]
    names = args.scenario or list(SCENARIOS)
    temps: list[Path] = []

    def folder(given: Path | None, prefix: str) -> Path:
        if given is not None:
            given.mkdir(parents=True, exist_ok=True)
            return given.resolve()
        t = Path(tempfile.mkdtemp(prefix=prefix))
        temps.append(t)
        return t

    data_dir = folder(args.data_dir, "asyncsync-bench-data-")
    work = folder(args.work_dir, "asyncsync-bench-work-")
    bench = Bench(
        profile=profile,
        data_dir=data_dir,
        results_dir=args.results_dir,
        work=work / "run",
        rounds=args.rounds or profile.rounds,
        install_peers=not (args.smoke or args.no_install),
    )
    t0 = time.perf_counter()
    install_stop_handler()
    try:
        bench.prepare()
        results = bench.run(names)
        if args.scenario:
            results["meta"]["scenarios_subset"] = names
        results["meta"]["elapsed_s"] = round(time.perf_counter() - t0, 1)
        paths = write(results, args.results_dir)
    finally:
        stop_all()
        if not args.keep:
            for t in temps:
                shutil.rmtree(t, ignore_errors=True)
            if args.work_dir is not None:
                shutil.rmtree(work / "run", ignore_errors=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; wrote " + ", ".join(str(p) for p in paths.values()))
    if args.keep:
        print(f"work dir kept: {work / 'run'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

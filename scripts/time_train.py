"""Time the default ``manual-bp train`` end to end and print its wall time and test accuracy.

Run from the repository root (the package installed, e.g. ``pip install -e .``)::

    python scripts/time_train.py
    python scripts/time_train.py --threads 1 2 0 --trainer.max_epochs 20

It runs ``python -m manual_bp.lightning.cli --trainer.enable_progress_bar false`` (the same command
as ``manual-bp train``, without the progress bar's terminal output) in a fresh temporary directory
as a subprocess, ``REPEATS`` times, and prints the wall time of each run (interpreter start,
imports, fit, test) and the test accuracy it printed. Extra arguments are passed on, e.g.
``python scripts/time_train.py --trainer.max_epochs 40``.

``--threads N [N ...]`` compares thread counts side by side: each repeat runs the command once per
count (``--threads N``; ``0`` is torch's default, one thread per core), in turn, with
``OMP_NUM_THREADS`` unset, and prints every time and each count's median time relative to the
first count's.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

REPEATS = 3
COMMAND = [sys.executable, "-m", "manual_bp.lightning.cli", "--trainer.enable_progress_bar", "false"]


def run_once(extra: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        done = subprocess.run(COMMAND + extra, cwd=workdir, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"manual-bp train failed with exit code {done.returncode}")
    match = re.search(r"test accuracy: ([0-9.]+)", done.stdout)
    return seconds, match.group(1) if match else "not printed"


def compare_threads(counts: list[int], extra: list[str]) -> None:
    """Each repeat runs every thread count once, in turn; then the medians and their ratios."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    times: dict[int, list[float]] = {n: [] for n in counts}
    for repeat in range(REPEATS):
        for n in counts:
            seconds, accuracy = run_once(["--threads", str(n), *extra], env)
            times[n].append(seconds)
            print(f"run {repeat + 1}, --threads {n}: wall time {seconds:.1f} s, test accuracy {accuracy}")
    base = statistics.median(times[counts[0]])
    for n in counts:
        median = statistics.median(times[n])
        print(f"--threads {n}: median {median:.1f} s, {median / base:.2f}x the time of --threads {counts[0]}")


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--threads", type=int, nargs="+")
    args, extra = parser.parse_known_args()
    print(f"command: {' '.join(['manual-bp train', *COMMAND[3:], *extra])} (cpu cores: {os.cpu_count()})")
    if args.threads:
        compare_threads(args.threads, extra)
        return
    for repeat in range(REPEATS):
        seconds, accuracy = run_once(extra)
        print(f"run {repeat + 1}: wall time {seconds:.1f} s, test accuracy {accuracy}")


if __name__ == "__main__":
    main()

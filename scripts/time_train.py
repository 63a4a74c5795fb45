"""Time the default ``manual-bp train`` end to end and print its wall time and test accuracy.

Run from the repository root (the package installed, e.g. ``pip install -e .``)::

    python scripts/time_train.py

It runs ``python -m manual_bp.lightning.cli --trainer.enable_progress_bar false`` (the same command
as ``manual-bp train``, without the progress bar's terminal output) in a fresh temporary directory
as a subprocess, ``REPEATS`` times, and prints the wall time of each run (interpreter start,
imports, fit, test) and the test accuracy it printed. Extra arguments are passed on, e.g.
``python scripts/time_train.py --trainer.max_epochs 40``.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time

REPEATS = 3
COMMAND = [sys.executable, "-m", "manual_bp.lightning.cli", "--trainer.enable_progress_bar", "false"]


def run_once(extra: list[str]) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        done = subprocess.run(COMMAND + extra, cwd=workdir, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"manual-bp train failed with exit code {done.returncode}")
    match = re.search(r"test accuracy: ([0-9.]+)", done.stdout)
    return seconds, match.group(1) if match else "not printed"


def main() -> None:
    extra = sys.argv[1:]
    print("command:", " ".join(["manual-bp train", *COMMAND[3:], *extra]))
    for repeat in range(REPEATS):
        seconds, accuracy = run_once(extra)
        print(f"run {repeat + 1}: wall time {seconds:.1f} s, test accuracy {accuracy}")


if __name__ == "__main__":
    main()

"""Test accuracy of every feedback rule with the default recipe of ``manual-bp train``, over seeds.

Runs ``python -m manual_bp train --model.feedback RULE --seed_everything S --model.feedback_seed S``
(the seed's sigmoid network on digits, everything else at its default) for each rule and seed, one
process at a time with one torch thread, and prints a Markdown table of the test accuracy (mean, min
and max over the seeds), the last measured alignment angles and the run's wall time. ``--out``
writes the results as JSON. docs/feedback.md quotes its output.

    python scripts/feedback_rules.py --seeds 0 1 2 --out benchmarks/training/feedback_rules.json
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from manual_bp.feedback import RULES


def run(rule: str, seed: int, extra: list[str]) -> dict[str, object]:
    """One training run; its test accuracy, the alignment angles logged last, and its wall time."""
    with tempfile.TemporaryDirectory() as root:
        command = [
            sys.executable,
            "-m",
            "manual_bp",
            "train",
            "--model.feedback",
            rule,
            "--seed_everything",
            str(seed),
            "--model.feedback_seed",
            str(seed),
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            root,
            *extra,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        found = re.search(r"test accuracy: ([0-9.]+)", done.stdout)
        if found is None:
            raise RuntimeError(f"no test accuracy in the output of {command}:\n{done.stdout[-2000:]}")
        angles: dict[str, float] = {}
        history: dict[str, dict[int, float]] = {}  # every logged angle, by step
        for path in glob.glob(os.path.join(root, "lightning_logs", "version_*", "metrics.csv")):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    for key, value in row.items():
                        if key.startswith("align/") and value:
                            angles[key] = float(value)  # the last logged value wins
                            history.setdefault(key, {})[int(row["step"])] = float(value)
    accuracy = float(found.group(1))
    return {
        "rule": rule,
        "seed": seed,
        "test_acc": accuracy,
        "seconds": seconds,
        "angles": angles,
        "history": history,
    }


TRAJECTORY_STEPS = (0, 200, 500, 1000, 2000, 4000, 6000)


def print_trajectories(results: list[dict[str, object]]) -> None:
    """The angles over training (the first seed of each rule): the first layer's update against
    backprop's, and the top layer's W against its B."""
    print("\n| rule | angle | " + " | ".join(f"step {s}" for s in TRAJECTORY_STEPS) + " |")
    print("|---|---|" + "---|" * len(TRAJECTORY_STEPS))
    seen = set()
    for r in results:
        if r["rule"] in seen or not r["history"]:
            continue
        seen.add(r["rule"])
        for key, label in (
            ("align/grad/layers.0", "∂c/∂W_0 vs backprop's"),
            ("align/weight/layers.1", "W_1 vs B_1"),
        ):
            steps = r["history"].get(key, {})  # type: ignore[attr-defined]
            cells = [f"{steps[s]:.0f}°" if s in steps else "" for s in TRAJECTORY_STEPS]
            print(f"| {r['rule']} | {label} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("extra", nargs="*", help="more arguments for manual-bp train (after --)")
    args = parser.parse_args()
    results = []
    for rule in args.rules:
        for seed in args.seeds:
            result = run(rule, seed, args.extra)
            results.append(result)
            acc, secs = result["test_acc"], result["seconds"]
            print(f"{rule} seed {seed}: test accuracy {acc:.4f} ({secs:.0f} s)", flush=True)
    print("\n| rule | test accuracy, mean (min–max) | last angle(rule's ∂c/∂W, backprop's) | s per run |")
    print("|---|---|---|---|")
    for rule in args.rules:
        rows = [r for r in results if r["rule"] == rule]
        accs = [float(r["test_acc"]) for r in rows]  # type: ignore[arg-type]
        grads: dict[str, list[float]] = {}
        for r in rows:
            for key, value in r["angles"].items():  # type: ignore[attr-defined]
                if key.startswith("align/grad/"):
                    grads.setdefault(key.removeprefix("align/grad/"), []).append(value)
        angle = ", ".join(f"{k}: {statistics.mean(v):.0f}°" for k, v in grads.items()) or "0° (by definition)"
        secs = statistics.mean(float(r["seconds"]) for r in rows)  # type: ignore[arg-type]
        spread = f"{statistics.mean(accs):.4f} ({min(accs):.4f}–{max(accs):.4f})"
        print(f"| {rule} | {spread} | {angle} | {secs:.0f} |")
    print_trajectories(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "command": " ".join(["python", *sys.argv]),
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                    "results": results,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()

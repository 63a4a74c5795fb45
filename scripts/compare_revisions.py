"""Speed of two (or more) checkouts of manual_bp side by side: ``scripts/bench.py`` in alternation.

Run (each DIR a checkout with its own ``scripts/bench.py``; the first is the reference):

    python scripts/compare_revisions.py /tmp/before /work/main --rounds 2
    python scripts/compare_revisions.py /tmp/before . --rounds 2 -- --config 64x128x8:gelu

Each round runs every checkout's ``scripts/bench.py --procs 1 --no-compile`` (plus what follows
``--``) once, in turn, with that checkout first on ``PYTHONPATH``, so that each checkout meets the
same load. A path's figure is its ratio to native (both timed interleaved in one process, so
the machine's drift cancels); the table gives, per configuration and path, the median over rounds
of ``ratio(checkout) / ratio(first checkout)``: 1.05 means 5 % slower than the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

PATHS = ("manual", "fused", "engine")


def run_bench(checkout: Path, extra: list[str], out: Path) -> dict:
    """One run of ``checkout``'s bench.py; returns its JSON."""
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    cmd = [sys.executable, "scripts/bench.py", "--procs", "1", "--no-compile", "--out", str(out), *extra]
    subprocess.run(cmd, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def key(row: dict) -> str:
    return f"{row['batch']}x{row['width']}x{row['depth']}:{row['activation']}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkouts", nargs="+", type=Path, help="checkouts; the first is the reference")
    parser.add_argument("--rounds", type=int, default=2, help="alternations (default 2)")
    parser.add_argument("--out", type=Path, default=None, help="write the per-round ratios as JSON here")
    args = parser.parse_args(argv)
    if len(args.checkouts) < 2 or args.rounds < 1:
        parser.error("give at least two checkouts and --rounds >= 1")
    for c in args.checkouts:
        if not (c / "scripts" / "bench.py").is_file():
            parser.error(f"{c} has no scripts/bench.py")
    # ratios[checkout][config][path] -> one value per round
    ratios: list[dict[str, dict[str, list[float]]]] = [{} for _ in args.checkouts]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, checkout in enumerate(args.checkouts):
                print(f"round {r + 1}/{args.rounds}: {checkout}", flush=True)
                data = run_bench(checkout.resolve(), extra, Path(tmp) / f"{r}-{i}.json")
                for row in data["rows"]:
                    for p in PATHS:
                        ratios[i].setdefault(key(row), {}).setdefault(p, []).append(row["ratio"][p])
                for d in data.get("digits") or []:  # the digits epoch: engine / scikit-learn
                    digits = ratios[i].setdefault(f"digits:{d['task']}", {})
                    digits.setdefault("engine", []).append(d["ratio"])
    worst = [1.0 for _ in args.checkouts]
    print(f"\nratio to native, relative to {args.checkouts[0]} (median over {args.rounds} rounds)")
    names = " ".join(f"{str(c)[-24:]:>24}" for c in args.checkouts[1:])
    print(f"{'configuration':>22} {'path':>7} {names}")
    for config, by_path in ratios[0].items():
        for p, ref in by_path.items():
            rel = []
            for i in range(1, len(args.checkouts)):
                vals = ratios[i].get(config, {}).get(p)
                if not vals:
                    rel.append(float("nan"))
                    continue
                value = statistics.median(vals) / statistics.median(ref)
                rel.append(value)
                worst[i] = max(worst[i], value)
            print(f"{config:>22} {p:>7} " + " ".join(f"{v:24.3f}" for v in rel))
    for i in range(1, len(args.checkouts)):
        print(f"worst: {args.checkouts[i]}: {worst[i]:.3f} x the reference's ratio")
    if args.out is not None:
        args.out.write_text(json.dumps({"checkouts": [str(c) for c in args.checkouts], "ratios": ratios}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Render the JSON written by ``scripts/bench.py`` as the Markdown performance tables of docs/performance.md.

Run::

    python scripts/bench_report.py benchmarks/cpu.json > /tmp/perf.md
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from typing import Any

PATHS = ("compiled", "manual", "fused", "engine")


def fmt_seconds(s: float) -> str:
    return f"{s * 1e6:.0f} µs" if s < 0.01 else f"{s * 1e3:.1f} ms"


def summary(data: dict[str, Any]) -> list[str]:
    """The targets per size class and path: worst and median ratio, and the worst by activation
    (GELU's explicit f′ costs more than the others', so the split shows where a miss comes from)."""
    acts = sorted({r["activation"] for r in data["rows"]})
    lines = [
        "| size class | path | target (ratio to native) | worst | worst, per process | median | met | "
        + " | ".join(f"worst {a}" for a in acts)
        + " |",
        "| --- | --- | --- | --- | --- | --- | --- |" + " --- |" * len(acts),
    ]
    for v in data["targets"]:
        rows = [r for r in data["rows"] if r["class"] == v["class"]]
        path = v["path"]
        vals = [r["ratio"][path] for r in rows]
        worst_row = max(rows, key=lambda r: r["ratio"][path])
        per_process = worst_row.get("ratio_by_process", {}).get(path, [])  # older JSON: absent
        spread = f"{min(per_process):.2f}–{max(per_process):.2f}" if len(per_process) > 1 else "–"
        by_act = [max((r["ratio"][path] for r in rows if r["activation"] == a), default=None) for a in acts]
        lines.append(
            f"| {v['class']} | {path} | ≤ {v['limit']:.2f} | {v['worst']:.2f} | {spread} | "
            f"{statistics.median(vals):.2f} | {'yes' if v['ok'] else '**no**'} | "
            + " | ".join("–" if w is None else f"{w:.2f}" for w in by_act)
            + " |"
        )
    return lines


def peak_lines(data: dict[str, Any]) -> list[str]:
    peak = data["gemm_gflops"]
    large = [r for r in data["rows"] if r["class"] == "large"]
    out = []
    for path in ("native", "fused", "engine"):
        shares = [100 * r["gflops"][path] / peak for r in large]
        if shares:
            out.append(
                f"- large widths, `{path}`: {min(shares):.0f}–{max(shares):.0f}% of the {peak:.0f} GFLOP/s "
                f"matrix-multiply throughput (median {statistics.median(shares):.0f}%)"
            )
    return out


def memory_lines(data: dict[str, Any]) -> list[str]:
    """Worst fused/native memory ratio per activation and depth: ``mlp.loss(x, t)`` (the network and
    its error in one Function), and in brackets ``mlp(x)`` then a separate loss, where measured."""
    by: dict[tuple[str, int], list[float]] = {}
    for r in data["rows"] + data["memory_extra"]:
        key = (r["activation"], r["depth"])
        ratios = r["memory_ratio"]
        pair = [ratios["fused"], ratios.get("fused_hse", float("nan"))]
        old = by.get(key)
        by[key] = pair if old is None else [max(a, b) for a, b in zip(old, pair, strict=True)]

    def cell(pair: list[float]) -> str:
        return f"{pair[0]:.2f}" + ("" if math.isnan(pair[1]) else f" ({pair[1]:.2f})")  # nan: not measured

    acts = sorted({a for a, _ in by})
    depths = sorted({d for _, d in by})
    lines = [
        "| activation | " + " | ".join(f"depth {d}" for d in depths) + " |",
        "| --- |" + " --- |" * len(depths),
    ]
    for a in acts:
        lines.append(
            f"| {a} | " + " | ".join(cell(by[(a, d)]) if (a, d) in by else "–" for d in depths) + " |"
        )
    return lines


def full_table(data: dict[str, Any]) -> list[str]:
    lines = [
        "| batch | width | depth | act | class | native | compiled | manual | fused | engine | fused mem |",
        "| ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in data["rows"]:
        ratios = " | ".join(f"{r['ratio'][p]:.2f}" if p in r["ratio"] else "–" for p in PATHS)
        lines.append(
            f"| {r['batch']} | {r['width']} | {r['depth']} | {r['activation']} | {r['class']} | "
            f"{fmt_seconds(r['seconds']['native'])} | {ratios} | {r['memory_ratio']['fused']:.2f} |"
        )
    return lines


def digits_lines(data: dict[str, Any]) -> list[str]:
    lines = []
    for d in data["digits"]:
        per_process = d.get("ratio_by_process", [])
        spread = ""
        if len(per_process) > 1:
            spread = f" ({min(per_process):.2f}–{max(per_process):.2f} per process)"
        lines.append(
            f"- digits epoch, `MLP{d['task'][0].upper() + d['task'][1:]}`: scikit-learn "
            f"{fmt_seconds(d['seconds']['sklearn'])}, engine {fmt_seconds(d['seconds']['engine'])}, "
            f"ratio {d['ratio']:.2f}{spread}"
        )
    return lines


def models_lines(data: dict[str, Any]) -> list[str]:
    """``--models``: a converted model's training step against native's, and its coverage."""
    lines = [
        "| model | parameters | batch, input | native step | converted step | ratio (per process) "
        "| target | saved memory | explicit backward: parameters, graph nodes |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["models"]:
        per_process = r.get("ratio_by_process", [])
        spread = f" ({min(per_process):.2f}–{max(per_process):.2f})" if len(per_process) > 1 else ""
        share = math.floor(1000 * r["parameter_share"]) / 10  # never rounded up to 100 %
        lines.append(
            f"| {r['factory']} | {r['parameters'] / 1e6:.2f} M | {r['batch']}, "
            f"{'×'.join(map(str, r['input']))} | {fmt_seconds(r['seconds']['native'])} | "
            f"{fmt_seconds(r['seconds']['manual'])} | {r['ratio']:.2f}{spread} | ≤ {r['limit']:.2f} "
            f"{'met' if r['ok'] else 'missed'} | {r['memory_ratio']:.2f} | {share:.1f} %, "
            f"{100 * r['node_share']:.0f} % |"
        )
    return lines


def cross_entropy_lines(data: dict[str, Any]) -> list[str]:
    """``--cross-entropy``: forward + backward against native, and the floor of any Python backward."""
    lines = [
        "| batch × classes | native | manual | ratio | target | a Function doing one op each way |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in data["cross_entropy"]:
        s = r["seconds"]
        met = "met" if r["ratio"] <= r["limit"] else "missed"
        lines.append(
            f"| {r['batch']} × {r['classes']} | {fmt_seconds(s['native'])} | {fmt_seconds(s['manual'])} | "
            f"{r['ratio']:.2f} | ≤ {r['limit']:.2f} {met} | {r['floor_ratio']:.2f} |"
        )
    return lines


def feedback_lines(data: dict[str, Any]) -> list[str]:
    """``--feedback``: a training step under each rule against backprop's, per path."""
    rules = [k for k in data["feedback"][0]["ratio"] if k != "backprop"]
    lines = [
        "| batch | sizes | path | backprop | " + " | ".join(rules) + " | fa ≤ 1.10 |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in rules) + " | --- |",
    ]
    for r in data["feedback"]:
        met = "met" if r["ratio"]["fa"] <= r["limit_fa"] else "missed"
        lines.append(
            f"| {r['batch']} | {r['sizes']} | {r['path']} | {fmt_seconds(r['seconds']['backprop'])} | "
            + " | ".join(f"{r['ratio'][k]:.2f}" for k in rules)
            + f" | {met} |"
        )
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/bench_report.py BENCH.json", file=sys.stderr)
        return 2
    with open(argv[0]) as fh:
        data = json.load(fh)
    print(
        f"`{data['command']}` — torch {data['torch']}, {data['device']}, {data['dtype']}, "
        f"{data['threads']} threads\n"
    )
    if "models" in data:
        print("\n".join(models_lines(data)) + "\n")
        return 0
    if "cross_entropy" in data:
        print("\n".join(cross_entropy_lines(data)) + "\n")
        return 0
    if "feedback" in data:
        print("\n".join(feedback_lines(data)) + "\n")
        return 0
    print("\n".join(summary(data)) + "\n")
    print("\n".join(peak_lines(data) + digits_lines(data)) + "\n")
    print(
        "Saved-activation memory of the fused path relative to native (worst over the grid): "
        "`mlp.loss(x, t)`, and in brackets `mlp(x)` followed by a separate `HalfSquaredError`:\n"
    )
    print("\n".join(memory_lines(data)) + "\n")
    print("<details><summary>Every configuration (time of native, ratios to native)</summary>\n")
    print("\n".join(full_table(data)) + "\n\n</details>")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

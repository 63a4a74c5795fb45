"""Sphinx configuration for manual_bp's documentation.

Build (from the repository root)::

    pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

The performance tables are rendered at build time from ``benchmarks/*.json`` by
``scripts/bench_report.py`` into ``docs/_generated/`` (ignored by git).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout's manual_bp, whatever is installed

import manual_bp  # noqa: E402

project = "manual_bp"
author = "manual_bp contributors"
copyright = "manual_bp contributors"
release = manual_bp.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "Thumbs.db", ".DS_Store"]
nitpicky = False

# No network at build time: no intersphinx; MathJax is only referenced by the HTML pages.
myst_enable_extensions = ["dollarmath"]  # the op table's formulas: $…$
myst_heading_anchors = 3  # [text](#heading) links within a page

autodoc_member_order = "bysource"
# Methods without their own docstring (Function.forward, DataModule.val_dataloader, ...) would
# otherwise show torch's and Lightning's docstrings, whose :ref: targets live in those projects' docs.
autodoc_inherit_docstrings = False
autodoc_default_options = {"show-inheritance": True}

html_theme = "alabaster"
html_title = "manual_bp"


def _render_performance_tables() -> None:
    """Write ``_generated/performance_tables.md``: ``scripts/bench_report.py``'s rendering of every
    ``benchmarks/*.json``, so the performance page shows the measured numbers, never a copy."""
    script = ROOT / "scripts" / "bench_report.py"
    spec = importlib.util.spec_from_file_location("bench_report", script)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {script}")
    bench_report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_report)

    parts = []
    for path in sorted((ROOT / "benchmarks").glob("*.json")):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            rc = bench_report.main([str(path)])
        if rc != 0:
            raise RuntimeError(f"scripts/bench_report.py {path} exited with {rc}")
        parts.append(f"### `benchmarks/{path.name}`\n\n{out.getvalue()}")
    generated = DOCS / "_generated"
    generated.mkdir(exist_ok=True)
    text = "\n".join(parts) if parts else "No benchmark JSON in `benchmarks/`.\n"
    target = generated / "performance_tables.md"
    if not target.exists() or target.read_text(encoding="utf-8") != text:  # keep Sphinx's cache valid
        target.write_text(text, encoding="utf-8")


def _write(name: str, text: str) -> None:
    """Write ``_generated/<name>`` unless it already holds ``text`` (keeps Sphinx's cache valid)."""
    generated = DOCS / "_generated"
    generated.mkdir(exist_ok=True)
    target = generated / name
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


def _render_ops_table() -> None:
    """Write ``_generated/ops_table.md``: every op of the registry, its drop-in modules and its
    backward formula (``Op.formula``), so the docs list exactly what the code has."""
    from manual_bp.ops import OPS

    rows = ["| op | drop-in modules | backward |", "| --- | --- | --- |"]
    for op in OPS:
        modules = ", ".join(f"`{manual.__name__}`" for _, manual in op.modules) or "—"
        formula = " ".join(op.formula.split()).replace("|", "\\|")
        rows.append(f"| `{op.name}` | {modules} | {formula} |")
    _write("ops_table.md", "\n".join(rows) + "\n")


_render_performance_tables()
_render_ops_table()

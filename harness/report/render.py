"""Rendering: the Jinja template filled with the view, written atomically as one HTML file."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from harness.report.view import build_context
from harness.results import load_run

_TEMPLATE = "report.html.j2"


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", s).strip("-") or "x"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent)),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["slug"] = _slug
    env.filters["wbr"] = lambda s: Markup(re.sub(r"([_\[+,])", r"\1<wbr>", str(escape(s))))  # long names wrap
    return env


def render_report(results_dir: str | Path, output_path: str | Path) -> Path:
    """Render the HTML report of ``results_dir`` into ``output_path`` (one self-contained file).

    Returns the written path.  Raises FileNotFoundError when ``results_dir`` does not exist; every
    other problem of the results (truncated lines, bad case files, missing session.json) is listed
    in the report's warnings instead.
    """
    run = load_run(results_dir)
    html = _environment().get_template(_TEMPLATE).render(**build_context(run))
    out = Path(output_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out

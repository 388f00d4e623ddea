"""Grouped case files: a grouped trial as versioned JSON that rebuilds its operands bit for bit.

A file holds ``schema`` (:data:`SCHEMA`), the trial (:meth:`GroupedTrial.to_dict`), the operands'
sha256 ``digest`` when known and a ``replay`` command.  :func:`load_case` checks the schema and
that the rebuilt operands have the recorded digest; a bad file raises :class:`GroupedCaseError`
with one line naming the file, the field, the value and what was expected.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from harness.grouped.problem import GroupedTrial

SCHEMA = "nvfp4-harness/grouped-case/1"


class GroupedCaseError(ValueError):
    pass


def save_case(path: Path | str, trial: GroupedTrial, digest: str | None = None) -> Path:
    """Write ``trial`` atomically to ``path`` (JSON)."""
    path = Path(path)
    doc = {"schema": SCHEMA, **trial.to_dict(), "digest": digest}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(doc, f, indent=1)
    os.replace(tmp, path)
    return path


def load_case(path: Path | str) -> tuple[GroupedTrial, str | None]:
    """(trial, recorded digest) of a grouped case file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GroupedCaseError(f"{path}: cannot be read as JSON ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise GroupedCaseError(f"{path}: schema={doc.get('schema') if isinstance(doc, dict) else doc!r}: "
                               f"expected {SCHEMA!r}")
    try:
        trial = GroupedTrial.from_dict(doc)
    except KeyError as exc:
        raise GroupedCaseError(f"{path}: field {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError) as exc:
        raise GroupedCaseError(f"{path}: {exc}") from None
    return trial, doc.get("digest")

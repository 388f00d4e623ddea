"""A second oracle: NVIDIA compute-sanitizer over the harness's cases.

Poisoned padding catches a read of padding only when the poison changes the result.  This module
re-runs cases in a child process under ``compute-sanitizer`` (``memcheck``: out-of-bounds and
misaligned accesses; ``initcheck``: reads of device memory never written; ``racecheck``: shared
memory hazards), with PyTorch's caching allocator off (``PYTORCH_NO_CUDA_MEMORY_CACHING=1``) so every
buffer is its own allocation, and with the pipeline's ``unwritten_padding`` mode, which leaves the
padding scale bytes no backend may read unwritten (:func:`harness.pipeline.operands_from`).

The child writes an *operand map* (JSON): for every buffer the harness allocated or received
(``a.packed``, ``a.scales``, ``w.packed``, ``w.scales``, ``alpha``, ``out``, ``x``, ...) its
``data_ptr``, size and geometry.  The sanitizer's report (its XML file, ``--xml --save``, and the
text it prints, which alone names the nearest allocation of an out-of-bounds address) is parsed into
:class:`Finding` records, and each address is mapped back to the operand and padding region it
falls in, or how far outside it lies (:func:`locate`).

Outcomes of a sanitized case (:class:`SanitizeResult`): ``pass`` (the case ran and the tool reported
0 errors), ``fail`` (findings), ``skip`` (no compute-sanitizer, no GPU, the backend does not run
here, or the tool itself refused: the tool's own message), ``crash`` (the child failed without a
finding: its message).  A skip is never a pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

TOOLS = ("memcheck", "initcheck", "racecheck")
MAP_SCHEMA = "nvfp4-harness/sanitizer-map/1"
REPO_ROOT = Path(__file__).resolve().parents[1]
PRINT_LIMIT = 200
"""Errors the sanitizer prints per run (``--print-limit``); the rest are only counted."""

UNWRITTEN_REGIONS = ("m_pad", "layout_pad")
"""Scale regions the ``unwritten_padding`` pipeline mode leaves unwritten (no backend may read them)."""


# ----------------------------------------------------------------------------------------------
# Findings and the sanitizer's output
# ----------------------------------------------------------------------------------------------
@dataclass
class Finding:
    """One error the sanitizer reported (before or after mapping its address to an operand).

    ``error``: ``out of bounds``, ``misaligned``, ``uninitialized``, ``race`` or the tool's own
    words; ``access``: ``read`` / ``write`` (None where the tool does not say); ``size``: bytes of
    the access; ``allocation``: what the tool itself says of the nearest allocation (text output
    only): ``{"relation": "after"|"before"|"inside", "distance": bytes, "base": int, "size": int}``.
    After :func:`locate`: ``buffer`` (operand name or None), ``region`` (real, m_pad, n_pad, k_tail,
    layout_pad, or ``beyond`` outside the allocation), ``inside``, ``distance`` (bytes outside,
    counted as the sanitizer counts them: the first byte past the end is 1 byte after), ``row`` /
    ``col`` (element indices in the buffer's own shape; for scales the logical row and k-block).
    ``count``: how many reported errors this record stands for (same kernel, access, buffer, region).
    """
    tool: str
    error: str
    kernel: str | None = None
    access: str | None = None
    size: int | None = None
    space: str | None = None
    address: int | None = None
    source: str | None = None
    thread: str | None = None
    block: str | None = None
    allocation: dict | None = None
    text: str = ""
    buffer: str | None = None
    region: str | None = None
    inside: bool | None = None
    distance: int | None = None
    row: int | None = None
    col: int | None = None
    count: int = 1
    last_address: int | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in ("address", "last_address"):
            if d[key] is not None:
                d[key] = hex(d[key])
        if d["allocation"] and d["allocation"].get("base") is not None:
            d["allocation"] = {**d["allocation"], "base": hex(d["allocation"]["base"])}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Finding":
        d = dict(d)
        for key in ("address", "last_address"):
            if isinstance(d.get(key), str):
                d[key] = int(d[key], 16)
        if d.get("allocation") and isinstance(d["allocation"].get("base"), str):
            d["allocation"] = {**d["allocation"], "base": int(d["allocation"]["base"], 16)}
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def line(self) -> str:
        """One line a person reads: what, in which kernel, which operand and region."""
        if self.error == "uninitialized":
            what = f"uninitialized {self.access or 'access'}"
        elif self.access:
            what = f"{self.error} {self.access}"
        else:
            what = self.error
        if self.size:
            what += f" of {self.size} bytes"
        where = f" in {self.kernel}" if self.kernel else ""
        if self.buffer is None:
            target = f" at {hex(self.address)}" if self.address is not None else ""
            if self.allocation:
                target += (f" ({self.allocation['distance']} bytes {self.allocation['relation']} an allocation "
                           f"the harness did not map)")
        elif self.inside:
            pos = ""
            if self.row is not None:
                pos = f" row {self.row}, {'k-block' if self.buffer.endswith('scales') else 'col'} {self.col}"
            target = f" of {self.buffer} [{self.region}]{pos}"
        else:
            rel = "after the end of" if self.region == "beyond" else "before"
            target = f": {self.distance} bytes {rel} {self.buffer}" + (f" (row {self.row})" if self.row is not None else "")
        more = f" (x{self.count})" if self.count > 1 else ""
        return f"{self.tool}: {what}{where}{target}{more}"


@dataclass
class SanitizerReport:
    """What one compute-sanitizer run reported."""
    findings: list[Finding] = field(default_factory=list)
    error_count: int | None = None          # the tool's ERROR SUMMARY (None: no summary printed)
    api_errors: list[str] = field(default_factory=list)  # "Program hit cudaError... on CUDA API call ..."
    refusals: list[str] = field(default_factory=list)    # the tool's own "Error: ..." lines (it could not run)


_PREFIX = "========="
_HEAD_ACCESS = re.compile(r"^(?P<what>Invalid|Uninitialized|Misaligned)\s+(?P<space>__\w+__)\s+(?:memory\s+)?"
                          r"(?P<access>read|write|atomic)\s+of\s+size\s+(?P<size>\d+)\s+bytes?", re.I)
_AT = re.compile(r"^at\s+(?P<func>.+?)\+0x[0-9a-fA-F]+(?:\s+in\s+(?P<src>\S+))?\s*$")
_AT_OLD = re.compile(r"^at\s+0x[0-9a-fA-F]+\s+in\s+(?P<func>\S+)")
_THREAD = re.compile(r"^by thread\s+(?P<thread>\([^)]*\))\s+in block\s+(?P<block>\([^)]*\))")
_ADDR = re.compile(r"^(?:Access to|Address)\s+(?P<addr>0x[0-9a-fA-F]+)(?:\s+is\s+(?P<why>.+?))?\s*$")
_NEAREST = re.compile(r"and is (?P<dist>[\d,]+) bytes (?P<rel>after|before) the nearest allocation at "
                      r"(?P<base>0x[0-9a-fA-F]+) of size (?P<size>[\d,]+) bytes")
_INSIDE = re.compile(r"and is inside the nearest allocation at (?P<base>0x[0-9a-fA-F]+) of size (?P<size>[\d,]+) bytes")
_SUMMARY = re.compile(r"ERROR SUMMARY:\s+(?P<n>[\d,]+)\s+errors?\s*$")


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def _error_kind(tool: str, words: str) -> str:
    low = words.lower()
    if "uninitialized" in low:
        return "uninitialized"
    if "misaligned" in low:
        return "misaligned"
    if "out of bounds" in low or "out-of-bounds" in low:
        return "out of bounds"
    if "race" in low or "hazard" in low:
        return "race"
    return low.strip() or tool


def parse_text(text: str, tool: str) -> SanitizerReport:
    """Parse compute-sanitizer's text output (the lines prefixed ``=========``).

    Access errors (memcheck, initcheck) become :class:`Finding` records with kernel, access kind,
    size, address, thread and block and, for memcheck, what the tool says of the nearest
    allocation; racecheck hazards become findings with the tool's words; ``Program hit ...`` lines
    are API errors (the consequence of a fault, not a finding); an ``Error:`` line that is no
    hazard report is the tool refusing to run (:attr:`SanitizerReport.refusals`).
    """
    rep = SanitizerReport()
    blocks: list[list[str]] = []
    for raw in text.splitlines():
        if not raw.startswith(_PREFIX):
            continue
        body = raw[len(_PREFIX):]
        if not body.strip():
            continue
        if body.startswith(" ") and not body.startswith("     "):  # a top-level line: "========= X"
            blocks.append([body.strip()])
        elif blocks:
            blocks[-1].append(body.strip())
    for blk in blocks:
        head = blk[0]
        m = _SUMMARY.search(head)
        if m:
            if rep.error_count is None:
                rep.error_count = _int(m.group("n"))
            continue
        if head in ("COMPUTE-SANITIZER", "Target application returned an error") or head.startswith("ERROR SUMMARY"):
            continue
        if head.startswith("Program hit"):
            rep.api_errors.append(head)
            continue
        acc = _HEAD_ACCESS.match(head)
        if acc:
            f = Finding(tool=tool, error=_error_kind(tool, head), access=acc.group("access").lower(),
                        size=int(acc.group("size")), space=acc.group("space").strip("_"), text=head)
            for line in blk[1:]:
                if line.startswith("Saved host backtrace"):
                    break
                if (m := _AT.match(line)) or (m := _AT_OLD.match(line)):
                    f.kernel = m.group("func")
                    f.source = m.groupdict().get("src")
                elif m := _THREAD.match(line):
                    f.thread, f.block = m.group("thread"), m.group("block")
                elif m := _ADDR.match(line):
                    f.address = int(m.group("addr"), 16)
                    if m.group("why"):
                        f.error = _error_kind(tool, m.group("why"))
                elif m := _NEAREST.search(line):
                    f.allocation = {"relation": m.group("rel"), "distance": _int(m.group("dist")),
                                    "base": int(m.group("base"), 16), "size": _int(m.group("size"))}
                elif m := _INSIDE.search(line):
                    f.allocation = {"relation": "inside", "distance": 0, "base": int(m.group("base"), 16),
                                    "size": _int(m.group("size"))}
            rep.findings.append(f)
            continue
        low = head.lower()
        if "race" in low or "hazard" in low:
            f = Finding(tool=tool, error="race", text=" ".join(blk)[:500], space="shared")
            for line in blk[1:]:
                if (m := _AT.match(line)) or (m := _AT_OLD.match(line)):
                    f.kernel = f.kernel or m.group("func")
            km = re.search(r"in\s+(?:kernel\s+)?([A-Za-z_]\w*)", head)
            if f.kernel is None and km:
                f.kernel = km.group(1)
            rep.findings.append(f)
            continue
        if low.startswith("error") or "sanitizer error" in low:
            rep.refusals.append(head)
    return rep


def _xml_text(el: ET.Element | None, path: str) -> str | None:
    if el is None:
        return None
    x = el.find(path)
    return x.text.strip() if x is not None and x.text else None


def parse_xml(text: str, tool: str) -> SanitizerReport:
    """Parse the file ``compute-sanitizer --xml --save FILE`` writes.

    Records of kind ``Precise``/``Imprecise`` (and any with an access ``what``) become findings;
    ``Api`` records are API errors.  The XML does not carry the nearest allocation (the text does);
    the operand map gives the harness's own view of every address (:func:`locate`).
    Raises ``ValueError`` for a file that is not the sanitizer's XML.
    """
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"not compute-sanitizer XML: {exc}") from None
    if root.tag != "ComputeSanitizerOutput":
        raise ValueError(f"not compute-sanitizer XML: root element <{root.tag}>")
    rep = SanitizerReport()
    for rec in root.iter("record"):
        kind = _xml_text(rec, "kind") or ""
        what = rec.find("what")
        words = _xml_text(what, "text") or ""
        if kind == "Api":
            rep.api_errors.append(words)
            continue
        if what is None:
            continue
        addr = _xml_text(what, "address")
        size = _xml_text(what, "size")
        direction = _xml_text(what, "direction")
        if direction is None:
            m = re.search(r"\b(read|write|atomic)\b", words, re.I)
            direction = m.group(1).lower() if m else None
        err = _xml_text(what, "error") or words
        where = rec.find("where")
        path, line = _xml_text(where, "path"), _xml_text(where, "line")
        who = rec.find("who")

        def _dim(tag: str) -> str | None:
            d = who.find(tag) if who is not None else None
            return None if d is None else f"({','.join(_xml_text(d, a) or '0' for a in ('x', 'y', 'z'))})"

        space = _xml_text(what, "space")
        rep.findings.append(Finding(
            tool=tool, error=_error_kind(tool, err), kernel=_xml_text(where, "func"), access=direction,
            size=int(size) if size and size.isdigit() else None, space=space.strip("_") if space else None,
            address=int(addr, 16) if addr else None,
            source=f"{os.path.basename(path)}:{line}" if path and line else None,
            thread=_dim("threadIdx"), block=_dim("blockIdx"), text=words))
    return rep


def merge_reports(xml_rep: SanitizerReport | None, text_rep: SanitizerReport) -> SanitizerReport:
    """The XML findings when there are any (structured), completed by the text's allocation notes,
    error summary and refusals; the text alone otherwise."""
    if xml_rep is None or (not xml_rep.findings and text_rep.findings):
        return text_rep
    by_addr = {(f.kernel, f.address): f for f in text_rep.findings}
    for f in xml_rep.findings:
        t = by_addr.get((f.kernel, f.address))
        if t is not None:
            f.allocation = f.allocation or t.allocation
            f.source = f.source or t.source
    return SanitizerReport(xml_rep.findings, text_rep.error_count, xml_rep.api_errors or text_rep.api_errors,
                           text_rep.refusals)


# ----------------------------------------------------------------------------------------------
# The operand map: buffers, their regions, and where an address falls
# ----------------------------------------------------------------------------------------------
def dense_entry(name: str, t, *, real_rows: int | None = None, real_cols: int | None = None,
                row_region: str | None = None, col_region: str | None = None) -> dict:
    """Map entry of a 2-D (or 1-D) tensor: elements [rows, cols]; rows >= real_rows are
    ``row_region``, columns >= real_cols ``col_region``."""
    shape = list(t.shape) if t.dim() >= 2 else [1, int(t.numel())]
    if t.dim() > 2:
        shape = [int(t.numel() // t.shape[-1]), int(t.shape[-1])]
    return {"name": name, "kind": "dense", "data_ptr": int(t.data_ptr()), "nbytes": int(t.numel() * t.element_size()),
            "elem_bytes": int(t.element_size()), "shape": shape,
            "real_rows": shape[0] if real_rows is None else real_rows,
            "real_cols": shape[1] if real_cols is None else real_cols,
            "row_region": row_region, "col_region": col_region}


def scales_entry(name: str, t, *, layout: str, role: str, rows: int, kblocks: int, data_rows: int,
                 data_kblocks: int) -> dict:
    """Map entry of a scale buffer in ``layout`` (storage order) for ``rows`` x ``kblocks`` real
    scales allocated for ``data_rows`` x ``data_kblocks``."""
    return {"name": name, "kind": "scales", "data_ptr": int(t.data_ptr()), "nbytes": int(t.numel() * t.element_size()),
            "elem_bytes": 1, "shape": [int(t.shape[0]), int(t.numel() // t.shape[0])], "layout": str(layout),
            "role": str(role), "rows": rows, "kblocks": kblocks, "data_rows": data_rows, "data_kblocks": data_kblocks}


def scale_region(role: str, r: int, kb: int, rows: int, kblocks: int, data_rows: int, data_kblocks: int) -> str:
    """Region of logical scale (r, kb): ``m_pad`` (activation rows >= m), ``layout_pad`` (beyond the
    allocated rows or K: the layout's own rounding), ``n_pad`` (weight rows [n, n_alloc)),
    ``k_tail`` (k-blocks [k/16, k_alloc/16) of real rows) or ``real``."""
    if r >= rows and role == "activation":
        return "m_pad"
    if r >= data_rows or kb >= data_kblocks:
        return "layout_pad"
    if r >= rows:
        return "n_pad" if role == "weight" else "m_pad"
    if kb >= kblocks:
        return "k_tail"
    return "real"


_INVERSE_CACHE: dict[tuple, Any] = {}


def _scale_position(entry: dict, offset: int) -> tuple[int, int]:
    """Logical (row, k-block) of byte ``offset`` of a scale buffer."""
    from harness.layouts import ScaleLayout, offset_grid

    pr, pk = entry["shape"]
    key = (entry["layout"], pr, pk)
    inv = _INVERSE_CACHE.get(key)
    if inv is None:
        import torch

        grid = offset_grid(ScaleLayout.parse(entry["layout"]), pr, pk).reshape(-1)
        inv = torch.empty(pr * pk, dtype=torch.int64)
        inv[grid] = torch.arange(pr * pk)
        _INVERSE_CACHE.clear() if len(_INVERSE_CACHE) > 64 else None
        _INVERSE_CACHE[key] = inv
    logical = int(inv[offset])
    return logical // pk, logical % pk


def region_at(entry: dict, offset: int) -> tuple[str, int | None, int | None]:
    """(region, row, col) of byte ``offset`` inside a mapped buffer."""
    if entry["kind"] == "scales":
        r, kb = _scale_position(entry, offset)
        return scale_region(entry["role"], r, kb, entry["rows"], entry["kblocks"], entry["data_rows"],
                            entry["data_kblocks"]), r, kb
    rows, cols = entry["shape"]
    elem = offset // entry["elem_bytes"]
    r, c = divmod(elem, cols) if cols else (0, elem)
    if r >= entry["real_rows"]:
        return entry.get("row_region") or "pad", r, c
    if c >= entry["real_cols"]:
        return entry.get("col_region") or "pad", r, c
    return "real", r, c


def locate(f: Finding, buffers: Iterable[dict]) -> Finding:
    """Fill ``f``'s buffer, region, inside, distance, row and col from the operand map.

    An address inside a buffer gets its region; one outside every buffer is attributed to the
    nearest buffer (``region`` ``beyond`` after its end, ``before`` ahead of its start), with the
    distance counted as compute-sanitizer counts it and, after the end, the row it would be.
    """
    if f.address is None:
        return f
    best = None
    for b in buffers:
        start, end = b["data_ptr"], b["data_ptr"] + b["nbytes"]
        if start <= f.address < end:
            f.buffer, f.inside, f.distance = b["name"], True, 0
            f.region, f.row, f.col = region_at(b, f.address - start)
            return f
        dist = f.address - end + 1 if f.address >= end else start - f.address
        if best is None or dist < best[0]:
            best = (dist, b)
    if best is None:
        return f
    dist, b = best
    f.buffer, f.inside, f.distance = b["name"], False, dist
    if f.address >= b["data_ptr"] + b["nbytes"]:
        f.region = "beyond"
        row_bytes = b["shape"][1] * b["elem_bytes"] if b["kind"] == "dense" else None
        f.row = (f.address - b["data_ptr"]) // row_bytes if row_bytes else None
    else:
        f.region = "before"
    return f


def group_findings(findings: list[Finding]) -> list[Finding]:
    """One record per (tool, error, kernel, access, buffer, region, inside), with a count and the
    first and last address; the first record's details are kept."""
    out: dict[tuple, Finding] = {}
    for f in findings:
        key = (f.tool, f.error, f.kernel, f.access, f.buffer, f.region, f.inside)
        g = out.get(key)
        if g is None:
            out[key] = dataclasses.replace(f, last_address=f.address)
            continue
        g.count += f.count
        if f.address is not None:
            g.last_address = f.address if g.last_address is None else max(g.last_address, f.address)
        if f.distance is not None and (g.distance is None or (not f.inside and f.distance > g.distance)):
            g.distance = f.distance if not f.inside else g.distance
    return list(out.values())


# ----------------------------------------------------------------------------------------------
# The child process: run one trial with unwritten padding, write the operand map
# ----------------------------------------------------------------------------------------------
def _operand_entries(ops) -> list[dict]:
    from harness.format import BLOCK_SIZE

    out = []
    for side, q in (("a", ops.a), ("w", ops.w)):
        row_region = "m_pad" if side == "a" else "n_pad"
        out.append(dense_entry(f"{side}.packed", q.packed, real_rows=q.rows, real_cols=q.k // 2,
                               row_region=row_region, col_region="k_tail"))
        out.append(scales_entry(f"{side}.scales", q.scales, layout=q.layout.value, role=q.role.value, rows=q.rows,
                                kblocks=q.k // BLOCK_SIZE, data_rows=q.rows_alloc, data_kblocks=q.k_alloc // BLOCK_SIZE))
        out.append(dense_entry(f"{side}.global_scale", q.global_scale))
    out.append(dense_entry("alpha", ops.alpha))
    if ops.a_dense is not None:
        out.append(dense_entry("a.dense", ops.a_dense, real_cols=ops.k, col_region="k_tail"))
    return out


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_child(spec_path: Path, map_path: Path) -> int:
    """Run the trial of ``spec_path`` once on the GPU with unwritten padding; keep ``map_path``
    up to date with every buffer (written before the backend is called, and again after)."""
    import torch

    from harness.backends import registry
    from harness.backends.protocol import Unsupported
    from harness.layouts import ScaleLayout
    from harness.pipeline import GemmProblem, Poison, operands_for
    from harness.runner import linear_inputs

    spec = json.loads(spec_path.read_text())
    for plugin in spec.get("plugins", []):
        registry.load_plugin(plugin)
    t = spec["trial"]
    problem = GemmProblem(**{**t["problem"], "batch": tuple(t["problem"]["batch"]) if t["problem"].get("batch")
                             else None})
    poison = Poison(**t["poison"])
    backend = registry.get(t["backend"])
    from harness import env

    dev = env.current().torch_device  # the GPU under the sanitizer (the CPU only in the harness's own tests)
    doc: dict[str, Any] = {"schema": MAP_SCHEMA, "status": "building", "buffers": [], "error": None}
    keep: list = []  # every mapped tensor stays alive (its address is never reused) until the end

    def publish(status: str, error: str | None = None) -> None:
        doc["status"], doc["error"] = status, error
        _write_json(map_path, doc)

    def add(entries: list[dict], *tensors) -> None:
        doc["buffers"].extend(entries)
        keep.extend(tensors)

    try:
        if backend.level == "gemm":
            lay = ScaleLayout.parse(t["a_layout"]) if t.get("a_layout") else None
            ops = operands_for(backend, problem, poison, device=dev, a_layout=lay, unwritten_padding=True)
            out = torch.empty((ops.m, ops.w.rows_alloc), dtype=ops.out_dtype, device=dev)
            add(_operand_entries(ops) + [dense_entry("out", out, real_cols=ops.n, col_region="n_pad")], ops, out)
            _sync()
            publish("running")
            res = backend.run(ops, out=out)
            if isinstance(res, torch.Tensor) and res.data_ptr() != out.data_ptr():
                add([dense_entry("result", res, real_cols=ops.n, col_region="n_pad")], res)
        elif backend.level == "linear":
            x, weight, bias = linear_inputs(problem, dev)
            add([dense_entry("x", x), dense_entry("weight.packed", weight.packed),
                 dense_entry("weight.scales", weight.scales), dense_entry("weight.weight_scale_2", weight.weight_scale_2),
                 dense_entry("bias", bias)], x, weight, bias)
            _sync()
            publish("running")
            res = backend.run(x, weight, bias)
            if isinstance(res, torch.Tensor):
                add([dense_entry("out", res)], res)
        else:
            from harness.format import global_scale_encode_divisor

            x = problem.activations(dev)
            gs = global_scale_encode_divisor(x.float().abs().amax()).reshape(1).to(dev)
            add([dense_entry("x", x), dense_entry("global_scale", gs)], x, gs)
            _sync()
            publish("running")
            packed, scales = backend.quantize(x, gs)
            layout = getattr(backend, "layout", ScaleLayout.SWIZZLED_128x4)
            add([dense_entry("packed", packed, real_rows=problem.m, real_cols=problem.k // 2),
                 scales_entry("scales", scales, layout=ScaleLayout.parse(layout).value, role="activation",
                              rows=problem.m, kblocks=problem.k // 16, data_rows=problem.m,
                              data_kblocks=problem.k // 16)], packed, scales)
        publish("running")
        _sync()
    except Unsupported as exc:
        publish("unsupported", str(exc))
        return 0
    except Exception as exc:  # noqa: BLE001 - the parent reads the status; the sanitizer's report is the result
        publish("raised", f"{type(exc).__name__}: {exc}"[:2000])
        return 3
    publish("done")
    return 0


# ----------------------------------------------------------------------------------------------
# The parent: run a trial under the sanitizer and classify
# ----------------------------------------------------------------------------------------------
class SanitizerUnavailable(Exception):
    """compute-sanitizer cannot run here (no tool, no GPU): the message says why."""


def find_sanitizer(explicit: str | None = None) -> str:
    """Path of the compute-sanitizer executable: ``explicit``, then PATH, ``$CUDA_HOME/bin``,
    ``/usr/local/cuda/bin``.  Raises :class:`SanitizerUnavailable` naming where it looked."""
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise SanitizerUnavailable(f"--sanitizer={explicit!r}: no such executable")
    found = shutil.which("compute-sanitizer")
    if found:
        return found
    looked = ["PATH"]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            cand = os.path.join(home, "bin", "compute-sanitizer")
            looked.append(os.path.dirname(cand))
            if os.path.isfile(cand) and os.access(cand, os.X_OK):
                return cand
    raise SanitizerUnavailable("compute-sanitizer not found (looked in " + ", ".join(looked) +
                               "); it ships with the CUDA toolkit, or pass --sanitizer PATH")


def check_available(sanitizer: str | None = None) -> str:
    """The sanitizer's path, after checking that a CUDA GPU is visible (compute kernels run under
    the Triton interpreter on the CPU, where there is nothing to sanitize)."""
    from harness import env

    path = find_sanitizer(sanitizer)
    e = env.current()
    if e.device != "cuda":
        raise SanitizerUnavailable(f"compute-sanitizer needs a CUDA GPU; this machine has none ({e.summary()})")
    return path


@dataclass
class SanitizeResult:
    trial: Any                      # harness.runner.Trial
    tool: str
    status: Literal["pass", "fail", "skip", "crash"]
    reason: str
    findings: list[Finding] = field(default_factory=list)
    error_count: int | None = None
    duration_s: float = 0.0
    child_status: str | None = None
    output_tail: str = ""

    def measure(self) -> dict:
        return {"oracle": "compute-sanitizer", "tool": self.tool, "error_count": self.error_count,
                "child_status": self.child_status, "findings": [f.to_dict() for f in self.findings]}


def sanitize_trial(trial, tool: str = "memcheck", *, sanitizer: str | None = None, timeout_s: float = 600.0,
                   plugins: Iterable[str] = (), keep_dir: Path | None = None) -> SanitizeResult:
    """Run ``trial`` once under ``compute-sanitizer --tool TOOL`` in a child process and classify.

    Raises ``ValueError`` for an unknown tool; never raises for what happens in the child.
    """
    if tool not in TOOLS:
        raise ValueError(f"--tool={tool!r}: expected one of {list(TOOLS)}")
    from harness import env
    from harness.backends import registry

    t0 = time.perf_counter()

    def done(status, reason, **kw) -> SanitizeResult:
        return SanitizeResult(trial, tool, status, reason, duration_s=round(time.perf_counter() - t0, 3), **kw)

    try:
        path = check_available(sanitizer)
    except SanitizerUnavailable as exc:
        return done("skip", str(exc))
    backend = registry.get(trial.backend)
    sup = backend.support(env.current())
    if not sup:
        return done("skip", sup.reason)
    work = Path(keep_dir) if keep_dir else Path(tempfile.mkdtemp(prefix="nvfp4-sanitize-"))
    work.mkdir(parents=True, exist_ok=True)
    spec, amap, xml = work / "trial.json", work / "operands.json", work / f"{tool}.xml"
    spec.write_text(json.dumps({"trial": trial.to_dict(), "plugins": list(plugins)}))
    cmd = [path, "--tool", tool, "--print-limit", str(PRINT_LIMIT), "--show-backtrace", "no",
           "--xml", "--save", str(xml), sys.executable, "-m", "harness.sanitizer", "child", str(spec), str(amap)]
    child_env = dict(os.environ, PYTORCH_NO_CUDA_MEMORY_CACHING="1")
    child_env.pop("TRITON_INTERPRET", None)
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in
                                               child_env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=child_env,
                              cwd=str(REPO_ROOT))
        out = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        tail = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        return done("crash", f"timed out after {timeout_s:.0f} s under compute-sanitizer --tool {tool}",
                    output_tail=tail[-4000:])
    result = classify(tool, out, xml.read_text(errors="replace") if xml.exists() else None,
                      json.loads(amap.read_text()) if amap.exists() else None)
    result.trial = trial
    result.duration_s = round(time.perf_counter() - t0, 3)
    result.output_tail = out[-4000:]
    if keep_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return result


def classify(tool: str, output: str, xml_text: str | None, operand_map: dict | None) -> SanitizeResult:
    """Classify one sanitizer run from what it printed, the XML it saved and the child's map."""
    text_rep = parse_text(output, tool)
    xml_rep = None
    if xml_text:
        try:
            xml_rep = parse_xml(xml_text, tool)
        except ValueError:
            xml_rep = None
    rep = merge_reports(xml_rep, text_rep)
    buffers = (operand_map or {}).get("buffers", [])
    findings = group_findings([locate(f, buffers) for f in rep.findings])
    child = (operand_map or {}).get("status")
    child_error = (operand_map or {}).get("error")
    res = SanitizeResult(None, tool, "pass", "", findings, rep.error_count, child_status=child)
    if findings:
        res.status = "fail"
        res.reason = findings[0].line() + (f" (+{len(findings) - 1} more)" if len(findings) > 1 else "")
    elif rep.error_count:
        res.status = "fail"
        res.reason = f"{tool}: ERROR SUMMARY {rep.error_count} errors, none printed as an access error: " + \
            "; ".join(rep.api_errors[:2])
    elif rep.refusals and child != "done":
        res.status, res.reason = "skip", f"compute-sanitizer refused: {rep.refusals[0]}"
    elif child == "unsupported":
        res.status, res.reason = "skip", f"unsupported: {child_error}"
    elif child != "done":
        last = [ln for ln in output.strip().splitlines() if ln.strip() and not ln.startswith(_PREFIX)]
        why = child_error or (last[-1] if last else "no output")
        res.status, res.reason = "crash", f"the case did not finish under compute-sanitizer ({child or 'no map'}): {why}"
    elif rep.error_count is None:
        res.status, res.reason = "crash", "compute-sanitizer printed no ERROR SUMMARY: the run did not complete"
    return res


# ----------------------------------------------------------------------------------------------
# Choosing cases, recording results
# ----------------------------------------------------------------------------------------------
def cases_in(paths: Iterable[str | Path]) -> list[Path]:
    """Case files named directly or found (``*.json``, sorted) in the directories named."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*.json") if q.is_file()))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{str(p)!r}: no such case file or directory")
    return out


def sample_trials(backend_names: Iterable[str], per_backend: int, seed: int) -> list:
    """``per_backend`` trials per backend drawn from the property suite's own strategies
    (:func:`harness.suite.trials`, reference_agreement / quantizer_agreement), reproducibly for ``seed``."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hyp_seed

    from harness import env, suite
    from harness.backends import registry
    from harness.runner import properties_for

    sizes = suite.sizes_for(env.current().device)
    trials = []
    for name in backend_names:
        b = registry.get(name)
        prop = properties_for(b)[0]
        drawn: list = []

        @hyp_seed(seed)
        @settings(max_examples=per_backend, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(suite.trials(b, prop, sizes))
        def collect(t) -> None:
            if len(drawn) < per_backend and t not in drawn:
                drawn.append(t)

        collect()
        trials.extend(drawn)
    return trials


def save_finding_case(results_dir: Path, result: SanitizeResult, level: str) -> str:
    """A case file for a sanitized trial with findings; it replays with ``replay --sanitize``."""
    from harness.cases import Case, save_case
    from harness.env import current

    t = result.trial
    observed = {"summary": result.reason, "status": result.status, "oracle": "compute-sanitizer",
                "sanitizer": {"tool": result.tool, "error_count": result.error_count,
                              "findings": [f.to_dict() for f in result.findings]}}
    if t.property == "tp_consistency":
        observed.update(tp=t.tp, parallel=t.parallel)
    case = Case.create(backend=t.backend, level=level, property=t.property, problem=t.problem, poison=t.poison,
                       observed=observed, a_layout=t.a_layout, environment=current().to_dict())
    case.id = f"sanitize-{result.tool}-{case.id}"[:128]
    target = Path(results_dir) / "cases" / f"{case.id}.json"
    case.replay = sanitize_replay_command(target, result.tool)
    written = save_case(case, target)
    return str(Path(written).relative_to(Path(results_dir)))


def sanitize_replay_command(path: Path, tool: str) -> str:
    from harness.cases import replay_command

    base = replay_command(path)
    head, _, rest = base.partition(" replay ")
    return f"{head} replay --sanitize --tool {tool} {rest}" if rest else f"{base} --sanitize --tool {tool}"


def record_of(result: SanitizeResult, *, level: str, case_file: str | None, test: str) -> dict:
    """A results-stream record (docs/results-format.md): property ``sanitizer:<tool>``."""
    from harness.records import RESULT_SCHEMA, now

    t = result.trial
    return {"schema": RESULT_SCHEMA, "time": now(), "worker": "sanitizer", "test": test, "backend": t.backend,
            "level": level, "property": f"sanitizer:{result.tool}", "outcome": result.status,
            "reason": result.reason, "problem": t.problem.to_dict(), "poison": t.poison.to_dict(),
            "a_layout": t.a_layout, "tp": t.tp, "parallel": t.parallel, "measure": result.measure(),
            "duration_s": result.duration_s, "digest": None, "case_file": case_file}


def describe(result: SanitizeResult) -> str:
    t = result.trial
    p = t.problem
    head = (f"{result.tool:<9} {t.backend:<28} m={p.m} n={p.n} k={p.k} {p.out_dtype}"
            + (f" {t.a_layout}" if t.a_layout else "") + f"  {result.status.upper()} ({result.duration_s:.1f} s)")
    lines = [head]
    if result.status == "fail":
        lines += [f"    {f.line()}" for f in result.findings[:12]]
        if len(result.findings) > 12:
            lines.append(f"    ... {len(result.findings) - 12} more")
        if not result.findings:
            lines.append(f"    {result.reason}")
    elif result.status in ("skip", "crash"):
        lines.append(f"    {result.reason}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Self-test: the mutants only this oracle catches
# ----------------------------------------------------------------------------------------------
@dataclass
class SanitizerScore:
    mutant: str
    tool: str
    expected: dict
    status: str
    caught: bool
    matched: str | None
    parent: str | None
    parent_status: str | None
    reason: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.caught and self.parent_status == "pass"


def finding_matches(f: Finding, expected: dict) -> bool:
    """Whether a finding is the one a mutant declares (every key it names must agree)."""
    return all(getattr(f, k) == v for k, v in expected.items())


def selftest(mutants: list[str] | None = None, *, sanitizer: str | None = None,
             progress=None) -> list[SanitizerScore]:
    """Run each sanitizer-only mutant's declared case under its tool: the declared finding (kernel,
    access, operand, region) must be reported, and the parent backend must run the same case clean.
    Raises :class:`SanitizerUnavailable` where the sanitizer cannot run."""
    from harness.backends import registry

    check_available(sanitizer)
    names = mutants or [b.name for b in registry.all_backends(include_mutants=True)
                        if getattr(b, "oracle", "properties") == "sanitizer"]
    scores = []
    for name in names:
        m = registry.get(name)
        if getattr(m, "oracle", "properties") != "sanitizer":
            raise ValueError(f"--mutant {name!r} is not a mutant only the sanitizer catches")
        trial = m.sanitizer_trial()
        res = sanitize_trial(trial, m.sanitizer_tool, sanitizer=sanitizer)
        match = next((f for f in res.findings if finding_matches(f, m.expected_finding)), None)
        parent_res = sanitize_trial(dataclasses.replace(trial, backend=m.parent), m.sanitizer_tool, sanitizer=sanitizer)
        s = SanitizerScore(name, m.sanitizer_tool, dict(m.expected_finding), res.status, match is not None,
                           match.line() if match else None, m.parent, parent_res.status,
                           res.reason if match is None else "", round(res.duration_s + parent_res.duration_s, 2))
        scores.append(s)
        if progress:
            progress(s)
    return scores


def scoreboard(scores: list[SanitizerScore]) -> str:
    head = f"{'mutant':<36} {'tool':<9} {'caught':<7} {'parent':<6}  finding"
    lines = [head, "-" * len(head)]
    for s in scores:
        lines.append(f"{s.mutant:<36} {s.tool:<9} {'yes' if s.caught else 'NO':<7} {(s.parent_status or '-'):<6}  "
                     f"{s.matched or s.reason}")
    bad = [s.mutant for s in scores if not s.ok]
    lines += ["", f"{len(scores) - len(bad)}/{len(scores)} sanitizer-only mutants caught with a clean parent"
              + (f"; NOT: {', '.join(bad)}" if bad else "")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line (nvfp4-harness sanitize, nvfp4-harness replay --sanitize)
# ----------------------------------------------------------------------------------------------
EXIT_FINDINGS = 1
EXIT_CANNOT_RUN = 4


def _backend_names(spec: str) -> list[str]:
    from harness import env
    from harness.backends import registry

    if spec == "all":
        e = env.current()
        return [b.name for b in registry.all_backends() if b.support(e)]
    if spec == "mutants":
        return [b.name for b in registry.all_backends(include_mutants=True)
                if getattr(b, "oracle", "properties") == "sanitizer"]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    for n in names:
        registry.get(n)  # an unknown name fails here with the list of known ones
    return names


def command(targets: list[str], *, sample: int = 0, backends: str = "all", seed: int = 0,
            tools: list[str] | None = None, results: str = "results/sanitizer", sanitizer: str | None = None,
            timeout_s: float = 600.0, run_selftest: bool = False, plugins: Iterable[str] = ()) -> int:
    """``nvfp4-harness sanitize``: exit 0 when every case ran clean (or was skipped by a backend that
    does not run here), 1 on a finding or a crash, 4 when the sanitizer cannot run at all."""
    from harness import records
    from harness.backends import registry
    from harness.cases import load_case
    from harness.replay import trial_of

    tools = tools or ["memcheck"]
    for tool in tools:
        if tool not in TOOLS:
            raise ValueError(f"--tool={tool!r}: expected one of {list(TOOLS)}")
    if sample < 0:
        raise ValueError(f"--sample={sample}: expected a number of cases per backend >= 0")
    chosen = [(trial_of(load_case(p)), str(p)) for p in cases_in(targets)]
    names = _backend_names(backends) if sample else []
    if not chosen and not names and not run_selftest:
        raise ValueError("nothing to sanitize: name case files or directories, --sample N or --selftest")
    try:
        check_available(sanitizer)
    except SanitizerUnavailable as exc:
        print(f"nvfp4-harness: cannot sanitize: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    if run_selftest:
        scores = selftest(sanitizer=sanitizer, progress=lambda s: print(
            f"  {s.mutant}: {'caught' if s.caught else 'NOT caught'}, parent {s.parent_status}", flush=True))
        print(scoreboard(scores))
        return 0 if scores and all(s.ok for s in scores) else EXIT_FINDINGS
    if sample:
        chosen += [(t, f"sample seed={seed}") for t in sample_trials(names, sample, seed)]
    out_dir = Path(results)
    stream = records.ResultStream(out_dir, "sanitizer")
    counts = {"pass": 0, "fail": 0, "skip": 0, "crash": 0}
    t0 = time.perf_counter()
    try:
        for trial, source in chosen:
            level = registry.get(trial.backend).level
            for tool in tools:
                res = sanitize_trial(trial, tool, sanitizer=sanitizer, timeout_s=timeout_s, plugins=plugins)
                case_file = save_finding_case(out_dir, res, level) if res.status == "fail" else None
                stream.write(record_of(res, level=level, case_file=case_file, test=f"sanitize {source}"))
                counts[res.status] += 1
                print(describe(res) + (f"\n    case: {out_dir / case_file}" if case_file else ""), flush=True)
    finally:
        stream.close()
        records.finalize(out_dir)
    print(f"\nsanitized {sum(counts.values())} runs in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{v} {k}" for k, v in counts.items()) + f"; results in {out_dir}")
    if counts["fail"] or counts["crash"]:
        return EXIT_FINDINGS
    return EXIT_CANNOT_RUN if not counts["pass"] else 0


def replay_command_line(case_path: str, *, backend: str | None = None, tool: str = "memcheck",
                        sanitizer: str | None = None) -> int:
    """``nvfp4-harness replay --sanitize CASE``: exit 0 clean, 1 findings or crash, 4 cannot run."""
    from harness.cases import load_case
    from harness.replay import trial_of

    case = load_case(case_path)
    if backend is not None:
        from harness.backends import registry

        registry.get(backend)
    try:
        check_available(sanitizer)
    except SanitizerUnavailable as exc:
        print(f"nvfp4-harness: cannot sanitize: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    res = sanitize_trial(trial_of(case, backend), tool, sanitizer=sanitizer)
    print(f"case      {case.id}")
    print(describe(res))
    recorded = (case.observed or {}).get("sanitizer")
    if isinstance(recorded, dict) and recorded.get("findings"):
        print("recorded  " + "; ".join(Finding.from_dict(f).line() for f in recorded["findings"][:4]))
    return {"pass": 0, "skip": EXIT_CANNOT_RUN}.get(res.status, EXIT_FINDINGS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "child":
        return run_child(Path(argv[1]), Path(argv[2]))
    print("usage: python -m harness.sanitizer child SPEC.json MAP.json (run by nvfp4-harness sanitize)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

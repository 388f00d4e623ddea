"""compute-sanitizer's report parsed into :class:`Finding` records (text and ``--xml`` output).

Pure Python: tested on the CPU against output recorded on a GPU (tests/data/sanitizer/).
"""

from __future__ import annotations

import dataclasses
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

TOOLS = ("memcheck", "initcheck", "racecheck")
"""The compute-sanitizer tools the harness runs (``--tool``)."""


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


LINE_PREFIX = "========="
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
# racecheck's own summary (it prints no ERROR SUMMARY): "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)"
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s+[\d,]+\s+hazards? displayed\s+\((?P<n>[\d,]+)\s+errors?")


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
        if not raw.startswith(LINE_PREFIX):
            continue
        body = raw[len(LINE_PREFIX):]
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
        m = _RACE_SUMMARY.search(head)
        if m:  # the summary is not a hazard (its words would read as one below)
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

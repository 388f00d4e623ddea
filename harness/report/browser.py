"""Check a rendered report in headless Chromium: no horizontal overflow at a given window width.

    python -m harness.report.browser reports/index.html [--widths 1280,1920] [--screenshots DIR]

The report itself runs no script (its Content-Security-Policy forbids it).  For the check, a copy of
the page gets a policy that allows one inline script, which measures, after layout, whether the page
is wider than the window and whether any element sticks out of its section's card (elements inside
a horizontal scroll container are allowed to be wider: they scroll inside their card).  Chromium
writes the DOM (``--dump-dom``) with the verdict in ``<pre id="overflow-result">``.

Needs Debian's ``chromium`` (``apt-get install chromium``); :data:`CHROMIUM` names the binary
(environment variable ``NVFP4_CHROMIUM``, default ``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import html as _html
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path(os.environ.get("NVFP4_CHROMIUM", "/usr/bin/chromium"))

_PROBE = """<script>
window.addEventListener('load', function () {
  var out = [];
  var doc = document.documentElement, vw = doc.clientWidth;
  if (doc.scrollWidth > vw + 1) out.push('page: ' + doc.scrollWidth + ' px wide in a ' + vw + ' px window');
  var sections = document.querySelectorAll('main > section');
  for (var i = 0; i < sections.length; i++) {
    var sec = sections[i], box = sec.getBoundingClientRect();
    var els = sec.querySelectorAll('*');
    for (var j = 0; j < els.length; j++) {
      var el = els[j], p = el.parentElement, scrolls = false;
      while (p && p !== sec) {
        var ox = getComputedStyle(p).overflowX;
        if (ox === 'auto' || ox === 'scroll' || ox === 'hidden') { scrolls = true; break; }
        p = p.parentElement;
      }
      if (scrolls) continue;
      var r = el.getBoundingClientRect();
      if (r.width > 0 && r.right > box.right + 1) {
        out.push('#' + sec.id + ': <' + el.tagName.toLowerCase() + ' class="' + el.getAttribute('class') +
                 '"> ends at ' + Math.round(r.right) + ' px, its card at ' + Math.round(box.right) + ' px');
        break;
      }
    }
  }
  var pre = document.createElement('pre');
  pre.id = 'overflow-result';
  pre.textContent = out.length ? out.join('\\n') : 'NO-OVERFLOW';
  document.body.appendChild(pre);
});
</script>"""


@dataclass
class WidthCheck:
    width: int
    overflow: list[str]          # empty: nothing sticks out
    screenshot: Path | None = None


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # Chromium's helper processes share its new session
        proc.communicate()
        raise RuntimeError(f"chromium did not finish in {timeout} s") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _chromium(profile: Path, width: int, height: int, *args: str) -> list[str]:
    return [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
            "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
            f"--window-size={width},{height}", "--virtual-time-budget=5000", *args]


def check_overflow(report: Path, widths: tuple[int, ...] = (1280, 1920), *, screenshots: Path | None = None,
                   timeout: float = 180) -> list[WidthCheck]:
    """Load ``report`` at each window width; returns what overflows (and screenshots of the report
    itself, as users see it, when ``screenshots`` names a folder: ``report-<width>.png``).

    Raises FileNotFoundError when Chromium is missing, RuntimeError when it fails."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is not installed (apt-get install chromium)")
    page = Path(report).read_text(encoding="utf-8")
    probe_page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>',
                        """<meta http-equiv="Content-Security-Policy" content="default-src 'none'; """
                        """style-src 'unsafe-inline'; script-src 'unsafe-inline'">""", page, count=1)
    probe_page = probe_page.replace("</body>", _PROBE + "</body>", 1)
    results = []
    with tempfile.TemporaryDirectory(prefix="nvfp4-report-check-") as tmp:
        tmpd = Path(tmp)
        probe = tmpd / "probe.html"
        probe.write_text(probe_page, encoding="utf-8")
        for width in widths:
            proc = _run(_chromium(tmpd / f"profile-{width}", width, 1000, "--dump-dom", probe.as_uri()), timeout)
            m = re.search(r'<pre id="overflow-result">(.*?)</pre>', proc.stdout, re.S)
            if proc.returncode != 0 or m is None:
                raise RuntimeError(f"chromium at {width} px gave no verdict (exit {proc.returncode}): "
                                   f"{proc.stderr.strip()[-500:]}")
            verdict = _html.unescape(m.group(1)).strip()
            shot = None
            if screenshots is not None:
                screenshots.mkdir(parents=True, exist_ok=True)
                shot = (screenshots / f"report-{width}.png").resolve()
                _run(_chromium(tmpd / f"profile-shot-{width}", width, 2400, f"--screenshot={shot}",
                               Path(report).resolve().as_uri()), timeout)
            results.append(WidthCheck(width, [] if verdict == "NO-OVERFLOW" else verdict.splitlines(), shot))
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.report.browser", description=__doc__.splitlines()[0])
    p.add_argument("report", help="the rendered report (HTML)")
    p.add_argument("--widths", default="1280,1920", help="window widths in px, comma-separated")
    p.add_argument("--screenshots", default=None, help="write report-<width>.png into this folder")
    args = p.parse_args(argv)
    try:
        widths = tuple(int(w) for w in args.widths.split(","))
    except ValueError:
        p.error(f"--widths {args.widths!r}: expected comma-separated integers (px)")
    if not Path(args.report).is_file():
        p.error(f"report {args.report!r}: no such file")
    try:
        checks = check_overflow(Path(args.report), widths,
                                screenshots=Path(args.screenshots) if args.screenshots else None)
    except (FileNotFoundError, RuntimeError) as exc:
        p.exit(2, f"{p.prog}: error: {exc}\n")
    bad = False
    for c in checks:
        print(f"{c.width} px: " + ("no horizontal overflow" if not c.overflow else "OVERFLOW: " + "; ".join(c.overflow))
              + (f" (screenshot {c.screenshot})" if c.screenshot else ""))
        bad |= bool(c.overflow)
    return 1 if bad else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

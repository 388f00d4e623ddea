"""``python -m harness.sanitizer child SPEC.json MAP.json``: the child process compute-sanitizer runs."""

import sys

from harness.sanitizer.child import run_child


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "child":
        from pathlib import Path

        return run_child(Path(argv[1]), Path(argv[2]))
    print("usage: python -m harness.sanitizer child SPEC.json MAP.json (started by nvfp4-harness sanitize)",
          file=sys.stderr)
    return 2


sys.exit(main(sys.argv[1:]))

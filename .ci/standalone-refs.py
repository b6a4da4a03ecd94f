#!/usr/bin/env python3
"""Points references to documents outside the repository at the ones inside it.

The design and the Direct Line facts used to live in two team documents beside the
repository; they are now docs/ARCHITECTURE.md and docs/PROTOCOL.md, with the same section
numbers. This rewrites, in every file git tracks:

    DESIGN §N / DESIGN.md §N     -> ARCHITECTURE §N
    spec §X                      -> PROTOCOL §X
    directline-spec.md           -> docs/PROTOCOL.md
    DESIGN.md                    -> docs/ARCHITECTURE.md

It is idempotent (a second run changes nothing) and touches only UTF-8 text files. It cannot
rewrite what needs judgement (mentions of the build-environment notes, paths into ../shared):
those it lists, and it exits 1 while any remain so they get fixed by hand. tests/standalone.rs
fails the test suite on the same patterns.

Usage: .ci/standalone-refs.py [--check]   (--check: change nothing, list what would change)
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Files that name the patterns on purpose.
EXEMPT = {".ci/standalone-refs.py", "tests/standalone.rs"}

# Order matters: the `.md §` forms before the bare file names.
REWRITES = [
    (re.compile(r"\bDESIGN(?:\.md)? §"), "ARCHITECTURE §"),
    (re.compile(r"\bspec §"), "PROTOCOL §"),
    (re.compile(r"\bSpec §"), "PROTOCOL §"),
    (re.compile(r"(?<![\w/-])(?:docs/)?directline-spec\.md"), "docs/PROTOCOL.md"),
    (re.compile(r"(?<![\w/-])DESIGN\.md"), "docs/ARCHITECTURE.md"),
]

# Left for a person: the right target depends on the sentence.
BY_HAND = re.compile(r"ENVIRONMENT\.md|\.\./shared|/work/shared|\bDESIGN \(§|shared DESIGN")


def tracked_files():
    out = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], check=True, capture_output=True
    ).stdout
    for name in out.decode().split("\0"):
        if name and name not in EXEMPT:
            yield name


def main():
    check = "--check" in sys.argv[1:]
    changed, by_hand = [], []
    for name in tracked_files():
        path = ROOT / name
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        new = text
        for pattern, replacement in REWRITES:
            new = pattern.sub(replacement, new)
        if new != text:
            changed.append(name)
            if not check:
                path.write_text(new, encoding="utf-8")
        for number, line in enumerate(new.splitlines(), 1):
            if BY_HAND.search(line):
                by_hand.append(f"{name}:{number}: {line.strip()}")
    verb = "would rewrite" if check else "rewrote"
    for name in changed:
        print(f"{verb} {name}")
    for line in by_hand:
        print(f"fix by hand: {line}")
    if by_hand or (check and changed):
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The README's command blocks, checked against what the commands print now (issue 35).

Every fenced block of README.md whose lines start with ``$ edgeconv …`` shows a command and its output. This script
runs each command on the samples (outputs under a temporary folder instead of ``out/``, at a fixed terminal width) and
compares the *structure* of what it prints with what the README shows: the steps (✓ lines), each table's columns and
cells, and the other lines, with every number replaced by ``#`` (timings, latencies and sizes vary from run to run and
machine to machine; the words, labels, steps and columns must not). A block with an elided part (a ``…`` line) is
skipped, and so is a command shown without output. ``make test`` runs the fast commands (tests/test_readme.py);
``--all`` runs the slow ones too (compare, compress: minutes).

    .venv/bin/python tests/readme_check.py [--all] [--show]    # --show: print each command's output as the README would
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WIDTH = 200  # the terminal width the README's output was captured at
FAST = ("convert", "validate", "targets", "inspect")  # commands of a few seconds on the samples
VARIABLE_LINES = ("conditions: ",)  # what the machine was doing: governor, load, the busiest other process
VARIABLE_ROWS = ("latency stability", "CV · outliers · first run")  # the verdict follows the machine's load
NUMBER = re.compile(r"(?<![A-Za-wyz_\d.])[-+]?\d+(\.\d+)*([eE][-+]?\d+)?(,\d{3})*")  # not fp32's 32; 4x10's 10


@dataclass
class Example:
    command: str  # as the README writes it, without "$ "
    expected: list[str] = field(default_factory=list)
    line: int = 0  # where it starts in README.md
    elided: bool = False

    @property
    def subcommand(self) -> str:
        return shlex.split(self.command)[1]

    @property
    def fast(self) -> bool:
        return self.subcommand in FAST


def examples(text: str | None = None) -> list[Example]:
    """The ``$ edgeconv …`` commands of README.md's fenced blocks, each with the output lines under it."""
    lines = (text if text is not None else README.read_text()).splitlines()
    out: list[Example] = []
    in_block, current = False, None
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            in_block, current = not in_block, None
        elif in_block and line.startswith("$ edgeconv "):
            command, start = line[2:], i + 1
            while command.endswith("\\"):  # a command continued on the next line
                i += 1
                command = command[:-1].rstrip() + " " + lines[i].strip()
            current = Example(command.split("   #")[0].strip(), line=start)
            out.append(current)
        elif in_block and current is not None:
            if line.strip() == "…":
                current.elided = True
            current.expected.append(line)
        i += 1
    return out


def normalize(text: str) -> str:
    """Numbers → ``#``; the host's name and architecture → HOST, ARCH (the README was captured on one machine)."""
    text = re.sub(r"measured on \S+ \(", "measured on HOST (", text)
    text = re.sub(r"\b(x86-64|aarch64)\b", "ARCH", text)
    return NUMBER.sub("#", text).strip()


def structure(lines: list[str]) -> list[str]:
    """What must not drift: steps, table columns and rows, the other lines, each normalized (:func:`normalize`). A table
    cell wrapped onto the next line and a paragraph wrapped over several lines are joined first (where rich wraps
    depends on the widths of the numbers); a stability mark (⚠) and the verdict vary with the machine's load."""
    items: list[str] = []
    for raw in lines:
        line = raw.rstrip().replace("⚠", "")
        line = re.sub(r"^ *p50 unstable \(.*?\); ", "", line)  # compare's footnote names the ⚠ when a row has one
        if not line.strip() or line.lstrip()[0] in "┏┡└├┗┣╭╰━─":
            continue
        if line.startswith(("┃", "│")):
            cells = [c.strip() for c in line.strip("┃│").split("┃" if line.startswith("┃") else "│")]
            kind = "columns: " if line.startswith("┃") else "row: "
            if items and items[-1].startswith(kind) and not cells[0]:  # the cells of the row above, wrapped
                above = items.pop()[len(kind):].split(" | ")
                cells = [f"{a} {c}".strip() for a, c in zip(above, cells)]
            if cells[0] in VARIABLE_ROWS:
                cells = cells[:1] + ["…"] * (len(cells) - 1)
            items.append(kind + " | ".join(cells))
        elif line.startswith(("✓ ", "✗ ")):
            items.append("step: " + re.sub(r" \(\d+(\.\d+)?s\)$", "", line))
        elif line.startswith(VARIABLE_LINES):
            items.append("line: " + next(p for p in VARIABLE_LINES if line.startswith(p)) + " …")
        elif items and items[-1].startswith("line: ") and not items[-1].endswith(" …"):
            items[-1] += " " + line.strip()
        else:
            items.append("line: " + line.strip())
    return [normalize(i) for i in items]


def run(example: Example, tmp: Path) -> list[str]:
    """The command's output (stderr's steps, then stdout), its ``out/`` paths under ``tmp`` and shown as ``out/``."""
    args = [a.replace("out/", f"{tmp}/") if a.startswith("out/") else a for a in shlex.split(example.command)[1:]]
    env = {**os.environ, "COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run([sys.executable, "-m", "edgeconv", *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=900, check=False)
    text = (proc.stderr + proc.stdout).replace(f"{tmp}/", "out/")
    if proc.returncode != 0:
        text += f"\n(exit {proc.returncode})"
    return text.splitlines()


def check(selected: list[Example], show: bool = False) -> list[str]:
    """Run every example (in README order: a validate uses the bundle its convert wrote); the differences found."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="edgeconv-readme-") as d:
        for ex in selected:
            got = run(ex, Path(d))
            if show:
                print(f"$ {ex.command}\n" + "\n".join(got) + "\n")
            want, have = structure(ex.expected), structure(got)
            if want != have:
                diff = "\n".join(difflib.unified_diff(want, have, "README.md", "now", lineterm="", n=1))
                problems.append(f"README.md line {ex.line}: `{ex.command}` prints something else now:\n{diff}")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="the slow commands too (compare, compress)")
    ap.add_argument("--show", action="store_true", help="print what each command prints now")
    args = ap.parse_args()
    selected = [e for e in examples() if e.expected and not e.elided and (args.all or e.fast)]
    problems = check(selected, args.show)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"{len(selected) - len(problems)}/{len(selected)} README commands print what the README shows", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""``edgeconv targets`` and the top-level ``--help`` read at 100 columns: one line per profile, each family's note said
once, command descriptions never broken mid-sentence (issue 27)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def _edgeconv(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100", "LINES": "200", "TERM": "dumb"}
    p = subprocess.run([sys.executable, "-m", "edgeconv", *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env=env, check=False)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_targets_prints_every_profile_on_one_line_and_each_family_note_once():
    rows = json.loads(_edgeconv("targets", "--json"))["targets"]
    text = _edgeconv("targets")
    lines = text.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    for r in rows:
        # the profile's row: its name as a whole word on one line, with its runtime and precisions beside it
        row = [line for line in lines if f" {r['name']} " in f" {line} " and r["runner"] in line]
        assert len(row) == 1, (r["name"], row)
        assert " ".join(r["precisions"]) in row[0], row[0]
    notes = {r["device_part"] for r in rows if r.get("device_part") and r["device_part"] != "here"}
    assert notes
    flat = " ".join(text.split())  # a note may wrap at 100 columns: read it as one text
    for note in notes:
        assert flat.count(note) == 1, note
    wide = _edgeconv("targets", "--wide").splitlines()
    for r in rows:  # --wide: the long columns, each row still on one line
        assert [line for line in wide if r["name"] in line and r["description"] in line and r["backend"] in line], r["name"]


def test_top_level_help_gives_each_command_one_unbroken_sentence():
    text = _edgeconv("--help")
    panel = text[text.index("Commands"):].splitlines()[1:-1]
    rows = [line.strip("│ ").rstrip() for line in panel if line.strip("│ ")]
    commands = [r.split()[0] for r in rows if not r.startswith(" ")]
    assert {"convert", "validate", "targets", "compress", "selftest"} <= set(commands)
    assert len(rows) == len(commands), "a command's description spans several lines:\n" + "\n".join(panel)

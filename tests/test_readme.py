"""The README's fast command blocks print what the README shows (tests/readme_check.py; issue 35). The slow ones
(compare, compress) run with ``python tests/readme_check.py --all``."""

from __future__ import annotations

import readme_check as rc


def test_the_readme_fast_commands_print_what_it_shows():
    fast = [e for e in rc.examples() if e.expected and not e.elided and e.fast]
    assert {e.subcommand for e in fast} >= {"convert", "validate"}
    problems = rc.check(fast)
    assert not problems, "\n\n".join(problems)


def test_the_check_sees_a_dropped_step_a_renamed_column_and_a_changed_label():
    shown = rc.examples()[0].expected
    base = rc.structure(shown)
    assert rc.structure([line.replace("(1.4s)", "(9.9s)").replace("151.4 KB", "12.0 KB") for line in shown]) == base
    assert rc.structure([line for line in shown if "Canonical ONNX graph" not in line]) != base
    assert rc.structure([line.replace("max abs err", "max err") for line in shown]) != base
    validate = rc.examples()[1].expected
    assert rc.structure([line.replace("native on x86-64", "host") for line in validate]) != rc.structure(validate)

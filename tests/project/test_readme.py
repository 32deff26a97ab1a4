"""Docs as tests: every ```python block of the README runs.

Each block is executed, in order, into this module's namespace when the module is collected: a
block that only shows code runs there and then (an exception fails the collection), and the
``test_*`` functions a block defines are collected by pytest with the suite's fixtures (so a
block may use ``cassandra_contact``, ``ray_local``, ...). The README cannot drift from working
code.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

_blocks = _BLOCK.findall(README.read_text())
for _i, _code in enumerate(_blocks):
    exec(compile(_code, f"README.md[python block {_i + 1}]", "exec"), globals())


def test_every_python_block_ran_and_tests_were_defined() -> None:
    assert len(_blocks) >= 3, "the README lost its runnable examples"
    names = [
        n
        for n in globals()
        if n.startswith("test_") and n != "test_every_python_block_ran_and_tests_were_defined"
    ]
    assert len(names) >= 2, names

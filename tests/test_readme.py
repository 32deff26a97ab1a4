"""The README's code blocks marked ``<!-- readme-test -->`` run as tests of this module.

Each block is executed into this module's namespace, so the ``test_*`` functions it defines are
collected by pytest (with the suite's fixtures) — the README cannot drift from working code.
"""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- readme-test -->\s*```python\n(.*?)```", re.S)

_blocks = _BLOCK.findall(README.read_text())
assert len(_blocks) >= 2, "the README lost its tested examples"
for _i, _code in enumerate(_blocks):
    exec(compile(_code, f"README.md[block {_i}]", "exec"), globals())


def test_readme_blocks_define_tests() -> None:
    names = [n for n in globals() if n.startswith("test_") and n != "test_readme_blocks_define_tests"]
    assert len(names) >= len(_blocks)

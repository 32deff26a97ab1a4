"""Static tools read the installed package: the type checker, run on a file outside the
repository, resolves ``raysource.runtime.core.EntityCore`` and the lazy names of the facade.

Setuptools' default editable install maps the folders (``runtime/`` -> ``raysource.runtime``)
with an import hook that static tools never run: there, ``raysource.runtime.core`` resolves to
nothing. ``make setup`` installs in strict mode (a link tree under ``build/``), which they read.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLE = """\
import raysource
from raysource.runtime.core import EntityCore

reveal_type(EntityCore)
reveal_type(raysource.System)
reveal_type(raysource.EntityRef)
reveal_type(raysource.AggregateTestKit)
reveal_type(raysource.CassandraConfig)
EntityCore("not an aggregate type", 42)
"""


def test_the_type_checker_resolves_the_package_from_outside_the_repository(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(SAMPLE)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            "",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--follow-imports",
            "silent",
            str(sample),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = out.stdout + out.stderr
    assert "Cannot find implementation" not in text and "import-not-found" not in text, text
    revealed = [
        line.split("Revealed type is ", 1)[1]
        for line in text.splitlines()
        if "Revealed type is" in line
    ]
    assert len(revealed) == 5, text
    assert revealed[0].endswith('-> raysource.runtime.core.EntityCore"'), revealed[0]
    for name, module in (
        ("System", "raysource.sharding.system"),
        ("EntityRef", "raysource.runtime.actors.refs"),
        ("AggregateTestKit", "raysource.testing.testkit"),
        ("CassandraConfig", "raysource.journal.cassandra.config"),
    ):
        assert any(f"-> {module}.{name}" in r for r in revealed), (name, revealed)
    # the signature is read, not Any: the wrong call is an error, and the only one
    assert 'Argument 1 to "EntityCore" has incompatible type "str"' in text, text
    errors = [line for line in text.splitlines() if ": error:" in line]
    assert out.returncode == 1 and all(e.startswith("sample.py:9:") for e in errors), text

"""The fence row is written only by lightweight transactions (design/fencing.md, "never mix LWT
and plain writes on the same cells"): every CQL statement of the journal, and every statement
in the library's sources, that writes ``writer_fence`` carries ``IF``."""

from __future__ import annotations

import re
from pathlib import Path

from raysource.journal.cassandra.config import CassandraConfig
from raysource.journal.cassandra.statements import journal_statements

ROOT = Path(__file__).resolve().parents[2]
WRITE = re.compile(
    r"\b(INSERT\s+INTO|UPDATE|DELETE\b[^;]*?\bFROM)\s+[\w.{}]*writer_fence\b",
    re.IGNORECASE | re.DOTALL,
)


def _writes_fence_without_if(cql: str) -> bool:
    return bool(WRITE.search(cql)) and not re.search(r"\bIF\b", cql)


def test_the_lint_catches_a_plain_write():
    assert _writes_fence_without_if("UPDATE ks.writer_fence SET epoch = 3 WHERE persistence_id = ?")
    assert _writes_fence_without_if(
        "INSERT INTO ks.writer_fence (persistence_id, epoch) VALUES (?, ?)"
    )
    assert _writes_fence_without_if("DELETE FROM ks.writer_fence WHERE persistence_id = ?")
    assert not _writes_fence_without_if(
        "UPDATE ks.writer_fence SET epoch = 3 WHERE persistence_id = ? IF epoch = 2"
    )
    assert not _writes_fence_without_if(
        "SELECT epoch FROM ks.writer_fence WHERE persistence_id = ?"
    )


def test_every_journal_statement_writes_the_fence_only_conditionally():
    stmts = journal_statements(CassandraConfig())
    fence_writes = [name for name, st in stmts.items() if WRITE.search(st.cql)]
    assert sorted(fence_writes) == ["fence_first", "fence_next"]  # the lint sees them
    for name in fence_writes:
        assert stmts[name].conditional and not stmts[name].idempotent, name
    assert [name for name, st in stmts.items() if _writes_fence_without_if(st.cql)] == []


def test_no_source_file_writes_the_fence_without_if():
    """Every string literal in the library's Python sources that writes ``writer_fence``
    (directly or through the configured name ``{fence}``) is conditional."""
    offenders = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in (".venv", "tests", "build") or "site-packages" in rel.parts:
            continue
        text = path.read_text()
        for m in re.finditer(r'(?:f?"(?:[^"\\\n]|\\.)*")(?:\s*f?"(?:[^"\\\n]|\\.)*")*', text):
            literal = re.sub(r'"\s*f?"', "", m.group(0)).replace("{fence}", "writer_fence")
            if _writes_fence_without_if(literal):
                offenders.append(f"{rel}: {literal[:80]}")
    assert offenders == []

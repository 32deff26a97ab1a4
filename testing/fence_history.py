"""A history of one persistence id's appends and recoveries, and the rules the epoch guard must
keep (``design/fencing.md`` §5).

Record with :class:`FenceHistory` (``append_started``/``append_done``, ``recovered``,
``final``), then :meth:`FenceHistory.problems` lists every broken rule:

* **H1 (no lost ack)**: every acknowledged ``(seq, payload)`` is in the final log, and in every
  recovery that started after the acknowledgement.
* **H2 (no overwrite)**: every read (recoveries, the final log) of a number after its first
  acknowledgement returns the acknowledged payload.
* **H3 (prefix)**: every recovery's log is a prefix of the final log, and the final log is
  gap-free from 1.
* **H5 (contract)**: an append answered "not applied" is absent from the final log, and an append
  whose events were sent to the store is never answered "not applied" (a fenced or unconfirmed
  flush is "outcome unknown").

Times are a logical clock (one tick per recorded step), so "after" means "recorded after".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raysource.journal.errors import NotAppliedError, OutcomeUnknownError

__all__ = ["FenceHistory", "AppendOp", "outcome_of"]


def outcome_of(exc: BaseException | None) -> str:
    """ "ack", "unknown" or "not-applied" for an append's result (None: acknowledged)."""
    if exc is None:
        return "ack"
    if isinstance(exc, OutcomeUnknownError):
        return "unknown"
    if isinstance(exc, NotAppliedError):
        return "not-applied"
    return "unknown"  # anything else may have written


@dataclass
class AppendOp:
    writer: str
    events: list[tuple[int, bytes]]
    started: int
    done: int | None = None
    outcome: str | None = None
    sent: bool = False  # the events' write went to the store (the injection point saw it)
    error: str = ""


@dataclass
class FenceHistory:
    appends: list[AppendOp] = field(default_factory=list)
    recoveries: list[tuple[str, int, list[tuple[int, bytes]]]] = field(default_factory=list)
    final_log: list[tuple[int, bytes]] | None = None
    clock: int = 0

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def append_started(self, writer: str, events: list[tuple[int, bytes]]) -> AppendOp:
        op = AppendOp(writer, list(events), self.tick())
        self.appends.append(op)
        return op

    def append_done(self, op: AppendOp, exc: BaseException | None) -> None:
        op.done, op.outcome = self.tick(), outcome_of(exc)
        op.error = "" if exc is None else f"{type(exc).__name__}: {exc}"

    def recovered(self, writer: str, started: int, log: list[tuple[int, bytes]]) -> None:
        self.recoveries.append((writer, started, list(log)))
        self.tick()

    def final(self, log: list[tuple[int, bytes]]) -> None:
        self.final_log = list(log)
        self.tick()

    def acked(self) -> list[AppendOp]:
        return [op for op in self.appends if op.outcome == "ack"]

    def problems(self) -> list[str]:
        """Every broken rule, as "H<n>: ..." lines (empty: the history is consistent)."""
        assert self.final_log is not None, "record the final log first"
        out: list[str] = []
        final = dict(self.final_log)
        reads = [(w, t, dict(log)) for w, t, log in self.recoveries]
        for op in self.acked():
            for seq, payload in op.events:
                if final.get(seq) != payload:
                    rule = "H1" if seq not in final else "H2"
                    out.append(
                        f"{rule}: acked #{seq} by {op.writer} is "
                        f"{'missing from' if seq not in final else 'overwritten in'} "
                        f"the final log"
                    )
                for w, t, log in reads:
                    if t > (op.done or 0) and log.get(seq) != payload:
                        rule = "H1" if seq not in log else "H2"
                        out.append(
                            f"{rule}: recovery of {w} (started after the ack of #{seq} by "
                            f"{op.writer}) has {log.get(seq)!r}"
                        )
        seqs = [s for s, _ in self.final_log]
        if seqs != list(range(1, len(seqs) + 1)):
            out.append(f"H3: the final log is not gap-free from 1: {seqs}")
        for w, _t, rlog in self.recoveries:
            if rlog != self.final_log[: len(rlog)]:
                out.append(
                    f"H3: the recovery of {w} is not a prefix of the final log: "
                    f"{[s for s, _ in rlog]}"
                )
        for op in self.appends:
            if op.outcome != "not-applied":
                continue
            if op.sent:
                out.append(
                    f"H5: {op.writer}'s append of #{op.events[0][0]} was sent but "
                    f"answered not applied ({op.error})"
                )
            for seq, payload in op.events:
                if final.get(seq) == payload:
                    out.append(
                        f"H5: #{seq} of {op.writer} was answered not applied but is in "
                        f"the final log"
                    )
        return out

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
* **H4 (epoch discipline)**: no acknowledgement by epoch E completes after a recovery of a newer
  epoch E' > E finished without its events (the stale writer acknowledged behind the back of
  an activation that had claimed and recovered).
* **H5 (contract)**: an append answered "not applied" is absent from the final log, and an append
  whose events were sent to the store is never answered "not applied" (a fenced or unconfirmed
  flush is "outcome unknown").
* **H6 (tag streams)**, when tag deliveries were recorded (``delivered``): every delivered
  ``(seq, payload)`` is in the final log, and every event of the final log is delivered.

A final log read after ``delete_to(n)`` (``final(log, deleted_to=n)``) starts at ``n + 1``;
acknowledged events at or below ``n`` are not required in it.

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
    epoch: int = 0  # the writer's epoch (0: unknown)


@dataclass
class FenceHistory:
    appends: list[AppendOp] = field(default_factory=list)
    # (writer, started, log, done, epoch) of every recovery
    recoveries: list[tuple[str, int, list[tuple[int, bytes]], int, int]] = field(
        default_factory=list
    )
    final_log: list[tuple[int, bytes]] | None = None
    deleted_to: int = 0
    deliveries: list[tuple[int, bytes]] | None = None
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

    def recovered(
        self, writer: str, started: int, log: list[tuple[int, bytes]], epoch: int = 0
    ) -> None:
        self.recoveries.append((writer, started, list(log), self.tick(), epoch))

    def final(self, log: list[tuple[int, bytes]], deleted_to: int = 0) -> None:
        self.final_log, self.deleted_to = list(log), deleted_to
        self.tick()

    def delivered(self, events: list[tuple[int, bytes]]) -> None:
        """The tag stream's deliveries of this persistence id, read after quiescence."""
        self.deliveries = list(events)

    def acked(self) -> list[AppendOp]:
        return [op for op in self.appends if op.outcome == "ack"]

    def problems(self) -> list[str]:
        """Every broken rule, as "H<n>: ..." lines (empty: the history is consistent)."""
        assert self.final_log is not None, "record the final log first"
        out: list[str] = []
        final = dict(self.final_log)
        reads = [(w, t, dict(log)) for w, t, log, _done, _e in self.recoveries]
        for op in self.acked():
            for seq, payload in op.events:
                if seq <= self.deleted_to:
                    continue
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
        first = self.deleted_to + 1
        if seqs != list(range(first, first + len(seqs))):
            out.append(f"H3: the final log is not gap-free from {first}: {seqs}")
        for w, _t, rlog, _done, _e in self.recoveries:
            rlog = [(s, p) for s, p in rlog if s > self.deleted_to]
            if rlog != self.final_log[: len(rlog)]:
                out.append(
                    f"H3: the recovery of {w} is not a prefix of the final log: "
                    f"{[s for s, _ in rlog]}"
                )
        out += self._h4() + self._h6(final)
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

    def _h4(self) -> list[str]:
        out = []
        for op in self.acked():
            for w, _t, rlog, done, epoch in self.recoveries:
                if not (op.epoch and epoch > op.epoch and done < (op.done or 0)):
                    continue
                have = dict(rlog)
                missing = [s for s, p in op.events if have.get(s) != p]
                if missing:
                    out.append(
                        f"H4: {op.writer} (epoch {op.epoch}) acknowledged #{missing[0]} after "
                        f"{w} (epoch {epoch}) had recovered without it"
                    )
        return out

    def _h6(self, final: dict[int, bytes]) -> list[str]:
        if self.deliveries is None:
            return []
        out = []
        got = set(self.deliveries)
        for seq, payload in sorted(got):
            if final.get(seq) != payload:
                out.append(f"H6: the tag stream delivered #{seq} {payload!r}, not in the final log")
        for seq, payload in sorted(final.items()):
            if (seq, payload) not in got:
                out.append(f"H6: #{seq} {payload!r} of the final log is not in its tag stream")
        return out

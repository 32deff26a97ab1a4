"""The history checker: what every caller saw, checked against what the journal holds.

Record each attempt of a command with :class:`History` (``await history.ask(command_id,
coroutine)`` never raises a command error: it classifies the outcome), then ``await
check_history(...)``, which reads the journal and returns every broken promise as a
:class:`Violation` (data with a readable message; empty list: the history is sound).

Outcomes (:data:`OUTCOMES`): ``"ok"`` (a reply), ``"rejected"`` (``CommandRejected``),
``"not_applied"`` (any :class:`~raysource.errors.NotAppliedError`), ``"unknown"`` (any
:class:`~raysource.errors.OutcomeUnknownError`, or a cancelled/abandoned call), and
``"uncategorized"`` (any other error: the error tree promises a category to every command
error a caller sees, so it is reported as a violation too, and counts as unknown below).

The checks, per command id (its events name it: ``command_of(event)``) with ``A`` acknowledged,
``U`` unknown attempts and ``S`` applications stored in the journal:

* ``lost_ack``: an acknowledged command whose events are not in the journal (``A >= 1, S = 0``)
  and that no retention policy deleted (``retention_deleted``);
* ``applied_twice``: stored more often than its attempts allow (``A >= 1``);
  ``unknown_applied_twice`` the same with ``A = 0``. The bound: a command whose events carry an
  idempotency key (it was sent ``Keyed``, and every re-send reuses the key) is applied at most
  once, ``S <= 1``, however many attempts it had; so an acknowledged keyed command is stored
  *exactly once*. A command without a key is a new request on every attempt (a caller that
  re-sends an unknown outcome without a key may get it applied twice), so its bound is the
  attempts that may have been applied, ``S <= A + U``: each acknowledged attempt is stored,
  none more than once;
* ``not_applied_present``: only rejected / not-applied attempts, yet events are stored;
* ``phantom``: events of a command no caller ever sent;
* ``two_writers``: a sequence number stored by two different writers (activations), from the
  faulty journal's write log;
* ``state_mismatch``: a live activation's state differs from the fold of the journal up to
  its sequence number;
* ``reply_mismatch`` (with ``expected_reply``): an acknowledged reply differs from what the
  fold of the journal just after the command's events says it must be (catches an activation
  that decided on a stale state, i.e. an interleaving);
* ``missing_tag``: a stored event that is absent from one of its tags' streams;
* ``key_applied_twice``: an idempotency key (``raysource.runtime.idempotency``: the ``"ik"``
  metadata of a command's first event) stored with two applications, i.e. each key is applied
  at most once (checked on every history; events without a key are not concerned);
* ``uncategorized``: a caller saw an error outside both categories.

One application of a command is one run of its events: a command must persist events that are
distinct values naming it (e.g. ``Appended(op_id, amount)``, or with an index), so that the
same event value stored twice means the command was applied twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from raysource.journal.api import Journal, StoredEvent
from raysource.journal.errors import NotAppliedError, OutcomeUnknownError
from raysource.journal.serialization import Serialization
from raysource.runtime.aggregate import AggregateType
from raysource.runtime.errors import CommandRejected
from raysource.runtime.idempotency import KEY_FIELD

__all__ = [
    "OUTCOMES",
    "History",
    "LiveState",
    "Observation",
    "Violation",
    "assert_no_violations",
    "check_history",
    "check_history_sync",
    "classify",
]

OUTCOMES = ("ok", "rejected", "not_applied", "unknown", "uncategorized")


def classify(error: BaseException | None) -> str:
    """The outcome category of what a caller got (``None``: a reply)."""
    if error is None:
        return "ok"
    if isinstance(error, CommandRejected):
        return "rejected"
    if isinstance(error, NotAppliedError):
        return "not_applied"
    if isinstance(error, (OutcomeUnknownError, asyncio.CancelledError, TimeoutError)):
        return "unknown"
    return "uncategorized"


@dataclass(frozen=True, slots=True)
class Observation:
    """One attempt of one command as its caller saw it. ``value`` is the reply (``"ok"``) or
    the error; ``caller`` names who sent it (free text, for the messages)."""

    command_id: str
    outcome: str
    value: Any = None
    caller: str = ""

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r} (known: {OUTCOMES})")


@dataclass(frozen=True, slots=True)
class LiveState:
    """The state a live activation holds, at the sequence number it believes is the last."""

    persistence_id: str
    sequence_nr: int
    state: Any
    writer_id: str = ""


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken promise. ``kind`` is one of the check names of the module docstring."""

    kind: str
    message: str
    persistence_id: str = ""
    command_id: str = ""
    sequence_nrs: tuple[int, ...] = ()

    def __str__(self) -> str:
        return f"[{self.kind}] {self.message}"


@dataclass
class History:
    """What every caller saw. ``await ask(command_id, awaitable, caller=...)`` records the
    outcome of one attempt and returns it; ``record`` adds one by hand; ``unknown`` marks an
    attempt whose caller never heard back (a crashed host)."""

    observations: list[Observation] = field(default_factory=list)

    async def ask(self, command_id: str, call: Awaitable[Any], *, caller: str = "") -> Observation:
        try:
            value = await call
        except asyncio.CancelledError as exc:
            self.record(command_id, "unknown", exc, caller)
            raise
        except Exception as exc:  # noqa: BLE001 - every outcome is data here
            return self.record(command_id, classify(exc), exc, caller)
        return self.record(command_id, "ok", value, caller)

    def record(
        self, command_id: str, outcome: str, value: Any = None, caller: str = ""
    ) -> Observation:
        obs = Observation(command_id, outcome, value, caller)
        self.observations.append(obs)
        return obs

    def counts(self) -> Counter[str]:
        """Attempts per outcome."""
        return Counter(o.outcome for o in self.observations)


async def check_history(
    observations: History | Iterable[Observation],
    journal: Journal,
    *,
    aggregate_type: AggregateType,
    serialization: Serialization,
    persistence_ids: Iterable[str],
    command_of: Callable[[Any], str | None],
    live: Iterable[LiveState] = (),
    writes: Iterable[Any] = (),
    expected_reply: Callable[[str, Any], Any] | None = None,
    tags: bool = True,
    categorized: bool = True,
    retention_deleted: Callable[[Observation], bool] | None = None,
) -> list[Violation]:
    """Check ``observations`` against the journal (see the module docstring); returns the
    violations, oldest first. ``persistence_ids`` are the aggregates to read; ``command_of``
    maps a decoded event to its command id (None: not a command's event); ``live`` are the
    live activations' states; ``writes`` the write log (``FaultyJournal.writes``: records with
    ``persistence_id, writer_id, first, last, stored``); ``expected_reply(command_id, state)``
    the reply a command must have got given the fold state just after its events;
    ``tags=False`` skips the tag-stream check, ``categorized=False`` the ``uncategorized`` one
    (such attempts still count as unknown). ``retention_deleted(observation)``: True when an
    acknowledged attempt's events lie at or below the aggregate's retention mark (a retention
    policy deleted them, ``raysource.journal.retention``): a command whose every acknowledged
    attempt says so is not ``lost_ack`` when the journal no longer holds it; every other
    acknowledged command still must be there."""
    obs = list(observations.observations if isinstance(observations, History) else observations)
    out: list[Violation] = []
    for o in obs:
        if o.outcome == "uncategorized" and categorized:
            out.append(
                Violation(
                    "uncategorized",
                    f"{o.command_id}: caller {o.caller or '?'} "
                    f"got {o.value!r}, neither NotAppliedError nor "
                    f"OutcomeUnknownError",
                    command_id=o.command_id,
                )
            )
    per_cmd: dict[str, Counter[str]] = defaultdict(Counter)
    replies: dict[str, list[Observation]] = defaultdict(list)
    for o in obs:
        per_cmd[o.command_id][o.outcome] += 1
        if o.outcome == "ok":
            replies[o.command_id].append(o)

    handler = aggregate_type.event_handler
    stored_by_cmd: dict[str, list[tuple[str, int, Any]]] = defaultdict(list)
    keyed: set[str] = set()  # commands stored with an idempotency key: at most once
    after_cmd: dict[str, Any] = {}  # fold state just after the command's last event
    folds: dict[str, list[Any]] = {}
    all_stored: list[StoredEvent] = []
    for pid in sorted(set(persistence_ids)):
        state = aggregate_type.initial_state
        states = [state]  # states[n] = fold after #n
        stored = [e async for e in journal.replay(pid)]
        for ev in stored:
            event = serialization.decode(
                ev.serializer_id,
                ev.manifest,
                ev.payload,
                persistence_id=pid,
                sequence_nr=ev.sequence_nr,
            )
            state = handler(state, event)
            while len(states) < ev.sequence_nr:  # deleted or missing numbers keep the state
                states.append(states[-1])
            states.append(state)
            cmd = command_of(event)
            if cmd is not None:
                stored_by_cmd[cmd].append((pid, ev.sequence_nr, event))
                if ev.metadata and ev.metadata.get(KEY_FIELD) is not None:
                    keyed.add(cmd)
                after_cmd[cmd] = state
        folds[pid] = states
        all_stored.extend(stored)
        out.extend(_check_keys(pid, stored))
    if tags:
        out.extend(await _check_tags(journal, all_stored))

    for cmd in sorted(set(per_cmd) | set(stored_by_cmd)):
        out.extend(
            _check_command(
                cmd,
                per_cmd.get(cmd, Counter()),
                stored_by_cmd.get(cmd, []),
                obs,
                cmd in keyed,
                retention_deleted,
            )
        )
        if expected_reply is not None and cmd in after_cmd:
            want = expected_reply(cmd, after_cmd[cmd])
            for o in replies.get(cmd, []):
                if o.value != want:
                    pid, seq, _ = stored_by_cmd[cmd][-1]
                    out.append(
                        Violation(
                            "reply_mismatch",
                            f"{cmd}: caller {o.caller or '?'} got {o.value!r}, "
                            f"but the journal fold after {pid}#{seq} gives {want!r} (the writer "
                            f"decided on a state that missed events)",
                            pid,
                            cmd,
                            (seq,),
                        )
                    )

    out.extend(_check_writers(writes))
    for lv in live:
        fold = folds.get(lv.persistence_id)
        if fold is None:
            continue
        if lv.sequence_nr >= len(fold):
            out.append(
                Violation(
                    "state_mismatch",
                    f"{lv.persistence_id}: activation {lv.writer_id or '?'} is at "
                    f"#{lv.sequence_nr} but the journal ends at #{len(fold) - 1}",
                    lv.persistence_id,
                    sequence_nrs=(lv.sequence_nr,),
                )
            )
        elif fold[lv.sequence_nr] != lv.state:
            out.append(
                Violation(
                    "state_mismatch",
                    f"{lv.persistence_id}: activation {lv.writer_id or '?'} at "
                    f"#{lv.sequence_nr} holds {lv.state!r}, the journal fold is "
                    f"{fold[lv.sequence_nr]!r}",
                    lv.persistence_id,
                    sequence_nrs=(lv.sequence_nr,),
                )
            )
    return out


def _check_command(
    cmd: str,
    seen: Counter[str],
    stored: list[tuple[str, int, Any]],
    obs: list[Observation],
    keyed: bool = False,
    retention_deleted: Callable[[Observation], bool] | None = None,
) -> list[Violation]:
    acked, unknown = seen["ok"], seen["unknown"] + seen["uncategorized"]
    bound = min(1, acked + unknown) if keyed else acked + unknown
    # one application = one copy of each of its (distinct) event values
    copies = Counter(repr(e) for _, _, e in stored)
    applied = max(copies.values(), default=0)
    where = ", ".join(f"{pid}#{seq}" for pid, seq, _ in stored)
    seqs = tuple(seq for _, seq, _ in stored)
    pid = stored[0][0] if stored else ""
    callers = "; ".join(f"{o.caller or '?'}: {o.outcome}" for o in obs if o.command_id == cmd)
    if not seen:
        return [
            Violation("phantom", f"{cmd}: stored at {where}, but no caller sent it", pid, cmd, seqs)
        ]
    if acked and not applied:
        mine = [o for o in obs if o.command_id == cmd and o.outcome == "ok"]
        if retention_deleted is not None and all(retention_deleted(o) for o in mine):
            return []  # deleted by the retention policy, as it says
        return [
            Violation(
                "lost_ack",
                f"{cmd}: acknowledged ({callers}) but not in the journal",
                command_id=cmd,
            )
        ]
    if applied > bound:
        kind = (
            "applied_twice"
            if acked
            else "unknown_applied_twice"
            if unknown
            else "not_applied_present"
        )
        what = {
            "applied_twice": f"applied {applied} times" + (", under a key" if keyed else ""),
            "unknown_applied_twice": f"applied {applied} times with {unknown} unknown "
            f"attempt(s)" + (", under a key" if keyed else ""),
            "not_applied_present": "reported not applied",
        }[kind]
        return [Violation(kind, f"{cmd}: {what} ({callers}); stored at {where}", pid, cmd, seqs)]
    return []


def _check_keys(pid: str, stored: list[StoredEvent]) -> list[Violation]:
    """Each idempotency key applied at most once (its key is on one command's first event)."""
    where: dict[str, list[int]] = defaultdict(list)
    for ev in stored:
        key = ev.metadata.get(KEY_FIELD) if ev.metadata else None
        if key is not None:
            where[key].append(ev.sequence_nr)
    return [
        Violation(
            "key_applied_twice",
            f"{pid}: idempotency key {key!r} applied "
            f"{len(seqs)} times (#{', #'.join(map(str, seqs))})",
            pid,
            sequence_nrs=tuple(seqs),
        )
        for key, seqs in where.items()
        if len(seqs) > 1
    ]


def _check_writers(writes: Iterable[Any]) -> list[Violation]:
    owner: dict[tuple[str, int], str] = {}
    out = []
    for w in writes:
        if not w.stored:
            continue
        for seq in range(w.first, w.last + 1):
            prev = owner.setdefault((w.persistence_id, seq), w.writer_id)
            if prev != w.writer_id:
                out.append(
                    Violation(
                        "two_writers",
                        f"{w.persistence_id}#{seq} was written by activation "
                        f"{prev} and by activation {w.writer_id}",
                        w.persistence_id,
                        sequence_nrs=(seq,),
                    )
                )
    return out


async def _check_tags(journal: Journal, stored: list[StoredEvent]) -> list[Violation]:
    wanted: dict[str, set[tuple[str, int]]] = defaultdict(set)
    for ev in stored:
        for tag in ev.tags:
            wanted[tag].add((ev.persistence_id, ev.sequence_nr))
    out = []
    for tag in sorted(wanted):
        found = {
            (te.event.persistence_id, te.event.sequence_nr)
            async for te in journal.events_by_tag(tag)
        }
        missing = sorted(wanted[tag] - found)
        by_pid: dict[str, list[int]] = defaultdict(list)
        for pid, seq in missing:
            by_pid[pid].append(seq)
        for pid, seqs in by_pid.items():
            out.append(
                Violation(
                    "missing_tag",
                    f"{pid}: #{', #'.join(map(str, seqs))} stored but not in "
                    f"the stream of tag {tag!r}",
                    pid,
                    sequence_nrs=tuple(seqs),
                )
            )
    return out


def check_history_sync(*args: Any, **kwargs: Any) -> list[Violation]:
    """:func:`check_history` for synchronous code (runs its own event loop)."""
    return asyncio.run(check_history(*args, **kwargs))


def assert_no_violations(
    violations: Iterable[Violation], context: Mapping[str, Any] | None = None
) -> None:
    """Raise ``AssertionError`` listing every violation (and ``context``, e.g. the schedule)."""
    vs = list(violations)
    if vs:
        extra = "".join(f"\n  {k}: {v}" for k, v in (context or {}).items())
        raise AssertionError(f"{len(vs)} violation(s):\n  " + "\n  ".join(map(str, vs)) + extra)

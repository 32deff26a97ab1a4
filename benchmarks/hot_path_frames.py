"""The hot path of one ``ask``: the modules and Python frames it crosses, and its cost.

* ``frames``: one ``ask`` of a warm aggregate, counted with ``sys.setprofile``. The caller's
  side (``EntityRef.ask_async`` up to the Ray call and back) runs in this process against a
  local Ray host actor; the host's side (the actor method, the host, the core, the journal
  append, the reply) runs the host actor's class in this process (in-memory stores, the
  read side's live path on as in production) so every frame is seen. Reported: the raysource
  modules and frames (``call`` events) of each side, every Python frame of the host side,
  and the raysource frames on the stack at the in-memory journal's ``append``.
* ``ask``: sequential ``EntityRef.ask`` on one aggregate of a local Ray system (in-memory
  stores): wall p50/p99 and the CPU seconds per ask of this (caller) process and of the
  host actor's process (``/proc``), one JSON line.
* ``host``: the host's side alone, in this process (no Ray): sequential ``ask_ordered`` on
  an ``AggregateHost`` (in-memory stores, an ``on_durable`` listener as the live path has):
  p50 and this process's CPU seconds per ask.
* ``compare --base DIR [--kind ask|host]``: ``ask`` (or ``host``) for the code in ``DIR``
  (e.g. ``git archive <commit>`` unpacked) and for this checkout, alternating rounds, each
  in a fresh process over a link tree (``raysource.*`` mapped from the folders as
  pyproject's package-dir does), so both see the same machine load; prints the per-round
  figures and the ratios new/base.

Usage: python -m benchmarks.hot_path_frames frames
       python -m benchmarks.hot_path_frames compare --base /tmp/base --rounds 4 --n 1500
On a shared, loaded machine read the CPU figures and the ratios, not the wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import tomllib
import traceback
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _module(frame: Any) -> str:
    return str(frame.f_globals.get("__name__", "?"))


class _Counter:
    """``sys.setprofile`` hook: counts ``call`` events (Python frames entered)."""

    def __init__(self) -> None:
        self.frames = 0
        self.ours = 0
        self.modules: set[str] = set()
        self.functions: list[str] = []
        self.append_stack: list[str] | None = None

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        self.frames += 1
        mod = _module(frame)
        if mod.startswith("raysource"):
            self.ours += 1
            self.modules.add(mod)
            self.functions.append(f"{mod}.{frame.f_code.co_name}")
            if (
                self.append_stack is None
                and frame.f_code.co_name == "append"
                and mod == "raysource.journal.memory"
            ):
                self.append_stack = [
                    f"{_module(f)}.{f.f_code.co_name}"
                    for f in _walk(frame)
                    if _module(f).startswith("raysource")
                ]

    def report(self) -> dict[str, Any]:
        return {
            "modules": len(self.modules),
            "module_names": sorted(self.modules),
            "raysource_frames": self.ours,
            "all_frames": self.frames,
        }


def _walk(frame: Any) -> list[Any]:
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


async def _profiled(coro: Any, drain: int = 0) -> tuple[Any, _Counter]:
    """Profile ``coro``, then ``drain`` more loop steps (the work it left to background
    tasks, e.g. the live path's send, is part of the command's cost)."""
    counter = _Counter()
    sys.setprofile(counter)
    try:
        result = await coro
        for _ in range(drain):
            await asyncio.sleep(0)
    finally:
        sys.setprofile(None)
    return result, counter


def _ledger() -> tuple[Any, Any]:
    from raysource.examples.ledger import LEDGER, Append

    return LEDGER, Append


async def _host_side() -> dict[str, Any]:
    from raysource.runtime.actors.host_actor import HostSpec, _HostActor
    from raysource.runtime.idempotency import Keyed
    from raysource.runtime.stores import StoreSpec

    ledger, append = _ledger()
    spec = HostSpec("frames", ledger, StoreSpec(), entity_id="e1")
    actor = _HostActor(spec)
    caller = uuid.uuid4().hex
    for seq in range(20):  # warm: activated, stores open, caches filled
        await actor.ask_ordered("e1", caller, seq, Keyed(append(f"w{seq}", 1), uuid.uuid4().hex))
    cmd = Keyed(append("measured", 1), uuid.uuid4().hex)
    # the reply is released after the append: count until the caller's await returns
    _, counter = await _profiled(actor.ask_ordered("e1", caller, 20, cmd), drain=5)
    out = counter.report()
    out["stack_at_append"] = counter.append_stack
    out["functions"] = counter.functions
    return out


async def _caller_side(ref: Any, append: Any) -> dict[str, Any]:
    for i in range(20):
        await ref.ask_async(append(f"c{i}", 1))
    _, counter = await _profiled(ref.ask_async(append("measured", 1)))
    out = counter.report()
    out["functions"] = counter.functions
    del out["all_frames"]  # Ray's own frames while waiting: not the path's
    return out


def _start_ray() -> Any:
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    return ray


def _ref(entity_id: str) -> Any:
    from raysource.runtime.actors.refs import EntityRef
    from raysource.runtime.stores import StoreSpec
    from raysource.testing.local_resolver import LocalResolver

    ledger, _ = _ledger()
    resolver = LocalResolver(f"hp{uuid.uuid4().hex[:6]}", StoreSpec())
    return EntityRef(ledger, entity_id, resolver)


def frames() -> dict[str, Any]:
    ray = _start_ray()
    try:
        host = asyncio.run(_host_side())
        _, append = _ledger()
        caller = asyncio.run(_caller_side(_ref("f1"), append))
    finally:
        ray.shutdown()
    return {"host": host, "caller": caller}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _core_file() -> str:
    import raysource.runtime.core as core

    return str(core.__file__)


def ask(n: int) -> dict[str, Any]:
    ray = _start_ray()
    try:
        import raysource.runtime.core as core

        _, append = _ledger()
        worker_core = ray.get(ray.remote(_core_file).remote())  # which code the workers run
        ref = _ref("a1")
        for i in range(200):
            ref.ask(append(f"w{i}", 1))
        pid = ray.get(ref.actor.info.remote())["pid"]
        lat = []
        h0, c0 = _cpu_s(pid), time.process_time()
        for i in range(n):
            t0 = time.perf_counter()
            ref.ask(append(f"m{i}", 1))
            lat.append(time.perf_counter() - t0)
        h1, c1 = _cpu_s(pid), time.process_time()
        if ray.get(ref.actor.info.remote())["pid"] != pid:
            raise RuntimeError("the host actor changed during the measurement")
        lat.sort()
        return {
            "core": core.__file__,
            "worker_core": worker_core,
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
            "caller_cpu_us": (c1 - c0) / n * 1e6,
            "host_cpu_us": (h1 - h0) / n * 1e6,
        }
    finally:
        ray.shutdown()


async def _host_asks(n: int) -> dict[str, Any]:
    from raysource.journal.memory import InMemoryJournal
    from raysource.runtime.host import AggregateHost
    from raysource.runtime.idempotency import Keyed
    from raysource.runtime.stores import StoreSpec, serialization_for
    from raysource.snapshots.memory import InMemorySnapshotStore

    ledger, append = _ledger()
    announced: list[Any] = []
    host = AggregateHost(
        ledger,
        InMemoryJournal(),
        InMemorySnapshotStore(),
        serialization_for(ledger, StoreSpec()),
        on_durable=announced.extend,  # the live path's listener queues the events likewise
    )
    caller = uuid.uuid4().hex
    for seq in range(300):
        await host.ask_ordered("h1", caller, seq, Keyed(append(f"w{seq}", 1), uuid.uuid4().hex))
    lat = []
    c0 = time.process_time()
    for i in range(n):
        cmd = Keyed(append(f"m{i}", 1), uuid.uuid4().hex)
        t0 = time.perf_counter()
        await host.ask_ordered("h1", caller, 300 + i, cmd)
        lat.append(time.perf_counter() - t0)
    cpu = time.process_time() - c0
    await host.close()
    import raysource.runtime.core as core

    return {
        "core": core.__file__,
        "p50_ms": statistics.median(lat) * 1000,
        "host_cpu_us": cpu / n * 1e6,
    }


def _link_tree(root: Path, dest: Path) -> Path:
    """``dest/raysource`` mapped from ``root``'s folders like pyproject's package-dir."""
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    dirs = cfg["tool"]["setuptools"]["package-dir"]
    pkg = dest / "raysource"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in (root / dirs["raysource"]).iterdir():
        if not (pkg / f.name).exists():
            (pkg / f.name).symlink_to(f)
    for name, folder in dirs.items():
        parts = name.split(".")[1:]
        if len(parts) == 1 and not (pkg / parts[0]).exists():
            (pkg / parts[0]).symlink_to(root / folder)
    return dest


def compare(base: Path, rounds: int, n: int, kind: str = "ask") -> dict[str, Any]:
    trees = {
        "base": _link_tree(base, Path(f"/tmp/hot_path_trees/base-{os.getpid()}")),
        "new": _link_tree(ROOT, Path(f"/tmp/hot_path_trees/new-{os.getpid()}")),
    }
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
    for r in range(rounds):
        for name in ("base", "new") if r % 2 == 0 else ("new", "base"):
            env = dict(os.environ, PYTHONPATH=str(trees[name]), RAY_DEDUP_LOGS="0")
            for _attempt in range(3):  # a loaded machine: Ray may time out starting
                out = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), kind, "--n", str(n)],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd="/tmp",
                )
                if out.returncode == 0:
                    break
                print(name, "attempt failed:", out.stderr.strip().splitlines()[-1], flush=True)
            else:
                print(name, "round skipped: every attempt failed", flush=True)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[name].append(row)
            print(name, json.dumps(row), flush=True)
    summary: dict[str, Any] = {"rounds": {k: len(v) for k, v in runs.items()}}
    if not (runs["base"] and runs["new"]):
        return {"rounds": runs, "summary": summary}
    for fig in (
        ("p50_ms", "caller_cpu_us", "host_cpu_us") if kind == "ask" else ("p50_ms", "host_cpu_us")
    ):
        b = statistics.median(x[fig] for x in runs["base"])
        w = statistics.median(x[fig] for x in runs["new"])
        summary[fig] = {"base": round(b, 3), "new": round(w, 3), "ratio": round(w / b, 3)}
    return {"rounds": runs, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("frames")
    a = sub.add_parser("ask")
    a.add_argument("--n", type=int, default=1000)
    h = sub.add_parser("host")  # the host side alone, in process (no Ray)
    h.add_argument("--n", type=int, default=3000)
    c = sub.add_parser("compare")
    c.add_argument("--kind", choices=("ask", "host"), default="ask")
    c.add_argument("--base", type=Path, required=True)
    c.add_argument("--rounds", type=int, default=4)
    c.add_argument("--n", type=int, default=1000)
    args = p.parse_args()
    if args.cmd == "frames":
        out = frames()
        for side in ("caller", "host"):
            s = out[side]
            print(f"{side}: {s['modules']} modules, {s['raysource_frames']} raysource frames")
            print("   ", ", ".join(m.removeprefix("raysource.") for m in s["module_names"]))
        print(f"host: {out['host']['all_frames']} Python frames in all")
        stack = out["host"]["stack_at_append"] or []
        print(f"stack at the journal append: {len(stack)} raysource frames")
        for f in stack:
            print("   ", f)
        print(json.dumps(out))
    elif args.cmd == "ask":
        print(json.dumps(ask(args.n)))
    elif args.cmd == "host":
        print(json.dumps(asyncio.run(_host_asks(args.n))))
    else:
        print(json.dumps(compare(args.base, args.rounds, args.n, args.kind)["summary"], indent=1))


if __name__ == "__main__":
    try:
        main()
    except Exception:
        traceback.print_exc()
        sys.exit(1)

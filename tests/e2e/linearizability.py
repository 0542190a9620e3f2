"""A linearizability checker for histories of key/value register operations.

The search follows Wing & Gong (with Lowe's memoization): an operation may
take effect next when it was invoked before every pending completed
operation returned; the checker tries such operations one at a time against
a sequential model and backtracks on contradiction.

History
-------
A history is a list of operations, each a mapping (or an `Op`) with

    process        who issued it (only used in messages)
    kind           "put", "get" or "cas"
    key            the register; registers are independent and checked one
                   at a time (linearizability is compositional)
    value          put: the value written
    expected, new  cas: set the register to `new` if it holds `expected`
    invoke_time    when the request was sent (any monotonic clock)
    complete_time  when the answer arrived, or None when the outcome is
                   unknown (timeout, connection dropped, 5xx on a write)
    result         get: the value read (None = key absent);
                   cas: True/False; put: True (False = definitely not applied)

Model: every key is a register that starts out absent (None). put always
succeeds; get must return the current value; a cas with result True needs the
register to hold `expected` and then holds `new`; a cas with result False needs
it to hold something other than `expected` and leaves it unchanged.

Unknown outcomes: a put or cas without complete_time may take effect at any
point after its invocation, or never. A get without complete_time constrains
nothing and is ignored. A put whose result is False is taken as never applied.

An operation that completes at exactly the instant another one is invoked is
treated as concurrent with it.

Public API
----------
    check(history, ...) -> (ok, info)
        ok is True only when a linearization was found. On a violation info
        describes the counterexample; when the search budget ran out, ok is
        False and info starts with "unknown:".
    check_detailed(history, ...) -> CheckResult
        status "ok", "fail" or "unknown", plus per-key details.
    History
        a thread-safe recorder stamping operations with time.monotonic().
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping

KINDS = ("put", "get", "cas")
INF = math.inf

DEFAULT_MAX_STATES = 500_000  # per key


@dataclass
class Op:
    process: Any
    kind: str
    key: Hashable
    invoke_time: float
    complete_time: float | None = None
    value: Any = None
    expected: Any = None
    new: Any = None
    result: Any = None
    index: int = -1  # position in the history given to check()

    @property
    def known(self) -> bool:
        return self.complete_time is not None

    def describe(self, t0: float = 0.0) -> str:
        end = "?" if self.complete_time is None else f"{self.complete_time - t0:.4f}"
        span = f"[{self.invoke_time - t0:.4f}, {end}]"
        who = f"#{self.index} {self.process!s}"
        if self.kind == "put":
            body = f"put {self.value!r}"
        elif self.kind == "get":
            body = "get -> " + ("absent" if self.result is None else repr(self.result))
        else:
            outcome = "?" if self.complete_time is None else repr(bool(self.result))
            body = f"cas {_show(self.expected)} -> {self.new!r} = {outcome}"
        if self.complete_time is None:
            body += " (outcome unknown)"
        return f"{who} {body} {span}"


def _show(value: Any) -> str:
    return "absent" if value is None else repr(value)


@dataclass
class KeyResult:
    key: Hashable
    status: str  # "ok", "fail", "unknown"
    info: str
    states: int
    linearization: list[Op] | None = None


@dataclass
class CheckResult:
    status: str  # "ok", "fail", "unknown"
    info: str
    keys: dict = field(default_factory=dict)  # key -> KeyResult

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------
# input


def _field(raw: Any, name: str, default: Any = None) -> Any:
    if isinstance(raw, Mapping):
        return raw.get(name, default)
    return getattr(raw, name, default)


def normalize(history: Iterable[Any]) -> list[Op]:
    """Validate a history and turn it into `Op`s (index = position in the input)."""
    ops: list[Op] = []
    for index, raw in enumerate(history):
        kind = _field(raw, "kind")
        if kind not in KINDS:
            raise ValueError(f"operation {index}: kind must be one of {KINDS}, not {kind!r}")
        invoke = _field(raw, "invoke_time")
        complete = _field(raw, "complete_time")
        if not isinstance(invoke, (int, float)) or isinstance(invoke, bool) or math.isnan(invoke):
            raise ValueError(f"operation {index}: invoke_time must be a number, not {invoke!r}")
        if complete is not None:
            if not isinstance(complete, (int, float)) or isinstance(complete, bool) or math.isnan(complete):
                raise ValueError(f"operation {index}: complete_time must be a number or None, not {complete!r}")
            if math.isinf(complete):
                complete = None
            elif complete < invoke:
                raise ValueError(f"operation {index}: completes ({complete}) before it is invoked ({invoke})")
        key = _field(raw, "key")
        try:
            hash(key)
        except TypeError:
            raise ValueError(f"operation {index}: key {key!r} is not hashable") from None
        op = Op(
            process=_field(raw, "process"),
            kind=kind,
            key=key,
            invoke_time=float(invoke),
            complete_time=None if complete is None else float(complete),
            value=_field(raw, "value"),
            expected=_field(raw, "expected"),
            new=_field(raw, "new"),
            result=_field(raw, "result"),
            index=index,
        )
        if kind == "cas" and op.known and not isinstance(op.result, bool):
            raise ValueError(f"operation {index}: a completed cas needs result True or False, not {op.result!r}")
        for name in ("value", "expected", "new", "result"):
            try:
                hash(getattr(op, name))
            except TypeError:
                raise ValueError(f"operation {index}: {name} {getattr(op, name)!r} is not hashable") from None
        ops.append(op)
    return ops


def _relevant(ops: list[Op]) -> list[Op]:
    """Drop operations that cannot constrain a linearization.

    * a get with unknown outcome: nothing was observed;
    * a put acknowledged with False: it did not happen;
    * an unknown-outcome write whose value nobody ever observed, on a key
      without failed cas: taking effect could only put a value in the
      register that no later read accepts, and is never needed to explain
      anything (only a failed cas can need "some other value" there).
    """
    kept = [
        op for op in ops
        if not (op.kind == "get" and not op.known) and not (op.kind == "put" and op.known and op.result is False)
    ]
    observed = set()
    failed_cas = False
    for op in kept:
        if op.kind == "get":
            observed.add(op.result)
        elif op.kind == "cas":
            observed.add(op.expected)
            if op.known and op.result is False:
                failed_cas = True
    if failed_cas:
        return kept
    out = []
    for op in kept:
        if not op.known and (op.value if op.kind == "put" else op.new) not in observed:
            continue
        out.append(op)
    return out


# ---------------------------------------------------------------------------
# the model


def _step(op: Op, state: Any) -> tuple[bool, Any]:
    """(allowed, next state) for `op` taking effect on a register holding `state`."""
    if op.kind == "get":
        return state == op.result, state
    if op.kind == "put":
        return True, op.value
    if not op.known:
        return True, (op.new if state == op.expected else state)
    if op.result:
        return state == op.expected, op.new
    return state != op.expected, state


def _read_only(op: Op) -> bool:
    """True for a completed op that never changes the register when it is allowed."""
    if op.kind == "get":
        return True
    if op.kind == "cas" and op.known:
        return not op.result or op.expected == op.new
    return False


def _why_not(op: Op, state: Any) -> str:
    if op.kind == "get":
        return f"it read {_show(op.result)} but the register holds {_show(state)}"
    if op.kind == "cas" and op.result:
        return f"it succeeded expecting {_show(op.expected)} but the register holds {_show(state)}"
    if op.kind == "cas":
        return f"it failed although the register holds the expected {_show(state)}"
    return "?"


def _lowest_unset(mask: int) -> int:
    return ((mask + 1) & ~mask).bit_length() - 1


# ---------------------------------------------------------------------------
# search on one key


class _Budget(Exception):
    pass


class _KeySearch:
    """Depth-first search for a linearization of the operations on one key.

    A configuration is (known mask, complete-order mask, unknown mask, state,
    number of completed ops placed). Bits of the known mask follow invocation
    order, bits of the complete-order mask follow completion order (so the
    pending op that returns first is the lowest unset bit).

    Reductions, all exact:
    * a completed op that is allowed now and can never change the state (a
      read, a failed cas) is placed at once: placing it earlier never hurts
      (a write that happens to rewrite the current value is not such an op:
      later it might restore that value after another write);
    * an unknown-outcome op that would not change the state is never placed
      (leaving it out is equivalent);
    * a configuration is skipped when one with the same completed ops placed,
      the same state and a subset of its unknown-outcome ops placed was seen
      (unknown ops never bound anyone's window, so having more of them left
      can only help).
    """

    def __init__(self, key: Hashable, ops: list[Op], initial: Any, max_states: int, deadline: float) -> None:
        self.key = key
        self.initial = initial
        self.max_states = max_states
        self.deadline = deadline
        known = sorted((o for o in ops if o.known), key=lambda o: (o.invoke_time, o.complete_time, o.index))
        self.known = known
        self.n = len(known)
        order = sorted(range(self.n), key=lambda i: (known[i].complete_time, i))
        self.rank = [0] * self.n
        for r, i in enumerate(order):
            self.rank[i] = r
        self.by_rank = order
        self.unknown = sorted((o for o in ops if not o.known), key=lambda o: (o.invoke_time, o.index))
        self.states = 0
        self.best_count = -1
        self.best_path: list[Op] = []
        self.best_config: tuple | None = None

    # -- windows ----------------------------------------------------------
    def _horizon(self, cmask: int) -> float:
        r = _lowest_unset(cmask)
        return INF if r >= self.n else self.known[self.by_rank[r]].complete_time  # type: ignore[return-value]

    def _known_window(self, kmask: int, horizon: float) -> Iterable[int]:
        i = _lowest_unset(kmask)
        known = self.known
        while i < self.n and known[i].invoke_time <= horizon:
            if not (kmask >> i) & 1:
                yield i
            i += 1

    # -- one configuration ------------------------------------------------
    def _settle(self, kmask: int, cmask: int, umask: int, state: Any, count: int, trail: list[Op]):
        """Apply the forced moves; return (config, done, branches)."""
        known = self.known
        # One pass suffices: placing a read-only op leaves the state as it is
        # and can only move the horizon later, so ops skipped earlier in the
        # pass stay impossible and ops further on are still reached.
        horizon = self._horizon(cmask)
        if horizon == INF:
            return (kmask, cmask, umask, state, count), True, []
        i = _lowest_unset(kmask)
        while i < self.n and known[i].invoke_time <= horizon:
            if not (kmask >> i) & 1:
                op = known[i]
                if _read_only(op) and _step(op, state)[0]:
                    kmask |= 1 << i
                    cmask |= 1 << self.rank[i]
                    count += 1
                    trail.append(op)
                    horizon = self._horizon(cmask)
                    if horizon == INF:
                        return (kmask, cmask, umask, state, count), True, []
            i += 1
        branches = []
        for i in self._known_window(kmask, horizon):
            op = known[i]
            if _read_only(op):
                continue  # not allowed now, or it would have been placed above
            allowed, nxt = _step(op, state)
            if allowed:
                branches.append((True, i, nxt))
        for j, op in enumerate(self.unknown):
            if op.invoke_time > horizon:
                break
            if (umask >> j) & 1:
                continue
            _, nxt = _step(op, state)
            if nxt != state:
                branches.append((False, j, nxt))
        return (kmask, cmask, umask, state, count), False, branches

    def run(self) -> KeyResult:
        seen: dict[tuple, list[int]] = {}
        trail: list[Op] = []
        config, done, branches = self._settle(0, 0, 0, self.initial, 0, trail)
        if done:
            return self._ok(trail)
        seen[(config[0], config[3])] = [config[2]]
        # frame: [config, branches, next branch, ops placed to get here]
        stack: list[list] = [[config, branches, 0, trail]]
        self._note_depth(stack)
        try:
            while stack:
                frame = stack[-1]
                (kmask, cmask, umask, _, count), branches, pos, _ = frame
                if pos >= len(branches):
                    stack.pop()
                    continue
                frame[2] = pos + 1
                is_known, idx, nxt = branches[pos]
                if is_known:
                    op = self.known[idx]
                    kmask |= 1 << idx
                    cmask |= 1 << self.rank[idx]
                    count += 1
                else:
                    op = self.unknown[idx]
                    umask |= 1 << idx
                trail = [op]
                config, done, branches = self._settle(kmask, cmask, umask, nxt, count, trail)
                if done:
                    return self._ok([o for f in stack for o in f[3]] + trail)
                slot = (config[0], config[3])
                prior = seen.get(slot)
                if prior is not None and any(p & ~config[2] == 0 for p in prior):
                    continue
                seen.setdefault(slot, []).append(config[2])
                self.states += 1
                if self.states > self.max_states:
                    raise _Budget(f"explored {self.max_states} configurations")
                if self.states % 2048 == 0 and time.monotonic() > self.deadline:
                    raise _Budget("time limit reached")
                stack.append([config, branches, 0, trail])
                self._note_depth(stack)
        except _Budget as exc:
            return KeyResult(
                self.key, "unknown",
                f"key {self.key!r}: gave up after {self.states} configurations ({exc}); "
                f"{self.n} completed and {len(self.unknown)} unknown-outcome operations",
                self.states,
            )
        return KeyResult(self.key, "fail", self._explain(), self.states)

    def _ok(self, path: list[Op]) -> KeyResult:
        return KeyResult(self.key, "ok", f"key {self.key!r}: linearizable", self.states, path)

    def _note_depth(self, stack: list[list]) -> None:
        config = stack[-1][0]
        if config[4] > self.best_count:
            self.best_count = config[4]
            self.best_config = config
            self.best_path = [o for f in stack for o in f[3]]

    # -- counterexample -----------------------------------------------------
    def _explain(self) -> str:
        assert self.best_config is not None
        kmask, cmask, umask, state, count = self.best_config
        t0 = min([o.invoke_time for o in self.known] + [o.invoke_time for o in self.unknown])
        horizon = self._horizon(cmask)
        first = self.known[self.by_rank[_lowest_unset(cmask)]]
        lines = [
            f"key {self.key!r} is not linearizable (times relative to {t0:.4f}).",
            f"At best {count} of {self.n} completed operations could be placed"
            + (f" (plus {bin(umask).count('1')} with unknown outcome)" if umask else "")
            + f"; the register then holds {_show(state)}.",
            f"{first.describe(t0)} must take effect by {horizon - t0:.4f}, but no order works.",
        ]
        if self.best_path:
            lines.append("Last operations of that partial linearization:")
            lines += ["    " + o.describe(t0) for o in self.best_path[-8:]]
        lines.append("Completed operations that could go next from there:")
        window = list(self._known_window(kmask, horizon))
        for i in window[:20]:
            op = self.known[i]
            allowed, _ = _step(op, state)
            reason = "allowed, but every continuation fails" if allowed else "impossible: " + _why_not(op, state)
            lines.append(f"    {op.describe(t0)}: {reason}")
        lo = min((self.known[i].invoke_time for i in window), default=horizon)
        if self.best_path:
            lo = min(lo, self.best_path[-1].invoke_time)
        nearby = [
            o for o in sorted(self.known + self.unknown, key=lambda o: (o.invoke_time, o.index))
            if o.invoke_time <= horizon and (o.complete_time is None or o.complete_time >= lo)
        ]
        if nearby:
            lines.append(f"History around the problem ({len(nearby)} operations overlap "
                         f"[{lo - t0:.4f}, {horizon - t0:.4f}], first 25 shown):")
            lines += ["    " + o.describe(t0) for o in nearby[:25]]
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# entry points


def check_detailed(
    history: Iterable[Any],
    initial: Any = None,
    max_states: int = DEFAULT_MAX_STATES,
    time_limit: float | None = None,
) -> CheckResult:
    """Check every key; status is "fail" if any key fails, else "unknown" if any ran out of budget."""
    ops = normalize(history)
    by_key: dict[Hashable, list[Op]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    deadline = INF if time_limit is None else time.monotonic() + time_limit
    results: dict[Hashable, KeyResult] = {}
    for key in sorted(by_key, key=repr):
        key_ops = _relevant(by_key[key])
        results[key] = _KeySearch(key, key_ops, initial, max_states, deadline).run()
    failed = [r for r in results.values() if r.status == "fail"]
    unknown = [r for r in results.values() if r.status == "unknown"]
    n_unknown = sum(1 for op in ops if not op.known)
    summary = f"{len(ops)} operations ({n_unknown} with unknown outcome) on {len(by_key)} keys"
    if failed:
        return CheckResult("fail", f"NOT linearizable: {summary}\n" + "\n\n".join(r.info for r in failed), results)
    if unknown:
        return CheckResult("unknown", f"unknown: {summary}\n" + "\n".join(r.info for r in unknown), results)
    states = sum(r.states for r in results.values())
    return CheckResult("ok", f"linearizable: {summary}; {states} configurations explored", results)


def check(
    history: Iterable[Any],
    initial: Any = None,
    max_states: int = DEFAULT_MAX_STATES,
    time_limit: float | None = None,
) -> tuple[bool, str]:
    """(True, summary) when linearizable; (False, counterexample or "unknown: ...") otherwise."""
    result = check_detailed(history, initial=initial, max_states=max_states, time_limit=time_limit)
    return result.ok, result.info


# ---------------------------------------------------------------------------
# recording


class History:
    """Thread-safe history recorder.

        op = history.invoke("c1", "put", "k", value="c1-7")   # stamps invoke_time
        ...send the request...
        history.ok(op, True)        # answered: stamps complete_time, stores result
        history.unknown(op)         # may or may not have taken effect
        history.failed(op)          # certainly did not take effect: dropped

    Operations never resolved count as unknown outcome.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._ops: list[dict | None] = []

    def invoke(self, process: Any, kind: str, key: Hashable, **fields: Any) -> int:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}")
        record = {"process": process, "kind": kind, "key": key, "complete_time": None, "result": None, **fields}
        with self._lock:
            record["invoke_time"] = self.clock()
            self._ops.append(record)
            return len(self._ops) - 1

    def ok(self, op_id: int, result: Any = True) -> None:
        with self._lock:
            now = self.clock()
            record = self._ops[op_id]
            assert record is not None, "operation already dropped"
            record["complete_time"] = now
            record["result"] = result

    def unknown(self, op_id: int, note: str | None = None) -> None:
        with self._lock:
            record = self._ops[op_id]
            assert record is not None, "operation already dropped"
            record["complete_time"] = None
            if note:
                record["note"] = note

    def failed(self, op_id: int) -> None:
        with self._lock:
            self._ops[op_id] = None

    def ops(self) -> list[dict]:
        with self._lock:
            return [dict(r) for r in self._ops if r is not None]

"""A linearizability checker for histories of key/value register operations.

The search is Lowe's just-in-time linearization with a cache of visited
(linearized operations, register value) configurations, the algorithm
Porcupine uses, with exact reductions for unknown outcomes (see _KeySearch).
Each configuration is explored at most once, so the search always ends with
a verdict; the budget (max_states, time_limit) only guards against a bug.

Run as a program, it checks a saved history:

    python3 tests/e2e/linearizability.py HISTORY.json

(a JSON list of operations, or an object with a "history" list).

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


class _Unseen:
    """The register's value after an unknown-outcome put that nobody observes."""

    def __repr__(self) -> str:
        return "an unobserved value"


UNSEEN = _Unseen()


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


def _why_not(op: Op, state: Any) -> str:
    if op.kind == "get":
        return f"it read {_show(op.result)} but the register holds {_show(state)}"
    if op.kind == "cas" and op.result:
        return f"it succeeded expecting {_show(op.expected)} but the register holds {_show(state)}"
    if op.kind == "cas":
        return f"it failed although the register holds the expected {_show(state)}"
    return "?"


# ---------------------------------------------------------------------------
# search on one key


class _Budget(Exception):
    pass


class _KeySearch:
    """Just-in-time linearization of the operations on one key (Lowe), memoized.

    The operations become a doubly linked list of call and return events in
    time order (a call before a return at the same instant, so touching
    intervals overlap); an unknown-outcome operation returns at infinity.
    Walking the list from its head, the search tries to linearize each call it
    meets: when the model allows it and the configuration (set of linearized
    operations, register value) is new, the call and its return are lifted out
    of the list and the walk restarts at the head. Meeting a return event means
    that operation should already have taken effect: the last linearized call
    is put back and the walk goes on after it. Every configuration is explored
    at most once, so the search always ends; it succeeds when every completed
    operation is linearized (unknown-outcome operations left over may take
    effect after everything else, or never).

    Four exact reductions on top of the cache:
    * unknown-outcome puts of values that no read returns and no cas expects
      are interchangeable: the register then holds UNSEEN whichever it was,
      and once invoked each stays available to the end. So only the earliest
      invoked of those not yet linearized is ever tried (an exchange argument:
      the i-th one used in any valid order can be replaced by the i-th
      earliest invoked);
    * an unknown-outcome operation that would leave the register unchanged is
      not linearized (it can still be, later; never doing it is equivalent);
    * an unknown-outcome put is not linearized right after another
      unknown-outcome operation: the earlier one's effect would be overwritten
      unseen, so the same order without it (that operation never taking
      effect) is just as valid. The configuration therefore also records
      whether the last operation linearized had an unknown outcome; without
      this rule, runs of pending unknown writes make the search visit every
      subset of them;
    * a configuration is skipped when one with the same completed operations
      linearized, the same value, a subset of its unknown-outcome operations
      linearized and no more restriction on what comes next was already
      explored: unknown operations return at infinity, so having more of them
      left can only help.
    """

    def __init__(self, key: Hashable, ops: list[Op], initial: Any, max_states: int, deadline: float) -> None:
        self.key = key
        self.initial = initial
        self.max_states = max_states
        self.deadline = deadline
        self.ops = sorted(ops, key=lambda o: (o.invoke_time, o.index))
        self.n_known = sum(1 for o in self.ops if o.known)
        self.n_unknown = len(self.ops) - self.n_known
        # One bit per operation in its own mask: completed ops in one, unknown
        # ops in the other.
        self.bit: list[int] = []
        k = u = 0
        for o in self.ops:
            if o.known:
                self.bit.append(1 << k)
                k += 1
            else:
                self.bit.append(1 << u)
                u += 1
        events = []
        for i, o in enumerate(self.ops):
            events.append((o.invoke_time, 0, i))
            events.append((o.complete_time if o.known else INF, 1, i))
        events.sort()
        # Node 0 is the head sentinel; node j + 1 is events[j]; -1 ends the list.
        size = len(events) + 1
        self.next = [j + 1 if j + 1 < size else -1 for j in range(size)]
        self.prev = [j - 1 for j in range(size)]
        self.op_of = [-1] * size
        self.is_call = [False] * size
        self.match = [-1] * size
        call_node = [0] * len(self.ops)
        for j, (_, kind, i) in enumerate(events):
            node = j + 1
            self.op_of[node] = i
            if kind == 0:
                self.is_call[node] = True
                call_node[i] = node
            else:
                self.match[call_node[i]] = node
        # Unknown-outcome puts nobody observes, numbered in invocation order.
        observed = {o.result for o in self.ops if o.kind == "get"} | {o.expected for o in self.ops if o.kind == "cas"}
        self.unseen_rank = [-1] * len(self.ops)
        rank = 0
        for i, o in enumerate(self.ops):
            if o.kind == "put" and not o.known and o.value not in observed:
                self.unseen_rank[i] = rank
                rank += 1
        self.states = 0
        self.best_count = -1
        self.best: tuple | None = None  # (count, state, blocked op, candidates, path)

    # -- the list -----------------------------------------------------------
    def _unlink(self, node: int) -> None:
        nxt, prv = self.next, self.prev
        nxt[prv[node]] = nxt[node]
        if nxt[node] != -1:
            prv[nxt[node]] = prv[node]

    def _relink(self, node: int) -> None:
        nxt, prv = self.next, self.prev
        nxt[prv[node]] = node
        if nxt[node] != -1:
            prv[nxt[node]] = node

    def _lift(self, call: int) -> None:
        self._unlink(call)
        self._unlink(self.match[call])

    def _unlift(self, call: int) -> None:
        self._relink(self.match[call])
        self._relink(call)

    # -- the search ---------------------------------------------------------
    def run(self) -> KeyResult:
        ops, bit, nxt, op_of, is_call = self.ops, self.bit, self.next, self.op_of, self.is_call
        cache: dict[tuple, list[int]] = {}
        # (call node, and the state, masks, after-unknown flag and unseen puts used before it)
        stack: list[tuple] = []
        unseen_rank = self.unseen_rank
        state, kmask, umask, count, after_unknown, unseen_used = self.initial, 0, 0, 0, False, 0
        entry = nxt[0]
        try:
            while count < self.n_known:
                if entry != -1 and is_call[entry]:
                    i = op_of[entry]
                    op = ops[i]
                    if unseen_rank[i] >= 0:
                        allowed, new_state = unseen_rank[i] == unseen_used, UNSEEN
                    else:
                        allowed, new_state = _step(op, state)
                    if allowed and (op.known or (new_state != state and not (after_unknown and op.kind == "put"))):
                        nk = kmask | bit[i] if op.known else kmask
                        nu = umask if op.known else umask | bit[i]
                        if self._fresh(cache, nk, new_state, nu, not op.known):
                            self.states += 1
                            if self.states > self.max_states:
                                raise _Budget(f"explored {self.max_states} configurations")
                            if self.states % 4096 == 0 and time.monotonic() > self.deadline:
                                raise _Budget("time limit reached")
                            stack.append((entry, state, kmask, umask, after_unknown, unseen_used))
                            state, kmask, umask, after_unknown = new_state, nk, nu, not op.known
                            unseen_used += unseen_rank[i] >= 0
                            count += op.known
                            self._lift(entry)
                            entry = nxt[0]
                            continue
                    entry = nxt[entry]
                    continue
                # A return event (an unknown op's return cannot be met before
                # every completed op is linearized): back up.
                if count > self.best_count and entry != -1:
                    self._note_best(count, state, ops[op_of[entry]], stack)
                if not stack:
                    return KeyResult(self.key, "fail", self._explain(), self.states)
                entry, state, kmask, umask, after_unknown, unseen_used = stack.pop()
                count -= ops[op_of[entry]].known
                self._unlift(entry)
                entry = nxt[entry]
        except _Budget as exc:
            return KeyResult(
                self.key, "unknown",
                f"key {self.key!r}: gave up after {self.states} configurations ({exc}); "
                f"{self.n_known} completed and {self.n_unknown} unknown-outcome operations",
                self.states,
            )
        path = [ops[op_of[frame[0]]] for frame in stack]
        return KeyResult(self.key, "ok", f"key {self.key!r}: linearizable", self.states, path)

    @staticmethod
    def _fresh(cache: dict, kmask: int, state: Any, umask: int, after_unknown: bool) -> bool:
        """Record a configuration; False when it (or one that dominates it) was explored."""
        for flag in ((False, True) if after_unknown else (False,)):
            prior = cache.get((kmask, state, flag))
            if prior is not None and any(p & ~umask == 0 for p in prior):
                return False
        cache.setdefault((kmask, state, after_unknown), []).append(umask)
        return True

    def _note_best(self, count: int, state: Any, blocked: Op, stack: list[tuple]) -> None:
        candidates = []
        node = self.next[0]
        while node != -1 and len(candidates) < 20:
            if self.is_call[node]:
                candidates.append(self.ops[self.op_of[node]])
            elif self.ops[self.op_of[node]] is blocked:
                break
            node = self.next[node]
        path = [self.ops[self.op_of[frame[0]]] for frame in stack[-8:]]
        self.best_count = count
        self.best = (count, state, blocked, candidates, path, len(stack))

    # -- counterexample -----------------------------------------------------
    def _explain(self) -> str:
        assert self.best is not None
        count, state, blocked, candidates, path, depth = self.best
        t0 = min(o.invoke_time for o in self.ops)
        horizon = blocked.complete_time
        assert horizon is not None
        lines = [
            f"key {self.key!r} is not linearizable (times relative to {t0:.4f}).",
            f"At best {count} of {self.n_known} completed operations could be linearized"
            + (f" (plus {depth - count} with unknown outcome)" if depth > count else "")
            + f"; the register then holds {_show(state)}.",
            f"{blocked.describe(t0)} must take effect by {horizon - t0:.4f}, but no order works.",
        ]
        if path:
            lines.append("Last operations of that partial linearization:")
            lines += ["    " + o.describe(t0) for o in path]
        lines.append("Operations that could go next from there:")
        for op in candidates:
            allowed, _ = _step(op, state)
            reason = "allowed, but every continuation fails" if allowed else "impossible: " + _why_not(op, state)
            lines.append(f"    {op.describe(t0)}: {reason}")
        lo = min([o.invoke_time for o in candidates] + ([path[-1].invoke_time] if path else []) + [horizon])
        nearby = [
            o for o in self.ops
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


def _main(argv: list[str]) -> int:
    import json
    import sys

    if len(argv) != 2:
        print("usage: linearizability.py HISTORY.json", file=sys.stderr)
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    history = data["history"] if isinstance(data, dict) else data
    started = time.monotonic()
    result = check_detailed(history)
    print(result.info)
    print(f"{result.status} in {time.monotonic() - started:.2f}s")
    return 0 if result.ok else 1


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv))

"""Multi-turn sessions: the seeded plan of each user's conversation and the history that grows turn by turn.

Why: real chat traffic resends the whole conversation each turn, so a server's prefix cache decides the time to
first token of later turns. A single-prompt workload cannot show that. This module is pure (no clock, no I/O):

- a *session source* says, for session ``sid``, how many turns it has, each new user message's length (or text),
  the answer length asked for, the think time after the previous answer, and whether it shares the system prompt
  (``SyntheticSessions``; ``ConversationSessions`` for ShareGPT-style files; ``loadgen.traces.sessions`` for
  traces with a session column). Everything is drawn from (seed, sid), so every driver and every worker process
  rebuilds the same sessions in any order;
- a ``Conversation`` holds one session's history (system prompt, user messages, answers) and turns it into the
  next turn's ``RequestSpec``: the history so far plus the new user message, as text (completions, Triton) and as
  a chat ``messages`` list (OpenAI chat). The history is resent verbatim (same text, same order), which is what a
  prefix cache can reuse. It is bounded by ``max_history`` tokens: past that the oldest user/answer pairs are
  dropped (the system prompt stays), which is also what changes the prefix;
- a ``SessionCursor`` is the small state machine every driver runs: when the next turn is due (the previous
  answer's end + think time, never before a trace's own time), the turn's spec and record, and the records of
  turns never sent (the run stopped, or an earlier turn failed: a failed turn ends its session).

Answers: the history keeps, for each answer, the text the server returned (``spec.answer``, filled by
``loadgen.codecs.answers`` for the backends that answer in text: OpenAI chat and completions, Triton HTTP and
gRPC), else text of the answer's actual token count (the server's count, else the client's), built from the same
word stream as prompts and keyed by the turn (a backend without text, or an answer that was empty). Either way
every later turn resends it verbatim.

Request numbering: turn ``t`` of session ``sid`` is request ``sid * stride + t`` (``stride`` = the most turns a
session of the source can have), so indices are unique and a session's turns sort together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from loadgen.core.records import STATUS_CANCELLED, STATUS_OK, RequestRecord, RequestSpec
from loadgen.core.sizes import SizeDist
from loadgen.core.units import parse_seconds
from loadgen.errors import UsageError

_SESSION_TAG = 0x53455353  # seeds of a session's draws, apart from the request sizes' streams
_ANSWER_BASE = 1 << 40  # builder indices of answer text, apart from user messages (which use the request index)
_SYSTEM_OWN_BASE = 1 << 41  # prefix groups of a session's own (unshared) system prompt
SHARED_SYSTEM_GROUP = 0
MAX_TURNS = 1000

NOT_SENT_STOPPED = "not sent: the run stopped before this turn of its session was due"
NOT_SENT_FAILED = "not sent: an earlier turn of this session failed, which ends the session"


# -- think time ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ThinkDist:
    """Think time between an answer and the next turn: ``0``, ``2s`` (constant), ``exp:2s`` (exponential with that
    mean) or ``uniform:1s,3s``."""

    kind: str  # fixed | exp | uniform
    a_s: float
    b_s: float = 0.0
    text: str = "0"

    def sample_ns(self, rng: np.random.Generator) -> int:
        if self.kind == "fixed":
            x = self.a_s
        elif self.kind == "exp":
            x = float(rng.exponential(self.a_s)) if self.a_s > 0 else 0.0
        else:
            x = float(rng.uniform(self.a_s, self.b_s))
        return int(round(x * 1e9))

    @property
    def mean_s(self) -> float:
        return (self.a_s + self.b_s) / 2 if self.kind == "uniform" else self.a_s


def parse_think(text: str, flag: str = "--session-think-time") -> ThinkDist:
    t = str(text).strip()
    kind, sep, rest = t.partition(":")
    try:
        if not sep:
            return ThinkDist("fixed", _nonneg(parse_seconds(t, flag), flag, t), text=t)
        if kind == "exp":
            return ThinkDist("exp", _nonneg(parse_seconds(rest, flag), flag, t), text=t)
        if kind == "uniform":
            a, _, b = rest.partition(",")
            lo, hi = parse_seconds(a, flag), parse_seconds(b, flag)
            if not 0 <= lo <= hi:
                raise UsageError(f"{flag} {t!r}: uniform:A,B needs 0 <= A <= B")
            return ThinkDist("uniform", lo, hi, text=t)
    except UsageError as err:
        if str(err).startswith(flag):
            raise
    raise UsageError(f"{flag} {t!r}: expected a duration (2s), exp:MEAN (exp:2s) or uniform:A,B (uniform:1s,3s)")


def _nonneg(v: float, flag: str, text: str) -> float:
    if v < 0:
        raise UsageError(f"{flag} {text!r}: a think time cannot be negative")
    return v


# -- what a session is -----------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Turn:
    """One turn as planned: the new user message and the answer length asked for."""

    user_tokens: int
    max_tokens: int
    think_ns: int = 0  # wait after the previous answer's end (turn 0: none)
    at_ns: int | None = None  # trace sessions: never before session start + at_ns
    user_text: str | None = None  # real text (a conversation file); else built of user_tokens tokens


@dataclass(frozen=True, slots=True)
class Session:
    session_id: int
    turns: tuple[Turn, ...]
    system_group: int | None = None  # the system prompt's prefix group (shared: SHARED_SYSTEM_GROUP); None: none
    system_tokens: int = 0
    system_text: str | None = None


class SyntheticSessions:
    """Sessions drawn from distributions: turns per session, user-message and answer lengths, think time, and a
    system prompt of ``system_tokens`` tokens that a share ``system_share`` of the sessions have in common (the
    others get one of the same length of their own)."""

    kind = "synthetic"

    def __init__(self, turns: SizeDist, user_tokens: SizeDist, answer_tokens: SizeDist, think: ThinkDist,
                 system_tokens: int = 0, system_share: float = 1.0, seed: int = 0) -> None:
        if system_tokens < 0 or not 0.0 <= system_share <= 1.0:
            raise UsageError("--session-system-tokens must be >= 0 and --session-system-share in 0..1")
        self.turns, self.user_tokens, self.answer_tokens, self.think = turns, user_tokens, answer_tokens, think
        self.system_tokens, self.system_share, self.seed = int(system_tokens), float(system_share), int(seed)
        self.stride = _max_of(turns)

    def session(self, sid: int) -> Session:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _SESSION_TAG, sid])))
        n = int(min(self.turns.sample(rng, 1)[0], self.stride))
        users = self.user_tokens.sample(rng, n)
        answers = self.answer_tokens.sample(rng, n)
        thinks = [0] + [self.think.sample_ns(rng) for _ in range(n - 1)]
        shared = rng.random() < self.system_share
        group = None
        if self.system_tokens:
            group = SHARED_SYSTEM_GROUP if shared else _SYSTEM_OWN_BASE + sid
        turns = tuple(Turn(int(u), int(a), t) for u, a, t in zip(users, answers, thinks, strict=True))
        return Session(sid, turns, group, self.system_tokens)

    def describe(self) -> str:
        sys_text = (f", a {self.system_tokens}-token system prompt shared by {self.system_share:.0%} of sessions"
                    if self.system_tokens else "")
        return (f"sessions: {self.turns.text} turns, user messages {self.user_tokens.text} tokens, "
                f"answers {self.answer_tokens.text} tokens, think time {self.think.text}{sys_text}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "turns": self.turns.to_dict(), "user_tokens": self.user_tokens.to_dict(),
                "answer_tokens": self.answer_tokens.to_dict(), "think_time": self.think.text,
                "system_tokens": self.system_tokens, "system_share": self.system_share, "seed": self.seed}


def _max_of(d: SizeDist) -> int:
    """The most turns ``d`` can draw (the index stride), bounded by ``MAX_TURNS``."""
    p = d.params
    if d.kind in ("fixed", "uniform", "choice"):
        top = int(max(p))
    else:
        top = MAX_TURNS
    if top > MAX_TURNS:
        raise UsageError(f"--session-turns {d.text!r}: at most {MAX_TURNS} turns per session")
    return max(1, top)


class ConversationSessions:
    """Sessions replaying recorded conversations (a ShareGPT-format file): session ``sid`` is conversation
    ``sid % len``; its user messages are the recorded ones, its answer lengths those of the recorded answers
    (word-level count, at least 1, capped at ``max_answer``)."""

    kind = "conversations"

    def __init__(self, conversations: list[tuple[str | None, list[tuple[str, int]]]], think: ThinkDist, seed: int,
                 source: str, count: Any = None) -> None:
        if not conversations:
            raise UsageError(f"{source}: no conversation with at least one user turn; give a ShareGPT-format file "
                             "whose conversations alternate human and gpt messages")
        self.conversations = conversations
        self.think, self.seed, self.source = think, int(seed), source
        self.stride = max(len(turns) for _sys, turns in conversations)
        self.count = count or (lambda text: len(text.split()))

    def session(self, sid: int) -> Session:
        system, turns = self.conversations[sid % len(self.conversations)]
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, _SESSION_TAG, sid])))
        out = []
        for k, (text, answer) in enumerate(turns):
            out.append(Turn(max(1, self.count(text)), answer, self.think.sample_ns(rng) if k else 0,
                            user_text=text))
        sys_tokens = self.count(system) if system else 0
        return Session(sid, tuple(out), SHARED_SYSTEM_GROUP if system else None, sys_tokens, system)

    def describe(self) -> str:
        n_turns = sum(len(t) for _s, t in self.conversations)
        return (f"sessions: {len(self.conversations)} conversations from {self.source} "
                f"({n_turns / len(self.conversations):.1f} turns on average), think time {self.think.text}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "source": self.source, "conversations": len(self.conversations),
                "think_time": self.think.text, "seed": self.seed}


# -- the history of one session -------------------------------------------------------------------------------
class Conversation:
    """One session's history, and the request each of its turns sends."""

    def __init__(self, session: Session, builder: Any, *, stride: int, seed: int = 0, max_history: int = 0,
                 chat: bool = False, min_tokens: bool = True) -> None:
        self.session = session
        self.builder = builder
        self.stride = stride
        self.seed = seed
        self.max_history = int(max_history)
        self.chat = chat
        self.min_tokens = min_tokens
        self.system: tuple[str, int] | None = None
        if session.system_group is not None and session.system_tokens:
            text = session.system_text
            if text is None:
                text, n = builder.build(session.system_tokens, 0, session.system_group, session.system_tokens)
            else:
                n = builder.count(text)
            self.system = (text, n)
        self.history: list[tuple[str, str, int]] = []  # (role, text, tokens): user and assistant messages
        self.trimmed = 0  # messages dropped to keep the history within max_history

    def index(self, turn: int) -> int:
        return self.session.session_id * self.stride + turn

    def request(self, turn: int) -> RequestSpec:
        """The spec of ``turn``: the history so far plus the new user message (added to the history)."""
        t = self.session.turns[turn]
        index = self.index(turn)
        if t.user_text is not None:
            text, n = t.user_text, self.builder.count(t.user_text)
        else:
            text, n = self.builder.build(t.user_tokens, index)
        self.history.append(("user", text, n))
        self._trim()
        parts = ([("system", *self.system)] if self.system else []) + self.history
        prompt = "\n".join(p[1] for p in parts)
        tokens = self.builder.count(prompt) if self.builder.method.startswith("tokenizer") else sum(p[2] for p in parts)
        params: dict[str, Any] = {}
        if self.chat:
            params["messages"] = [{"role": role, "content": txt} for role, txt, _n in parts]
        return RequestSpec(index=index, prompt=prompt, input_tokens=tokens, max_tokens=t.max_tokens,
                           min_tokens=t.max_tokens if self.min_tokens else None,
                           prefix_group=self.session.system_group, params=params, answer=[])

    def answer(self, turn: int, output_tokens: int, text: str | None = None) -> None:
        """Add the answer of ``turn`` to the history: the text the server returned when the backend gives text,
        else text of the answer's actual token count."""
        if text and text.strip():
            self.history.append(("assistant", text, self.builder.count(text)))
            return
        text, n = self.builder.build(max(1, int(output_tokens)), _ANSWER_BASE + self.index(turn))
        self.history.append(("assistant", text, n))

    def _trim(self) -> None:
        if self.max_history <= 0:
            return
        sys_n = self.system[1] if self.system else 0
        while len(self.history) > 1 and sys_n + sum(m[2] for m in self.history) > self.max_history:
            self.history.pop(0)
            self.trimmed += 1
            if self.history and self.history[0][0] == "assistant":  # keep whole user/answer pairs
                self.history.pop(0)
                self.trimmed += 1


class SessionCursor:
    """What a driver does with one session: when each turn is due, its spec and record, and what to record for
    turns never sent. Times are ns relative to the run's t0."""

    def __init__(self, conv: Conversation, start_ns: int, worker: int = 0) -> None:
        self.conv = conv
        self.start_ns = start_ns
        self.worker = worker
        self.turn = 0  # the next turn to send
        self.spec: RequestSpec | None = None  # the turn in flight (its ``answer`` list collects the text)
        self.last_end_ns = start_ns
        self.ended = False

    @property
    def n_turns(self) -> int:
        return len(self.conv.session.turns)

    @property
    def done(self) -> bool:
        return self.ended or self.turn >= self.n_turns

    def due_ns(self) -> int:
        """When the next turn goes: the previous answer's end plus its think time (a trace turn: not before its
        own time in the trace)."""
        t = self.conv.session.turns[self.turn]
        if self.turn == 0:
            return self.start_ns
        due = self.last_end_ns + t.think_ns
        if t.at_ns is not None:
            due = max(due, self.start_ns + t.at_ns)
        return due

    def begin(self, scheduled_ns: int) -> tuple[RequestSpec, RequestRecord]:
        spec = self.spec = self.conv.request(self.turn)
        rec = RequestRecord(index=spec.index, scheduled_ns=scheduled_ns, input_tokens=spec.input_tokens,
                            max_tokens=spec.max_tokens, worker=self.worker)
        rec.session_id = self.conv.session.session_id
        rec.turn = self.turn
        return spec, rec

    def finish(self, rec: RequestRecord, now_ns: int) -> bool:
        """The turn's record is final: keep its answer (True), or say the session must end (a failed or
        cancelled turn: False; the driver then records the rest with ``unsent(..., NOT_SENT_FAILED)``)."""
        self.turn += 1
        self.last_end_ns = rec.end_ns if rec.end_ns is not None else now_ns
        if rec.status != STATUS_OK:
            return False
        answer = "".join(self.spec.answer) if self.spec is not None and self.spec.answer else None
        self.conv.answer(rec.turn if rec.turn is not None else self.turn - 1, rec.output_tokens, answer)
        return True

    def unsent(self, now_ns: int, reason: str) -> list[RequestRecord]:
        """Records (cancelled, never issued) of the turns not sent, from the next one on; the session ends."""
        out = []
        s = self.conv.session
        for k in range(self.turn, self.n_turns):
            t = s.turns[k]
            rec = RequestRecord(index=self.conv.index(k), scheduled_ns=now_ns, input_tokens=t.user_tokens,
                                max_tokens=t.max_tokens, worker=self.worker, status=STATUS_CANCELLED, error=reason)
            rec.session_id, rec.turn = s.session_id, k
            out.append(rec)
        self.turn = self.n_turns
        self.ended = True
        return out


@dataclass
class SessionSetup:
    """What a driver needs beyond the source to run sessions (from the scenario)."""

    source: Any  # SyntheticSessions | ConversationSessions | TraceSessions: session(sid) -> Session; stride
    builder: Any  # a PromptBuilder
    seed: int = 0
    max_history: int = 0
    chat: bool = False
    min_tokens: bool = True
    max_sessions: int | None = None  # closed loop: sessions in all (None: until the duration)

    def cursor(self, sid: int, start_ns: int, worker: int = 0) -> SessionCursor:
        conv = Conversation(self.source.session(sid), self.builder, stride=self.source.stride, seed=self.seed,
                            max_history=self.max_history, chat=self.chat, min_tokens=self.min_tokens)
        return SessionCursor(conv, start_ns, worker)

    def spec(self, index: int) -> RequestSpec:
        """A stand-in spec for code that asks the plan's source for one (not used to send)."""
        sid, turn = divmod(index, self.source.stride)
        session = self.source.session(sid)
        t = session.turns[min(turn, len(session.turns) - 1)]
        return RequestSpec(index=index, prompt="", input_tokens=t.user_tokens, max_tokens=t.max_tokens)

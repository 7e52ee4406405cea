"""Plan a level of multi-turn sessions (``[session]``): when sessions start, and what each one says.

Sessions start like requests do elsewhere: at the offsets of an arrival process (``--arrival``/``--rate``, with
``--duration`` or ``--requests`` counting sessions), at a trace's own session start times (``--trace`` with
``--session-key``), or, in a closed loop, as soon as one of ``--concurrency`` users is free (``--requests``:
sessions in all). The turns inside a session are not scheduled up front: each goes when the previous answer has
ended plus the think time (``loadgen.core.sessions.SessionCursor``), in every driver.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from loadgen.errors import UsageError
from loadgen.scenario.model import Scenario


def session_setup(sc: Scenario, source: Any) -> Any:
    from loadgen.core.prompts import PromptBuilder
    from loadgen.core.sessions import SessionSetup

    return SessionSetup(source=source, builder=PromptBuilder(tokenizer=sc.workload.tokenizer, seed=sc.load.seed),
                        seed=sc.load.seed, max_history=sc.session.max_history,
                        chat=sc.target.backend == "openai-chat", min_tokens=sc.target.min_tokens,
                        max_sessions=sc.load.requests)


def session_source(sc: Scenario) -> Any:
    """The session source of the scenario (synthetic or a conversation file); trace sessions: ``plan_sessions``."""
    from loadgen.core.prompts import PromptBuilder
    from loadgen.core.sessions import ConversationSessions, SyntheticSessions, parse_think
    from loadgen.core.sizes import parse_size

    s = sc.session
    think = parse_think(s.think_time)
    if s.conversations:
        from loadgen.traces.conversations import read_conversations

        counter = PromptBuilder(tokenizer=sc.workload.tokenizer, seed=sc.load.seed)
        answer = parse_size(s.answer_tokens, "--session-answer-tokens")
        convs = read_conversations(s.conversations, counter.count, default_answer=max(1, round(answer.mean)))
        return ConversationSessions(convs, think, sc.load.seed, s.conversations, count=counter.count)
    return SyntheticSessions(parse_size(s.turns or "1", "--session-turns"),
                             parse_size(s.user_tokens, "--session-user-tokens"),
                             parse_size(s.answer_tokens, "--session-answer-tokens"), think,
                             system_tokens=s.system_tokens, system_share=s.system_share, seed=sc.load.seed)


def plan_sessions(sc: Scenario, arrival_spec: Any) -> dict[str, Any]:
    """The level's ``LevelPlan`` fields (``plan.py`` builds it; ``arrival_spec`` is its function): the session
    starts (None: a closed loop of users) and the ``SessionSetup``."""
    s = sc.session
    if s.key:
        from loadgen.traces.sessions import trace_sessions

        offsets, source, describe = trace_sessions(sc)
        setup = session_setup(sc, source)
        span = float(offsets[-1]) / 1e9 if len(offsets) > 1 else 0.0
        rate = len(offsets) / span if span > 0 else None
        plan = dict(offsets=offsets, source=setup, target_rate=rate,
                    arrival={"kind": "trace-sessions", "sessions": len(offsets)}, describe=describe, replay=True)
    else:
        setup = session_setup(sc, session_source(sc))
        spec = arrival_spec(sc).validate()
        offsets = None
        if spec.is_open_loop:
            from loadgen.core.arrivals import build_offsets

            offsets = build_offsets(spec)
            if len(offsets) == 0:
                raise UsageError("the schedule is empty: --duration is too short for --rate (no session started "
                                 "inside it)")
        plan = dict(offsets=offsets, source=setup, target_rate=sc.load.rate, arrival=asdict(spec),
                    describe=[setup.source.describe()])
    plan["sessions"] = setup
    plan["extra"] = {"sessions": {**setup.source.to_dict(), "max_history_tokens": s.max_history,
                                  "index_stride": setup.source.stride}}
    return plan

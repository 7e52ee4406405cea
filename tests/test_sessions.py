"""Multi-turn sessions without a server: the seeded planner, the history each turn resends, the cursor's timing
and end states, the conversation and trace sources with their bad input, the asyncio session loop on a fake clock,
and the per-turn summary."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest

from loadgen.core.clock import FakeClock
from loadgen.core.prompts import PromptBuilder, approx_token_count
from loadgen.core.records import STATUS_CANCELLED, STATUS_ERROR, STATUS_OK, RequestRecord, RequestSpec
from loadgen.core.sessions import (
    NOT_SENT_FAILED,
    NOT_SENT_STOPPED,
    SHARED_SYSTEM_GROUP,
    Conversation,
    Session,
    SessionSetup,
    SyntheticSessions,
    Turn,
    parse_think,
)
from loadgen.core.sizes import parse_size
from loadgen.core.summary import LevelContext, load_records, summarize
from loadgen.errors import UsageError
from loadgen.level.plan import plan_level
from loadgen.level.recorder import Recorder
from loadgen.runner.loop import LoopSettings
from loadgen.runner.sessions import SessionLoop
from loadgen.scenario.check import build, resolve
from loadgen.traces.conversations import read_conversations
from loadgen.traces.readers import TraceRow
from loadgen.traces.sessions import chain_groups

MS = 1_000_000


def synthetic(turns="3", user="20", answer="8", think="0", system=0, share=1.0, seed=1) -> SyntheticSessions:
    return SyntheticSessions(parse_size(turns, "t"), parse_size(user, "u"), parse_size(answer, "a"),
                             parse_think(think), system, share, seed)


def ok(rec: RequestRecord, out_tokens: int, end_ns: int) -> RequestRecord:
    rec.issued_ns, rec.end_ns, rec.status = rec.scheduled_ns, end_ns, STATUS_OK
    rec.chunk_offsets_us, rec.chunk_tokens = [1], [out_tokens]
    return rec


# -- the planner ---------------------------------------------------------------------------------------------
def test_sessions_are_seeded_per_session_and_follow_their_distributions():
    a = synthetic("uniform:2,6", "uniform:10,30", think="exp:2s", system=32, share=0.5)
    b = synthetic("uniform:2,6", "uniform:10,30", think="exp:2s", system=32, share=0.5)
    assert a.session(7) == b.session(7)  # any order, any process: the same session
    assert a.session(7) != a.session(8)
    sessions = [a.session(i) for i in range(400)]
    counts = [len(s.turns) for s in sessions]
    assert min(counts) == 2 and max(counts) == 6 and a.stride == 6
    assert all(t.think_ns == 0 for s in sessions for t in s.turns[:1])
    thinks = [t.think_ns for s in sessions for t in s.turns[1:]]
    assert 1.6e9 < np.mean(thinks) < 2.4e9  # exponential, mean 2 s
    shared = sum(s.system_group == SHARED_SYSTEM_GROUP for s in sessions)
    assert 150 < shared < 250  # half of them share the system prompt; the others have one of their own
    assert len({s.system_group for s in sessions if s.system_group != SHARED_SYSTEM_GROUP}) == 400 - shared


def test_think_time_forms_and_bad_ones():
    assert parse_think("0").sample_ns(None) == 0
    assert parse_think("250ms").sample_ns(None) == 250 * MS
    u = parse_think("uniform:1s,3s")
    rng = np.random.default_rng(0)
    xs = [u.sample_ns(rng) for _ in range(200)]
    assert 1e9 <= min(xs) and max(xs) <= 3e9
    for bad in ("soon", "exp:", "uniform:3s,1s", "-1s"):
        with pytest.raises(UsageError, match="--session-think-time"):
            parse_think(bad)


# -- the history -------------------------------------------------------------------------------------------
def test_each_turn_resends_the_history_verbatim_with_the_answers_actual_length():
    src = synthetic("4", "20", "8", system=12)
    conv = Conversation(src.session(3), PromptBuilder(seed=1), stride=src.stride, chat=True)
    prev = None
    answers = [5, 9, 1]
    for k in range(4):
        spec = conv.request(k)
        assert spec.index == 3 * 4 + k and spec.max_tokens == 8
        assert spec.input_tokens == approx_token_count(spec.prompt)
        roles = [m["role"] for m in spec.params["messages"]]
        assert roles == ["system"] + ["user", "assistant"] * k + ["user"]
        assert "\n".join(m["content"] for m in spec.params["messages"]) == spec.prompt
        if prev is not None:
            # the earlier prompt, then the answer the server gave (its real token count), then the new message
            assert spec.prompt.startswith(prev.prompt + "\n")
            answer = spec.params["messages"][-2]["content"]
            assert approx_token_count(answer) == answers[k - 1]
            assert spec.input_tokens == prev.input_tokens + answers[k - 1] + 20
        if k < 3:
            conv.answer(k, answers[k])
        prev = spec


def test_the_history_cap_drops_the_oldest_pairs_and_keeps_the_system_prompt():
    src = synthetic("10", "50", "50", system=30)
    conv = Conversation(src.session(0), PromptBuilder(seed=1), stride=src.stride, max_history=300)
    sizes, first_lines = [], set()
    for k in range(10):
        spec = conv.request(k)
        first_lines.add(spec.prompt.split("\n")[0])
        sizes.append(spec.input_tokens)
        conv.answer(k, 50)
    assert len(first_lines) == 1  # the system prompt always leads
    assert sizes[:3] == [80, 180, 280] and max(sizes) <= 300 and sizes[3:] == [280] * 7
    assert conv.trimmed == 2 * 7  # one user/answer pair dropped per later turn


# -- the cursor ---------------------------------------------------------------------------------------------
def test_a_turn_is_due_at_the_answers_end_plus_think_time_and_never_before_its_trace_time():
    session = Session(0, (Turn(10, 4), Turn(10, 4, think_ns=300 * MS), Turn(10, 4, think_ns=0, at_ns=5000 * MS)))
    setup = SessionSetup(_Fixed(session), PromptBuilder(seed=0))
    cur = setup.cursor(0, start_ns=100 * MS)
    assert cur.due_ns() == 100 * MS
    spec, rec = cur.begin(cur.due_ns())
    assert (rec.session_id, rec.turn, rec.index) == (0, 0, 0)
    assert cur.finish(ok(rec, 4, 700 * MS), 700 * MS)
    assert cur.due_ns() == 1000 * MS  # answer end 700 ms + think 300 ms
    spec, rec = cur.begin(cur.due_ns())
    assert cur.finish(ok(rec, 4, 1200 * MS), 1200 * MS)
    assert cur.due_ns() == 5100 * MS  # the trace's own time (start + 5 s) is later than the answer's end


def test_a_failed_turn_ends_its_session_and_the_rest_are_recorded_as_never_sent():
    setup = SessionSetup(synthetic("4"), PromptBuilder(seed=0))
    cur = setup.cursor(2, 0)
    _spec, rec = cur.begin(0)
    cur.finish(ok(rec, 8, 50 * MS), 50 * MS)
    _spec, rec = cur.begin(cur.due_ns())
    rec.status, rec.error_kind, rec.issued_ns = STATUS_ERROR, "http_status", 50 * MS
    assert cur.finish(rec, 60 * MS) is False
    rest = cur.unsent(60 * MS, NOT_SENT_FAILED)
    assert [(r.turn, r.status, r.issued_ns, r.error) for r in rest] == [
        (2, STATUS_CANCELLED, None, NOT_SENT_FAILED), (3, STATUS_CANCELLED, None, NOT_SENT_FAILED)]
    assert cur.done and cur.unsent(70 * MS, NOT_SENT_STOPPED) == []


class _Fixed:
    stride = 3

    def __init__(self, session: Session) -> None:
        self._s = session

    def session(self, sid: int) -> Session:
        return self._s


# -- the asyncio session loop on a fake clock -----------------------------------------------------------------
class TurnBackend:
    """Answers ``max_tokens`` tokens after ``ttft_ns`` + ``itl_ns`` each; remembers every prompt; fails turn
    ``fail_turn`` of every session."""

    def __init__(self, clock: FakeClock, ttft_ns: int = 20 * MS, itl_ns: int = 5 * MS, fail_turn: int | None = None):
        self.clock, self.ttft_ns, self.itl_ns, self.fail_turn = clock, ttft_ns, itl_ns, fail_turn
        self.prompts: dict[int, str] = {}

    async def send(self, spec, rec: RequestRecord, t0: int) -> None:
        c = self.clock
        rec.issued_ns = c.now_ns() - t0
        self.prompts[spec.index] = spec.prompt
        await c.sleep_until(c.now_ns() + self.ttft_ns)
        if rec.turn == self.fail_turn:
            rec.end_ns, rec.status, rec.error_kind = c.now_ns() - t0, STATUS_ERROR, "http_status"
            return
        issued = rec.issued_ns + t0
        for k in range(spec.max_tokens):
            if k:
                await c.sleep_until(c.now_ns() + self.itl_ns)
            rec.chunk_offsets_us.append((c.now_ns() - issued) // 1000)
            rec.chunk_tokens.append(1)
        rec.end_ns, rec.status = c.now_ns() - t0, STATUS_OK


async def run_loop(tmp_path, settings, setup, backend, clock, name="s.jsonl"):
    from tests.test_loop import drive

    rec = Recorder(tmp_path / name)
    loop = SessionLoop(backend, setup, rec, clock, settings)
    out = await drive(clock, loop.run())
    rec.close()
    return out, [RequestRecord.from_dict(orjson.loads(x)) for x in (tmp_path / name).read_bytes().splitlines()]


async def test_session_loop_sends_turns_after_answers_and_think_time(tmp_path):
    clock = FakeClock(auto_advance=False)
    backend = TurnBackend(clock)
    setup = SessionSetup(synthetic("3", "20", "4", think="100ms"), PromptBuilder(seed=1), max_sessions=4)
    offsets = np.array([0, 10, 20, 30], dtype=np.int64) * MS
    out, recs = await run_loop(tmp_path, LoopSettings(offsets_ns=offsets, start_lead_ns=0), setup, backend, clock)
    assert out.issued == 12 and len(recs) == 12 and all(r.status == STATUS_OK for r in recs)
    by = {(r.session_id, r.turn): r for r in recs}
    for sid in range(4):
        assert by[(sid, 0)].scheduled_ns == offsets[sid]
        for k in (1, 2):
            prev, cur = by[(sid, k - 1)], by[(sid, k)]
            assert cur.scheduled_ns == prev.end_ns + 100 * MS  # answer end (35 ms after issue) + think time
            assert abs(cur.issued_ns - cur.scheduled_ns) <= 200_000
            assert backend.prompts[cur.index].startswith(backend.prompts[prev.index])
            assert cur.input_tokens == prev.input_tokens + 4 + 20
    assert out.issue_end_ns >= by[(3, 2)].issued_ns  # issuing ends with the last turn, not the last start
    ctx = LevelContext(name="s", target_rate=None, run_end_ns=out.issue_end_ns, min_completed=1)
    summary = summarize(load_records(tmp_path / "s.jsonl"), ctx)
    turns = summary["sessions"]["by_turn"]
    assert summary["sessions"]["sessions"] == 4
    assert [t["turns"] for t in turns] == [4, 4, 4] and [t["input_tokens_mean"] for t in turns] == [20, 44, 68]
    assert all(abs(t["ttft_p50_ms"] - 20.0) < 0.01 for t in turns)


async def test_closed_loop_users_run_sessions_back_to_back_and_a_failure_ends_a_session(tmp_path):
    clock = FakeClock(auto_advance=False)
    backend = TurnBackend(clock, fail_turn=1)
    setup = SessionSetup(synthetic("3", "10", "2"), PromptBuilder(seed=1), max_sessions=5)
    settings = LoopSettings(offsets_ns=None, concurrency=2, start_lead_ns=0)
    out, recs = await run_loop(tmp_path, settings, setup, backend, clock)
    assert sorted({r.session_id for r in recs}) == list(range(5)) and len(recs) == 15
    assert out.issued == 10  # turns 0 and 1 of each session; turn 2 never went
    for r in recs:
        want = {0: (STATUS_OK, None), 1: (STATUS_ERROR, None), 2: (STATUS_CANCELLED, NOT_SENT_FAILED)}[r.turn]
        assert (r.status, r.error if r.turn == 2 else None) == want
    summary = summarize(load_records(tmp_path / "s.jsonl"), LevelContext(name="c", min_completed=1))
    assert summary["sessions"]["sessions_ended_by_failure"] == 5
    assert [t["not_sent"] for t in summary["sessions"]["by_turn"]] == [0, 0, 5]


async def test_turns_left_when_the_drain_ends_are_recorded_as_not_sent(tmp_path):
    clock = FakeClock(auto_advance=False)
    backend = TurnBackend(clock)
    setup = SessionSetup(synthetic("4", "10", "2", think="1s"), PromptBuilder(seed=1))
    settings = LoopSettings(offsets_ns=np.array([0], dtype=np.int64), start_lead_ns=0, drain_timeout_s=0.5)
    out, recs = await run_loop(tmp_path, settings, setup, backend, clock)
    assert [(r.turn, r.status) for r in sorted(recs, key=lambda r: r.turn)] == [
        (0, STATUS_OK), (1, STATUS_CANCELLED), (2, STATUS_CANCELLED), (3, STATUS_CANCELLED)]
    assert all(r.issued_ns is None and r.error == NOT_SENT_STOPPED for r in recs if r.turn)
    assert out.issued == 1


# -- sources and bad input ------------------------------------------------------------------------------------
def _sharegpt(tmp_path, convs) -> str:
    path = tmp_path / "conv.json"
    path.write_text(json.dumps([{"id": f"c{i}", "conversations": c} for i, c in enumerate(convs)]))
    return f"sharegpt:{path}"


def test_conversations_give_user_messages_and_answer_lengths(tmp_path):
    h = lambda v: {"from": "human", "value": v}  # noqa: E731
    g = lambda v: {"from": "gpt", "value": v}  # noqa: E731
    setting = _sharegpt(tmp_path, [
        [{"from": "system", "value": "be brief"}, h("hello there"), g("one two three"), h("and then"), g("four")],
        [h("only a question")],
        [],
    ])
    convs = read_conversations(setting, approx_token_count, default_answer=7)
    assert convs == [("be brief", [("hello there", 3), ("and then", 1)]), (None, [("only a question", 7)])]
    sc = resolve(build({"session": {"conversations": setting}, "load": {"concurrency": 1, "requests": 2}}))
    plan = plan_level(sc)
    conv = Conversation(plan.sessions.source.session(0), PromptBuilder(seed=0), stride=plan.sessions.source.stride)
    assert conv.request(0).prompt == "be brief\nhello there"
    conv.answer(0, 3)
    second = conv.request(1).prompt
    assert second.startswith("be brief\nhello there\n") and second.endswith("\nand then")
    assert plan.total == 3  # the progress bar's total: the turns of the 2 sessions, not the 2 sessions


def test_a_plan_of_sessions_counts_its_turns_for_the_progress_bar():
    sc = resolve(build({"session": {"turns": "uniform:2,5"}, "load": {"rate": 4.0, "duration": 10, "seed": 3}}))
    plan = plan_level(sc)
    turns = [len(plan.sessions.source.session(sid).turns) for sid in range(len(plan.offsets))]
    assert plan.total == sum(turns) and len(set(turns)) > 1 and plan.total > len(plan.offsets)
    timed = plan_level(resolve(build({"session": {"turns": "3"}, "load": {"concurrency": 2, "duration": 5}})))
    assert timed.total is None  # sessions bounded by time only: the bar follows the duration


@pytest.mark.parametrize("convs, message", [
    ([[{"from": "gpt", "value": "hi"}]], "gpt message before any human"),
    ([[{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]], "two human messages in a row"),
    ([[]], "no conversation with a human turn"),
    ([[{"from": "robot", "value": "a"}]], "unknown speaker"),
])
def test_bad_conversation_files_are_one_line_errors(tmp_path, convs, message):
    with pytest.raises(UsageError, match=message):
        read_conversations(_sharegpt(tmp_path, convs), approx_token_count)


def _jsonl(tmp_path, rows) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_session_column_groups_trace_rows_and_turns_out_of_order_are_refused(tmp_path):
    rows = [{"t": 0, "i": 100, "o": 10, "conv": "a", "n": 0}, {"t": 1, "i": 50, "o": 5, "conv": "b", "n": 0},
            {"t": 3, "i": 150, "o": 10, "conv": "a", "n": 1}, {"t": 4, "i": 80, "o": 5, "conv": "b", "n": 1}]
    path = _jsonl(tmp_path, rows)
    base = {"trace": {"path": path, "format": "jsonl", "columns": "time=t,input=i,output=o"},
            "session": {"key": "conv", "turn_column": "n"}}
    plan = plan_level(resolve(build(base)))
    assert list(plan.offsets) == [0, 1_000_000_000]
    s = plan.sessions.source.session(0)
    assert [(t.user_tokens, t.max_tokens, t.at_ns) for t in s.turns] == [(100, 10, None), (40, 10, 3_000_000_000)]
    with pytest.raises(UsageError, match="no such key"):
        plan_level(resolve(build({**base, "session": {"key": "user"}})))
    rows[2]["n"] = 0
    _jsonl(tmp_path, rows)
    with pytest.raises(UsageError, match="turns out of order"):
        plan_level(resolve(build(base)))


def test_mooncake_chains_that_extend_turn_by_turn_are_one_session():
    rows = [TraceRow(0, 1000, 5, (1, 2)), TraceRow(1, 900, 5, (7, 8)), TraceRow(2, 1500, 5, (1, 9, 10)),
            TraceRow(3, 2100, 5, (1, 9, 11, 12, 13)), TraceRow(4, 600, 5, (7, 8))]
    # row 2 extends row 0's full block (1); row 3 extends row 2's full blocks (1, 9); row 4 has the same blocks
    # as row 1 but a shorter prompt: a request sharing a prefix, not a next turn
    groups = chain_groups(rows)
    assert [[r.time_ns for r in g] for g in groups] == [[0, 2, 3], [1], [4]]


def test_the_public_mooncake_trace_has_shared_prefixes_but_no_growing_chains():
    from loadgen.traces.readers import open_trace

    rows = list(open_trace("/work/shared/traces/mooncake/synthetic_trace.jsonl"))
    groups = chain_groups(rows)
    assert sum(len(g) for g in groups) == len(rows) == 3993
    assert all(g[i].input_tokens > g[i - 1].input_tokens for g in groups for i in range(1, len(g)))


@pytest.mark.parametrize("mapping, message", [
    ({"session": {"key": "conv"}, "load": {"rate": 1, "requests": 2}}, "add --trace FILE"),
    ({"session": {"turns": "3", "conversations": "sharegpt:/x.json"}, "load": {"rate": 1, "requests": 2}},
     "choose one source"),
    ({"session": {"think_time": "2s"}, "load": {"rate": 1, "requests": 2}}, "applies to multi-turn sessions"),
    ({"session": {"turns": "3"}, "load": {"rate": 1, "requests": 2, "on_late": "drop"}}, "--on-late drop"),
    ({"session": {"turns": "abc"}, "load": {"rate": 1, "requests": 2}}, "--session-turns"),
    ({"session": {"conversations": "sharegpt:/no/such.json"}, "load": {"rate": 1, "requests": 2}}, "no such file"),
])
def test_bad_session_settings_are_refused_before_anything_starts(mapping, message):
    with pytest.raises(UsageError, match=message):
        resolve(build(mapping), check_paths=False)


# -- the answer's text ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, body, want", [
    ("openai-chat", b'data: {"choices":[{"delta":{"role":"assistant"}}]}\n\ndata: {"choices":[{"delta":'
                    b'{"content":" blue"}}]}\n\ndata: {"choices":[{"delta":{"reasoning_content":"hmm",'
                    b'"content":" sky"}}]}\n\ndata: [DONE]\n\n', " blue sky"),
    ("openai-completions", b'data: {"choices":[{"text":" one"}]}\n\ndata: {"choices":[{"text":" two"}]}\n\n'
                           b'data: {"choices":[],"usage":{"completion_tokens":2}}\n\ndata: [DONE]\n\n', " one two"),
    ("triton-http", b'data: {"text_output":" the","num_output_tokens":1}\n\ndata: {"text_output":[" of and"]}\n\n',
     " the of and"),
    ("triton-generate", b'{"text_output":"PROMPT the end"}', " the end"),
    ("kserve-infer", b'{"outputs":[{"name":"text_output","data":[" done"]}]}', " done"),
])
def test_the_answer_text_is_read_from_each_protocol(kind, body, want):
    from loadgen.codecs.answers import TEXT_KINDS, answer_text

    # split mid-event: the text does not depend on how the body arrived
    assert answer_text(TEXT_KINDS[kind], [body[:17], body[17:]], prompt="PROMPT") == want


def test_an_answer_codec_keeps_the_codec_figures_and_fills_the_spec():
    from loadgen.codecs.answers import AnswerCodec
    from loadgen.codecs.openai import OpenAICodec

    spec_plain = RequestSpec(index=0, prompt="p", input_tokens=1, max_tokens=2)
    spec_session = RequestSpec(index=1, prompt="p", input_tokens=1, max_tokens=2, answer=[])
    codec = AnswerCodec(OpenAICodec("m", chat=False), "openai-completions")
    assert codec.path == "/v1/completions" and codec.body(spec_plain) == OpenAICodec("m", chat=False).body(spec_plain)
    body = b'data: {"choices":[{"text":" hi"}]}\n\ndata: {"choices":[{"text":" there"}]}\n\ndata: [DONE]\n\n'
    plain, session = codec.parser(spec_plain), codec.parser(spec_session)
    assert [plain.feed(body), session.feed(body)] == [2, 2]
    assert plain.finish().completed and session.finish().completed
    assert spec_session.answer == [" hi there"] and spec_plain.answer is None


def test_the_history_keeps_the_servers_text_when_there_is_one():
    src = synthetic("2", "5", "3")
    conv = Conversation(src.session(0), PromptBuilder(seed=1), stride=src.stride)
    first = conv.request(0)
    conv.answer(0, 99, " sky is blue")  # the text wins over the count
    second = conv.request(1)
    assert second.prompt == first.prompt + "\n sky is blue\n" + second.prompt.rsplit("\n", 1)[1]
    assert second.input_tokens == 5 + 3 + 5

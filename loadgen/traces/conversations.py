"""Multi-turn conversations from a ShareGPT-format file, for ``--session-conversations sharegpt:PATH``.

The format: a JSON array of ``{"id": ..., "conversations": [{"from": "human"|"gpt"|"system", "value": text}]}``.
A conversation is an optional leading system message, then human and gpt messages in turn, starting with a human
one. Each human message is one turn's user message; the gpt message after it gives that turn's answer length (its
word-level token count; the last human message without an answer asks for ``default_answer`` tokens). The answers
actually sent in the history are the server's, not the recorded ones: the recording only sets the lengths.

Bad input is one line (exit 2), before anything starts: a file that is not such an array, a conversation out of
order (two human messages in a row, a gpt message first), a file with no conversation that has a human turn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from loadgen.errors import UsageError

MAX_ANSWER_TOKENS = 1024  # a recorded answer longer than this asks for this many tokens
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
         "bard": "assistant", "bing": "assistant", "system": "system"}

Conversations = list[tuple[str | None, list[tuple[str, int]]]]


def conversation_path(setting: str) -> str:
    """``sharegpt:PATH`` or a plain PATH."""
    kind, sep, rest = setting.partition(":")
    return rest if sep and kind == "sharegpt" else setting


def read_conversations(setting: str, count: Any, default_answer: int = 64,
                       flag: str = "--session-conversations") -> Conversations:
    """The conversations of the file: ``(system text or None, [(user text, answer tokens), ...])`` each."""
    path = conversation_path(setting)
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{flag} {setting!r}: no such file; give sharegpt:PATH of a ShareGPT-format JSON file")
    try:
        data = orjson.loads(p.read_bytes())
    except orjson.JSONDecodeError as err:
        raise UsageError(f"{flag} {path}: not JSON ({err}); expected a ShareGPT-format array of conversations") \
            from None
    if not isinstance(data, list):
        raise UsageError(f"{flag} {path}: expected a JSON array of {{\"conversations\": [...]}} objects")
    out: Conversations = []
    for pos, item in enumerate(data):
        msgs = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(msgs, list) or not msgs:
            continue
        ident = item.get("id", pos)
        conv = _one(msgs, f"{flag} {path}: conversation {ident!r}", count, default_answer)
        if conv[1]:
            out.append(conv)
    if not out:
        raise UsageError(f"{flag} {path}: no conversation with a human turn; each needs a \"conversations\" list "
                         "of human and gpt messages")
    return out


def _one(msgs: list, where: str, count: Any, default_answer: int) -> tuple[str | None, list[tuple[str, int]]]:
    system: str | None = None
    turns: list[tuple[str, int]] = []
    pending: str | None = None  # a user message waiting for its answer
    for k, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("value"), str):
            raise UsageError(f"{where}, message {k}: expected {{\"from\": ..., \"value\": text}}")
        role = ROLES.get(str(m.get("from", "")).lower())
        if role is None:
            raise UsageError(f"{where}, message {k}: unknown speaker {m.get('from')!r}; expected human, gpt or "
                             "system")
        text = m["value"]
        if role == "system":
            if k != 0:
                raise UsageError(f"{where}, message {k}: a system message after the conversation started (turns "
                                 "out of order)")
            system = text or None
        elif role == "user":
            if pending is not None:
                raise UsageError(f"{where}, message {k}: two human messages in a row (turns out of order); "
                                 "human and gpt messages must alternate")
            pending = text if text.strip() else "?"
        else:
            if pending is None:
                raise UsageError(f"{where}, message {k}: a gpt message before any human one (turns out of "
                                 "order); a conversation starts with a human message")
            turns.append((pending, max(1, min(MAX_ANSWER_TOKENS, count(text)))))
            pending = None
    if pending is not None:
        turns.append((pending, default_answer))
    return system, turns

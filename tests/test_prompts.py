"""Prompts of exact token counts (word-level and real tokenizers), prefix sharing, and the request source."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from loadgen.core.prompts import (
    VOCABULARY,
    PromptBuilder,
    RequestSource,
    approx_token_count,
    load_tokenizer,
)
from loadgen.core.sizes import parse_size
from loadgen.errors import UsageError

SIZES = list(range(1, 130)) + [255, 256, 511, 1000, 2047, 4096]


def test_approx_token_count_definition():
    assert approx_token_count("") == 0
    assert approx_token_count("hello world") == 2
    assert approx_token_count("Hello, world!") == 4
    assert approx_token_count("it's 3.14") == 6  # it ' s 3 . 14
    assert approx_token_count("  spaced\tout\nwords  ") == 3
    assert approx_token_count("snake_case x2") == 2  # underscores and digits are word characters
    assert approx_token_count("a-b") == 3


def test_vocabulary_is_plain_distinct_words():
    assert len(VOCABULARY) >= 1000
    assert len(set(VOCABULARY)) == len(VOCABULARY)
    assert all(re.fullmatch(r"[a-z]+", w) for w in VOCABULARY)


def test_word_level_counts_are_exact():
    b = PromptBuilder(seed=1)
    assert b.method == "word-level approximation (1 word = 1 token)"
    for n in SIZES:
        text, count = b.build(n, index=n)
        assert count == n
        assert approx_token_count(text) == n
        assert set(text.split()) <= set(VOCABULARY)


def test_prompts_are_reproducible_and_differ_per_request_and_seed():
    a, b = PromptBuilder(seed=3), PromptBuilder(seed=3)
    texts = [a.build(32, i)[0] for i in range(1000)]
    assert texts == [b.build(32, i)[0] for i in range(1000)]
    # No two requests share even their first 4 words (no accidental prefix-cache hits).
    assert len({" ".join(t.split()[:4]) for t in texts}) == 1000
    assert PromptBuilder(seed=4).build(32, 0)[0] != texts[0]
    # The words are spread over the vocabulary (chi-square of 64k draws over ~1,100 words).
    counts = np.bincount([VOCABULARY.index(w) for t in texts[:2000] for w in t.split()] +
                         [VOCABULARY.index(w) for i in range(1000, 3000) for w in a.build(16, i)[0].split()],
                         minlength=len(VOCABULARY))
    expected = counts.sum() / len(VOCABULARY)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = len(VOCABULARY) - 1
    assert abs(chi2 - dof) < 5 * np.sqrt(2 * dof)


def test_prefix_groups_share_exactly_the_prefix():
    b = PromptBuilder(seed=9)
    p = 40
    group7 = [b.build(n, i, prefix_group=7, prefix_tokens=p)[0].split() for i, n in enumerate([50, 64, 100, 41])]
    group8 = [b.build(n, 10 + i, prefix_group=8, prefix_tokens=p)[0].split() for i, n in enumerate([50, 64])]
    prefix7 = group7[0][:p]
    for words, n in zip(group7, [50, 64, 100, 41], strict=True):
        assert len(words) == n and words[:p] == prefix7
    assert group8[0][:p] == group8[1][:p] != prefix7
    # Within a group the part after the prefix is the request's own.
    assert group7[0][p:p + 5] != group7[1][p:p + 5]
    # Ungrouped requests do not share the group's prefix; a request shorter than the prefix is all prefix.
    assert b.build(50, 0)[0].split()[:p] != prefix7
    short, count = b.build(10, 99, prefix_group=7, prefix_tokens=p)
    assert count == 10 and short.split() == prefix7[:10]


def test_bad_build_arguments():
    b = PromptBuilder()
    for n in (0, -1, 2.5):
        with pytest.raises(UsageError):
            b.build(n, 0)
    with pytest.raises(UsageError):
        b.build(10, 0, prefix_group=None, prefix_tokens=5)


def test_tokenizer_path_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / "tokenizer.json"
    msg = str(pytest.raises(UsageError, PromptBuilder, str(missing)).value)
    assert "check the path" in msg and str(missing) in msg and "\n" not in msg
    # A folder without tokenizer.json is reported as the file it looked for.
    msg = str(pytest.raises(UsageError, PromptBuilder, str(tmp_path)).value)
    assert "tokenizer.json" in msg
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    msg = str(pytest.raises(UsageError, PromptBuilder, str(bad)).value)
    assert "cannot load" in msg and "\n" not in msg
    # Without the tokenizers package: the one-line fix.
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    msg = str(pytest.raises(UsageError, load_tokenizer, str(bad)).value)
    assert msg == "--tokenizer needs the 'tokenizers' package: pip install tokenizers"


class _ChunkCodec:
    """A toy subword tokenizer: a leading space plus up to 3 letters per token (the word 'water' is 2 tokens).

    Cutting its ids mid-word gives text that re-encodes to the same ids, like byte-level BPE. With
    ``whole_last_word`` the text's last word is always one token (its encoding depends on what follows, as real
    merges can), so cutting the ids in the middle of a word re-encodes to fewer tokens: the fitting has to notice
    that and fall back to adding words one at a time.
    """

    def __init__(self, whole_last_word: bool = False) -> None:
        self.pattern = re.compile(r" ?[a-z]{1,3}| |[^a-z ]")
        self.whole_last_word = whole_last_word
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []
        self.failed_cuts = 0

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.vocab[piece]

    def encode(self, text: str) -> list[int]:
        pieces = self.pattern.findall(text)
        if self.whole_last_word:
            while len(pieces) > 1 and not pieces[-1].startswith(" ") and pieces[-2][-1:].isalpha():
                pieces[-2:] = [pieces[-2] + pieces[-1]]
        return [self._id(p) for p in pieces]

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.pieces[i] for i in ids)
        if self.whole_last_word and len(self.encode(text)) != len(ids):
            self.failed_cuts += 1
        return text


@pytest.mark.parametrize("whole_last_word", [False, True])
def test_fitting_to_a_subword_tokenizer(whole_last_word):
    codec = _ChunkCodec(whole_last_word)
    b = PromptBuilder.with_codec(codec, "chunk3", seed=2)
    assert b.method == "tokenizer: chunk3"
    for n in list(range(1, 80)) + [333, 1024]:
        text, count = b.build(n, index=n)
        assert count == n and len(codec.encode(text)) == n
    assert (codec.failed_cuts > 10) == whole_last_word  # the fallback path was exercised
    # The word-level estimate would be wrong here: words average more than one token.
    text, _ = b.build(200, 1)
    assert approx_token_count(text) < 200
    # Prefix sharing holds at the text level with a tokenizer too.
    a, _ = b.build(90, 1, prefix_group=3, prefix_tokens=30)
    c, _ = b.build(120, 2, prefix_group=3, prefix_tokens=30)
    head = b.build(30, 5, prefix_group=3, prefix_tokens=30)[0]
    assert len(codec.encode(head)) == 30 and a.startswith(head) and c.startswith(head)
    assert len(codec.encode(a)) == 90 and len(codec.encode(c)) == 120


def test_fitting_gives_up_with_a_clear_error():
    class Doubling:  # every word is 2 tokens and no cut re-encodes: an odd count cannot be reached
        def encode(self, text):
            return [0, 0] * len(text.split())

        def decode(self, ids):
            return "x" * (len(ids) + 1)

    b = PromptBuilder.with_codec(Doubling(), "doubling")
    assert b.build(8, 0)[1] == 8
    msg = str(pytest.raises(UsageError, b.build, 7, 0).value)
    assert "exactly 7 tokens" in msg and "doubling" in msg


def _train_tokenizer(path, kind: str, vocab_size: int) -> None:
    """A small BPE tokenizer trained here on the prompt vocabulary (nothing is downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = [" ".join(VOCABULARY[i:i + 20]) for i in range(0, len(VOCABULARY), 20)]
    if kind == "bytelevel":  # GPT-2 / Llama-3 style, with a BOS post-processor that must not be counted
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>"], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer)
        tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
    else:  # SentencePiece style (Llama-2, Mistral): the decoder strips the leading space
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>"], show_progress=False)
        tok.train_from_iterator(corpus, trainer)
    tok.save(str(path))


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
@pytest.mark.parametrize("vocab_size", [300, 2000])
def test_fitting_to_a_real_huggingface_tokenizer(tmp_path, kind, vocab_size):
    from tokenizers import Tokenizer

    path = tmp_path / "tokenizer.json"
    _train_tokenizer(path, kind, vocab_size)
    tok = Tokenizer.from_file(str(path))
    b = PromptBuilder(str(tmp_path), seed=5)  # a folder holding tokenizer.json works too
    assert b.method == f"tokenizer: {tmp_path}"
    for n in list(range(1, 60)) + [128, 500, 2048]:
        text, count = b.build(n, index=n)
        assert count == n
        assert len(tok.encode(text, add_special_tokens=False).ids) == n
    a, _ = b.build(100, 1, prefix_group=4, prefix_tokens=40)
    c, _ = b.build(70, 2, prefix_group=4, prefix_tokens=40)
    head, _ = b.build(40, 3, prefix_group=4, prefix_tokens=40)
    assert a.startswith(head) and c.startswith(head) and a != c
    assert b.build(64, 9) == PromptBuilder(str(path), seed=5).build(64, 9)


def test_request_source_specs():
    src = RequestSource(parse_size("uniform:8,64"), parse_size("normal:32,8", "--output-tokens"),
                        PromptBuilder(seed=1), seed=7, params={"temperature": 0.0})
    specs = [src.spec(i) for i in range(3000)]
    for i, s in enumerate(specs):
        assert s.index == i
        assert 8 <= s.input_tokens <= 64 and approx_token_count(s.prompt) == s.input_tokens
        assert s.max_tokens >= 1 and s.min_tokens == s.max_tokens
        assert s.prefix_group is None and s.params == {"temperature": 0.0}
    specs[0].params["temperature"] = 1.0  # each spec has its own params dict
    assert src.spec(1).params == {"temperature": 0.0}
    ins = np.array([s.input_tokens for s in specs])
    assert abs(ins.mean() - 36) < 5 * ins.std() / np.sqrt(len(ins))
    # Deterministic in any order, in a fresh source, across the block boundary.
    again = RequestSource(parse_size("uniform:8,64"), parse_size("normal:32,8"), PromptBuilder(seed=1), seed=7,
                          params={"temperature": 0.0})
    for i in (4097, 4095, 0, 2999, 10_000, 4096):
        s = again.spec(i)
        ref = specs[i] if i < 3000 else src.spec(i)
        assert (s.prompt, s.input_tokens, s.max_tokens) == (ref.prompt, ref.input_tokens, ref.max_tokens)
    other = RequestSource(parse_size("uniform:8,64"), parse_size("normal:32,8"), PromptBuilder(seed=1), seed=8)
    assert [other.spec(i).input_tokens for i in range(50)] != [s.input_tokens for s in specs[:50]]
    # Memory stays bounded however far the run goes.
    for i in range(0, 200_000, 4096):
        src.spec(i)
    assert len(src._blocks) <= RequestSource.MAX_CACHED_BLOCKS


def test_request_source_options():
    src = RequestSource(parse_size("100"), parse_size("20"), PromptBuilder(seed=2), seed=1,
                        min_tokens_equal_max=False, prefix_groups=3, prefix_tokens=30)
    s0, s3, s1 = src.spec(0), src.spec(3), src.spec(1)
    assert s0.min_tokens is None and s0.max_tokens == 20
    assert s0.prefix_group == s3.prefix_group == 0 and s1.prefix_group == 1
    assert s0.prompt.split()[:30] == s3.prompt.split()[:30] != s1.prompt.split()[:30]
    assert s0.prompt != s3.prompt
    d = src.to_dict()
    assert d["prompt_method"].startswith("word-level") and d["input_tokens"]["value"] == 100
    assert d["prefix_groups"] == 3
    with pytest.raises(UsageError):
        RequestSource(parse_size("100"), parse_size("20"), PromptBuilder(), seed=1, prefix_groups=2)

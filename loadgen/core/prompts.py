"""Prompts of an exact token count, and the request source that turns sizes and prompts into ``RequestSpec``s.

Two ways to count tokens:

- No tokenizer (the default): the word-level approximation ``approx_token_count``, where each run of word
  characters counts 1 and each punctuation character counts 1. Prompts are then built from a fixed vocabulary of
  about 1,100 common lower-case English words that are single tokens in common BPE vocabularies (with the leading
  space), so "128 tokens" is close to 128 real tokens for most models. The embedded server counts with the same
  function, so client and server agree exactly.
- A HuggingFace ``tokenizer.json`` (``tokenizer=PATH``, needs the ``tokenizers`` package): the prompt is fitted so
  that encoding it (without special tokens) gives exactly the asked number of tokens of *that* tokenizer.

Each request's words come from a counter-based hash stream keyed by (seed, request index), so every request is
different (no accidental prefix-cache hits between requests) yet the same run rebuilds the same prompts. Requests
of a prefix group start with the same ``prefix_tokens`` tokens (keyed by (seed, group)), which is how traces with
shared-prefix hash ids and synthetic shared-system-prompt workloads exercise a server's prefix cache.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from loadgen.core.records import RequestSpec
from loadgen.core.sizes import SizeDist
from loadgen.errors import UsageError

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def approx_token_count(text: str) -> int:
    """Word-level token estimate: runs of word characters and single punctuation characters count 1 each."""
    return len(_TOKEN_RE.findall(text))


# Common lower-case English words, each a single token (with its leading space) in common BPE vocabularies.
_VOCAB_TEXT = """
able about above across act add after afternoon against age ago agree air airport alarm all allow almost
alone along already also although always among amount an and animal another answer any appear apple
apply are area arm army around arrive art article as ask at attack attention autumn available avoid away
baby back bad bag bake ball band bank bar base based basket bath be beach bear beat beautiful because
become bed been before began being bell belt best between beyond big bill bird birthday bit black
blanket blind blood blue board boat body book boot born both bottle bottom bowl box boy brain bread
break bridge bright bring brother brush build building business but button buy by cake call called calm
camera camp campaign can cancer candle cap capital captain car card care career carpet carry case castle
cat catch cause cell center central centre century certain chain chair chance change charge cheap check
cheese chicken chief child choice choose church circle city civil claim class clean clear clock close
cloud coach coast coat coffee coin cold collection college color come common community company compare
computer concern condition consider contain continue control corner cost cotton could country course
cousin cover cow create crime crowd cry culture cup current cut dance danger dark data daughter day dead
deal death decade decide deep defense degree describe design desk detail develop did die diet difference
different difficult dinner direction director dirty discover discuss disease dish doctor dog doll door
draw dream dress drink drive drop drug dry due during dust each ear early earth east easy eat economy
edge effect effort egg eight either election else employee end energy engine enjoy enough enter entire
environment equal escape especially even evening event every evidence evil exactly exam example
executive exercise exist expect experience explain eye face fact factor fail fall family far farm fast
fat father fear feather federal feel feeling fence fever few field fight figure file fill film final
finally financial find fine finger finish fire firm first fish five flag flat floor flower fly focus fog
follow following food foot for force foreign forget fork form former forward found four free friend from
front fruit full fun fund funny future game garden gas gate gather general generation get gift girl give
glad glass glove go goal gold good government grass gray great green ground group grow growth guard
guess guest guide gun had hair half hall hand hang happen happy hard has hat have head hear heart heat
heavy help here herself high hill him history hit hold hole holiday home honey hope horse hospital hot
hotel hour house how however huge human hundred husband ice idea image imagine impact important improve
in include increase indeed industry information inside instead interest interview into investment iron
is island issue it item its itself jacket job join joke juice jump just keep key kid kill kind king kiss
kitchen knee knife know knowledge known ladder lake lamp land language large last late later laugh law
lawyer lay lead leaf learn least leave left leg less let letter level library lie life lift light like
likely line lip list listen little live local lock long lord lose loss lot love low lunch machine made
magazine main maintain major majority make man manage manager many map mark market marriage material
matter may maybe meal mean measure meat media medical meet meeting member memory mention message method
middle might military milk million mind minute mirror miss mission model modern moment money month moon
more morning most mother mountain mouse mouth move movie much music must myself nail name nation
national natural nature near necessary neck need needle nest network never new news newspaper next nice
night no noise none nor north nose not note nothing notice now number occur ocean of offer office
officer official often oil ok old on once one onion only open operation opportunity option or orange
order other others our out outside oven over own owner pack page pain painting pan pants paper parent
park part particular partner party pass past patient pattern pay peace pen pencil people pepper perform
perhaps period person personal pet phone physical pick picture pie piece pig pilot pin pink pipe place
plan plant plate play player please pocket poem point police policy political pool poor popular
population position possible potato pound powder power practice prepare present president pressure
pretty prevent price private prize probably problem process produce product professional professor
program project property protect prove provide public pull pump purple purpose push put quality queen
question quickly quite rabbit race radio rain raise range rate reach read ready real reality realize
reason receive recent recently recognize record red reduce reflect region relate relationship religious
remain remember remove report represent require research resource respond response responsibility rest
result return reveal rice rich right ring rise risk river road rock role roof room rope round rule run
safe salt same sand sauce save say scale scene school science score sea season seat second security see
seek seem sell send senior sense series serious serve service set seven several shade shake share she
sheep shelf shell shirt shoe shoot shop short shot should shoulder show side sign silk silver simple
simply since sing single sister sit site situation six size skill skin sky sleep slow small smell smile
smoke snake snow so soap social society sock soft soldier some somebody someone something sometimes son
song soon sort sound soup source south southern space speak special specific speech spend spoon sport
spring square staff stage stamp stand standard star start state statement station stay step still stock
stone stop store storm story strategy street strong structure student study stuff style subject success
successful such suddenly suffer sugar suggest summer sun support sure surface sweet swim system table
tail take talk task tax tea teach teacher team technology teeth television tell ten tend term territory
test than thank that the their them then theory there therefore these they thin thing think third this
those though thought thousand threat three through throughout throw thus ticket time tiny to today
together tonight tool tooth top total tough toward towel tower town toy trade traditional train training
travel treat treatment tree trial trip trouble truck true truth try turn twenty two type uncle under
understand unit until up upon used usually valley value various very victim view village visit voice
vote wait walk wall want war warm was wash watch water wave way wear week weight well were west wet what
whatever wheel when where which while white who whole whom whose why wide wife wild will win wind window
wine wing winter wish with within without woman wonder wood wool word work worker world worry would
write wrong yard yeah year years yellow yes yet young yourself youth zone zoo
"""
VOCABULARY: tuple[str, ...] = tuple(_VOCAB_TEXT.split())
_VOCAB = np.array(VOCABULARY, dtype=object)

# -- counter-based word streams ------------------------------------------------------------------------------
_MASK = (1 << 64) - 1
_GAMMA = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_REQUEST_STREAM = 0x52455155  # domain tags keep a request's stream apart from a group's with the same number
_GROUP_STREAM = 0x47524F55


def _mix(x: int) -> int:
    """splitmix64's finaliser: a bijection on 64-bit integers that scatters nearby inputs."""
    x &= _MASK
    x = ((x ^ (x >> 30)) * _M1) & _MASK
    x = ((x ^ (x >> 27)) * _M2) & _MASK
    return x ^ (x >> 31)


def _stream_key(seed: int, domain: int, ident: int) -> int:
    return _mix(_mix(_mix(seed) ^ domain) + (ident & _MASK) * _GAMMA)


def _word_ids(key: int, start: int, n: int) -> np.ndarray:
    """Vocabulary indices of words ``start .. start+n-1`` of the stream ``key`` (vectorised splitmix64)."""
    with np.errstate(over="ignore"):
        x = np.arange(start + 1, start + n + 1, dtype=np.uint64) * np.uint64(_GAMMA) + np.uint64(key)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(_M1)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(_M2)
        x ^= x >> np.uint64(31)
    return (x % np.uint64(len(VOCABULARY))).astype(np.intp)


def _words(key: int, start: int, n: int) -> list[str]:
    return _VOCAB[_word_ids(key, start, n)].tolist()


def _word_iter(key: int, block: int = 64) -> Iterator[str]:
    start = 0
    while True:
        yield from _words(key, start, block)
        start += block


# -- tokenizers ----------------------------------------------------------------------------------------------
class TokenCodec(Protocol):
    """What prompt fitting needs from a tokenizer: ids without special tokens, and text back from ids."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class _HFCodec:
    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def load_tokenizer(path: str) -> TokenCodec:
    """Load a HuggingFace ``tokenizer.json`` (or a folder holding one); UsageError with the fix if it cannot."""
    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise UsageError(f"--tokenizer: no tokenizer file at {file!r}; check the path (a HuggingFace tokenizer.json)")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError("--tokenizer needs the 'tokenizers' package: pip install tokenizers") from None
    try:
        tok = Tokenizer.from_file(file)
    except Exception as err:  # the library raises a bare Exception for a malformed file
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"--tokenizer: cannot load {file!r} as a HuggingFace tokenizer.json ({first})") from None
    return _HFCodec(tok)


# -- prompt building -----------------------------------------------------------------------------------------
class PromptBuilder:
    """Builds prompt text of an exact token count, reproducibly per (seed, request index)."""

    max_cached_prefixes = 1024
    max_fit_rounds = 400  # encode calls allowed while fitting one prompt before giving up

    def __init__(self, tokenizer: str | None = None, seed: int = 0) -> None:
        self.seed = int(seed)
        self._codec: TokenCodec | None = load_tokenizer(tokenizer) if tokenizer else None
        self._name = tokenizer
        self._prefixes: OrderedDict[tuple[int, int], str] = OrderedDict()

    @classmethod
    def with_codec(cls, codec: TokenCodec, name: str, seed: int = 0) -> PromptBuilder:
        """A builder counting with any ``TokenCodec`` (a tokenizer not loaded from a file)."""
        builder = cls(None, seed)
        builder._codec = codec
        builder._name = name
        return builder

    @property
    def method(self) -> str:
        if self._codec is None:
            return "word-level approximation (1 word = 1 token)"
        return f"tokenizer: {self._name}"

    def count(self, text: str) -> int:
        """Tokens in ``text`` as this builder counts them."""
        if self._codec is None:
            return approx_token_count(text)
        return len(self._codec.encode(text))

    def build(self, n_tokens: int, index: int, prefix_group: int | None = None,
              prefix_tokens: int = 0) -> tuple[str, int]:
        """Text of exactly ``n_tokens`` tokens for request ``index`` and its token count.

        With ``prefix_group``, the first ``min(prefix_tokens, n_tokens)`` tokens are the same text for every request
        of the group; the rest is the request's own.
        """
        if isinstance(n_tokens, bool) or int(n_tokens) != n_tokens or n_tokens < 1:
            raise UsageError(f"prompt size: {n_tokens!r} tokens; a prompt needs a whole number >= 1 of tokens")
        n_tokens = int(n_tokens)
        if prefix_tokens < 0 or (prefix_tokens and prefix_group is None):
            raise UsageError(f"prefix_tokens={prefix_tokens!r} needs a prefix group and a count >= 0")
        p = min(int(prefix_tokens), n_tokens) if prefix_group is not None else 0
        req_key = _stream_key(self.seed, _REQUEST_STREAM, index)
        if self._codec is None:
            words = _words(req_key, 0, n_tokens - p)
            if p:
                words = _words(_stream_key(self.seed, _GROUP_STREAM, prefix_group), 0, p) + words  # type: ignore[arg-type]
            return " ".join(words), n_tokens
        head = self._prefix_text(prefix_group, p) if p else ""  # type: ignore[arg-type]
        text = head if p == n_tokens else self._fit(head, n_tokens, _word_iter(req_key))
        return text, n_tokens

    def _prefix_text(self, group: int, p: int) -> str:
        key = (group, p)
        text = self._prefixes.get(key)
        if text is None:
            text = self._fit("", p, _word_iter(_stream_key(self.seed, _GROUP_STREAM, group)))
            self._prefixes[key] = text
            if len(self._prefixes) > self.max_cached_prefixes:
                self._prefixes.popitem(last=False)
        else:
            self._prefixes.move_to_end(key)
        return text

    def _fit(self, head: str, n: int, words: Iterator[str]) -> str:
        """Extend ``head`` with words until it encodes to exactly ``n`` tokens.

        Words are added in bulk (about one token each), then the count is corrected: an overshoot is cut at the
        token level (decode the first n ids) when that text re-encodes to n tokens and keeps ``head``; otherwise
        fewer words are added at a time, down to single words, skipping words that overshoot. When single words
        keep overshooting, the text's own last word is the cause (appending re-splits it, as BPE merges can), so
        it is dropped and the search goes on with other words. The stream is deterministic, so is the result.
        """
        codec = self._codec
        assert codec is not None
        text, count = head, (len(codec.encode(head)) if head else 0)
        take, misses = n - count, 0
        for _ in range(self.max_fit_rounds):
            if count == n:
                return text
            take = max(1, min(take, n - count))
            cand = (text + " " if text else "") + " ".join(next(words) for _ in range(take))
            ids = codec.encode(cand)
            if len(ids) <= n:
                text, count, misses = cand, len(ids), 0
                continue
            cut = codec.decode(ids[:n])
            if cut.startswith(head) and len(codec.encode(cut)) == n:
                return cut
            if take > 1:
                take //= 2
                continue
            misses += 1
            if misses >= 4 and len(text) > len(head):
                text = text[: max(text.rfind(" "), len(head))]
                count, misses = (len(codec.encode(text)) if text else 0), 0
        raise UsageError(
            f"--tokenizer: could not build a prompt of exactly {n} tokens with {self._name}; "
            "check that it is a text tokenizer for the served model"
        )


# -- request source ------------------------------------------------------------------------------------------
class RequestSource:
    """What each request of a run asks, decided lazily and deterministically per (seed, index).

    Sizes are drawn in blocks of ``BLOCK`` indices from a generator keyed by (seed, block), so any index can be
    built in any order (Locust workers take stripes) with memory bounded by a few cached blocks.
    ``min_tokens`` is set to ``max_tokens`` by default so that the server generates the requested length instead of
    stopping early at an end-of-sequence token (which would make output throughput depend on the text).
    ``prefix_groups``/``prefix_tokens`` make a synthetic shared-prefix workload: request i belongs to group
    ``i % prefix_groups`` and shares its first ``prefix_tokens`` tokens with that group.
    """

    BLOCK = 4096
    MAX_CACHED_BLOCKS = 8

    def __init__(self, input_sizes: SizeDist, output_sizes: SizeDist, builder: PromptBuilder, seed: int,
                 params: dict[str, Any] | None = None, min_tokens_equal_max: bool = True,
                 prefix_groups: int = 0, prefix_tokens: int = 0) -> None:
        if prefix_groups < 0 or prefix_tokens < 0 or (prefix_tokens > 0) != (prefix_groups > 0):
            raise UsageError("--prefix-groups/--prefix-tokens: give both as whole numbers >= 1, or neither")
        self.input_sizes = input_sizes
        self.output_sizes = output_sizes
        self.builder = builder
        self.seed = int(seed)
        self.params = dict(params or {})
        self.min_tokens_equal_max = min_tokens_equal_max
        self.prefix_groups = int(prefix_groups)
        self.prefix_tokens = int(prefix_tokens)
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _sizes(self, index: int) -> tuple[int, int]:
        block, pos = divmod(index, self.BLOCK)
        cached = self._blocks.get(block)
        if cached is None:
            rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, block])))
            cached = (self.input_sizes.sample(rng, self.BLOCK), self.output_sizes.sample(rng, self.BLOCK))
            self._blocks[block] = cached
            if len(self._blocks) > self.MAX_CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(block)
        return int(cached[0][pos]), int(cached[1][pos])

    def spec(self, index: int) -> RequestSpec:
        if index < 0:
            raise ValueError(f"request index must be >= 0, got {index}")
        n_in, n_out = self._sizes(index)
        group = index % self.prefix_groups if self.prefix_groups else None
        prompt, count = self.builder.build(n_in, index, group, self.prefix_tokens if group is not None else 0)
        return RequestSpec(
            index=index,
            prompt=prompt,
            input_tokens=count,
            max_tokens=n_out,
            min_tokens=n_out if self.min_tokens_equal_max else None,
            prefix_group=group,
            params=dict(self.params),
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved request settings, for the run's config.json."""
        return {
            "input_tokens": self.input_sizes.to_dict(),
            "output_tokens": self.output_sizes.to_dict(),
            "prompt_method": self.builder.method,
            "seed": self.seed,
            "min_tokens_equal_max": self.min_tokens_equal_max,
            "prefix_groups": self.prefix_groups,
            "prefix_tokens": self.prefix_tokens,
            "params": dict(self.params),
        }

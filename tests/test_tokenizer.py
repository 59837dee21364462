"""Tokenisers of the runtime core: CLIP BPE (id for id open_clip) and the world vocabularies."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from tr0n_rt import tokenizer as tk
from tr0n_rt.errors import ConfigError, PromptError
from tr0n_rt.tokenizer import CLIPTokenizer, WordTokenizer, tokenizer_from_dict

REPO = Path(__file__).resolve().parents[1]

# Text that ftfy repairs as mojibake: the stdlib stand-in (used when ftfy is absent) leaves it.
MOJIBAKE = [
    "cafÃ© crÃ¨me",
    "The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows.",
]

CORPUS = [
    "a photo of a cat",
    "A Photo Of A DOG",
    "a red circle on a white background",
    "",
    "   ",
    "\t\n  \r\n",
    "a   b\t\tc\n\nd",
    "  leading and trailing  ",
    # unicode
    "Café crème brûlée à la carte",
    "Cafe\u0301 (decomposed accent)",
    "naïve façade Ångström",
    "東京タワーの夜景",
    "一只猫坐在桌子上",
    "한국어 문장입니다",
    "Привет, мир! Ёжик в тумане",
    "Ελληνικά γράμματα",
    "مرحبا بالعالم",
    "🐱🐶 emoji party 👍🏽 👨‍👩‍👧",
    "flag 🇫🇷 and ❤️",
    "ＦＵＬＬ ｗｉｄｔｈ ｔｅｘｔ １２３",
    "ﬁne ﬂowers",
    "“curly” ‘quotes’",
    "İstanbul ǅemal ß straße",
    "½ ² Ⅻ ٣ ३ digits",
    "\u00a0non\u2009breaking\u3000spaces",
    "zero\u200bwidth\u200djoiner",
    "x'ſ and x'ſt",
    # punctuation, numbers
    "3.14",
    "1,000",
    "2nd place, 3rd place, 21st century",
    "$100 & 50% off!!!",
    "hello...world???",
    "e-mail: someone@example.com #hashtag",
    "(parentheses) [brackets] {braces} <angles>",
    "C++ / C# / F#",
    "1234567890",
    # html
    "&amp;",
    "salt &amp; pepper",
    "&lt;b&gt;bold&lt;/b&gt;",
    "&amp;amp; double escaped",
    "&quot;quoted&quot; &#39;single&#39; &#x27;hex&#x27;",
    "P&EACUTE;REZ &eacute; &nbsp;x",
    "<b>&amp;</b>\n&amp; second line",
    "&amp; first\n<i>&amp;</i>",
    "AT&T and R&D",
    # apostrophes, contractions
    "don't",
    "it's",
    "They'll've we'd I'm you're DON'T IT'S",
    "rock 'n' roll",
    "'s's't",
    # controls
    "\x1b[31mred\x1b[0m text",
    "caf\x82 \x85 \x93quote\x94",
    "tab\x00null\x7fdel",
    "a\u2028b\u2029c",
    # special tokens spelled out
    "<start_of_text> hi <END_OF_TEXT>",
    # long
    "a " * 75,
    "a " * 76,
    "a " * 200,
    "a photo of " + "a very " * 40 + "large cat",
    " ".join(f"word{i}" for i in range(60)),
    *MOJIBAKE,
]


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    open_clip = pytest.importorskip("open_clip")
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def clip():
    return CLIPTokenizer()


def _mismatches(got: np.ndarray, want: np.ndarray, texts: list[str]) -> list[str]:
    return [repr(t) for t, a, b in zip(texts, got, want) if not np.array_equal(a, b)]


# --------------------------------------------------------------------------------------
# CLIPTokenizer against open_clip
# --------------------------------------------------------------------------------------


def test_corpus_is_broad():
    assert len(CORPUS) >= 40
    assert any(len(t.split()) > 77 for t in CORPUS)


def test_clip_matches_open_clip_batch(clip, open_clip_tokenizer):
    got = clip(CORPUS)
    want = open_clip_tokenizer(CORPUS).numpy()
    assert got.dtype == np.int64 and got.shape == want.shape == (len(CORPUS), 77)
    assert _mismatches(got, want, CORPUS) == []


def test_clip_matches_open_clip_one_by_one(clip, open_clip_tokenizer):
    for text in CORPUS:
        assert np.array_equal(clip(text), open_clip_tokenizer(text).numpy()), repr(text)
        assert clip.encode(text) == open_clip_tokenizer.encode(text), repr(text)


def test_clip_matches_open_clip_other_context_length(open_clip_tokenizer):
    short = CLIPTokenizer(context_length=16)
    texts = CORPUS[:12] + ["a " * 30]
    assert np.array_equal(short(texts), open_clip_tokenizer(texts, context_length=16).numpy())
    assert np.array_equal(CLIPTokenizer()(texts, context_length=9), open_clip_tokenizer(texts, context_length=9).numpy())


def test_clip_decode_matches_open_clip(clip, open_clip_tokenizer):
    for text in CORPUS[:40]:
        ids = open_clip_tokenizer.encode(text)
        assert clip.decode(ids) == open_clip_tokenizer.decode(ids), repr(text)
    row = clip("a photo of a cat")[0]
    assert clip.decode(row) == open_clip_tokenizer.decode(row.tolist())


def test_clip_special_ids_and_layout(clip):
    assert (clip.sot_token_id, clip.eot_token_id, clip.vocab_size) == (49406, 49407, 49408)
    out = clip(["a photo of a cat", ""])
    assert out.tolist()[1][:3] == [49406, 49407, 0]
    row = out[0].tolist()
    n = row.index(49407) + 1
    assert row[0] == 49406 and n == 7 and row[n:] == [0] * (77 - n)
    assert clip.decode(row[1 : n - 1]) == "a photo of a cat "


@pytest.mark.parametrize("n_words, truncated", [(75, False), (76, True), (300, True)])
def test_clip_truncation_keeps_eot_last(clip, n_words, truncated):
    row = clip("a " * n_words)[0]
    assert row[-1] == 49407 and row[0] == 49406
    assert (row == 49407).sum() == 1
    assert (row[1:-1] == clip.encode("a")[0]).all()
    assert len(clip.encode("a " * n_words)) == n_words
    assert (n_words + 2 > 77) == truncated


def test_clip_tables_are_cached():
    a, b = CLIPTokenizer(), CLIPTokenizer(context_length=32)
    assert a._bpe_data is b._bpe_data
    assert tk._load_bpe.cache_info().hits >= 1


def test_clip_bpe_file_ships_with_package():
    path = REPO / "tr0n_rt" / "assets" / tk.BPE_FILENAME
    assert path.is_file()
    assert Path(CLIPTokenizer().bpe_path) == path.resolve()


def test_clip_bad_bpe_path(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        CLIPTokenizer(bpe_path=tmp_path / "missing.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ConfigError, match="cannot read"):
        CLIPTokenizer(bpe_path=bad)


# --------------------------------------------------------------------------------------
# Prompt errors and configs
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda: CLIPTokenizer(), lambda: WordTokenizer(["red", "circle"])])
def test_empty_prompt(make):
    tok = make()
    assert tok(["", "  \t"]).shape[0] == 2  # allowed by default
    for bad in ["", "   ", "\n\t "]:
        with pytest.raises(PromptError, match=r"empty.*pass some text"):
            tok(bad, allow_empty=False)
    with pytest.raises(PromptError, match="prompt 1 is empty"):
        tok(["red circle", " "], allow_empty=False)
    assert tok("red circle", allow_empty=False).shape == (1, tok.context_length)


@pytest.mark.parametrize("make", [lambda: CLIPTokenizer(), lambda: WordTokenizer(["red", "circle"])])
def test_non_str_prompt(make):
    tok = make()
    with pytest.raises(PromptError, match="int"):
        tok(3)
    with pytest.raises(PromptError, match="bytes"):
        tok(b"red circle")
    with pytest.raises(PromptError, match="prompt 1 is a NoneType"):
        tok(["red", None])
    with pytest.raises(PromptError, match="float"):
        tok.encode(1.5)
    assert tok([]).shape == (0, tok.context_length)


def test_to_dict_round_trip():
    clip = CLIPTokenizer(context_length=40)
    assert clip.to_dict() == {"kind": "clip_bpe", "context_length": 40}
    again = tokenizer_from_dict(json.loads(json.dumps(clip.to_dict())))
    assert isinstance(again, CLIPTokenizer) and again.context_length == 40
    assert np.array_equal(again(CORPUS[:10]), clip(CORPUS[:10]))
    words = WordTokenizer(["red", "circle", "square"], context_length=8)
    assert words.to_dict() == {"kind": "words", "vocab": ["red", "circle", "square"], "context_length": 8}
    again = tokenizer_from_dict(json.loads(json.dumps(words.to_dict())))
    assert isinstance(again, WordTokenizer) and again.vocab == words.vocab and again.context_length == 8
    assert np.array_equal(again("a red square"), words("a red square"))


def test_from_dict_errors():
    with pytest.raises(ConfigError, match=r"unknown tokenizer kind 'sentencepiece'; known kinds: clip_bpe, words"):
        tokenizer_from_dict({"kind": "sentencepiece"})
    with pytest.raises(ConfigError, match="known kinds"):
        tokenizer_from_dict({})
    with pytest.raises(ConfigError, match="lacks vocab"):
        tokenizer_from_dict({"kind": "words"})
    with pytest.raises(ConfigError, match="unknown keys context_lenght"):
        tokenizer_from_dict({"kind": "clip_bpe", "context_lenght": 77})
    with pytest.raises(ConfigError, match="dict"):
        tokenizer_from_dict(["clip_bpe"])
    with pytest.raises(ConfigError, match="at least 2"):
        tokenizer_from_dict({"kind": "clip_bpe", "context_length": 1})


# --------------------------------------------------------------------------------------
# Torch-free, and the stdlib stand-ins for ftfy and regex
# --------------------------------------------------------------------------------------

_BLOCKED_RUN = """
import json, sys
BLOCKED = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, Block())
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker let {name} through")
import tr0n_rt.tokenizer as tk
texts = json.loads(sys.stdin.read())
ids = tk.CLIPTokenizer()(texts)
words = tk.WordTokenizer(["red", "circle"])("A red-circle, on white!")
print(json.dumps({
    "ids": ids.tolist(), "dtype": str(ids.dtype), "words": words.tolist(),
    "backend": tk._text_backend().names,
    "leaked": sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED),
}))
"""


def _run_blocked(blocked: list[str], texts: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_BLOCKED_RUN), ",".join(blocked)],
        input=json.dumps(texts), capture_output=True, text=True, env=env, cwd=REPO, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_import_without_torch(clip):
    out = _run_blocked(["torch", "open_clip"], CORPUS)
    assert out["leaked"] == []
    assert out["dtype"] == "int64"
    assert np.array_equal(np.array(out["ids"]), clip(CORPUS))
    assert out["words"] == [[4, 1, 2, 3, 1, 1, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0]]


def test_stdlib_only_matches(clip):
    """Without ftfy and regex: the same ids on everything but mojibake."""
    texts = [t for t in CORPUS if t not in MOJIBAKE]
    out = _run_blocked(["torch", "open_clip", "ftfy", "regex"], texts)
    assert out["backend"] == {"fix_text": "stdlib", "split": "stdlib"} and out["leaked"] == []
    assert _mismatches(np.array(out["ids"]), clip(texts), texts) == []


def _assigned_chars() -> list[str]:
    return [
        chr(c) for c in range(sys.maxunicode + 1)
        if not 0xD800 <= c <= 0xDFFF and unicodedata.category(chr(c)) != "Cn"
    ]  # fmt: skip


def test_stdlib_split_matches_regex(open_clip_tokenizer):
    regex = pytest.importorskip("regex")
    pattern = open_clip_tokenizer.pat
    cleaned = [tk._clean_clip_text(t, tk._fix_text_stdlib) for t in CORPUS]
    for text in cleaned + CORPUS:
        assert tk._split_stdlib(text) == regex.findall(pattern, text), repr(text)
    # every character of this Python's Unicode, alone, in runs and among the literal alternatives
    chars = _assigned_chars()
    everything = "".join(chars)
    assert tk._split_stdlib(everything) == regex.findall(pattern, everything)
    rng = random.Random(0)
    pool = chars[::7] + list(" 'abstrevmld<>_0123456789" * 200) + ["<start_of_text>", "<END_of_text>", "'ll", "'VE"] * 200
    mixed = "".join(rng.choices(pool, k=60_000))
    assert tk._split_stdlib(mixed) == regex.findall(pattern, mixed)


def test_stdlib_fix_text_matches_ftfy():
    ftfy = pytest.importorskip("ftfy")
    extra = [
        "\ud83d\ude00 paired surrogates, a lone \ud800 one",
        "&EACUTE; &Eacute; &eacute &#233; &#x1F600; &#99999999; &bogus;",
        "x < y &amp; z",
        "&amp;amp;amp;amp;",
        "line1 &amp;\r\nline2 <p>&amp;\nline3 &amp;",
        "\ufeffbom \u206adeprecated \ufff9annotation\ufffb",
        "ｶﾀｶﾅ ﾊﾝｶｸ",
        "\x80\x81\x8d\x9f",
    ]
    for text in [t for t in CORPUS if t not in MOJIBAKE] + extra:
        assert tk._fix_text_stdlib(text) == ftfy.fix_text(text), repr(text)
    for text in MOJIBAKE:  # the one thing the stand-in does not do
        assert tk._fix_text_stdlib(text) != ftfy.fix_text(text)


# --------------------------------------------------------------------------------------
# WordTokenizer
# --------------------------------------------------------------------------------------

VOCAB = ["a", "red", "green", "circle", "square", "on", "white", "background"]


def test_word_ids_layout():
    tok = WordTokenizer(VOCAB, context_length=12)
    v = len(VOCAB)
    assert tok.vocab_size == v + 4
    assert (tok.pad_token_id, tok.unk_token_id, tok.sot_token_id, tok.eot_token_id) == (0, 1, v + 2, v + 3)
    assert tok.encode(" ".join(VOCAB)) == list(range(2, v + 2))
    out = tok("A red-circle, on white!")
    assert out.dtype == np.int64 and out.shape == (1, 12)
    assert out[0].tolist() == [v + 2, 2, 3, 5, 7, 8, v + 3] + [0] * 5
    assert tok.decode(out[0]) == "a red circle on white"


def test_word_split_and_unknown():
    tok = WordTokenizer(VOCAB)
    assert tk._letters("A red-circle, on white!") == ["a", "red", "circle", "on", "white"]
    assert tk._letters("GREEN_square42x  e\u0301t\u00e9") == ["green", "square", "x", "été"]
    assert tok.encode("a BLUE circle") == [2, 1, 5]
    assert tok.encode("3 red squares") == [3, 1]
    assert tok.decode(tok.encode("a blue circle")) == "a <unk> circle"
    assert tok("!!! 42")[0, :3].tolist() == [tok.sot_token_id, tok.eot_token_id, 0]


def test_word_truncation_keeps_eot():
    tok = WordTokenizer(VOCAB, context_length=6)
    row = tok("a red circle on a white background")[0].tolist()
    assert row == [tok.sot_token_id, 2, 3, 5, 7, tok.eot_token_id]
    row = tok("red red red red")[0].tolist()  # 4 words + 2 fits exactly
    assert row == [tok.sot_token_id, 3, 3, 3, 3, tok.eot_token_id]
    assert tok("red " * 5)[0, -1] == tok.eot_token_id


def test_word_eot_is_max_id():
    tok = WordTokenizer(VOCAB, context_length=10)
    rng = random.Random(1)
    texts = [" ".join(rng.choices(VOCAB + ["zebra", "!", "7"], k=rng.randint(0, 15))) for _ in range(200)]
    out = tok(texts)
    assert out.max() == tok.eot_token_id == tok.vocab_size - 1
    assert (out.argmax(axis=1) == (out == tok.eot_token_id).argmax(axis=1)).all()
    assert ((out == tok.eot_token_id).sum(axis=1) == 1).all()


def test_word_bad_vocab():
    for bad, match in [
        ([], "empty"),
        (["red", "red"], "repeats"),
        (["Red"], "lower-case"),
        (["red circle"], "one lower-case word"),
        (["red", 3], "not a str"),
        ("red", "list of words"),
    ]:
        with pytest.raises(ConfigError, match=match):
            WordTokenizer(bad)
    with pytest.raises(ConfigError, match="at least 2"):
        WordTokenizer(VOCAB, context_length=1)
    with pytest.raises(PromptError, match="outside"):
        WordTokenizer(VOCAB).decode([99])

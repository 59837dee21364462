"""Prompt tokenisers of the torch-free runtime core.

Two tokenisers turn prompts into the int64 id matrices the text encoders take:

* :class:`CLIPTokenizer`: the byte-level BPE of OpenAI CLIP, id for id what
  ``open_clip.get_tokenizer('ViT-B-32')`` produces (its ``SimpleTokenizer`` with the
  default ``clean='lower'``), without importing torch or open_clip.
* :class:`WordTokenizer`: the whole-word vocabulary of the small embedded worlds.

Only the standard library and numpy are needed. open_clip cleans text with ``ftfy`` and
splits it with the ``regex`` package; when those are importable they are used, so the match
is exact. Without them, standard-library stand-ins do the same work: they match on every
character assigned in the Unicode version of the running Python, and ``ftfy``'s stand-in
does everything ``ftfy.fix_text`` does except repairing mojibake (text that was decoded with
the wrong codec, such as ``"cafÃ©"``).
"""

from __future__ import annotations

import gzip
import html
import html.entities
import importlib
import importlib.util
import io
import itertools
import os
import re
import stat
import unicodedata
import zlib
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from tr0n_rt.errors import ConfigError, PromptError

__all__ = ["CLIPTokenizer", "WordTokenizer", "tokenizer_from_dict"]

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
CLIP_CONTEXT_LENGTH = 77
_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
# The vocabulary is 256 bytes + 256 end-of-word bytes + the merges + 2 specials = 49408.
_CLIP_N_MERGES = 49152 - 256 - 2
_BPE_CACHE_MAX = 200_000


# --------------------------------------------------------------------------------------
# Prompt checks shared by both tokenisers
# --------------------------------------------------------------------------------------


def _prompt_list(texts: Any) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (list, tuple)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise PromptError(
                    f"prompt {i} is a {type(text).__name__}, not a str; pass text prompts"
                    + (" (decode bytes first)" if isinstance(text, (bytes, bytearray)) else "")
                )
        return list(texts)
    raise PromptError(
        f"prompts must be a str or a list of str, got a {type(texts).__name__}"
        + ("; decode bytes first" if isinstance(texts, (bytes, bytearray)) else "")
    )


def _empty_prompt_error(index: int, n: int) -> PromptError:
    which = "the prompt" if n == 1 else f"prompt {index}"
    return PromptError(f"{which} is empty (or only whitespace); pass some text describing the image")


def _check_context_length(context_length: Any) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, (int, np.integer)):
        raise ConfigError(f"context_length must be an int, got a {type(context_length).__name__}")
    if context_length < 2:
        raise ConfigError(
            f"context_length must be at least 2 (room for the start and end tokens), got {context_length}"
        )
    return int(context_length)


def _pack(rows: list[list[int]], sot: int, eot: int, context_length: int) -> np.ndarray:
    """[sot, ids..., eot] per row, zero-padded; too long -> cut with eot kept as the last id."""
    out = np.zeros((len(rows), context_length), dtype=np.int64)
    for i, ids in enumerate(rows):
        tokens = [sot, *ids, eot]
        if len(tokens) > context_length:
            tokens = tokens[:context_length]
            tokens[-1] = eot
        out[i, : len(tokens)] = tokens
    return out


def _id_list(ids: Any) -> list[int]:
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1:
            raise PromptError(f"decode takes one row of ids, got an array of shape {ids.shape}")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
        raise PromptError(f"decode takes a sequence of int ids, got a {type(ids).__name__}")
    out = []
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise PromptError(f"decode takes int ids, got a {type(i).__name__}")
        out.append(int(i))
    return out


# --------------------------------------------------------------------------------------
# Text cleaning: ftfy.fix_text, or its standard-library stand-in
# --------------------------------------------------------------------------------------

_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI_ESCAPE_RE = re.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")
_SINGLE_QUOTE_RE = re.compile("[\u02bc\u2018-\u201b]")
_DOUBLE_QUOTE_RE = re.compile("[\u201c-\u201f]")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")

# Latin typographic ligatures and legacy digraphs that ftfy takes apart.
_LIGATURES = {
    0x0132: "IJ", 0x0133: "ij", 0x0149: "\u02bcn",
    0x01F1: "DZ", 0x01F2: "Dz", 0x01F3: "dz",
    0x01C4: "D\u017d", 0x01C5: "D\u017e", 0x01C6: "d\u017e",
    0x01C7: "LJ", 0x01C8: "Lj", 0x01C9: "lj",
    0x01CA: "NJ", 0x01CB: "Nj", 0x01CC: "nj",
    0xFB00: "ff", 0xFB01: "fi", 0xFB02: "fl", 0xFB03: "ffi", 0xFB04: "ffl",
    0xFB05: "\u017ft", 0xFB06: "st",
}  # fmt: skip


class _FixTables(NamedTuple):
    entities: dict[str, str]
    c1: dict[int, str]
    width: dict[int, str]
    control: dict[int, None]


@lru_cache(maxsize=None)
def _fix_tables() -> _FixTables:
    # HTML5 named entities that end in ';', plus upper-cased forms of the lower-case ones
    # where that spelling is not itself an entity (ftfy reads "&EACUTE;" as "É").
    entities: dict[str, str] = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";"):
            entities["&" + name] = char
            if name == name.lower():
                upper = "&" + name.upper()
                if html.unescape(upper) == upper:
                    entities[upper] = char.upper()
    # C1 controls are read as the Windows-1252 characters (the bytes 1252 leaves undefined stay).
    c1 = {}
    for code in range(0x80, 0xA0):
        try:
            c1[code] = bytes([code]).decode("cp1252")
        except UnicodeDecodeError:
            pass
    # Fullwidth / halfwidth forms to their usual width; the ideographic space to a space.
    width = {0x3000: " "}
    for code in range(0xFF01, 0xFFF0):
        norm = unicodedata.normalize("NFKC", chr(code))
        if norm != chr(code):
            width[code] = norm
    control = dict.fromkeys(
        itertools.chain(
            range(0x00, 0x09), [0x0B], range(0x0E, 0x20), [0x7F],
            range(0x206A, 0x2070), [0xFEFF], range(0xFFF9, 0xFFFD),
        )
    )  # fmt: skip
    return _FixTables(entities, c1, width, control)


def _unescape_entity(match: re.Match[str]) -> str:
    entity = match.group(0)
    char = _fix_tables().entities.get(entity)
    if char is not None:
        return char
    if entity.startswith("&#"):
        decoded = html.unescape(entity)
        return entity if ";" in decoded else decoded  # only a reference consumed whole
    return entity


def _join_surrogates(match: re.Match[str]) -> str:
    high, low = match.group(0)
    return chr(0x10000 + (ord(high) - 0xD800) * 0x400 + (ord(low) - 0xDC00))


def _fix_segment(text: str, unescape: bool) -> str:
    tables = _fix_tables()
    while True:  # like ftfy, repeat until nothing changes
        before = text
        if unescape:
            text = _ENTITY_RE.sub(_unescape_entity, text)
        text = text.translate(tables.c1)
        text = text.translate(_LIGATURES)
        text = text.translate(tables.width)
        text = _SINGLE_QUOTE_RE.sub("'", _DOUBLE_QUOTE_RE.sub('"', text))
        for line_break in ("\r\n", "\r", "\u2028", "\u2029", "\x85"):
            text = text.replace(line_break, "\n")
        if _SURROGATE_RE.search(text):
            text = _SURROGATE_RE.sub("\ufffd", _SURROGATE_PAIR_RE.sub(_join_surrogates, text))
        text = _ANSI_ESCAPE_RE.sub("", text)
        text = text.translate(tables.control)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def _fix_text_stdlib(text: str) -> str:
    """``ftfy.fix_text(text)`` with the default options, minus the mojibake repair."""
    out = []
    unescape = True
    # ftfy cuts the text after each "\n" (only "\n"), and stops decoding HTML entities for
    # good once a segment holds a "<" (it looks like HTML then).
    pos = 0
    while pos < len(text):
        end = text.find("\n", pos) + 1 or len(text)
        segment = text[pos:end]
        if unescape and "<" in segment:
            unescape = False
        out.append(_fix_segment(segment, unescape))
        pos = end
    return "".join(out)


# --------------------------------------------------------------------------------------
# Pre-tokenisation: open_clip's regex split, or its standard-library stand-in
# --------------------------------------------------------------------------------------

# open_clip: <start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
# (case-insensitive). The literal alternatives are a plain `re`; the classes are read off
# unicodedata: \p{L} is the categories L*, \p{N} the categories N*.
_LITERAL_RE = re.compile(
    "|".join(re.escape(s) for s in _CLIP_SPECIALS) + r"|'s|'t|'re|'ve|'m|'ll|'d", re.IGNORECASE
)
_LETTER, _NUMBER, _SPACE, _OTHER = range(4)


# Python calls the information separators U+1C..U+1F whitespace; Unicode (and \s of `regex`)
# does not. U+0345 (combining ypogegrammeni) case-folds to a Greek iota, and open_clip's
# case-insensitive pattern matches it with none of its alternatives: it is skipped like a space.
_NOT_SPACE = frozenset("\x1c\x1d\x1e\x1f")
_SKIPPED = frozenset("\u0345")


@lru_cache(maxsize=65536)
def _char_class(char: str) -> int:
    if (char.isspace() and char not in _NOT_SPACE) or char in _SKIPPED:
        return _SPACE
    major = unicodedata.category(char)[0]
    return _LETTER if major == "L" else _NUMBER if major == "N" else _OTHER


def _split_stdlib(text: str) -> list[str]:
    """What ``regex.findall`` with open_clip's pattern returns, using only the stdlib."""
    pieces = []
    pos, n = 0, len(text)
    while pos < n:
        char = text[pos]
        if char in "<'":
            match = _LITERAL_RE.match(text, pos)
            if match:
                pieces.append(match.group(0))
                pos = match.end()
                continue
        kind = _char_class(char)
        if kind == _SPACE:
            pos += 1
            continue
        end = pos + 1
        if kind != _NUMBER:  # letters and "other" run on; numbers come one at a time
            while end < n and _char_class(text[end]) == kind:
                end += 1
        pieces.append(text[pos:end])
        pos = end
    return pieces


class _TextBackend(NamedTuple):
    fix_text: Callable[[str], str]
    split: Callable[[str], list[str]]
    names: dict[str, str]


def _try_import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except Exception:  # absent, or broken: the stdlib stand-in does the job
        return None


@lru_cache(maxsize=None)
def _text_backend() -> _TextBackend:
    ftfy = _try_import("ftfy")
    regex = _try_import("regex")
    if regex is not None:
        pattern = regex.compile(
            "|".join(re.escape(s) for s in _CLIP_SPECIALS)
            + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        split = pattern.findall
    else:
        split = _split_stdlib
    fix_text = ftfy.fix_text if ftfy is not None else _fix_text_stdlib
    names = {
        "fix_text": "ftfy" if ftfy is not None else "stdlib",
        "split": "regex" if regex is not None else "stdlib",
    }
    return _TextBackend(fix_text, split, names)


def _clean_clip_text(text: str, fix_text: Callable[[str], str]) -> str:
    """open_clip's default 'lower' cleaning: fix, unescape HTML twice, squeeze spaces, lower."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return " ".join(text.split()).lower()


# --------------------------------------------------------------------------------------
# CLIP byte-level BPE
# --------------------------------------------------------------------------------------


def _byte_alphabet() -> list[tuple[int, str]]:
    """CLIP's byte encoder: (byte, printable character standing for it), in vocabulary order.

    Printable bytes stand for themselves and come first; the other bytes get the characters
    from U+0100 on and come after, in byte order.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    return [(b, chr(b)) for b in printable] + [(b, chr(0x100 + i)) for i, b in enumerate(others)]


class _BPEData(NamedTuple):
    byte_table: dict[int, str]  # str.translate table: latin-1 char of a byte -> BPE symbol
    symbol_bytes: dict[str, int]  # BPE symbol -> byte (for decode)
    encoder: dict[str, int]
    decoder: list[str]
    ranks: dict[tuple[str, str], int]
    cache: dict[str, tuple[int, ...]]


def _default_bpe_path() -> str:
    shipped = Path(__file__).resolve().parent / "assets" / BPE_FILENAME
    if shipped.is_file():
        return str(shipped)
    try:  # a checkout without package data: open_clip's copy is the same file (not imported)
        spec = importlib.util.find_spec("open_clip")
        if spec is not None and spec.origin:
            candidate = Path(spec.origin).parent / BPE_FILENAME
            if candidate.is_file():
                return str(candidate)
    except Exception:
        pass
    raise ConfigError(
        f"the CLIP BPE merges file {BPE_FILENAME} is missing from {shipped.parent}; "
        "reinstall tr0n-rt (it ships as package data) or pass bpe_path="
    )


# The shipped merges file is 1.36 MB, 3.2 MB unpacked: these bounds leave room and stop a gzip bomb early.
BPE_MAX_BYTES = 8 << 20  # the gzip file
BPE_MAX_UNPACKED = 16 << 20  # its text; read in chunks, so no more than this is ever inflated
_BPE_CHUNK = 1 << 20


def _read_bpe_bytes(path: str) -> bytes:
    """The unpacked bytes of a gzip merges file: only a regular file (stat before open, and the descriptor
    opened non-blocking and checked again, so a FIFO or device can never block the read), at most
    BPE_MAX_BYTES packed and BPE_MAX_UNPACKED unpacked."""
    fix = f"pass the CLIP merges file {BPE_FILENAME} (tr0n-rt ships it; bpe_path can be left out)"
    info = os.stat(path)  # FileNotFoundError goes to the caller
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"the BPE merges file {path} is not a regular file (a folder, pipe or device); {fix}")
    if info.st_size > BPE_MAX_BYTES:
        raise ConfigError(f"the BPE merges file {path} has {info.st_size} bytes, more than the "
                          f"{BPE_MAX_BYTES >> 20} MiB such a file may have (CLIP's is 1.4 MB); {fix}")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as raw:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"the BPE merges file {path} is not a regular file; {fix}")
        packed = raw.read(BPE_MAX_BYTES + 1)
    if len(packed) > BPE_MAX_BYTES:
        raise ConfigError(f"the BPE merges file {path} grew past {BPE_MAX_BYTES >> 20} MiB while it was read; {fix}")
    parts, total = [], 0
    with gzip.GzipFile(fileobj=io.BytesIO(packed), mode="rb") as f:
        while chunk := f.read(_BPE_CHUNK):
            total += len(chunk)
            if total > BPE_MAX_UNPACKED:
                raise ConfigError(f"the BPE merges file {path} unpacks to more than {BPE_MAX_UNPACKED >> 20} MiB "
                                  f"(CLIP's: 3.2 MB): it is not a CLIP merges file; {fix}")
            parts.append(chunk)
    return b"".join(parts)


@lru_cache(maxsize=8)
def _load_bpe(path: str) -> _BPEData:
    try:
        lines = _read_bpe_bytes(path).decode("utf-8").split("\n")
    except FileNotFoundError:
        raise ConfigError(f"BPE merges file not found: {path}") from None
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:
        raise ConfigError(f"cannot read the BPE merges file {path} (a gzip text file): {e}") from None
    merges = [tuple(line.split()) for line in lines[1 : _CLIP_N_MERGES + 1]]
    if len(merges) < _CLIP_N_MERGES or any(len(m) != 2 for m in merges):
        raise ConfigError(
            f"{path} is not a CLIP BPE merges file: expected {_CLIP_N_MERGES} merge lines "
            "of two symbols after the header"
        )
    alphabet = _byte_alphabet()
    symbols = [s for _, s in alphabet]
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += list(_CLIP_SPECIALS)
    encoder = {symbol: i for i, symbol in enumerate(vocab)}
    if len(encoder) != len(vocab):
        raise ConfigError(f"{path} is not a CLIP BPE merges file: its merges repeat")
    ranks = {merge: i for i, merge in enumerate(merges)}
    cache = {s: (encoder[s],) for s in _CLIP_SPECIALS}
    return _BPEData(
        byte_table=dict(alphabet),
        symbol_bytes={s: b for b, s in alphabet},
        encoder=encoder,
        decoder=vocab,
        ranks=ranks,
        cache=cache,
    )


class CLIPTokenizer:
    """CLIP's byte-level BPE, id for id ``open_clip.get_tokenizer('ViT-B-32')``.

    ``tok(texts)`` returns an int64 array [N, context_length]: start id 49406, the BPE ids,
    end id 49407, zeros after; a prompt too long is cut so that the end id stays last.
    The merges table is loaded once per file and shared by every instance.
    """

    kind = "clip_bpe"

    def __init__(self, bpe_path: str | os.PathLike[str] | None = None, context_length: int = CLIP_CONTEXT_LENGTH):
        self.context_length = _check_context_length(context_length)
        self._custom_path = None if bpe_path is None else os.fspath(bpe_path)
        path = _default_bpe_path() if bpe_path is None else os.fspath(bpe_path)
        self.bpe_path = os.path.realpath(path)
        self._bpe_data = _load_bpe(self.bpe_path)
        self.sot_token_id = self._bpe_data.encoder[_CLIP_SPECIALS[0]]
        self.eot_token_id = self._bpe_data.encoder[_CLIP_SPECIALS[1]]
        self.vocab_size = len(self._bpe_data.decoder)

    def __repr__(self) -> str:
        return f"CLIPTokenizer(context_length={self.context_length})"

    # -- BPE -------------------------------------------------------------------------

    def _bpe_ids(self, piece: str) -> tuple[int, ...]:
        data = self._bpe_data
        ids = data.cache.get(piece)
        if ids is not None:
            return ids
        symbols = list(piece[:-1]) + [piece[-1] + "</w>"]
        ranks = data.ranks
        while len(symbols) > 1:
            best_rank, best = None, None
            for pair in zip(symbols, symbols[1:]):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best = rank, pair
            if best is None:
                break
            first, second = best
            merged = first + second
            joined = []
            i, n = 0, len(symbols)
            while i < n:  # merge every occurrence, left to right, never overlapping
                if i + 1 < n and symbols[i] == first and symbols[i + 1] == second:
                    joined.append(merged)
                    i += 2
                else:
                    joined.append(symbols[i])
                    i += 1
            symbols = joined
        ids = tuple(data.encoder[s] for s in symbols)
        if len(data.cache) >= _BPE_CACHE_MAX:
            data.cache.clear()
            data.cache.update({s: (data.encoder[s],) for s in _CLIP_SPECIALS})
        data.cache[piece] = ids
        return ids

    def _encode_clean(self, cleaned: str, split: Callable[[str], list[str]]) -> list[int]:
        table = self._bpe_data.byte_table
        ids: list[int] = []
        for piece in split(cleaned):
            symbols = piece.encode("utf-8").decode("latin-1").translate(table)
            ids.extend(self._bpe_ids(symbols))
        return ids

    # -- public ----------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """BPE ids of one prompt, without the start and end ids and without truncation."""
        (text,) = _prompt_list([text])
        backend = _text_backend()
        return self._encode_clean(_clean_clip_text(text, backend.fix_text), backend.split)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of BPE ids, as open_clip decodes it (each word followed by a space)."""
        data = self._bpe_data
        symbols = []
        for i in _id_list(ids):
            if not 0 <= i < len(data.decoder):
                raise PromptError(f"token id {i} is outside the CLIP vocabulary (0..{len(data.decoder) - 1})")
            symbols.append(data.decoder[i])
        raw = bytes(data.symbol_bytes[c] for c in "".join(symbols))
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(
        self,
        texts: str | list[str],
        context_length: int | None = None,
        *,
        allow_empty: bool = True,
    ) -> np.ndarray:
        """Token ids, int64 [N, context_length].

        With ``allow_empty=False`` an empty or whitespace-only prompt raises PromptError
        (by default it becomes [start, end, 0, ...], as in open_clip).
        """
        prompts = _prompt_list(texts)
        n_ctx = self.context_length if context_length is None else _check_context_length(context_length)
        backend = _text_backend()
        rows = []
        for i, text in enumerate(prompts):
            cleaned = _clean_clip_text(text, backend.fix_text)
            if not allow_empty and not cleaned:
                raise _empty_prompt_error(i, len(prompts))
            rows.append(self._encode_clean(cleaned, backend.split))
        return _pack(rows, self.sot_token_id, self.eot_token_id, n_ctx)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"kind": self.kind, "context_length": self.context_length}
        if self._custom_path is not None:
            d["bpe_path"] = self._custom_path
        return d


# --------------------------------------------------------------------------------------
# Whole-word vocabulary of the embedded worlds
# --------------------------------------------------------------------------------------


def _letters(text: str) -> list[str]:
    """Lower-cased words of text: the runs of letters (Unicode categories L*)."""
    text = unicodedata.normalize("NFC", text.lower())
    return ["".join(run) for is_letter, run in itertools.groupby(text, key=_is_letter) if is_letter]


def _is_letter(char: str) -> bool:
    return _char_class(char) == _LETTER


class WordTokenizer:
    """Whole-word tokeniser of a small world's vocabulary.

    Ids: 0 pad, 1 ``<unk>``, 2..V+1 the vocabulary words in order, V+2 ``<sot>``,
    V+3 ``<eot>`` (the largest id: open_clip's text tower pools at the argmax id).
    Text is lower-cased (NFC) and split on every character that is not a letter; a word of
    ``aliases`` is read as the vocabulary word it names ("grey" -> "gray"). These words are
    also what a world judge reads in a prompt (:meth:`words`): one word list for both.
    """

    kind = "words"
    pad_token_id = 0
    unk_token_id = 1

    def __init__(self, vocab: list[str], context_length: int = 16, aliases: Mapping[str, str] | None = None):
        if isinstance(vocab, (str, bytes)) or not isinstance(vocab, Iterable):
            raise ConfigError(f"vocab must be a list of words, got a {type(vocab).__name__}")
        words = list(vocab)
        if not words:
            raise ConfigError("vocab is empty; give the world's words")
        ids: dict[str, int] = {}
        for i, word in enumerate(words):
            if not isinstance(word, str):
                raise ConfigError(f"vocab entry {i} is a {type(word).__name__}, not a str")
            if _letters(word) != [word]:
                raise ConfigError(
                    f"vocab entry {i} ({word!r}) is not one lower-case word of letters; "
                    f"the text splits it as {_letters(word)}"
                )
            if word in ids:
                raise ConfigError(f"vocab entry {i} ({word!r}) repeats entry {ids[word] - 2}")
            ids[word] = i + 2
        self._vocab = words
        self._ids = ids
        self._aliases = _check_aliases(aliases, ids)
        self.context_length = _check_context_length(context_length)
        self.sot_token_id = len(words) + 2
        self.eot_token_id = len(words) + 3

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self._vocab)} words, context_length={self.context_length})"

    @property
    def vocab(self) -> list[str]:
        return list(self._vocab)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab) + 4

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def words(self, text: str) -> list[str]:
        """The words of one prompt as this vocabulary reads them: letter runs, lower-cased, aliases replaced."""
        (text,) = _prompt_list([text])
        return [self._aliases.get(word, word) for word in _letters(text)]

    def encode(self, text: str) -> list[int]:
        """Word ids of one prompt (unknown words -> 1), without start/end ids or truncation."""
        return [self._ids.get(word, self.unk_token_id) for word in self.words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of ids joined by spaces; pad, start and end ids are left out."""
        words = []
        for i in _id_list(ids):
            if not 0 <= i < self.vocab_size:
                raise PromptError(f"token id {i} is outside this vocabulary (0..{self.vocab_size - 1})")
            if i == self.unk_token_id:
                words.append("<unk>")
            elif 2 <= i < self.sot_token_id:
                words.append(self._vocab[i - 2])
        return " ".join(words)

    def __call__(
        self,
        texts: str | list[str],
        context_length: int | None = None,
        *,
        allow_empty: bool = True,
    ) -> np.ndarray:
        """Token ids, int64 [N, context_length]; see :meth:`CLIPTokenizer.__call__`."""
        prompts = _prompt_list(texts)
        n_ctx = self.context_length if context_length is None else _check_context_length(context_length)
        rows = []
        for i, text in enumerate(prompts):
            if not allow_empty and not text.strip():
                raise _empty_prompt_error(i, len(prompts))
            row = self.encode(text)
            if not allow_empty and not row:  # "!!!" or "123": no words at all, the empty condition
                which = "the prompt" if len(prompts) == 1 else f"prompt {i}"
                raise PromptError(f"{which} ({text!r}) has no words (this vocabulary reads letters only); "
                                  "describe the image in words")
            rows.append(row)
        return _pack(rows, self.sot_token_id, self.eot_token_id, n_ctx)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind, "vocab": list(self._vocab), "context_length": self.context_length}
        return {**d, "aliases": dict(self._aliases)} if self._aliases else d


def _check_aliases(aliases: Any, ids: Mapping[str, int]) -> dict[str, str]:
    """{other word: vocabulary word}, checked: each key one word outside the vocabulary, each value in it."""
    if aliases is None:
        return {}
    if not isinstance(aliases, Mapping):
        raise ConfigError(f"aliases must be a mapping of word -> vocabulary word, got a {type(aliases).__name__}")
    for word, target in aliases.items():
        if not isinstance(word, str) or _letters(word) != [word] or word in ids:
            raise ConfigError(f"alias {word!r} must be one lower-case word of letters that is not in the vocabulary")
        if target not in ids:
            raise ConfigError(f"alias {word!r} names {target!r}, which is not a vocabulary word")
    return dict(aliases)


# --------------------------------------------------------------------------------------

_KINDS: dict[str, tuple[type, frozenset[str], frozenset[str]]] = {
    # kind: (class, required keys, optional keys)
    "clip_bpe": (CLIPTokenizer, frozenset(), frozenset({"context_length", "bpe_path"})),
    "words": (WordTokenizer, frozenset({"vocab"}), frozenset({"context_length", "aliases"})),
}


def tokenizer_from_dict(d: Mapping[str, Any]) -> CLIPTokenizer | WordTokenizer:
    """The tokeniser a ``to_dict()`` dict describes."""
    known = ", ".join(sorted(_KINDS))
    if not isinstance(d, Mapping):
        raise ConfigError(f"a tokenizer config must be a dict, got a {type(d).__name__}")
    kind = d.get("kind")
    if kind not in _KINDS:
        raise ConfigError(f"unknown tokenizer kind {kind!r}; known kinds: {known}")
    cls, required, optional = _KINDS[kind]
    fields = {k: v for k, v in d.items() if k != "kind"}
    missing = sorted(required - fields.keys())
    if missing:
        raise ConfigError(f"tokenizer config of kind {kind!r} lacks {', '.join(missing)}")
    unknown = sorted(map(str, fields.keys() - required - optional))
    if unknown:
        allowed = ", ".join(sorted(required | optional))
        raise ConfigError(f"tokenizer config of kind {kind!r} has unknown keys {', '.join(unknown)}; allowed: {allowed}")
    return cls(**fields)

"""Arabizi -> Arabic word pairs (Jordanian dialect; Talafha et al., "Atar: Attention-based LSTM for Arabizi
Transliteration", IJECE 2021), read in place from TSV/CSV files of pairs.

The character vocabularies are built from the training pairs in ``__init__`` and handed to the model through
``info``, so a checkpoint alone can translate; characters never seen in training map to ``<unk>``. So does
``target_lexicon``, the sorted set of Arabic words of the training pairs, and, with ``word_list: wordfreq``,
``word_frequencies``: Arabic word frequencies from the wordfreq package (R. Speer, wordfreq 3, Zenodo
10.5281/zenodo.7199437; Wikipedia, subtitles, news, web text and Twitter), as buckets of [Zipf value, "space-separated
words"] (Zipf = log10 of the frequency per billion words). The model uses both when it reranks the beam's n-best.
Splits hold padded index tensors plus lengths; ``collate`` trims each batch to its longest word and counts
target tokens, so validation averages are per token.
"""
from __future__ import annotations

import codecs
import csv
import functools
import os
import re
import sys
import unicodedata
from pathlib import Path

import torch

from ..errors import ConfigError, ZooError
from .base import Batch, DataModule, check_range, register_data

PAD, UNK, SOS, EOS = "<pad>", "<unk>", "<sos>", "<eos>"
SPECIALS = (PAD, UNK, SOS, EOS)  # indices 0..3 in both vocabularies
PAD_ID, UNK_ID, SOS_ID, EOS_ID = range(4)
DEFAULT_ROOT = "../shared/data/arabizi"
FORMAT = "UTF-8 text, one pair a line: arabizi<TAB>arabic (or comma-separated), optional header line"
MAX_WORD = 100  # characters of a field (the corpus's longest is 19): longer is a broken line, not a word


def visible(text: str) -> str:
    """Without format characters (zero-width space and joiners, LRM/RLM, BOM): invisible marks that text copied
    from the web carries, which would make a word a different sequence of characters."""
    return "".join(c for c in text if unicodedata.category(c) != "Cf")


def normalize_source(text: str) -> str:
    """NFC and lowercase: the Latin side as the corpus stores it."""
    return unicodedata.normalize("NFC", text).strip().lower()


def normalize_target(text: str) -> str:
    return unicodedata.normalize("NFC", text).strip()


def _arabic(text: str) -> bool:
    return any("\u0600" <= c <= "\u06ff" or "\u0750" <= c <= "\u077f" for c in text)


def resolve(path: str | os.PathLike, root: str | None = None, env: bool = True) -> Path:
    """A data path: absolute as given; relative ones under ``root`` (env ``ZOO_ARABIZI`` wins unless not ``env``),
    tried from the working dir, then from the repository root (so the default works from any directory of a
    checkout)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    folder = (os.environ.get("ZOO_ARABIZI") if env else None) or root
    p = Path(folder).expanduser() / p if folder else p
    if p.is_absolute() or p.exists():
        return p
    in_repo = Path(__file__).resolve().parents[2] / p
    return in_repo if in_repo.exists() else p


def read_pairs(path: str | os.PathLike, log=lambda s: print(s, file=sys.stderr)) -> list[tuple[str, str]]:
    """(arabizi, arabic) pairs from a TSV/CSV file (UTF-8, or UTF-16 with a byte-order mark), normalised.
    Malformed lines (not two non-empty fields of at most ``MAX_WORD`` characters) are reported with file and line
    number and skipped; a missing or unreadable file is one ZooError."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"no word-pair file at '{path}': expected {FORMAT} (set data.root, data.train/valid or "
                       f"ZOO_ARABIZI)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ZooError(f"cannot read '{path}' ({e.strerror or type(e).__name__}): expected {FORMAT}") from None
    # UTF-16 with a byte-order mark is what Windows editors save as "Unicode": unambiguous, so read it too
    encoding = "utf-16" if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        name = "UTF-16" if encoding == "utf-16" else "UTF-8"
        raise ZooError(f"'{path}' is not {name} text (byte {e.start}); save it as UTF-8: expected {FORMAT}") from None
    if "\x00" in text:
        raise ZooError(f"'{path}' holds NUL characters (UTF-16 without a byte-order mark?); save it as UTF-8: "
                       f"expected {FORMAT}")
    lines = re.split(r"\r\n|\r|\n", text)  # not str.splitlines: a form feed or U+2028 does not end a line
    # a tab outside quotes means TSV (a quoted CSV field may hold one)
    delim = "\t" if any("\t" in re.sub(r'"[^"]*"', "", ln) for ln in lines[:50]) else ","
    pairs, bad, first_row = [], [], None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue  # blank lines are not malformed
        try:  # one line at a time, standard quoting ("word","كلمة" as spreadsheets write it): a stray quote
            # cannot swallow the lines after it; a huge line is malformed, not a csv.Error or a huge tensor
            row = next(csv.reader([line], delimiter=delim)) if len(line) <= 3 * MAX_WORD else []
        except csv.Error:
            row = []
        src, tgt = (normalize_source(visible(row[0])), normalize_target(visible(row[1]))) if len(row) == 2 \
            else ("", "")
        if not (src and tgt and len(src) <= MAX_WORD and len(tgt) <= MAX_WORD) or \
                any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in src + tgt):  # controls: no letters
            bad.append(number)
            continue
        if first_row is None and not bad:  # the file's first line
            first_row = (src, tgt)
            if src == "arabizi":
                continue  # the corpus's header
        pairs.append((src, tgt))
    rest = [t for _, t in pairs[1:]]
    if pairs and pairs[0] == first_row and not _arabic(pairs[0][1]) and \
            sum(_arabic(t) for t in rest) >= 0.9 * len(rest):
        pairs = pairs[1:]  # names above Arabic words (or alone in the file): a header, not a pair
    if sum(_arabic(s) and not _arabic(t) for s, t in pairs) > len(pairs) / 2:
        raise ZooError(f"'{path}' has Arabic script in its first column: are the columns swapped? Expected {FORMAT}")
    shown = ", ".join(f"{path}:{n}" for n in bad[:5]) + (" ..." if len(bad) > 5 else "")
    if not pairs:  # one line: the skipped lines are the reason
        skipped = f" ({len(bad)} malformed line(s): {shown})" if bad else ""
        raise ZooError(f"'{path}' holds no word pairs{skipped}: expected {FORMAT}")
    if bad:
        log(f"warning: skipped {len(bad)} malformed line(s) (want two fields of 1 to {MAX_WORD} characters): "
            f"{shown}")
    return pairs


def build_vocab(words) -> list[str]:
    """Specials, then every character of ``words`` in code-point order (deterministic, so stable across runs)."""
    return [*SPECIALS, *sorted({c for w in words for c in w})]


def encode(words: list[str], vocab: list[str] | dict[str, int], eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded indices [N, L] and lengths [N]; unknown characters become <unk>, ``eos`` appends <eos>."""
    index = vocab if isinstance(vocab, dict) else {c: i for i, c in enumerate(vocab)}
    rows = [[index.get(c, UNK_ID) for c in w] + ([EOS_ID] if eos else []) for w in words]
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out = torch.full((len(rows), max(1, int(lengths.max())) if len(rows) else 1), PAD_ID, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    return out, lengths


def wordfreq_buckets(alphabet: set[str]) -> list[list]:
    """wordfreq's Arabic list ('large': 620k words down to one per 10^8) as [[zipf, "w1 w2 ..."], ...], most
    frequent first, keeping the words spelt in ``alphabet`` (the model can write no others)."""
    return [list(bucket) for bucket in _wordfreq_buckets(frozenset(alphabet))]


@functools.lru_cache(maxsize=4)  # filtering 620k words takes a second: once per alphabet and process
def _wordfreq_buckets(alphabet: frozenset[str]) -> tuple[tuple[float, str], ...]:
    try:
        import wordfreq
    except ImportError:
        raise ZooError("data.word_list=wordfreq needs the wordfreq package: pip install wordfreq (or set "
                       "data.word_list=null)") from None
    out = []
    for i, bucket in enumerate(wordfreq.get_frequency_list("ar", "large")):  # bucket i: frequency 10^(-i/100)
        words = [w for w in map(normalize_target, bucket) if w and alphabet.issuperset(w)]
        if words:
            out.append((round(9 - i / 100, 2), " ".join(words)))
    return tuple(out)


@register_data("arabizi")
class Arabizi(DataModule):
    """Arabizi -> Arabic word pairs. Splits are (src [N, S], src_len [N], tgt [N, T], tgt_len [N]); targets end
    in <eos>. ``valid: null`` carves ``val_size`` pairs from train by ``seed``; ``limit`` keeps the first
    ``limit`` training pairs (quick runs and tests)."""

    info_keys = ("src_vocab", "tgt_vocab", "target_lexicon", "word_frequencies")

    def __init__(self, root: str = DEFAULT_ROOT, train: str = "train.tsv", valid: str | None = "valid.tsv",
                 val_size: int = 1000, limit: int | None = None, seed: int = 0, word_list: str | None = None):
        check_range("val_size", val_size, 1)
        if word_list not in (None, "wordfreq"):
            raise ConfigError(f"data.word_list={word_list!r} is not a word list this data knows; use wordfreq "
                              f"(Arabic word frequencies from the wordfreq package) or null")
        check_range("limit", limit, 1, allow_none=True)
        self.train_path = resolve(train, root)
        self.valid_path = resolve(valid, root) if valid else None
        env = os.environ.get("ZOO_ARABIZI")
        for key, given, path in (("train", train, self.train_path), ("valid", valid, self.valid_path)):
            if path is not None and not path.is_file() and env and (
                    not Path(env).expanduser().is_dir() or resolve(given, root, env=False).is_file()):
                # the env var is what is wrong: a hint to set data.root would send the user where they already are
                raise ZooError(f"no word-pair file at '{path}' (data.{key}): ZOO_ARABIZI={env} is set and wins "
                               f"over data.root; point it at the folder of {given}, or unset it")
        pairs = read_pairs(self.train_path)
        if self.valid_path is not None and not self.valid_path.is_file():
            raise ZooError(f"no word-pair file at '{self.valid_path}' (data.valid): expected {FORMAT}; "
                           f"or set data.valid=null to carve validation pairs from train")
        self.val_size, self.limit, self.seed = val_size, limit, seed
        if self.valid_path is None:
            if len(pairs) <= val_size:
                raise ConfigError(f"data.val_size={val_size} leaves no training pairs out of {len(pairs)} in "
                                  f"'{self.train_path}'; set data.val_size below {len(pairs)}")
            order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(seed)).tolist()
            self._val = [pairs[i] for i in order[:val_size]]
            pairs = [pairs[i] for i in sorted(order[val_size:])]
        else:
            self._val = None
        self._train = pairs[:limit] if limit else pairs
        # vocabularies and the target lexicon (the Arabic words seen) from the training pairs only: what the
        # model can ever have learned; never the validation words
        self.info = {"src_vocab": build_vocab(s for s, _ in self._train),
                     "tgt_vocab": build_vocab(t for _, t in self._train),
                     "target_lexicon": sorted({t for _, t in self._train})}
        if word_list:
            self.info["word_frequencies"] = wordfreq_buckets(set(self.info["tgt_vocab"]))

    def setup(self) -> Arabizi:
        val = self._val if self._val is not None else read_pairs(self.valid_path)
        if self._val is None:  # a validation file that repeats training words measures memory, not transfer
            seen = {s for s, _ in self._train}
            shared = sum(s in seen for s, _ in val)
            if shared:
                print(f"warning: {shared} of the {len(val)} validation pairs in '{self.valid_path}' have a source "
                      f"word of the training pairs; validation accuracy counts them as if new", file=sys.stderr)
        self._texts = {"train": self._train, "val": val}
        src_v, tgt_v = self.info["src_vocab"], self.info["tgt_vocab"]
        self.splits = {}
        for split, pairs in self._texts.items():
            src, src_len = encode([s for s, _ in pairs], src_v)
            tgt, tgt_len = encode([t for _, t in pairs], tgt_v, eos=True)
            self.splits[split] = (src, src_len, tgt, tgt_len)
        return self

    def texts(self, split: str) -> list[tuple[str, str]]:
        """The split's (source, reference) strings as read (references may hold characters unseen in training)."""
        self.tensors(split)  # one-line error for an unknown split
        return list(self._texts[split])

    def item_sizes(self, split: str) -> torch.Tensor:
        """(source, target) lengths: buckets of similar sources, then targets, pad both sides little."""
        _, src_len, _, tgt_len = self.tensors(split)
        return torch.stack([src_len, tgt_len], dim=1)

    def collate(self, split, parts, generator):
        """Trim to the batch's longest source and target; ``num_items`` = target tokens (incl. <eos>)."""
        src, src_len, tgt, tgt_len = parts
        s, t = int(src_len.max()), int(tgt_len.max())
        return Batch((src[:, :s], src_len, tgt[:, :t], tgt_len), num_items=tgt_len.sum())

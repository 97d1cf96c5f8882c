"""The tokenizers the offline presets train on the training titles, saved as stock `tokenizer.json` files.

Two kinds, both wrapped as a `PreTrainedTokenizerFast`, so `AutoTokenizer` and `pipeline()` load them from a
checkpoint with no project code:

- **WordPiece** (`train_wordpiece_tokenizer`): the usual BERT-style subword vocabulary.
- **Syllable bigrams** (`train_char_bigram_tokenizer`, the default preset's): every word becomes its first
  syllable, each pair of neighbouring syllables, and its last syllable (`헌재 결정` -> 헌, 헌재, 재, 결, 결정,
  정). Why: on 10k titles, a linear model over within-word character bigrams beats one over WordPiece tokens of
  any vocabulary size (docs/tuning.md, round 7). A small WordPiece cuts a word one way only, so most of the
  overlapping pairs that carry a Korean word's stem never reach the model; the bigram tokenizer hands all of them over.

How bigrams fit a stock tokenizer, whose pre-tokenizer can only cut text into pieces that do not overlap: the
normalizer writes every known character twice (`결정` -> `결결정정`), and a regex split takes the first character
alone and then pairs (`결 | 결정 | 정`), which are exactly the overlapping bigrams. The doubling is a
SentencePiece-style precompiled character map (`doubling_charsmap`): one pass per text, where a chain of one
`Replace` normalizer per character was far slower (docs/tuning.md, round 7). Characters the training titles never
showed are not doubled; their words fall back to single characters or [UNK], as unknown text does in any vocabulary.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable
from typing import Any

# Special tokens in the order (and so with the ids) klue/roberta-base uses: [CLS]=0 [PAD]=1 [SEP]=2.
SPECIAL_TOKENS = ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")
# A bigram joins the vocabulary once it occurs this often in the training titles (round 7: 2 overfit, 3 did not).
MIN_BIGRAM_COUNT = 3
TOKENIZER_KINDS = ("wordpiece", "char-bigram")


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int) -> Any:
    """Train a cased WordPiece tokenizer on the titles and wrap it for transformers.

    Cased and no accent stripping: BertNormalizer(lowercase=True) would decompose Hangul syllables
    into jamo. Post-processing adds [CLS] ... [SEP] the way RoBERTa checkpoints expect.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), min_frequency=2, show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    return _for_transformers(tok, max_length)


def train_char_bigram_tokenizer(texts: Iterable[str], vocab_size: int, max_length: int) -> Any:
    """A syllable-bigram tokenizer (module docstring) whose vocabulary comes from the training titles.

    The vocabulary: the special tokens, every character of the titles, then the most frequent bigrams seen at least
    `MIN_BIGRAM_COUNT` times, up to `vocab_size` tokens in all. A bigram outside it is read as its two characters
    (WordPiece with no continuation prefix), so a rare pair still counts through its syllables.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    texts = list(texts)
    nfc = normalizers.NFC()
    chars = sorted({c for text in texts for c in nfc.normalize_str(text) if not c.isspace()})
    normalizer = normalizers.Sequence([nfc, normalizers.Precompiled(doubling_charsmap(chars))])
    pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex("^.|.."), "isolated")])
    counts = Counter(
        piece for text in texts for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)) if len(piece) == 2
    )
    room = max(vocab_size - len(SPECIAL_TOKENS) - len(chars), 0)
    bigrams = [b for b, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= MIN_BIGRAM_COUNT][:room]
    vocab = {token: i for i, token in enumerate(dict.fromkeys([*SPECIAL_TOKENS, *chars, *bigrams]))}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]", continuing_subword_prefix=""))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    return _for_transformers(tok, max_length)


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int, max_length: int) -> Any:
    """A preset's tokenizer of `kind` (one of `TOKENIZER_KINDS`), trained on `texts`."""
    if kind == "char-bigram":
        return train_char_bigram_tokenizer(texts, vocab_size, max_length)
    if kind == "wordpiece":
        return train_wordpiece_tokenizer(texts, vocab_size, max_length)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")


def _for_transformers(tok: Any, max_length: int) -> Any:
    """Add [CLS] ... [SEP] the way RoBERTa checkpoints expect and wrap `tok` as a transformers fast tokenizer."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token="[CLS]",
        pad_token="[PAD]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=max_length,
    )


def doubling_charsmap(chars: Iterable[str]) -> bytes:
    """A precompiled character map (the `tokenizers.normalizers.Precompiled` format) that writes each char twice.

    The format is SentencePiece's: a little-endian u32 byte length, a darts-clone double-array trie over the UTF-8
    bytes of the source characters, then the replacement strings, NUL-terminated, which the trie's leaf values
    point into. A trie unit packs its label (low 8 bits), a has-leaf flag (bit 8) and the XOR offset to its
    children (bits 10-31); a leaf unit holds bit 31 and the replacement's byte offset. Each node's children live at
    `base ^ byte` and its leaf at `base`, with `base = position ^ offset`, the layout the reader walks.
    """
    replacements = bytearray()
    trie: dict[Any, Any] = {}
    for char in sorted(set(chars)):
        node = trie
        for byte in char.encode():
            node = node.setdefault(byte, {})
        node[None] = len(replacements)
        replacements += (char * 2).encode() + b"\0"
    units: list[int] = []
    used: list[bool] = []
    stack = [(0, trie)]
    _grow(units, used, 256)
    used[0] = True
    search_from = 1
    while stack:
        position, node = stack.pop()
        labels = sorted(k for k in node if k is not None)
        slots = ([0] if None in node else []) + labels  # the leaf takes label 0's slot
        base = _free_base(used, units, slots, position, search_from)
        units[position] |= ((position ^ base) << 10) | ((1 << 8) if None in node else 0)
        if None in node:
            used[base], units[base] = True, (1 << 31) | node[None]
        for label in labels:
            used[base ^ label], units[base ^ label] = True, label
            stack.append((base ^ label, node[label]))
        while search_from < len(used) and used[search_from]:
            search_from += 1
    trie_bytes = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie_bytes)) + trie_bytes + bytes(replacements)


def _free_base(used: list[bool], units: list[int], slots: list[int], position: int, start: int) -> int:
    """The first base at or after `start` whose slots `base ^ label` are all free (a nonzero offset, under 2**21)."""
    block = start & ~0xFF
    while True:
        _grow(units, used, block + 256)
        for base in range(block, block + 256):
            if base >= start and position ^ base and all(not used[base ^ s] for s in slots):
                if (position ^ base) >= 1 << 21:
                    raise ValueError("character map too large for a single-extent double array")
                return base
        block += 256


def _grow(units: list[int], used: list[bool], size: int) -> None:
    while len(units) < size:
        units.extend([0] * 256)
        used.extend([False] * 256)

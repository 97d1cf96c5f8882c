"""Tokenizer and model construction: hub ids, local HF directories, and the offline presets.

Why presets: the HF hub is not always reachable (laptops on planes, locked-down clusters, CI). A preset
trains its tokenizer on the training titles (`ynat_ray.vocab`) and pairs it with a small stock encoder config, so
the whole pipeline runs offline on real Korean text. With the hub, `--model klue/roberta-base` is the
real model; nothing ever switches between the two silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from ynat_ray.errors import UsageError, YnatError
from ynat_ray.labels import ID2LABEL, LABEL2ID, NUM_LABELS
from ynat_ray.vocab import train_tokenizer


@dataclass(frozen=True)
class Recipe:
    """Training defaults for a kind of model; a training option left at None takes its value from here
    (`TrainConfig.with_recipe`).

    Why per kind: a preset is trained from scratch on ~10k titles (a large learning rate, and it overfits fast, so
    strong dropout), while a pretrained encoder is fine-tuned (the usual BERT/RoBERTa recipe, its own dropout and
    tokenizer). Each preset carries the recipe `ynat-ray tune` picked for its architecture (docs/tuning.md).
    """

    learning_rate: float
    epochs: int
    batch_size: int
    warmup_ratio: float
    weight_decay: float
    hidden_dropout: float | None  # None: the pretrained config's own
    attention_dropout: float | None
    token_dropout: float
    vocab_size: int | None  # a preset's vocabulary size (cap); None for a pretrained model (its tokenizer's own)


# `ynat-ray tune`'s picks on the embedded validation rows (docs/tuning.md): rounds 1-4 for the RoBERTa presets,
# round 5 for the mean-pooled WordPiece one; round 7 gave the syllable-bigram default stronger regularisation (its
# vocabulary is several times the WordPiece one and overfits faster).
ROBERTA_PRESET_RECIPE = Recipe(learning_rate=1.88e-3, epochs=7, batch_size=64, warmup_ratio=0.171, weight_decay=6.93e-3,
                               hidden_dropout=0.284, attention_dropout=0.207, token_dropout=0.244, vocab_size=4000)  # fmt: skip
WIDE_PRESET_RECIPE = Recipe(learning_rate=1.88e-3, epochs=5, batch_size=64, warmup_ratio=0.171, weight_decay=0.05,
                            hidden_dropout=0.4, attention_dropout=0.207, token_dropout=0.3, vocab_size=4000)  # fmt: skip
BIGRAM_PRESET_RECIPE = Recipe(learning_rate=1.88e-3, epochs=5, batch_size=64, warmup_ratio=0.171, weight_decay=0.1,
                              hidden_dropout=0.5, attention_dropout=0.207, token_dropout=0.5, vocab_size=16000)  # fmt: skip
PRETRAINED_RECIPE = Recipe(learning_rate=5e-5, epochs=3, batch_size=32, warmup_ratio=0.1, weight_decay=0.01,
                           hidden_dropout=None, attention_dropout=None, token_dropout=0.0, vocab_size=None)  # fmt: skip
RECIPE_FIELDS = tuple(Recipe.__dataclass_fields__)


@dataclass(frozen=True)
class Preset:
    """Shape of an encoder trained from scratch.

    `architecture` "roberta": RobertaForSequenceClassification, which classifies from the first token ([CLS]).
    "modernbert": ModernBertForSequenceClassification with `classifier_pooling="mean"`, which classifies from the
    mean of every token's state. Both are stock transformers classes, so `pipeline()` loads either checkpoint
    without `trust_remote_code`. Why the mean-pooled one is the default: on 10k titles a from-scratch model
    generalises through its token embeddings (a bag of subwords, as a linear model over n-grams does); the mean
    keeps that path one step from the classifier, where [CLS] must first learn to gather it (docs/tuning.md).
    `tokenizer` is a `ynat_ray.vocab.TOKENIZER_KINDS` kind; the default's syllable bigrams are that bag made of
    the features a linear model does best with (round 7).
    """

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    architecture: str = "roberta"
    recipe: Recipe = ROBERTA_PRESET_RECIPE
    tokenizer: str = "wordpiece"


# 1 layer x 256, 4 heads, MLP 512, mean-pooled ModernBERT (round 5); the default reads syllable bigrams (round 7).
_WIDE = Preset(hidden_size=256, num_hidden_layers=1, num_attention_heads=4, intermediate_size=512, architecture="modernbert")
PRESETS: dict[str, Preset] = {
    "ynat-bigram": replace(_WIDE, recipe=BIGRAM_PRESET_RECIPE, tokenizer="char-bigram"),
    "ynat-wide": replace(_WIDE, recipe=WIDE_PRESET_RECIPE),
    "ynat-tiny": Preset(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
    "ynat-mini": Preset(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024),
    "ynat-small": Preset(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536),
}


def recipe_for(model: str) -> Recipe:
    """The training defaults for `model`: a preset's tuned recipe, or the usual fine-tuning one."""
    return PRESETS[model].recipe if is_preset(model) else PRETRAINED_RECIPE


class ModelLoadError(YnatError):
    """A model or tokenizer could not be loaded; the message says what to try instead."""


def is_preset(name: str) -> bool:
    """True for the offline presets (trained from scratch here), False for hub ids and local directories."""
    return name in PRESETS


def default_learning_rate(model: str) -> float:
    """Fine-tuning a pretrained encoder wants a small LR; a from-scratch preset a larger one."""
    return recipe_for(model).learning_rate


def load_tokenizer(model: str, max_length: int, train_texts: Iterable[str] | None = None, vocab_size: int | None = None) -> Any:
    """Tokenizer for `model`: trained on `train_texts` for a preset, else AutoTokenizer.from_pretrained."""
    if is_preset(model):
        if train_texts is None:
            raise ValueError(f"preset {model!r} trains its tokenizer on the training titles; pass train_texts")
        preset = PRESETS[model]
        return train_tokenizer(preset.tokenizer, train_texts, vocab_size or preset.recipe.vocab_size, max_length)
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - network, missing dir and bad repo all get the same advice
        raise ModelLoadError(load_advice(model, err)) from err
    tokenizer.model_max_length = min(tokenizer.model_max_length, max_length)
    return tokenizer


def build_model(
    model: str, tokenizer: Any, max_length: int, seed: int = 42, hidden_dropout: float | None = None, attention_dropout: float | None = None
) -> Any:
    """A sequence classifier with 7 YNAT labels whose id2label/label2id travel with the checkpoint.

    Dropouts left at None mean RobertaConfig's defaults for a preset (training passes the preset recipe's), or a
    pretrained model's own config; given ones override a pretrained config too (`from_pretrained(...,
    hidden_dropout_prob=...)`), so a tuned value means the same for both.
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if is_preset(model):
        config = preset_config(PRESETS[model], tokenizer, max_length, hidden_dropout, attention_dropout)
        net = AutoModelForSequenceClassification.from_config(config)
    else:
        try:
            net = AutoModelForSequenceClassification.from_pretrained(
                model,
                num_labels=NUM_LABELS,
                id2label=dict(ID2LABEL),
                label2id=dict(LABEL2ID),
                trust_remote_code=False,
                **_bert_dropout(hidden_dropout, attention_dropout),
            )
        except Exception as err:  # noqa: BLE001
            raise ModelLoadError(load_advice(model, err)) from err
    check_compatible(tokenizer, net.config, max_length)
    return net


def preset_config(p: Preset, tokenizer: Any, max_length: int, hidden_dropout: float | None, attention_dropout: float | None) -> Any:
    """The transformers config of a from-scratch preset: its shape, the tokenizer's ids and the 7 YNAT labels.

    RoBERTa's position table gets `position_offset` extra rows; dropouts left at None are RobertaConfig's defaults.
    ModernBERT (`_modernbert_options`) classifies from the mean of its token states.
    """
    from transformers import ModernBertConfig, RobertaConfig

    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": p.hidden_size,
        "num_hidden_layers": p.num_hidden_layers,
        "num_attention_heads": p.num_attention_heads,
        "intermediate_size": p.intermediate_size,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "num_labels": NUM_LABELS,
        "id2label": dict(ID2LABEL),
        "label2id": dict(LABEL2ID),
    }
    if p.architecture == "modernbert":
        return ModernBertConfig(**common, **_modernbert_options(p, tokenizer, max_length, hidden_dropout, attention_dropout))
    config = RobertaConfig(**common, **_bert_dropout(hidden_dropout, attention_dropout))
    config.max_position_embeddings = max_length + position_offset(config)
    return config


def _bert_dropout(hidden_dropout: float | None, attention_dropout: float | None) -> dict[str, float]:
    """The given dropouts under BERT/RoBERTa's config names; None leaves the config's own value."""
    given = {"hidden_dropout_prob": hidden_dropout, "attention_probs_dropout_prob": attention_dropout}
    return {k: v for k, v in given.items() if v is not None}


def _modernbert_options(
    p: Preset, tokenizer: Any, max_length: int, hidden_dropout: float | None, attention_dropout: float | None
) -> dict[str, Any]:
    """What a small mean-pooled ModernBERT needs beyond the shared shape, ids and labels.

    - Every layer attends globally: titles are far shorter than ModernBERT's 128-token local window, so the
      sliding-window layers would only cost a mask.
    - `hidden_dropout` is ModernBERT's embedding, MLP and classifier dropout (RoBERTa's hidden_dropout_prob covers
      the same three places), `attention_dropout` its attention dropout; None means 0.1, like RobertaConfig.
    - Positions are rotary, so `max_position_embeddings` is the trained length, which inference reads back.
    """
    hidden = 0.1 if hidden_dropout is None else hidden_dropout
    return {
        "layer_types": ["full_attention"] * p.num_hidden_layers,
        "max_position_embeddings": max_length,
        "classifier_pooling": "mean",
        "embedding_dropout": hidden,
        "mlp_dropout": hidden,
        "classifier_dropout": hidden,
        "attention_dropout": 0.1 if attention_dropout is None else attention_dropout,
        "cls_token_id": tokenizer.cls_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }


def load_classifier(path: str) -> Any:
    """A trained sequence classifier from a local directory, in eval mode, without transformers' per-load
    "Loading weights" progress bar (it lands in every Serve replica's and batch actor's log)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=False).eval()
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def position_offset(config: Any) -> int:
    """Position-table rows a model spends before its first token: RoBERTa-family models number positions from
    pad_token_id + 1 (so max_length tokens need max_length + 2 rows), others from 0 (ModernBERT's are rotary)."""
    return config.pad_token_id + 1 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0


def check_compatible(tokenizer: Any, config: Any, max_length: int) -> None:
    """Fail loudly on the mismatches that otherwise corrupt training without an error, or crash it mid-run.

    - pad ids differ: the embedding row of [CLS] (or another token) silently becomes the padding row.
    - too few position embeddings: long inputs index past the table and crash mid-run.
    - more tokens than embedding rows: those tokens index past the table.
    A pretrained model the user named can mismatch its tokenizer (`ModelLoadError`), and `--max_length` can be
    too long for its positions (`UsageError`): both are the user's to fix, so they print as one line.
    """
    if tokenizer.pad_token_id != config.pad_token_id:
        raise ModelLoadError(f"tokenizer pad_token_id {tokenizer.pad_token_id} != model config pad_token_id {config.pad_token_id}")
    offset = position_offset(config)
    needed = max_length + offset
    if config.max_position_embeddings < needed:
        raise UsageError(
            f"max_length {max_length} needs max_position_embeddings >= {needed}{' for RoBERTa' if offset else ''} "
            f"(has {config.max_position_embeddings}); lower --max_length"
        )
    if len(tokenizer) > config.vocab_size:
        raise ModelLoadError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}")


def load_advice(model: str, err: Exception) -> str:
    """What to tell a user whose model or tokenizer did not load: the error, and the offline presets."""
    return (
        f"could not load {model!r}: {err}. If the Hugging Face hub is unreachable, use a local model "
        f"directory or an offline preset (--model {' / '.join(PRESETS)})."
    )

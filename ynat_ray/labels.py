"""The one list of YNAT topics. Every id2label/label2id in the project comes from here.

The order is the Hugging Face `klue/ynat` ClassLabel order, so integer labels from the hub, from
KLUE files and from our checkpoints all mean the same topic.
"""

from __future__ import annotations

from ynat_ray.errors import YnatError

LABELS: tuple[str, ...] = ("IT과학", "경제", "사회", "생활문화", "세계", "스포츠", "정치")
NUM_LABELS = len(LABELS)
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}


class UnknownLabelError(YnatError, ValueError):
    """A label value that names no topic. A ValueError too, so row validation can catch it and name the row."""


class LabelTypeError(YnatError, TypeError):
    """A label of a type that cannot name a topic (a bool, a list). A TypeError too, for row validation."""


def label_to_id(value: object) -> int:
    """Map an integer id, a digit string ("3") or a Korean name ("생활문화") to its id.

    Raises UnknownLabelError (a ValueError) or LabelTypeError (a TypeError): row validation catches them to
    name the row; anywhere else they are the user's data at fault, so the CLI prints them in one line.
    """
    if isinstance(value, bool):
        raise LabelTypeError(f"label must be an int id or a topic name, got bool {value!r}")
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        idx = int(value)  # type: ignore[arg-type]
    elif isinstance(value, float):
        if not value.is_integer():
            raise UnknownLabelError(f"unknown label {value!r}")
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in LABEL2ID:
            return LABEL2ID[text]
        if not text.lstrip("-").isdigit():
            raise UnknownLabelError(f"unknown label {value!r}; expected one of {', '.join(LABELS)} or 0-{NUM_LABELS - 1}")
        idx = int(text)
    else:
        raise LabelTypeError(f"label must be an int id or a topic name, got {type(value).__name__}")
    if not 0 <= idx < NUM_LABELS:
        raise UnknownLabelError(f"unknown label {value!r}; ids run 0-{NUM_LABELS - 1}")
    return idx

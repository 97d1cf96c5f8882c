"""The one list of YNAT topics. Every id2label/label2id in the project comes from here.

The order is the Hugging Face `klue/ynat` ClassLabel order, so integer labels from the hub, from
KLUE files and from our checkpoints all mean the same topic.
"""

from __future__ import annotations

LABELS: tuple[str, ...] = ("IT과학", "경제", "사회", "생활문화", "세계", "스포츠", "정치")
NUM_LABELS = len(LABELS)
ID2LABEL: dict[int, str] = dict(enumerate(LABELS))
LABEL2ID: dict[str, int] = {name: i for i, name in ID2LABEL.items()}


def label_to_id(value: object) -> int:
    """Map an integer id, a digit string ("3") or a Korean name ("생활문화") to its id.

    Raises ValueError (unknown label) or TypeError (wrong type) so callers can name the row.
    """
    if isinstance(value, bool):
        raise TypeError(f"label must be an int id or a topic name, got bool {value!r}")
    if isinstance(value, int) or (hasattr(value, "dtype") and value.dtype.kind in "iu"):
        idx = int(value)  # type: ignore[arg-type]
    elif isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"unknown label {value!r}")
        idx = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text in LABEL2ID:
            return LABEL2ID[text]
        if not text.lstrip("-").isdigit():
            raise ValueError(f"unknown label {value!r}; expected one of {', '.join(LABELS)} or 0-{NUM_LABELS - 1}")
        idx = int(text)
    else:
        raise TypeError(f"label must be an int id or a topic name, got {type(value).__name__}")
    if not 0 <= idx < NUM_LABELS:
        raise ValueError(f"unknown label {value!r}; ids run 0-{NUM_LABELS - 1}")
    return idx

"""What a replica tells Prometheus: Ray Serve custom metrics, exported by Ray's metrics agent next to Serve's own.

Why these: once the model serves, its operators want the request rate and the errors, the latency, how full
the batches are and how long the engine takes per batch, the requests turned away, and the mix of predicted
topics, so that label drift shows on a dashboard (docs/serving.md has the PromQL).

Names follow Prometheus' conventions: base units (seconds), `_total` on counters. Ray prefixes every
application metric with `ray_`, and writes a counter as `<name>_total` only if its name does not end in
`_total` already; with the older OpenCensus exporter a name without it also got a deprecated gauge twin
(ray-project/ray#59072). So counters are named with `_total` here, and the exposed names are exactly
`EXPOSED` (tests/test_serve.py checks them against a real scrape). Serve adds the `deployment`, `replica`
and `application` labels to each.

Label values must be ASCII in Ray (its metrics recorder encodes them as ASCII and raises on anything else),
so a predicted topic is recorded under its KLUE English name (`TOPIC_SLUGS`: 경제 -> `economy`), not in Korean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# What Prometheus sees (Ray's `ray_` prefix included), by metric; one home for the docs and the tests.
PREFIX = "ray_"
EXPOSED = {
    "requests": "ray_ynat_requests_total",
    "latency": "ray_ynat_request_duration_seconds",
    "refused": "ray_ynat_requests_refused_total",
    "texts": "ray_ynat_texts_scored_total",
    "predictions": "ray_ynat_predictions_total",
    "batch_size": "ray_ynat_batch_size",
    "engine": "ray_ynat_engine_batch_duration_seconds",
}
STATUS_CLASS = "status_class"  # "2xx", "4xx", "5xx"
LABEL = "label"  # a predicted topic by its English name, e.g. "economy" for 경제
# The YNAT topics' English names in the KLUE paper (Park et al., 2021), as metric label values.
TOPIC_SLUGS = {
    "IT과학": "it_science", "경제": "economy", "사회": "society", "생활문화": "culture", "세계": "world", "스포츠": "sports",
    "정치": "politics",
}  # fmt: skip

# Request latency on a small CPU box spans ~1 ms (a lone title) to seconds (a queue before a timeout): fine
# steps where p50/p99 live, coarse ones beyond.
LATENCY_BUCKETS_S = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _name(key: str) -> str:
    """The name to register: Ray adds the prefix."""
    return EXPOSED[key].removeprefix(PREFIX)


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def topic_slug(label: str, label_id: int) -> str:
    """The metric label value of a topic: its English name; a label outside YNAT's as is if ASCII, else `label_<id>`."""
    if label in TOPIC_SLUGS:
        return TOPIC_SLUGS[label]
    return label if label.isascii() and label.isprintable() else f"label_{label_id}"


class ReplicaMetrics:
    """One replica's counters and histograms (`ray.serve.metrics`, so Serve's deployment/replica labels come along).

    Built in the replica's constructor: Ray metrics register with the process's core worker.
    """

    def __init__(self, labels: Sequence[str]) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.slugs = [topic_slug(label, i) for i, label in enumerate(labels)]
        self.requests = Counter(_name("requests"), "POST /predict requests answered, by status class.", tag_keys=(STATUS_CLASS,))
        self.latency = Histogram(
            _name("latency"), "POST /predict time in the replica, from the request's arrival to its answer (seconds).",
            boundaries=list(LATENCY_BUCKETS_S), tag_keys=(STATUS_CLASS,),
        )  # fmt: skip
        self.refused = Counter(_name("refused"), "Requests turned away at once by the replica's admission control (JSON 503).")
        self.texts = Counter(_name("texts"), "Texts classified and answered (200).")
        self.predictions = Counter(_name("predictions"), "Answered texts by predicted (top) label, in English.", tag_keys=(LABEL,))
        self.batch_size = Histogram(_name("batch_size"), "Texts per forward pass of the engine.", boundaries=list(BATCH_SIZE_BUCKETS))
        self.engine = Histogram(
            _name("engine"), "Engine time per batch on the compute thread: tokenize and forward pass (seconds).",
            boundaries=list(LATENCY_BUCKETS_S),
        )  # fmt: skip

    def request(self, status: int, seconds: float) -> None:
        tags = {STATUS_CLASS: status_class(status)}
        self.requests.inc(1, tags)
        self.latency.observe(seconds, tags)

    def refusal(self) -> None:
        self.refused.inc(1)

    def scored(self, top: np.ndarray) -> None:
        """Texts answered, and their predicted label ids (`top`, one per text)."""
        self.texts.inc(len(top))
        for label_id, count in enumerate(np.bincount(top, minlength=len(self.slugs)).tolist()):
            if count:
                self.predictions.inc(count, {LABEL: self.slugs[label_id]})

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.engine.observe(seconds)

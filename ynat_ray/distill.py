"""Knowledge distillation: a teacher's probabilities as a second training target (Hinton et al., 2015).

Shape, and why:
  teacher check (driver, before any data work): a checkpoint teacher must predict the student's 7 topics; its label
      order may differ (columns are matched by name), its label set may not (one-line `UsageError`).
  teacher pass (once, before training): the training rows flow through Ray Data actors that run the teacher,
      the same `batch.Predictor` `ynat-ray predict-batch` uses (the engine, `load_engine`, with the teacher's own
      CPUs/GPUs), and come out with a `teacher_probs` column beside their guid, title and label. The result is
      materialized, so every epoch reads the stored probabilities; the Train workers never load the teacher.
  student loss (each worker, `distillation_loss`): (1 - w) * CE(gold) + w * T^2 * KL(teacher_T || student_T).

The teacher's probabilities travel on the row they were computed from (the join is by row, guid kept), so no
second table can be misaligned with the training rows after a shuffle or a worker restart.

`--teacher linear` is the yardstick of `ynat_ray.linear`. Its probabilities on its own training rows would be
near one-hot (it has seen them), so each row is scored by a model fitted on the other folds (K-fold, fold =
hash of the guid): out-of-fold probabilities, what the student could not get from the gold label alone.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from ynat_ray.config import DistillArgs, EngineArgs
from ynat_ray.errors import UsageError
from ynat_ray.features import TEACHER_COLUMN
from ynat_ray.labels import LABELS

LINEAR = "linear"
LINEAR_FOLDS = 5
# Rows per teacher call: as in `batch.ROWS_PER_CALL`, several forward passes sorted by length across the call.
ROWS_PER_CALL = 1024


def check_teacher(distill: DistillArgs) -> None:
    """Options that cannot work and a teacher with other labels: one line each, before Ray starts."""
    defaults = DistillArgs()
    if not distill.teacher:
        for name in ("distill_weight", "distill_temperature"):
            if getattr(distill, name) != getattr(defaults, name):
                raise UsageError(f"--{name} needs --teacher (a checkpoint or '{LINEAR}')")
        return
    check_distill_args(distill)
    teacher_label_order(distill.teacher)


def check_distill_args(distill: DistillArgs) -> None:
    """Options that cannot work, before Ray starts."""
    if not 0.0 <= distill.distill_weight <= 1.0:
        raise UsageError(f"--distill_weight {distill.distill_weight:g} must be between 0 and 1")
    if distill.distill_temperature <= 0:
        raise UsageError(f"--distill_temperature {distill.distill_temperature:g} must be greater than 0")
    if distill.teacher_actors < 1 or distill.teacher_cpus <= 0 or distill.teacher_gpus < 0:
        raise UsageError("--teacher_actors must be >= 1, --teacher_cpus > 0 and --teacher_gpus >= 0")


def teacher_label_order(teacher: str) -> list[str]:
    """The teacher's labels in its output order; a `UsageError` (one line) unless they are the student's topics.

    Reads only the teacher's config (a URI or hub id is fetched once here; the actors read the same copy).
    """
    if teacher == LINEAR:
        return list(LABELS)
    from transformers import AutoConfig

    from ynat_ray.checkpoint import resolve_checkpoint

    config = AutoConfig.from_pretrained(resolve_checkpoint(teacher))
    labels = [config.id2label[i] for i in range(config.num_labels)]
    if sorted(labels) != sorted(LABELS):
        raise UsageError(
            f"teacher {teacher} predicts {len(labels)} labels ({', '.join(map(str, labels))}); the student needs the "
            f"{len(LABELS)} YNAT topics ({', '.join(LABELS)})"
        )
    return labels


# ---- the teacher pass -------------------------------------------------------------------------------------
class CheckpointTeacher:
    """Ray Data actor: the batch path's `Predictor` (the engine, all scores) turned into `teacher_probs` rows."""

    def __init__(self, engine: EngineArgs, cpus: float, gpus: float):
        from ynat_ray.batch import Predictor

        self.predictor = Predictor(engine, cpus, gpus, "title", ROWS_PER_CALL, all_scores=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from ynat_ray.batch import SCORE_PREFIX

        scored = self.predictor(batch)
        probs = np.stack([scored.column(f"{SCORE_PREFIX}{name}").to_numpy() for name in LABELS], axis=1)  # student order
        return with_teacher_probs(batch, probs)


class LinearTeacher:
    """Ray Data actor: out-of-fold probabilities of the linear yardstick (each row by the model that never saw it)."""

    def __init__(self, models: list[Any]):
        self.models = models

    def __call__(self, batch: pa.Table) -> pa.Table:
        titles = batch.column("title").to_pylist()
        folds = fold_of(batch.column("guid").to_pylist(), len(self.models))
        probs = np.zeros((len(titles), len(LABELS)), dtype=np.float32)
        for k, model in enumerate(self.models):
            rows = np.flatnonzero(folds == k)
            if rows.size:
                probs[rows] = aligned_proba(model, [titles[i] for i in rows])
        return with_teacher_probs(batch, probs)


def with_teacher_probs(batch: pa.Table, probs: np.ndarray) -> pa.Table:
    """The training row (guid, title, label) with the teacher's probabilities, in the student's label order."""
    values = pa.array(np.asarray(probs, dtype=np.float32).reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(values, len(LABELS))
    return pa.table({"guid": batch.column("guid"), "title": batch.column("title"), "label": batch.column("label"), TEACHER_COLUMN: column})


def fold_of(guids: list[str], folds: int) -> np.ndarray:
    """A row's fold, from its guid alone (stable across runs, processes and file order)."""
    return np.array([int.from_bytes(hashlib.blake2b(str(g).encode(), digest_size=8).digest(), "little") % folds for g in guids])


def aligned_proba(model: Any, titles: list[str]) -> np.ndarray:
    """`predict_proba` with one column per YNAT topic (a fold may lack a rare topic: its column stays 0)."""
    out = np.zeros((len(titles), len(LABELS)), dtype=np.float32)
    out[:, model.classes_] = model.predict_proba(titles)
    return out


def fit_linear_folds(titles: list[str], labels: np.ndarray, guids: list[str], folds: int = LINEAR_FOLDS) -> list[Any]:
    """The yardstick fitted `folds` times, each time without one fold (a Ray task: scikit-learn is one process)."""
    from ynat_ray.linear import yardstick

    fold = fold_of(guids, folds)
    titles_arr = np.asarray(titles, dtype=object)
    return [yardstick().fit(titles_arr[fold != k], labels[fold != k]) for k in range(folds)]


def teach(rows: Any, distill: DistillArgs) -> Any:
    """The training rows (a DataFrame, or a lazy Ray Dataset of streamed files) with the teacher's probabilities:
    a materialized Ray Dataset of guid, title, label, teacher_probs. Runs the teacher once, in Ray Data actors."""
    import pandas as pd
    import ray

    teacher_label_order(distill.teacher or "")  # again here: a Tune trial may sample its teacher
    ds = ray.data.from_pandas(rows[["guid", "title", "label"]].reset_index(drop=True)) if isinstance(rows, pd.DataFrame) else rows
    if distill.teacher == LINEAR:
        actor, kwargs = LinearTeacher, {"models": _fit_linear(ds, distill.teacher_cpus)}
    else:
        actor = CheckpointTeacher
        engine = EngineArgs(checkpoint=distill.teacher)
        kwargs = {"engine": engine, "cpus": distill.teacher_cpus, "gpus": distill.teacher_gpus}
    taught = ds.map_batches(
        actor,
        fn_constructor_kwargs=kwargs,
        compute=ray.data.ActorPoolStrategy(size=distill.teacher_actors if actor is CheckpointTeacher else 1),
        num_cpus=distill.teacher_cpus,
        num_gpus=(distill.teacher_gpus or None) if actor is CheckpointTeacher else None,
        batch_size=ROWS_PER_CALL,
        batch_format="pyarrow",
        udf_modifying_row_count=False,
    )
    return taught.materialize()


def _fit_linear(ds: Any, cpus: float) -> Any:
    """Fit the linear teacher's folds in one Ray task on the training titles (all of them: it is a linear model on
    a sparse matrix, and the titles of a million rows are tens of MB)."""
    import ray

    frame = ds.select_columns(["guid", "title", "label"]).to_pandas()
    task = ray.remote(num_cpus=cpus)(fit_linear_folds)
    return ray.get(task.remote(frame["title"].tolist(), frame["label"].to_numpy(), frame["guid"].astype(str).tolist()))


# ---- the student's loss -----------------------------------------------------------------------------------
def distillation_loss(logits: Any, labels: Any, teacher_probs: Any, weight: float, temperature: float) -> Any:
    """(1 - w) * cross-entropy with the gold labels + w * T^2 * KL(teacher softened by T || student softened by T).

    Softening stored probabilities: softmax(log p / T) = p^(1/T), renormalized. T^2 keeps the soft term's gradients
    on the scale of the hard term's as T changes (Hinton et al.). The KL is computed in fp32 (bf16 autocast
    would round the small probabilities away).
    """
    import torch
    import torch.nn.functional as F

    logits = logits.float()
    hard = F.cross_entropy(logits, labels)
    if weight == 0:
        return hard
    soft_teacher = torch.softmax(torch.log(teacher_probs.float().clamp_min(1e-8)) / temperature, dim=-1)
    soft = F.kl_div(F.log_softmax(logits / temperature, dim=-1), soft_teacher, reduction="batchmean") * temperature**2
    return (1 - weight) * hard + weight * soft

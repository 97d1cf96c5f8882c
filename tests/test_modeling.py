"""Tokenizer/model invariants, CPU planning and config parsing. No Ray cluster needed."""

from __future__ import annotations

import pytest
import torch

from ynat_ray.config import YnatConfig, build_parser, parse_config
from ynat_ray.data import embedded_split
from ynat_ray.labels import ID2LABEL, LABELS
from ynat_ray.modeling import ModelLoadError, build_model, check_compatible, load_tokenizer
from ynat_ray.resources import plan_workers

MAX_LEN = 32


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("ynat-tiny", MAX_LEN, embedded_split("train")["title"].head(3000), vocab_size=4000)


def test_special_tokens_have_roberta_ids(tokenizer):
    ids = [tokenizer.convert_tokens_to_ids(t) for t in ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")]
    assert ids == [0, 1, 2, 3, 4]
    enc = tokenizer("유튜브 크리에이터 지원")["input_ids"]
    assert enc[0] == tokenizer.cls_token_id and enc[-1] == tokenizer.sep_token_id


def test_hangul_stays_whole_and_case_is_kept(tokenizer):
    tokens = tokenizer.tokenize("유튜브 내달 운영")
    assert "유튜브" in tokens  # lowercasing normalizers would split syllables into jamo (ㅇ ㅠ ...)
    assert not any("\u1100" <= ch <= "\u11ff" for tok in tokens for ch in tok)
    assert tokenizer.tokenize("AI")[0] != tokenizer.tokenize("ai")[0]


def test_model_config_matches_tokenizer_and_labels(tokenizer):
    model = build_model("ynat-tiny", tokenizer, MAX_LEN)
    cfg = model.config
    assert cfg.max_position_embeddings == MAX_LEN + 2
    assert cfg.pad_token_id == tokenizer.pad_token_id == 1
    assert {int(k): v for k, v in cfg.id2label.items()} == ID2LABEL and list(cfg.label2id) == list(LABELS)
    # The longest allowed input runs (position ids reach max_length + 1).
    long_text = " ".join(["경제"] * 500)
    enc = tokenizer([long_text, "짧은 제목"], truncation=True, max_length=MAX_LEN, padding=True, return_tensors="pt")
    assert enc["input_ids"].shape[1] == MAX_LEN
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert logits.shape == (2, 7)


def test_wide_preset_is_a_mean_pooled_modernbert(tokenizer):
    """ynat-wide (and the default ynat-bigram, its shape over other tokens: tests/test_vocab.py) classifies from the
    mean of its token states, so a title's meaning does not hang on [CLS]."""
    model = build_model("ynat-wide", tokenizer, MAX_LEN, hidden_dropout=0.3, attention_dropout=0.2).eval()
    cfg = model.config
    assert cfg.model_type == "modernbert" and cfg.classifier_pooling == "mean"
    assert cfg.max_position_embeddings == MAX_LEN and cfg.pad_token_id == tokenizer.pad_token_id == 1
    assert (cfg.embedding_dropout, cfg.mlp_dropout, cfg.classifier_dropout, cfg.attention_dropout) == (0.3, 0.3, 0.3, 0.2)
    assert {int(k): v for k, v in cfg.id2label.items()} == ID2LABEL
    enc = tokenizer(["삼성전자 주가 상승", "축구 대표팀 승리"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
        # Padding must not change a title's score: the mean runs over real tokens only.
        padded = tokenizer(["삼성전자 주가 상승"], padding="max_length", max_length=MAX_LEN, return_tensors="pt")
        alone = model(**padded).logits
    assert logits.shape == (2, 7)
    assert torch.allclose(alone[0], logits[0], atol=1e-5)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        check_compatible(tokenizer, cfg, MAX_LEN + 1)


def test_incompatible_pad_or_positions_are_refused(tokenizer):
    model = build_model("ynat-tiny", tokenizer, MAX_LEN)
    model.config.pad_token_id = 0
    with pytest.raises(ValueError, match="pad_token_id"):
        check_compatible(tokenizer, model.config, MAX_LEN)
    model.config.pad_token_id = 1
    with pytest.raises(ValueError, match="max_position_embeddings"):
        check_compatible(tokenizer, model.config, MAX_LEN + 1)


def test_unreachable_model_names_the_presets():
    # conftest sets HF_HUB_OFFLINE=1, so this is what a user without the hub sees.
    with pytest.raises(ModelLoadError, match="ynat-tiny"):
        load_tokenizer("klue/roberta-base", MAX_LEN)


def test_cpu_plan_leaves_room_for_ray_data():
    plan = plan_workers(2, 2.0)
    assert plan.cpus_per_worker * 2 + plan.data_reserve_cpus <= 2.0 and plan.torch_threads == 1
    # a tokenize task (Ray Data's default asks for 1 CPU) must fit beside the workers, or streaming hangs
    assert plan.data_task_cpus <= 2.0 - plan.cpus_per_worker * 2
    assert plan_workers(1, 16.0).cpus_per_worker == 14.0
    assert plan_workers(4, 8.0, use_gpu=True).resources() == {"CPU": 1.0, "GPU": 1}
    with pytest.raises(ValueError, match="no CPU for Ray Data"):
        plan_workers(2, 2.0, cpus_per_worker=1.0)


def test_cpu_plan_fits_the_nodes_not_the_cluster_total():
    """3 nodes of 1 CPU: a plan over the total (3 CPUs) asked for 2 x 1.12 CPU, which no node holds, and hung."""
    from ynat_ray.resources import fits, largest_fitting_share

    plan = plan_workers(2, [1.0, 1.0, 1.0])
    assert plan.cpus_per_worker == 1.0 and fits([1.0, 1.0, 1.0], 2, plan.cpus_per_worker, plan.data_task_cpus)
    # Two 1.5-CPU nodes, 2 workers: the total's share (1.12) would leave no node room for a Data task; 0.75 does.
    plan = plan_workers(2, [1.5, 1.5])
    assert plan.cpus_per_worker == 0.75 and fits([1.5, 1.5], 2, plan.cpus_per_worker, plan.data_task_cpus)
    # One machine: the plan is what it always was.
    assert plan_workers(2, [2.0]) == plan_workers(2, 2.0)
    # A Tune trial's budget caps the share, and STRICT_SPREAD needs a node per worker.
    assert plan_workers(1, [4.0, 4.0], budget=2.0).cpus_per_worker == 1.5
    assert largest_fitting_share([1.0], 2, 0.5, 0.25, spread=True) == 0.5  # nothing fits: wait_for_placement says so


def test_config_file_and_flags_share_one_object(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nmodel: klue/roberta-base\nnum_workers: 4\n")
    cfg, _ = parse_config(["--config", str(path), "--epochs", "2", "--use_gpu"])
    assert (cfg.epochs, cfg.model, cfg.num_workers, cfg.use_gpu) == (2, "klue/roberta-base", 4, True)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown config keys: epoch"):
        parse_config(["--config", str(bad)])
    assert YnatConfig(storage_path="relative/dir").resolved_storage_path().startswith("/")
    assert YnatConfig(storage_path="s3://bucket/runs").resolved_storage_path() == "s3://bucket/runs"
    helps = [a.help for a in build_parser()._actions if a.dest != "help"]
    assert all(helps), "every option has help text"


def test_token_dropout_masks_only_real_tokens_and_only_in_training_batches(tokenizer):
    import numpy as np

    from ynat_ray.train import PadCollate

    titles = embedded_split("train")["title"].head(64).tolist()
    batch = {"input_ids": np.array([np.array(tokenizer(t)["input_ids"]) for t in titles], dtype=object), "labels": np.zeros(64)}
    plain = PadCollate(tokenizer)(batch)
    dropped = PadCollate(tokenizer, token_dropout=0.3, seed=7)(batch)
    again = PadCollate(tokenizer, token_dropout=0.3, seed=7)(batch)
    assert torch.equal(dropped["input_ids"], again["input_ids"]), "seeded: the same masks for the same seed"
    changed = dropped["input_ids"] != plain["input_ids"]
    assert (dropped["input_ids"][changed] == tokenizer.mask_token_id).all()
    special = torch.isin(plain["input_ids"], torch.tensor(tokenizer.all_special_ids))
    assert not (changed & special).any(), "[CLS], [SEP] and padding are never masked"
    assert torch.equal(dropped["attention_mask"], plain["attention_mask"])
    real = (~special).sum().item()
    assert 0.2 * real < changed.sum().item() < 0.4 * real


def test_recipes_fill_only_what_the_user_left_open():
    default = YnatConfig(epochs=2).with_recipe()
    assert default.model == "ynat-bigram" and default.epochs == 2 and default.learning_rate > 1e-4
    assert default.hidden_dropout is not None and default.vocab_size == 16000
    tiny = YnatConfig(model="ynat-tiny", vocab_size=2000).with_recipe()
    assert tiny.vocab_size == 2000 and tiny.epochs == 7, "each preset has its own tuned recipe; a given value wins"
    roberta = YnatConfig(model="klue/roberta-base").with_recipe()
    assert roberta.learning_rate == 5e-5 and roberta.hidden_dropout is None and roberta.token_dropout == 0.0

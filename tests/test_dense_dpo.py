"""DenseDPO: the segment margins and loss by hand, equality with TRL's DPO loss, ties, training, bad rows."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

from segrl.errors import UserError
from segrl.losses import dense_dpo_loss, segment_margins
from segrl.trainers.dense_dpo import (
    DataCollatorForDensePreference,
    DenseDPOConfig,
    DenseDPOTrainer,
    validate_dense_dpo_row,
)

EOS = 1  # the fixture tokenizer's "<eos>"
COMMON = dict(report_to="none", use_cpu=True, bf16=False, save_strategy="no", seed=0, logging_steps=1)


def nll_sigmoid(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


# ------------------------------------------------------------------------------------------ pure functions


def test_segment_margins_by_hand():
    # ratios y0: [0.5, -1.0, 0.5, -1.0, 3.0]; ratios y1: [0.2, -0.5, -0.5, 0.3, NaN]
    policy = torch.tensor([[-1.0, -2.0, -0.5, -3.0, -1.0], [-0.2, -1.5, -2.5, -0.7, math.nan]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0, -1.0, -2.0, -4.0], [-0.4, -1.0, -2.0, -1.0, 0.0]])
    chosen_ids = torch.tensor([[0, 1, 1, 1, -1]])  # segment 0: 1 token, segment 1: 3 tokens, then a -1 token (EOS)
    rejected_ids = torch.tensor([[0, 0, 0, 1, -1]])  # segment 0: 3 tokens, segment 1: 1 token; the -1 token is NaN
    margins = segment_margins(policy, ref, chosen_ids, rejected_ids, num_segments=2, beta=0.1)
    # h0 = 0.1 * (0.5 - (0.2 - 0.5 - 0.5)) = 0.13; h1 = 0.1 * ((-1.0 + 0.5 - 1.0) - 0.3) = -0.18
    torch.testing.assert_close(margins, torch.tensor([[0.13, -0.18]]), atol=1e-6, rtol=0)

    loss, pair_losses = dense_dpo_loss(margins, torch.tensor([[1, -1]]))
    assert loss.item() == pytest.approx((nll_sigmoid(0.13) + nll_sigmoid(0.18)) / 2, abs=1e-6)
    loss, _ = dense_dpo_loss(margins, torch.tensor([[1, 0]]))
    assert loss.item() == pytest.approx(nll_sigmoid(0.13), abs=1e-6)
    loss, _ = dense_dpo_loss(margins, torch.tensor([[-1, 0]]))  # the label's sign flips h: -log sigma(-h)
    assert loss.item() == pytest.approx(nll_sigmoid(-0.13), abs=1e-6)
    loss, _ = dense_dpo_loss(margins, torch.tensor([[0, 1]]))
    assert loss.item() == pytest.approx(nll_sigmoid(-0.18), abs=1e-6)

    loss.backward()
    grad = policy.grad
    # d/dh1 of -log sigma(h1) = -sigma(-h1); h1 = 0.1 * (sum of segment 1 of y0 - segment 1 of y1)
    g = -0.1 / (1 + math.exp(-0.18))
    torch.testing.assert_close(grad, torch.tensor([[0, g, g, g, 0], [0, 0, 0, -g, 0]]), atol=1e-6, rtol=0)


def test_pairs_of_ties_are_left_out_of_the_mean():
    margins = torch.tensor([[0.4, -0.2, 0.0], [1.0, 2.0, 0.0], [0.3, 0.0, 0.0]], requires_grad=True)
    labels = torch.tensor([[1, 1, 0], [0, 0, 0], [-1, 0, 0]])  # the middle pair is all ties (and padding)
    loss, pair_losses = dense_dpo_loss(margins, labels)
    first = (nll_sigmoid(0.4) + nll_sigmoid(-0.2)) / 2
    third = nll_sigmoid(-0.3)
    torch.testing.assert_close(pair_losses, torch.tensor([first, 0.0, third]), atol=1e-6, rtol=0)
    assert loss.item() == pytest.approx((first + third) / 2, abs=1e-6)
    loss.backward()
    assert margins.grad[1].abs().sum() == 0 and margins.grad[:, 2].abs().sum() == 0

    only_ties, _ = dense_dpo_loss(margins, torch.zeros_like(labels))
    assert only_ties.item() == 0.0 and only_ties.requires_grad


# ---------------------------------------------------------------------------------------------- data rows


def row(prompt, chosen, rejected, chosen_segments, rejected_segments, labels):
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected,
            "chosen_segment_ids": chosen_segments, "rejected_segment_ids": rejected_segments,
            "segment_labels": labels}


# aligned pairs: a shared first segment, a differing second one, EOS in no segment
ROWS = [
    row([EOS, 5, 6], [7, 8, 9, 10, EOS], [7, 8, 11, EOS], [0, 0, 1, 1, -1], [0, 0, 1, -1], [0, 1]),
    row([EOS, 12], [13, 14, 15, EOS], [13, 16, 17, 18, EOS], [0, 1, 1, -1], [0, 1, 1, 1, -1], [0, -1]),
    row([EOS, 20, 21, 22], [23, 24, EOS], [25, 26, EOS], [0, 1, -1], [0, 1, -1], [0, 0]),
    row([EOS, 30], [31, 32, 33, EOS], [34, 35, 36, EOS], [0, 1, 2, -1], [0, 1, 2, -1], [1, -1, 1]),
]


def whole(r, label=1):
    """The row with one segment covering every completion token (EOS included) and one whole-pair label."""
    return {**r, "chosen_segment_ids": [0] * len(r["chosen_ids"]),
            "rejected_segment_ids": [0] * len(r["rejected_ids"]), "segment_labels": [label]}


def swapped(r):
    return {**r, "chosen_ids": r["rejected_ids"], "rejected_ids": r["chosen_ids"],
            "chosen_segment_ids": r["rejected_segment_ids"], "rejected_segment_ids": r["chosen_segment_ids"],
            "segment_labels": [-x for x in r["segment_labels"]]}


def test_collator_adds_aligned_segments():
    collator = DataCollatorForDensePreference(pad_token_id=0)
    batch = collator(ROWS[:2])
    assert batch["input_ids"].shape == batch["segment_ids"].shape == (4, 8)
    assert batch["segment_ids"].tolist() == [
        [-1, -1, -1, 0, 0, 1, 1, -1],  # y0 of row 0: prompt, segments, EOS
        [-1, -1, 0, 1, 1, -1, -1, -1],  # y0 of row 1: prompt, segments, EOS, padding
        [-1, -1, -1, 0, 0, 1, -1, -1],  # y1 of row 0
        [-1, -1, 0, 1, 1, 1, -1, -1],  # y1 of row 1
    ]
    assert batch["input_ids"][0].tolist() == [EOS, 5, 6, 7, 8, 9, 10, EOS]
    assert batch["segment_labels"].tolist() == [[0, 1], [0, -1]]
    in_segment = batch["segment_ids"] >= 0
    assert (batch["completion_mask"].bool() | ~in_segment).all()  # segments lie on completion tokens only
    assert collator([ROWS[0], ROWS[3]])["segment_labels"].tolist() == [[0, 1, 0], [1, -1, 1]]  # padded with ties


def test_bad_rows_name_the_row_and_field():
    good = ROWS[0]
    for r in ROWS:
        validate_dense_dpo_row(r, 0)
    cases = [
        ({"segment_labels": [0, 2]}, "segment_labels", "-1, 0 or 1"),
        ({"chosen_segment_ids": [0, 0, 1, 1]}, "chosen_segment_ids", "4 entries for 5 tokens"),
        ({"rejected_segment_ids": [0, 0, 2, -1]}, "rejected_segment_ids", "outside -1..1"),
        ({"rejected_segment_ids": [0, 0, 0, -1]}, "rejected_segment_ids", "segment 1 has no token"),
        ({"segment_labels": [0, 1, 1]}, "segment 2 has no token", "both responses"),
        ({"prompt_ids": []}, "prompt_ids", "at least one token"),
        ({"chosen_ids": "7 8 9"}, "chosen_ids", "list of ints"),
        ({"segment_labels": [0.0, 1.0]}, "segment_labels", "list of ints"),
    ]
    for change, field, expected in cases:
        with pytest.raises(UserError, match="row 3") as info:
            validate_dense_dpo_row({**good, **change}, 3)
        assert field in str(info.value) and expected in str(info.value)
    with pytest.raises(UserError, match=r"row 0, field 'chosen_ids'.*8 tokens, more than max_length=7"):
        validate_dense_dpo_row(good, 0, max_length=7)
    validate_dense_dpo_row(good, 0, max_length=8)


def test_config_refuses_what_dense_dpo_does_not_implement():
    for bad in (dict(loss_type="ipo"), dict(ld_alpha=0.5), dict(use_weighting=True),
                dict(precompute_ref_log_probs=True), dict(f_divergence_type="forward_kl"), dict(beta=0.0)):
        with pytest.raises(UserError, match="DenseDPO"):
            DenseDPOConfig(output_dir="x", **COMMON, **bad)
    assert DenseDPOConfig(output_dir="x", **COMMON).beta == 0.1


# ------------------------------------------------------------------------------------------------ trainers


@pytest.fixture(scope="module")
def tokenizer(random_model_dir):
    return AutoTokenizer.from_pretrained(random_model_dir)


def dense_trainer(random_model_dir, tokenizer, tmp_path, rows=ROWS, **overrides):
    model = AutoModelForCausalLM.from_pretrained(random_model_dir)
    args = DenseDPOConfig(output_dir=str(tmp_path / "dense"), **{**COMMON, **overrides})
    return DenseDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)


def trl_dpo_trainer(random_model_dir, tokenizer, tmp_path, **kwargs):
    model = AutoModelForCausalLM.from_pretrained(random_model_dir)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), **COMMON)  # loss_type "sigmoid", beta 0.1: TRL's defaults
    # TRL 1.16's DPOTrainer only takes text rows (it tokenizes them itself); the batch is fed to it directly below
    text = Dataset.from_dict({"prompt": ["The soup was"], "chosen": [" hot."], "rejected": [" cold."]})
    return DPOTrainer(model=model, args=args, train_dataset=text, processing_class=tokenizer, **kwargs)


def perturb(*models, only_trainable=False):
    """Move the policies away from the reference, identically in every model, so the log-ratios are not all 0."""
    with torch.no_grad():
        for model in models:
            torch.manual_seed(1)
            for p in model.parameters():
                if p.requires_grad or not only_trainable:
                    p.add_(0.05 * torch.randn_like(p))


def loss_on(trainer, rows):
    batch = trainer.data_collator(rows)
    return trainer.compute_loss(trainer.model, batch)


def test_one_whole_segment_with_label_plus_one_is_trl_dpo(random_model_dir, tokenizer, tmp_path):
    dense = dense_trainer(random_model_dir, tokenizer, tmp_path)
    dpo = trl_dpo_trainer(random_model_dir, tokenizer, tmp_path)
    rows = [whole(r) for r in ROWS]
    perturb(dense.model, dpo.model)
    batch = dense.data_collator(rows)
    trl_batch = {k: v for k, v in batch.items() if k not in ("segment_ids", "segment_labels")}
    with torch.no_grad():
        expected = dpo.compute_loss(dpo.model, trl_batch)
        got = dense.compute_loss(dense.model, batch)
        flipped = dense.compute_loss(dense.model, dense.data_collator([swapped(r) for r in rows]))
    assert abs(expected.item() - math.log(2)) > 1e-3  # the check is not 0 == 0
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    assert flipped.item() == pytest.approx(expected.item(), abs=1e-6)  # y1 first with label -1: the same loss
    metrics = dense._metrics["eval" if not dense.model.training else "train"]
    assert "rewards/margins" in metrics and "rewards/accuracies" not in metrics


def test_with_a_lora_adapter_the_reference_is_the_base_model_as_in_trl(random_model_dir, tokenizer, tmp_path):
    from peft import LoraConfig

    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = DenseDPOConfig(output_dir=str(tmp_path / "dense"), **COMMON)
    dense = DenseDPOTrainer(model=AutoModelForCausalLM.from_pretrained(random_model_dir), args=args,
                            train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer,
                            peft_config=LoraConfig(**lora))
    dpo = trl_dpo_trainer(random_model_dir, tokenizer, tmp_path, peft_config=LoraConfig(**lora))
    assert dense.ref_model is None and dpo.ref_model is None  # the reference is the adapter switched off
    perturb(dense.model, dpo.model, only_trainable=True)
    rows = [whole(r) for r in ROWS]
    batch = dense.data_collator(rows)
    trl_batch = {k: v for k, v in batch.items() if k not in ("segment_ids", "segment_labels")}
    with torch.no_grad():
        expected = dpo.compute_loss(dpo.model, trl_batch)
        got = dense.compute_loss(dense.model, batch)
    assert abs(expected.item() - math.log(2)) > 1e-3
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)


def test_tied_pairs_give_zero_loss_and_zero_gradient(random_model_dir, tokenizer, tmp_path):
    trainer = dense_trainer(random_model_dir, tokenizer, tmp_path)
    trainer.model.train()
    perturb(trainer.model)
    tied = [ROWS[2], {**ROWS[0], "segment_labels": [0, 0]}]
    loss = loss_on(trainer, tied)
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in trainer.model.parameters())
    assert trainer._metrics["train"]["dense_dpo/tied_pairs"][-1] == 2
    assert "dense_dpo/segment_accuracy" not in trainer._metrics["train"]

    with torch.no_grad():
        alone = loss_on(trainer, [ROWS[0], ROWS[1], ROWS[3]])
        mixed = loss_on(trainer, [ROWS[0], ROWS[2], ROWS[1], ROWS[3]])
    assert alone.item() > 0
    assert mixed.item() == pytest.approx(alone.item(), abs=1e-6)
    assert trainer._metrics["train"]["dense_dpo/tied_pairs"][-1] == 1
    assert trainer._metrics["train"]["dense_dpo/labelled_segments"][-1] == pytest.approx((1 + 1 + 0 + 3) / 4)


def test_train_two_steps_and_log_the_metrics(random_model_dir, tokenizer, tmp_path):
    trainer = dense_trainer(random_model_dir, tokenizer, tmp_path, per_device_train_batch_size=2, max_steps=2,
                            learning_rate=1e-2)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    logs = [r for r in trainer.state.log_history if "dense_dpo/tied_pairs" in r]
    assert len(logs) == 2
    # the 4 rows are seen once over the 2 steps of 2 pairs: 1 tied pair and 1 + 1 + 0 + 3 labelled segments
    assert sum(r["dense_dpo/tied_pairs"] for r in logs) == 1
    assert sum(2 * r["dense_dpo/labelled_segments"] for r in logs) == pytest.approx(5)
    assert all(0 <= r["dense_dpo/segment_accuracy"] <= 1 for r in logs)
    assert all({"loss", "rewards/chosen", "rewards/margins", "entropy"} <= set(r) for r in logs)
    assert not any("rewards/accuracies" in r for r in logs)
    assert any(not torch.equal(v, trainer.model.state_dict()[k]) for k, v in before.items())


def test_trainer_validates_the_dataset(random_model_dir, tokenizer, tmp_path):
    bad = [ROWS[0], {**ROWS[1], "rejected_segment_ids": [0, 0, 0, 0, -1]}]
    with pytest.raises(UserError, match=r"train dataset, row 1, field 'rejected_segment_ids'.*segment 1"):
        dense_trainer(random_model_dir, tokenizer, tmp_path, rows=bad)
    with pytest.raises(UserError, match=r"row 0, field 'chosen_ids'.*max_length=6"):
        dense_trainer(random_model_dir, tokenizer, tmp_path, max_length=6)
    text = [{"prompt": "The soup was", "chosen": " hot.", "rejected": " cold."}]
    with pytest.raises(UserError, match="lacks prompt_ids"):
        dense_trainer(random_model_dir, tokenizer, tmp_path, rows=text)

"""prompt.loss=pair: a binary log-loss on the P(yes) eval reads, on the tiny LLaMA fixture."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tallrec_cli.core.errors import ConfigError
from tallrec_cli.train.pair_loss import (
    PairLossTrainer,
    answer_pair_logits,
    answer_positions,
    class_weights,
    pair_loss,
    pair_targets,
)
from tallrec_cli.train.run import run_training
from tests.train_helpers import tiny_config, write_dataset

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _trainer(tmp_path, tiny_model_dir, **overrides):
    """A PairLossTrainer built the way run_training builds it, and its label tokens and prompts."""
    from datasets import Dataset

    from tallrec_cli.model.loading import load_tokenizer, resolve_model_source
    from tallrec_cli.model.prompts import load_template, resolve_label_tokens
    from tallrec_cli.train.data import prepare_data
    from tallrec_cli.train.run import _sft_config, build_model

    config = tiny_config(tiny_model_dir, write_dataset(tmp_path / "data"), tmp_path / "run",
                         prompt__loss="pair", lora__dropout=0.0, **overrides)
    source = resolve_model_source(config.model.name)
    tokenizer = load_tokenizer(source, False, padding_side="left")
    template = load_template(config.prompt.template)
    data = prepare_data(config, tokenizer, template)
    labels = resolve_label_tokens(tokenizer, template)
    torch.manual_seed(0)
    model = build_model(config, source)
    for name, parameter in model.named_parameters():  # LoRA B starts at zero: give the adapter an effect
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    args = _sft_config(config, tmp_path / "run", 2, 1, precision=None)
    dataset = Dataset.from_dict({"prompt": data.train_prompts, "completion": data.train_completions})
    trainer = PairLossTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                              label_tokens=labels, weights=(1.0, 1.0))
    return trainer, labels, data


def test_pair_loss_gradient_is_the_binary_log_loss_gradient_of_eval_p_yes(tmp_path, tiny_model_dir):
    from tallrec_cli.model.scoring import score_prompts

    trainer, labels, data = _trainer(tmp_path, tiny_model_dir)
    model = trainer.model
    model.eval()
    rows = [0, 1, 2, 5]  # likes and dislikes, prompts of different lengths padded in one batch
    batch = trainer.data_collator([trainer.train_dataset[i] for i in rows])
    loss = trainer.compute_loss(model, dict(batch))
    loss.backward()
    pair_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()

    # Reference: P(yes) exactly as eval computes it (prompt alone, softmax over the two label logits),
    # then the binary log-loss, differentiated by autograd.
    truth = torch.tensor([float(data.train_records[i]["label"]) for i in rows])
    p_yes = []
    for i in rows:
        ids = trainer.processing_class(data.train_prompts[i], return_tensors="pt")["input_ids"]
        logits = model(input_ids=ids).logits[0, -1, [labels.positive_id, labels.negative_id]]
        p_yes.append(torch.softmax(logits.float(), dim=-1)[0])
    p_yes = torch.stack(p_yes)
    reference = torch.nn.functional.binary_cross_entropy(p_yes, truth)
    reference.backward()
    assert torch.allclose(loss, reference, atol=1e-5)
    assert set(truth.tolist()) == {0.0, 1.0}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert torch.allclose(pair_grads[name], parameter.grad, atol=1e-5), name
    assert any(g.abs().sum() > 0 for g in pair_grads.values())
    with torch.no_grad():
        eval_p_yes = score_prompts(model, trainer.processing_class, [data.train_prompts[i] for i in rows], labels,
                                   prefix_cache="off")
    np.testing.assert_allclose(eval_p_yes, p_yes.detach().numpy(), atol=1e-5)


def _batch(trainer, rows):
    """A collated, padded training batch, its model inputs (no labels), each row's answer position and target."""
    batch = dict(trainer.data_collator([trainer.train_dataset[i] for i in rows]))
    positions, first_tokens = answer_positions(batch["labels"])
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    return batch, inputs, positions, pair_targets(first_tokens, trainer.label_tokens)


def test_pair_logits_are_the_full_logits_at_each_rows_answer_position(tmp_path, tiny_model_dir):
    """By hand: the whole-vocabulary logits of the padded batch, read at each row's answer position (no
    logits_to_keep, whose per-row form older transformers read as [B, B, 1, V])."""
    trainer, labels, _ = _trainer(tmp_path, tiny_model_dir)
    model = trainer.model.eval()
    _, inputs, positions, _ = _batch(trainer, [0, 1, 2, 5])
    with torch.no_grad():
        pair, _ = answer_pair_logits(model, model, inputs, positions, labels)
        full = model(**inputs).logits[torch.arange(4), positions][:, [labels.positive_id, labels.negative_id]]
    assert len(set(positions.tolist())) > 1  # rows of different lengths, padded
    torch.testing.assert_close(pair, full, rtol=0, atol=1e-5)


def test_pair_logits_stay_fp32_under_bf16_autocast(tmp_path, tiny_model_dir):
    trainer, labels, _ = _trainer(tmp_path, tiny_model_dir)
    model = trainer.model.eval()
    label_rows = [labels.positive_id, labels.negative_id]
    head = model.get_base_model().get_output_embeddings()
    with torch.no_grad():  # label logits near +-20, where bf16 resolves steps of 0.125
        head.weight[label_rows] = torch.randn(2, head.weight.shape[1], generator=torch.Generator().manual_seed(0)) * 4
    batch, inputs, positions, targets = _batch(trainer, [0, 1, 2, 5])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        pair, _ = answer_pair_logits(model, model, inputs, positions, labels)
        loss = trainer.compute_loss(model, batch)
        hidden = model.get_base_model().model(**inputs).last_hidden_state[torch.arange(4), positions]
    exact = hidden.float() @ head.weight[label_rows].float().T
    in_bf16 = (hidden.bfloat16() @ head.weight[label_rows].bfloat16().T).float()
    assert pair.dtype == torch.float32 and exact.abs().max() > 10
    torch.testing.assert_close(pair, exact, rtol=0, atol=1e-4)
    assert (in_bf16 - exact).abs().max() > 1e-2  # what a bf16 projection would have trained on
    torch.testing.assert_close(loss, pair_loss(exact, targets), rtol=0, atol=1e-4)
    assert abs(pair_loss(in_bf16, targets) - pair_loss(exact, targets)) > 1e-3


def test_pair_loss_is_not_the_answer_loss(tmp_path, tiny_model_dir):
    """The answer loss covers every answer token over the whole vocabulary; the pair loss must differ."""
    from trl import SFTTrainer

    trainer, _, _ = _trainer(tmp_path, tiny_model_dir)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    pair = trainer.compute_loss(trainer.model, dict(batch))
    answer = SFTTrainer.compute_loss(trainer, trainer.model, dict(batch))
    assert not torch.allclose(pair, answer)


def test_class_weights_and_weighted_loss():
    assert class_weights([1, 1, 1, 0], "none") == (1.0, 1.0)
    assert class_weights([1, 1, 1, 0], "balanced") == (2.0, 2 / 3)
    assert class_weights([1, 1], "balanced") == (1.0, 1.0)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([1.0, 1.0])
    plain = pair_loss(logits, targets)
    assert torch.isclose(pair_loss(logits, targets, (1.0, 3.0)), 3 * plain)
    expected = -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.sigmoid(torch.tensor(-1.0)))) / 2
    assert torch.isclose(plain, expected)


def test_answer_positions_reads_the_first_completion_token():
    labels = torch.tensor([[-100, -100, 7, 8, -100], [-100, -100, -100, 9, 8]])
    positions, tokens = answer_positions(labels)
    assert positions.tolist() == [1, 2] and tokens.tolist() == [7, 9]
    with pytest.raises(ValueError):
        answer_positions(torch.tensor([[-100, -100, -100]]))


def test_class_weight_needs_the_pair_loss(tmp_path):
    with pytest.raises(ConfigError, match="class_weight: balanced needs prompt.loss=pair"):
        tiny_config(tmp_path, tmp_path, tmp_path / "run", prompt__class_weight="balanced")


def test_accumulated_micro_batches_leave_the_gradient_of_the_whole_batch(tmp_path, tiny_model_dir):
    """Two micro-batches of 2 (gradient accumulation 2) must leave the gradient of the mean pair loss over the 4
    records: each micro-batch mean is divided by the accumulation steps, as the training loop runs them."""
    trainer, _, _ = _trainer(tmp_path, tiny_model_dir)
    model = trainer.model
    assert trainer.args.gradient_accumulation_steps == 2
    whole, _, _, _ = _batch(trainer, [0, 1, 2, 5])
    trainer.compute_loss(model.train(), whole).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 2  # what the training loop sets before each optimizer step
    answer_tokens = int((whole["labels"] != -100).sum())  # the loop's num_items_in_batch
    for rows in ([0, 1], [2, 5]):
        trainer.training_step(model, _batch(trainer, rows)[0], answer_tokens)
    assert any(gradient.abs().sum() > 0 for gradient in expected.values())
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_pair_loss_trains_with_balanced_weights_and_records_the_loss_it_trained_on(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    """12 likes and 4 dislikes: scikit-learn's balanced weights are (2, 2/3); every training micro-batch is weighted
    with them, and metrics.jsonl's train_loss is the mean of the losses computed (rounded by Trainer's logs)."""
    from sklearn.utils.class_weight import compute_class_weight

    from tallrec_cli.train import pair_loss as module
    from tests.train_helpers import record

    data = write_dataset(tmp_path / "data")
    labels = [1, 1, 1, 0] * 4
    (data / "train.jsonl").write_text("".join(json.dumps(record(i, label)) + "\n" for i, label in enumerate(labels)))
    calls = []

    def spy(pair_logits, targets, weights=(1.0, 1.0)):
        loss = pair_loss(pair_logits, targets, weights)
        calls.append((weights, loss.item()))
        return loss

    monkeypatch.setattr(module, "pair_loss", spy)
    config = tiny_config(tiny_model_dir, data, tmp_path / "run", prompt__loss="pair", prompt__class_weight="balanced")
    summary = run_training(config)
    balanced = tuple(compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(labels)))
    assert balanced == pytest.approx((2.0, 2 / 3))
    assert len(calls) == 8 and all(weights == pytest.approx(balanced) for weights, _ in calls)  # 4 steps x 2
    step_losses = np.array([loss for _, loss in calls]).reshape(4, 2).mean(axis=1)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["train_loss"] for row in rows[1:]] == pytest.approx(
        [step_losses[:2].mean(), step_losses[2:].mean()], abs=1e-4)
    assert summary["train_loss"] == rows[-1]["train_loss"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["config"]["prompt"]["loss"] == "pair"
    assert manifest["config"]["prompt"]["class_weight"] == "balanced"

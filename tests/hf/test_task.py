"""HFTask: tiny BERT and GPT-2 (built from configs) trained by tasktrain equal a plain-PyTorch loop.

The reference (``_hf_tiny.reference_fit``) is AdamW with no decay on biases and LayerNorms,
linear warm-up then linear decay, clipping at 1.0, and each optimizer step the mean over all its
label tokens: exactly what ``TrainingArguments``' defaults and the ``num_items_in_batch`` fix
describe. 14 sequences of 3..12 tokens in micro-batches of 2, accumulating 3: groups of 3, 3 and
a remainder group of 1 per epoch, so micro-batches (and groups) hold different token counts.
"""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

import _hf_tiny as tiny

import tasktrain as tt
from tasktrain.hf import HFTask
from tasktrain.hf.task import decay_parameter_names, warmup_steps_for
from tasktrain.loggers import CSVLogger

SAMPLES, BATCH, ACCUMULATE, EPOCHS = 14, 2, 3, 2
LR, DECAY, WARMUP = 1e-2, 0.01, 2
MODELS = {
    "bert": (lambda: tiny.tiny_bert("mlm"), tiny.mlm_collate, False),
    "gpt2": (tiny.tiny_gpt2, tiny.lm_collate, True),
}


def _trainer(tmp_path: Path, **kwargs: Any) -> tt.Trainer:
    args: dict[str, Any] = {
        "max_epochs": EPOCHS,
        "accumulate_grad_batches": ACCUMULATE,
        "logger": CSVLogger(str(tmp_path)),
        "log_every_n_steps": 1,
        "enable_progress_bar": False,
        "enable_checkpointing": False,
        "default_root_dir": tmp_path,
        "accelerator": "cpu",
    }
    return tt.Trainer(**{**args, **kwargs})


def _logged_losses(tmp_path: Path) -> list[float]:
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        return [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]


def _task(model: torch.nn.Module, **kwargs: Any) -> HFTask:
    return HFTask(model, learning_rate=LR, weight_decay=DECAY, warmup_steps=WARMUP, **kwargs)


def _reference(
    model: torch.nn.Module, steps: list[list[dict[str, Any]]], causal: bool, **kw: Any
) -> list[float]:
    return tiny.reference_fit(model, steps, lr=LR, weight_decay=DECAY, warmup=WARMUP, causal=causal, **kw)


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float = 1e-5) -> None:
    """Weights within ``atol``: GPT-2's key biases get gradients that are 0 but for rounding (softmax
    ignores them), which Adam scales up to a few 1e-6 when the sums run in another order."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(
            sa[name], sb[name], atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )


# -- 1. the same losses and weights as the plain-PyTorch loop -----------------------------------------------
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_per_step_losses_equal_a_plain_pytorch_loop_on_one_device(tmp_path, kind):
    build, collate, causal = MODELS[kind]
    loader = tiny.loader(SAMPLES, BATCH, collate)
    reference_model = build()
    expected = _reference(reference_model, tiny.groups(list(loader), ACCUMULATE) * EPOCHS, causal)
    task = _task(build())
    assert task.causal_lm is causal
    result = _trainer(tmp_path).fit(task, loader)
    assert result.global_step == len(expected) == 6
    assert _logged_losses(tmp_path) == pytest.approx(expected, abs=1e-6)
    _assert_same_weights(task.model, reference_model)


@pytest.mark.parametrize(
    ("kind", "strategy"),
    [("bert", "ddp"), ("gpt2", "ddp"), ("gpt2", "fsdp")],
    ids=["bert-ddp", "gpt2-ddp", "gpt2-fsdp"],
)
def test_per_step_losses_equal_a_plain_pytorch_loop_under_ddp(tmp_path, kind, strategy):
    """Two gloo ranks; rank r reads samples r, r+2, ...: step s joins both ranks' micro-batches
    (FSDP: the same, with parameters, gradients and optimizer state sharded)."""
    build, collate, causal = MODELS[kind]
    samples = 2 * SAMPLES
    data = tiny.sequences(samples)
    per_rank = [
        tiny.groups([collate(data[r::2][i : i + BATCH]) for i in range(0, SAMPLES, BATCH)], ACCUMULATE)
        for r in range(2)
    ]
    steps = [g0 + g1 for g0, g1 in zip(per_rank[0], per_rank[1], strict=True)] * EPOCHS
    reference_model = build()
    expected = _reference(reference_model, steps, causal)
    task = _task(build())
    result = _trainer(tmp_path, strategy=strategy, devices=2).fit(task, tiny.loader(samples, BATCH, collate))
    assert result.global_step == len(expected) == 6
    assert _logged_losses(tmp_path) == pytest.approx(expected, abs=1e-6)
    _assert_same_weights(task.model, reference_model)


def test_a_model_that_ignores_num_items_in_batch_still_gets_the_token_mean_update(tmp_path):
    """Its forward has no ``num_items_in_batch``: the HF Trainer would average micro-batch means."""
    loader = tiny.loader(SAMPLES, BATCH)
    steps = tiny.groups(list(loader), ACCUMULATE) * EPOCHS
    token_model, naive_model = tiny.naive_gpt2(), tiny.naive_gpt2()
    token_mean = _reference(token_model, steps, causal=True)
    naive = _reference(naive_model, steps, causal=True, token_mean=False)
    task = _task(tiny.naive_gpt2())
    _trainer(tmp_path).fit(task, loader)
    got = _logged_losses(tmp_path)
    assert got == pytest.approx(token_mean, abs=1e-6)
    _assert_same_weights(task.model, token_model)
    # The naive per-micro-batch mean is another update: different losses and weights.
    assert max(abs(a - b) for a, b in zip(got, naive, strict=True)) > 1e-3
    assert (
        max(
            (a - b).abs().max().item()
            for a, b in zip(task.model.parameters(), naive_model.parameters(), strict=True)
        )
        > 1e-4
    )


# -- 2. the parts ------------------------------------------------------------------------------------------
def test_count_items_skips_minus_100_and_the_first_position_of_causal_lms():
    labels = torch.tensor([[5, 6, -100, -100], [7, 8, 9, 10]])
    batch = {"input_ids": labels.clamp(min=0), "labels": labels}
    assert int(HFTask(tiny.tiny_gpt2()).count_items(batch)) == 1 + 3  # positions 1.. only
    assert int(HFTask(tiny.tiny_bert("mlm")).count_items(batch)) == 2 + 4
    assert int(HFTask(tiny.tiny_gpt2()).count_items({**batch, "shift_labels": labels})) == 6
    assert HFTask(tiny.tiny_bert("mlm")).count_items({"input_ids": labels.clamp(min=0)}) is None


def test_weight_decay_groups_are_the_hf_trainers():
    from transformers import Trainer

    for model in (tiny.tiny_bert("mlm"), tiny.tiny_gpt2()):
        hf_names = Trainer.get_decay_parameter_names(None, model)  # type: ignore[arg-type]  # uses no self
        assert decay_parameter_names(model) == hf_names
        assert not any("bias" in n or "LayerNorm" in n or ".ln_" in n for n in hf_names)


def test_warmup_steps_and_ratio_follow_training_arguments():
    assert warmup_steps_for(0, 0.0, 100) == 0
    assert warmup_steps_for(5, 0.0, 100) == 5
    assert warmup_steps_for(0.05, 0.0, 100) == 5  # transformers 5: a fraction of the run
    assert warmup_steps_for(0, 0.1, 95) == 10  # ceil, as TrainingArguments.get_warmup_steps
    assert warmup_steps_for(3, 0.5, 100) == 3  # warmup_steps wins over warmup_ratio


def test_learning_rates_follow_the_linear_schedule_with_warmup_ratio(tmp_path):
    seen: list[float] = []

    class Record(tt.callbacks.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            seen.append(optimizer.param_groups[0]["lr"])

    task = HFTask(tiny.tiny_bert("mlm"), learning_rate=1.0, warmup_ratio=0.25)
    _trainer(
        tmp_path, max_epochs=None, max_steps=8, accumulate_grad_batches=1, logger=False, callbacks=[Record()]
    ).fit(task, tiny.loader(16, 2, tiny.mlm_collate))
    assert seen == pytest.approx([0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


def test_gradients_are_clipped_at_1_unless_set(tmp_path):
    norms: list[float] = []

    class Norm(tt.callbacks.Callback):
        def on_before_optimizer_step(self, trainer, module, optimizer):
            grads = [p.grad for p in module.parameters() if p.grad is not None]
            norms.append(float(torch.nn.utils.get_total_norm(grads)))

    loader = tiny.loader(4, 2, tiny.mlm_collate)
    common = {"max_epochs": 1, "accumulate_grad_batches": 1, "logger": False, "callbacks": [Norm()]}
    big = {"learning_rate": 1e-3}
    task = HFTask(tiny.tiny_bert("mlm"), **big)
    task.model.cls.predictions.bias.data += 50  # a large loss, so gradients are large
    _trainer(tmp_path, **common).fit(task, loader)
    assert norms and all(n == pytest.approx(1.0, abs=1e-5) for n in norms)
    norms.clear()
    _trainer(tmp_path, gradient_clip_val=0.5, **common).fit(HFTask(copy.deepcopy(task.model), **big), loader)
    assert all(n == pytest.approx(0.5, abs=1e-5) for n in norms)
    norms.clear()
    _trainer(tmp_path, **common).fit(HFTask(copy.deepcopy(task.model), max_grad_norm=None, **big), loader)
    assert all(n > 1.5 for n in norms)


def test_neftune_noise_is_the_hf_trainers_during_training_only(tmp_path):
    from transformers.integrations.neftune import neftune_post_forward_hook

    alpha = 5.0
    task = HFTask(tiny.tiny_gpt2(), neftune_noise_alpha=alpha)
    embeddings = task.model.get_input_embeddings()
    ids = torch.randint(3, tiny.VOCAB, (2, 6))
    clean = embeddings(ids)
    seen: list[torch.Tensor] = []

    class Capture(tt.callbacks.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            torch.manual_seed(7)
            seen.append(embeddings(ids).detach())

    _trainer(tmp_path, max_epochs=1, logger=False, callbacks=[Capture()]).fit(task, tiny.loader(2, 2))
    torch.manual_seed(7)
    embeddings.train()
    embeddings.neftune_noise_alpha = alpha
    expected = neftune_post_forward_hook(embeddings, (ids,), clean)
    torch.testing.assert_close(seen[0], expected.detach(), atol=0, rtol=0)
    bound = alpha / (6 * 16) ** 0.5
    assert 0 < (seen[0] - clean).abs().max() <= bound
    assert not embeddings._forward_hooks  # removed at the end of training
    torch.testing.assert_close(embeddings(ids), embeddings(ids), atol=0, rtol=0)  # no noise in train mode


def test_gradient_checkpointing_gives_the_same_gradients():
    batch = tiny.lm_collate(tiny.sequences(4))
    grads = []
    for on in (False, True):
        task = HFTask(tiny.tiny_gpt2(), gradient_checkpointing=on)
        flag = getattr(type(task.model), "is_activation_checkpointing", None)
        assert (
            task.model.is_activation_checkpointing if flag else task.model.is_gradient_checkpointing
        ) is on
        task.train()
        task.compute_loss(batch)[0].backward()
        grads.append([p.grad.clone() for p in task.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


# -- 3. hparams, checkpoints, directories, the CLI -----------------------------------------------------------
def test_hparams_are_plain_json_and_rebuild_the_model_from_a_checkpoint(tmp_path):
    task = _task(tiny.tiny_bert("cls"))
    text = json.dumps(dict(task.hparams), allow_nan=False)
    assert json.loads(text)["model"]["class"] == "BertForSequenceClassification"
    assert len(json.loads(text)["model"]["config"]["id2label"]) == 3
    batches = [
        {**tiny.lm_collate(tiny.sequences(2, seed=s)), "labels": torch.tensor([s % 3, (s + 1) % 3])}
        for s in range(4)
    ]
    trainer = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=1, logger=False)
    trainer.fit(task, batches)
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    loaded = HFTask.load_from_checkpoint(str(tmp_path / "ckpt"))
    assert isinstance(loaded, HFTask) and type(loaded.model) is type(task.model)
    for name, tensor in task.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    assert dict(loaded.hparams) == json.loads(text)


def test_a_local_model_directory_loads_with_its_architecture(tmp_path):
    tiny.tiny_bert("cls").save_pretrained(tmp_path / "bert")
    task = HFTask(str(tmp_path / "bert"))
    assert type(task.model).__name__ == "BertForSequenceClassification"
    for name, tensor in tiny.tiny_bert("cls").state_dict().items():
        assert torch.equal(task.model.state_dict()[name], tensor), name
    tiny.tiny_bert("mlm").save_pretrained(tmp_path / "base")
    auto = HFTask(
        str(tmp_path / "base"), auto_class="AutoModelForTokenClassification", model_kwargs={"num_labels": 5}
    )
    assert type(auto.model).__name__ == "BertForTokenClassification" and auto.model.num_labels == 5


def test_bad_arguments_are_refused_naming_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"HFTask\(model='.*nowhere'\): no such local directory"):
        HFTask(str(tmp_path / "nowhere"))
    with pytest.raises(TypeError, match=r"not a transformers PreTrainedModel"):
        HFTask(torch.nn.Linear(2, 2))
    with pytest.raises(
        ValueError, match=r"HFTask\(warmup_ratio=2\): accepted values are a number in \[0, 1\]"
    ):
        HFTask(tiny.tiny_gpt2(), warmup_ratio=2)
    with pytest.raises(ValueError, match=r"'class': 'Nope'"):
        HFTask({"class": "Nope", "config": {}})
    task = HFTask(tiny.tiny_bert("mlm"))
    with pytest.raises(ValueError, match=r"returned no loss .* batches need 'labels'"):
        task.compute_loss({"input_ids": torch.ones(1, 3, dtype=torch.long)})


def test_cli_fits_a_model_directory(tmp_path):
    from tasktrain.cli import main

    tiny.tiny_gpt2().save_pretrained(tmp_path / "gpt2")
    data = f"{Path(tiny.__file__)}:lm_data"
    status = main(
        [
            "fit",
            "--task",
            "tasktrain.hf.HFTask",
            "--task.model",
            str(tmp_path / "gpt2"),
            "--task.learning_rate",
            "0.001",
            "--data",
            data,
            "--trainer.max_steps",
            "3",
            "--trainer.accelerator",
            "cpu",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
        ]
    )
    assert status == 0
    from tasktrain.checkpoint import find_last

    last = find_last(str(tmp_path / "runs"))
    assert last is not None
    loaded = HFTask.load_from_checkpoint(last)
    assert loaded.hparams.learning_rate == 0.001 and loaded.hparams.model["class"] == "GPT2LMHeadModel"


def test_tensor_parallel_follows_the_models_tp_plan_and_matches_one_device(tmp_path):
    """A Llama split by transformers' own plan over 2 ranks (q/k/v/gate/up colwise, o/down rowwise),
    embeddings and norms replicated; clipping (set small, so it acts on every step) spans both kinds."""
    loader = tiny.loader(SAMPLES, BATCH, tiny.lm_collate)
    one = _task(tiny.tiny_llama(), max_grad_norm=0.05)
    _trainer(tmp_path / "one").fit(one, loader)
    split = _task(tiny.tiny_llama(), max_grad_norm=0.05)
    _trainer(tmp_path / "tp", strategy="tp", devices=2).fit(split, loader)
    assert _logged_losses(tmp_path / "tp") == pytest.approx(_logged_losses(tmp_path / "one"), abs=1e-5)
    _assert_same_weights(split.model, one.model, atol=1e-4)


def test_batches_from_a_transformers_tokenizer_and_data_collator(tmp_path):
    """What users feed the HF Trainer: a fast tokenizer's BatchEncoding, padded by DataCollatorWithPadding."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import DataCollatorWithPadding, PreTrainedTokenizerFast

    texts = [
        "the zen of python",
        "beautiful is better than ugly",
        "explicit is better",
        "simple is better",
    ] * 2
    raw = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    rows = [{**tokenizer(t), "labels": i % 3} for i, t in enumerate(texts)]
    loader = torch.utils.data.DataLoader(rows, batch_size=4, collate_fn=DataCollatorWithPadding(tokenizer))
    task = HFTask(tiny.tiny_bert("cls"), learning_rate=1e-2)
    before = copy.deepcopy(task.model.state_dict())
    result = _trainer(tmp_path, max_epochs=1, accumulate_grad_batches=1, logger=False).fit(task, loader)
    assert result.global_step == 2 and result.metrics["train_tokens_per_second"] > 0
    assert any(not torch.equal(before[k], v) for k, v in task.model.state_dict().items())

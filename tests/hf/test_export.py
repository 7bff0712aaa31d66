"""``tasktrain export CKPT OUT --format hf`` / ``tasktrain.hf.save_pretrained``: checkpoints of every
strategy become ``from_pretrained`` directories with the trained weights, bit for bit.

Each test trains a tiny model for a few steps, exports the default ModelCheckpoint's last
checkpoint, and loads it with transformers' own ``from_pretrained(..., output_loading_info=True)``:
the load report must list no missing, unexpected or mismatched key (a folder that transformers
reads as "randomly initialised" fails here), and every tensor must be ``torch.equal`` to the one
the run trained.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")

import _hf_tiny as tiny
import transformers

import tasktrain as tt
from tasktrain.checkpoint import find_last
from tasktrain.cli import main
from tasktrain.hf import HFTask, save_pretrained

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
MODELS = {  # the Auto class that reloads it, and its collate function
    "bert-mlm": (lambda: tiny.tiny_bert("mlm"), "AutoModelForMaskedLM", tiny.mlm_collate),  # tied decoder
    "gpt2": (tiny.tiny_gpt2, "AutoModelForCausalLM", tiny.lm_collate),  # tied lm_head
}


def _fit(tmp_path: Path, model: torch.nn.Module, collate: Any, **trainer: Any) -> tuple[HFTask, str]:
    task = HFTask(model, learning_rate=1e-2, weight_decay=0.01)
    args: dict[str, Any] = {
        "max_steps": 3,
        "accumulate_grad_batches": 2,
        "logger": False,
        "enable_progress_bar": False,
        "default_root_dir": tmp_path / "runs",
        "accelerator": "cpu",
    }
    tt.Trainer(**{**args, **trainer}).fit(task, tiny.loader(16, 2, collate))
    last = find_last(str(tmp_path / "runs"))
    assert last is not None
    return task, last


def _reload_and_compare(out: Path, auto_class: str, trained: torch.nn.Module) -> None:
    loaded, info = getattr(transformers, auto_class).from_pretrained(out, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, f"load report lists keys: {info}"
    assert type(loaded) is type(trained)
    expected = trained.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    if trained.config.tie_word_embeddings and trained.get_output_embeddings() is not None:
        assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_cli_export_format_hf_of_a_single_device_checkpoint(tmp_path, kind):
    build, auto_class, collate = MODELS[kind]
    task, last = _fit(tmp_path, build(), collate)
    out = tmp_path / "exported"
    assert main(["export", last, str(out), "--format", "hf"]) == 0
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    _reload_and_compare(out, auto_class, task.model)


def test_a_classifier_exports_with_its_labels(tmp_path):
    model = tiny.tiny_bert("cls")
    batches = [
        {**tiny.lm_collate(tiny.sequences(2, seed=s)), "labels": torch.tensor([s % 3, (s + 1) % 3])}
        for s in range(4)
    ]
    task = HFTask(model, learning_rate=1e-2)
    trainer = tt.Trainer(
        max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path, accelerator="cpu"
    )
    trainer.fit(task, batches)
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    out = save_pretrained(str(tmp_path / "ckpt"), tmp_path / "exported")
    _reload_and_compare(Path(out), "AutoModelForSequenceClassification", task.model)


@pytest.mark.parametrize(
    "strategy",
    [
        "ddp",
        "fsdp",
        pytest.param("deepspeed_stage_3", marks=pytest.mark.skipif(not HAS_DEEPSPEED, reason="no deepspeed")),
    ],
)
def test_export_of_a_two_rank_checkpoint(tmp_path, strategy):
    """DDP (full safetensors), FSDP (sharded DCP checkpoint) and DeepSpeed ZeRO-3 (partitioned parameters)."""
    task, last = _fit(tmp_path, tiny.tiny_gpt2(), tiny.lm_collate, strategy=strategy, devices=2)
    if strategy == "fsdp":
        assert (Path(last) / "sharded").is_dir()  # the weights were written as per-rank shards
    out = tmp_path / "exported"
    save_pretrained(last, out)
    _reload_and_compare(out, "AutoModelForCausalLM", task.model)


def test_export_of_a_tensor_parallel_checkpoint(tmp_path):
    """A Llama split by its own TP plan over two ranks; the checkpoint holds DTensor shards."""
    task, last = _fit(tmp_path, tiny.tiny_llama(), tiny.lm_collate, strategy="tp", devices=2)
    assert (Path(last) / "sharded").is_dir()
    out = tmp_path / "exported"
    save_pretrained(last, out)
    _reload_and_compare(out, "AutoModelForCausalLM", task.model)


def test_models_without_a_tp_plan_are_refused_by_parallelize():
    with pytest.raises(NotImplementedError, match=r"GPT2LMHeadModel has no tensor-parallel plan"):
        HFTask(tiny.tiny_gpt2()).parallelize(None)  # type: ignore[arg-type]


def test_a_lora_run_exports_its_adapter_for_peft_model_from_pretrained(tmp_path):
    peft = pytest.importorskip("peft")
    base_dir = tmp_path / "base"
    tiny.tiny_bert("cls").save_pretrained(base_dir)
    lora = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["query", "value"],
    }
    task = HFTask(str(base_dir), peft_config=lora, learning_rate=1e-2)
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    batches = [
        {**tiny.lm_collate(tiny.sequences(2, seed=s)), "labels": torch.tensor([s % 3, (s + 1) % 3])}
        for s in range(4)
    ]
    trainer = tt.Trainer(
        max_epochs=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path, accelerator="cpu"
    )
    trainer.fit(task, batches)
    last = find_last(str(tmp_path))
    assert last is not None
    assert task.hparams.model["peft_config"]["r"] == 4  # the adapter config is part of the hparams
    out = tmp_path / "adapter"
    assert main(["export", last, str(out), "--format", "hf"]) == 0
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    base = transformers.AutoModelForSequenceClassification.from_pretrained(base_dir)
    loaded = peft.PeftModel.from_pretrained(base, out)
    expected = task.model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    lora_b = [n for n in expected if "lora_B" in n]
    assert lora_b and all(expected[n].abs().sum() > 0 for n in lora_b)  # trained: LoRA's B starts at zero


def test_exporting_a_checkpoint_that_is_not_an_hf_task_is_refused(tmp_path, capsys):
    from tasktrain.checkpoint import save_checkpoint

    save_checkpoint(
        str(tmp_path / "plain"), {"net.weight": torch.zeros(2, 2)}, trainer_state={"hparams": {"hidden": 4}}
    )
    assert main(["export", str(tmp_path / "plain"), str(tmp_path / "out"), "--format", "hf"]) != 0
    assert "hold no transformers model spec" in capsys.readouterr().err


def test_adapter_only_checkpoints_hold_the_adapters_and_still_resume_load_and_export(tmp_path):
    peft = pytest.importorskip("peft")
    from tasktrain.checkpoint import read_state, read_weights

    base_dir = tmp_path / "base"
    tiny.tiny_bert("cls").save_pretrained(base_dir)
    lora = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["query", "value"],
    }
    batches = [
        {**tiny.lm_collate(tiny.sequences(2, seed=s)), "labels": torch.tensor([s % 3, (s + 1) % 3])}
        for s in range(4)
    ]

    def fit(root: Path, max_steps: int, ckpt_path: str | None = None) -> HFTask:
        torch.manual_seed(0)  # the same LoRA initialisation in every run
        task = HFTask(  # constant: a linear schedule's length would follow each fit's max_steps
            str(base_dir),
            peft_config=lora,
            learning_rate=1e-2,
            lr_scheduler_type="constant",
            adapter_only_checkpoints=True,
        )
        trainer = tt.Trainer(
            max_steps=max_steps,
            logger=False,
            enable_progress_bar=False,
            default_root_dir=root,
            accelerator="cpu",
        )
        trainer.fit(task, batches, ckpt_path=ckpt_path)
        return task

    task = fit(tmp_path / "runs", 6)
    last = find_last(str(tmp_path / "runs"))
    assert last is not None
    saved = read_weights(last)
    trainable = {f"model.{n}" for n, p in task.model.named_parameters() if p.requires_grad}
    assert set(saved) == trainable  # LoRA A/B and the classifier only: no frozen base
    assert read_state(last)["hparams"]["adapter_only_checkpoints"] is True  # and the checkpoint says so
    assert read_state(last)["hparams"]["model"]["pretrained"] == str(base_dir.resolve())
    # resume exactly from such a checkpoint: stop at 3, resume to 6
    fit(tmp_path / "parts", 3)
    resumed = fit(tmp_path / "parts", 6, ckpt_path="last")
    for name, tensor in task.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], tensor), name
    # load_from_checkpoint rebuilds the base from its directory and the adapters from the checkpoint
    loaded = HFTask.load_from_checkpoint(last)
    full = {k: v for k, v in loaded.model.state_dict().items()}
    for name, tensor in task.model.state_dict().items():
        assert torch.equal(full[name], tensor), name
    out = tmp_path / "adapter"
    save_pretrained(last, out)
    reloaded = peft.PeftModel.from_pretrained(
        transformers.AutoModelForSequenceClassification.from_pretrained(base_dir), out
    )
    for name, tensor in task.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor), name


def test_adapter_only_checkpoints_need_a_peft_model_from_a_directory():
    with pytest.raises(ValueError, match=r"adapter_only_checkpoints=True\) needs a PEFT model"):
        HFTask(tiny.tiny_bert("cls"), adapter_only_checkpoints=True)


def test_export_to_a_url_is_refused_with_the_way_out(tmp_path):
    task = HFTask(tiny.tiny_gpt2())
    trainer = tt.Trainer(
        max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path, accelerator="cpu"
    )
    trainer.fit(task, tiny.loader(2, 2))
    with pytest.raises(ValueError, match=r"out='memory://x'\): transformers writes local directories"):
        save_pretrained(find_last(str(tmp_path)), "memory://x")


def test_export_format_hf_with_ema_weights_holds_the_averages(tmp_path):
    ema = tt.callbacks.EMA(decay=0.5)
    task, last = _fit(tmp_path, tiny.tiny_gpt2(), tiny.lm_collate, callbacks=[ema])
    out = tmp_path / "exported-ema"
    assert main(["export", last, str(out), "--format", "hf", "--weights", "ema"]) == 0
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert {k: v for k, v in info.items() if v} == {}, f"load report lists keys: {info}"
    averaged = {name.removeprefix("model."): t for name, t in ema.averaged_weights().items()}
    got = dict(loaded.named_parameters())
    assert got.keys() == averaged.keys()
    assert all(torch.equal(got[name], averaged[name]) for name in averaged)
    assert not all(torch.equal(got[n], p) for n, p in task.model.named_parameters())  # not the trained ones

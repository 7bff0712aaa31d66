"""The examples run end to end (tiny sizes, CPU) and print what their docstrings promise."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, tmp_path: Path) -> str:
    """Run ``examples/{name}`` in a fresh interpreter; return its stdout (fail with stderr on error)."""
    command = [
        sys.executable,
        str(EXAMPLES / name),
        "--root-dir",
        str(tmp_path / "runs"),
        "--no-progress-bar",
    ]
    done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert done.returncode == 0, f"{name} exited with {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def number_after(label: str, text: str) -> float:
    match = re.search(rf"^{re.escape(label)}\s*([0-9.]+)", text, flags=re.MULTILINE)
    assert match, f"no line starting with {label!r} in:\n{text}"
    return float(match.group(1))


def confusion_matrix(text: str) -> list[list[int]]:
    """The matrix digits.py prints: a title, a header of predicted digits, one row per true digit."""
    lines = text.split("confusion matrix (", 1)[1].splitlines()[2:12]
    rows = [[int(n) for n in line.split()] for line in lines]
    assert [row[0] for row in rows] == list(range(10)), text  # each row starts with its true digit
    return [row[1:] for row in rows]


def test_digits_learns(tmp_path: Path) -> None:
    out = run_example("digits.py", "--max-epochs", "3", tmp_path=tmp_path)
    accuracy = number_after("final val/acc:", out)
    assert accuracy > 0.85
    matrix = confusion_matrix(out)
    total = sum(map(sum, matrix))
    assert total == 359  # int(1797 * 0.2) validation images
    assert sum(matrix[i][i] for i in range(10)) / total == pytest.approx(
        accuracy, abs=5e-5
    )  # printed to 4 places
    recalls = [matrix[i][i] / sum(matrix[i]) for i in range(10)]
    assert sum(recalls) / 10 == pytest.approx(number_after("final val/acc_macro:", out), abs=5e-5)
    assert (tmp_path / "runs" / "csv" / "version_0" / "confusion_matrix.png").stat().st_size > 0
    assert number_after("final val/loss:", out) < 1.0
    assert re.search(r"^trained 69 steps", out, flags=re.MULTILINE), out  # 3 epochs x 23 batches of 64
    checkpoints = list((tmp_path / "runs" / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["step=00000069"]  # the default ModelCheckpoint keeps the last
    files = {p.name for p in checkpoints[0].iterdir()}
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json", "manifest.json"} <= files
    assert (tmp_path / "runs" / "csv" / "version_0" / "metrics.csv").is_file()


def test_char_lm_counts_tokens_and_samples(tmp_path: Path) -> None:
    out = run_example(
        "char_lm.py",
        *("--max-epochs", "1", "--repeats", "2", "--d-model", "32", "--layers", "1", "--samples", "2"),
        tmp_path=tmp_path,
    )
    assert number_after("train_tokens_per_second:", out) > 0
    assert number_after("final train/loss:", out) < 10
    # 20 lines x 2 repeats = 40 lines, 5 micro-batches of 8, groups of 4: one full group + a remainder of 1.
    assert re.search(r"^trained 2 optimizer steps \(5 micro-batches per epoch, 4 per step\)", out, re.M), out
    samples = out.split("samples:\n", 1)
    assert len(samples) == 2, out
    assert len([line for line in samples[1].splitlines() if line.startswith("  ")]) == 2


# -- the same examples through the `tasktrain` command line --------------------------------------
def run_cli(*args: str, tmp_path: Path) -> str:
    """``python -m tasktrain <args>`` from the repository root (where the example configs point)."""
    command = [sys.executable, "-m", "tasktrain", *args, "--trainer.enable_progress_bar", "false"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=EXAMPLES.parent)
    assert done.returncode == 0, (
        f"tasktrain {' '.join(args)} exited with {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done.stdout


def test_digits_through_the_cli(tmp_path: Path) -> None:
    out = run_cli(
        *("fit", "--config", "examples/digits.yaml", "--trainer.max_epochs", "3"),
        *("--trainer.default_root_dir", str(tmp_path)),
        tmp_path=tmp_path,
    )
    assert re.search(r"^fit: 69 optimizer steps", out, flags=re.MULTILINE), out  # 3 epochs x 23 batches
    metrics = json.loads(re.findall(r"^metrics: (.*)$", out, flags=re.MULTILINE)[-1])
    assert metrics["val/acc"] > 0.85
    assert (tmp_path / "csv" / "version_0" / "config.yaml").is_file()


def test_char_lm_through_the_cli(tmp_path: Path) -> None:
    out = run_cli(
        *("fit", "--task", "examples/char_lm.py", "--data", "examples/char_lm.py", "--data.repeats", "2"),
        *("--task.d_model", "32", "--task.n_layers", "1", "--trainer.max_epochs", "1"),
        *("--trainer.accumulate_grad_batches", "4", "--trainer.default_root_dir", str(tmp_path)),
        tmp_path=tmp_path,
    )
    assert re.search(r"^fit: 2 optimizer steps", out, flags=re.MULTILINE), out  # 5 micro-batches, groups of 4
    metrics = json.loads(re.findall(r"^metrics: (.*)$", out, flags=re.MULTILINE)[-1])
    assert metrics["train_tokens_per_second"] > 0
    printed = run_cli("fit", "--config", "examples/char_lm.yaml", "--print_config", tmp_path=tmp_path)
    assert "class_path: examples/char_lm.py:ZenLines" in printed


def test_hf_text_classification_reloads_with_the_same_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    out = run_example("hf_text_classification.py", "--max-epochs", "8", tmp_path=tmp_path)
    trained = number_after("accuracy (trained):", out)
    assert (
        number_after("accuracy (from_pretrained):", out) == trained
    )  # the exported weights are the trained ones
    assert trained > 0.35  # 4 classes: chance is 0.25
    exported = tmp_path / "runs" / "exported"
    assert (exported / "config.json").is_file() and (exported / "model.safetensors").is_file()


def test_hf_text_classification_takes_a_local_model_directory(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    transformers.BertForMaskedLM(config).save_pretrained(tmp_path / "local-bert")
    out = run_example(
        "hf_text_classification.py",
        "--max-epochs",
        "1",
        "--model",
        str(tmp_path / "local-bert"),
        tmp_path=tmp_path,
    )
    assert number_after("accuracy (from_pretrained):", out) == number_after("accuracy (trained):", out)


def test_digits_with_ema_validates_and_reloads_the_averaged_weights(tmp_path: Path) -> None:
    out = run_example("digits.py", "--max-epochs", "2", "--ema", tmp_path=tmp_path)
    # trainer.validate ran on the EMA weights (the callback swaps them in), the same as those reloaded
    # from the checkpoint with load_from_checkpoint(weights="ema").
    reloaded = re.search(r"^EMA weights from \S+step=00000046: val/acc ([0-9.]+)$", out, flags=re.MULTILINE)
    assert reloaded, out
    assert float(reloaded.group(1)) == number_after("final val/acc:", out)


def test_gan_trains_two_optimizers_and_draws_a_grid_each_epoch(tmp_path: Path) -> None:
    out = run_example("gan.py", "--max-epochs", "2", "--width", "8", tmp_path=tmp_path)
    # 1797 digits in batches of 64 (the last, short one dropped): 28 training_steps per epoch.
    assert re.search(r"^trained 56 steps \(one per batch, two optimizer steps each\)", out, re.M), out
    assert "EMA updates: 56" in out
    grids = sorted((tmp_path / "runs" / "samples").iterdir())
    assert [p.name for p in grids] == ["epoch=000.png", "epoch=001.png"]
    import matplotlib.image

    image = matplotlib.image.imread(grids[-1])
    assert image.shape[:2] == (8 * 73, 8 * 73)  # 8 x 8 digits of 8 x 8 pixels, 1-pixel gaps, scaled 8x
    assert "(weights='ema')" in out

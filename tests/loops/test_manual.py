"""Manual optimization (``automatic_optimization = False``): a two-optimizer GAN against a
hand-written loop, on one process and under DDP; 16-mixed skips an inf step like GradScaler by
hand; exact resume mid-epoch with two optimizers and two schedulers; what is refused."""

from __future__ import annotations

from typing import Any

import _gan as gan
import pytest
import torch
from torch.utils.data import DataLoader

import tasktrain as tt
from tasktrain.strategies.launcher import spawn


def _assert_close(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], atol: float) -> None:
    assert set(weights) == set(expected)
    for name, value in expected.items():
        assert torch.allclose(weights[name], value, atol=atol, rtol=0), (
            name,
            (weights[name] - value).abs().max(),
        )


@pytest.fixture(scope="module", params=["ddp", "fsdp", "tp"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The distributed scenarios of ``_gan``, run once per strategy in two spawned gloo ranks (rank 0's results)."""
    root = tmp_path_factory.mktemp(f"manual_{request.param}")
    return spawn(gan.distributed_scenarios, (request.param, str(root)), nprocs=gan.WORLD_SIZE)


def test_a_two_optimizer_gan_equals_the_hand_written_loop_after_20_steps(tmp_path):
    module = gan.GAN()
    trainer = tt.Trainer(max_steps=gan.STEPS, default_root_dir=tmp_path, **gan.QUIET)
    result = trainer.fit(module, DataLoader(gan.gan_data(), batch_size=gan.PER_RANK_BATCH))

    assert result.global_step == gan.STEPS  # one per training_step, though two optimizers stepped each time
    _assert_close(module.state_dict(), gan.reference(gan.PER_RANK_BATCH), atol=1e-6)
    # Each scheduler stepped once per step of its own optimizer.
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(
        gan.LR_G * gan.GAMMA ** (gan.STEPS // 3)
    )
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(
        gan.LR_D * gan.GAMMA ** (gan.STEPS // 2)
    )
    assert trainer.fit_loop.epoch_loop.manual.optimizer_steps == [gan.STEPS, gan.STEPS]
    assert "train/g_loss" in trainer.callback_metrics


def test_two_ranks_equal_the_single_process_loop_on_the_global_batch(ranks):
    """DDP averages each optimizer's gradients at its step; FSDP shards each network as its own unit;
    TP splits each network's layers (both ranks read the same batches: the global batch is one rank's)."""
    assert ranks["global_step"] == gan.STEPS
    _assert_close(ranks["conformance"], gan.reference(gan.PER_RANK_BATCH * ranks["dp_size"]), atol=1e-6)


@pytest.mark.parametrize("stop_at", [7, 13])  # 10 batches per epoch: mid-epoch in epoch 0 and in epoch 1
def test_resume_mid_epoch_with_two_optimizers_and_two_schedulers_is_exact(tmp_path, stop_at: int):
    run = gan.resume_run(lambda: "single", str(tmp_path), batch_size=8, stop_at=stop_at, steps=18)
    assert run["global_step"] == 18
    for name, value in run["full"].items():
        assert torch.equal(run["resumed"][name], value), name
    assert run["lrs"] == run["full_lrs"]
    assert all(torch.equal(a, b) for a, b in zip(run["exp_avg"], run["full_exp_avg"], strict=True))


def test_distributed_resume_mid_epoch_with_two_optimizers_is_exact(ranks):
    run = ranks["resume"]
    assert run["global_step"] == 12
    for name, value in run["full"].items():
        assert torch.equal(run["resumed"][name], value), name
    assert run["lrs"] == run["full_lrs"]
    assert all(torch.equal(a, b) for a, b in zip(run["exp_avg"], run["full_exp_avg"], strict=True))


def test_16_mixed_skips_the_step_with_inf_gradients_like_grad_scaler_by_hand(tmp_path):
    """CPU float16 autocast with ``torch.amp.GradScaler("cpu")`` (torch 2.13 supports both)."""
    blowup = 3
    module = gan.GAN(schedulers=False, blowup_step=blowup)
    trainer = tt.Trainer(max_steps=6, precision="16-mixed", default_root_dir=tmp_path, **gan.QUIET)
    trainer.fit(module, DataLoader(gan.gan_data(), batch_size=gan.PER_RANK_BATCH))

    # By hand: the same autocast and GradScaler calls, step() then update() after each optimizer.
    generator, discriminator = gan.nets()
    opt_g, opt_d, _, _ = gan.optimizers(generator, discriminator)
    scaler = torch.amp.GradScaler("cpu")
    stepped = []
    for step, (real, z) in enumerate(DataLoader(gan.gan_data(), batch_size=gan.PER_RANK_BATCH)):
        if step == 6:
            break
        with torch.autocast("cpu", dtype=torch.float16):
            fake = generator(z)
            d_loss = gan.d_loss_of(discriminator, real, fake.detach())
            if step == blowup:
                d_loss = d_loss * float("inf")
        opt_d.zero_grad()
        scaler.scale(d_loss).backward()
        before = scaler.get_scale()
        scaler.step(opt_d)
        scaler.update()
        stepped.append(scaler.get_scale() >= before)
        with torch.autocast("cpu", dtype=torch.float16):
            g_loss = gan.g_loss_of(discriminator, fake)
        opt_g.zero_grad()
        scaler.scale(g_loss).backward()
        scaler.step(opt_g)
        scaler.update()

    assert stepped == [True, True, True, False, True, True]
    assert module.d_stepped == stepped  # the discriminator's weights did not move on the inf step
    manual = trainer.fit_loop.epoch_loop.manual
    assert manual.skipped_steps == [0, 1] and manual.optimizer_steps == [6, 5]
    assert trainer.strategy.precision.scaler.get_scale() == scaler.get_scale()
    expected = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    expected.update({f"discriminator.{k}": v for k, v in discriminator.state_dict().items()})
    _assert_close(module.state_dict(), expected, atol=0)


def test_16_mixed_under_ddp_skips_on_every_rank_when_one_rank_has_inf_gradients(ranks):
    if "one_rank_inf" not in ranks:
        pytest.skip("a DDP scenario")
    outcome = ranks["one_rank_inf"]
    # The gradients are averaged before the scaler looks at them, so rank 1 sees rank 0's inf too.
    assert outcome["d_stepped"] == [[True, True, True, False, True, True]] * gan.WORLD_SIZE
    assert outcome["skipped_steps"] == [0, 1]
    assert outcome["replicas_equal"] and len(set(outcome["scales"])) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"accumulate_grad_batches": 2},
            r"Trainer\(accumulate_grad_batches=2\) is for automatic optimization",
        ),
        ({"gradient_clip_val": 1.0}, r"gradient_clip_val=1.0 \(call self.clip_gradients"),
    ],
)
def test_trainer_settings_of_automatic_optimization_are_refused_with_manual_optimization(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        tt.Trainer(max_steps=1, **kwargs, **gan.QUIET).fit(
            gan.GAN(), DataLoader(gan.gan_data(), batch_size=4)
        )
    assert "GAN has automatic_optimization = False" in str(info.value)


def test_manual_methods_outside_manual_optimization_say_what_they_are_for():
    with pytest.raises(RuntimeError, match="set `automatic_optimization = False`"):
        gan.GAN().optimizers()


def test_clip_gradients_clips_like_torch_and_accepts_the_raw_optimizer(tmp_path):
    norms: list[float] = []

    class Clipped(gan.GAN):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            real, z = batch
            _, opt_d = self.optimizers()
            opt_d.zero_grad()
            self.manual_backward(gan.d_loss_of(self.discriminator, real, self.generator(z).detach()))
            expected = torch.nn.utils.get_total_norm([p.grad for p in self.discriminator.parameters()])
            norm = self.clip_gradients(opt_d.optimizer, gradient_clip_val=0.01)
            assert torch.allclose(norm, expected)
            clipped = torch.nn.utils.get_total_norm([p.grad for p in self.discriminator.parameters()])
            norms.append(float(clipped))
            opt_d.step()

    tt.Trainer(max_steps=3, default_root_dir=tmp_path, **gan.QUIET).fit(
        Clipped(schedulers=False), DataLoader(gan.gan_data(), batch_size=4)
    )
    assert norms == pytest.approx([0.01] * 3, rel=1e-4)


def test_a_checkpoint_with_another_number_of_schedulers_is_refused_naming_both(tmp_path):
    trainer = tt.Trainer(max_steps=2, default_root_dir=tmp_path, **gan.QUIET)
    trainer.fit(gan.GAN(schedulers=True), DataLoader(gan.gan_data(), batch_size=4))
    trainer.save_checkpoint(str(tmp_path / "ckpt"))
    with pytest.raises(
        ValueError, match=r"state of 2 LR scheduler\(s\), but this run's configure_optimizers\(\) returned 0"
    ):
        tt.Trainer(max_steps=3, default_root_dir=tmp_path, **gan.QUIET).fit(
            gan.GAN(schedulers=False),
            DataLoader(gan.gan_data(), batch_size=4),
            ckpt_path=str(tmp_path / "ckpt"),
        )


def test_fsdp_refuses_manual_optimization_for_parameters_outside_submodules():
    class Direct(gan.GAN):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

    trainer = tt.Trainer(max_steps=1, strategy="fsdp", devices=2, accelerator="cpu", **gan.QUIET)
    with pytest.raises(ValueError, match=r"parameters of its own \(\['scale'\]\); under strategy 'fsdp'"):
        trainer.fit(Direct(), DataLoader(gan.gan_data(), batch_size=4))


def test_hooks_fire_from_inside_training_step_in_the_order_the_user_calls(tmp_path):
    calls: list[str] = []

    class Recorder(tt.callbacks.Callback):
        def __getattribute__(self, name: str) -> Any:
            if name.startswith("on_train_batch") or name in (
                "on_before_backward",
                "on_after_backward",
                "on_before_optimizer_step",
                "on_before_zero_grad",
                "on_train_step_end",
            ):
                return lambda trainer, module, *args: calls.append(f"{name}@{trainer.global_step}")
            return super().__getattribute__(name)

    tt.Trainer(max_steps=1, callbacks=[Recorder()], default_root_dir=tmp_path, **gan.QUIET).fit(
        gan.GAN(), DataLoader(gan.gan_data(), batch_size=4)
    )
    d_step = [
        "on_before_zero_grad@0",
        "on_before_backward@0",
        "on_after_backward@0",
        "on_before_optimizer_step@0",
    ]
    assert calls == [
        "on_train_batch_start@0",
        *d_step,
        *d_step,
        "on_train_batch_end@0",
        "on_train_step_end@1",
    ]


def test_the_lr_monitor_logs_each_optimizers_rate_by_position(tmp_path):
    class Logged(tt.loggers.Logger):
        def __init__(self) -> None:
            self.rows: list[tuple[int, dict[str, float]]] = []

        def log_metrics(self, metrics: dict[str, float], step: int) -> None:
            self.rows.append((step, dict(metrics)))

    logger = Logged()
    trainer = tt.Trainer(
        max_steps=4,
        callbacks=[tt.callbacks.LearningRateMonitor("step")],
        logger=logger,
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(gan.GAN(), DataLoader(gan.gan_data(), batch_size=4))
    logged = {step: row for step, row in logger.rows if "lr/opt0" in row}
    # The rate each optimizer's 2nd and 4th step used: StepLR(3) for the generator, StepLR(2) for the
    # discriminator (which steps first in each training_step, so its scheduler moves first).
    assert logged[2]["lr/opt0"] == pytest.approx(gan.LR_G) and logged[2]["lr/opt1"] == pytest.approx(gan.LR_D)
    assert logged[4]["lr/opt0"] == pytest.approx(gan.LR_G * gan.GAMMA)
    assert logged[4]["lr/opt1"] == pytest.approx(gan.LR_D * gan.GAMMA)


def test_deepspeed_steps_its_engine_in_manual_optimization(tmp_path):
    pytest.importorskip("deepspeed")
    weights = spawn(gan.deepspeed_manual, (str(tmp_path), 10), nprocs=gan.WORLD_SIZE)
    _assert_close(weights, gan.one_optimizer_reference(gan.PER_RANK_BATCH * gan.WORLD_SIZE, 10), atol=1e-6)


def test_deepspeed_refuses_several_optimizers():
    from tasktrain.strategies.deepspeed import DeepSpeed

    a, b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    opts = [torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)]
    with pytest.raises(
        ValueError, match="DeepSpeed runs one optimizer inside its engine; configure_optimizers"
    ):
        DeepSpeed().setup_optimizers(opts)


def test_the_launching_process_holds_both_optimizers_and_the_ema_after_devices_2(tmp_path):
    ema = tt.callbacks.EMA(decay=0.5)
    module = gan.GAN()
    trainer = tt.Trainer(
        max_steps=gan.STEPS,
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        callbacks=[ema],
        default_root_dir=tmp_path,
        **gan.QUIET,
    )
    result = trainer.fit(module, DataLoader(gan.gan_data(), batch_size=gan.PER_RANK_BATCH))
    assert result.global_step == gan.STEPS
    _assert_close(module.state_dict(), gan.reference(gan.PER_RANK_BATCH * gan.WORLD_SIZE), atol=1e-6)
    assert trainer.fit_loop.epoch_loop.manual.optimizer_steps == [gan.STEPS, gan.STEPS]
    assert [len(opt.state) for opt in trainer.optimizers] == [4, 4]  # Adam and SGD momentum, per parameter
    assert trainer.optimizers[1].param_groups[0]["lr"] == pytest.approx(
        gan.LR_D * gan.GAMMA ** (gan.STEPS // 2)
    )
    assert ema.n_averaged == gan.STEPS and set(ema.averaged_weights()) == set(dict(module.named_parameters()))

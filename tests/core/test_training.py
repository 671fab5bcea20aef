"""The trainer, its loss and recipe, on tiny models and the synthetic world (CPU)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diffusers import DDPMScheduler
from scipy.stats import norm

from letstalk_core.__main__ import main
from letstalk_core.checkpoints import load_checkpoint
from letstalk_core.latents import build_vae, load_shipped_config, load_vae, save_vae
from letstalk_core.sampling.options import PROJECT_DEFAULT, recommended_options
from letstalk_core.training.config import config_from_dict, load_config, load_preset, preset_names
from letstalk_core.training.losses import (
    DiffusionSchedule,
    diffusion_loss,
    training_scheduler,
    variational_bound_terms,
)
from letstalk_core.training.recipe import (
    DROP_AUDIO,
    DROP_BOTH,
    DROP_NONE,
    DROP_PORTRAIT,
    add_pixel_noise,
    apply_condition_dropout,
    corrupt_memory_latents,
    draw_condition_dropout,
    pixel_noise_sigmas,
)
from letstalk_core.training.synthetic.speech import EspeakNotFoundError, find_espeak
from letstalk_core.training.trainer import TRANSFORMER_STATE, TransformerTrainer, load_training_state
from letstalk_core.training.probe import PROBE_CLIPS, PROBE_TIMESTEPS


def _has_espeak() -> bool:
    try:
        find_espeak()
    except EspeakNotFoundError:
        return False
    return True


# the trainer tests draw their clips from the synthetic world, whose speech comes from espeak-ng
needs_espeak = pytest.mark.skipif(not _has_espeak(), reason="espeak-ng is needed by the synthetic world")


@pytest.fixture(scope="module")
def tiny_vae(tmp_path_factory) -> Path:
    config = load_shipped_config("demo_vae")
    config.update(block_out_channels=[8, 8, 8, 8], norm_num_groups=4, sample_size=32)
    return save_vae(build_vae(config, kind="demo_vae", seed=0), tmp_path_factory.mktemp("vae") / "tiny_vae.safetensors")


def tiny_config(out: Path, vae: Path | None, **training) -> dict:
    return {
        "name": "tiny",
        "seed": 3,
        "output_dir": str(out),
        "stages": ["transformer"],
        "data": {"source": "synthetic", "resolution": 32, "synthetic": {"num_videos": 2, "seconds": 1.0}},
        "model": {"hidden_size": 32, "depth": 2, "num_heads": 2, "patch_size": 1, "frames_per_clip": 4,
                  "memory_frames": 2},
        "audio": {"n_mels": 16, "intermediate_dim": 16, "num_tokens": 2, "output_dim": 32},
        "vae": {"path": None if vae is None else str(vae)},
        "training": {"max_steps": 2, "batch_size": 2, "save_every": 100, "ema_decay": 0.9, "learning_rate": 1e-3,
                     "grad_clip": 0.5, "grad_clip_after": 1, **training},
        "recipe": {"dropout": {"audio": 0.2, "portrait": 0.2, "both": 0.2}},
    }


# ---- the trainer ---------------------------------------------------------------------------------
@needs_espeak
def test_two_steps_write_a_loadable_checkpoint(tmp_path, tiny_vae):
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run", tiny_vae)))
    trainer = TransformerTrainer(load_config(config_path), show_progress=False)
    model = trainer.model
    assert model.final_proj.weight.abs().max() == 0 and model.blocks[0].modulation.weight.abs().max() == 0  # adaLN-Zero
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised and p.requires_grad
               for p in list(model.parameters()) + list(trainer.audio_proj.parameters()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    path = trainer.train()
    assert len(trainer.last_losses) == 2 and all(math.isfinite(v) and v > 0 for v in trainer.last_losses)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    # step 1 moves only the zero-initialised output layer (everything else is behind it); step 2 also
    # what feeds it through paths open at zero gates: the modulations, the temporal and audio attention
    # and the patch embedding. The spatial attention and feed-forward wait for their gates to open.
    for key in ("final_proj.weight", "final_modulation.weight", "blocks.1.modulation.weight",
                "blocks.0.audio_attn.to_v.weight", "blocks.0.temporal_out.weight", "patch_embed.weight"):
        assert key in changed, key

    checkpoint = load_checkpoint(path)
    assert path.name == "letstalk.safetensors" and (tmp_path / "run" / "checkpoints" / "step_0000002.safetensors").is_file()
    assert checkpoint.frames_per_clip == 4 and checkpoint.memory_frames == 2
    assert checkpoint.condition_dropout == {"audio": 0.2, "portrait": 0.2, "both": 0.2} and checkpoint.supports_guidance
    assert checkpoint.training["step"] == 2
    assert checkpoint.audio_encoder_config["type"] == "mel" and checkpoint.audio_encoder_config["n_mels"] == 16
    # a trained checkpoint recommends the project's default sampling, at the fps it was trained at
    assert recommended_options(checkpoint) == PROJECT_DEFAULT.replace(fps=checkpoint.training_fps)
    assert "sampling" in checkpoint.metadata
    # the checkpoint holds the EMA weights, not the raw ones
    ema = dict(zip([n for n, _ in trainer.model.named_parameters()], trainer.ema.shadow_params))
    for name, value in checkpoint.model.named_parameters():
        assert torch.allclose(value, ema[name].cpu(), atol=1e-6), name
    raw = dict(trainer.model.named_parameters())
    assert any(not torch.allclose(v, raw[n]) for n, v in checkpoint.model.named_parameters())
    # the VAE is bundled and loads from the checkpoint file
    codec = load_vae(path)
    assert codec.latent_channels == 4 and codec.downscale_factor == 8
    # the resumable state is tensors and plain values, loadable with weights_only=True
    state = torch.load(tmp_path / "run" / TRANSFORMER_STATE, weights_only=True)
    assert state["step"] == 2 and state["micro_step"] == 2 and len(state["ema"]["shadow_params"]) == len(ema) + len(
        list(trainer.audio_proj.parameters()))


@needs_espeak
def test_resume_continues_the_same_loss_curve(tmp_path, tiny_vae):
    straight = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "a", tiny_vae, max_steps=4)), show_progress=False)
    straight.train()
    assert len(straight.last_losses) == 4

    first = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "b", tiny_vae, max_steps=4)), show_progress=False)
    first.train(max_steps=2)
    resumed = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "b", tiny_vae, max_steps=4)),
                                 resume=True, show_progress=False)
    assert resumed.step == 2
    resumed.train()
    losses = first.last_losses + resumed.last_losses
    np.testing.assert_allclose(losses, straight.last_losses, rtol=1e-5, atol=1e-6)
    # the weights end where the uninterrupted run's end
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_espeak
def test_audio_projection_learning_rate_and_resuming_a_single_group_state(tmp_path, tiny_vae):
    with pytest.raises(ValueError, match="training.audio_projection_learning_rate must be a number >= 0 or null"):
        config_from_dict(tiny_config(tmp_path / "bad", tiny_vae, audio_projection_learning_rate=-1e-4))
    frozen = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "frozen", tiny_vae,
                                                             audio_projection_learning_rate=0.0)), show_progress=False)
    assert [g["lr"] for g in frozen.optimizer.param_groups] == [1e-3, 0.0]
    start = [p.detach().clone() for p in frozen.audio_proj.parameters()]
    frozen.train()
    assert all(torch.equal(a, b) for a, b in zip(start, frozen.audio_proj.parameters()))  # rate 0: kept as drawn
    assert load_checkpoint(tmp_path / "frozen" / "letstalk.safetensors").training["audio_projection_learning_rate"] == 0.0
    with pytest.raises(ValueError, match="training.zero_init_audio_attention must be true or false"):
        config_from_dict(tiny_config(tmp_path / "bad", tiny_vae, zero_init_audio_attention="yes"))
    closed = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "closed", tiny_vae, max_steps=1,
                                                             zero_init_audio_attention=True)), show_progress=False)
    assert all(block.audio_attn.to_out.weight.abs().max().item() == 0 for block in closed.model.blocks)
    closed.train()
    assert load_checkpoint(tmp_path / "closed" / "letstalk.safetensors").training["zero_init_audio_attention"] is True

    # a state saved with one parameter group (before this option) resumes into the two groups
    first = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "old", tiny_vae, max_steps=3)), show_progress=False)
    first.train(max_steps=2)
    path = tmp_path / "old" / "training_state.pt"
    state = torch.load(path, weights_only=True)
    groups = state["optimizer"]["param_groups"]
    state["optimizer"]["param_groups"] = [{**groups[0], "params": groups[0]["params"] + groups[1]["params"]}]
    torch.save(state, path)
    resumed = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "old", tiny_vae, max_steps=3,
                                                              audio_projection_learning_rate=1e-4)),
                                 resume=True, show_progress=False)
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [1e-3, 1e-4]
    assert len(resumed.optimizer.state) == len(list(resumed.model.parameters())) + len(list(resumed.audio_proj.parameters()))
    resumed.train()
    assert resumed.step == 3


@needs_espeak
def test_learning_rate_decay_over_the_last_steps_and_its_resume(tmp_path, tiny_vae):
    for bad, message in ((-1, "training.lr_decay_steps must be an integer >= 0"),
                         (5, r"training.lr_decay_steps \(5\) must be at most training.max_steps \(4\)")):
        with pytest.raises(ValueError, match=message):
            config_from_dict(tiny_config(tmp_path / "bad", tiny_vae, max_steps=4, lr_decay_steps=bad))
    values = tiny_config(tmp_path / "a", tiny_vae, max_steps=4, lr_decay_steps=3, audio_projection_learning_rate=1e-4)
    straight = TransformerTrainer(config_from_dict(values), show_progress=False)
    rates = []
    straight.train(on_step=lambda step, loss: rates.append([g["lr"] for g in straight.optimizer.param_groups]))
    # constant, then down by a third per step over the last 3 updates, both groups alike
    expected = [1.0, 1.0, 2 / 3, 1 / 3]
    np.testing.assert_allclose([r[0] for r in rates], [1e-3 * f for f in expected], rtol=1e-12)
    np.testing.assert_allclose([r[1] for r in rates], [1e-4 * f for f in expected], rtol=1e-12)
    assert load_checkpoint(tmp_path / "a" / "letstalk.safetensors").training["lr_decay_steps"] == 3
    # interrupted inside the decay: the resumed run takes the rate from the step, not from the saved optimiser
    values["output_dir"] = str(tmp_path / "b")
    first = TransformerTrainer(config_from_dict(values), show_progress=False)
    first.train(max_steps=3)
    resumed = TransformerTrainer(config_from_dict(values), resume=True, show_progress=False)
    resumed_rates = []
    resumed.train(on_step=lambda step, loss: resumed_rates.append(resumed.optimizer.param_groups[0]["lr"]))
    assert resumed_rates == [pytest.approx(1e-3 / 3)]
    np.testing.assert_allclose(first.last_losses + resumed.last_losses, straight.last_losses, rtol=1e-5, atol=1e-6)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_espeak
def test_init_from_a_checkpoint_fine_tunes_its_weights(tmp_path, tiny_vae, monkeypatch):
    base = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "base", tiny_vae)), show_progress=False)
    start = load_checkpoint(base.train())
    # through the CLI, a relative path taken from the working directory
    values = tiny_config(tmp_path / "tuned", tiny_vae, max_steps=1)
    config_path = tmp_path / "configs" / "tuned.yaml"
    config_path.parent.mkdir()
    config_path.write_text(yaml.safe_dump(values))
    tuned = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "t", tiny_vae, max_steps=1,
                                                            init_from=str(start.path))), show_progress=False)
    for module, loaded in ((tuned.model, start.model), (tuned.audio_proj, start.audio_proj)):
        for (name, value), expected in zip(module.state_dict().items(), loaded.state_dict().values()):
            assert torch.equal(value, expected), name
    shadow = dict(zip([n for n, _ in tuned.model.named_parameters()], tuned.ema.shadow_params))
    assert all(torch.equal(shadow[n], p) for n, p in start.model.named_parameters())  # the EMA starts there too
    # a model from scratch starts elsewhere (adaLN-Zero): the weights did come from the file
    assert tuned.model.final_proj.weight.abs().max() > 0
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(config_path), "--init-from", "base/letstalk.safetensors"]) == 0
    checkpoint = load_checkpoint(tmp_path / "tuned" / "letstalk.safetensors")
    assert checkpoint.training["init_from"] == "letstalk.safetensors" and checkpoint.training["step"] == 1
    # a checkpoint of another shape: the file, the first key and both shapes
    wider = tiny_config(tmp_path / "w", tiny_vae, init_from=str(start.path))
    wider["model"]["hidden_size"] = 48
    with pytest.raises(ValueError, match=r"training.init_from .*letstalk.safetensors: key '[\w.]+' has shape "
                                         r"\(\d+(, \d+)*\), but the model expects \(\d+(, \d+)*\)"):
        TransformerTrainer(config_from_dict(wider), show_progress=False)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        TransformerTrainer(config_from_dict(tiny_config(tmp_path / "m", tiny_vae, init_from=str(tmp_path / "missing.safetensors"))),
                           show_progress=False)
    with pytest.raises(ValueError, match="training.init_from must be a checkpoint path or null"):
        config_from_dict(tiny_config(tmp_path / "m", tiny_vae, init_from=3))


@needs_espeak
def test_gradient_accumulation_checkpointing_and_latent_cache(tmp_path, tiny_vae):
    values = tiny_config(tmp_path / "acc", tiny_vae, max_steps=2, gradient_accumulation_steps=2, batch_size=1,
                         gradient_checkpointing=True)
    trainer = TransformerTrainer(config_from_dict(values), show_progress=False)
    assert trainer.model.gradient_checkpointing
    trainer.train()
    assert trainer.step == 2 and trainer.micro_step == 4 and len(trainer.last_losses) == 4
    assert trainer.ema.optimization_step == 2  # the EMA follows optimiser steps, not batches

    # cached clip latents give the same losses as encoding the clip every step
    values["data"]["cache_clip_latents"] = True
    values["output_dir"] = str(tmp_path / "cached")
    cached = TransformerTrainer(config_from_dict(values), show_progress=False)
    cached.train()
    assert len(cached._latent_cache) >= 1
    np.testing.assert_allclose(cached.last_losses, trainer.last_losses, rtol=1e-4, atol=1e-5)


@needs_espeak
def test_demo_stages_vae_then_transformer_through_the_cli(tmp_path):
    values = tiny_config(tmp_path / "demo", None)
    values["stages"] = ["vae", "transformer"]
    values["vae"] = {"config": "demo_vae", "steps": 2, "batch_size": 2, "save_every": 1}
    values["training"]["max_steps"] = 1
    config_path = tmp_path / "demo.yaml"
    config_path.write_text(yaml.safe_dump(values))
    assert main(["train", "--config", str(config_path)]) == 0
    vae_file = tmp_path / "demo" / "vae" / "vae.safetensors"
    assert load_training_state(tmp_path / "demo" / "vae_state.pt")["step"] == 2
    trained_vae = load_vae(vae_file)
    assert trained_vae.scaling_factor != load_shipped_config("demo_vae")["scaling_factor"]  # set from the latent std
    checkpoint = load_checkpoint(tmp_path / "demo" / "letstalk.safetensors")
    bundled = checkpoint.vae_state_dict
    for key, value in trained_vae.vae.state_dict().items():
        assert torch.equal(bundled[key], value), key
    assert checkpoint.vae_config["scaling_factor"] == pytest.approx(trained_vae.scaling_factor)
    # resuming a finished run keeps the VAE and trains on
    assert main(["train", "--config", str(config_path), "--resume", "--max-steps", "2"]) == 0
    assert load_checkpoint(tmp_path / "demo" / "letstalk.safetensors").training["step"] == 2


# ---- recipe --------------------------------------------------------------------------------------
def test_condition_dropout_rates_and_null_conditions():
    generator = torch.Generator().manual_seed(0)
    choice = draw_condition_dropout(40_000, generator, audio=0.1, portrait=0.15, both=0.05)
    fractions = {kind: float((choice == kind).float().mean()) for kind in (DROP_NONE, DROP_AUDIO, DROP_PORTRAIT, DROP_BOTH)}
    assert fractions[DROP_AUDIO] == pytest.approx(0.1, abs=0.006)
    assert fractions[DROP_PORTRAIT] == pytest.approx(0.15, abs=0.006)
    assert fractions[DROP_BOTH] == pytest.approx(0.05, abs=0.006)
    assert fractions[DROP_NONE] == pytest.approx(0.7, abs=0.008)
    again = draw_condition_dropout(40_000, torch.Generator().manual_seed(0), audio=0.1, portrait=0.15, both=0.05)
    assert torch.equal(choice, again)  # seeded

    choice = torch.tensor([DROP_NONE, DROP_AUDIO, DROP_PORTRAIT, DROP_BOTH])
    windows = torch.randn(4, 3, 5, 1, 8) + 2.0  # [B, F, W, L, D]
    portrait = torch.randn(4, 4, 2, 2) + 2.0  # [B, C, H, W]
    null_windows, null_portrait = apply_condition_dropout(choice, windows, portrait)
    audio_zero = [bool((null_windows[i] == 0).all()) for i in range(4)]
    portrait_zero = [bool((null_portrait[i] == 0).all()) for i in range(4)]
    assert audio_zero == [False, True, False, True]
    assert portrait_zero == [False, False, True, True]
    assert torch.equal(null_windows[0], windows[0]) and torch.equal(null_portrait[1], portrait[1])
    with pytest.raises(ValueError, match="add up"):
        draw_condition_dropout(2, generator, audio=0.5, portrait=0.4, both=0.2)


def test_memory_frames_noise_and_mask():
    schedule = DiffusionSchedule.training()
    clean = torch.randn(500, 2, 4, 8, 8)  # [B, K, C, H, W]
    corrupted = corrupt_memory_latents(clean, schedule, torch.Generator().manual_seed(1))
    assert corrupted.timesteps.min() >= 0 and corrupted.timesteps.max() < 50
    assert corrupted.timesteps.max() >= 45 and corrupted.timesteps.min() <= 4  # spread over [0, 50)
    mask = corrupted.mask  # [B, 1, 1, H, W]
    assert float(1 - mask.mean()) == pytest.approx(0.25, abs=0.01)
    assert float((1 - mask).flatten(1).mean(1).std()) > 0.01  # one mask per sample, not one for all
    zeroed = corrupted.latents == 0
    assert torch.equal(zeroed, (mask == 0).expand_as(zeroed))  # same positions in every frame and channel
    # the kept positions are q_sample(x, t, noise) with the same draws
    generator = torch.Generator().manual_seed(1)
    timesteps = torch.randint(0, 50, (500,), generator=generator)
    noise = torch.randn(clean.shape, generator=generator)
    expected = schedule.q_sample(clean, timesteps, noise) * mask
    torch.testing.assert_close(corrupted.latents, expected)
    # diffusion to t < 50 keeps the memory close to the clean latents
    kept = mask.expand_as(clean).bool()
    assert float((corrupted.latents - clean)[kept].std()) < 0.2
    # memory drop zeroes whole memories of about that fraction of samples, on top of the same draws
    dropped = corrupt_memory_latents(clean, schedule, torch.Generator().manual_seed(1), drop=0.3)
    whole = (dropped.latents == 0).flatten(1).all(1)  # [B]
    assert float(whole.float().mean()) == pytest.approx(0.3, abs=0.07)
    torch.testing.assert_close(dropped.latents[~whole], corrupted.latents[~whole])
    assert torch.equal(dropped.mask[whole], torch.zeros_like(dropped.mask[whole]))


def test_pixel_noise_sigma_distribution():
    sigmas = pixel_noise_sigmas(20_000, torch.Generator().manual_seed(2))
    assert float(sigmas.log().mean()) == pytest.approx(-3.0, abs=0.02)
    assert float(sigmas.log().std()) == pytest.approx(0.5, abs=0.02)
    pixels = torch.zeros(3, 3, 64, 64)
    noisy = add_pixel_noise(pixels, torch.tensor([0.0, 0.05, 0.2]), torch.Generator().manual_seed(3))
    assert float(noisy[0].abs().max()) == 0.0
    assert float(noisy[1].std()) == pytest.approx(0.05, rel=0.05) and float(noisy[2].std()) == pytest.approx(0.2, rel=0.05)


# ---- loss ----------------------------------------------------------------------------------------
def test_schedule_matches_diffusers_ddpm():
    schedule = DiffusionSchedule.training()
    scheduler = training_scheduler()
    assert isinstance(scheduler, DDPMScheduler)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), scheduler.alphas_cumprod.numpy(), rtol=2e-6)
    assert schedule.num_timesteps == 1000


def test_vlb_term_equals_direct_computation():
    schedule = DiffusionSchedule.training()
    betas = np.linspace(1e-4, 0.02, 1000)
    acp = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    shape = (2, 3, 2, 4, 4)  # [B, F, C, H, W]
    x0 = np.clip(rng.normal(0, 0.5, shape), -1, 1)
    x0[0, 0, 0, 0, :2] = [-1.0, 1.0]  # the outermost bins of the discretised decoder
    noise = rng.normal(size=shape)
    eps = noise + 0.3 * rng.normal(size=shape)
    v = rng.uniform(-1, 1, shape)
    for t in (0, 1, 10, 999):
        xt = np.sqrt(acp[t]) * x0 + np.sqrt(1 - acp[t]) * noise
        acp_prev = acp[t - 1] if t > 0 else 1.0
        post_var = betas[t] * (1 - acp_prev) / (1 - acp[t])
        post_var_t1 = betas[1] * (1 - acp[0]) / (1 - acp[1])
        log_post = np.log(post_var if t > 0 else post_var_t1)
        def post_mean(x_start):
            return (np.sqrt(acp_prev) * betas[t] / (1 - acp[t]) * x_start
                    + np.sqrt(1 - betas[t]) * (1 - acp_prev) / (1 - acp[t]) * xt)
        x0_pred = (xt - np.sqrt(1 - acp[t]) * eps) / np.sqrt(acp[t])
        model_mean = post_mean(x0_pred)
        model_log_var = (v + 1) / 2 * np.log(betas[t]) + (1 - v) / 2 * log_post
        if t > 0:
            kl = 0.5 * (-1 + model_log_var - log_post + np.exp(log_post - model_log_var)
                        + (post_mean(x0) - model_mean) ** 2 * np.exp(-model_log_var))
            expected = kl.reshape(2, -1).mean(1) / np.log(2)
        else:
            std = np.exp(0.5 * model_log_var)
            upper = np.where(x0 > 0.999, 1.0, norm.cdf((x0 + 1 / 255 - model_mean) / std))
            lower = np.where(x0 < -0.999, 0.0, norm.cdf((x0 - 1 / 255 - model_mean) / std))
            expected = -np.log(upper - lower).reshape(2, -1).mean(1) / np.log(2)
        as_t = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float64))  # noqa: E731
        got = variational_bound_terms(schedule, as_t(eps), as_t(v), as_t(x0), as_t(xt), torch.tensor([t, t]))
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, err_msg=f"t={t}")


def test_vlb_is_zero_for_the_true_posterior_and_trains_only_the_variance():
    schedule = DiffusionSchedule.training()
    x0 = torch.randn(2, 2, 4, 4, 4, dtype=torch.float64)  # [B, F, C, H, W]
    noise = torch.randn_like(x0)
    timestep = torch.tensor([5, 700])
    xt = schedule.q_sample(x0, timestep, noise)
    minimum = -torch.ones_like(x0)  # v = -1: the clipped posterior variance
    terms = variational_bound_terms(schedule, noise, minimum, x0, xt, timestep)
    assert float(terms.abs().max()) < 1e-9

    output = torch.cat([noise + 0.1, torch.zeros_like(x0)], dim=2).float().requires_grad_(True)  # [B, F, 2C, H, W]
    result = diffusion_loss(schedule, output, x0.float(), xt.float(), noise.float(), timestep)
    assert torch.allclose(result.mse, torch.full((2,), 0.01), atol=1e-5)
    result.vb.sum().backward()
    eps_grad, variance_grad = output.grad.chunk(2, dim=2)
    assert float(eps_grad.abs().max()) == 0.0 and float(variance_grad.abs().max()) > 0
    with pytest.raises(ValueError, match="2C"):
        diffusion_loss(schedule, output[:, :, :4], x0, xt, noise, timestep)


# ---- config --------------------------------------------------------------------------------------
def test_config_checks_and_presets(tmp_path, tiny_vae):
    assert {"demo", "S", "B", "L", "XL"} <= set(preset_names())
    demo = load_preset("demo", base_dir=tmp_path)
    assert demo.stages == ["vae", "transformer"] and demo.model.variant == "vdt_long"
    # 64 px through the f4 demo VAE: 16x16 latents; a VAE that is known (loaded) decides over the config
    assert demo.transformer_kwargs()["sample_size"] == 16 and demo.output_dir == str(tmp_path / "runs" / "demo")
    assert demo.transformer_kwargs(downscale_factor=8)["sample_size"] == 8
    xl = load_preset("XL", {"data": {"path": "prepared"}, "vae": {"path": "sd-vae"}}, base_dir=tmp_path)
    kwargs = xl.transformer_kwargs()
    assert (kwargs["depth"], kwargs["hidden_size"], kwargs["num_heads"], kwargs["sample_size"]) == (28, 1152, 16, 32)
    assert xl.training.grad_clip == 0.1 and xl.training.grad_clip_after == 20_000 and xl.training.mixed_precision == "bf16"
    with pytest.raises(ValueError, match="vae.path"):
        load_preset("S", {"data": {"path": "prepared"}})
    with pytest.raises(ValueError, match="unknown key"):
        config_from_dict({**tiny_config(tmp_path, tiny_vae), "trainig": {}})
    bad = tiny_config(tmp_path, tiny_vae)
    bad["recipe"]["dropout"] = {"audio": 0.6, "portrait": 0.6, "both": 0.0}
    with pytest.raises(ValueError, match="add up"):
        config_from_dict(bad)
    bad = tiny_config(tmp_path, tiny_vae)
    bad["data"]["resolution"] = 36
    with pytest.raises(ValueError, match="multiple of 8"):
        config_from_dict(bad)
    with pytest.raises(FileNotFoundError, match="presets"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="preset 'huge' is not known"):
        load_preset("huge")


@needs_espeak
def test_synthetic_source_from_a_generated_folder(tmp_path):
    from letstalk_core.audio import load_audio_encoder
    from letstalk_core.training.data import ClipDataset, SyntheticSource
    from letstalk_core.training.synthetic import generate_dataset

    paths = generate_dataset(tmp_path / "world", 1, seconds=1.0, size=64, seed=4)
    source = SyntheticSource(load_audio_encoder("mel", n_mels=16), resolution=32, folder=tmp_path / "world")
    assert len(source) == 1 and source.names == [paths[0].name]
    record = source.load(0)
    assert record.frames.dtype == torch.uint8 and tuple(record.frames.shape[1:]) == (32, 32, 3)
    assert record.num_frames == 25 and tuple(record.audio_features.shape) == (25, 1, 16)
    # the face (not a flat picture) and the speech (not silence) came through
    assert float(record.frames.float().std()) > 10 and float(record.audio_features.std()) > 0.5
    sample = ClipDataset(source, frames_per_clip=8, memory_frames=2).sample(0, torch.Generator().manual_seed(0))
    assert tuple(sample.clip.shape) == (8, 3, 32, 32) and float(sample.clip.min()) >= -1 and float(sample.clip.max()) <= 1
    # the sidecar's identity gives the renderer's mouth box: in the lower middle of the frame
    top, bottom, left, right = sample.mouth_box
    assert 0.5 < top < bottom < 0.95 and 0.25 < left < 0.5 < right < 0.75
    with pytest.raises(ValueError, match="no .mp4"):
        SyntheticSource(load_audio_encoder("mel"), resolution=32, folder=tmp_path)


# ---- mouth-weighted loss (beyond the authors' recipe) ---------------------------------------------
def test_mouth_weights_mark_the_latents_over_the_mouth():
    from letstalk_core.training.data import mouth_weights

    boxes = torch.tensor([[0.5, 0.75, 0.25, 0.5], [math.nan] * 4])  # [2, 4] top, bottom, left, right
    weights = mouth_weights(boxes, 4, 4, 3.0)  # [2, 1, 1, 4, 4]
    assert weights.shape == (2, 1, 1, 4, 4)
    expected = torch.ones(4, 4)
    expected[2, 1] = 4.0  # the one cell of a 4x4 grid that the box covers (rows 2, column 1)
    torch.testing.assert_close(weights[0, 0, 0], expected)
    assert torch.equal(weights[1], torch.ones(1, 1, 4, 4))  # no box: uniform
    # a box that only touches a cell counts it; one strictly inside a cell marks just that cell
    assert int((mouth_weights(torch.tensor([[0.30, 0.45, 0.30, 0.45]]), 2, 2, 1.0) > 1).sum()) == 1


def test_weighted_epsilon_loss_is_a_weighted_mean():
    schedule = DiffusionSchedule.training()
    generator = torch.Generator().manual_seed(5)
    x0, noise = torch.randn(2, 3, 4, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, 4, generator=generator)
    timestep = torch.tensor([10, 500])
    xt = schedule.q_sample(x0, timestep, noise)
    output = torch.cat([noise, torch.zeros_like(noise)], dim=2)  # a perfect epsilon ...
    output[:, :, :4, 0, 0] += 1.0  # ... wrong by 1 at one latent position
    plain = diffusion_loss(schedule, output, x0, xt, noise, timestep)
    uniform = diffusion_loss(schedule, output, x0, xt, noise, timestep, torch.full((2, 1, 1, 4, 4), 7.0))
    torch.testing.assert_close(uniform.mse, plain.mse)
    torch.testing.assert_close(plain.mse, torch.full((2,), 1 / 16))
    weights = torch.ones(2, 1, 1, 4, 4)
    weights[:, :, :, 0, 0] = 5.0  # weigh the wrong position up: error 5 / (15 + 5)
    weighted = diffusion_loss(schedule, output, x0, xt, noise, timestep, weights)
    torch.testing.assert_close(weighted.mse, torch.full((2,), 5 / 20))
    torch.testing.assert_close(weighted.vb, plain.vb)


def test_min_snr_weighting_scales_each_samples_epsilon_error():
    schedule = DiffusionSchedule.training()
    generator = torch.Generator().manual_seed(6)
    x0, noise = torch.randn(3, 2, 4, 4, 4, generator=generator), torch.randn(3, 2, 4, 4, 4, generator=generator)
    timestep = torch.tensor([5, 150, 800])  # SNR far above 5, near it, far below it
    xt = schedule.q_sample(x0, timestep, noise)
    output = torch.cat([noise + 0.5, torch.zeros_like(noise)], dim=2)  # epsilon wrong by 0.5 everywhere
    plain = diffusion_loss(schedule, output, x0, xt, noise, timestep)
    weighted = diffusion_loss(schedule, output, x0, xt, noise, timestep, snr_gamma=5.0)
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[[5, 150, 800]]
    snr = abar / (1 - abar)
    assert snr[0] > 5 and snr[2] < 5
    expected = 0.25 * np.minimum(snr, 5.0) / snr
    torch.testing.assert_close(weighted.mse, torch.tensor(expected, dtype=torch.float32))
    assert float(weighted.mse[2]) == pytest.approx(float(plain.mse[2]))  # noisy samples keep their weight
    torch.testing.assert_close(weighted.vb, plain.vb)
    # with the mouth weights too: both apply
    weights = torch.ones(3, 1, 1, 4, 4)
    both = diffusion_loss(schedule, output, x0, xt, noise, timestep, weights * 3, snr_gamma=5.0)
    torch.testing.assert_close(both.mse, weighted.mse)


def test_snr_floor_makes_noisy_samples_count_their_x0_error_up_to_the_cap():
    schedule = DiffusionSchedule.training()
    generator = torch.Generator().manual_seed(7)
    x0, noise = torch.randn(4, 2, 4, 4, 4, generator=generator), torch.randn(4, 2, 4, 4, 4, generator=generator)
    timestep = torch.tensor([5, 300, 600, 900])
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000))[[5, 300, 600, 900]]
    snr = abar / (1 - abar)
    assert snr[0] > 5 and 0.25 < snr[1] < 5 and 0.25 / snr[2] < 50 < 0.25 / snr[3]
    xt = schedule.q_sample(x0, timestep, noise)
    output = torch.cat([noise + 0.5, torch.zeros_like(noise)], dim=2)  # epsilon wrong by 0.5 everywhere
    weighted = diffusion_loss(schedule, output, x0, xt, noise, timestep, snr_gamma=5.0, snr_floor=0.25, max_weight=50)
    expected = 0.25 * np.array([5.0 / snr[0], 1.0, 0.25 / snr[2], 50.0])  # min-SNR, plain, floor, cap
    torch.testing.assert_close(weighted.mse, torch.tensor(expected, dtype=torch.float32))
    # in x0 terms: the floored sample's x0 error counts snr_floor times whatever its noise level
    x0_error = schedule.predict_x_start(xt, timestep, noise + 0.5) - x0  # [B, F, C, H, W]
    x0_mse = float((x0_error[2] ** 2).mean())
    assert float(weighted.mse[2]) == pytest.approx(0.25 * x0_mse, rel=1e-4)
    # without min-SNR the floor still applies, and the plain loss is untouched when both are off
    floor_only = diffusion_loss(schedule, output, x0, xt, noise, timestep, snr_floor=0.25, max_weight=50)
    torch.testing.assert_close(floor_only.mse, torch.tensor(0.25 * np.array([1.0, 1.0, 0.25 / snr[2], 50.0]),
                                                            dtype=torch.float32))
    plain = diffusion_loss(schedule, output, x0, xt, noise, timestep, max_weight=50)
    torch.testing.assert_close(plain.mse, torch.full((4,), 0.25))


@needs_espeak
def test_training_with_mouth_and_snr_weights_runs_and_is_checked(tmp_path, tiny_vae):
    config = tiny_config(tmp_path / "run", tiny_vae)
    config["recipe"]["mouth_loss_weight"] = 4.0
    config["recipe"]["snr_gamma"] = 5.0
    config["recipe"]["snr_floor"] = 0.25
    config["recipe"]["max_loss_weight"] = 50.0
    config["recipe"]["memory_drop"] = 0.5
    trainer = TransformerTrainer(config_from_dict(config), show_progress=False)
    trainer.train()
    assert len(trainer.last_losses) == 2 and all(math.isfinite(v) for v in trainer.last_losses)
    config["recipe"]["mouth_loss_weight"] = -1
    with pytest.raises(ValueError, match="mouth_loss_weight"):
        config_from_dict(config)
    config["recipe"]["mouth_loss_weight"] = 4.0
    config["recipe"]["memory_drop"] = 1.5
    with pytest.raises(ValueError, match="recipe.memory_drop"):
        config_from_dict(config)
    config["recipe"]["memory_drop"] = 0.3
    for bad in (-1, float("nan"), "5", True):
        config["recipe"]["snr_gamma"] = bad
        with pytest.raises(ValueError, match="recipe.snr_gamma"):
            config_from_dict(config)
    config["recipe"]["snr_gamma"] = 5.0
    for bad in (-0.1, float("inf"), "0.25", False):
        config["recipe"]["snr_floor"] = bad
        with pytest.raises(ValueError, match="recipe.snr_floor"):
            config_from_dict(config)
    config["recipe"]["snr_floor"] = 0.25
    for bad in (0.5, "50", None):
        config["recipe"]["max_loss_weight"] = bad
        with pytest.raises(ValueError, match="recipe.max_loss_weight"):
            config_from_dict(config)


# ---- the conditioning probe ----------------------------------------------------------------------
def test_conditioning_probe_tells_used_from_ignored_conditions():
    from letstalk_core.training.probe import conditioning_probe, describe_probe

    schedule = DiffusionSchedule.training()
    generator = torch.Generator().manual_seed(11)
    portrait = torch.randn(3, 4, 6, 6, generator=generator)  # [B, C, h, w]
    latents = portrait[:, None].repeat(1, 2, 1, 1, 1) + 0.05 * torch.randn(3, 2, 4, 6, 6, generator=generator)
    memory = torch.randn(3, 2, 4, 6, 6, generator=generator)
    windows = torch.randn(3, 2, 5, 1, 8, generator=generator)

    def copies_the_portrait(noisy, steps, portrait_latents, audio_tokens, memory_latents):
        """A denoiser whose x0 is the portrait: it uses the portrait and nothing else."""
        abar = schedule.alphas_cumprod[steps].float()[:, None, None, None, None]
        eps = (noisy - abar.sqrt() * portrait_latents[:, None]) / (1 - abar).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=2)

    mouth = torch.zeros(3, 1, 1, 6, 6)
    mouth[..., 3:5, 2:4] = 1.0
    result = conditioning_probe(copies_the_portrait, lambda w: w.flatten(3), schedule, latents, portrait, windows,
                                memory, timestep=300, mouth_mask=mouth, generator=generator)
    assert result["own"] == pytest.approx(0.05 * math.sqrt(2 / math.pi), rel=0.1)  # just the frames' own noise
    assert result["portrait_swapped"] > 10 * result["own"]
    assert result["memory_swapped"] == pytest.approx(result["own"]) == pytest.approx(result["audio_swapped"])
    assert result["audio_swapped_mouth"] == pytest.approx(result["own_mouth"])
    line = describe_probe(result, 300)
    assert "t=300" in line and "memory swapped x1.000" in line and "portrait swapped x1.000" not in line
    # audio tokens that follow the (random) windows vary over frames; a projection that flattens the
    # speech away (every frame gets the first frame's tokens) gives 0
    assert result["audio_token_variation"] > 0.5 and "audio tokens vary over frames by" in line
    flat = conditioning_probe(copies_the_portrait, lambda w: w.flatten(3)[:, :1].expand(-1, w.shape[1], -1, -1),
                              schedule, latents, portrait, windows, memory, timestep=300, generator=generator)
    assert flat["audio_token_variation"] == 0.0
    with pytest.raises(ValueError, match="B >= 2"):
        conditioning_probe(copies_the_portrait, lambda w: w, schedule, latents[:1], portrait[:1], windows[:1])
    with pytest.raises(ValueError, match="timestep must be in 0..999"):
        conditioning_probe(copies_the_portrait, lambda w: w, schedule, latents, portrait, windows, timestep=1000)


@needs_espeak
def test_each_save_logs_the_probe(tmp_path, tiny_vae, caplog):
    trainer = TransformerTrainer(config_from_dict(tiny_config(tmp_path / "run", tiny_vae, save_every=1)),
                                 show_progress=False)
    with caplog.at_level(logging.INFO, logger="letstalk_core.training.trainer"):
        trainer.train()
    lines = [r.getMessage() for r in caplog.records if "probe" in r.getMessage()]
    assert len(lines) >= 2 and all("portrait swapped x" in line and "memory swapped x" in line for line in lines)
    # every save logs each of the probe's timesteps
    for timestep in PROBE_TIMESTEPS:
        assert sum(f"x0 L1 at t={timestep}:" in line for line in lines) == len(lines) // len(PROBE_TIMESTEPS)
    result = trainer.probe()
    assert all(math.isfinite(v) and v > 0 for v in result.values())
    assert all("audio tokens vary over frames by" in line for line in lines)
    # and each probe is kept as a JSON line, the raw errors that the log line gives as ratios
    import json
    kept = [json.loads(line) for line in (tmp_path / "run" / "probes.jsonl").read_text().splitlines()]
    assert len(kept) == len(lines) and [k["timestep"] for k in kept[:len(PROBE_TIMESTEPS)]] == list(PROBE_TIMESTEPS)
    assert kept[-1]["step"] == trainer.step and {"own", "portrait_swapped", "audio_swapped"} <= set(kept[-1])
    # the probe averages PROBE_CLIPS clips: here 8 batches of 2, drawn in order from one generator
    generator = torch.Generator().manual_seed(trainer.config.seed + 7919)
    parts = [trainer._probe_batch(trainer._batch(range(2 * i, 2 * i + 2), [generator] * 2), PROBE_TIMESTEPS[0],
                                  generator) for i in range(PROBE_CLIPS // 2)]
    assert len({round(p["own"], 6) for p in parts}) > 1
    for key in ("own", "audio_swapped", "portrait_swapped"):
        assert result[key] == pytest.approx(sum(p[key] for p in parts) / len(parts), rel=1e-6)

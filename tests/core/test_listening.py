"""The listening objective (recipe.audio_mouth_loss_weight): the audio tokens asked to predict the mouth's motion."""

from __future__ import annotations

import math

import pytest
import torch

from letstalk_core.checkpoints import load_checkpoint
from letstalk_core.training.config import config_from_dict
from letstalk_core.training.listening import MOUTH_GRID, AudioMouthHead, audio_mouth_loss, mouth_grid
from letstalk_core.training.trainer import TRANSFORMER_STATE, TransformerTrainer, load_training_state
from tests.core.test_training import needs_espeak, tiny_config, tiny_vae  # noqa: F401 (a fixture)


def test_mouth_grid_samples_the_box_and_nothing_else():
    # latents that are a ramp in x (channel 0) and in y (channel 1): bilinear sampling of a ramp is exact
    height, width = 16, 16
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                            indexing="ij")
    latents = torch.stack([xs, ys])[None, None].repeat(2, 3, 1, 1, 1)  # [B=2, F=3, C=2, h, w]
    latents[1] += 100.0  # the second clip is another "person": an offset
    box = torch.tensor([[0.5, 0.75, 0.25, 0.625], [0.5, 0.75, 0.25, 0.625]])  # top, bottom, left, right
    pooled = mouth_grid(latents, box)  # [B, F, C * 2 * 3]
    rows, cols = MOUTH_GRID
    assert pooled.shape == (2, 3, 2 * rows * cols)
    grid = pooled[0, 0].view(2, rows, cols)
    # cell centres inside the box, in latent pixel coordinates (a latent's centre is at index + 0.5)
    expected_x = torch.tensor([0.25 + (0.625 - 0.25) * (c + 0.5) / cols for c in range(cols)]) * width - 0.5
    expected_y = torch.tensor([0.5 + 0.25 * (r + 0.5) / rows for r in range(rows)]) * height - 0.5
    torch.testing.assert_close(grid[0], expected_x[None].expand(rows, -1))
    torch.testing.assert_close(grid[1], expected_y[:, None].expand(-1, cols))
    torch.testing.assert_close(pooled[1], pooled[0] + 100.0)


def _clips(generator, batch=8, frames=6, tokens=2, dim=8, channels=4):
    """Clips whose mouth grid moves with one number per frame that the audio tokens carry (plus a fixed identity)."""
    opening = torch.randn(batch, frames, generator=generator)  # [B, F]
    latents = torch.randn(batch, 1, channels, 8, 8, generator=generator).repeat(1, frames, 1, 1, 1)  # identity
    latents[:, :, :, 4:6, 2:6] += opening[:, :, None, None, None]  # the mouth box rows 4-5, cols 2-5
    tokens_ = torch.randn(batch, frames, tokens, dim, generator=generator) * 0.1
    tokens_[..., 0, 0] += opening
    box = torch.tensor([[0.5, 0.75, 0.25, 0.75]]).repeat(batch, 1)
    return tokens_, latents, box


def _value(*args) -> float:
    return float(audio_mouth_loss(*args).detach())


def test_the_objective_is_one_for_deaf_tokens_and_falls_when_they_carry_the_mouth():
    generator = torch.Generator().manual_seed(0)
    tokens, latents, box = _clips(generator)
    keep = torch.ones(8, dtype=torch.bool)
    head = AudioMouthHead(2, 8, 4 * MOUTH_GRID[0] * MOUTH_GRID[1])
    torch.nn.init.zeros_(head.proj.weight)
    assert _value(head, tokens, latents, box, keep) == pytest.approx(1.0)  # explains nothing
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    for _ in range(200):
        optimizer.zero_grad()
        audio_mouth_loss(head, tokens, latents, box, keep).backward()
        optimizer.step()
    trained = _value(head, *_clips(torch.Generator().manual_seed(1)), keep)
    assert trained < 0.1  # new clips: the motion is heard
    # tokens that do not carry the mouth (another clip's speech) explain nothing of it
    deaf = _value(head, tokens.roll(1, dims=0), latents, box, keep)
    assert deaf > 0.8
    # dropped audio and clips without a mouth box do not count; with none left the loss is 0 but keeps the graph
    box_unknown = box.clone()
    box_unknown[:] = math.nan
    none = audio_mouth_loss(head, tokens, latents, box_unknown, keep)
    assert float(none.detach()) == 0.0 and none.requires_grad
    assert _value(head, tokens, latents, box, torch.zeros(8, dtype=torch.bool)) == 0.0
    partly = box.clone()
    partly[:4] = math.nan
    half_deaf = tokens.clone()
    half_deaf[:4] = 0.0  # garbage where the box is unknown is not looked at
    assert _value(head, half_deaf, latents, partly, keep) == pytest.approx(
        _value(head, tokens[4:], latents[4:], box[4:], keep[4:]))


@needs_espeak
def test_training_with_the_listening_objective_trains_the_projection_and_keeps_the_head_out_of_the_bundle(
        tmp_path, tiny_vae):
    values = tiny_config(tmp_path / "run", tiny_vae, audio_projection_learning_rate=None)
    values["recipe"]["audio_mouth_loss_weight"] = 1.0
    trainer = TransformerTrainer(config_from_dict(values), show_progress=False)
    assert trainer.mouth_head is not None
    projection_before = {k: v.clone() for k, v in trainer.audio_proj.state_dict().items()}
    head_before = {k: v.clone() for k, v in trainer.mouth_head.state_dict().items()}
    path = trainer.train()
    assert trainer.last_audio_mouth is not None and math.isfinite(trainer.last_audio_mouth)
    assert any(not torch.equal(v, projection_before[k]) for k, v in trainer.audio_proj.state_dict().items())
    assert any(not torch.equal(v, head_before[k]) for k, v in trainer.mouth_head.state_dict().items())
    state = load_training_state(tmp_path / "run" / TRANSFORMER_STATE)
    assert set(state["mouth_head"]) == {"proj.weight", "proj.bias"}
    checkpoint = load_checkpoint(path)
    assert checkpoint.training["recipe"]["audio_mouth_loss_weight"] == 1.0
    assert checkpoint.training["data_source"] == "synthetic" and checkpoint.trained_on_real_footage is False
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as bundle:
        assert not any("mouth_head" in key or key.startswith("proj.") for key in bundle.keys())
    # the run resumes with its own config, and refuses one that turns the objective off
    values["training"]["max_steps"] = 3
    resumed = TransformerTrainer(config_from_dict(values), resume=True, show_progress=False)
    for key, value in resumed.mouth_head.state_dict().items():
        torch.testing.assert_close(value, trainer.mouth_head.state_dict()[key])
    values["recipe"]["audio_mouth_loss_weight"] = 0.0
    with pytest.raises(ValueError, match=r"saved with recipe.audio_mouth_loss_weight and the config now turns it off"):
        TransformerTrainer(config_from_dict(values), resume=True, show_progress=False)


def test_the_listening_objective_is_checked_and_needs_a_trained_projection(tmp_path, tiny_vae):
    values = tiny_config(tmp_path / "run", tiny_vae)
    for bad in (-1, 2000, "1", True, float("nan")):
        values["recipe"]["audio_mouth_loss_weight"] = bad
        with pytest.raises(ValueError, match=r"recipe.audio_mouth_loss_weight must be a number in 0..1000"):
            config_from_dict(values)
    values["recipe"]["audio_mouth_loss_weight"] = 1.0
    values["training"]["audio_projection_learning_rate"] = 0.0
    with pytest.raises(ValueError, match=r"training.audio_projection_learning_rate is 0 \(the projection frozen\)"):
        config_from_dict(values)
    values["training"]["audio_projection_learning_rate"] = None
    assert config_from_dict(values).recipe.audio_mouth_loss_weight == 1.0


@needs_espeak
def test_listening_pretraining_teaches_the_projection_before_the_transformer_trains(tmp_path, tiny_vae):
    values = tiny_config(tmp_path / "run", tiny_vae, audio_projection_learning_rate=3e-3, max_steps=1)
    values["recipe"].update(audio_mouth_loss_weight=1.0, audio_mouth_pretrain_steps=30)
    trainer = TransformerTrainer(config_from_dict(values), show_progress=False)
    model_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    curve = trainer.pretrain_listening(30)
    assert len(curve) == 30 and all(math.isfinite(v) for v in curve)
    assert sum(curve[-5:]) / 5 < 0.8 * sum(curve[:5]) / 5  # the audio explains more of the mouth as it learns
    assert all(torch.equal(v, model_before[k]) for k, v in trainer.model.state_dict().items())  # transformer untouched
    for shadow, parameter in zip(trainer.ema.shadow_params, trainer._parameters()):
        torch.testing.assert_close(shadow, parameter.detach())  # the EMA starts from the pretrained projection
    # train() pretrains only at step 0; the objective needs its weight
    values["recipe"]["audio_mouth_loss_weight"] = 0.0
    with pytest.raises(ValueError, match=r"recipe.audio_mouth_pretrain_steps pretrains the audio projection"):
        config_from_dict(values)

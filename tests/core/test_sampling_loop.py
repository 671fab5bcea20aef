"""Guidance and the long-video loop: pass arithmetic and batching, the memory bank, trimming, seeding,
progress, cancellation and input errors; then the loop on tiny random LetsTalk transformers."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from letstalk_core.model import AudioProjection, LetsTalkTransformer
from letstalk_core.sampling import (
    ClipLatents,
    ClipWindow,
    GuidanceScales,
    SamplingCancelled,
    clip_generator,
    clip_plan,
    guided_model_output,
    iter_video_clips,
    make_sampler,
    training_alphas_cumprod,
)

BATCH, FRAMES, CHANNELS, SIZE, TOKENS, AUDIO_DIM = 1, 4, 4, 8, 3, 8


def _sample_video(model, portrait_latent, **kwargs) -> torch.Tensor:
    """All clips of ``iter_video_clips`` joined: ``[B, num_frames, C, H, W]``."""
    return torch.cat([clip.latents for clip in iter_video_clips(model, portrait_latent, **kwargs)], dim=1)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are tiny; on a shared CPU, intra-op threads only add synchronisation cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class RecordingModel(nn.Module):
    """A small real network with the LetsTalk signature that records what it receives.

    Per pixel: Linear(latents) + Linear(portrait) + Linear(mean audio token) + Linear(mean memory),
    scaled by the timestep, through tanh -> ``[B, F, 2C, H, W]`` (noise, then variance values in [-1, 1])."""

    def __init__(self, channels=CHANNELS, audio_dim=AUDIO_DIM, seed=0, config=None):
        super().__init__()
        self.latent_proj = nn.Linear(channels, 2 * channels)
        self.portrait_proj = nn.Linear(channels, 2 * channels)
        self.audio_proj = nn.Linear(audio_dim, 2 * channels)
        self.memory_proj = nn.Linear(channels, 2 * channels)
        generator = torch.Generator().manual_seed(seed)
        for parameter in self.parameters():
            nn.init.normal_(parameter, std=0.5, generator=generator)
        if config is not None:
            self.config = config
        self.calls = []

    def forward(self, latents, timestep, portrait_latents, audio_tokens, memory_latents=None):
        self.calls.append({
            "latents": latents.clone(), "timestep": timestep.clone(), "portrait": portrait_latents.clone(),
            "audio": audio_tokens.clone(), "memory": None if memory_latents is None else memory_latents.clone(),
        })
        hidden = self.latent_proj(latents.movedim(2, -1))  # [B, F, H, W, 2C]
        hidden = hidden + self.portrait_proj(portrait_latents.movedim(1, -1))[:, None]  # + [B, 1, H, W, 2C]
        hidden = hidden + self.audio_proj(audio_tokens.mean(2))[:, :, None, None]  # + [B, F, 1, 1, 2C]
        if memory_latents is not None:
            hidden = hidden + self.memory_proj(memory_latents.mean(1).movedim(1, -1))[:, None]  # + [B, 1, H, W, 2C]
        hidden = hidden * (0.5 + timestep.float() / 1000)[:, None, None, None, None]
        return torch.tanh(hidden).movedim(-1, 2)  # [B, F, 2C, H, W]


def make_inputs(batch=BATCH, audio_frames=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    portrait = torch.randn(batch, CHANNELS, SIZE, SIZE, generator=generator)  # [B, C, H, W]
    audio = torch.randn(batch, audio_frames, TOKENS, AUDIO_DIM, generator=generator)  # [B, T, M, D]
    null_audio = torch.randn(1, 1, TOKENS, AUDIO_DIM, generator=generator)  # [1, 1, M, D]
    return portrait, audio, null_audio


def run(model, portrait, audio, **kwargs):
    options = dict(audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2, sampler="ddim", steps=3,
                   generator=torch.Generator().manual_seed(0))
    options.update(kwargs)
    return list(iter_video_clips(model, portrait, **options))


# ---------------------------------------------------------------------------------------------------
# guidance


def test_guided_output_is_the_two_scale_formula_over_separate_passes():
    model = RecordingModel()
    portrait, audio, null_audio = make_inputs(batch=2)
    latents = torch.randn(2, FRAMES, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    memory = torch.randn(2, 2, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    tokens = audio[:, :FRAMES]
    timestep = torch.tensor([500, 500])
    audio_scale, portrait_scale = 2.5, 1.5

    guided = guided_model_output(model, latents, timestep, portrait, tokens, memory,
                                 GuidanceScales(audio_scale, portrait_scale), null_audio)
    assert len(model.calls) == 1 and model.calls[0]["latents"].shape[0] == 6  # 3 passes x B=2, one call

    null_tokens = null_audio.expand_as(tokens)
    e_full = model(latents, timestep, portrait, tokens, memory_latents=memory)
    e_portrait = model(latents, timestep, portrait, null_tokens, memory_latents=memory)
    e_none = model(latents, timestep, torch.zeros_like(portrait), null_tokens, memory_latents=memory)
    c = CHANNELS
    expected_noise = (e_none[:, :, :c] + portrait_scale * (e_portrait[:, :, :c] - e_none[:, :, :c])
                      + audio_scale * (e_full[:, :, :c] - e_portrait[:, :, :c]))
    torch.testing.assert_close(guided[:, :, :c], expected_noise, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(guided[:, :, c:], e_full[:, :, c:])  # variance from the full pass
    assert not torch.allclose(guided[:, :, :c], e_full[:, :, :c], atol=1e-3)  # guidance changed something


@pytest.mark.parametrize(
    "audio_scale, portrait_scale, passes",
    [(1.0, 1.0, ["full"]), (2.0, 1.0, ["full", "portrait"]), (3.0, 3.0, ["full", "none"]),
     (0.0, 0.0, ["full", "none"]), (2.0, 1.5, ["full", "portrait", "none"])],
)
def test_only_needed_passes_run_batched_in_one_call_per_step(audio_scale, portrait_scale, passes):
    scales = GuidanceScales(audio_scale, portrait_scale)
    assert list(scales.pass_weights()) == passes
    model = RecordingModel()
    portrait, audio, null_audio = make_inputs()
    clips = run(model, portrait, audio, num_frames=8, audio_scale=audio_scale, portrait_scale=portrait_scale,
                guidance_supported=True, null_audio_tokens=null_audio)
    assert len(clips) == 2
    assert len(model.calls) == 2 * 3  # clips x steps: one model call per step whatever the scales
    for call in model.calls:
        assert call["latents"].shape[0] == len(passes) * BATCH
        for position, name in enumerate(passes):
            portrait_in = call["portrait"][position * BATCH:(position + 1) * BATCH]
            audio_in = call["audio"][position * BATCH:(position + 1) * BATCH]
            expected_portrait = torch.zeros_like(portrait) if name == "none" else portrait
            assert torch.equal(portrait_in, expected_portrait)
            if name == "full":
                assert not torch.equal(audio_in, null_audio.expand_as(audio_in))
            else:
                assert torch.equal(audio_in, null_audio.expand_as(audio_in))
        # the memory and the noisy latents are the same in every pass
        assert all(torch.equal(chunk, call["latents"][:BATCH]) for chunk in call["latents"].split(BATCH))
        assert all(torch.equal(chunk, call["memory"][:BATCH]) for chunk in call["memory"].split(BATCH))


def test_zero_scales_give_the_unconditional_prediction():
    model = RecordingModel()
    portrait, audio, null_audio = make_inputs()
    latents = torch.randn(1, FRAMES, CHANNELS, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    timestep = torch.tensor([250])
    guided = guided_model_output(model, latents, timestep, portrait, audio[:, :FRAMES], None,
                                 GuidanceScales(0.0, 0.0), null_audio)
    e_none = model(latents, timestep, torch.zeros_like(portrait), null_audio.expand(1, FRAMES, -1, -1))
    e_full = model(latents, timestep, portrait, audio[:, :FRAMES])
    torch.testing.assert_close(guided[:, :, :CHANNELS], e_none[:, :, :CHANNELS])
    torch.testing.assert_close(guided[:, :, CHANNELS:], e_full[:, :, CHANNELS:])


@pytest.mark.parametrize("name", ["audio_scale", "portrait_scale"])
@pytest.mark.parametrize("value", [float("nan"), -0.5, float("inf"), "2", True, None])
def test_bad_scales_name_the_input(name, value):
    with pytest.raises(ValueError, match=name):
        GuidanceScales(**{name: value})
    portrait, audio, _ = make_inputs()
    with pytest.raises(ValueError, match=name):
        iter_video_clips(RecordingModel(), portrait, audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2,
                         guidance_supported=True, **{name: value})


def test_guidance_on_a_checkpoint_without_condition_dropout_is_refused():
    portrait, audio, null_audio = make_inputs()
    model = RecordingModel()
    with pytest.raises(ValueError, match="does not support guidance"):
        iter_video_clips(model, portrait, audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2,
                         audio_scale=2.0, null_audio_tokens=null_audio)
    with pytest.raises(ValueError, match="does not support guidance"):
        iter_video_clips(model, portrait, audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2,
                         portrait_scale=1.5, null_audio_tokens=null_audio)
    # scales of 1 need no support and no null audio
    assert len(run(model, portrait, audio, num_frames=4)) == 1


def test_guidance_with_audio_tokens_needs_null_audio_tokens():
    portrait, audio, _ = make_inputs()
    with pytest.raises(ValueError, match="null_audio_tokens"):
        iter_video_clips(RecordingModel(), portrait, audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2,
                         audio_scale=2.0, guidance_supported=True)
    with pytest.raises(ValueError, match="do not broadcast"):
        guided_model_output(RecordingModel(), torch.zeros(1, FRAMES, CHANNELS, SIZE, SIZE), torch.tensor([10]),
                            portrait, audio[:, :FRAMES], None, GuidanceScales(2.0, 1.0), torch.zeros(5, AUDIO_DIM))


def test_null_audio_is_the_projection_of_zero_windows():
    projection = AudioProjection(window_size=5, input_features=2 * 6, num_layers=2, feature_dim=6,
                                 intermediate_dim=16, num_tokens=TOKENS, output_dim=AUDIO_DIM)
    windows = torch.randn(1, 8, 5, 2, 6, generator=torch.Generator().manual_seed(3))  # [B, T, W, L, D]
    portrait, _, _ = make_inputs()
    model = RecordingModel()
    clips = list(iter_video_clips(model, portrait, audio_windows=windows, audio_projection=projection,
                                  frames_per_clip=FRAMES, memory_frames=2, sampler="euler", steps=2,
                                  audio_scale=3.0, guidance_supported=True, generator=torch.Generator().manual_seed(0)))
    assert len(clips) == 2
    with torch.no_grad():
        null_tokens = projection(torch.zeros(1, 1, 5, 2, 6))  # [1, 1, M, D]
        clip_tokens = [projection(windows[:, :FRAMES]), projection(windows[:, FRAMES:])]
    assert null_tokens.abs().max() > 0.1  # the projection of zeros is not zero (LayerNorm bias, Linear biases)
    for number, call in enumerate(model.calls):
        full, audio_null = call["audio"].split(BATCH)  # passes: full, portrait (null audio)
        torch.testing.assert_close(full, clip_tokens[number // 2])
        torch.testing.assert_close(audio_null, null_tokens.expand_as(audio_null))


# ---------------------------------------------------------------------------------------------------
# the memory bank and the clip loop


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler"])
def test_memory_bank_chains_clips_and_output_is_trimmed(sampler):
    model = RecordingModel()
    portrait, audio, _ = make_inputs()
    steps, memory_frames = 3, 2
    clips = run(model, portrait, audio, num_frames=10, sampler=sampler, steps=steps)

    assert [clip.index for clip in clips] == [0, 1, 2]
    assert [clip.start_frame for clip in clips] == [0, 4, 8]
    assert [clip.latents.shape[1] for clip in clips] == [4, 4, 2]  # 10 frames: the last clip trimmed
    assert all(isinstance(clip, ClipLatents) and torch.isfinite(clip.latents).all() for clip in clips)
    assert len(model.calls) == 3 * steps
    plan_timesteps = [timestep for _, timestep in make_sampler(sampler, steps).begin()]
    for number, call in enumerate(model.calls):
        clip, step = divmod(number, steps)
        assert call["timestep"].tolist() == [plan_timesteps[step]] * BATCH
        assert torch.equal(call["audio"], audio[:, 4 * clip:4 * clip + 4])
        assert torch.equal(call["portrait"], portrait)
        if clip == 0:
            expected_memory = portrait[:, None].repeat(1, memory_frames, 1, 1, 1)  # [B, K, C, H, W]
        else:
            expected_memory = clips[clip - 1].latents[:, -memory_frames:]
        assert torch.equal(call["memory"], expected_memory)
    # the denoised clips differ from the portrait memory (the chain really passes produced latents)
    assert not torch.equal(model.calls[steps]["memory"], model.calls[0]["memory"])

    model.calls.clear()
    video = _sample_video(model, portrait, audio_tokens=audio, num_frames=10, frames_per_clip=FRAMES,
                         memory_frames=memory_frames, sampler=sampler, steps=steps,
                         generator=torch.Generator().manual_seed(0))
    assert video.shape == (BATCH, 10, CHANNELS, SIZE, SIZE)
    assert torch.equal(video, torch.cat([clip.latents for clip in clips], dim=1))


def test_model_without_memory_frames_gets_none():
    model = RecordingModel()
    portrait, audio, _ = make_inputs()
    clips = run(model, portrait, audio, memory_frames=0, num_frames=9)
    assert [clip.latents.shape[1] for clip in clips] == [4, 4, 1]
    assert len(model.calls) == 9 and all(call["memory"] is None for call in model.calls)


def test_clip_settings_default_to_the_model_config():
    model = RecordingModel(config=SimpleNamespace(frames_per_clip=3, memory_frames=1))
    portrait, audio, _ = make_inputs(audio_frames=9)
    clips = list(iter_video_clips(model, portrait, audio_tokens=audio, sampler="ddim", steps=2))
    assert [clip.latents.shape[1] for clip in clips] == [3, 3, 3]
    assert model.calls[0]["memory"].shape[1] == 1
    with pytest.raises(ValueError, match="frames_per_clip was not given and the model has no config.frames_per_clip"):
        iter_video_clips(RecordingModel(), portrait, audio_tokens=audio, memory_frames=1)


def test_same_seed_same_latents_and_clip_noise_independent_of_later_clips():
    portrait, audio, _ = make_inputs()

    def video(seed, num_frames=12, sampler="ddpm"):
        return run(RecordingModel(), portrait, audio, num_frames=num_frames, sampler=sampler,
                   generator=torch.Generator().manual_seed(seed))

    first, again, other = video(5), video(5), video(6)
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(first, again))
    assert all(not torch.allclose(a.latents, b.latents) for a, b in zip(first, other))
    # clips 0 and 1 of a 2-clip video are those of the 3-clip video with the same seed
    shorter = video(5, num_frames=8)
    assert len(shorter) == 2 and all(torch.equal(a.latents, b.latents) for a, b in zip(shorter, first))
    # consuming only the first clip gives the same clip
    lazily = iter_video_clips(RecordingModel(), portrait, audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2,
                              sampler="ddpm", steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(next(lazily).latents, first[0].latents)
    # every clip starts from its own noise: the model's input at each clip's first step
    model = RecordingModel()
    run(model, portrait, audio, num_frames=12, sampler="ddim", generator=torch.Generator().manual_seed(5))
    starts = [model.calls[clip * 3]["latents"] for clip in range(3)]  # ddim: init_noise_sigma 1
    assert all(not torch.allclose(a, b) for i, a in enumerate(starts) for b in starts[i + 1:])
    assert all(abs(start.std().item() - 1) < 0.15 for start in starts)


def test_clip_generators_are_reproducible_and_distinct():
    draws = {(seed, clip): torch.randn(64, generator=clip_generator(seed, clip)) for seed in (0, 1) for clip in range(3)}
    assert torch.equal(draws[0, 2], torch.randn(64, generator=clip_generator(0, 2)))
    values = list(draws.values())
    assert all(not torch.allclose(a, b) for i, a in enumerate(values) for b in values[i + 1:])


def test_progress_and_cancellation():
    portrait, audio, _ = make_inputs()
    reports = []
    run(RecordingModel(), portrait, audio, num_frames=12, progress=lambda done, total: reports.append((done, total)))
    assert reports == [(done, 9) for done in range(1, 10)]  # 3 clips x 3 steps

    model = RecordingModel()
    asked = []

    def should_stop():
        asked.append(True)
        return len(asked) > 5

    received = []
    with pytest.raises(SamplingCancelled, match="before step 3/3 of clip 2/3"):
        for clip in iter_video_clips(model, portrait, audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2,
                                     sampler="ddim", steps=3, should_stop=should_stop):
            received.append(clip)
    assert len(model.calls) == 5 and len(asked) == 6  # checked before every step
    assert len(received) == 1  # the finished first clip was delivered before the stop


def test_batch_of_two_portraits():
    model = RecordingModel()
    portrait, audio, null_audio = make_inputs(batch=2)
    video = _sample_video(model, portrait, audio_tokens=audio, num_frames=6, frames_per_clip=FRAMES, memory_frames=2,
                         sampler="dpmpp_2m", steps=3, audio_scale=1.5, guidance_supported=True,
                         null_audio_tokens=null_audio, generator=torch.Generator().manual_seed(0))
    assert video.shape == (2, 6, CHANNELS, SIZE, SIZE)
    assert not torch.allclose(video[0], video[1])
    assert all(call["latents"].shape[0] == 4 for call in model.calls)  # 2 passes x B=2


def test_loop_input_errors_name_the_input():
    portrait, audio, _ = make_inputs()
    model = RecordingModel()
    base = dict(audio_tokens=audio, frames_per_clip=FRAMES, memory_frames=2)

    def refused(match, **changes):
        options = {**base, **changes}
        with pytest.raises(ValueError, match=match):
            iter_video_clips(model, options.pop("portrait", portrait), **options)

    refused(r"steps must be an integer from 1 to 1000, got 0", steps=0)
    refused(r"steps must be an integer", steps=2.5)
    refused(r"sampler 'heun' is not known; accepted: ddpm, ddim, dpmpp_2m, euler", sampler="heun")
    refused(r"the audio covers 12 frames, but 13 frames in clips of 4 need 16", num_frames=13)
    refused(r"num_frames must be an integer >= 1", num_frames=0)
    refused(r"memory_frames \(5\) cannot exceed frames_per_clip \(4\)", memory_frames=5)
    refused(r"frames_per_clip must be an integer >= 1", frames_per_clip=0)
    refused(r"memory_frames must be an integer >= 0", memory_frames=-1)
    refused(r"portrait_latent must be a \[B, C, H, W\] tensor", portrait=portrait[0])
    refused(r"batch size 1 but portrait_latent has 2", portrait=portrait.repeat(2, 1, 1, 1))
    refused(r"exactly one of audio_tokens", audio_windows=torch.zeros(1, 12, 5, 2, 6))
    refused(r"exactly one of audio_tokens", audio_tokens=None)
    refused(r"audio_windows need audio_projection", audio_tokens=None, audio_windows=torch.zeros(1, 12, 5, 2, 6))
    refused(r"audio_tokens must be a \[B, T, M, D\] tensor", audio_tokens=audio[0])
    refused(r"progress must be callable", progress=3)
    refused(r"generator must be a torch.Generator", generator=7)
    with pytest.raises(ValueError, match=r"the model must return \[B, F, 2C, H, W\]"):
        run(lambda *args, **kwargs: torch.zeros(1, FRAMES, CHANNELS, SIZE, SIZE), portrait, audio, num_frames=4)


# ---------------------------------------------------------------------------------------------------
# tiny random LetsTalk transformers


class RecordingWrapper(nn.Module):
    """Passes every call to a real transformer and keeps the memory latents it was given."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer
        self.config = transformer.config
        self.memories = []

    def forward(self, latents, timestep, portrait_latents, audio_tokens, memory_latents=None):
        self.memories.append(None if memory_latents is None else memory_latents.clone())
        return self.transformer(latents, timestep, portrait_latents, audio_tokens, memory_latents=memory_latents)


def tiny_transformer(variant, memory_frames):
    torch.manual_seed(0)
    model = LetsTalkTransformer(
        variant=variant, in_channels=4, patch_size=1 if variant == "lite" else 2, hidden_size=64, depth=2,
        num_heads=2 if variant == "lite" else 4, audio_dim=32, sample_size=8, frames_per_clip=4,
        memory_frames=memory_frames,
    ).eval()
    # the official init zeroes the output layer; give it weights so the predictions are not all zero
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.abs().max() == 0:
                parameter.normal_(std=0.02)
    return model


def tiny_projection():
    torch.manual_seed(1)
    return AudioProjection(window_size=5, input_features=3 * 16, num_layers=3, feature_dim=16,
                           intermediate_dim=32, num_tokens=4, output_dim=32).eval()


@pytest.mark.parametrize("variant, memory_frames", [("vdt_long", 2), ("vdt", 0), ("lite", 2)])
def test_loop_with_a_tiny_real_transformer(variant, memory_frames):
    model = RecordingWrapper(tiny_transformer(variant, memory_frames))
    projection = tiny_projection()
    windows = torch.randn(1, 12, 5, 3, 16, generator=torch.Generator().manual_seed(2))  # [B, T, W, L, D]
    portrait = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))  # [B, C, H, W]

    def clips(seed):
        return list(iter_video_clips(model, portrait, audio_windows=windows, audio_projection=projection,
                                     num_frames=10, sampler="ddpm", steps=3,
                                     generator=torch.Generator().manual_seed(seed)))

    model.memories.clear()
    first = clips(0)
    assert [clip.latents.shape for clip in first] == [(1, 4, 4, 8, 8)] * 2 + [(1, 2, 4, 8, 8)]
    assert all(torch.isfinite(clip.latents).all() for clip in first)
    assert len(model.memories) == 9
    if memory_frames:
        assert all(torch.equal(memory, portrait[:, None].repeat(1, 2, 1, 1, 1)) for memory in model.memories[:3])
        assert all(torch.equal(memory, first[0].latents[:, -2:]) for memory in model.memories[3:6])
        assert all(torch.equal(memory, first[1].latents[:, -2:]) for memory in model.memories[6:])
    else:
        assert all(memory is None for memory in model.memories)
    again, other = clips(0), clips(1)
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(first, again))
    assert not torch.allclose(first[0].latents, other[0].latents)


def test_batched_guidance_passes_equal_separate_calls_of_a_real_transformer():
    model = tiny_transformer("vdt_long", 2)
    projection = tiny_projection()
    with torch.no_grad():
        tokens = projection(torch.randn(1, 4, 5, 3, 16, generator=torch.Generator().manual_seed(4)))  # [1, F, M, D]
        null_tokens = projection(torch.zeros(1, 1, 5, 3, 16))  # [1, 1, M, D]
        latents = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        portrait = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
        memory = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(7))
        timestep = torch.tensor([600])
        guided = guided_model_output(model, latents, timestep, portrait, tokens, memory,
                                     GuidanceScales(audio_scale=2.0, portrait_scale=1.5), null_tokens)
        null = null_tokens.expand_as(tokens)
        e_full = model(latents, timestep, portrait, tokens, memory_latents=memory)
        e_portrait = model(latents, timestep, portrait, null, memory_latents=memory)
        e_none = model(latents, timestep, torch.zeros_like(portrait), null, memory_latents=memory)
    assert (e_full - e_none).abs().max() > 1e-3 and (e_full - e_portrait).abs().max() > 1e-3  # conditions matter
    expected = e_none[:, :, :4] + 1.5 * (e_portrait[:, :, :4] - e_none[:, :, :4]) + 2.0 * (e_full[:, :, :4] - e_portrait[:, :, :4])
    torch.testing.assert_close(guided[:, :, :4], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(guided[:, :, 4:], e_full[:, :, 4:], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler"])
def test_same_seed_gives_the_same_latents_on_cuda_as_on_cpu(sampler):
    portrait, audio, null_audio = make_inputs()
    videos = []
    for device in ("cpu", "cuda"):
        model = RecordingModel().to(device)
        videos.append(_sample_video(model, portrait.to(device), audio_tokens=audio, num_frames=10, frames_per_clip=FRAMES,
                                   memory_frames=2, sampler=sampler, steps=4, audio_scale=1.5, guidance_supported=True,
                                   null_audio_tokens=null_audio, generator=torch.Generator().manual_seed(3)))
    assert videos[1].device.type == "cuda"
    torch.testing.assert_close(videos[1].cpu(), videos[0], rtol=1e-4, atol=1e-4)


class GaussianDataModel(nn.Module):
    """The exact noise predictor for latents whose elements are i.i.d. N(mean, std^2), ignoring the
    conditions; records the latents it receives."""

    def __init__(self, mean=0.7, std=0.4):
        super().__init__()
        self.mean, self.std = mean, std
        self.register_buffer("alphas_cumprod", torch.from_numpy(training_alphas_cumprod()).float())
        self.inputs = []

    def forward(self, latents, timestep, portrait_latents, audio_tokens, memory_latents=None):
        self.inputs.append(latents.clone())
        a = self.alphas_cumprod[timestep][:, None, None, None, None]  # [B, 1, 1, 1, 1]
        noise = (1 - a).sqrt() * (latents - a.sqrt() * self.mean) / (a * self.std**2 + 1 - a)
        return torch.cat([noise, torch.zeros_like(noise)], dim=2)  # [B, F, 2C, H, W]


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "ddim"])
def test_loop_reaches_the_exact_answer_on_gaussian_data(sampler):
    """Through the whole loop (starting noise scale, model input scaling, steps), each clip ends at the
    exact probability-flow answer for its own starting noise."""
    model = GaussianDataModel()
    portrait, audio, _ = make_inputs()
    clips = run(model, portrait, audio, num_frames=8, sampler=sampler, steps=250, timestep_spacing="even")
    a_first = float(training_alphas_cumprod()[999])
    for clip in clips:
        start = model.inputs[clip.index * 250]  # what the model saw first: the VP-scaled starting noise
        exact = model.mean + model.std * (start - a_first**0.5 * model.mean) / (a_first * model.std**2 + 1 - a_first) ** 0.5
        tolerance = 0.01 if sampler == "dpmpp_2m" else 0.03
        assert (clip.latents - exact).abs().max().item() < tolerance
        assert abs(start.std().item() - 1) < 0.15  # unit noise in the model's parametrisation


# ---------------------------------------------------------------------------------------------------
# overlapping clips


@pytest.mark.parametrize("frames_per_clip", [2, 4, 8])
def test_clip_plan_makes_every_frame_once_inside_the_padded_length(frames_per_clip):
    for overlap in range(frames_per_clip):
        for num_frames in range(1, 5 * frames_per_clip + 2):
            plan = clip_plan(num_frames, frames_per_clip, overlap)
            padded = -(-num_frames // frames_per_clip) * frames_per_clip
            made = [frame for window in plan for frame in range(window.new_start, window.new_end)]
            assert made == list(range(num_frames)), (num_frames, overlap)
            assert plan[0] == ClipWindow(0, 0, 0, min(frames_per_clip, num_frames))
            for before, window in zip(plan, plan[1:]):
                assert window.window_start + frames_per_clip <= padded  # the audio covers every window
                assert window.new_start == before.window_start + frames_per_clip  # new frames follow on
                assert window.overlap >= overlap  # the last window may overlap more, never less
                assert window.window_start >= before.window_start  # its held frames come from the clip before
            if overlap == 0:  # the authors' layout
                assert [w.window_start for w in plan] == list(range(0, num_frames, frames_per_clip))
    assert [(w.window_start, w.new_start, w.new_end) for w in clip_plan(10, 4, 2)] == [
        (0, 0, 4), (2, 4, 6), (4, 6, 8), (6, 8, 10)]
    assert [(w.window_start, w.new_start, w.new_end) for w in clip_plan(7, 4, 1)] == [(0, 0, 4), (3, 4, 7)]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m", "euler"])
def test_overlapping_clips_hold_the_frames_before_and_remember_what_came_before_them(sampler):
    model = RecordingModel()
    portrait, audio, _ = make_inputs()
    steps, memory_frames, overlap = 3, 2, 2
    clips = run(model, portrait, audio, num_frames=10, sampler=sampler, steps=steps, overlap_frames=overlap)
    assert [clip.start_frame for clip in clips] == [0, 4, 6, 8]
    assert [clip.latents.shape[1] for clip in clips] == [4, 2, 2, 2]
    video = torch.cat([clip.latents for clip in clips], dim=1)  # [B, 10, C, H, W]
    assert video.shape == (BATCH, 10, CHANNELS, SIZE, SIZE) and torch.isfinite(video).all()
    assert len(model.calls) == 4 * steps
    alphas = training_alphas_cumprod()
    for clip, window in enumerate(clip_plan(10, FRAMES, overlap)):
        calls = model.calls[clip * steps:(clip + 1) * steps]
        start = window.window_start
        for call in calls:
            assert torch.equal(call["audio"], audio[:, start:start + FRAMES])  # the window's own speech
            before = [portrait if i < 0 else video[:, i] for i in range(start - memory_frames, start)]
            assert torch.equal(call["memory"], torch.stack(before, dim=1))  # the latents just before the window
        if clip == 0:
            continue
        # every step sees the held frames as the previous clip's latents diffused to that step's level,
        # always with the same noise: the model input is sqrt(a) x0 + sqrt(1 - a) noise for every sampler
        # (at t = 0, sqrt(1 - a) = 0.01 magnifies float32 rounding, so there only the distance is checked)
        held = video[:, start:window.new_start]  # [B, V, C, H, W]
        noises = []
        for call in calls:
            t = int(call["timestep"][0])
            a = float(alphas[t])
            if t == 0:
                assert (call["latents"][:, :overlap] - held).abs().max() < 0.05
                continue
            noises.append((call["latents"][:, :overlap] - a**0.5 * held) / (1 - a) ** 0.5)
        assert len(noises) >= 2 and noises[0].std() > 0.5
        for noise in noises[1:]:
            torch.testing.assert_close(noise, noises[0], rtol=1e-3, atol=1e-3)
    # without overlap the same seed gives other frames after the first clip, and the same first clip
    plain = run(RecordingModel(), portrait, audio, num_frames=10, sampler=sampler, steps=steps)
    assert torch.equal(plain[0].latents, clips[0].latents)
    assert not torch.allclose(torch.cat([c.latents for c in plain], 1)[:, 4:6], video[:, 4:6])


def test_overlap_longer_than_the_memory_takes_memory_from_older_clips():
    model = RecordingModel()
    portrait, audio, _ = make_inputs()
    clips = run(model, portrait, audio, num_frames=7, steps=2, memory_frames=2, overlap_frames=3)
    video = torch.cat([clip.latents for clip in clips], dim=1)
    plan = clip_plan(7, FRAMES, 3)
    assert [w.window_start for w in plan] == [0, 1, 2, 3] and video.shape[1] == 7
    # window 1 starts at frame 1: its memory is the portrait (frame -1) and frame 0
    torch.testing.assert_close(model.calls[2]["memory"], torch.stack([portrait, video[:, 0]], dim=1))
    torch.testing.assert_close(model.calls[6]["memory"], video[:, 1:3])


@pytest.mark.parametrize("bad", [-1, FRAMES, 1.5, True, "2"])
def test_overlap_frames_outside_the_clip_is_refused_before_any_step(bad):
    model = RecordingModel()
    portrait, audio, _ = make_inputs()
    with pytest.raises(ValueError, match=r"overlap_frames must be an integer from 0 to frames_per_clip - 1 = 3"):
        run(model, portrait, audio, overlap_frames=bad)
    assert model.calls == []
    with pytest.raises(ValueError, match="overlap_frames"):
        clip_plan(10, FRAMES, bad)

"""Training configuration: one YAML file, read into dataclasses with every key checked.

Sections (all optional except where a preset leaves a value to fill in)::

    name: demo                    # run name, used in messages and the checkpoint metadata
    seed: 0
    output_dir: runs/demo         # checkpoints, the resumable state, the trained VAE
    stages: [vae, transformer]    # "vae" trains the demo VAE first; "transformer" the diffusion model
    data:    {source, path, resolution, fps, use_cached_latents, cache_clip_latents, cache_videos, synthetic: {...}}
    model:   {variant, size | hidden_size/depth/num_heads, patch_size, in_channels, frames_per_clip, memory_frames}
    audio:   {encoder, n_mels, window_radius, intermediate_dim, num_tokens, output_dim}
    vae:     {path, config, steps, batch_size, learning_rate, kl_weight, save_every}
    training: {max_steps, batch_size, gradient_accumulation_steps, mixed_precision, gradient_checkpointing, fsdp,
               learning_rate, lr_decay_steps, audio_projection_learning_rate, zero_init_audio_attention, weight_decay,
               adam_betas, ema_decay, grad_clip, grad_clip_after, save_every, log_every, init_from}
    recipe:  {portrait_noise_log_mean, portrait_noise_log_std, memory_max_timestep, memory_mask_fraction,
              memory_drop, mouth_loss_weight, audio_mouth_loss_weight, audio_mouth_pretrain_steps, snr_gamma,
              snr_floor, max_loss_weight,
              dropout: {audio, portrait, both}}

Relative paths in the file are taken relative to the file's own folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checks import check_int
from ..model import OFFICIAL_SIZES, VARIANTS, audio_projection_config, transformer_config

PRESET_DIR = Path(__file__).resolve().parent / "presets"
STAGES = ("vae", "transformer")
DATA_SOURCES = ("prepared", "synthetic")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class SyntheticConfig:
    num_videos: int = 64  # identities rendered (on the fly) when no folder is given
    seconds: float = 4.0
    seed: int = 0


@dataclass
class DataConfig:
    source: str = "synthetic"  # "prepared" (shards from `prepare`) or "synthetic"
    path: str | None = None  # prepared: the `prepare --out` folder; synthetic: a generated folder or None
    resolution: int = 64
    fps: int = 25
    # prepared only: train on the latents cached by `prepare --vae` (faster; the reference and memory frames then
    # get no pixel noise, only the latent-space memory corruption)
    use_cached_latents: bool = False
    cache_clip_latents: bool = False  # encode each video's clean frames once and keep the latents in memory
    cache_videos: int = 64  # decoded/rendered videos kept in memory (mind their size: frames are uint8)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class ModelConfig:
    variant: str = "vdt_long"
    size: str | None = None  # S, B, L, XL; None: hidden_size/depth/num_heads below
    hidden_size: int = 192
    depth: int = 6
    num_heads: int = 6
    patch_size: int = 1
    in_channels: int = 4
    frames_per_clip: int = 8
    memory_frames: int = 2


@dataclass
class AudioConfig:
    encoder: str = "mel"  # "mel", "phones", "phones+mel" or a wav2vec2/whisper folder or file
    n_mels: int = 80
    window_radius: int = 2  # windows of 2r+1 frames (official 5)
    intermediate_dim: int = 512
    num_tokens: int = 32
    output_dim: int = 768


@dataclass
class VaeConfig:
    path: str | None = None  # a VAE to use; None with the "vae" stage: the one that stage trains
    config: str = "demo_vae"  # shipped diffusers config trained by the "vae" stage
    steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-4
    kl_weight: float = 1e-6
    save_every: int = 500


@dataclass
class TrainingConfig:
    max_steps: int = 300_000
    batch_size: int = 1  # the global batch: clips per step over all processes
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    # Shard the transformer's weights, gradients and AdamW state over the processes (torch's FSDP2
    # fully_shard, one unit per block) instead of a whole copy on each (DDP). No effect on one process.
    fsdp: bool = False
    learning_rate: float = 1e-4
    # Beyond the authors' constant rate: every rate falls linearly to 0 over the last this-many optimiser
    # steps before max_steps (a warmup-free "warmup-stable-decay" schedule). 0: constant, as the authors.
    lr_decay_steps: int = 0
    # The audio projection's own rate; null: learning_rate. 0 keeps it at its random initialisation.
    audio_projection_learning_rate: float | None = None
    # Zero the audio cross-attention output projections at the start (see initialize_weights).
    zero_init_audio_attention: bool = False
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    ema_decay: float = 0.9999
    grad_clip: float | None = 0.1
    grad_clip_after: int = 20_000  # optimiser steps before clipping starts
    save_every: int = 5000
    log_every: int = 50
    # Start the transformer and audio projection from this checkpoint's weights (either format; the shapes
    # must be the model section's) instead of the initialisation: fine-tuning. Ignored by --resume, whose
    # state holds the weights. null: from scratch.
    init_from: str | None = None


@dataclass
class DropoutConfig:
    audio: float = 0.05  # audio only dropped
    portrait: float = 0.05  # portrait only dropped
    both: float = 0.05  # both dropped


@dataclass
class RecipeConfig:
    portrait_noise_log_mean: float = -3.0  # pixel noise sigma = exp(N(mean, std))
    portrait_noise_log_std: float = 0.5
    memory_max_timestep: int = 50  # memory latents diffused to t in [0, this)
    memory_mask_fraction: float = 0.25  # spatial positions of the memory latents zeroed
    # Beyond the authors' recipe: the fraction of samples whose whole memory is zeroed, so that the
    # portrait is their only source of identity. 0: the authors' recipe.
    memory_drop: float = 0.0
    # Beyond the authors' recipe: the epsilon error of latents over the mouth counts 1 + this many times
    # (videos that know their mouth box: the synthetic world's). 0: the authors' uniform loss.
    mouth_loss_weight: float = 0.0
    # Beyond the authors' recipe: the audio tokens are asked to predict the mouth's motion in the clean latents
    # (training/listening.py), weighted by this against the diffusion loss; needs a trained audio projection
    # (training.audio_projection_learning_rate not 0) and clips with a mouth box. 0: off.
    audio_mouth_loss_weight: float = 0.0
    # With it: before the first diffusion step, this many steps train the audio projection (and the head) on that
    # objective alone (a few seconds per hundred: no transformer pass), so the transformer meets tokens that
    # already carry the mouth's motion. 0: the objective only trains alongside the diffusion loss.
    audio_mouth_pretrain_steps: int = 0
    # Beyond the authors' recipe: Min-SNR-gamma weighting (Hang et al. 2023) of the epsilon error,
    # min(SNR, gamma) / SNR per sample, so that the nearly clean timesteps, whose epsilon error is large
    # and says little, stop dominating the loss. 0: the authors' unweighted loss.
    snr_gamma: float = 0.0
    # Beyond the authors' recipe: at high noise the epsilon error hardly measures the x0 error (it is
    # the x0 error times SNR_t); with snr_floor > 0 a sample's weight is at least snr_floor / SNR_t (x0
    # error counted at least snr_floor times), capped at max_loss_weight. 0: off.
    snr_floor: float = 0.0
    max_loss_weight: float = 1000.0
    dropout: DropoutConfig = field(default_factory=DropoutConfig)


@dataclass
class TrainConfig:
    name: str = "letstalk"
    seed: int = 0
    output_dir: str = "runs/letstalk"
    stages: list[str] = field(default_factory=lambda: ["transformer"])
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

    # ---- derived ---------------------------------------------------------------------------------
    def transformer_kwargs(self, audio_dim: int | None = None, downscale_factor: int | None = None) -> dict:
        """Constructor arguments of the ``LetsTalkTransformer`` to train (``downscale_factor``: the VAE's,
        when known; else it follows from ``vae.config``)."""
        m = self.model
        kwargs = transformer_config(m.variant, m.size or "S", patch_size=m.patch_size, in_channels=m.in_channels,
                                    sample_size=latent_size_for(self, downscale_factor),
                                    frames_per_clip=m.frames_per_clip,
                                    memory_frames=m.memory_frames, audio_dim=audio_dim or self.audio.output_dim)
        if m.size is None:
            kwargs.update(hidden_size=m.hidden_size, depth=m.depth, num_heads=m.num_heads)
        return kwargs

    def audio_projection_kwargs(self, num_layers: int, feature_dim: int) -> dict:
        a = self.audio
        return audio_projection_config(num_layers=num_layers, feature_dim=feature_dim,
                                       window_size=2 * a.window_radius + 1, intermediate_dim=a.intermediate_dim,
                                       num_tokens=a.num_tokens, output_dim=a.output_dim)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def latent_size_for(config: TrainConfig, downscale_factor: int | None = None) -> int:
    """Latent side for the configured pixel resolution: ``downscale_factor`` when given (the loaded VAE's),
    else that of the shipped VAE config ``vae.config`` names, else 8 (SD-style VAEs)."""
    if downscale_factor is None:
        from ..latents import config_downscale_factor, load_shipped_config

        try:
            downscale_factor = config_downscale_factor(load_shipped_config(config.vae.config))
        except (ValueError, TypeError):
            downscale_factor = 8
    return config.data.resolution // downscale_factor


# ---- reading and checking ------------------------------------------------------------------------
def _build(cls, values: Any, where: str):
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"config section {where!r} must be a mapping, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"config section {where!r} has unknown key(s) {unknown}; accepted: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}" if where else name)
        elif name == "adam_betas":
            if not (isinstance(value, (list, tuple)) and len(value) == 2):
                raise ValueError(f"{where}.adam_betas must be a list of two numbers, got {value!r}")
            kwargs[name] = (float(value[0]), float(value[1]))
        else:
            kwargs[name] = value
    return cls(**kwargs)


def _rate(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def validate(config: TrainConfig) -> TrainConfig:
    """Refuse impossible values with a message naming the key; returns the config."""
    for stage in config.stages:
        if stage not in STAGES:
            raise ValueError(f"stages: unknown stage {stage!r}; accepted: {list(STAGES)}")
    if not config.stages:
        raise ValueError(f"stages must name at least one of {list(STAGES)}")
    check_int("seed", config.seed, 0)
    d = config.data
    if d.source not in DATA_SOURCES:
        raise ValueError(f"data.source must be one of {list(DATA_SOURCES)}, got {d.source!r}")
    if d.source == "prepared" and not d.path:
        raise ValueError("data.source 'prepared' needs data.path (the folder written by `python -m letstalk_core prepare`)")
    if d.use_cached_latents and d.source != "prepared":
        raise ValueError("data.use_cached_latents works only with data.source 'prepared'")
    if d.use_cached_latents and "vae" in config.stages:
        raise ValueError("data.use_cached_latents cannot be combined with the 'vae' stage (the cached latents "
                         "come from a fixed VAE)")
    check_int("data.resolution", d.resolution, 8)
    if d.resolution % 8:
        raise ValueError(f"data.resolution must be a multiple of 8 (the VAE downscale), got {d.resolution}")
    check_int("data.fps", d.fps, 1)
    check_int("data.synthetic.num_videos", d.synthetic.num_videos, 1)
    check_int("data.cache_videos", d.cache_videos, 1)
    m = config.model
    if m.variant not in VARIANTS:
        raise ValueError(f"model.variant must be one of {list(VARIANTS)}, got {m.variant!r}")
    if m.size is not None and m.size not in OFFICIAL_SIZES:
        raise ValueError(f"model.size must be one of {list(OFFICIAL_SIZES)} or null, got {m.size!r}")
    for name in ("hidden_size", "depth", "num_heads", "patch_size", "in_channels", "frames_per_clip"):
        check_int(f"model.{name}", getattr(m, name), 1)
    check_int("model.memory_frames", m.memory_frames, 0)
    if m.variant == "vdt" and m.memory_frames:
        raise ValueError("model.memory_frames must be 0 for the 'vdt' variant")
    if latent_size_for(config) % m.patch_size:
        raise ValueError(f"data.resolution {d.resolution} gives {latent_size_for(config)}x{latent_size_for(config)} "
                         f"latents, not divisible by model.patch_size {m.patch_size}")
    a = config.audio
    if not isinstance(a.encoder, str) or not a.encoder:
        raise ValueError(f"audio.encoder must be 'mel', 'phones', 'phones+mel' or a path, got {a.encoder!r}")
    for name in ("n_mels", "intermediate_dim", "num_tokens", "output_dim"):
        check_int(f"audio.{name}", getattr(a, name), 1)
    check_int("audio.window_radius", a.window_radius, 0)
    v = config.vae
    for name in ("steps", "batch_size", "save_every"):
        check_int(f"vae.{name}", getattr(v, name), 1)
    if "vae" not in config.stages and v.path is None and not d.use_cached_latents:
        raise ValueError("vae.path is needed (the VAE whose latents the transformer learns), unless the 'vae' "
                         "stage trains one or data.use_cached_latents is set")
    t = config.training
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "save_every", "log_every"):
        check_int(f"training.{name}", getattr(t, name), 1)
    check_int("training.grad_clip_after", t.grad_clip_after, 0)
    check_int("training.lr_decay_steps", t.lr_decay_steps, 0)
    if t.lr_decay_steps > t.max_steps:
        raise ValueError(f"training.lr_decay_steps ({t.lr_decay_steps}) must be at most training.max_steps "
                         f"({t.max_steps}): the decay runs over the last steps of the run")
    if t.init_from is not None and (not isinstance(t.init_from, str) or not t.init_from):
        raise ValueError(f"training.init_from must be a checkpoint path or null, got {t.init_from!r}")
    if t.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"training.mixed_precision must be one of {list(MIXED_PRECISION)}, got {t.mixed_precision!r}")
    if not (isinstance(t.learning_rate, (int, float)) and t.learning_rate > 0):
        raise ValueError(f"training.learning_rate must be a positive number, got {t.learning_rate!r}")
    rate = t.audio_projection_learning_rate
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate >= 0):
        raise ValueError(f"training.audio_projection_learning_rate must be a number >= 0 or null (the same as "
                         f"training.learning_rate), got {rate!r}")
    if not isinstance(t.fsdp, bool):
        raise ValueError(f"training.fsdp must be true or false, got {t.fsdp!r}")
    if t.fsdp and t.mixed_precision == "fp16":
        raise ValueError("training.fsdp does not work with mixed_precision fp16 (its loss scaler does not unscale "
                         "sharded gradients); use bf16 or no")
    if not isinstance(t.zero_init_audio_attention, bool):
        raise ValueError(f"training.zero_init_audio_attention must be true or false, got {t.zero_init_audio_attention!r}")
    if not (isinstance(t.weight_decay, (int, float)) and t.weight_decay >= 0):
        raise ValueError(f"training.weight_decay must be >= 0, got {t.weight_decay!r}")
    _rate(t.ema_decay, "training.ema_decay")
    if t.grad_clip is not None and not (isinstance(t.grad_clip, (int, float)) and t.grad_clip > 0):
        raise ValueError(f"training.grad_clip must be a positive number or null, got {t.grad_clip!r}")
    r = config.recipe
    check_int("recipe.memory_max_timestep", r.memory_max_timestep, 1)
    if r.memory_max_timestep > 1000:
        raise ValueError(f"recipe.memory_max_timestep must be at most 1000, got {r.memory_max_timestep}")
    _rate(r.memory_mask_fraction, "recipe.memory_mask_fraction")
    _rate(r.memory_drop, "recipe.memory_drop")
    if not (isinstance(r.portrait_noise_log_std, (int, float)) and r.portrait_noise_log_std >= 0):
        raise ValueError(f"recipe.portrait_noise_log_std must be >= 0, got {r.portrait_noise_log_std!r}")
    if not (isinstance(r.mouth_loss_weight, (int, float)) and not isinstance(r.mouth_loss_weight, bool)
            and 0 <= r.mouth_loss_weight <= 1000):
        raise ValueError(f"recipe.mouth_loss_weight must be a number in 0..1000, got {r.mouth_loss_weight!r}")
    if not (isinstance(r.audio_mouth_loss_weight, (int, float)) and not isinstance(r.audio_mouth_loss_weight, bool)
            and 0 <= r.audio_mouth_loss_weight <= 1000):
        raise ValueError(f"recipe.audio_mouth_loss_weight must be a number in 0..1000 (0 turns it off), got "
                         f"{r.audio_mouth_loss_weight!r}")
    if r.audio_mouth_loss_weight and t.audio_projection_learning_rate == 0:
        raise ValueError("recipe.audio_mouth_loss_weight trains the audio projection to carry the mouth's motion, but "
                         "training.audio_projection_learning_rate is 0 (the projection frozen); set a rate (or null: "
                         "the model's) or set recipe.audio_mouth_loss_weight to 0")
    check_int("recipe.audio_mouth_pretrain_steps", r.audio_mouth_pretrain_steps, 0)
    if r.audio_mouth_pretrain_steps and not r.audio_mouth_loss_weight:
        raise ValueError("recipe.audio_mouth_pretrain_steps pretrains the audio projection on the objective of "
                         "recipe.audio_mouth_loss_weight, which is 0; set that weight too, or the steps to 0")
    if r.audio_mouth_loss_weight and t.fsdp:
        raise ValueError("recipe.audio_mouth_loss_weight is not supported with training.fsdp (its head is not "
                         "sharded); train unsharded or set it to 0")
    if not (isinstance(r.snr_gamma, (int, float)) and not isinstance(r.snr_gamma, bool)
            and math.isfinite(r.snr_gamma) and r.snr_gamma >= 0):
        raise ValueError(f"recipe.snr_gamma must be a number >= 0 (0 turns the weighting off), got {r.snr_gamma!r}")
    if not (isinstance(r.snr_floor, (int, float)) and not isinstance(r.snr_floor, bool)
            and math.isfinite(r.snr_floor) and r.snr_floor >= 0):
        raise ValueError(f"recipe.snr_floor must be a number >= 0 (0 turns it off), got {r.snr_floor!r}")
    if not (isinstance(r.max_loss_weight, (int, float)) and not isinstance(r.max_loss_weight, bool)
            and r.max_loss_weight >= 1):
        raise ValueError(f"recipe.max_loss_weight must be a number >= 1, got {r.max_loss_weight!r}")
    rates = r.dropout
    for name in ("audio", "portrait", "both"):
        _rate(getattr(rates, name), f"recipe.dropout.{name}")
    if rates.audio + rates.portrait + rates.both > 1.0:
        raise ValueError(f"recipe.dropout rates add up to {rates.audio + rates.portrait + rates.both:g} > 1")
    return config


def _resolve_paths(config: TrainConfig, base: Path) -> None:
    from ..encoder_names import named_encoder

    def resolve(value):
        if value is None or named_encoder(value):  # "mel", "phones", "phones+mel" are names, not paths
            return value
        path = Path(os.path.expanduser(value))
        return str(path if path.is_absolute() else (base / path))

    config.output_dir = resolve(config.output_dir)
    config.data.path = resolve(config.data.path)
    config.audio.encoder = resolve(config.audio.encoder)
    config.vae.path = resolve(config.vae.path)
    config.training.init_from = resolve(config.training.init_from)


def config_from_dict(values: dict, *, base_dir: str | Path | None = None) -> TrainConfig:
    """A checked :class:`TrainConfig` from a mapping (relative paths resolved against ``base_dir``)."""
    config = _build(TrainConfig, values, "")
    if base_dir is not None:
        _resolve_paths(config, Path(base_dir))
    return validate(config)


def load_config(path: str | Path, overrides: dict | None = None) -> TrainConfig:
    """Read a YAML config file; ``overrides`` (nested dict) replace values before checking."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {str(path)!r} not found (give a YAML file, or --preset NAME; "
                                f"presets: {', '.join(preset_names())})")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"training config {str(path)!r} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"training config {str(path)!r} must hold a mapping of sections, got {type(values).__name__}")
    _merge(values, overrides or {})
    return config_from_dict(values, base_dir=path.parent)


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"preset {name!r} is not known; accepted: {', '.join(preset_names())}")
    return path


def load_preset(name: str, overrides: dict | None = None, *, base_dir: str | Path = ".") -> TrainConfig:
    """A shipped preset; its relative paths (output_dir, data) are taken relative to ``base_dir``
    (the working directory), not to the package."""
    path = preset_path(name)
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    _merge(values, overrides or {})
    return config_from_dict(values, base_dir=base_dir)


def _merge(values: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            _merge(values[key], value)
        else:
            values[key] = value


def save_config(config: TrainConfig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = config.to_dict()
    values["training"]["adam_betas"] = list(values["training"]["adam_betas"])
    path.write_text(yaml.safe_dump(values, sort_keys=False), encoding="utf-8")
    return path

"""The trainer: ``python -m letstalk_core train --config CONFIG.yaml [--resume]``, on Hugging Face accelerate.

The same code runs on a CPU, one GPU, or many GPUs (``accelerate launch -m letstalk_core train ...``),
with mixed precision, gradient accumulation and the model's gradient checkpointing from the config.

Stages (``stages`` in the config):

* ``vae``: fits the small demo VAE (diffusers ``AutoencoderKL``, config from ``latents/configs``) on
  frames of the training videos (pixel MSE + a small KL term), then sets its latent scaling factor to
  1 / std of its latents, and saves ``<output_dir>/vae/vae.safetensors``.
* ``transformer``: the LetsTalk diffusion transformer and its audio projection with the authors' recipe
  (see :mod:`.recipe` and :mod:`.losses`): AdamW, EMA of the weights, grad-norm clipping after a
  warm-up, condition dropout for guidance.

Outputs in ``output_dir``: ``checkpoints/step_XXXXXXX.safetensors`` and ``letstalk.safetensors`` (the
project format through ``save_checkpoint``, EMA weights, with the VAE and the audio encoder's config
bundled when known), ``probes.jsonl`` (each save's conditioning probe) and ``training_state.pt`` /
``vae_state.pt``: everything needed to resume (raw and EMA weights, optimiser, step; with
``recipe.audio_mouth_loss_weight`` the head of :mod:`.listening`, which the bundle leaves out), tensors and
plain values only, read back with ``weights_only=True``.
Every random draw of a training sample comes from a generator seeded by (seed, its position in the data
order), and the data order from (seed, epoch), so a resumed run continues the loss curve of an
uninterrupted one exactly.

Many processes (``torchrun --nproc_per_node N -m letstalk_core train ...`` or ``accelerate launch``):
``training.batch_size`` is the global batch, shared out evenly; process r trains its share of each global
batch, gradients are averaged, and because a sample's draws depend on its position only, N processes
train the same clips the same way as one (within float rounding): a run may be resumed with another
number of processes. The main process alone writes checkpoints, the state, logs and probes, and holds
the output folder's lock. Each process holds a whole copy of the model (DDP), or with ``training.fsdp``
1/N of it (:mod:`.sharding`); the files written are the same either way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
from contextlib import contextmanager
import os
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..checkpoints import save_checkpoint
from ..encoder_names import named_encoder
from ..files import atomic_write
from ..model import AudioProjection, LetsTalkTransformer
from ..model.transformer import LetsTalkBlock
from ..weights import read_torch_file
from .config import TrainConfig, save_config
from .data import ClipDataset, DataOrder, _Cache, build_source, collate, mouth_weights
from .listening import MOUTH_GRID, AudioMouthHead, audio_mouth_loss
from .losses import DiffusionSchedule, diffusion_loss
from .probe import PROBE_CLIPS, PROBE_TIMESTEP, PROBE_TIMESTEPS, conditioning_probe, describe_probe
from .sharding import shard_like, shard_modules, shard_optimizer_state, whole_state
from .recipe import (
    DROP_AUDIO,
    DROP_BOTH,
    add_pixel_noise,
    apply_condition_dropout,
    corrupt_memory_latents,
    draw_condition_dropout,
    pixel_noise_sigmas,
    sample_generator,
    step_generator,
)

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
TRANSFORMER_STATE = "training_state.pt"
PROBE_LOG = "probes.jsonl"  # every save's conditioning probe (raw errors), one JSON object per line
VAE_STATE = "vae_state.pt"
FINAL_CHECKPOINT = "letstalk.safetensors"
TRAINED_VAE = Path("vae") / "vae.safetensors"


def _atomic_torch_save(value, path: Path) -> None:
    atomic_write(path, lambda temporary: torch.save(value, temporary))


def load_training_state(path: str | Path) -> dict:
    """A resumable state file (tensors and plain values only, read with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state {str(path)!r} not found; nothing to resume (run without --resume)")
    state = read_torch_file(path, "training state")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{str(path)!r} is not a version-{STATE_FORMAT} LetsTalk training state")
    return state


def _make_accelerator(config: TrainConfig, accumulation: int):
    """One process, or one of many however they were started (``accelerate launch``, ``torchrun``): on GPUs
    with NCCL, on CPUs with gloo (accelerate joins a CPU process group only when told ``cpu=True``)."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision=config.training.mixed_precision, gradient_accumulation_steps=accumulation,
                       cpu=not torch.cuda.is_available())


def _refuse_accelerate_sharding(accelerator) -> None:
    """accelerate's own FSDP and DeepSpeed wrap the model in ways this trainer does not save or probe:
    refused before any step, pointing at ``training.fsdp``."""
    kind = str(getattr(accelerator, "distributed_type", ""))
    if kind.endswith(("FSDP", "DEEPSPEED")):
        raise ValueError(f"the run was launched with accelerate's {kind.rsplit('.', 1)[-1]} config, which this trainer "
                         "does not support; launch with plain multi-GPU (`accelerate launch --multi_gpu` or torchrun) "
                         "and add --fsdp (training.fsdp: true) to shard the model over the processes")


def local_batch_size(global_batch: int, num_processes: int) -> int:
    """Clips per process per step: ``training.batch_size`` is the global batch, shared out evenly."""
    if global_batch % num_processes:
        lower = max(num_processes, global_batch // num_processes * num_processes)
        raise ValueError(
            f"training.batch_size {global_batch} is the global batch (clips per step over all processes) and must "
            f"be a multiple of the {num_processes} processes; use {lower} or {lower + num_processes}, or start "
            f"{math.gcd(global_batch, num_processes)} processes")
    return global_batch // num_processes


def _cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").clone() for k, v in module.state_dict().items()}


def _progress_bar(accelerator, total: int, initial: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=description, disable=not (enabled and accelerator.is_main_process),
                dynamic_ncols=True)


# ==================================================================================================
class TransformerTrainer:
    """Trains ``LetsTalkTransformer`` + ``AudioProjection`` (see the module docstring)."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, show_progress: bool = True,
                 accelerator=None, codec=None, source=None, encoder=None):
        from diffusers.training_utils import EMAModel

        from ..audio import load_audio_encoder
        from ..latents import check_latent_channels, load_vae

        self.config = config
        self.output_dir = Path(config.output_dir)
        t = config.training
        self.accelerator = accelerator or _make_accelerator(config, t.gradient_accumulation_steps)
        _refuse_accelerate_sharding(self.accelerator)
        self.local_batch = local_batch_size(t.batch_size, self.accelerator.num_processes)
        self.show_progress = show_progress
        self.encoder = encoder or load_audio_encoder(config.audio.encoder, n_mels=config.audio.n_mels)
        self.source = source if source is not None else build_source(config, self.encoder)
        self.use_latents = config.data.use_cached_latents
        self.dataset = ClipDataset(self.source, frames_per_clip=config.model.frames_per_clip,
                                   memory_frames=config.model.memory_frames, window_radius=config.audio.window_radius,
                                   use_latents=self.use_latents)
        self.order = DataOrder(len(self.dataset), config.seed)
        self.schedule = DiffusionSchedule.training()

        self.vae_path = self._vae_path()
        if codec is None and self.vae_path is not None:
            codec = load_vae(self.vae_path, device=self.accelerator.device)
        self.codec = codec
        if self.codec is not None:
            check_latent_channels(self.codec.latent_channels, config.model.in_channels,
                                  vae_name=f"VAE {self.vae_path}", model_name="model.in_channels")
        elif not self.use_latents:
            raise ValueError("training on pixels needs a VAE: set vae.path or add the 'vae' stage")

        torch.manual_seed(config.seed)  # the initial weights depend on the seed only
        factor = self.codec.downscale_factor if self.codec is not None else None
        self.model_kwargs = config.transformer_kwargs(downscale_factor=factor)
        self.audio_proj_kwargs = config.audio_projection_kwargs(self.encoder.num_layers, self.encoder.feature_dim)
        self.model = LetsTalkTransformer(**self.model_kwargs).initialize_weights(
            zero_audio_attention=t.zero_init_audio_attention)
        self.audio_proj = AudioProjection(**self.audio_proj_kwargs)
        # the training companion of recipe.audio_mouth_loss_weight (listening.py): in the state, not the bundle
        self.mouth_head = None
        if config.recipe.audio_mouth_loss_weight:
            rows, cols = MOUTH_GRID
            self.mouth_head = AudioMouthHead(config.audio.num_tokens, config.audio.output_dim,
                                             config.model.in_channels * rows * cols)
        if t.init_from is not None and not resume:
            self._init_from(t.init_from)
        state = load_training_state(self.output_dir / TRANSFORMER_STATE) if resume else None
        if state is not None:  # whole weights into the whole modules, before any sharding
            self.model.load_state_dict(state["model"])
            self.audio_proj.load_state_dict(state["audio_proj"])
            if (self.mouth_head is None) != (state.get("mouth_head") is None):
                raise ValueError(f"the training state in {str(self.output_dir)!r} was saved "
                                 f"{'without' if self.mouth_head is not None else 'with'} recipe.audio_mouth_loss_weight "
                                 "and the config now turns it "
                                 f"{'on' if self.mouth_head is not None else 'off'}; resume with the config it was "
                                 "saved with (its config.yaml), or train into a new output folder")
            if self.mouth_head is not None:
                self.mouth_head.load_state_dict(state["mouth_head"])
        if t.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.sharded = t.fsdp and self.accelerator.num_processes > 1
        if t.fsdp and not self.sharded:
            logger.info("training.fsdp: one process, nothing to shard; training unsharded")
        if self.sharded:
            shard_modules(self.model, [self.audio_proj], self.accelerator.device, LetsTalkBlock)
        audio_rate = t.learning_rate if t.audio_projection_learning_rate is None else t.audio_projection_learning_rate
        self.base_rates = (t.learning_rate, audio_rate)  # before the decay (lr_decay_steps)
        modules = (self.model, self.audio_proj)
        if self.mouth_head is not None:  # the head learns at the projection's rate
            self.base_rates += (audio_rate,)
            modules += (self.mouth_head,)
        groups = [{"params": list(module.parameters()), "lr": rate} for module, rate in zip(modules, self.base_rates)]
        self.optimizer = torch.optim.AdamW(groups, lr=t.learning_rate, betas=t.adam_betas,
                                           weight_decay=t.weight_decay)
        self.ema = EMAModel(self._parameters(), decay=t.ema_decay)
        self.step = 0  # optimiser steps done
        self.micro_step = 0  # batches seen by this process (steps x accumulation)
        self.last_losses: list[float] = []
        self.last_audio_mouth: Optional[float] = None  # the listening objective of the last batch (1: explains nothing)
        self._latent_cache = _Cache(config.data.cache_videos)  # video index -> clean latents [N, C, h, w]
        if state is not None:
            self._load_state(state)
        if self.sharded:  # the modules are FSDP's already: accelerate only wraps the optimiser
            self.optimizer = self.accelerator.prepare(self.optimizer)
        else:
            self.model, self.audio_proj, self.optimizer = self.accelerator.prepare(self.model, self.audio_proj,
                                                                                   self.optimizer)
            if self.mouth_head is not None:
                self.mouth_head = self.accelerator.prepare(self.mouth_head)
        self.ema.to(self.accelerator.device)

    # ---- helpers ---------------------------------------------------------------------------------
    def _vae_path(self) -> Optional[str]:
        if self.config.vae.path is not None:
            return self.config.vae.path
        if "vae" in self.config.stages:
            path = self.output_dir / TRAINED_VAE
            if not path.is_file():
                raise FileNotFoundError(f"the 'vae' stage's VAE {str(path)!r} is not there yet; run the 'vae' stage first")
            return str(path)
        if self.use_latents:  # the VAE the latents were cached with, for the bundle only (may be gone)
            path = self.source.manifest.get("vae")
            return path if path and Path(path).exists() else None
        return None

    def _init_from(self, path: str) -> None:
        """Fine-tuning: the transformer and audio projection weights of checkpoint ``path`` (either
        format), which must have the shapes of the configured model."""
        from ..checkpoints import load_checkpoint
        from ..checkpoints.official import check_state_dict

        source = f"training.init_from {path}"
        checkpoint = load_checkpoint(path)
        for module, loaded in ((self.model, checkpoint.model), (self.audio_proj, checkpoint.audio_proj)):
            state = loaded.state_dict()
            check_state_dict(module, state, source=source)
            module.load_state_dict(state)
        logger.info("starting from the weights of %s (its step %s)", path, checkpoint.training.get("step", "unknown"))

    def learning_rate_factor(self, step: int) -> float:
        """The factor on every base rate for the update after ``step`` optimiser steps: 1, falling
        linearly over the last ``lr_decay_steps`` steps to 1/lr_decay_steps at the last update."""
        t = self.config.training
        if not t.lr_decay_steps:
            return 1.0
        return min(1.0, max(0, t.max_steps - step) / t.lr_decay_steps)

    def _parameters(self) -> list[torch.nn.Parameter]:
        return list(self.model.parameters()) + list(self.audio_proj.parameters())

    def _load_state(self, state: dict) -> None:
        """The optimiser, EMA and counters of a saved state (the weights are loaded before sharding)."""
        optimizer_state = self._split_optimizer_groups(state["optimizer"])
        self.optimizer.load_state_dict(shard_optimizer_state(optimizer_state, self.optimizer) if self.sharded
                                       else optimizer_state)
        self.ema.load_state_dict(state["ema"])
        if self.sharded:
            self.ema.shadow_params = [shard_like(shadow, parameter)
                                      for shadow, parameter in zip(self.ema.shadow_params, self._parameters())]
        self.step, self.micro_step = int(state["step"]), int(state["micro_step"])
        order = state.get("data_order", {})
        if order.get("num_items") not in (None, self.order.num_items):
            logger.warning("the training data had %s videos when the state was saved and has %d now; the data "
                           "order from here on differs from the interrupted run's", order["num_items"],
                           self.order.num_items)
        if int(state["seed"]) != self.config.seed:
            raise ValueError(f"the training state was made with seed {state['seed']}, the config says "
                             f"{self.config.seed}; resume with the same config")
        if "scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])

    def _split_optimizer_groups(self, optimizer_state: dict) -> dict:
        """States saved before the audio projection had its own parameter group hold one group of the
        model's parameters followed by the projection's: split it the way the optimiser is now built."""
        groups = optimizer_state["param_groups"]
        if len(groups) != 1 or len(self.optimizer.param_groups) != 2:
            return optimizer_state
        count = len(self.optimizer.param_groups[0]["params"])
        model_group = {**groups[0], "params": groups[0]["params"][:count]}
        rate = self.optimizer.param_groups[1]["lr"]
        audio_group = {**groups[0], "params": groups[0]["params"][count:], "lr": rate}
        if "initial_lr" in audio_group:
            audio_group["initial_lr"] = rate
        return {**optimizer_state, "param_groups": [model_group, audio_group]}

    def state_dict(self) -> Optional[dict]:
        """Everything to resume from, whole tensors on the CPU. Sharded, every process must call it (the
        shards are gathered) and only the main process gets the state (None elsewhere)."""
        unwrap = self.accelerator.unwrap_model
        ema = self.ema.state_dict()
        if self.sharded:
            keep = self.accelerator.is_main_process
            model, audio_proj = whole_state(self.model.state_dict(), keep), whole_state(self.audio_proj.state_dict(), keep)
            optimizer, ema = whole_state(self.optimizer.state_dict(), keep), whole_state(ema, keep)
            if not keep:
                return None
        else:
            model, audio_proj, optimizer = _cpu_state(unwrap(self.model)), _cpu_state(unwrap(self.audio_proj)), \
                self.optimizer.state_dict()
            ema = {**ema, "shadow_params": [p.detach().to("cpu").clone() for p in ema["shadow_params"]]}
        state = {
            "format": STATE_FORMAT,
            "step": self.step,
            "micro_step": self.micro_step,
            "seed": self.config.seed,
            "model": model,
            "audio_proj": audio_proj,
            "mouth_head": None if self.mouth_head is None else _cpu_state(unwrap(self.mouth_head)),
            "optimizer": optimizer,
            "ema": ema,
            "data_order": {"seed": self.order.seed, "num_items": self.order.num_items, "position": self.micro_step},
        }
        if self.accelerator.scaler is not None:
            state["scaler"] = self.accelerator.scaler.state_dict()
        return state

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(pixels.to(self.accelerator.device)).to(self.accelerator.device)

    # ---- one step --------------------------------------------------------------------------------
    def _video_latents(self, index: int) -> torch.Tensor:
        """Latents of all clean frames of video ``index`` ``[N, C, h, w]``, encoded once (cache_clip_latents)."""
        def encode(video_index: int) -> torch.Tensor:
            frames = self.source.load(video_index).frames  # [N, S, S, 3] uint8
            pixels = frames.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, S, S]
            return self.codec.encode(pixels.to(self.accelerator.device)).cpu()

        return self._latent_cache.get(index, encode)

    def batch_positions(self, micro_step: int) -> range:
        """This process's share of the global batch ``micro_step``: positions in the data order. Together
        the processes cover exactly the positions one process would, each once."""
        first = micro_step * self.config.training.batch_size + self.accelerator.process_index * self.local_batch
        return range(first, first + self.local_batch)

    def _batch(self, positions: range, generators: list[torch.Generator]) -> dict[str, torch.Tensor]:
        """The clips at ``positions``, each drawn (start frame...) with its own generator."""
        samples = [self.dataset.sample(self.order.index(p), g) for p, g in zip(positions, generators)]
        batch = collate(samples)
        if self.config.data.cache_clip_latents and not self.use_latents:
            length = self.config.model.frames_per_clip
            batch["clip_latents"] = torch.stack(
                [self._video_latents(s.video_index)[s.start:s.start + length] for s in samples])  # [B, F, C, h, w]
        return batch

    def compute_loss(self, batch: dict[str, torch.Tensor], generators: list[torch.Generator]):
        """The training loss of one batch (the recipe of :mod:`.recipe`), a :class:`DiffusionLoss`. Every
        random draw of sample i comes from ``generators[i]``, so a sample is trained the same way whichever
        process, and whichever share of the batch, it falls to."""
        cfg, device = self.config, self.accelerator.device
        r = cfg.recipe
        clip = batch["clip"]

        def each(draw) -> torch.Tensor:  # one draw per sample, with that sample's generator
            return torch.cat([draw(i, g) for i, g in enumerate(generators)])

        if self.use_latents:
            latents = clip.to(device)  # [B, F, C, h, w]
            portrait_latents = batch["portrait"].to(device)  # [B, C, h, w]
            memory_clean = batch["memory"].to(device)  # [B, K, C, h, w]
        else:
            if "clip_latents" in batch:
                latents = batch["clip_latents"].to(device)  # [B, F, C, h, w]
            else:
                latents = self._encode(clip)  # [B, F, C, h, w]
            def noisy_pixels(key: str) -> torch.Tensor:
                def draw(i, g):
                    sigma = pixel_noise_sigmas(1, g, r.portrait_noise_log_mean, r.portrait_noise_log_std)
                    return add_pixel_noise(batch[key][i:i + 1], sigma, g)
                return each(draw)

            portrait_latents = self._encode(noisy_pixels("portrait"))  # [B, C, h, w]
            memory_clean = self._encode(noisy_pixels("memory")) if cfg.model.memory_frames else None  # [B, K, C, h, w]
        memory_latents = None
        if cfg.model.memory_frames:
            memory_latents = each(lambda i, g: corrupt_memory_latents(
                memory_clean[i:i + 1], self.schedule, g, max_timestep=r.memory_max_timestep,
                mask_fraction=r.memory_mask_fraction, drop=r.memory_drop).latents)  # [B, K, C, h, w]
        choice = each(lambda i, g: draw_condition_dropout(1, g, audio=r.dropout.audio, portrait=r.dropout.portrait,
                                                          both=r.dropout.both))
        audio_windows, portrait_latents = apply_condition_dropout(choice, batch["audio_windows"].to(device),
                                                                  portrait_latents)
        timesteps = each(lambda i, g: torch.randint(0, self.schedule.num_timesteps, (1,), generator=g))  # [B]
        noise = each(lambda i, g: torch.randn((1, *latents.shape[1:]), generator=g)).to(latents)  # [B, F, C, h, w]
        timesteps = timesteps.to(device)
        noisy = self.schedule.q_sample(latents, timesteps, noise)
        # accelerate's prepare puts an unsharded model's forward under autocast; a sharded one is not prepared
        with self.accelerator.autocast() if self.sharded else contextlib.nullcontext():
            audio_tokens = self.audio_proj(audio_windows)  # [B, F, M, D]
            output = self.model(noisy, timesteps, portrait_latents, audio_tokens, memory_latents)  # [B, F, 2C, h, w]
        output = output.float()
        weights = None
        if r.mouth_loss_weight and "mouth_box" in batch:
            weights = mouth_weights(batch["mouth_box"], latents.shape[-2], latents.shape[-1],
                                    r.mouth_loss_weight).to(device)  # [B, 1, 1, h, w]
        loss = diffusion_loss(self.schedule, output, latents, noisy, noise, timesteps, weights, snr_gamma=r.snr_gamma,
                              snr_floor=r.snr_floor, max_weight=r.max_loss_weight)
        if self.mouth_head is not None:
            keep = (choice != DROP_AUDIO) & (choice != DROP_BOTH)  # [B]
            loss.audio_mouth = audio_mouth_loss(self.mouth_head, audio_tokens, latents, batch["mouth_box"], keep)
            loss.loss = loss.loss + r.audio_mouth_loss_weight * loss.audio_mouth
        return loss

    def train_step(self) -> Optional[float]:
        """One batch; returns the loss of the batch. The optimiser steps every
        ``gradient_accumulation_steps`` batches (``self.step`` counts those)."""
        acc, t = self.accelerator, self.config.training
        positions = self.batch_positions(self.micro_step)
        generators = [sample_generator(self.config.seed, position) for position in positions]
        batch = self._batch(positions, generators)
        self.model.train()
        self.audio_proj.train()
        factor = self.learning_rate_factor(self.step)
        for group, rate in zip(self.optimizer.param_groups, self.base_rates):
            group["lr"] = rate * factor
        if self.mouth_head is not None:
            self.mouth_head.train()
        with acc.accumulate(self.model, self.audio_proj, *([self.mouth_head] if self.mouth_head is not None else [])):
            loss = self.compute_loss(batch, generators)
            acc.backward(loss.loss)
            if acc.sync_gradients and t.grad_clip is not None and self.step >= t.grad_clip_after:
                acc.clip_grad_norm_(self._parameters(), t.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.micro_step += 1
        if loss.audio_mouth is not None:
            self.last_audio_mouth = float(loss.audio_mouth.detach())
        if acc.sync_gradients:
            self.step += 1
            self.ema.step(self._parameters())
        # the loss of the whole global batch (the mean over the processes' equal shares), the same on every process
        value = float(acc.reduce(loss.loss.detach(), reduction="mean")) if acc.num_processes > 1 \
            else float(loss.loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the training loss became {value} at step {self.step}; lower "
                                     "training.learning_rate or enable training.grad_clip")
        return value

    def _clean_latents(self, batch: dict) -> torch.Tensor:
        """The batch's clean clip latents ``[B, F, C, h, w]`` (cached, or encoded from its pixels)."""
        if self.use_latents:
            return batch["clip"].to(self.accelerator.device)
        if "clip_latents" in batch:
            return batch["clip_latents"].to(self.accelerator.device)
        return self._encode(batch["clip"])

    def pretrain_listening(self, steps: int) -> list[float]:
        """``steps`` steps of the listening objective alone (recipe.audio_mouth_pretrain_steps): the audio
        projection and its head learn to predict the mouth's motion from the speech, before the transformer
        meets the tokens. Batches of 8 x training.batch_size clips, drawn from their own seeded stream; the
        EMA then starts from the pretrained projection. Returns the objective per step (1: explains nothing)."""
        device, batch_size = self.accelerator.device, 8 * self.local_batch
        parameters = list(self.audio_proj.parameters()) + list(self.mouth_head.parameters())
        optimizer = torch.optim.AdamW(parameters, lr=self.base_rates[1], betas=self.config.training.adam_betas)
        everyone = torch.ones(batch_size, dtype=torch.bool)
        values = []
        self.audio_proj.train(), self.mouth_head.train()
        for step in range(steps):
            first = (step * self.accelerator.num_processes + self.accelerator.process_index) * batch_size
            positions = range(first, first + batch_size)  # each process its own clips
            batch = self._batch(positions, [sample_generator(self.config.seed + 104_729, p) for p in positions])
            tokens = self.audio_proj(batch["audio_windows"].to(device))  # [B, F, M, D]
            loss = audio_mouth_loss(self.mouth_head, tokens, self._clean_latents(batch), batch["mouth_box"], everyone)
            optimizer.zero_grad(set_to_none=True)
            self.accelerator.backward(loss)
            optimizer.step()
            values.append(float(loss.detach()))
            if self.accelerator.is_main_process and (step + 1) % max(1, steps // 10) == 0:
                logger.info("listening pretraining step %d/%d: %.3f of the mouth's motion unexplained by the audio",
                            step + 1, steps, sum(values[-10:]) / len(values[-10:]))
        self.ema.shadow_params = [p.detach().clone() for p in self._parameters()]  # the EMA from here on
        return values

    # ---- saving ----------------------------------------------------------------------------------
    def training_metadata(self) -> dict:
        cfg = self.config
        rates = cfg.recipe.dropout
        return {
            "condition_dropout": {"audio": rates.audio, "portrait": rates.portrait, "both": rates.both},
            "step": self.step,
            "name": cfg.name,
            "ema_decay": cfg.training.ema_decay,
            "learning_rate": cfg.training.learning_rate,
            "lr_decay_steps": cfg.training.lr_decay_steps,
            "init_from": None if cfg.training.init_from is None else Path(cfg.training.init_from).name,
            "audio_projection_learning_rate": cfg.training.audio_projection_learning_rate,
            "zero_init_audio_attention": cfg.training.zero_init_audio_attention,
            "batch_size": cfg.training.batch_size * cfg.training.gradient_accumulation_steps,  # global, per step
            "resolution": cfg.data.resolution,
            "fps": cfg.data.fps,
            "data_source": cfg.data.source,  # "prepared" (real footage) or "synthetic" (the cartoon world)
            # how much of the head the training frames showed (prepare's --margin): inference crops alike
            "crop_margin": getattr(self.source, "manifest", {}).get("margin"),
            "recipe": {"portrait_noise_log_mean": cfg.recipe.portrait_noise_log_mean,
                       "portrait_noise_log_std": cfg.recipe.portrait_noise_log_std,
                       "memory_max_timestep": cfg.recipe.memory_max_timestep,
                       "memory_mask_fraction": cfg.recipe.memory_mask_fraction,
                       "memory_drop": cfg.recipe.memory_drop,
                       "mouth_loss_weight": cfg.recipe.mouth_loss_weight,
                       "audio_mouth_loss_weight": cfg.recipe.audio_mouth_loss_weight},
        }

    def audio_encoder_config(self) -> dict:
        a = self.config.audio
        encoder = {"type": getattr(self.encoder, "kind", "unknown"), "num_layers": self.encoder.num_layers,
                   "feature_dim": self.encoder.feature_dim, "window_radius": a.window_radius, "fps": self.config.data.fps}
        if named_encoder(a.encoder):  # weightless: the name (type) and its mel bands say everything
            if getattr(self.encoder, "n_mels", 0):
                encoder["n_mels"] = a.n_mels
        else:
            encoder["source"] = a.encoder
        return encoder

    def save_checkpoint(self, path: str | Path | None = None, modules=None) -> Path:
        """The project-format checkpoint with the EMA weights (VAE bundled when known). ``modules``:
        whole (model, audio projection) holding the EMA weights already (see :meth:`ema_copies`);
        None: the trained modules with the EMA weights swapped in (unsharded runs only)."""
        from ..latents import load_vae, vae_bundle_entries
        from ..sampling.options import PROJECT_DEFAULT

        path = Path(path) if path is not None else self.output_dir / "checkpoints" / f"step_{self.step:07d}.safetensors"
        if modules is None and self.sharded:
            raise RuntimeError("a sharded run saves whole copies of its modules (ema_copies), not its shards")
        model, audio_proj = modules or (self.accelerator.unwrap_model(self.model),
                                        self.accelerator.unwrap_model(self.audio_proj))
        extra_tensors, extra_metadata = {}, {"training": self.training_metadata(),
                                             "audio_encoder_config": self.audio_encoder_config(),
                                             # what sampling to start from; `convert --sampler ...` stores
                                             # better settings once the model has been evaluated
                                             "sampling": PROJECT_DEFAULT.recommendation()}
        codec = self.codec if self.codec is not None else (load_vae(self.vae_path) if self.vae_path else None)
        if codec is not None:
            extra_tensors, vae_metadata = vae_bundle_entries(codec)
            extra_metadata.update(vae_metadata)
        with self._ema_weights() if modules is None else contextlib.nullcontext():
            save_checkpoint(path, model, audio_proj, extra_tensors=extra_tensors, extra_metadata=extra_metadata)
        return path

    def ema_copies(self):
        """Whole, unsharded copies of the model and audio projection holding the EMA weights, on the main
        process's device (None elsewhere): what a sharded run saves and probes. Every process must call
        it (the shards are gathered, one tensor at a time)."""
        keep = self.accelerator.is_main_process
        with self._ema_weights():
            states = [whole_state(module.state_dict(), keep) for module in (self.model, self.audio_proj)]
        if not keep:
            return None
        with torch.device("meta"):
            copies = (LetsTalkTransformer(**self.model_kwargs), AudioProjection(**self.audio_proj_kwargs))
        for copy, state in zip(copies, states):
            copy.load_state_dict(state, assign=True)
            copy.to(self.accelerator.device)
        return copies

    @contextmanager
    def _ema_weights(self):
        """The EMA weights in the model and projection for the ``with`` block, the trained ones after."""
        parameters = self._parameters()
        if self.sharded:  # this process's shards (1/N of the weights) stay where they are, not on the CPU
            trained = [p.detach().clone() for p in parameters]
        else:
            self.ema.store(parameters)
        self.ema.copy_to(parameters)
        try:
            yield
        finally:
            if self.sharded:
                with torch.no_grad():
                    for parameter, value in zip(parameters, trained):
                        parameter.copy_(value)
            else:
                self.ema.restore(parameters)

    def probe(self, timestep: int = PROBE_TIMESTEP, modules=None) -> Optional[dict[str, float]]:
        """:func:`~.probe.conditioning_probe` with the EMA weights on fixed batches of about
        ``PROBE_CLIPS`` clips in all (the same at every call; its own random generator, so training
        draws are untouched), each error averaged over the batches. None when a batch holds fewer than
        2 clips or the data has no pixels to encode portraits from. ``modules``: as for :meth:`save_checkpoint`."""
        batch_size = self.config.training.batch_size
        if batch_size < 2 or (self.codec is None and not self.use_latents):
            return None
        generator = torch.Generator().manual_seed(self.config.seed + 7919)
        # one batch of 4 clips swings the audio ratio by +-3% from batch to batch: average over PROBE_CLIPS
        results = [self._probe_batch(self._batch(range(i * batch_size, (i + 1) * batch_size), [generator] * batch_size),
                                     timestep, generator, modules)
                   for i in range(max(1, math.ceil(PROBE_CLIPS / batch_size)))]
        keys = [key for key in results[0] if all(key in r for r in results)]  # mouth keys: boxes known
        return {key: sum(r[key] for r in results) / len(results) for key in keys}

    def _probe_batch(self, batch: dict, timestep: int, generator: torch.Generator, modules=None) -> dict[str, float]:
        device = self.accelerator.device
        if self.use_latents:
            latents, portrait = batch["clip"].to(device), batch["portrait"].to(device)
            memory = batch["memory"].to(device)
        else:
            latents = batch["clip_latents"].to(device) if "clip_latents" in batch else self._encode(batch["clip"])
            portrait = self._encode(batch["portrait"])
            memory = self._encode(batch["memory"]) if self.config.model.memory_frames else None
        mask = None
        if not torch.isnan(batch["mouth_box"]).any():
            mask = mouth_weights(batch["mouth_box"], latents.shape[-2], latents.shape[-1], 1.0) - 1.0
        model, audio_proj = modules or (self.accelerator.unwrap_model(self.model),
                                        self.accelerator.unwrap_model(self.audio_proj))
        model.eval(), audio_proj.eval()
        try:
            with self._ema_weights() if modules is None else contextlib.nullcontext():
                return conditioning_probe(model, audio_proj, self.schedule, latents, portrait,
                                          batch["audio_windows"].to(device), memory, timestep=timestep,
                                          mouth_mask=mask, generator=generator)
        finally:
            model.train(), audio_proj.train()

    def save(self) -> Optional[Path]:
        """Checkpoint + resumable state (main process only); returns the checkpoint path. Logs the
        conditioning probe (see :meth:`probe`) of the saved weights."""
        self.accelerator.wait_for_everyone()
        # sharded: every process helps gather the whole weights and state; the main process writes them
        modules = self.ema_copies() if self.sharded else None
        state = self.state_dict() if self.sharded else None
        path = None
        if self.accelerator.is_main_process:
            for timestep in PROBE_TIMESTEPS:
                result = self.probe(timestep, modules)
                if result is not None:
                    logger.info("step %d probe, %s", self.step, describe_probe(result, timestep))
                    # and kept, one JSON line per probe, for comparing runs later
                    with open(self.output_dir / PROBE_LOG, "a", encoding="utf-8") as handle:
                        handle.write(json.dumps({"step": self.step, "timestep": timestep, **result}) + "\n")
            path = self.save_checkpoint(modules=modules)
            _atomic_torch_save(state if state is not None else self.state_dict(), self.output_dir / TRANSFORMER_STATE)
        del modules
        self.accelerator.wait_for_everyone()
        return path

    # ---- loop ------------------------------------------------------------------------------------
    def train(self, max_steps: Optional[int] = None, *, on_step: Optional[Callable[[int, float], None]] = None) -> Path:
        """Train until ``max_steps`` optimiser steps (default ``training.max_steps``); saves every
        ``save_every`` steps and at the end; returns the final checkpoint (also copied to
        ``letstalk.safetensors``)."""
        t = self.config.training
        max_steps = t.max_steps if max_steps is None else int(max_steps)
        if self.accelerator.is_main_process:
            save_config(self.config, self.output_dir / "config.yaml")
        pretrain = self.config.recipe.audio_mouth_pretrain_steps
        if self.step == 0 and pretrain and self.mouth_head is not None:
            self.pretrain_listening(pretrain)
        bar = _progress_bar(self.accelerator, max_steps, self.step, f"train {self.config.name}", self.show_progress)
        running = None
        try:
            while self.step < max_steps:
                before = self.step
                value = self.train_step()
                self.last_losses.append(value)
                running = value if running is None else 0.98 * running + 0.02 * value
                if on_step is not None:
                    on_step(self.step, value)
                if self.step != before:
                    bar.update(1)
                    bar.set_postfix(loss=f"{value:.4f}", avg=f"{running:.4f}")
                    if self.step % t.log_every == 0 and self.accelerator.is_main_process:
                        logger.info("step %d loss %.5f (running %.5f)%s", self.step, value, running,
                                    "" if self.last_audio_mouth is None else
                                    f"; audio->mouth {self.last_audio_mouth:.3f} of the motion unexplained")
                    if self.step % t.save_every == 0 and self.step < max_steps:
                        self.save()
        finally:
            bar.close()
        path = self.save()
        if self.accelerator.is_main_process and path is not None:
            final = self.output_dir / FINAL_CHECKPOINT
            atomic_write(final, lambda temporary: shutil.copyfile(path, temporary))  # the last step's checkpoint
            path = final
        return path


# ==================================================================================================
class VaeTrainer:
    """Fits the small demo VAE (diffusers ``AutoencoderKL``) on single frames of the training videos."""

    def __init__(self, config: TrainConfig, *, resume: bool = False, show_progress: bool = True, accelerator=None,
                 source=None):
        from ..audio import load_audio_encoder
        from ..latents import build_vae, load_shipped_config

        self.config = config
        self.output_dir = Path(config.output_dir)
        self.accelerator = accelerator or _make_accelerator(config, 1)
        self.show_progress = show_progress
        encoder = load_audio_encoder(config.audio.encoder, n_mels=config.audio.n_mels)
        self.source = source if source is not None else build_source(config, encoder)
        self.order = DataOrder(len(self.source), config.seed + 1)
        vae_config = load_shipped_config(config.vae.config)
        vae_config["sample_size"] = config.data.resolution
        if vae_config.get("latent_channels") != config.model.in_channels:
            raise ValueError(f"vae.config {config.vae.config!r} has {vae_config.get('latent_channels')} latent channels "
                             f"but model.in_channels is {config.model.in_channels}")
        self.codec = build_vae(vae_config, kind="demo_vae" if config.vae.config == "demo_vae" else None, seed=config.seed)
        self.vae = self.codec.vae
        self.vae.train().requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.vae.parameters(), lr=config.vae.learning_rate, weight_decay=0.0)
        self.step = 0
        if resume:
            state = load_training_state(self.output_dir / VAE_STATE)
            self.vae.load_state_dict(state["vae"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
        self.model, self.optimizer = self.accelerator.prepare(_VaeReconstruction(self.vae), self.optimizer)

    def _frames(self, step: int, generator: torch.Generator) -> torch.Tensor:
        acc, size = self.accelerator, self.config.vae.batch_size
        first = (step * acc.num_processes + acc.process_index) * size
        frames = []
        for i in range(size):
            record = self.source.load(self.order.index(first + i))
            index = int(torch.randint(0, record.num_frames, (1,), generator=generator))
            frames.append(record.frames[index])
        pixels = torch.stack(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [B, 3, S, S]
        flip = torch.rand(size, generator=generator) < 0.5  # mirror half of the frames: more variety
        return torch.where(flip.view(-1, 1, 1, 1), pixels.flip(-1), pixels)

    def train_step(self) -> float:
        acc = self.accelerator
        generator = step_generator(self.config.seed, self.step, acc.process_index, stream=1)
        pixels = self._frames(self.step, generator).to(acc.device)  # [B, 3, S, S]
        latent_shape = (pixels.shape[0], self.config.model.in_channels,
                        pixels.shape[2] // self.codec.downscale_factor, pixels.shape[3] // self.codec.downscale_factor)
        eps = torch.randn(latent_shape, generator=generator).to(pixels)  # [B, C, h, w]
        reconstruction, kl = self.model(pixels, eps)
        mse = F.mse_loss(reconstruction.float(), pixels)
        loss = mse + self.config.vae.kl_weight * kl.float().mean()
        acc.backward(loss)
        acc.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        value = float(mse.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the VAE loss became {value} at step {self.step}; lower vae.learning_rate")
        return value

    @torch.no_grad()
    def latent_std(self, num_frames: int = 64) -> float:
        """Standard deviation of the (unscaled) latent means over frames spread across the videos."""
        generator = step_generator(self.config.seed, 0, 0, stream=2)
        vae = self.vae.eval()
        frames = []
        for i in range(num_frames):
            record = self.source.load(i % len(self.source))
            index = int(torch.randint(0, record.num_frames, (1,), generator=generator))
            frames.append(record.frames[index])
        pixels = torch.stack(frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [n, 3, S, S]
        values = [vae.encode(chunk.to(self.accelerator.device)).latent_dist.mean.float().cpu()
                  for chunk in pixels.split(16)]  # [<=16, C, h, w] each
        vae.train()
        return float(torch.cat(values).std())

    def save(self, final: bool = False) -> Optional[Path]:
        from ..latents import LatentCodec, save_vae

        acc = self.accelerator
        acc.wait_for_everyone()
        path = None
        if acc.is_main_process:
            vae = acc.unwrap_model(self.model).vae
            _atomic_torch_save({"format": STATE_FORMAT, "step": self.step, "seed": self.config.seed,
                                "vae": _cpu_state(vae), "optimizer": self.optimizer.state_dict()},
                               self.output_dir / VAE_STATE)
            if final:
                scaling = 1.0 / max(self.latent_std(), 1e-6)
                path = save_vae(LatentCodec(_vae_copy(vae), self.codec.kind, scaling_factor=scaling),
                                self.output_dir / TRAINED_VAE)
                vae.requires_grad_(True)
        acc.wait_for_everyone()
        return path

    def train(self, max_steps: Optional[int] = None) -> Path:
        v = self.config.vae
        max_steps = v.steps if max_steps is None else int(max_steps)
        bar = _progress_bar(self.accelerator, max_steps, self.step, f"vae {self.config.name}", self.show_progress)
        try:
            while self.step < max_steps:
                value = self.train_step()
                bar.update(1)
                bar.set_postfix(mse=f"{value:.5f}")
                if self.step % v.save_every == 0 and self.step < max_steps:
                    self.save()
        finally:
            bar.close()
        return self.save(final=True)


class _VaeReconstruction(torch.nn.Module):
    """The VAE's training forward as one module (so accelerate/DDP sees the whole pass):
    pixels ``[B, 3, S, S]`` and posterior noise ``[B, C, h, w]`` -> reconstruction and per-sample KL (sum)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(pixels).latent_dist
        reconstruction = self.vae.decode(posterior.mean + posterior.std * eps.to(posterior.mean)).sample
        return reconstruction, posterior.kl()  # [B, 3, S, S], [B]


def _vae_copy(vae):
    """A frozen copy of a VAE (``LatentCodec`` freezes what it wraps; the training one stays trainable)."""
    copy = type(vae).from_config(vae.config)
    copy.load_state_dict(vae.state_dict())
    return copy


# ==================================================================================================
LOCK_NAME = ".training.lock"


@contextmanager
def output_lock(output_dir: Path):
    """Held by the main process of a run for its whole length: a second run writing into the same folder
    stops before touching anything. A lock left by a run that died (its process is gone) is taken over."""
    if int(os.environ.get("RANK", "0")) != 0:  # one lock per run: the main process holds it
        yield
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_NAME
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None:
                raise RuntimeError(
                    f"output folder {str(output_dir)!r} is in use by another training run (process {holder}); "
                    f"wait for it to finish, stop it, or give another --out") from None
            lock.unlink(missing_ok=True)  # a run that died left it
    else:
        raise RuntimeError(f"could not take the lock {lock}")
    with os.fdopen(handle, "w") as file:
        file.write(str(os.getpid()))
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _lock_holder(lock: Path) -> Optional[int]:
    """The process id in ``lock`` when that process is still running, else None."""
    try:
        pid = int(lock.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


def train(config: TrainConfig, *, resume: bool = False, show_progress: bool = True) -> Path:
    """Run the configured stages; returns the final transformer checkpoint (or the VAE for a VAE-only run).
    The output folder is locked for the run (:func:`output_lock`)."""
    with output_lock(Path(config.output_dir)):
        return _train_stages(config, resume=resume, show_progress=show_progress)


def _train_stages(config: TrainConfig, *, resume: bool, show_progress: bool) -> Path:
    from ..audio import load_audio_encoder

    result = None
    # one source for both stages, so that videos rendered or decoded for the VAE are reused
    encoder = load_audio_encoder(config.audio.encoder, n_mels=config.audio.n_mels)
    source = build_source(config, encoder)
    if "vae" in config.stages:
        vae_file = Path(config.output_dir) / TRAINED_VAE
        vae_state = Path(config.output_dir) / VAE_STATE
        if resume and vae_file.is_file() and _state_step(vae_state) >= config.vae.steps:
            result = vae_file  # the VAE stage finished before the interruption
        else:
            result = VaeTrainer(config, resume=resume and vae_state.is_file(), show_progress=show_progress,
                                source=source).train()
    if "transformer" in config.stages:
        state = Path(config.output_dir) / TRANSFORMER_STATE
        result = TransformerTrainer(config, resume=resume and state.is_file(), show_progress=show_progress,
                                    source=source, encoder=encoder).train()
    return result


def _state_step(path: Path) -> int:
    return int(load_training_state(path)["step"]) if path.is_file() else -1


"""The project's checkpoint format: one ``.safetensors`` file.

Tensors are prefixed by part: ``transformer.``, ``audio_proj.`` and, for bundles, ``vae.``,
``audio_encoder.`` (any other ``<part>.`` prefix is kept as an extra part too). The metadata (all
strings) holds ``format="letstalk"``, ``format_version="1"``, ``transformer_config`` and
``audio_proj_config`` (JSON), ``frames_per_clip``, ``memory_frames``, ``training`` (JSON; its
``condition_dropout`` says whether the checkpoint was trained with condition dropout, i.e. supports
classifier-free guidance) and optionally ``vae_config`` / ``audio_encoder_config`` (JSON).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..files import atomic_write
from ..model import AudioProjection, LetsTalkTransformer
from ..weights import WeightFileError, read_safetensors
from .errors import CheckpointError
from .official import OFFICIAL_TRAINING, _build, load_official_checkpoint

FORMAT_NAME = "letstalk"
FORMAT_VERSION = "1"
TRANSFORMER_PREFIX = "transformer."
AUDIO_PROJ_PREFIX = "audio_proj."
_RESERVED_METADATA = ("format", "format_version", "transformer_config", "audio_proj_config", "frames_per_clip",
                      "memory_frames")
_UNRECORDED_TRAINING = {"condition_dropout": None}


@dataclass
class LetsTalkCheckpoint:
    """What ``load_checkpoint`` returns: the model parts and everything the file says about them."""

    path: Path
    model: LetsTalkTransformer
    audio_proj: AudioProjection
    config: dict  # the transformer's constructor arguments
    audio_proj_config: dict
    frames_per_clip: int
    memory_frames: int
    training: dict
    source_format: str  # "letstalk" or "official"
    metadata: dict[str, str] = field(default_factory=dict)
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # full names, e.g. "vae.decoder..."

    def part(self, name: str) -> dict[str, torch.Tensor]:
        """State dict of an extra part (``"vae"``, ``"audio_encoder"``...) with its prefix removed;
        empty when the file has none."""
        prefix = name + "."
        return {key[len(prefix):]: tensor for key, tensor in self.extra_tensors.items() if key.startswith(prefix)}

    def part_config(self, name: str) -> dict | None:
        """Parsed ``<name>_config`` metadata (e.g. ``vae_config``), or None when absent."""
        text = self.metadata.get(f"{name}_config")
        return None if text is None else json.loads(text)

    @property
    def vae_state_dict(self) -> dict[str, torch.Tensor]:
        return self.part("vae")

    @property
    def audio_encoder_state_dict(self) -> dict[str, torch.Tensor]:
        return self.part("audio_encoder")

    @property
    def vae_config(self) -> dict | None:
        return self.part_config("vae")

    @property
    def audio_encoder_config(self) -> dict | None:
        return self.part_config("audio_encoder")

    @property
    def condition_dropout(self) -> dict | None:
        """Condition-dropout rates used in training (``{"audio": p, "portrait": p}``), None if not recorded."""
        return self.training.get("condition_dropout")

    @property
    def crop_margin(self) -> float | None:
        """The face-crop margin of the training frames (``prepare --margin``), None when not recorded."""
        margin = self.training.get("crop_margin")
        return None if margin is None else float(margin)

    @property
    def trained_on_real_footage(self) -> bool | None:
        """True for a model trained on real videos (``prepare``'s folders), False for the synthetic world's
        cartoon faces, None when the file does not say (e.g. the authors' checkpoints)."""
        source = self.training.get("data_source")
        if source is not None:
            return source == "prepared"
        # bundles written before data_source was recorded: only prepared footage records a crop margin
        return True if self.training.get("crop_margin") is not None else (False if self.training else None)

    @property
    def training_fps(self) -> float | None:
        """Frames per second of the training videos, None when not recorded."""
        fps = self.training.get("fps")
        return None if fps is None else float(fps)

    @property
    def supports_guidance(self) -> bool:
        """True only when training dropped at least one condition, so classifier-free guidance is meaningful."""
        rates = self.condition_dropout or {}
        return any(float(rate) > 0 for rate in rates.values())


def _init_config(module) -> dict:
    return {key: value for key, value in dict(module.config).items() if not key.startswith("_")}


def _metadata_value(key: str, value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, int, float, bool)) or value is None:
        return json.dumps(value)
    raise ValueError(f"metadata {key!r} must be a string or JSON-serialisable value, got {type(value).__name__}")


def save_checkpoint(
    path: str | Path,
    model: LetsTalkTransformer,
    audio_proj: AudioProjection,
    *,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    extra_metadata: dict | None = None,
) -> Path:
    """Write the project format to ``path`` (a ``.safetensors`` file), atomically.

    ``extra_tensors`` are further parts with their prefix (``"vae.encoder.conv_in.weight"``...);
    ``extra_metadata`` adds string (or JSON-serialisable) entries such as ``training``, ``vae_config``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"checkpoint path {str(path)!r} must end in .safetensors")
    if not isinstance(model, LetsTalkTransformer) or not isinstance(audio_proj, AudioProjection):
        raise TypeError("save_checkpoint needs a LetsTalkTransformer and an AudioProjection, got "
                        f"{type(model).__name__} and {type(audio_proj).__name__}")
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in ((TRANSFORMER_PREFIX, model), (AUDIO_PROJ_PREFIX, audio_proj)):
        for key, tensor in module.state_dict().items():
            tensors[prefix + key] = tensor.detach().to("cpu").contiguous()
    for key, tensor in (extra_tensors or {}).items():
        part = key.split(".", 1)[0]
        if "." not in key or key.startswith((TRANSFORMER_PREFIX, AUDIO_PROJ_PREFIX)) or not part:
            raise ValueError(f"extra tensor {key!r} needs a part prefix such as 'vae.' or 'audio_encoder.' "
                             "(not 'transformer.' or 'audio_proj.')")
        if not torch.is_tensor(tensor):
            raise ValueError(f"extra tensor {key!r} is a {type(tensor).__name__}, not a tensor")
        tensors[key] = tensor.detach().to("cpu").clone().contiguous()

    config = _init_config(model)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "transformer_config": json.dumps(config),
        "audio_proj_config": json.dumps(_init_config(audio_proj)),
        "frames_per_clip": str(config["frames_per_clip"]),
        "memory_frames": str(config["memory_frames"]),
        "training": json.dumps(_UNRECORDED_TRAINING),
    }
    for key, value in (extra_metadata or {}).items():
        if key in _RESERVED_METADATA:
            raise ValueError(f"extra metadata {key!r} is written by save_checkpoint itself and cannot be overridden")
        metadata[key] = _metadata_value(key, value)

    return atomic_write(path, lambda temporary: save_file(tensors, temporary, metadata=metadata))


def _sniff(path: Path) -> str:
    """'safetensors', 'torch' (zip or legacy pickle) or 'unknown', from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors first: its 8-byte header length may well start with 0x80, a pickle's first byte
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    return "unknown"


def _json_metadata(metadata: dict, key: str, path: Path) -> dict:
    if key not in metadata:
        raise CheckpointError(f"{path}: the LetsTalk metadata has no {key!r}")
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: metadata {key!r} must be a JSON object, got {type(value).__name__}")
    return value


def _load_native(path: Path) -> LetsTalkCheckpoint:
    try:
        tensors, metadata = read_safetensors(path, "checkpoint")
    except WeightFileError as error:
        raise CheckpointError(str(error)) from None
    if metadata.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path}: a safetensors file without LetsTalk metadata (format={metadata.get('format')!r}); accepted are "
            "files written by save_checkpoint / 'python -m letstalk_core convert' and the authors' .ckpt files")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: LetsTalk format version {metadata.get('format_version')!r} is not supported "
                              f"(this code reads version {FORMAT_VERSION})")
    config = _json_metadata(metadata, "transformer_config", path)
    audio_config = _json_metadata(metadata, "audio_proj_config", path)
    training = _json_metadata(metadata, "training", path) if "training" in metadata else dict(_UNRECORDED_TRAINING)
    parts: dict[str, dict[str, torch.Tensor]] = {TRANSFORMER_PREFIX: {}, AUDIO_PROJ_PREFIX: {}}
    extra: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        for prefix in parts:
            if key.startswith(prefix):
                parts[prefix][key[len(prefix):]] = tensor
                break
        else:
            extra[key] = tensor
    try:
        model = _build(LetsTalkTransformer, config, parts[TRANSFORMER_PREFIX], source=str(path),
                       naming=lambda key: TRANSFORMER_PREFIX + key)
        audio_proj = _build(AudioProjection, audio_config, parts[AUDIO_PROJ_PREFIX], source=str(path),
                            naming=lambda key: AUDIO_PROJ_PREFIX + key)
    except TypeError as error:  # a config with an argument the constructor does not take
        raise CheckpointError(f"{path}: the stored configuration does not fit this code ({error})") from None
    for key in ("frames_per_clip", "memory_frames"):
        if key in metadata and metadata[key] != str(config[key]):
            raise CheckpointError(f"{path}: metadata {key}={metadata[key]!r} disagrees with transformer_config "
                                  f"({config[key]!r})")
    return LetsTalkCheckpoint(
        path=path, model=model, audio_proj=audio_proj, config=_init_config(model),
        audio_proj_config=_init_config(audio_proj), frames_per_clip=config["frames_per_clip"],
        memory_frames=config["memory_frames"], training=training, source_format=FORMAT_NAME, metadata=dict(metadata),
        extra_tensors=extra,
    )


def load_checkpoint(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    use_ema: bool = True,
    num_heads: int | None = None,
    memory_frames: int | None = None,
    frames_per_clip: int | None = None,
) -> LetsTalkCheckpoint:
    """Read a checkpoint of either format: the project's ``.safetensors`` or the authors' ``.ckpt/.pt/.pth``.

    ``use_ema``, ``num_heads``, ``memory_frames`` and ``frames_per_clip`` only apply to the authors' files
    (see ``load_official_checkpoint``). The model parts are moved to ``device`` and, if given, ``dtype``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    kind = _sniff(path)
    if kind == "safetensors":
        checkpoint = _load_native(path)
    elif kind == "torch":
        model, audio_proj, config = load_official_checkpoint(
            path, use_ema=use_ema, num_heads=num_heads, memory_frames=memory_frames, frames_per_clip=frames_per_clip)
        checkpoint = LetsTalkCheckpoint(
            path=path, model=model, audio_proj=audio_proj, config=_init_config(model),
            audio_proj_config=_init_config(audio_proj), frames_per_clip=config["frames_per_clip"],
            memory_frames=config["memory_frames"], training=dict(OFFICIAL_TRAINING), source_format="official",
            metadata={"training": json.dumps(OFFICIAL_TRAINING), "weights": "ema" if use_ema else "model"},
        )
    else:
        raise CheckpointError(
            f"{path}: neither a LetsTalk .safetensors file nor a torch checkpoint (.ckpt/.pt/.pth) of the authors' "
            "code; the file's first bytes match no known format")
    for module in (checkpoint.model, checkpoint.audio_proj):
        # nn.Module.to: diffusers' ModelMixin.to warns on every dtype cast, even with no float32-only modules
        torch.nn.Module.to(module, device=device, dtype=dtype)
    return checkpoint


def convert_checkpoint(
    source: str | Path,
    destination: str | Path,
    *,
    use_ema: bool = True,
    num_heads: int | None = None,
    memory_frames: int | None = None,
    frames_per_clip: int | None = None,
    dtype: torch.dtype | None = None,
    sampling=None,
) -> Path:
    """Convert any readable checkpoint into the project format (``destination`` ends in .safetensors).

    ``sampling`` (sampler, steps, audio_cfg, portrait_cfg, overlap_frames; None entries ignored) changes
    the checkpoint's recommended sampling options, stored in the file; the rest of the recommendation is
    the source's (the authors' loop for a checkpoint of the authors' code)."""
    from ..sampling.options import recommended_options

    destination = Path(destination)
    if destination.suffix != ".safetensors":
        raise ValueError(f"output path {str(destination)!r} must end in .safetensors")
    checkpoint = load_checkpoint(source, dtype=dtype, use_ema=use_ema, num_heads=num_heads,
                                 memory_frames=memory_frames, frames_per_clip=frames_per_clip)
    metadata = {key: value for key, value in checkpoint.metadata.items() if key not in _RESERVED_METADATA}
    metadata["training"] = json.dumps(checkpoint.training)
    recommendation = recommended_options(checkpoint).replace(**(sampling or {})).check_for(checkpoint)
    metadata["sampling"] = json.dumps(recommendation.recommendation())
    return save_checkpoint(destination, checkpoint.model, checkpoint.audio_proj,
                           extra_tensors=checkpoint.extra_tensors, extra_metadata=metadata)

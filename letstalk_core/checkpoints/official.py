"""Importer for checkpoints written by the authors' LetsTalk training code.

This is the one place where the authors' names appear (their state-dict keys: ``x_embedder``,
``cross_attn``, ``mlp.inverted_conv``, ``audioproj``...). Everything is mapped onto the project's
modules, which are named for what they are. Files are read with ``torch.load(weights_only=True)``,
so a pickle that would run code is refused without running it.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..model import AudioProjection, LetsTalkTransformer
from ..model.configs import HEADS_BY_WIDTH, OFFICIAL_VARIANT_NAMES
from ..model.embeddings import spatial_table, temporal_table
from ..weights import WeightFileError, read_torch_file
from .errors import CheckpointError

# the published code never drops the audio or portrait condition
OFFICIAL_TRAINING = {"source": "official LetsTalk code", "condition_dropout": {"audio": 0.0, "portrait": 0.0}}
# tolerance for the stored sin-cos tables (they are float32 copies of a float64 computation)
_TABLE_TOLERANCE = 1e-5

# (official key pattern, our key pattern); \1 is the block index. Weight reshapes are handled below.
_BLOCK_RULES = [
    ("adaLN_modulation.1.{p}", "modulation.{p}"),
    ("temporal_norm1.{p}", "temporal_norm.{p}"),
    ("temporal_attn.qkv.{p}", "temporal_attn.to_qkv.{p}"),
    ("temporal_attn.proj.{p}", "temporal_attn.to_out.{p}"),
    ("temporal_fc.{p}", "temporal_out.{p}"),
    ("cross_attn.q_proj.{p}", "audio_attn.to_q.{p}"),
    ("cross_attn.k_proj.{p}", "audio_attn.to_k.{p}"),
    ("cross_attn.v_proj.{p}", "audio_attn.to_v.{p}"),
    ("cross_attn.proj.{p}", "audio_attn.to_out.{p}"),
    ("attn.qkv.{p}", "spatial_attn.to_qkv.{p}"),
    ("attn.proj.{p}", "spatial_attn.to_out.{p}"),
    ("mlp.fc1.{p}", "feed_forward.fc_in.{p}"),
    ("mlp.fc2.{p}", "feed_forward.fc_out.{p}"),
    ("mlp.inverted_conv.conv.{p}", "feed_forward.expand.{p}"),
    ("mlp.depth_conv.conv.{p}", "feed_forward.depthwise.{p}"),
    ("mlp.point_conv.conv.{p}", "feed_forward.project.{p}"),
]
_TOP_RULES = [
    ("x_embedder.proj.{p}", "patch_embed.{p}"),
    ("t_embedder.mlp.0.{p}", "timestep_embed.linear_1.{p}"),
    ("t_embedder.mlp.2.{p}", "timestep_embed.linear_2.{p}"),
    ("final_layer.linear.{p}", "final_proj.{p}"),
    ("final_layer.adaLN_modulation.1.{p}", "final_modulation.{p}"),
]
_AUDIO_RULES = [
    ("proj1.{p}", "input_proj.{p}"),
    ("proj2.{p}", "hidden_proj.{p}"),
    ("proj3.{p}", "token_proj.{p}"),
    ("norm.{p}", "norm.{p}"),
]
# official 1x1 convolutions that are Linear layers here
_POINTWISE_CONVS = ("mlp.inverted_conv.conv.weight", "mlp.point_conv.conv.weight")
_POSITION_KEYS = ("pos_embed", "temp_embed", "long_temp_embed")


def _rule_tables():
    official_to_ours: dict[str, str] = {}
    for official, ours in _TOP_RULES:
        for p in ("weight", "bias"):
            official_to_ours[official.format(p=p)] = ours.format(p=p)
    block = {}
    for official, ours in _BLOCK_RULES:
        for p in ("weight", "bias"):
            block[official.format(p=p)] = ours.format(p=p)
    audio = {official.format(p=p): ours.format(p=p) for official, ours in _AUDIO_RULES for p in ("weight", "bias")}
    return official_to_ours, block, audio


_TOP_MAP, _BLOCK_MAP, _AUDIO_MAP = _rule_tables()
_TOP_MAP_REVERSE = {v: k for k, v in _TOP_MAP.items()}
_BLOCK_MAP_REVERSE = {v: k for k, v in _BLOCK_MAP.items()}
_AUDIO_MAP_REVERSE = {v: k for k, v in _AUDIO_MAP.items()}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def official_key_to_ours(key: str) -> str | None:
    """Our transformer key for an official one; None for the fixed position tables (computed here)."""
    if key in _POSITION_KEYS:
        return None
    if key in _TOP_MAP:
        return _TOP_MAP[key]
    match = _BLOCK_KEY.match(key)
    if match and match.group(2) in _BLOCK_MAP:
        return f"blocks.{match.group(1)}.{_BLOCK_MAP[match.group(2)]}"
    raise KeyError(key)


def _is_pointwise(key: str) -> bool:
    return any(key.endswith(suffix) for suffix in _POINTWISE_CONVS)


def transformer_state_from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official transformer state dict onto our keys (position tables are dropped; check them
    with ``check_position_tables``). Raises KeyError naming an official key with no counterpart."""
    ours = {}
    for key, tensor in state.items():
        target = official_key_to_ours(key)
        if target is None:
            continue
        if _is_pointwise(key):
            tensor = tensor.reshape(tensor.shape[0], tensor.shape[1])  # [out, in, 1, 1] -> [out, in]
        ours[target] = tensor
    return ours


def transformer_state_to_official(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """Map our transformer state dict to the official keys, adding the position tables the official
    code stores (at the trained ``sample_size`` and ``frames_per_clip`` + ``memory_frames``)."""
    official: dict[str, torch.Tensor] = {}
    hidden = config["hidden_size"]
    grid = config["sample_size"] // config["patch_size"]
    official["pos_embed"] = spatial_table(hidden, grid, grid).float()[None]  # [1, N, D]
    if config["variant"] == "vdt":
        official["temp_embed"] = temporal_table(hidden, config["frames_per_clip"]).float()[None]  # [1, F, D]
    else:
        length = config["frames_per_clip"] + config["memory_frames"]
        official["long_temp_embed"] = temporal_table(hidden, length).float()[None]  # [1, K+F, D]
    for key, tensor in state.items():
        if key in _TOP_MAP_REVERSE:
            target = _TOP_MAP_REVERSE[key]
        else:
            match = _BLOCK_KEY.match(key)
            if not match or match.group(2) not in _BLOCK_MAP_REVERSE:
                raise KeyError(key)
            target = f"blocks.{match.group(1)}.{_BLOCK_MAP_REVERSE[match.group(2)]}"
        if _is_pointwise(target):
            tensor = tensor.reshape(*tensor.shape, 1, 1)  # [out, in] -> [out, in, 1, 1]
        official[target] = tensor
    return official


def audio_state_from_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the official audio projection's keys onto ours (unknown keys pass through unchanged, so that
    the shape check reports them)."""
    return {_AUDIO_MAP.get(key, key): tensor for key, tensor in state.items()}


# ---- configuration inferred from the tensors ----------------------------------------------------
def infer_transformer_config(
    state: dict[str, torch.Tensor],
    *,
    source: str,
    num_heads: int | None = None,
    memory_frames: int | None = None,
    frames_per_clip: int | None = None,
) -> dict:
    """Constructor arguments of ``LetsTalkTransformer`` read off an official state dict."""
    for required in ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight",
                     "blocks.0.cross_attn.k_proj.weight"):
        if required not in state:
            raise CheckpointError(f"{source}: the state dict has no {required!r}; it is not a LetsTalk transformer")
    patch_weight = state["x_embedder.proj.weight"]  # [D, C, p, p]
    hidden, in_channels, patch = patch_weight.shape[0], patch_weight.shape[1], patch_weight.shape[2]
    if "long_temp_embed" in state:
        variant = "lite" if "blocks.0.mlp.inverted_conv.conv.weight" in state else "vdt_long"
        table_length = state["long_temp_embed"].shape[1]
    elif "temp_embed" in state:
        variant = "vdt"
        table_length = state["temp_embed"].shape[1]
    else:
        raise CheckpointError(f"{source}: the state dict has neither 'temp_embed' nor 'long_temp_embed'; "
                              "it is not a LetsTalk transformer")
    depth = len({int(m.group(1)) for key in state if (m := _BLOCK_KEY.match(key))})
    tokens = state["pos_embed"].shape[1]
    grid = round(tokens ** 0.5)
    if grid * grid != tokens:
        raise CheckpointError(f"{source}: pos_embed has {tokens} positions, not a square grid")
    out_features = state["final_layer.linear.weight"].shape[0]
    out_channels = out_features // (patch * patch)
    if out_channels not in (in_channels, 2 * in_channels) or out_channels * patch * patch != out_features:
        raise CheckpointError(
            f"{source}: final_layer.linear has {out_features} outputs; expected patch^2 x (1 or 2) x "
            f"{in_channels} channels = {patch * patch * in_channels} or {2 * patch * patch * in_channels}")
    feed_forward_key = "blocks.0.mlp.inverted_conv.conv.weight" if variant == "lite" else "blocks.0.mlp.fc1.weight"
    if feed_forward_key not in state:
        raise CheckpointError(f"{source}: missing key {feed_forward_key!r}, which the "
                              f"{OFFICIAL_VARIANT_NAMES[variant]} feed-forward needs")
    hidden_ff = state[feed_forward_key].shape[0] // (2 if variant == "lite" else 1)

    if num_heads is None:
        if hidden not in HEADS_BY_WIDTH:
            raise CheckpointError(
                f"{source}: hidden width {hidden} is not an official size ({', '.join(map(str, HEADS_BY_WIDTH))}), "
                "so the number of attention heads cannot be inferred from the tensors; pass num_heads=... (--num-heads on the command line)")
        num_heads = HEADS_BY_WIDTH[hidden]
    if variant == "vdt":
        if memory_frames:
            raise CheckpointError(f"{source}: a VDTcat checkpoint has no memory frames; got memory_frames={memory_frames}")
        if frames_per_clip is not None and frames_per_clip != table_length:
            raise CheckpointError(f"{source}: temp_embed covers {table_length} frames, not frames_per_clip={frames_per_clip}")
        memory_frames, frames_per_clip = 0, table_length
    else:
        if memory_frames is None:
            memory_frames = table_length - frames_per_clip if frames_per_clip is not None else 2
        if frames_per_clip is None:
            frames_per_clip = table_length - memory_frames
        if memory_frames < 0 or frames_per_clip <= 0 or memory_frames + frames_per_clip != table_length:
            raise CheckpointError(
                f"{source}: long_temp_embed covers {table_length} frames, which must equal memory_frames "
                f"({memory_frames}) + frames_per_clip ({frames_per_clip})")
    return {
        "variant": variant,
        "in_channels": in_channels,
        "patch_size": patch,
        "hidden_size": hidden,
        "depth": depth,
        "num_heads": num_heads,
        "mlp_ratio": hidden_ff / hidden,
        "audio_dim": state["blocks.0.cross_attn.k_proj.weight"].shape[1],
        "sample_size": grid * patch,
        "frames_per_clip": frames_per_clip,
        "memory_frames": memory_frames,
        "learn_sigma": out_channels == 2 * in_channels,
    }


def infer_audio_projection_config(state: dict[str, torch.Tensor], *, source: str, window_size: int = 5) -> dict:
    for required in ("proj1.weight", "proj2.weight", "proj3.weight", "norm.weight"):
        if required not in state:
            raise CheckpointError(f"{source}: the audio projection has no {required!r}")
    intermediate, flat_inputs = state["proj1.weight"].shape
    output_dim = state["norm.weight"].shape[0]
    token_features = state["proj3.weight"].shape[0]
    if flat_inputs % window_size or token_features % output_dim:
        raise CheckpointError(
            f"{source}: audio projection shapes proj1 {tuple(state['proj1.weight'].shape)} / proj3 "
            f"{tuple(state['proj3.weight'].shape)} do not fit a window of {window_size} and {output_dim}-wide tokens")
    input_features = flat_inputs // window_size
    # the encoder's layer count and width are only known for the official wav2vec2-base setup
    layers, width = (12, 768) if input_features == 12 * 768 else (None, None)
    return {
        "window_size": window_size,
        "input_features": input_features,
        "num_layers": layers,
        "feature_dim": width,
        "intermediate_dim": intermediate,
        "num_tokens": token_features // output_dim,
        "output_dim": output_dim,
    }


# ---- loading ------------------------------------------------------------------------------------
def read_official_file(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` of an official checkpoint, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        payload = read_torch_file(path, "checkpoint")
    except WeightFileError as error:
        raise CheckpointError(f"{error}; accepted are torch.save files (.ckpt/.pt/.pth) of the authors' code and "
                              ".safetensors files of this project") from None
    if not isinstance(payload, dict) or not all(isinstance(key, str) for key in payload):
        raise CheckpointError(f"{path}: the checkpoint holds a {type(payload).__name__}, not a dict of state dicts")
    return payload


def _state_dict(payload: dict, name: str, path: Path) -> dict[str, torch.Tensor]:
    state = payload[name]
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise CheckpointError(f"{path}: entry {name!r} is not a state dict of tensors")
    if state and all(key.startswith("module.") for key in state):  # saved from a DistributedDataParallel wrapper
        state = {key[len("module."):]: tensor for key, tensor in state.items()}
    return state


def check_state_dict(module: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str, naming=None) -> None:
    """Raise ``CheckpointError`` naming the first missing, unexpected or wrongly shaped key.
    ``naming`` maps one of our keys to the name to print (the official key, for imported files)."""
    naming = naming or (lambda key: key)
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise CheckpointError(f"{source}: missing key {naming(key)!r} (expected shape {tuple(tensor.shape)})")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source}: key {naming(key)!r} has shape {tuple(state[key].shape)}, but the model expects "
                f"{tuple(tensor.shape)}")
    for key in state:
        if key not in expected:
            raise CheckpointError(f"{source}: unexpected key {naming(key)!r}, which the model does not have")


def check_position_tables(state: dict[str, torch.Tensor], config: dict, *, source: str) -> None:
    """The stored sin-cos tables must equal the ones computed for the trained size."""
    reference = transformer_state_to_official({}, config)
    for key in _POSITION_KEYS:
        if key in state:
            stored, computed = state[key].float(), reference[key]
            if stored.shape != computed.shape:
                raise CheckpointError(f"{source}: {key} has shape {tuple(stored.shape)}, expected {tuple(computed.shape)}")
            error = (stored - computed).abs().max().item()
            if error > _TABLE_TOLERANCE:
                raise CheckpointError(
                    f"{source}: {key} differs from the fixed sin-cos table by {error:.3g}; only checkpoints with the "
                    "official fixed position tables are supported")


def _build(module_class, config: dict, state: dict[str, torch.Tensor], *, source: str, naming=None):
    try:
        with torch.device("meta"):
            module = module_class(**config)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None
    check_state_dict(module, state, source=source, naming=naming)
    module.load_state_dict({k: v.contiguous() for k, v in state.items()}, assign=True)
    return module.eval()


def load_official_checkpoint(
    path: str | Path,
    *,
    use_ema: bool = True,
    num_heads: int | None = None,
    memory_frames: int | None = None,
    frames_per_clip: int | None = None,
) -> tuple[LetsTalkTransformer, AudioProjection, dict]:
    """Load a checkpoint of the authors' code (``{"model", "ema", "audioproj"}``).

    Variant, size, patch, channels and depth are read from the tensors; the head count from the official
    size table when the width is 384/768/1024/1152, otherwise from ``num_heads``. ``memory_frames``
    defaults to 2 (official) for the long variants. Returns ``(model, audio_proj, config)`` where
    ``config`` is the transformer's constructor arguments.
    """
    path = Path(path)
    payload = read_official_file(path)
    name = "ema" if use_ema else "model"
    if name not in payload:
        if use_ema:
            raise CheckpointError(f"{path}: use_ema=True but the checkpoint stores no EMA weights "
                                  f"(entries: {', '.join(sorted(payload))}); load it with use_ema=False")
        raise CheckpointError(f"{path}: the checkpoint has no 'model' entry (entries: {', '.join(sorted(payload))})")
    if "audioproj" not in payload:
        raise CheckpointError(f"{path}: the checkpoint has no 'audioproj' entry (entries: {', '.join(sorted(payload))})")
    official = _state_dict(payload, name, path)
    source = f"{path} [{name}]"
    config = infer_transformer_config(official, source=source, num_heads=num_heads, memory_frames=memory_frames,
                                      frames_per_clip=frames_per_clip)
    check_position_tables(official, config, source=source)
    try:
        state = transformer_state_from_official(official)
    except KeyError as error:
        raise CheckpointError(f"{source}: unexpected key {error.args[0]!r}, which "
                              f"{OFFICIAL_VARIANT_NAMES[config['variant']]} does not have") from None
    naming = lambda key: transformer_state_to_official_key(key)  # noqa: E731
    model = _build(LetsTalkTransformer, config, state, source=source, naming=naming)

    audio_official = _state_dict(payload, "audioproj", path)
    audio_source = f"{path} [audioproj]"
    audio_config = infer_audio_projection_config(audio_official, source=audio_source)
    audio_proj = _build(AudioProjection, audio_config, audio_state_from_official(audio_official), source=audio_source,
                        naming=lambda key: _AUDIO_MAP_REVERSE.get(key, key))
    full_config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    return model, audio_proj, full_config


def transformer_state_to_official_key(key: str) -> str:
    """Official name of one of our transformer keys (for messages)."""
    if key in _TOP_MAP_REVERSE:
        return _TOP_MAP_REVERSE[key]
    match = _BLOCK_KEY.match(key)
    if match and match.group(2) in _BLOCK_MAP_REVERSE:
        return f"blocks.{match.group(1)}.{_BLOCK_MAP_REVERSE[match.group(2)]}"
    return key

"""Loading and saving VAEs for LetsTalk, all offline.

:func:`load_vae` takes any of these and works out which it is:

* a diffusers folder (``config.json`` + weights, or a pipeline folder with a ``vae/`` subfolder);
* TAEF2's two published files (``taef2_encoder.pth`` + ``taef2_decoder.pth``): their folder or either file;
* a single ``.safetensors`` (or ``.ckpt``/``.pt``/``.bin``, read with ``weights_only=True``) in
    - the original LDM/CompVis key layout (``encoder.down.0.block.0...``, optionally prefixed
      ``first_stage_model.``), e.g. ``vae-ft-mse-840000-ema-pruned.safetensors``;
    - the diffusers AutoencoderKL key layout (``encoder.down_blocks.0.resnets.0...``);
    - the original MIT-HAN-lab DC-AE layout (``encoder.project_in...``, ``decoder.stages...``) or the
      diffusers AutoencoderDC layout;
    - the diffusers AutoencoderTiny layout (``encoder.layers.0.weight``, ...), TAEF2 among them;
    - this project's own single file, which carries the diffusers config as JSON in the metadata key
      ``config`` (see :func:`save_vae`);
    - a project bundle whose VAE tensors are prefixed ``vae.`` and whose metadata key ``vae_config``
      holds the VAE's diffusers config as JSON (see :func:`vae_bundle_entries`);
* an in-memory state dict (``{name: tensor}``), with the same detection.

The configs that are not stored with the weights are shipped in ``configs/``; for an AutoencoderKL the
block widths, depth and latent channels are read from the tensor shapes, so any LDM-layout KL VAE
loads without a config file. diffusers' own LDM->diffusers key conversion is used
(``diffusers.loaders.single_file_utils``), which is pure tensor renaming and never goes online.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from ..weights import WEIGHT_SUFFIXES, read_weights
from .codecs import LatentCodec, check_latent_channels
from .taef2 import (
    MIDBLOCK_POOL_KEY,
    build_tiny_autoencoder,
    has_midblock_pool,
    is_tiny_autoencoder_state,
    read_taef2_files,
    taef2_files_in,
)

__all__ = [
    "load_vae",
    "save_vae",
    "vae_bundle_entries",
    "load_shipped_config",
    "build_vae",
    "detect_vae_layout",
    "SHIPPED_CONFIGS",
]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SHIPPED_CONFIGS = {
    "sd_vae": "sd_vae_ft_mse.json",
    "dc_ae": "dc_ae_f32c32_sana_1_0.json",
    "demo_vae": "demo_vae.json",
    "demo_vae_f4": "demo_vae_f4.json",
    "taef2": "taef2.json",
}
METADATA_CONFIG_KEY = "config"
# shipped configs that are a variant of a codec kind (same kind of VAE, other layout)
CODEC_KIND_OF_CONFIG = {"demo_vae_f4": "demo_vae"}
BUNDLE_CONFIG_KEY = "vae_config"
BUNDLE_PREFIX = "vae."
_LDM_PREFIXES = ("first_stage_model.", "vae.")

# Layout names returned by detect_vae_layout.
LDM_KL = "ldm_kl"
DIFFUSERS_KL = "diffusers_kl"
ORIGINAL_DC = "original_dc_ae"
DIFFUSERS_DC = "diffusers_dc_ae"
DIFFUSERS_TINY = "diffusers_tiny"

PathOrState = Union[str, os.PathLike, Mapping[str, torch.Tensor]]


def load_shipped_config(kind: str) -> dict:
    """The diffusers config shipped in ``configs/`` for ``"sd_vae"``, ``"dc_ae"``, ``"demo_vae"`` (f8),
    ``"demo_vae_f4"`` (f4: 16x16 latents at 64 px, so that a small face's mouth spans several latents) or
    ``"taef2"`` (AutoencoderTiny with pooled innermost blocks, 32 channels at f8)."""
    if kind not in SHIPPED_CONFIGS:
        raise ValueError(f"kind: expected one of {sorted(SHIPPED_CONFIGS)}, got {kind!r}")
    with open(CONFIG_DIR / SHIPPED_CONFIGS[kind], encoding="utf-8") as f:
        return json.load(f)


def build_vae(config: Mapping[str, Any], *, kind: Optional[str] = None, seed: Optional[int] = None) -> LatentCodec:
    """A freshly initialised VAE from a diffusers config dict (e.g. the demo VAE for the trainer)."""
    if seed is not None:
        torch.manual_seed(seed)
    vae = _make_vae(config)
    return LatentCodec(vae, kind or _default_kind(vae))


def detect_vae_layout(keys) -> str:
    """Which key layout a VAE state dict uses (ldm_kl, diffusers_kl, original_dc_ae, diffusers_dc_ae, diffusers_tiny).

    Raises ValueError naming a few keys when it is none of them.
    """
    keys = set(keys)
    if "encoder.down.0.block.0.conv1.weight" in keys and "decoder.conv_in.weight" in keys:
        return LDM_KL
    if "encoder.down_blocks.0.resnets.0.conv1.weight" in keys and "decoder.conv_in.weight" in keys:
        return DIFFUSERS_KL
    if any(k.startswith("encoder.project_in.") for k in keys) and any(k.startswith("decoder.stages.") for k in keys):
        return ORIGINAL_DC
    if "encoder.conv_in.weight" in keys and "decoder.norm_out.weight" in keys and any(
        k.startswith("encoder.down_blocks.") for k in keys
    ):
        return DIFFUSERS_DC
    if is_tiny_autoencoder_state(keys):
        return DIFFUSERS_TINY
    sample = sorted(keys)[:6]
    raise ValueError(
        "not a VAE state dict this project knows: expected the LDM/CompVis AutoencoderKL layout "
        "('encoder.down.0.block.0.conv1.weight', ...), the diffusers AutoencoderKL layout "
        "('encoder.down_blocks.0.resnets.0.conv1.weight', ...), a DC-AE layout (original "
        "'encoder.project_in.*'/'decoder.stages.*' or diffusers AutoencoderDC) or the diffusers AutoencoderTiny "
        f"layout ('encoder.layers.0.weight', ...: TAEF2); first keys found: {sample}"
    )


# ---------------------------------------------------------------------------------------------- load
def load_vae(
    path_or_state: PathOrState,
    *,
    kind: Optional[str] = None,
    config: Union[None, Mapping[str, Any], str, os.PathLike] = None,
    metadata: Optional[Mapping[str, str]] = None,
    device: Union[str, torch.device] = "cpu",
    dtype: torch.dtype = torch.float32,
    scaling_factor: Optional[float] = None,
    expected_latent_channels: Optional[int] = None,
    chunk_size: int = 8,
) -> LatentCodec:
    """Load a VAE from a folder, a single file or a state dict into a :class:`LatentCodec`.

    Args:
        path_or_state: a diffusers folder, a weights file, or a ``{name: tensor}`` state dict.
        kind: ``"sd_vae"``, ``"dc_ae"`` or ``"demo_vae"``; by default guessed from the weights.
        config: a diffusers config (dict or path to a JSON file) overriding the one found or shipped.
        metadata: safetensors-style metadata for an in-memory state dict (``config``/``vae_config``).
        scaling_factor: override the config's scaling factor.
        expected_latent_channels: refuse a VAE with another latent channel count (e.g. a model's
            ``in_channels``), naming both numbers.
    """
    if kind is not None and kind not in SHIPPED_CONFIGS:
        raise ValueError(f"kind: expected one of {sorted(SHIPPED_CONFIGS)} or None, got {kind!r}")
    explicit_config = _read_config_arg(config)
    source_name = "state dict"

    if isinstance(path_or_state, Mapping):
        state = dict(path_or_state)
        meta = dict(metadata or {})
        vae = _vae_from_state(state, meta, explicit_config, kind, source_name)
    elif isinstance(path_or_state, (str, os.PathLike)):
        path = Path(path_or_state)
        source_name = str(path)
        if not path.exists():
            raise FileNotFoundError(
                f"VAE not found: {path} (expected a diffusers folder or a .safetensors/.ckpt/.pt/.bin file)"
            )
        taef2_files = taef2_files_in(path)
        if taef2_files is not None:
            state = read_taef2_files(*taef2_files)
            vae = _load_by_layout(state, explicit_config, kind, source_name, trust_config=True)
        elif path.is_dir():
            vae = _vae_from_folder(path, explicit_config)
        else:
            state, meta = _read_weights_file(path)
            if metadata:
                meta.update(metadata)
            vae = _vae_from_state(state, meta, explicit_config, kind, source_name)
    else:
        raise TypeError(
            f"path_or_state: expected a path (str/PathLike) or a state dict mapping names to tensors, "
            f"got {type(path_or_state).__name__}"
        )

    codec = LatentCodec(
        vae,
        CODEC_KIND_OF_CONFIG.get(kind, kind) or _default_kind(vae),
        scaling_factor=scaling_factor,
        chunk_size=chunk_size,
    )
    codec.to(device=device, dtype=dtype)
    if expected_latent_channels is not None:
        check_latent_channels(
            codec.latent_channels, expected_latent_channels, vae_name=f"VAE '{source_name}'", model_name="the model checkpoint"
        )
    return codec


def _vae_from_folder(path: Path, explicit_config: Optional[dict]):
    folder = path
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ValueError(
            f"VAE folder {path} has no config.json (nor vae/config.json): expected a diffusers folder "
            f"saved with save_pretrained, or pass a weights file"
        )
    with open(config_file, encoding="utf-8") as f:
        folder_config = json.load(f)
    cfg = {**folder_config, **(explicit_config or {})}
    cls = _vae_class(cfg, where=str(config_file))
    weights = [p for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".bin") and p.is_file()]
    if not weights:
        raise ValueError(f"VAE folder {folder} has a config.json but no .safetensors/.bin weights")
    if explicit_config or cfg.get(MIDBLOCK_POOL_KEY):
        state, _ = _read_weights_file(weights[0])
        return _instantiate(cfg, state, str(folder))
    try:
        return cls.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=True)
    except Exception as err:  # diffusers raises several types; re-raise with the folder named
        raise ValueError(f"could not load the diffusers {cls.__name__} folder {folder}: {err}") from err


def _vae_from_state(state: dict, meta: dict, explicit_config: Optional[dict], kind: Optional[str], source: str):
    _check_state(state, source)
    # A project bundle: VAE tensors under "vae." with the config in metadata "vae_config".
    if BUNDLE_CONFIG_KEY in meta:
        sub = {k[len(BUNDLE_PREFIX):]: v for k, v in state.items() if k.startswith(BUNDLE_PREFIX)}
        if not sub:
            raise ValueError(
                f"{source}: metadata has '{BUNDLE_CONFIG_KEY}' but no tensor is prefixed '{BUNDLE_PREFIX}' "
                f"(a project bundle keeps its VAE weights as 'vae.encoder...', 'vae.decoder...')"
            )
        cfg = {**_parse_json_meta(meta[BUNDLE_CONFIG_KEY], BUNDLE_CONFIG_KEY, source), **(explicit_config or {})}
        return _load_by_layout(sub, cfg, kind, source, trust_config=True)
    if METADATA_CONFIG_KEY in meta and explicit_config is None:
        cfg = _parse_json_meta(meta[METADATA_CONFIG_KEY], METADATA_CONFIG_KEY, source)
        if "_class_name" in cfg:
            return _load_by_layout(_strip_ldm_prefix(state), cfg, kind, source, trust_config=True)
    return _load_by_layout(_strip_ldm_prefix(state), explicit_config, kind, source, trust_config=explicit_config is not None)


def _load_by_layout(state: dict, cfg: Optional[dict], kind: Optional[str], source: str, trust_config: bool):
    from diffusers.loaders.single_file_utils import (
        convert_autoencoder_dc_checkpoint_to_diffusers,
        convert_ldm_vae_checkpoint,
    )

    layout = _detect_with_source(state, source)
    if layout == DIFFUSERS_TINY:
        if kind is not None and kind != "taef2":
            raise ValueError(f"{source}: kind={kind!r} was asked for but the weights are an AutoencoderTiny (TAEF2)")
        full = {**load_shipped_config("taef2"), **(cfg or {})}
        if full.get("_class_name") != "AutoencoderTiny":
            raise ValueError(f"{source}: config says {full['_class_name']} but the weights are an AutoencoderTiny")
        return _instantiate(full, state, source)
    if layout in (LDM_KL, DIFFUSERS_KL):
        if kind == "dc_ae":
            raise ValueError(f"{source}: kind='dc_ae' was asked for but the weights are an AutoencoderKL ({layout})")
        inferred = _infer_kl_config(state, layout)
        base = load_shipped_config("sd_vae" if kind is None or kind == "sd_vae" else kind)
        if cfg is not None and trust_config:
            full = {**base, **inferred, **cfg}
        else:
            full = {**base, **inferred}
        if full.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ValueError(f"{source}: config says {full['_class_name']} but the weights are an AutoencoderKL")
        if layout == LDM_KL:
            state = convert_ldm_vae_checkpoint(state, full)
        return _instantiate(full, state, source)
    # DC-AE
    if kind is not None and kind != "dc_ae":
        raise ValueError(f"{source}: kind={kind!r} was asked for but the weights are a DC-AE ({layout})")
    full = {**load_shipped_config("dc_ae"), **(cfg or {})}
    if full.get("_class_name", "AutoencoderDC") != "AutoencoderDC":
        raise ValueError(f"{source}: config says {full['_class_name']} but the weights are a DC-AE")
    if layout == ORIGINAL_DC:
        state = convert_autoencoder_dc_checkpoint_to_diffusers(dict(state))
    return _instantiate(full, state, source)


def _make_vae(cfg: Mapping[str, Any], where: str = "config"):
    """A randomly initialised VAE of the class and shape a diffusers config names."""
    cls = _vae_class(cfg, where)
    if cls.__name__ == "AutoencoderTiny":
        return build_tiny_autoencoder(cfg)
    return cls.from_config(_strip_private(cfg))


def _instantiate(cfg: dict, state: dict, source: str):
    cls = _vae_class(cfg)
    with torch.device("meta"):
        vae = _make_vae(cfg)
    expected = set(vae.state_dict().keys())
    found = set(state.keys())
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        raise ValueError(
            f"{source}: weights do not fit a {cls.__name__} with config "
            f"{_short_config(cfg)}: {'; '.join(parts)}. Pass config= (a diffusers config dict or JSON path) "
            f"if the VAE has another architecture."
        )
    bad_shapes = [
        (k, tuple(state[k].shape), tuple(v.shape)) for k, v in vae.state_dict().items() if tuple(state[k].shape) != tuple(v.shape)
    ]
    if bad_shapes:
        k, got, want = bad_shapes[0]
        raise ValueError(
            f"{source}: {len(bad_shapes)} tensors have the wrong shape for the {cls.__name__} config "
            f"{_short_config(cfg)}, e.g. '{k}' is {list(got)} but the config needs {list(want)}"
        )
    vae.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True, assign=True)
    still_meta = [n for n, t in list(vae.named_parameters()) + list(vae.named_buffers()) if t.is_meta]
    if still_meta:
        raise ValueError(f"{source}: no weights for {still_meta[:5]} after loading")
    return vae.eval()


def _infer_kl_config(state: dict, layout: str) -> dict:
    """Structural AutoencoderKL config fields read from tensor shapes."""
    if layout == LDM_KL:
        down_re, block_re = re.compile(r"^encoder\.down\.(\d+)\."), re.compile(r"^encoder\.down\.0\.block\.(\d+)\.")
        width_key = "encoder.down.{}.block.0.conv1.weight"
        attn_key, quant_key, post_key = "encoder.mid.attn_1.q.weight", "quant_conv.weight", "post_quant_conv.weight"
    else:
        down_re = re.compile(r"^encoder\.down_blocks\.(\d+)\.")
        block_re = re.compile(r"^encoder\.down_blocks\.0\.resnets\.(\d+)\.")
        width_key = "encoder.down_blocks.{}.resnets.0.conv1.weight"
        attn_key = "encoder.mid_block.attentions.0.to_q.weight"
        quant_key, post_key = "quant_conv.weight", "post_quant_conv.weight"
    levels = sorted({int(m.group(1)) for k in state for m in [down_re.match(k)] if m})
    blocks = sorted({int(m.group(1)) for k in state for m in [block_re.match(k)] if m})
    if not levels or levels != list(range(len(levels))) or not blocks:
        raise ValueError("AutoencoderKL weights have no contiguous encoder down levels / res blocks")
    widths = []
    for i in levels:
        key = width_key.format(i)
        if key not in state:
            raise ValueError(f"AutoencoderKL weights miss '{key}'")
        widths.append(int(state[key].shape[0]))
    return {
        "in_channels": int(state["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(state["decoder.conv_out.weight"].shape[0]),
        "block_out_channels": widths,
        "down_block_types": ["DownEncoderBlock2D"] * len(widths),
        "up_block_types": ["UpDecoderBlock2D"] * len(widths),
        "layers_per_block": len(blocks),
        "latent_channels": int(state["decoder.conv_in.weight"].shape[1]),
        "mid_block_add_attention": attn_key in state,
        "use_quant_conv": quant_key in state,
        "use_post_quant_conv": post_key in state,
    }


# ---------------------------------------------------------------------------------------------- save
def save_vae(codec_or_vae, path: Union[str, os.PathLike]) -> Path:
    """Save a VAE: ``*.safetensors`` -> one file with the config in metadata ``config``; else a diffusers folder.

    The scaling/shift factors of a codec are written into the config, so :func:`load_vae` restores them.
    """
    vae, cfg = _vae_and_config(codec_or_vae)
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
        save_file(tensors, str(path), metadata={METADATA_CONFIG_KEY: json.dumps(cfg), "format": "pt"})
    else:
        if path.exists() and not path.is_dir():
            raise ValueError(f"save_vae: {path} exists and is not a folder (give a folder or a .safetensors path)")
        vae.register_to_config(**{k: cfg[k] for k in ("scaling_factor", "shift_factor", MIDBLOCK_POOL_KEY) if k in cfg})
        vae.save_pretrained(str(path), safe_serialization=True)
    return path


def vae_bundle_entries(codec_or_vae) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors prefixed ``vae.`` and the metadata ``{"vae_config": json}`` to put a VAE inside a project bundle."""
    vae, cfg = _vae_and_config(codec_or_vae)
    tensors = {BUNDLE_PREFIX + k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}
    return tensors, {BUNDLE_CONFIG_KEY: json.dumps(cfg)}


def _vae_and_config(codec_or_vae):
    from diffusers import AutoencoderDC, AutoencoderKL, AutoencoderTiny

    if isinstance(codec_or_vae, LatentCodec):
        vae = codec_or_vae.vae
        cfg = codec_or_vae.config
        cfg["scaling_factor"] = codec_or_vae.scaling_factor
        if codec_or_vae.shift_factor and type(vae).__name__ == "AutoencoderKL":
            cfg["shift_factor"] = codec_or_vae.shift_factor
    elif isinstance(codec_or_vae, (AutoencoderKL, AutoencoderDC, AutoencoderTiny)):
        vae = codec_or_vae
        cfg = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        cfg["_class_name"] = type(vae).__name__
    else:
        raise TypeError(f"expected a LatentCodec, AutoencoderKL, AutoencoderDC or AutoencoderTiny, got {type(codec_or_vae).__name__}")
    if has_midblock_pool(vae):
        cfg[MIDBLOCK_POOL_KEY] = True
    return vae, json.loads(json.dumps(cfg, default=list))


# ---------------------------------------------------------------------------------------------- helpers
def _read_weights_file(path: Path) -> tuple[dict, dict]:
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise ValueError(f"{path}: unsupported VAE file type '{path.suffix}'; expected {', '.join(WEIGHT_SUFFIXES)} "
                         "or a diffusers folder")
    return read_weights(path, "VAE file")


def _check_state(state: dict, source: str) -> None:
    if not state:
        raise ValueError(f"{source}: holds no tensors")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{source}: a VAE state dict maps names to tensors; {len(bad)} entries do not (e.g. {bad[:3]})")


def _strip_ldm_prefix(state: dict) -> dict:
    for prefix in _LDM_PREFIXES:
        if any(k.startswith(prefix + "encoder.") for k in state):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # drop non-VAE extras an LDM checkpoint may carry (loss.*, model_ema.*)
    return {k: v for k, v in state.items() if not k.startswith(("loss.", "model_ema."))}


def _detect_with_source(state: dict, source: str) -> str:
    try:
        return detect_vae_layout(state.keys())
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def _read_config_arg(config) -> Optional[dict]:
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    if isinstance(config, (str, os.PathLike)):
        p = Path(config)
        if not p.is_file():
            raise FileNotFoundError(f"config: VAE config JSON not found: {p}")
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    raise TypeError(f"config: expected a dict or a path to a JSON file, got {type(config).__name__}")


def _parse_json_meta(text: str, key: str, source: str) -> dict:
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: metadata '{key}' is not valid JSON ({err})") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: metadata '{key}' should be a JSON object (a diffusers config), got {type(cfg).__name__}")
    return cfg


def _vae_class(cfg: Mapping[str, Any], where: str = "config"):
    from diffusers import AutoencoderDC, AutoencoderKL, AutoencoderTiny

    name = cfg.get("_class_name", "AutoencoderKL")
    classes = {"AutoencoderKL": AutoencoderKL, "AutoencoderDC": AutoencoderDC, "AutoencoderTiny": AutoencoderTiny}
    if name not in classes:
        raise ValueError(f"{where}: _class_name {name!r} is not a supported VAE; expected one of {sorted(classes)}")
    return classes[name]


def _default_kind(vae) -> str:
    class_name, cfg = type(vae).__name__, vae.config
    if class_name == "AutoencoderDC":
        return "dc_ae"
    if class_name == "AutoencoderTiny":
        return "taef2"
    sd = load_shipped_config("sd_vae")
    same = list(cfg.get("block_out_channels", [])) == sd["block_out_channels"] and cfg.get("latent_channels") == 4
    return "sd_vae" if same else "demo_vae"


def _strip_private(cfg: Mapping[str, Any]) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k != MIDBLOCK_POOL_KEY}


def _short_config(cfg: Mapping[str, Any]) -> str:
    keys = ("block_out_channels", "encoder_block_out_channels", "latent_channels", "layers_per_block")
    return "{" + ", ".join(f"{k}={cfg[k]}" for k in keys if k in cfg) + "}"

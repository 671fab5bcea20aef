"""Model folders of the pack, registered with ComfyUI's ``folder_paths``."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from letstalk_core.encoder_names import NAMED_ENCODERS
from letstalk_core.shipped import DEMO_CHECKPOINT, SHIPPED_MODELS_DIR

LETSTALK_FOLDER = "letstalk"
CHECKPOINT_EXTENSIONS = {".safetensors", ".ckpt", ".pt", ".pth"}


def register_model_folders() -> None:
    """``models/letstalk/`` for LetsTalk checkpoints, then the pack's own ``models/`` folder, where the
    bundled demo model lives (so it is a choice without copying it); ``audio_encoders`` is ComfyUI's own."""
    target = os.path.join(folder_paths.models_dir, LETSTALK_FOLDER)
    if LETSTALK_FOLDER not in folder_paths.folder_names_and_paths:
        folder_paths.folder_names_and_paths[LETSTALK_FOLDER] = ([target], CHECKPOINT_EXTENSIONS)
    elif target not in folder_paths.folder_names_and_paths[LETSTALK_FOLDER][0]:
        folder_paths.add_model_folder_path(LETSTALK_FOLDER, target)
    bundled = str(SHIPPED_MODELS_DIR)
    if bundled not in folder_paths.folder_names_and_paths[LETSTALK_FOLDER][0]:
        folder_paths.add_model_folder_path(LETSTALK_FOLDER, bundled)


def default_checkpoint(choices: list[str]) -> str | None:
    """The bundled demo model when it is a choice (also when a copy of it sits in models/letstalk/)."""
    return DEMO_CHECKPOINT.name if DEMO_CHECKPOINT.name in choices else (choices[0] if choices else None)


def audio_encoder_choices() -> list[str]:
    """The weightless encoders ("mel", "phones", "phones+mel") first, then every weights file under
    ``models/audio_encoders/``.

    A Hugging Face folder shows up as its ``model.safetensors``; the loader opens the folder.
    """
    return list(NAMED_ENCODERS) + folder_paths.get_filename_list("audio_encoders")


def resolve_audio_encoder(name: str) -> str:
    """The path the core loader should open for a choice of :func:`audio_encoder_choices`."""
    if name in NAMED_ENCODERS:
        return name
    path = Path(folder_paths.get_full_path_or_raise("audio_encoders", name))
    if (path.parent / "config.json").is_file() and path.parent != Path(folder_paths.models_dir) / "audio_encoders":
        return str(path.parent)
    return str(path)


def _is_bundled_codec_file(name: str) -> bool:
    """A file in a subfolder of the pack's own ``models/`` (the TAEF2 weights in ``models/taef2/``):
    part of a codec the bundles carry, not a checkpoint to load."""
    path = folder_paths.get_full_path(LETSTALK_FOLDER, name)
    if path is None:
        return False
    pack_models = SHIPPED_MODELS_DIR.resolve()
    resolved = Path(path).resolve()
    return resolved.parent != pack_models and pack_models in resolved.parents


def checkpoint_choices() -> list[str]:
    """LetsTalk checkpoints in ``models/letstalk/`` and the pack's ``models/`` (not its codec subfolders),
    then those in ``models/diffusion_models/``."""
    names = [name for name in folder_paths.get_filename_list(LETSTALK_FOLDER) if not _is_bundled_codec_file(name)]
    for name in folder_paths.get_filename_list("diffusion_models"):
        if name not in names and Path(name).suffix.lower() in CHECKPOINT_EXTENSIONS:
            names.append(name)
    return names


def resolve_checkpoint(name: str) -> str:
    path = folder_paths.get_full_path(LETSTALK_FOLDER, name) or folder_paths.get_full_path("diffusion_models", name)
    if path is None:
        raise FileNotFoundError(f"checkpoint '{name}' is in neither models/letstalk/ nor models/diffusion_models/")
    return path

"""The ComfyUI nodes of ComfyUI-LetsTalk (V3 schema).

Each node adapts ComfyUI types to one ``letstalk_core`` call and back; the work happens in the core.
"""

from __future__ import annotations

import logging

from typing_extensions import override

from comfy_api.latest import ComfyExtension, io

import folder_paths

from . import examples, paths
from .audio import EncodeAudio, LoadLetsTalkAudioEncoder
from .model import LoadLetsTalkModel
from .portrait import PortraitCondition
from .sampler import LetsTalkSampler
from .video import DecodeVideo, DecodeVideoToFile

log = logging.getLogger("letstalk")

NODES: list[type[io.ComfyNode]] = [
    LoadLetsTalkModel,
    LoadLetsTalkAudioEncoder,
    EncodeAudio,
    PortraitCondition,
    LetsTalkSampler,
    DecodeVideo,
    DecodeVideoToFile,
]


class LetsTalkExtension(ComfyExtension):
    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> LetsTalkExtension:
    paths.register_model_folders()
    examples.install_examples(folder_paths.get_input_directory())
    return LetsTalkExtension()

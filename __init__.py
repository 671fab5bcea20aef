"""ComfyUI-LetsTalk: what ComfyUI imports when it loads this folder from custom_nodes/.

The nodes (V3 schema) live in ``nodes/``; the model, audio, sampling and video code they wrap lives in
``letstalk_core/``, a library that does not import ComfyUI. The pack folder is appended to
``sys.path`` (not prepended, so ComfyUI's own ``nodes`` module keeps its name) so that
``import letstalk_core`` resolves to the copy shipped here.
"""

import importlib.util
import os
import sys

_PACK_DIR = os.path.dirname(os.path.abspath(__file__))
if _PACK_DIR not in sys.path:
    sys.path.append(_PACK_DIR)

# Outside ComfyUI (pytest collecting this folder, a plain ``import``) there is no ``comfy_api`` and no
# node to register; inside ComfyUI every import error of the nodes surfaces as usual.
if importlib.util.find_spec("comfy_api") is not None:
    from .nodes import comfy_entrypoint  # noqa: E402

    __all__ = ["comfy_entrypoint"]

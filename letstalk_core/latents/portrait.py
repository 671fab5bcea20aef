"""Portrait conditioning: any picture -> square face crop -> portrait latent, and pasting results back.

The path is ``load_image`` (any input to ``[H, W, 3]`` float 0..1) -> ``detect_face`` (optional MTCNN) ->
``face_crop_box`` / ``center_crop_box`` (a square in original-image pixels) -> ``crop_and_resize``
(``[1, 3, R, R]`` in -1..1) -> ``codec.encode`` (the ``portrait_latent``). :func:`prepare_portrait` and
:func:`encode_portrait` walk the whole path and keep the crop box, so that :func:`paste_back` can put
the generated frames back into the full picture with a feathered edge.

Conventions:

* Transparent images (RGBA, LA, P with transparency) are composited on a plain background,
  ``background="white"`` (default) or ``"black"``, before anything else.
* Crop boxes are ``(x0, y0, x1, y1)`` integer pixel coordinates in the original image, x1/y1 exclusive.
  With ``fit="shift"`` (default) the square is moved (and shrunk if it must be) to lie inside the image;
  with ``fit="pad"`` it keeps its place around the face and the part outside the image is filled by
  repeating the edge pixels, so a box may have negative or too-large coordinates.
* Face detection uses MTCNN from ``facenet-pytorch`` (weights ship in its wheel; install it with
  ``pip install --no-deps facenet-pytorch==2.6.0``). When it is not installed or finds no face,
  ``on_no_face="center"`` takes the largest centred square and logs a warning; ``"error"`` raises.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from ..framing import DEFAULT_CROP_MARGIN
from .codecs import LatentCodec

__all__ = [
    "MIN_PORTRAIT_SIDE",
    "PortraitCrop",
    "FaceDetectionUnavailable",
    "NoFaceFound",
    "MTCNNFaceDetector",
    "load_image",
    "detect_face",
    "face_crop_box",
    "center_crop_box",
    "crop_and_resize",
    "prepare_portrait",
    "encode_portrait",
    "paste_back",
]

logger = logging.getLogger(__name__)

MIN_PORTRAIT_SIDE = 64
CropBox = tuple[int, int, int, int]
FaceBox = tuple[float, float, float, float]
Detector = Callable[[np.ndarray], Sequence[tuple[FaceBox, float]]]
_BACKGROUNDS = {"white": 1.0, "black": 0.0}


class FaceDetectionUnavailable(ImportError):
    """Face detection was asked for but facenet-pytorch is not installed."""


class NoFaceFound(ValueError):
    """No face in a portrait that had to have one (``on_no_face="error"``).

    ``reason`` says what happened ("no face was found"); ``center_crop`` is the
    :class:`PortraitCrop` that ``on_no_face="center"`` would have animated, so a caller can show it."""

    def __init__(self, message: str, *, reason: str, center_crop: "PortraitCrop"):
        super().__init__(message)
        self.reason, self.center_crop = reason, center_crop


@dataclass
class PortraitCrop:
    """A portrait ready for the codec, and where it came from.

    ``pixels`` is ``[1, 3, R, R]`` float32 in -1..1 (codec convention); ``crop_box`` is in original-image
    pixels; ``face_box`` is the detected face (``None`` when the centre crop was used).
    """

    pixels: torch.Tensor
    crop_box: CropBox
    face_box: Optional[FaceBox]
    image_size: tuple[int, int]  # (H, W) of the original image
    resolution: int

    @property
    def face_detected(self) -> bool:
        return self.face_box is not None

    @property
    def comfy_image(self) -> torch.Tensor:
        """The crop in ComfyUI's IMAGE convention ``[1, R, R, 3]`` float 0..1."""
        return self.pixels.add(1.0).mul(0.5).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------------------------- input
def load_image(image: Any, *, background: str = "white", name: str = "image", min_side: Optional[int] = None) -> torch.Tensor:
    """Any picture -> ``[H, W, 3]`` float32 RGB in 0..1.

    Accepts a path, a PIL image (any mode), a numpy array ``[H, W]``, ``[H, W, 1|3|4]`` (uint8, uint16 or
    float 0..1), or a torch tensor ``[H, W, C]`` / ``[1, H, W, C]`` with C in 1, 3, 4 (ComfyUI IMAGE,
    float 0..1, or uint8). Alpha is composited on ``background`` ("white" or "black"); greyscale is
    repeated to RGB. ``min_side`` refuses smaller images, naming ``name`` and the size.
    """
    if background not in _BACKGROUNDS:
        raise ValueError(f"background: expected one of {sorted(_BACKGROUNDS)}, got {background!r}")
    array = _to_float_array(image, name)  # [H, W, C] float32, C in 1..4
    h, w, c = array.shape
    if c == 4 or c == 2:
        colour, alpha = array[..., :-1], array[..., -1:]
        array = colour * alpha + _BACKGROUNDS[background] * (1.0 - alpha)
        c -= 1
    if c == 1:
        array = np.repeat(array, 3, axis=2)
    rgb = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))  # [H, W, 3]
    if min_side is not None and min(h, w) < min_side:
        raise ValueError(
            f"{name}: image is {w}x{h} (width x height); a portrait needs at least {min_side} pixels on each side"
        )
    return rgb


def _to_float_array(image: Any, name: str) -> np.ndarray:
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"{name}: image file not found: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except Exception as err:
            raise ValueError(f"{name}: could not read {path} as an image ({err})") from err
    if isinstance(image, Image.Image):
        return _pil_to_array(image)
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 4:
            if tensor.shape[0] != 1:
                raise ValueError(
                    f"{name}: expected one image ([1, H, W, C] or [H, W, C]), got a batch of {tensor.shape[0]} "
                    f"{list(tensor.shape)}; pick one frame first"
                )
            tensor = tensor[0]
        if tensor.dim() == 2:
            tensor = tensor.unsqueeze(-1)
        if tensor.dim() != 3 or tensor.shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"{name}: expected a tensor [H, W, C] or [1, H, W, C] with C in 1, 3 or 4 (ComfyUI IMAGE), "
                f"got {list(image.shape)}"
            )
        image = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    if isinstance(image, np.ndarray):
        return _numpy_to_float(image, name)
    raise TypeError(
        f"{name}: expected a path, PIL image, numpy array [H, W(, C)] or torch tensor [(1,) H, W, C], "
        f"got {type(image).__name__}"
    )


def _pil_to_array(img) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return (np.asarray(img, dtype=np.float32) / 65535.0).clip(0.0, 1.0)[..., None]
    if mode == "F":
        return _numpy_to_float(np.asarray(img, dtype=np.float32), "image")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info)
    if mode == "L":
        return np.asarray(img, dtype=np.float32)[..., None] / 255.0
    converted = img.convert("RGBA" if has_alpha else "RGB")
    return np.asarray(converted, dtype=np.float32) / 255.0


def _numpy_to_float(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{name}: expected an array [H, W] or [H, W, C] with C in 1..4 (HWC order), got shape {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name}: image is empty, shape {list(array.shape)}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        out = array.astype(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{name}: image holds NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(
                f"{name}: float image values must lie in 0..1, found {lo:.3g}..{hi:.3g} "
                f"(pass uint8 for 0..255 data)"
            )
        return out.clip(0.0, 1.0)
    raise ValueError(f"{name}: unsupported image dtype {array.dtype}; expected uint8, uint16, bool or float in 0..1")


# ---------------------------------------------------------------------------------------------- faces
class MTCNNFaceDetector:
    """MTCNN (facenet-pytorch) as a callable ``uint8 [H, W, 3] -> [((x0, y0, x1, y1), probability), ...]``."""

    def __init__(self, device: Union[str, torch.device] = "cpu", min_face_size: int = 20) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError as err:
            raise FaceDetectionUnavailable(
                "face detection needs facenet-pytorch; install it with "
                "`pip install --no-deps facenet-pytorch==2.6.0` (its weights ship in the wheel)"
            ) from err
        self._mtcnn = MTCNN(keep_all=True, device=torch.device(device), min_face_size=min_face_size)

    def __call__(self, image_uint8: np.ndarray) -> list[tuple[FaceBox, float]]:
        return [(box, prob) for box, prob, _ in self.detect_with_landmarks(image_uint8)]

    def detect_with_landmarks(self, image_uint8: np.ndarray) -> list[tuple[FaceBox, float, np.ndarray]]:
        """Faces with MTCNN's five landmarks ``[5, 2]`` (x, y): left eye, right eye, nose, mouth corners."""
        boxes, probs, points = self._mtcnn.detect(image_uint8, landmarks=True)
        if boxes is None:
            return []
        return [
            (tuple(float(v) for v in box), float(prob), np.asarray(landmarks, dtype=np.float64))
            for box, prob, landmarks in zip(np.asarray(boxes, dtype=np.float64), np.asarray(probs, dtype=np.float64),
                                            points)
        ]


_DETECTOR_CACHE: dict[str, MTCNNFaceDetector] = {}


def _resolve_detector(detector: Union[str, Detector, None]) -> Optional[Detector]:
    if detector is None or detector == "none":
        return None
    if detector == "mtcnn":
        if "mtcnn" not in _DETECTOR_CACHE:
            _DETECTOR_CACHE["mtcnn"] = MTCNNFaceDetector()
        return _DETECTOR_CACHE["mtcnn"]
    if callable(detector):
        return detector
    raise ValueError(f"detector: expected 'mtcnn', 'none', None or a callable, got {detector!r}")


def detect_face(
    image: torch.Tensor, *, detector: Union[str, Detector, None] = "mtcnn", min_probability: float = 0.9
) -> Optional[FaceBox]:
    """The largest face in ``image`` ``[H, W, 3]`` (0..1) with probability >= ``min_probability``, or None.

    Raises :class:`FaceDetectionUnavailable` when ``detector="mtcnn"`` and facenet-pytorch is missing.
    """
    face = detect_face_landmarks(image, detector=detector, min_probability=min_probability)
    return None if face is None else face[0]


def detect_face_landmarks(
    image: torch.Tensor, *, detector: Union[str, Detector, None] = "mtcnn", min_probability: float = 0.9
) -> Optional[tuple[FaceBox, Optional[np.ndarray]]]:
    """The largest face in ``image`` ``[H, W, 3]`` (0..1) and its five landmarks ``[5, 2]`` (left eye, right
    eye, nose, left and right mouth corner; None from a detector that gives boxes only), or None."""
    found = _resolve_detector(detector)
    if found is None:
        return None
    image_uint8 = (image.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()  # [H, W, 3]
    if hasattr(found, "detect_with_landmarks"):
        faces = list(found.detect_with_landmarks(image_uint8))
    else:
        faces = [(box, p, None) for box, p in found(image_uint8)]
    faces = [f for f in faces if f[1] >= min_probability and f[0][2] > f[0][0] and f[0][3] > f[0][1]]
    if not faces:
        return None
    box, _, landmarks = max(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
    return box, landmarks


def mouth_box_in_crop(landmarks: np.ndarray, crop_box: CropBox) -> tuple[float, float, float, float]:
    """The mouth's box as fractions ``(top, bottom, left, right)`` of a square crop, from MTCNN's landmarks
    ``[..., 5, 2]`` (several frames' are reduced by their median).

    Anchored on the mouth corners: 1.5x the corner distance wide, from 0.35x above the corners' line to 0.65x
    below it (an open jaw drops the lower lip by about half the mouth's width), clipped to the crop.
    """
    points = np.median(np.asarray(landmarks, dtype=np.float64).reshape(-1, 5, 2), axis=0)  # [5, 2]
    (lx, ly), (rx, ry) = points[3], points[4]
    width = max(float(np.hypot(rx - lx, ry - ly)), 1.0)
    cx, cy = (lx + rx) / 2.0, (ly + ry) / 2.0
    x0, y0, x1, y1 = crop_box
    side = float(x1 - x0)

    def fraction(value: float, origin: float) -> float:
        return min(max((value - origin) / side, 0.0), 1.0)

    return (fraction(cy - 0.35 * width, y0), fraction(cy + 0.65 * width, y0),
            fraction(cx - 0.75 * width, x0), fraction(cx + 0.75 * width, x0))


# ---------------------------------------------------------------------------------------------- boxes
def center_crop_box(image_size: tuple[int, int]) -> CropBox:
    """The largest centred square inside an image of ``(H, W)``."""
    h, w = image_size
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return (x0, y0, x0 + side, y0 + side)


def face_crop_box(face_box: FaceBox, image_size: tuple[int, int], *, margin: float = DEFAULT_CROP_MARGIN,
                  fit: str = "shift") -> CropBox:
    """A square around ``face_box`` whose side is ``max(face w, face h) * (1 + 2 * margin)``.

    ``fit="shift"`` moves (and if needed shrinks) the square to lie inside the image; ``fit="pad"`` keeps
    it centred on the face even where it leaves the image (``crop_and_resize`` pads those parts).
    """
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin: expected a number >= 0 (fraction of the face size added on each side), got {margin!r}")
    if fit not in ("shift", "pad"):
        raise ValueError(f"fit: expected 'shift' or 'pad', got {fit!r}")
    h, w = image_size
    fx0, fy0, fx1, fy1 = face_box
    cx, cy = (fx0 + fx1) / 2.0, (fy0 + fy1) / 2.0
    side = max(1, math.floor(max(fx1 - fx0, fy1 - fy0) * (1.0 + 2.0 * margin) + 0.5))
    if fit == "shift":
        side = min(side, h, w)
    x0 = math.floor(cx - side / 2.0 + 0.5)  # round half up, so boxes do not jitter with banker's rounding
    y0 = math.floor(cy - side / 2.0 + 0.5)
    if fit == "shift":
        x0 = min(max(x0, 0), w - side)
        y0 = min(max(y0, 0), h - side)
    return (x0, y0, x0 + side, y0 + side)


def crop_and_resize(image: torch.Tensor, crop_box: CropBox, resolution: int) -> torch.Tensor:
    """Crop ``image`` ``[H, W, 3]`` (0..1) to ``crop_box`` (edge-padded outside) -> ``[1, 3, R, R]`` in -1..1."""
    _check_resolution(resolution)
    h, w, _ = image.shape
    x0, y0, x1, y1 = crop_box
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop_box: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {crop_box}")
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 <= ix0 or iy1 <= iy0:
        raise ValueError(f"crop_box {crop_box} does not overlap the {w}x{h} image")
    region = image[iy0:iy1, ix0:ix1].permute(2, 0, 1).unsqueeze(0)  # [1, 3, h', w']
    pad = (ix0 - x0, x1 - ix1, iy0 - y0, y1 - iy1)  # left, right, top, bottom
    if any(pad):
        region = F.pad(region, pad, mode="replicate")
    resized = _resize(region, resolution, resolution)  # [1, 3, R, R]
    return resized.clamp(0.0, 1.0).mul(2.0).sub(1.0)


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if x.shape[-2:] == (height, width):
        return x.clone()
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)


def _check_resolution(resolution: int) -> None:
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution: expected an integer side length in pixels (>= 8), got {resolution!r}")


# ---------------------------------------------------------------------------------------------- pipeline
def prepare_portrait(
    image: Any,
    resolution: int,
    *,
    margin: float = DEFAULT_CROP_MARGIN,
    on_no_face: str = "center",
    detector: Union[str, Detector, None] = "mtcnn",
    fit: str = "shift",
    background: str = "white",
    min_probability: float = 0.9,
    name: str = "portrait",
) -> PortraitCrop:
    """Any picture -> a square face crop at ``resolution`` with its crop box (see the module docstring).

    Args:
        image: anything :func:`load_image` takes; refused when a side is under 64 pixels.
        resolution: side of the square crop in pixels (the model's resolution).
        margin: fraction of the face size added on every side of the face box (0.5 -> twice the face).
        on_no_face: "center" (largest centred square, logged warning) or "error", used when no face is
            found or face detection is not installed. ``detector="none"`` (or None) skips detection and
            takes the centre square on purpose, without a warning or an error.
        detector: "mtcnn", "none"/None, or a callable ``uint8 [H, W, 3] -> [((x0, y0, x1, y1), prob), ...]``.
        fit: "shift" or "pad", see :func:`face_crop_box`.
        background: "white" or "black", what transparent pixels are composited on.
    """
    if on_no_face not in ("center", "error"):
        raise ValueError(f"on_no_face: expected 'center' or 'error', got {on_no_face!r}")
    _check_resolution(resolution)
    rgb = load_image(image, background=background, name=name, min_side=MIN_PORTRAIT_SIDE)  # [H, W, 3]
    h, w, _ = rgb.shape
    try:
        face_box = detect_face(rgb, detector=detector, min_probability=min_probability)
        reason = "no face was found"
    except FaceDetectionUnavailable as err:
        if on_no_face == "error":
            raise
        face_box, reason = None, f"face detection is not available ({err})"
    if detector is None or detector == "none":
        reason = "face detection is switched off (detector='none')"
    if face_box is None:
        crop_box = center_crop_box((h, w))
        center = PortraitCrop(pixels=crop_and_resize(rgb, crop_box, resolution), crop_box=crop_box, face_box=None,
                              image_size=(h, w), resolution=resolution)
        if on_no_face == "error" and not (detector is None or detector == "none"):
            raise NoFaceFound(f"{name}: {reason} in the {w}x{h} image; pass a clearer frontal portrait or "
                              "on_no_face='center'", reason=reason, center_crop=center)
        if detector is not None and detector != "none":
            logger.warning("%s: %s in the %dx%d image; using the centre square crop", name, reason, w, h)
        return center
    crop_box = face_crop_box(face_box, (h, w), margin=margin, fit=fit)
    pixels = crop_and_resize(rgb, crop_box, resolution)  # [1, 3, R, R]
    return PortraitCrop(pixels=pixels, crop_box=crop_box, face_box=face_box, image_size=(h, w), resolution=resolution)


def encode_portrait(codec: LatentCodec, image: Any, resolution: int, **kwargs: Any) -> tuple[torch.Tensor, PortraitCrop]:
    """Any picture -> ``(portrait_latent [1, C, R/f, R/f], PortraitCrop)``; kwargs go to :func:`prepare_portrait`.
    ``codec``: a :class:`LatentCodec`, or any codec with its ``latent_size`` and ``encode`` (the ComfyUI
    nodes' adapter of a native VAE)."""
    if not isinstance(codec, LatentCodec) and not (hasattr(codec, "latent_size") and hasattr(codec, "encode")):
        raise TypeError(f"codec: expected a LatentCodec (see load_vae), got {type(codec).__name__}")
    codec.latent_size(resolution, resolution)  # refuses a resolution the VAE cannot take
    crop = prepare_portrait(image, resolution, **kwargs)
    portrait_latent = codec.encode(crop.pixels)  # [1, C, h, w]
    return portrait_latent, crop


# ---------------------------------------------------------------------------------------------- paste back
def paste_back(
    frames: torch.Tensor,
    original_image: Any,
    crop_box: Union[CropBox, PortraitCrop],
    *,
    feather: Optional[int] = None,
    background: str = "white",
) -> torch.Tensor:
    """Put generated frames back into the full picture, blended in with a soft edge.

    Args:
        frames: ``[N, h, w, 3]`` float 0..1 (ComfyUI IMAGE; use ``images_to_comfy`` on codec output).
        original_image: the picture the crop came from (any input :func:`load_image` takes).
        crop_box: ``(x0, y0, x1, y1)`` from :func:`prepare_portrait` (or the ``PortraitCrop`` itself).
        feather: width in pixels of the soft edge, inside the box, on the sides of the box that lie
            inside the image (sides on the image border are pasted hard); the weight rises smoothly
            (smoothstep) across it, so no edge of the box shows. None: a sixth of the box's shorter
            side. 0 pastes a hard square.
    Returns:
        ``[N, H, W, 3]`` float32 0..1 at the original size; pixels outside the box are the original's.
    """
    if isinstance(crop_box, PortraitCrop):
        crop_box = crop_box.crop_box
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3 or not frames.is_floating_point():
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames: expected a float tensor [N, h, w, 3] with values in 0..1 (ComfyUI IMAGE), got {shape}")
    if len(tuple(crop_box)) != 4:
        raise ValueError(f"crop_box: expected (x0, y0, x1, y1), got {crop_box!r}")
    x0, y0, x1, y1 = (int(v) for v in crop_box)
    original = load_image(original_image, background=background, name="original_image")  # [H, W, 3]
    h, w, _ = original.shape
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop_box: expected (x0, y0, x1, y1) with x1 > x0 and y1 > y0, got {crop_box}")
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if ix1 <= ix0 or iy1 <= iy0:
        raise ValueError(f"crop_box {crop_box} does not overlap original_image of {w}x{h}; was it cropped from another image?")
    box_w, box_h = x1 - x0, y1 - y0
    if feather is None:
        feather = max(1, min(box_w, box_h) // 6)
    if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0 or 2 * feather > min(box_w, box_h):
        raise ValueError(f"feather: expected an integer 0..{min(box_w, box_h) // 2} (half the crop side), got {feather!r}")

    resized = _resize(frames.float().permute(0, 3, 1, 2), box_h, box_w).clamp(0.0, 1.0)  # [N, 3, box_h, box_w]
    resized = resized[:, :, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0].permute(0, 2, 3, 1)  # [N, h', w', 3]
    mask = _feather_mask(box_h, box_w, feather, soft=(x0 > 0, y0 > 0, x1 < w, y1 < h))  # [box_h, box_w]
    mask = mask[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0, None]  # [h', w', 1]

    out = original.unsqueeze(0).repeat(frames.shape[0], 1, 1, 1)  # [N, H, W, 3]
    region = out[:, iy0:iy1, ix0:ix1]
    out[:, iy0:iy1, ix0:ix1] = resized * mask + region * (1.0 - mask)
    return out


def _feather_mask(height: int, width: int, feather: int, soft: tuple[bool, bool, bool, bool]) -> torch.Tensor:
    """1 inside, ramping to ~0 over ``feather`` pixels at the sides flagged in ``soft`` (left, top, right, bottom)."""
    if feather == 0:
        return torch.ones(height, width)
    left, top, right, bottom = soft

    def ramp(n: int, soft_start: bool, soft_end: bool) -> torch.Tensor:
        pos = torch.arange(n, dtype=torch.float32) + 0.5  # pixel centres
        weight = torch.ones(n)
        if soft_start:
            weight = torch.minimum(weight, (pos / feather).clamp(0, 1))
        if soft_end:
            weight = torch.minimum(weight, ((n - pos) / feather).clamp(0, 1))
        return weight

    wx = ramp(width, left, right)  # [W]
    wy = ramp(height, top, bottom)  # [H]
    weight = torch.minimum(wy[:, None], wx[None, :])  # [H, W], linear ramps
    return weight * weight * (3.0 - 2.0 * weight)  # smoothstep: no kink where the ramp starts or ends

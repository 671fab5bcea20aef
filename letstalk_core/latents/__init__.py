"""Latent codecs (SD VAE, DC-AE, the demo VAE, TAEF2) and portrait conditioning.

``load_vae(path_or_state)`` gives a :class:`LatentCodec` with ``encode(images) -> latents`` and
``decode(latents) -> images`` (scale and shift inside; images ``[N, 3, H, W]`` in -1..1);
``encode_portrait(codec, image, resolution)`` turns any picture into a ``portrait_latent`` and keeps
the crop box for ``paste_back``.
"""

from .codecs import LatentCodec, check_latent_channels, config_downscale_factor, images_from_comfy, images_to_comfy
from .loading import (
    SHIPPED_CONFIGS,
    build_vae,
    detect_vae_layout,
    load_shipped_config,
    load_vae,
    save_vae,
    vae_bundle_entries,
)
from .portrait import (
    MIN_PORTRAIT_SIDE,
    FaceDetectionUnavailable,
    MTCNNFaceDetector,
    NoFaceFound,
    PortraitCrop,
    center_crop_box,
    crop_and_resize,
    detect_face,
    detect_face_landmarks,
    encode_portrait,
    face_crop_box,
    load_image,
    mouth_box_in_crop,
    paste_back,
    prepare_portrait,
)

__all__ = [
    "LatentCodec",
    "check_latent_channels",
    "images_from_comfy",
    "images_to_comfy",
    "SHIPPED_CONFIGS",
    "build_vae",
    "detect_vae_layout",
    "load_shipped_config",
    "config_downscale_factor",
    "load_vae",
    "save_vae",
    "vae_bundle_entries",
    "MIN_PORTRAIT_SIDE",
    "FaceDetectionUnavailable",
    "MTCNNFaceDetector",
    "NoFaceFound",
    "PortraitCrop",
    "center_crop_box",
    "crop_and_resize",
    "detect_face",
    "detect_face_landmarks",
    "encode_portrait",
    "face_crop_box",
    "load_image",
    "mouth_box_in_crop",
    "paste_back",
    "prepare_portrait",
]

"""PortraitCondition: native IMAGE -> face crop -> portrait latent (LETSTALK_PORTRAIT)."""

from __future__ import annotations

import logging

import torch
from PIL import Image

import comfy.utils
from comfy.cli_args import args
from comfy_api.latest import io
from server import PromptServer

from letstalk_core.latents import FaceDetectionUnavailable, NoFaceFound
from letstalk_core.pipeline import check_codec, condition_portrait, latent_scaling_factor

from .comfy_vae import ComfyVAECodec
from .managed import load_to_device
from .model import LoadedLetsTalk
from .socket_types import LetsTalkModel, LetsTalkPortrait

log = logging.getLogger("letstalk")


def codec_for(model: LoadedLetsTalk, vae) -> object:
    """The native VAE when one is wired in, else the checkpoint's own; checked against the model."""
    if vae is not None:
        codec = ComfyVAECodec(vae, latent_scaling_factor(model.checkpoint))
    elif model.own_vae is not None:
        codec = model.own_vae
    else:
        raise ValueError(f"vae: checkpoint '{model.name}' carries no VAE; wire one in from Load VAE "
                         "(SD vae-ft-mse-840000-ema-pruned for the vdt variants, DC-AE f32c32 for lite)")
    check_codec(model.checkpoint, codec, what="vae: the VAE")
    return codec


STOP, CENTER = "error", "center crop"  # the if_no_face choices, as the node shows them


def show_on_node(crop: torch.Tensor) -> None:
    """Show a crop (ComfyUI IMAGE ``[1, R, R, 3]`` 0..1) on the running node, as a sampler's preview is shown."""
    pixels = crop[0].mul(255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    comfy.utils.ProgressBar(1).update_absolute(1, 1, ("JPEG", Image.fromarray(pixels), args.preview_size))


class PortraitCondition(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LetsTalkPortraitCondition",
            display_name="LetsTalk Portrait Condition",
            category="LetsTalk",
            description="Crops the face from a portrait, resizes it to the model's resolution and encodes it.",
            inputs=[
                io.Image.Input("image", tooltip="The portrait (first image of the batch is used); any size, "
                                                "at least 64 px on a side."),
                LetsTalkModel.Input("letstalk_model", tooltip="From Load LetsTalk Model: sets the resolution."),
                io.Boolean.Input("crop_face", default=True,
                                 tooltip="Crop a square around the detected face (MTCNN, when facenet-pytorch is "
                                         "installed); off: the centre square."),
                io.Float.Input("margin", default=-1.0, min=-1.0, max=2.0, step=0.05,
                               tooltip="Room around the face, as a fraction of its size on every side: more "
                                       "shows more hair and shoulders, less a closer face. -1: as the model's "
                                       "training faces were framed (the checkpoint's, else 0.5)."),
                io.Combo.Input("if_no_face", options=[STOP, CENTER], default=STOP,
                               tooltip="What to do when no face is found: stop before sampling, showing on this "
                                       "node the square that would be animated, or animate the centre square "
                                       "anyway (with a warning on this node and in the log)."),
                io.Vae.Input("vae", optional=True,
                             tooltip="A VAE from Load VAE; leave empty to use the checkpoint's own."),
            ],
            hidden=[io.Hidden.unique_id],
            outputs=[
                LetsTalkPortrait.Output(display_name="portrait", tooltip="The face, ready for LetsTalk Sampler."),
                io.Image.Output(display_name="crop",
                                tooltip="The square the model animates: look at it with Preview Image to check "
                                        "the face was found and framed well."),
            ],
        )

    @classmethod
    def execute(cls, image, letstalk_model, crop_face, margin, if_no_face, vae=None) -> io.NodeOutput:
        codec = codec_for(letstalk_model, vae)
        load_to_device(codec)
        if if_no_face not in (STOP, CENTER):
            raise ValueError(f"if_no_face: expected '{STOP}' or '{CENTER}', got {if_no_face!r}")
        try:
            portrait = condition_portrait(letstalk_model.checkpoint, codec, image[:1, :, :, :3].float(),
                                          crop=crop_face, margin=None if margin < 0 else margin,
                                          on_no_face="error" if if_no_face == STOP else "center", name="image")
        except NoFaceFound as error:
            show_on_node(error.center_crop.comfy_image)
            height, width = error.center_crop.image_size
            raise ValueError(f"LetsTalk Portrait Condition: {error.reason} in the {width}x{height} image, so nothing "
                             f"was sampled. To animate its centre square instead (shown on this node), set "
                             f"if_no_face to '{CENTER}'; or load a clearer portrait with one frontal face.") from error
        except FaceDetectionUnavailable as error:
            raise ValueError(f"LetsTalk Portrait Condition: {error}, so no face can be found. Restart ComfyUI "
                             f"after installing it, or set if_no_face to '{CENTER}' to animate the centre square "
                             "of the image.") from error
        if crop_face and not portrait.crop.face_detected:
            warning = "LetsTalk: no face found in the image, so its centre square is animated (see the crop output)"
            log.warning(warning)
            PromptServer.instance.send_progress_text(warning, cls.hidden.unique_id)
        return io.NodeOutput(portrait, portrait.crop.comfy_image)  # a core PortraitConditioning

"""Portrait conditioning: image inputs, face/centre crops, the portrait latent, and paste-back."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from letstalk_core.latents import (
    FaceDetectionUnavailable,
    LatentCodec,
    build_vae,
    center_crop_box,
    crop_and_resize,
    encode_portrait,
    face_crop_box,
    load_image,
    load_shipped_config,
    paste_back,
    prepare_portrait,
)
from letstalk_core.latents import portrait as portrait_module


def _gradient(h: int, w: int) -> np.ndarray:
    """A uint8 [H, W, 3] picture whose pixels tell where they are."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs * 255 // max(w - 1, 1), ys * 255 // max(h - 1, 1), (xs + ys) % 256], axis=-1).astype(np.uint8)


def _fixed_face(box):
    """A face detector (the documented callable interface) that always reports ``box``."""
    return lambda image: [(box, 0.99)]


@pytest.fixture(scope="module")
def astronaut():
    data = pytest.importorskip("skimage.data")
    return data.astronaut()  # [512, 512, 3] uint8, a real photo with one face


@pytest.fixture(scope="module")
def has_mtcnn():
    pytest.importorskip("facenet_pytorch")
    return True


# ---------------------------------------------------------------------------------------------- inputs
def test_load_image_accepts_every_documented_input(tmp_path):
    rgb = _gradient(70, 90)
    expected = torch.from_numpy(rgb.astype(np.float32) / 255.0)  # [H, W, 3]
    torch.testing.assert_close(load_image(rgb), expected)
    torch.testing.assert_close(load_image(Image.fromarray(rgb)), expected)
    torch.testing.assert_close(load_image(rgb.astype(np.float32) / 255.0), expected)
    torch.testing.assert_close(load_image(expected.unsqueeze(0)), expected)  # ComfyUI IMAGE [1, H, W, 3]
    Image.fromarray(rgb).save(tmp_path / "p.png")
    torch.testing.assert_close(load_image(tmp_path / "p.png"), expected)

    # RGBA: half-transparent red over white or black
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    alpha = 128 / 255
    on_white = load_image(rgba)
    on_black = load_image(Image.fromarray(rgba, "RGBA"), background="black")
    torch.testing.assert_close(on_white[0, 0], torch.tensor([1.0, 1 - alpha, 1 - alpha]))
    torch.testing.assert_close(on_black[0, 0], torch.tensor([alpha, 0.0, 0.0]))
    comfy_rgba = torch.from_numpy(rgba.astype(np.float32) / 255.0)[None]  # [1, H, W, 4]
    torch.testing.assert_close(load_image(comfy_rgba), on_white)

    # greyscale: PIL "L", numpy [H, W] and [H, W, 1], 16-bit
    grey = rgb[..., 0]
    for source in (Image.fromarray(grey, "L"), grey, grey[..., None]):
        out = load_image(source)
        assert out.shape == (70, 90, 3)
        torch.testing.assert_close(out[..., 1], torch.from_numpy(grey.astype(np.float32) / 255.0))
    grey16 = (grey.astype(np.uint16) * 257)
    torch.testing.assert_close(load_image(grey16)[..., 2], torch.from_numpy(grey.astype(np.float32) / 255.0))


def test_load_image_errors():
    with pytest.raises(ValueError, match=r"float image values must lie in 0\.\.1, found 0\.\.255"):
        load_image(_gradient(64, 64).astype(np.float32))
    with pytest.raises(ValueError, match="batch of 2"):
        load_image(torch.rand(2, 64, 64, 3))
    with pytest.raises(ValueError, match=r"C in 1, 3 or 4"):
        load_image(torch.rand(1, 3, 64, 64))  # channels-first by mistake
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((64, 64, 3), np.nan, np.float32))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_image("missing.png")
    with pytest.raises(TypeError, match="got list"):
        load_image([[0, 1]])
    with pytest.raises(ValueError, match="background"):
        load_image(_gradient(64, 64), background="green")


# ---------------------------------------------------------------------------------------------- crops
def test_centre_crops_of_wide_tall_and_square_images():
    for h, w, box in ((80, 200, (60, 0, 140, 80)), (300, 100, (0, 100, 100, 200)), (96, 96, (0, 0, 96, 96))):
        image = _gradient(h, w)
        crop = prepare_portrait(image, 32, detector="none")
        assert crop.crop_box == box == center_crop_box((h, w))
        assert crop.face_box is None and not crop.face_detected and crop.image_size == (h, w)
        assert crop.pixels.shape == (1, 3, 32, 32)
        assert crop.pixels.min() >= -1 and crop.pixels.max() <= 1
        # the crop shows the centre square: compare with PIL's own crop+resize of that square
        reference = Image.fromarray(image).crop(box).resize((32, 32), Image.BICUBIC)
        ours = crop.comfy_image[0].numpy() * 255.0
        assert np.abs(ours - np.asarray(reference, np.float32)).mean() < 3.0


def test_face_crop_geometry_margin_shift_and_pad():
    # face 40x50 at (100, 60); margin 0.5 -> side 100 centred on (120, 85)
    assert face_crop_box((100, 60, 140, 110), (300, 400), margin=0.5) == (70, 35, 170, 135)
    assert face_crop_box((100, 60, 140, 110), (300, 400), margin=0.0) == (95, 60, 145, 110)
    # near the top-left corner: "shift" moves the square inside, "pad" keeps it centred
    assert face_crop_box((0, 0, 40, 40), (200, 300), margin=0.5) == (0, 0, 80, 80)
    assert face_crop_box((0, 0, 40, 40), (200, 300), margin=0.5, fit="pad") == (-20, -20, 60, 60)
    # a face box larger than the image: "shift" shrinks the square to the short side
    assert face_crop_box((10, 10, 90, 70), (80, 100), margin=1.0) == (10, 0, 90, 80)
    with pytest.raises(ValueError, match="margin"):
        face_crop_box((0, 0, 10, 10), (100, 100), margin=-1)
    with pytest.raises(ValueError, match="fit"):
        face_crop_box((0, 0, 10, 10), (100, 100), fit="stretch")


def test_padded_crop_repeats_edge_pixels():
    image = load_image(_gradient(100, 100))  # [H, W, 3]
    crop = crop_and_resize(image, (-10, 0, 90, 100), 100)  # 10 columns left of the image
    as_01 = (crop[0] + 1) / 2  # [3, R, R]
    # the padded columns repeat column 0 of the image
    torch.testing.assert_close(as_01[:, :, 0], image[:, 0].T, rtol=0, atol=1e-5)
    torch.testing.assert_close(as_01[:, :, 5], image[:, 0].T, rtol=0, atol=1e-5)
    torch.testing.assert_close(as_01[:, :, 50], image[:, 40].T, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="does not overlap"):
        crop_and_resize(image, (200, 200, 260, 260), 32)


def test_prepare_portrait_with_a_detector_callable_and_transparent_input():
    rgba = np.zeros((120, 240, 4), np.uint8)
    rgba[..., :3] = _gradient(120, 240)[..., :3]
    rgba[..., 3] = 255
    rgba[:, :20, 3] = 0  # transparent left strip
    crop = prepare_portrait(rgba, 64, detector=_fixed_face((150, 40, 190, 90)), margin=0.25, fit="pad")
    assert crop.face_box == (150, 40, 190, 90) and crop.face_detected
    assert crop.crop_box == (133, 28, 208, 103)  # side 50 * 1.5 = 75 around (170, 65)
    expected = crop_and_resize(load_image(rgba), crop.crop_box, 64)
    torch.testing.assert_close(crop.pixels, expected, rtol=0, atol=0)


def test_small_image_and_option_errors():
    with pytest.raises(ValueError, match=r"my_photo: image is 63x80 .* at least 64"):
        prepare_portrait(_gradient(80, 63), 64, detector="none", name="my_photo")
    with pytest.raises(ValueError, match="on_no_face"):
        prepare_portrait(_gradient(80, 80), 64, on_no_face="skip")
    with pytest.raises(ValueError, match="resolution"):
        prepare_portrait(_gradient(80, 80), 0, detector="none")
    with pytest.raises(ValueError, match="detector"):
        prepare_portrait(_gradient(80, 80), 64, detector="retinaface")


def test_detection_not_installed_falls_back_or_errors(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "facenet_pytorch", None)  # makes `import facenet_pytorch` fail
    monkeypatch.setattr(portrait_module, "_DETECTOR_CACHE", {})
    image = _gradient(100, 160)
    with caplog.at_level(logging.WARNING, logger=portrait_module.__name__):
        crop = prepare_portrait(image, 32)
    assert crop.crop_box == (30, 0, 130, 100)
    assert "pip install --no-deps facenet-pytorch==2.6.0" in caplog.text
    with pytest.raises(FaceDetectionUnavailable, match="facenet-pytorch"):
        prepare_portrait(image, 32, on_no_face="error")


# ---------------------------------------------------------------------------------------------- MTCNN
def test_mtcnn_finds_the_face_in_a_real_photo(astronaut, has_mtcnn):
    crop = prepare_portrait(astronaut, 128, margin=0.5)
    assert crop.face_detected
    x0, y0, x1, y1 = crop.face_box
    # Eileen Collins' face in skimage's astronaut photo lies around x 180..270, y 60..175
    assert 160 < x0 < 200 and 245 < x1 < 290 and 40 < y0 < 85 and 150 < y1 < 195
    cx0, cy0, cx1, cy1 = crop.crop_box
    assert cx1 - cx0 == cy1 - cy0 == int(max(x1 - x0, y1 - y0) * 2 + 0.5)
    assert cx0 <= x0 and cy0 <= y0 and cx1 >= x1 and cy1 >= y1
    # the crop of the crop still shows a face
    again = prepare_portrait(crop.comfy_image, 128, margin=0.5, on_no_face="error")
    assert again.face_detected


def test_mtcnn_blank_image_falls_back_with_warning_or_errors(has_mtcnn, caplog):
    blank = np.full((90, 150, 3), 255, np.uint8)
    with caplog.at_level(logging.WARNING, logger=portrait_module.__name__):
        crop = prepare_portrait(blank, 64, name="blank")
    assert crop.face_box is None and crop.crop_box == (30, 0, 120, 90)
    assert "blank: no face was found" in caplog.text
    with pytest.raises(ValueError, match=r"blank: no face was found in the 150x90 image"):
        prepare_portrait(blank, 64, on_no_face="error", name="blank")


# ---------------------------------------------------------------------------------------------- latent
def test_encode_portrait_gives_the_codec_latent_of_the_crop():
    codec = build_vae(load_shipped_config("demo_vae"), seed=0)
    image = _gradient(100, 140)
    portrait_latent, crop = encode_portrait(codec, image, 64, detector="none")
    assert portrait_latent.shape == (1, 4, 8, 8)
    torch.testing.assert_close(portrait_latent, codec.encode(crop.pixels), rtol=0, atol=0)
    with pytest.raises(ValueError, match="multiple of the demo_vae downscale factor 8"):
        encode_portrait(codec, image, 60, detector="none")
    with pytest.raises(TypeError, match="LatentCodec"):
        encode_portrait(codec.vae, image, 64, detector="none")
    assert isinstance(codec, LatentCodec)


# ---------------------------------------------------------------------------------------------- paste back
def test_paste_back_keeps_outside_pixels_and_blends_a_feathered_edge():
    original = _gradient(120, 200)
    orig = load_image(original)  # [H, W, 3]
    box = (50, 20, 130, 100)  # 80x80, fully inside
    frames = torch.zeros(3, 40, 40, 3)  # [N, h, w, 3], black generated frames
    frames[1] = 1.0
    out = paste_back(frames, original, box, feather=8)
    assert out.shape == (3, 120, 200, 3)
    outside = torch.ones(120, 200, dtype=torch.bool)
    outside[20:100, 50:130] = False
    for n in range(3):
        assert torch.equal(out[n][outside], orig[outside])  # untouched, bit for bit
    # beyond the feather the pasted frame shows fully; inside the feather it is a blend
    assert torch.all(out[0, 28:92, 58:122] == 0.0) and torch.all(out[1, 28:92, 58:122] == 1.0)
    edge = out[0, 60, 50]  # first column of the box: mostly original, a little frame
    assert torch.all(edge < orig[60, 50]) and torch.all(edge > 0.8 * orig[60, 50] - 1e-6)
    # feather 0 pastes a hard square
    hard = paste_back(frames, original, box, feather=0)
    assert torch.all(hard[0, 20:100, 50:130] == 0.0)


def test_paste_back_by_default_shows_no_box():
    """A face that came back a little brighter than the picture around it: the default soft edge spreads
    the difference so that no two neighbouring pixels differ by more than a fraction of it."""
    original = torch.full((288, 360, 3), 0.5)  # a 360x288 picture
    box = (100, 60, 260, 220)  # 160x160 around the face
    frames = torch.full((2, 128, 128, 3), 0.6)  # the model's 128 px square, 0.1 brighter
    out = paste_back(frames, original, box)
    assert out.shape == (2, 288, 360, 3)
    torch.testing.assert_close(out[:, 140, 180], torch.full((2, 3), 0.6))  # the face itself is the model's
    assert torch.equal(out[:, :60], original[:60].expand(2, -1, -1, -1))  # outside the box: untouched
    jumps = max(out.diff(dim=1).abs().max(), out.diff(dim=2).abs().max())
    assert jumps < 0.1 / 10, jumps  # a hard paste jumps by the whole 0.1 at the box's edge
    assert paste_back(frames, original, box, feather=0).diff(dim=2).abs().max() > 0.099


def test_paste_back_at_the_border_and_for_padded_boxes():
    original = _gradient(100, 150)
    orig = load_image(original)
    frames = torch.full((2, 64, 64, 3), 0.5)  # [N, h, w, 3]
    # a box on the left border: no feather on that side, full frame up to column 0
    out = paste_back(frames, original, (0, 10, 80, 90), feather=10)
    torch.testing.assert_close(out[:, 50, 0], torch.full((2, 3), 0.5))
    assert (out[:, 50, 79] - 0.5).abs().max() > 0.01  # right side is feathered
    # a padded box reaching outside the image: only the overlap is pasted
    crop = prepare_portrait(original, 64, detector=_fixed_face((110, 0, 150, 40)), fit="pad")
    assert crop.crop_box[2] > 150 and crop.crop_box[1] < 0
    out = paste_back(frames, original, crop, feather=4)
    assert out.shape == (2, 100, 150, 3)
    x0 = crop.crop_box[0]
    assert torch.equal(out[0, :, : x0], orig[:, : x0])
    torch.testing.assert_close(out[0, 0:20, 150 - 1], torch.full((20, 3), 0.5))  # top/right on the border: no feather


def test_paste_back_errors():
    original = _gradient(100, 100)
    frames = torch.rand(1, 32, 32, 3)
    with pytest.raises(ValueError, match=r"feather: expected an integer 0\.\.20"):
        paste_back(frames, original, (10, 10, 50, 50), feather=30)
    with pytest.raises(ValueError, match="does not overlap original_image of 100x100"):
        paste_back(frames, original, (200, 200, 240, 240))
    with pytest.raises(ValueError, match=r"frames: expected a float tensor \[N, h, w, 3\]"):
        paste_back(torch.rand(1, 3, 32, 32), original, (10, 10, 50, 50))
    with pytest.raises(ValueError, match="x1 > x0"):
        paste_back(frames, original, (50, 10, 10, 50))

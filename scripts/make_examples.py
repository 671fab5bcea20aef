"""Make the bundled example inputs under ``workflows/examples/``.

The default model is trained on real footage (``../shared/footage``, see ``models/README.md``); its
example is real too:

* ``portrait.png``: the first frame of GRID speaker s1's clip ``bbbz9s`` at its own 360x288 (a training
  identity, as the model card says; the face is found and cropped by the nodes, and pasted back);
* ``speech.wav``: the same speaker saying two sentences the model never trained on (GRID s1 ``bbbs7a``
  then ``bbifzp``, held out by ``prepare``'s split), mono 16-bit at the recording's own 44.1 kHz.

GRID audio-visual corpus: Cooke, Barker, Cunningham and Shao, J. Acoust. Soc. Am. 120(5), 2006, CC BY 4.0.

``--cartoon`` remakes the second model's example instead (``cartoon_portrait.png``,
``cartoon_speech.wav``): a held-out identity of the synthetic world the cartoon model was trained in,
and held-out sentences said by espeak-ng.

The files are committed; this script documents how they were made and remakes them:
``.venv/bin/python scripts/make_examples.py [--footage ../shared/footage] [--out workflows/examples]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PORTRAIT_CLIP = "grid/s1/bbbz9s.mpg"  # trained on
SPEECH_CLIPS = ("grid/s1/bbbs7a.mpg", "grid/s1/bbifzp.mpg")  # held out of training

CARTOON_SPEECH_SEED = 20261124
CARTOON_SECONDS = 6.0
CARTOON_SIZE = 256


def make_real(footage: Path, out: Path) -> None:
    import soundfile
    from PIL import Image

    from letstalk_core.sound import decode_with_ffmpeg, mix_and_resample
    from letstalk_core.video.reader import iter_video_frames

    missing = [name for name in (PORTRAIT_CLIP, *SPEECH_CLIPS) if not (footage / name).is_file()]
    if missing:
        raise SystemExit(f"--footage {footage}: missing {', '.join(missing)} (the folder ../shared/footage "
                         "of the project's workspace)")
    first = next(iter_video_frames(footage / PORTRAIT_CLIP, chunk_size=1))[0]  # [H, W, 3] uint8
    Image.fromarray(first).save(out / "portrait.png", optimize=True)
    parts, rates = [], set()
    for name in SPEECH_CLIPS:
        samples, rate = decode_with_ffmpeg(footage / name)
        mono, rate = mix_and_resample(samples, rate)  # [1, T], the recording's own rate
        parts.append(mono[0].numpy())
        rates.add(rate)
    if len(rates) != 1:
        raise SystemExit(f"the speech clips have different sample rates {sorted(rates)}")
    speech = np.concatenate(parts)
    rate = rates.pop()
    soundfile.write(out / "speech.wav", np.clip(speech, -1.0, 1.0), rate, subtype="PCM_16")
    print(f"portrait: first frame of {PORTRAIT_CLIP}, {first.shape[1]}x{first.shape[0]} -> {out / 'portrait.png'}")
    print(f"speech: {' + '.join(SPEECH_CLIPS)}, {len(speech) / rate:.2f} s at {rate} Hz -> {out / 'speech.wav'}")


def make_cartoon(out: Path) -> None:
    import soundfile
    from PIL import Image

    from letstalk_core.training.synthetic import (HELDOUT_IDENTITY_START, FacePose, make_speech_track,
                                                  render_face, sample_identity)

    identity = HELDOUT_IDENTITY_START + 7
    portrait = render_face(sample_identity(identity), FacePose(), size=CARTOON_SIZE)  # [S, S, 3] uint8
    Image.fromarray(portrait).save(out / "cartoon_portrait.png", optimize=True)
    track = make_speech_track(CARTOON_SECONDS, seed=CARTOON_SPEECH_SEED, split="heldout")
    soundfile.write(out / "cartoon_speech.wav", np.clip(track.audio, -1.0, 1.0), track.sample_rate, subtype="PCM_16")
    print(f"portrait: identity {identity}, {CARTOON_SIZE} px -> {out / 'cartoon_portrait.png'}")
    print(f"speech: {track.seconds:.2f} s at {track.sample_rate} Hz, voice {track.style.voice}: "
          f"{track.text!r} -> {out / 'cartoon_speech.wav'}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "workflows" / "examples", help="output folder")
    parser.add_argument("--footage", type=Path, default=ROOT.parent / "shared" / "footage",
                        help="the real footage folder (default ../shared/footage)")
    parser.add_argument("--cartoon", action="store_true", help="make the cartoon model's example instead")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.cartoon:
        make_cartoon(args.out)
    else:
        make_real(args.footage, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

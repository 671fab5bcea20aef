"""Render the bundled example inputs: ``workflows/examples/portrait.png`` and ``speech.wav``.

Both come from the synthetic world the demo model was trained in, from its held-out part, so the
demo shows the model on a face and sentences it never saw in training:

* the portrait: a held-out identity (seed >= HELDOUT_IDENTITY_START) rendered at rest, 256 px;
* the speech: held-out sentences said by espeak-ng, 16 kHz mono 16-bit wav.

The files are committed; this script documents how they were made and remakes them:
``.venv/bin/python scripts/make_examples.py [--out workflows/examples]``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from letstalk_core.training.synthetic import (  # noqa: E402
    HELDOUT_IDENTITY_START,
    FacePose,
    make_speech_track,
    render_face,
    sample_identity,
)

IDENTITY_SEED = HELDOUT_IDENTITY_START + 7
SPEECH_SEED = 20261124
SECONDS = 6.0
SIZE = 256


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "workflows" / "examples"), help="output folder")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from PIL import Image
    import soundfile

    portrait = render_face(sample_identity(IDENTITY_SEED), FacePose(), size=SIZE)  # [S, S, 3] uint8
    Image.fromarray(portrait).save(out / "portrait.png", optimize=True)

    track = make_speech_track(SECONDS, seed=SPEECH_SEED, split="heldout")
    soundfile.write(out / "speech.wav", np.clip(track.audio, -1.0, 1.0), track.sample_rate, subtype="PCM_16")
    print(f"portrait: identity {IDENTITY_SEED}, {SIZE} px -> {out / 'portrait.png'}")
    print(f"speech: {track.seconds:.2f} s at {track.sample_rate} Hz, voice {track.style.voice}: "
          f"{track.text!r} -> {out / 'speech.wav'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The shared input checks: one function per rule, its message naming the input and what is accepted."""

from __future__ import annotations

import numpy as np
import pytest

from letstalk_core.checks import check_int
from letstalk_core.sampling import check_overlap_frames
from letstalk_core.sampling.schedules import check_sampler


def test_check_int_accepts_python_and_numpy_integers_within_the_bounds():
    assert check_int("steps", 3, 1, 1000) == 3
    value = check_int("seed", np.int64(-7))
    assert value == -7 and type(value) is int
    assert check_int("memory_frames", 0, 0) == 0


@pytest.mark.parametrize("value,minimum,maximum,message", [
    (True, 0, None, "flag must be an integer >= 0, got True"),  # a bool is not a count
    (2.5, None, None, "flag must be an integer, got 2.5"),
    ("3", 1, None, "flag must be an integer >= 1, got '3'"),
    (0, 1, 1000, "flag must be an integer from 1 to 1000, got 0"),
    (1001, 1, 1000, "flag must be an integer from 1 to 1000, got 1001"),
    (5, None, 4, "flag must be an integer <= 4, got 5"),
])
def test_check_int_names_the_input_and_what_is_accepted(value, minimum, maximum, message):
    with pytest.raises(ValueError) as error:
        check_int("flag", value, minimum, maximum)
    assert str(error.value) == message


def test_check_int_takes_a_fuller_description_of_what_is_accepted():
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1 \(model evaluations per clip\), got 0$"):
        check_int("steps", 0, 1, accepted="an integer >= 1 (model evaluations per clip)")


def test_overlap_check_with_and_without_the_clip_length():
    assert check_overlap_frames(np.int32(3), 4) == 3
    assert check_overlap_frames(40) == 40  # no clip length yet: any integer >= 0
    with pytest.raises(ValueError, match=r"^overlap_frames must be an integer from 0 to frames_per_clip - 1 "
                                         r"\(0: clips follow each other, the authors' loop\), got -1$"):
        check_overlap_frames(-1)
    with pytest.raises(ValueError, match=r"^overlap_frames must be an integer from 0 to frames_per_clip - 1 = 3 for "
                                         r"checkpoint m.safetensors \(0: clips follow each other, the authors' "
                                         r"loop\), got 4$"):
        check_overlap_frames(4, 4, model=" for checkpoint m.safetensors")


def test_sampler_check_names_the_accepted_samplers():
    assert check_sampler("euler") == "euler"
    with pytest.raises(ValueError, match=r"^sampler 'plms' is not known; accepted: ddpm, ddim, dpmpp_2m, euler$"):
        check_sampler("plms")

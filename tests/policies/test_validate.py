"""PolicySpec.validate: every unconvertible value is an ObservationError naming its field."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anyskill.policies.base import InputSpec, ObservationError, PolicySpec

SPEC = PolicySpec(
    inputs=(
        InputSpec("observation/state", (2,), "float32", "state"),
        InputSpec("observation/image", (2, 2, 3), "uint8", "camera"),
        InputSpec("prompt", (), "str", "instruction", max_length=8),
    ),
    action_dim=2,
    action_horizon=4,
    control_hz=10.0,
)


def obs(**changes) -> dict:
    o = {
        "observation/state": np.zeros(2, np.float32),
        "observation/image": np.zeros((2, 2, 3), np.uint8),
        "prompt": "reach",
    }
    o.update({k.replace("__", "/"): v for k, v in changes.items()})
    return o


def test_good_observation_is_cast_to_the_declared_dtype():
    out = SPEC.validate(obs(observation__state=[1, 2]))
    assert out["observation/state"].dtype == np.float32
    np.testing.assert_array_equal(out["observation/state"], [1.0, 2.0])


@pytest.mark.parametrize("big", [1e300, -1e39, np.float64(3.5e38)])
def test_float64_beyond_float32_range_is_refused_after_the_cast(big):
    # a float64 that is finite but overflows to inf in float32 used to pass validation and
    # then fail the whole batch it was merged into
    with pytest.raises(ObservationError, match="NaN or infinity") as info:
        SPEC.validate(obs(observation__state=np.array([0.0, big], np.float64)))
    assert info.value.field == "observation/state"


@pytest.mark.parametrize(
    "value",
    [
        [[1.0, 2.0], [3.0]],  # ragged
        [[1.0], [2.0, 3.0]],
        ["a", "b"],  # strings
        [b"a", b"b"],
        {"x": 1.0, "y": 2.0},  # nested dict
        [{"x": 1}, {"y": 2}],
        np.array([None, 1.0], dtype=object),  # object array
        [10**30, 1],  # huge int
        [True, False],  # bool
        None,
        "1.0 2.0",
        [None, None],
        [1 + 2j, 0],
    ],
    ids=repr,
)
def test_unconvertible_values_name_the_field(value):
    with pytest.raises(ObservationError) as info:
        SPEC.validate(obs(observation__state=value))
    assert info.value.field == "observation/state"


@pytest.mark.parametrize(
    "image",
    [np.full((2, 2, 3), 256, np.int64), np.zeros((2, 2, 3), np.float32), [[[0] * 3] * 2, [0]]],
    ids=["out of range", "float", "ragged"],
)
def test_bad_images_name_the_field(image):
    with pytest.raises(ObservationError) as info:
        SPEC.validate(obs(observation__image=image))
    assert info.value.field == "observation/image"


# any msgpack-able structure (what the wire decoder can produce), in any field
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
ANY = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=12,
)


def _cast(xs: list[float], dtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):  # NaN/inf to int: whatever numpy makes of it
        return np.asarray(xs).astype(dtype)


ARRAYS = st.builds(
    _cast,
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=12),
    st.sampled_from(["float64", "float32", "float16", "int64", "uint8", "bool"]),
)


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from([s.name for s in SPEC.inputs]), value=ANY | ARRAYS)
def test_validate_any_value_is_accepted_or_refused_by_name(field, value):
    try:
        out = SPEC.validate(obs(**{field.replace("/", "__"): value}))
    except ObservationError as e:
        assert e.field == field
        return
    for s in SPEC.inputs:
        if s.dtype == "str":
            assert isinstance(out[s.name], str)
        else:
            assert out[s.name].shape == s.shape and out[s.name].dtype == np.dtype(s.dtype)
            assert np.all(np.isfinite(out[s.name]))


@settings(max_examples=200, deadline=None)
@given(value=ANY)
def test_validate_any_top_level_structure(value):
    try:
        SPEC.validate(value)
    except ObservationError as e:
        assert e.field in {"<observation>"} | {s.name for s in SPEC.inputs}

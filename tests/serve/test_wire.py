import numpy as np
import pytest

from anyskill.serve import wire


@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8", "int64", "bool", "float16"])
def test_array_round_trip(dtype):
    x = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    y = wire.unpack(wire.pack({"a": x, "nested": [x[0], {"b": x[1, 1]}]}))
    np.testing.assert_array_equal(y["a"], x)
    assert y["a"].dtype == x.dtype and y["a"].shape == x.shape
    np.testing.assert_array_equal(y["nested"][1]["b"], x[1, 1])


def test_scalars_and_strings():
    y = wire.unpack(wire.pack({"s": "hello", "f": np.float32(1.5), "i": 3}))
    assert y == {"s": "hello", "f": 1.5, "i": 3}
    assert isinstance(y["f"], np.float32)


def test_non_contiguous_array():
    x = np.arange(12, dtype=np.float32).reshape(3, 4).T
    np.testing.assert_array_equal(wire.unpack(wire.pack(x)), x)


def test_refused_dtypes():
    with pytest.raises(wire.WireError, match="complex"):
        wire.pack(np.zeros(2, np.complex64))
    with pytest.raises(wire.WireError, match="object"):
        wire.pack(np.array([None, 1], dtype=object))


@pytest.mark.parametrize(
    "bad, match",
    [
        (b"\xc1", "not a msgpack"),
        ({b"__ndarray__": True, b"data": b"\x00" * 3, b"dtype": "<f4", b"shape": [1]}, "needs 4"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}, "not accepted"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "nope", b"shape": [0]}, "dtype"),
        ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}, "shape"),
    ],
)
def test_malformed_frames(bad, match):
    import msgpack

    frame = bad if isinstance(bad, bytes) else msgpack.packb(bad)
    with pytest.raises(wire.WireError, match=match):
        wire.unpack(frame)


def test_compatible_with_openpi_client_encoding():
    mp = pytest.importorskip("openpi_client.msgpack_numpy")
    obs = {"observation/state": np.arange(5, dtype=np.float32), "prompt": "hi", "k": np.int64(3)}
    ours = wire.unpack(mp.packb(obs))
    np.testing.assert_array_equal(ours["observation/state"], obs["observation/state"])
    assert ours["prompt"] == "hi" and ours["k"] == 3
    theirs = mp.unpackb(wire.pack(obs))
    np.testing.assert_array_equal(theirs["observation/state"], obs["observation/state"])


def test_error_text_round_trip():
    text = wire.error_text("invalid_observation", "observation/state", "shape (3,)")
    assert wire.parse_error(text)["field"] == "observation/state"
    assert wire.parse_error("Traceback ...")["message"] == "Traceback ..."

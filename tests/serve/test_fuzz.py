"""Fuzzing the request path: any bytes, any msgpack structure -> an error reply naming a field
(or a bounded close), never an exception escaping, never another client affected."""

from __future__ import annotations

import random
import threading

import msgpack
import numpy as np
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import STATE_DIM, CountingPolicy, good_obs, msgpack_values
from test_server import ask, raw_client

from anyskill.serve import wire
from anyskill.serve.server import PolicyServer, RequestError, ServerConfig, ServerThread

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SERVER = PolicyServer(CountingPolicy(), ServerConfig(max_request_bytes=64 << 10, max_items=512))
FIELDS = {s.name for s in SERVER.policy.spec.inputs} | {"<frame>", "<observation>"}
GOOD = wire.pack(good_obs(1.0))


def parse(frame: bytes | str) -> dict | None:
    """The validated observation, or None after an error reply that names a field."""
    try:
        return SERVER.parse_request(frame)
    except RequestError as e:
        assert e.field in FIELDS and e.kind in wire.ERROR_KINDS, e
        assert e.message
        return None


def ndarray_map(dtype, shape, data) -> dict:
    return {b"__ndarray__": True, b"dtype": dtype, b"shape": shape, b"data": data}


@FUZZ
@given(st.binary(max_size=2048))
def test_any_bytes(frame):
    parse(frame)


@FUZZ
@given(st.text(max_size=256))
def test_any_text_frame(frame):
    assert parse(frame) is None


@FUZZ
@given(msgpack_values())
def test_any_msgpack_structure(value):
    parse(msgpack.packb(value))


@FUZZ
@given(st.sampled_from(sorted(FIELDS - {"<frame>", "<observation>"})), msgpack_values())
def test_any_structure_in_a_field(field, value):
    obs = {**good_obs(), field: value}
    parse(msgpack.packb(obs, default=wire._encode))


@FUZZ
@given(
    dtype=st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", "<c8", "|O", "V8", "<U3", "x", 7]),
    shape=st.lists(st.integers(-2, 2**40), max_size=4) | msgpack_values(),
    data=st.binary(max_size=64) | msgpack_values(),
)
def test_any_ndarray_header(dtype, shape, data):
    obs = {**good_obs(), "observation/state": ndarray_map(dtype, shape, data)}
    parse(msgpack.packb(obs, default=wire._encode))


@FUZZ
@given(st.data())
def test_mutated_good_frames(data):
    frame = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(frame) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            frame[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del frame[i : i + data.draw(st.integers(1, 16))]
        else:
            frame[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        if not frame:
            break
    out = parse(bytes(frame))
    if out is not None:  # still a valid observation: it reads as one
        assert out["observation/state"].shape == (STATE_DIM,)


def abusive_frames(seed: int, n: int):
    """Random bytes, mutated good frames, random structures, text frames: a fixed sample."""
    rng = random.Random(seed)
    for _ in range(n):
        kind = rng.randrange(5)
        if kind == 0:
            yield rng.randbytes(rng.randrange(1, 512))
        elif kind == 1:
            frame = bytearray(GOOD)
            for _ in range(rng.randrange(1, 6)):
                frame[rng.randrange(len(frame))] = rng.randrange(256)
            yield bytes(frame)
        elif kind == 2:
            yield _random_structure(rng)
        elif kind == 3:
            yield "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(64)))
        else:
            obs = good_obs()
            obs["observation/state"] = rng.choice(
                [np.array([1e300] * STATE_DIM), [[1.0, 2.0], [3.0]], "x", None, [True] * 4]
            )
            yield msgpack.packb(obs, default=wire._encode)


def _random_structure(rng: random.Random, depth: int = 0) -> bytes:
    def value(d):
        k = rng.randrange(7 if d < 3 else 4)
        if k == 0:
            return rng.choice([None, True, 1.5, -(2**63), 2**64 - 1, float("nan")])
        if k == 1:
            return rng.randbytes(rng.randrange(8))
        if k == 2:
            return "observation/state" if rng.random() < 0.3 else "x" * rng.randrange(8)
        if k == 3:
            return rng.random()
        if k in (4, 5):
            return [value(d + 1) for _ in range(rng.randrange(6))]
        keys = ["observation/state", "observation/image", "prompt", "k"]
        return {rng.choice(keys): value(d + 1) for _ in range(rng.randrange(4))}

    return msgpack.packb(value(depth))


def test_fuzzing_client_never_affects_a_good_client():
    policy = CountingPolicy()
    cfg = ServerConfig(port=0, max_request_bytes=64 << 10, max_items=512, error_delay_ms=0)
    with ServerThread(policy, cfg) as srv:
        stop = threading.Event()
        answered: list[int] = []
        wrong: list[str] = []

        def good_client():
            ws, _ = raw_client(srv.url)
            i = 0
            while not stop.is_set():
                out = ask(ws, wire.pack(good_obs(float(i))))
                if isinstance(out, str) or out["actions"][0, 0] != i:
                    wrong.append(str(out)[:200])
                answered.append(i)
                i += 1
            ws.close()

        t = threading.Thread(target=good_client)
        t.start()
        ws, _ = raw_client(srv.url)
        replies = closes = 0
        for frame in abusive_frames(seed=0, n=300):
            try:
                reply = ask(ws, frame)
            except websockets.ConnectionClosed:
                closes += 1
                ws, _ = raw_client(srv.url)
                continue
            replies += 1
            if isinstance(reply, str):
                assert wire.parse_error(reply)["field"] in FIELDS, reply
        ws.close()
        n = len(answered)
        while len(answered) < n + 3 and t.is_alive():
            t.join(0.01)
        stop.set()
        t.join(10)
    assert replies + closes == 300 and replies > 250
    assert not wrong and len(answered) > 3

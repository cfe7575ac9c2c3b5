"""Hardening from fault and abuse trials (issue 22): one client never hurts the others."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest
import websockets
from serve_helpers import HORIZON, BlockingPolicy, CountingPolicy, good_obs
from test_server import ask, concurrent_round, raw_client

from anyskill.cli import main
from anyskill.serve import wire
from anyskill.serve.server import ListenError, ServerConfig, ServerThread, bind

POISON = 13.0  # a state[0] the policies below cannot handle


class NaNRow(CountingPolicy):
    """Returns NaN actions for the poisoned row only."""

    def infer(self, batch):
        out = super().infer(batch)
        for i, o in enumerate(batch):
            if o["observation/state"][0] == POISON:
                out[i] = np.nan
        return out


class RaisesOnRow(CountingPolicy):
    """Raises for any batch that contains the poisoned row."""

    def infer(self, batch):
        if any(o["observation/state"][0] == POISON for o in batch):
            raise RuntimeError("cannot handle this row")
        return super().infer(batch)


@pytest.mark.parametrize("policy_cls", [NaNRow, RaisesOnRow])
def test_one_bad_row_fails_only_itself(policy_cls):
    policy = policy_cls(delay=0.05)
    cfg = ServerConfig(port=0, max_batch=8, batch_wait_ms=200)
    with ServerThread(policy, cfg) as srv:
        values = [0.0, 1.0, POISON, 3.0]
        replies = concurrent_round(srv.url, values)
    for v, r in zip(values, replies, strict=True):
        if v == POISON:
            assert isinstance(r, str) and wire.parse_error(r)["error"] == "policy_failed"
        else:
            assert not isinstance(r, str), r
            assert r["batch_size"] > 1  # it did share a batch with the poisoned row
            np.testing.assert_allclose(r["actions"][:, 0], v + np.arange(HORIZON))


def test_float64_overflow_row_does_not_fail_its_batch():
    policy = CountingPolicy(delay=0.05)
    with ServerThread(policy, ServerConfig(port=0, max_batch=8, batch_wait_ms=200)) as srv:
        bad = good_obs()
        bad["observation/state"] = np.array([1e300, 0, 0, 0])
        clients = [raw_client(srv.url)[0] for _ in range(3)]
        barrier = threading.Barrier(3)
        out: list = [None] * 3

        def run(i):
            barrier.wait()
            out[i] = ask(clients[i], wire.pack(bad if i == 1 else good_obs(float(i))))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert wire.parse_error(out[1])["error"] == "invalid_observation"
    assert wire.parse_error(out[1])["field"] == "observation/state"
    assert out[0]["actions"][0, 0] == 0.0 and out[2]["actions"][0, 0] == 2.0


def _empty_maps(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + b"\x80" * n


def test_unpack_bounds_decode_work():
    # a 4 MB frame of four million empty maps: the decoder must stop at the budget
    with pytest.raises(wire.WireError, match="max_items"):
        wire.unpack(_empty_maps(4_000_000), max_items=1000)
    nested = b"\xdc\x00\x40" + (b"\xdc\x01\x00" + b"\x90" * 256) * 64  # 64 x 256 empty lists
    with pytest.raises(wire.WireError, match="max_items"):
        wire.unpack(nested, max_items=1000)
    assert wire.unpack(wire.pack({"a": [1.0] * 500}), max_items=1000)["a"] == [1.0] * 500


def test_huge_structure_frame_gets_bad_frame_reply(policy):
    cfg = ServerConfig(port=0, max_items=1 << 12)
    with ServerThread(policy, cfg) as srv:
        ws, _ = raw_client(srv.url)
        err = wire.parse_error(ask(ws, _empty_maps(100_000)))
        assert err["error"] == "bad_frame" and "max_items" in err["message"]
        assert ask(ws, wire.pack(good_obs(2.0)))["actions"][0, 0] == 2.0


def test_connections_beyond_max_connections_are_refused(policy):
    with ServerThread(policy, ServerConfig(port=0, max_connections=2)) as srv:
        a, _ = raw_client(srv.url)
        b, _ = raw_client(srv.url)
        with pytest.raises(websockets.InvalidStatus) as info:
            raw_client(srv.url)
        assert info.value.response.status_code == 503
        assert b"max_connections" in info.value.response.body
        a.close()
        for _ in range(200):  # the server sees the close a moment later
            if srv.server._open < 2:
                break
            threading.Event().wait(0.01)
        c, _ = raw_client(srv.url)
        assert ask(c, wire.pack(good_obs(1.0)))["actions"][0, 0] == 1.0
        assert ask(b, wire.pack(good_obs(2.0)))["actions"][0, 0] == 2.0


def test_idle_connection_is_closed(policy):
    with ServerThread(policy, ServerConfig(port=0, idle_timeout_s=0.2)) as srv:
        ws, _ = raw_client(srv.url)
        with pytest.raises(websockets.ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None and "idle" in info.value.rcvd.reason


def test_half_sent_frame_is_closed_after_the_idle_timeout(policy):
    # slow loris: a frame header promising 1000 bytes, then silence (the server cannot read
    # our closing handshake inside that frame: it drops the TCP connection after its timeout)
    cfg = ServerConfig(port=0, idle_timeout_s=0.2, handshake_timeout_s=0.5)
    with ServerThread(policy, cfg) as srv:
        ws, _ = raw_client(srv.url)
        ws.socket.sendall(b"\x82\xfe\x03\xe8" + b"\x00" * 4 + b"\x00" * 10)
        with pytest.raises(websockets.ConnectionClosed):
            ws.recv(timeout=10)


def test_memory_budget_refuses_frames_beyond_it():
    blocking = BlockingPolicy()
    entered, release = blocking.entered, blocking.release
    frame = wire.pack(good_obs(1.0))
    cfg = ServerConfig(
        port=0, max_request_bytes=len(frame) + 10, max_buffered_bytes=len(frame) + 10
    )
    with ServerThread(blocking, cfg) as srv:
        held, _ = raw_client(srv.url)
        held.send(frame)  # held by the server until the forward pass returns
        assert entered.wait(10)
        other, _ = raw_client(srv.url)
        err = wire.parse_error(ask(other, wire.pack(good_obs(2.0))))
        assert err["error"] == "overloaded" and "max_buffered_bytes" in err["message"]
        release.set()
        assert wire.unpack(held.recv(timeout=10))["actions"][0, 0] == 1.0
        assert ask(other, wire.pack(good_obs(2.0)))["actions"][0, 0] == 2.0


def test_a_client_sending_bad_frames_waits_not_the_others(policy):
    with ServerThread(policy, ServerConfig(port=0, error_delay_ms=60_000)) as srv:
        bad, _ = raw_client(srv.url)
        assert wire.parse_error(ask(bad, b"\xc1"))["error"] == "bad_frame"
        bad.send(wire.pack(good_obs(1.0)))  # not read before the 60 s delay is over
        good, _ = raw_client(srv.url)
        assert ask(good, wire.pack(good_obs(2.0)))["actions"][0, 0] == 2.0
        with pytest.raises(TimeoutError):
            bad.recv(timeout=0.3)


def test_bind_names_a_port_in_use():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(ListenError, match=f"port {port} on 127.0.0.1 is already in use"):
            bind("127.0.0.1", port)
        with pytest.raises(RuntimeError, match="pick another with --port"):
            ServerThread(CountingPolicy(), ServerConfig(port=port)).start()


@pytest.mark.slow  # a fresh interpreter importing the CLI: seconds on a loaded machine
def test_serve_on_a_port_in_use_exits_at_once_naming_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = subprocess.run(
            [sys.executable, "-m", "anyskill.cli", "serve", "--policy", "random-mlp",
             "--port", str(port)],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0] and "--port" in lines[0]


@pytest.mark.parametrize("url", ["htp:/x", "127.0.0.1:8000", "ws://:8000", "ws://host:port"])
def test_run_robot_refuses_a_malformed_server_url_at_once(url, capsys, monkeypatch):
    import anyskill.serve.robot as robot

    class NoSim:  # building the sim (and waiting 30 s for a server) is what must not happen
        def __init__(self, *a, **k):
            raise AssertionError("the URL should have been refused before building the robot")

    monkeypatch.setattr(robot, "SimRobot", NoSim)
    assert main(["run-robot", "--server", url, "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--server" in err[0] and "ws://HOST:PORT" in err[0], err

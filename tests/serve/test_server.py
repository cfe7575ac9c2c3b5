"""Server: openpi protocol, validation with error replies, isolation, batching."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import websockets
from serve_helpers import HORIZON, BlockingPolicy, CountingPolicy, good_obs
from websockets.sync.client import connect

from anyskill.serve import wire
from anyskill.serve.runtime import _PLAIN
from anyskill.serve.server import ServerConfig, ServerThread


def raw_client(url: str):
    ws = connect(url, compression=None, max_size=None, proxy=None, open_timeout=10, **_PLAIN)
    meta = wire.unpack(ws.recv(timeout=10))
    return ws, meta


def ask(ws, frame) -> dict | str:
    ws.send(frame)
    reply = ws.recv(timeout=10)
    return reply if isinstance(reply, str) else wire.unpack(reply)


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")
def test_openpi_client_round_trip(server):
    client_mod = pytest.importorskip("openpi_client.websocket_client_policy")
    client = client_mod.WebsocketClientPolicy(server.url)
    meta = client.get_server_metadata()
    assert meta["action_horizon"] == HORIZON
    assert meta["inputs"]["observation/state"]["shape"] == [4]
    out = client.infer(good_obs(7.0))
    assert out["actions"].shape == (HORIZON, 2) and out["actions"].dtype == np.float32
    np.testing.assert_allclose(out["actions"][:, 0], 7.0 + np.arange(HORIZON))
    assert {"infer_ms", "queue_ms", "total_ms"} <= set(out["server_timing"])
    assert "prev_total_ms" in client.infer(good_obs(1.0))["server_timing"]
    # a bad request surfaces as openpi-client's exception, and the connection survives
    bad = good_obs()
    bad["observation/state"] = np.zeros(3, np.float32)
    with pytest.raises(RuntimeError, match="observation/state"):
        client.infer(bad)
    np.testing.assert_allclose(client.infer(good_obs(2.0))["actions"][0, 0], 2.0)


def test_healthz(server):
    url = server.url.replace("ws://", "http://") + "/healthz"
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def _bad_requests():
    def obs(**changes):
        o = good_obs()
        for k, v in changes.items():
            if v is None:
                del o[k]
            else:
                o[k] = v
        return wire.pack(o)

    nan = np.zeros(4, np.float32)
    nan[2] = np.nan
    return {
        "not msgpack": (b"\xc1\xc1garbage", "bad_frame", "<frame>"),
        "text frame": ("hello", "bad_frame", "<frame>"),
        "not a dict": (wire.pack([1, 2, 3]), "invalid_observation", "<observation>"),
        "oversized": (b"\x00" * (100 << 10), "too_large", "<frame>"),
        "wrong shape": (obs(**{"observation/state": np.zeros(5, np.float32)}), None, "state"),
        "image dtype": (
            obs(**{"observation/image": np.zeros((8, 8, 3), np.float32)}),
            "invalid_observation",
            "observation/image",
        ),
        "non-finite": (obs(**{"observation/state": nan}), None, "observation/state"),
        "missing key": (obs(**{"observation/image": None}), None, "observation/image"),
        "float64 overflow": (
            obs(**{"observation/state": np.array([1e300, 0, 0, 0])}),
            "invalid_observation",
            "observation/state",
        ),
        "ragged list": (
            obs(**{"observation/state": [[1.0, 2.0], [3.0]]}),
            "invalid_observation",
            "observation/state",
        ),
        "bool state": (obs(**{"observation/state": [True] * 4}), None, "observation/state"),
        "prompt type": (obs(prompt=np.zeros(2, np.float32)), None, "prompt"),
        "prompt too long": (obs(prompt="go " * 65), None, "prompt"),
        "bad array": (
            msgpack.packb(
                {
                    "observation/state": {
                        b"__ndarray__": True,
                        b"data": b"",
                        b"dtype": "<f4",
                        b"shape": [4],
                    }
                }
            ),
            "bad_frame",
            "<frame>",
        ),
    }


BAD = _bad_requests()


def test_bad_requests_get_error_replies_while_others_are_served(server, policy):
    stop = threading.Event()
    good_replies: list[float] = []
    failures: list[str] = []

    def good_client():
        ws, _ = raw_client(server.url)
        i = 0
        while not stop.is_set():
            out = ask(ws, wire.pack(good_obs(float(i))))
            if isinstance(out, str) or out["actions"][0, 0] != i:
                failures.append(str(out))
            good_replies.append(i)
            i += 1
        ws.close()

    t = threading.Thread(target=good_client)
    t.start()
    ws, _ = raw_client(server.url)
    for name, (frame, kind, field) in BAD.items():
        reply = ask(ws, frame)
        assert isinstance(reply, str), name
        err = wire.parse_error(reply)
        assert field in err["field"], (name, err)
        if kind:
            assert err["error"] == kind, (name, err)
        assert "Traceback" not in reply
    # the same connection still works after all of that
    assert ask(ws, wire.pack(good_obs(3.0)))["actions"][0, 0] == 3.0
    ws.close()
    n_before = len(good_replies)
    while len(good_replies) < n_before + 3:
        t.join(0.01)
    stop.set()
    t.join(10)
    assert not failures
    assert server.server.stats.errors >= len(BAD)


def test_frame_above_hard_limit_closes_only_that_connection(policy):
    cfg = ServerConfig(port=0, max_request_bytes=1 << 10, hard_limit_bytes=4 << 10)
    with ServerThread(policy, cfg) as srv:
        ws, _ = raw_client(srv.url)
        ws.send(b"\x00" * (8 << 10))
        with pytest.raises(websockets.ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        other, _ = raw_client(srv.url)
        assert ask(other, wire.pack(good_obs(1.0)))["actions"][0, 0] == 1.0


def test_client_disconnect_mid_request():
    policy = CountingPolicy(delay=0.2)
    with ServerThread(policy, ServerConfig(port=0)) as srv:
        ws, _ = raw_client(srv.url)
        ws.send(wire.pack(good_obs(1.0)))
        ws.close()  # gone before the reply
        other, _ = raw_client(srv.url)
        assert ask(other, wire.pack(good_obs(2.0)))["actions"][0, 0] == 2.0
        assert ask(other, wire.pack(good_obs(3.0)))["actions"][0, 0] == 3.0


def test_policy_failure_is_reported_without_internals():
    with ServerThread(CountingPolicy(fail=True), ServerConfig(port=0)) as srv:
        ws, _ = raw_client(srv.url)
        reply = ask(ws, wire.pack(good_obs()))
        assert isinstance(reply, str)
        err = wire.parse_error(reply)
        assert err["error"] == "policy_failed" and "secret" not in reply
        assert isinstance(ask(ws, wire.pack(good_obs())), str)  # still answering


def concurrent_round(url: str, values: list[float]) -> list:
    """One request per value (its state[0]), from concurrent clients released together, so
    they share a batch; the replies in the same order."""
    clients = [raw_client(url)[0] for _ in values]
    barrier = threading.Barrier(len(values))
    out: list = [None] * len(values)

    def run(i):
        barrier.wait()
        out[i] = ask(clients[i], wire.pack(good_obs(values[i])))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(values))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    for c in clients:
        c.close()
    return out


@pytest.mark.parametrize("max_batch", [1, 8])
def test_batching_merges_concurrent_requests(max_batch):
    # a slow forward pass: requests arriving while it runs queue up for the next batch
    policy = CountingPolicy(delay=0.1)
    cfg = ServerConfig(port=0, max_batch=max_batch, batch_wait_ms=50)
    with ServerThread(policy, cfg) as srv:
        replies = concurrent_round(srv.url, [float(i) for i in range(8)])
    for i, r in enumerate(replies):  # every client got its own actions back
        assert not isinstance(r, str)
        np.testing.assert_allclose(r["actions"][:, 0], i + np.arange(HORIZON))
        assert r["batch_size"] == max(policy.calls) or max_batch == 1
    assert sum(policy.calls) == 8
    if max_batch == 1:
        assert policy.calls == [1] * 8
    else:
        assert len(policy.calls) < 8 and max(policy.calls) > 1


def test_event_loop_keeps_serving_while_inference_runs():
    blocking = BlockingPolicy()
    entered, release = blocking.entered, blocking.release
    with ServerThread(blocking, ServerConfig(port=0)) as srv:
        busy, _ = raw_client(srv.url)
        busy.send(wire.pack(good_obs(1.0)))
        assert entered.wait(10)  # the forward pass is running and will not return yet
        url = srv.url.replace("ws://", "http://") + "/healthz"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
        other, meta = raw_client(srv.url)  # new connections are accepted and validated
        assert meta["name"] == "counting"
        assert isinstance(ask(other, wire.pack({"prompt": "x"})), str)
        assert not release.is_set()
        release.set()
        assert wire.unpack(busy.recv(timeout=10))["actions"][0, 0] == 1.0

"""The upload channel: robots send finished episodes, the server stores them durably."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import CountingPolicy
from websockets.sync.client import connect

from anyskill.data.format import vector_feature
from anyskill.data.reader import Dataset
from anyskill.data.writer import EpisodeWriter
from anyskill.serve import wire
from anyskill.serve.episodes import PATH, EpisodeRejected, EpisodeSink, EpisodeUploader
from anyskill.serve.server import ServerConfig, ServerThread


@pytest.fixture
def store(tmp_path):
    features = {"observation.state": vector_feature(4), "action": vector_feature(2)}
    with EpisodeWriter.create(tmp_path / "data", features, fps=10) as w:
        yield w


def frames(t: int, state_dim: int = 4):
    return {
        "observation.state": np.arange(t * state_dim, dtype=np.float32).reshape(t, state_dim),
        "action": np.ones((t, 2), np.float32),
    }


def test_uploaded_episodes_land_in_the_store_with_the_policy_version(store):
    sink = EpisodeSink(store, "recap-r1")
    with ServerThread(CountingPolicy(), ServerConfig(port=0), episode_sink=sink) as srv:
        with EpisodeUploader(srv.url) as up:
            assert up.features == {"observation.state": (4,), "action": (2,)}
            assert up.policy_version == "recap-r1"
            iv = np.zeros(5, bool)
            iv[2:4] = True
            assert up.send(frames(5), "push the red block", True, iv, {"robot": "a"}) == 0
            assert up.send(frames(3), "push the red block", False) == 1
    store.close()
    ds = Dataset.open(store.root)
    ep = ds.episodes
    assert ds.num_episodes == 2 and list(ep.length) == [5, 3]
    assert list(ep.policy_version) == ["recap-r1", "recap-r1"]
    assert list(ep.success) == [1, 0]
    assert np.asarray(ds.columns["intervention"], bool)[:5].tolist() == iv.tolist()
    np.testing.assert_array_equal(
        np.asarray(ds.columns["observation.state"])[:5], frames(5)["observation.state"]
    )


@pytest.mark.parametrize(
    "bad, field",
    [
        (lambda f: {"action": f["action"]}, "frames.observation.state"),
        (lambda f: {**f, "action": f["action"][:2]}, "frames.action"),
        (
            lambda f: {**f, "observation.state": np.zeros((5, 3), np.float32)},
            "frames.observation.state",
        ),
        (lambda f: {**f, "action": np.full((5, 2), np.nan, np.float32)}, "frames.action"),
    ],
)
def test_a_bad_episode_is_refused_by_name_and_nothing_is_stored(store, bad, field):
    sink = EpisodeSink(store, "v")
    with ServerThread(CountingPolicy(), ServerConfig(port=0), episode_sink=sink) as srv:
        with EpisodeUploader(srv.url) as up:
            with pytest.raises(EpisodeRejected) as e:
                up.send(bad(frames(5)), "task", True)
            assert e.value.field == field
            assert up.send(frames(2), "task", True) == 0  # the connection keeps working
    assert sink.stored == [0]


def test_a_server_without_a_sink_refuses_uploads_but_still_serves(store):
    with ServerThread(CountingPolicy(), ServerConfig(port=0)) as srv:
        with connect(srv.url + PATH) as ws, pytest.raises(Exception, match="no episode uploads"):
            ws.recv(timeout=5)
        with connect(srv.url) as ws:
            meta = wire.unpack(ws.recv(timeout=5))
            assert meta["name"] == "counting"

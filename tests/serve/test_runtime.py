"""Robot-side runtime: chunk alignment and blending, fallback and hand-back, recording."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from serve_helpers import CountingPolicy, good_obs

from anyskill.serve.runtime import (
    ChunkRuntime,
    ExecutionLog,
    LinkFaults,
    PolicyLink,
    Reply,
    RuntimeConfig,
    boundary_jerk,
    hold_still,
    jerk,
    log_to_store,
)
from anyskill.serve.server import ServerConfig, ServerThread


def test_runtime_imports_without_jax():
    code = (
        "import sys, anyskill.serve.runtime\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('jax', 'jaxlib', 'flax', 'optax', 'tyro', 'pyarrow'))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


class FakeLink:
    """A link whose replies the test delivers by hand."""

    def __init__(self, horizon: int = 5, **metadata):
        self.metadata = {"action_horizon": horizon, **metadata}
        self.connected = True
        self.busy = False
        self.sent: list[int] = []
        self.requests: list[dict] = []
        self._reply = None

    def request(self, obs, tag):
        if self.busy or not self.connected:
            return False
        self.busy = True
        self.sent.append(tag)
        self.requests.append(obs)
        return True

    def reply(self, actions, error=None, latency_s=0.01):
        self._reply = Reply(self.sent[-1], actions, latency_s, error)
        self.busy = False

    def poll(self):
        r, self._reply = self._reply, None
        return r


def chunk(values) -> np.ndarray:
    return np.stack([np.asarray(values, np.float32)] * 2, -1)


OBS = {"observation/state": np.zeros(3, np.float32)}


def make(link, **cfg):
    cfg.setdefault("wait_first_chunk_s", 0.0)
    return ChunkRuntime(link, lambda obs: np.full(2, -1.0, np.float32), RuntimeConfig(**cfg))


def test_new_chunk_is_aligned_by_steps_since_its_request():
    link = FakeLink(horizon=10)
    rt = make(link, lead=2, blend_steps=0)
    assert rt.step(OBS)[0] == -1.0  # nothing yet: fallback, and a request for step 0 goes out
    assert link.sent and link.sent[-1] % 1_000_000 == 0
    rt.step(OBS)
    rt.step(OBS)
    link.reply(chunk(np.arange(10) * 10))  # planned at step 0, arrives before step 3
    assert rt.step(OBS)[0] == 30.0  # executes C[3], not C[0]
    assert rt.log.boundary[3] and rt.log.intervention[:3] == [True] * 3
    assert not rt.log.intervention[3]


def test_blend_cross_fades_old_plan_into_new_chunk():
    link = FakeLink(horizon=10)
    rt = make(link, lead=8, blend_steps=3)
    rt.step(OBS)
    link.reply(chunk(np.zeros(10)))
    rt.step(OBS)  # step 1: C0[1] = 0; remaining 8 <= lead: the next request goes out now
    link.reply(chunk(np.ones(10)))
    got = [rt.step(OBS)[0] for _ in range(5)]
    np.testing.assert_allclose(got, [0.25, 0.5, 0.75, 1.0, 1.0])


def test_stale_reply_is_dropped():
    link = FakeLink(horizon=4)
    rt = make(link, lead=0, blend_steps=0)
    rt.step(OBS)  # request tagged step 0
    for _ in range(5):
        rt.step(OBS)
    link.reply(chunk(np.arange(4)))  # 6 steps later: past the 4-step horizon
    assert rt.step(OBS)[0] == -1.0 and rt.counts["stale"] == 1


def test_deadline_miss_engages_fallback_and_next_chunk_hands_back():
    link = FakeLink(horizon=4)
    rt = make(link, lead=1, blend_steps=0)
    rt.step(OBS)
    link.reply(chunk([5, 5, 5, 5]))
    acts = [rt.step(OBS)[0] for _ in range(4)]  # steps 1-3 from the chunk, then fallback
    assert acts == [5, 5, 5, -1]
    assert rt.counts["deadline_misses"] == 1
    assert link.sent[-1] % 1_000_000 == 2  # asked at step 2, when `lead` actions remained
    link.reply(chunk([7, 8, 9, 10]))  # planned for step 2, arrives before step 5: C[3]
    assert rt.step(OBS)[0] == 10.0
    assert rt.log.intervention == [True, False, False, False, True, False]
    assert rt.log.boundary == [False, True, False, False, True, True]


REALTIME = {
    "method": "guided",
    "prefix_field": "realtime/action_prefix",
    "delay_field": "realtime/delay",
    "max_delay": None,
}


def test_delay_is_estimated_from_round_trips_and_sets_the_lead():
    """A scripted link at 10 Hz: round trips of 30 ms, then 250 ms, then 120 ms: the delay
    (steps from request to use) follows the 0.9 quantile of the last round trips."""
    link = FakeLink(horizon=10, control_hz=10.0, execute_horizon=4)
    rt = make(link, blend_steps=0, delay_window=4)
    assert (rt.delay_steps, rt.lead) == (1, 0)  # nothing measured: the next step
    got = []
    for latency in [0.03] * 4 + [0.25] * 4 + [0.12] * 4:
        while not link.busy:
            rt.step(OBS)
        link.reply(chunk(np.zeros(10)), latency_s=latency)
        rt.step(OBS)
        got.append(rt.delay_steps)
    assert got[:4] == [1] * 4
    assert got[7] == 3  # four 250 ms round trips: 2.5 steps, rounded up
    assert got[-1] == 2 and rt.lead == 1  # 120 ms: 1.2 steps -> 2


def test_real_time_requests_carry_the_rest_of_the_plan_and_the_delay():
    link = FakeLink(horizon=6, control_hz=10.0, execute_horizon=2, realtime=REALTIME)
    rt = make(link, blend_steps=3)
    rt.step(OBS)
    assert "realtime/action_prefix" in link.requests[0]  # nothing planned yet: empty
    assert len(link.requests[0]["realtime/action_prefix"]) == 0
    link.reply(chunk(np.arange(6)), latency_s=0.15)  # 150 ms: a delay of 2 steps
    a1 = rt.step(OBS)  # step 1 executes C[1]; 0 of the 2-step horizon remains: ask now
    req = link.requests[-1]
    np.testing.assert_array_equal(req["realtime/action_prefix"][:, 0], [1, 2, 3, 4, 5])
    assert req["realtime/delay"] == 2 and link.sent[-1] % 1_000_000 == 1
    # no blending: the chunk continues the plan itself
    a2 = rt.step(OBS)
    link.reply(chunk(np.arange(6) + 10.0), latency_s=0.15)
    a3 = rt.step(OBS)  # the new chunk, planned for step 1, at step 3: C'[2] = 12
    assert (a1[0], a2[0], a3[0]) == (1.0, 2.0, 12.0)
    # C' arrived 2 steps late for its 2-step horizon: the next request goes out at once
    assert rt.counts["realtime_requests"] == 3 and link.sent[-1] % 1_000_000 == 3


def test_a_late_chunk_leaves_the_robot_on_the_rest_of_its_plan():
    link = FakeLink(horizon=6, execute_horizon=2)
    rt = make(link, blend_steps=0, lead=0, realtime=False)
    rt.step(OBS)
    link.reply(chunk(np.arange(6)))
    acts = [rt.step(OBS)[0] for _ in range(6)]  # the next chunk never comes
    assert acts == [1, 2, 3, 4, 5, -1]  # past its execute horizon, then the fallback
    assert rt.counts["late_steps"] == 4 and rt.counts["deadline_misses"] == 1


def test_realtime_required_but_not_served_is_an_error():
    with pytest.raises(RuntimeError, match="does not announce real-time"):
        make(FakeLink(), realtime=True).step(OBS)


def test_error_reply_counts_and_keeps_fallback():
    link = FakeLink()
    rt = make(link)
    rt.step(OBS)
    link.reply(None, {"error": "invalid_observation", "field": "observation/state"})
    assert rt.step(OBS)[0] == -1.0
    assert rt.errors[-1]["field"] == "observation/state"


def test_override_is_recorded_as_intervention():
    link = FakeLink()
    rt = make(link)
    a = rt.step(OBS, override=np.array([0.3, 0.4]))
    np.testing.assert_allclose(a, [0.3, 0.4])
    assert rt.log.intervention == [True]


def test_jerk_of_constant_velocity_is_zero_and_boundaries_are_split():
    a = np.stack([np.linspace(0, 1, 8)] * 2, -1)
    np.testing.assert_allclose(jerk(a, 10.0), 0.0, atol=1e-9)
    step = np.zeros((6, 2))
    step[3:] = 1.0  # a jump in the velocity command at the boundary (step 3)
    lg = ExecutionLog(action=list(step), boundary=[False, False, False, True, False, False])
    at, rest = boundary_jerk(lg, 1.0)
    assert len(at) == 2 and len(rest) == 2 and min(at) > 0 and max(rest) == 0


# --------------------------------------------------------------------------- with a server


def _run_until(rt, cond, obs, limit_s=20.0, dt=0.01):
    """Step at ~1/dt Hz until cond() holds; returns whether it did (never asserts a time)."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        rt.step(obs)
        if cond():
            return True
        time.sleep(dt)
    return False


def test_fallback_engages_on_timeout_and_hands_back_on_recovery():
    policy = CountingPolicy()
    obs = good_obs(1.0)
    with ServerThread(policy, ServerConfig(port=0)) as srv:
        link = PolicyLink(srv.url).start(wait_s=10)
        rt = ChunkRuntime(link, hold_still(2), RuntimeConfig(lead=1, blend_steps=0))
        iv = rt.log.intervention
        assert _run_until(rt, lambda: len(iv) >= 10, obs)
        assert not any(iv[-5:])  # on the policy
        policy.delay = 0.6  # the server becomes slower than a chunk lasts (5 steps)
        assert _run_until(rt, lambda: iv[-1], obs)
        assert rt.counts["deadline_misses"] >= 1
        policy.delay = 0.0
        assert _run_until(rt, lambda: not any(iv[-5:]), obs)  # handed back
        assert rt.counts["chunks"] >= 3
        link.close()


def test_link_reconnects_after_injected_disconnect():
    policy = CountingPolicy()
    obs = good_obs(1.0)
    with ServerThread(policy, ServerConfig(port=0)) as srv:
        faults = LinkFaults(disconnect_every_s=0.3, disconnect_for_s=0.2)
        link = PolicyLink(srv.url, faults).start(wait_s=10)
        rt = ChunkRuntime(link, hold_still(2), RuntimeConfig(lead=1, blend_steps=0))
        assert _run_until(rt, lambda: link.connects >= 2 and not rt.log.intervention[-1], obs)
        assert link.drops >= 1
        link.close()


def test_link_reports_unreachable_server():
    link = PolicyLink("ws://127.0.0.1:1", backoff_s=(0.01, 0.05)).start(wait_s=0.2)
    assert not link.connected and not link.request(OBS, 0)
    link.close()


def test_executed_actions_are_recorded_into_the_episode_store(tmp_path):
    pytest.importorskip("pyarrow")
    from anyskill.data.format import vector_feature
    from anyskill.data.reader import Dataset
    from anyskill.data.writer import EpisodeWriter

    link = FakeLink(horizon=4)
    rt = make(link, lead=0, blend_steps=0)
    rt.new_episode("go to the red zone")
    states = [np.full(3, t, np.float32) for t in range(6)]
    executed = [rt.step({"observation/state": states[0]})]
    link.reply(chunk([1, 2, 3, 4]))
    for s in states[1:]:
        executed.append(rt.step({"observation/state": s}))
    log = rt.log
    np.testing.assert_allclose(np.asarray(log.action), np.asarray(executed))
    assert log.intervention == [True, False, False, False, True, True]
    writer = EpisodeWriter.create(
        tmp_path / "ds",
        {"observation.state": vector_feature(3), "action": vector_feature(2)},
        fps=10,
        durable=False,
    )
    log_to_store(log, writer, success=True, policy_version="counting")
    ds = Dataset.open(tmp_path / "ds")
    ep = ds.episode(0)
    np.testing.assert_allclose(ep["action"], np.asarray(executed))
    np.testing.assert_allclose(ep["observation.state"][:, 0], np.arange(6))
    np.testing.assert_array_equal(ds.intervention, log.intervention)
    assert ds.summary()["by_source"]["corrected"]["success_rate"] == 1.0


def test_runtime_and_run_robot_take_horizon_and_image_size_from_metadata(capsys, monkeypatch):
    """A served policy trained to replan every 2 of its 6 actions, on 16 px images: the
    runtime executes 2 per chunk and run-robot renders 16 px, without being told."""
    import anyskill.serve.robot as robot
    from anyskill.cli import main
    from anyskill.policies.registry import make_policy

    policy = make_policy(
        "random-mlp", obs_dim=4, image_size=16, width=8, depth=1, horizon=6, execute_horizon=2
    )
    built: dict = {}

    class FakeSim:
        def __init__(self, task, image_size):
            built["image_size"] = image_size

        def run(self, server, **kw):
            raise ConnectionError("stop here")

    monkeypatch.setattr(robot, "SimRobot", FakeSim)
    with ServerThread(policy, ServerConfig(port=0)) as srv:
        link = PolicyLink(srv.url).start(wait_s=10)
        try:
            assert link.metadata["execute_horizon"] == 2
            assert ChunkRuntime(link, hold_still(2)).execute_horizon == 2
            cfg = RuntimeConfig(execute_horizon=4)  # an explicit setting still wins
            assert ChunkRuntime(link, hold_still(2), cfg).execute_horizon == 4
        finally:
            link.close()
        assert main(["run-robot", "--server", srv.url, "--episodes", "1"]) == 2
        assert built["image_size"] == 16
        assert main(["run-robot", "--server", srv.url, "--image-size", "32"]) == 2
        assert built["image_size"] == 32

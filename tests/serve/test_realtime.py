"""Real-time chunking end to end: a served flow policy, a link with injected latency, the
robot-side runtime. With the plan sent along, new chunks join the executing one; without
it they jump."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "policies"))
from policy_runs import tiny_model, vla_batch, write_policy_run  # noqa: E402

from anyskill.policies.registry import load_policy  # noqa: E402
from anyskill.serve.runtime import (  # noqa: E402
    ChunkRuntime,
    LinkFaults,
    PolicyLink,
    RuntimeConfig,
    hold_still,
)
from anyskill.serve.server import ServerConfig, ServerThread  # noqa: E402


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")
def test_real_time_chunking_joins_chunks_that_naive_switching_jumps_between(tmp_path):
    """120 ± 10 ms injected on the link at 20 Hz (a delay of ~3 steps) against an untrained
    VLA of 8-action chunks, whose successive chunks disagree wildly: the jump between the
    old plan and the new chunk where it takes over, with and without real-time chunking."""
    run = tmp_path / "run"
    write_policy_run(run, dataclasses.replace(tiny_model("vla"), horizon=8, num_steps=5))
    policy = load_policy(run, realtime_mask="soft")  # Black et al.'s mask
    obs = {k: v[0] for k, v in vla_batch(1).items()}
    gaps, used = {}, {}
    with ServerThread(policy, ServerConfig(port=0)) as srv:
        for realtime in (True, False):
            faults = LinkFaults(latency_ms=120, jitter_ms=10, seed=1)
            link = PolicyLink(srv.url, faults).start(wait_s=30)
            assert link.connected
            cfg = RuntimeConfig(realtime=realtime, blend_steps=0, control_hz=20.0)
            rt = ChunkRuntime(link, hold_still(2), cfg)
            start = time.monotonic()
            for i in range(80):
                rt.step(obs)
                time.sleep(max(0.0, start + (i + 1) * 0.05 - time.monotonic()))
            link.close()
            g = np.asarray(rt.log.switch_gap)
            gaps[realtime] = np.median(g[np.isfinite(g)])
            used[realtime] = (rt.counts["realtime_requests"], rt.delay_steps, rt.counts["chunks"])
    assert used[True][0] > 10 and used[False][0] == 0, used
    assert used[True][1] >= 2, used  # the runtime saw the latency
    assert gaps[True] < 0.5 * gaps[False], gaps

"""Trained runs served: a flywheel run (RECAP with its indicator, guidance and best-of-N) and a
CRL run, loaded through the registry, served by ``PolicyServer`` and driven by openpi's own
client (``openpi-client``, when installed) and by anyskill's robot-side ``PolicyLink``."""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "policies"))
from policy_runs import IMAGE_SIZE, STATE_DIM, write_crl_run, write_flywheel_run  # noqa: E402

from anyskill.algos.crl.config import get_preset  # noqa: E402
from anyskill.cli import main  # noqa: E402
from anyskill.policies.base import GOAL, IMAGE, PROMPT, STATE, stack_batch  # noqa: E402
from anyskill.policies.registry import load_policy  # noqa: E402
from anyskill.serve.runtime import PolicyLink  # noqa: E402
from anyskill.serve.server import ServerConfig, ServerThread  # noqa: E402

CLIENTS = ["openpi-client", "anyskill"]


def drive(client: str, url: str, requests: list[dict]) -> tuple[dict, list]:
    """The server's metadata and its reply to each request, sent one at a time: the
    ``[H, A]`` actions, or the error text."""
    if client == "openpi-client":
        mod = pytest.importorskip("openpi_client.websocket_client_policy")
        c = mod.WebsocketClientPolicy(url)
        replies = []
        for obs in requests:
            try:
                replies.append(c.infer(obs)["actions"])
            except RuntimeError as e:  # openpi-client's way of surfacing an error reply
                replies.append(str(e))
        return c.get_server_metadata(), replies
    link = PolicyLink(url, reply_timeout_s=60).start(wait_s=30)
    try:
        assert link.connected, f"no connection to {url}"
        replies = []
        for tag, obs in enumerate(requests):
            assert link.request(obs, tag)
            deadline = time.monotonic() + 60
            while (reply := link.poll()) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            assert reply is not None and reply.tag == tag
            replies.append(reply.actions if reply.error is None else str(reply.error))
        return link.metadata, replies
    finally:
        link.close()


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")
@pytest.mark.parametrize("client", CLIENTS)
def test_a_flywheel_run_serves_recap_with_guidance_and_best_of_n(tmp_path, client):
    run = tmp_path / "fw"
    write_flywheel_run(run, "vla", "embedding", beta=2.0)
    policy = load_policy(run, best_of=2)
    good = {
        STATE: np.linspace(-1, 1, STATE_DIM).astype(np.float32),
        IMAGE: np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 90, np.uint8),
        PROMPT: "push the red block into the blue zone",
    }
    long = {**good, PROMPT: " ".join(["word"] * 13)}  # the model reads 12 words
    with ServerThread(policy, ServerConfig(port=0, max_batch=2, error_delay_ms=0)) as srv:
        meta, replies = drive(client, srv.url, [good, long, good])
    assert meta["name"] == "flywheel-vla-recap-r1+recap+best-of-2"
    # the client sends what a plain VLA reads; the indicator is set inside the server
    assert set(meta["inputs"]) == {STATE, IMAGE, PROMPT}
    assert (meta["action_horizon"], meta["action_dim"], meta["execute_horizon"]) == (4, 2, 4)
    first, error, again = replies
    assert first.shape == (4, 2) and first.dtype == np.float32 and np.isfinite(first).all()
    assert isinstance(error, str) and "prompt" in error and "13 words" in error
    assert again.shape == (4, 2) and not np.array_equal(first, again)  # fresh noise per call


@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used:DeprecationWarning")
@pytest.mark.parametrize("client", CLIENTS)
def test_a_crl_run_serves_its_actor(tmp_path, client, tiny_overrides):
    run = tmp_path / "crl"
    write_crl_run(run, dataclasses.replace(get_preset("arena-smoke"), **tiny_overrides))
    policy = load_policy(run)
    obs_dim, goal_dim = (s.shape[0] for s in policy.spec.inputs)
    rng = np.random.default_rng(0)
    requests = [
        {STATE: rng.normal(size=obs_dim).astype(np.float32), GOAL: rng.normal(size=goal_dim)}
        for _ in range(3)
    ]
    with ServerThread(policy, ServerConfig(port=0, max_batch=2, error_delay_ms=0)) as srv:
        meta, replies = drive(client, srv.url, [*requests, {STATE: requests[0][STATE]}])
    assert meta["name"] == "anyskill-crl-pointmaze-arena"
    assert set(meta["inputs"]) == {STATE, GOAL}
    assert (meta["action_horizon"], meta["execute_horizon"]) == (1, 1)
    # the deterministic actor: exactly what the policy computes here for the same batch (of
    # one: each request was alone in its batch), whatever the key
    twin = load_policy(run)
    for got, obs in zip(replies[:3], requests, strict=True):
        assert got.shape == (1, 2) and np.abs(got).max() <= 1.0
        want = twin.act(stack_batch(twin.spec, [twin.spec.validate(obs)]), None)
        np.testing.assert_array_equal(got, want[0])
    assert isinstance(replies[3], str) and "observation/goal" in replies[3]


def test_serve_options_are_checked_before_anything_is_served(tmp_path, capsys):
    run = tmp_path / "fw"
    write_flywheel_run(run, "mlp-flow", "prompt")
    assert main(["serve", str(run), "--port", "0", "--policy-name", "bc", "--beta", "2"]) == 2
    assert "guidance applies to the RECAP policy" in capsys.readouterr().err
    assert main(["serve", str(run), "--port", "0", "--best-of", "0"]) == 2
    assert "--best-of must be >= 1, got 0" in capsys.readouterr().err
    assert main(["serve", "--policy", "random-mlp", "--beta", "2", "--port", "0"]) == 2
    assert "--beta apply to checkpoints" in capsys.readouterr().err
    assert main(["serve", str(run), "--port", "0", "--width", "8"]) == 2
    assert "--width apply to the built-in random-mlp" in capsys.readouterr().err
    assert main(["serve", str(run / "start"), "--port", "0", "--best-of", "2"]) == 2
    assert "takes no option best_of" in capsys.readouterr().err

"""A person as the corrector: key parsing, the control state machine, and a deployment driven
by scripted keys (what a person at the terminal would press)."""

from __future__ import annotations

import io

import jax
import numpy as np
import pytest

from anyskill import envs
from anyskill.flywheel import human as H
from anyskill.flywheel.deploy import CorrectorConfig, deploy
from anyskill.policies.base import PROMPT, ChunkPolicy, InputSpec, PolicySpec


def test_parse_keys_arrows_space_letters():
    assert H.parse_keys("\x1b[A\x1b[Dw S\x1b[1;5Hq") == ["up", "left", "w", "space", "s", "q"]


def test_space_toggles_control_keys_steer_x_stops_q_quits():
    keys = H.ScriptedKeys({0: ["d"], 1: ["space"], 2: ["w"], 3: ["x"], 4: ["space"], 5: ["q"]})
    p = H.HumanCorrector(keys, speed=0.5, hz=0)
    p.read()
    assert not p.holding and np.allclose(p.action(), [0.5, 0.0])
    p.read()
    assert p.holding
    p.read()
    assert np.allclose(p.action(), [0.0, 0.5])
    p.read()
    assert np.allclose(p.action(), 0.0)
    p.read()
    assert not p.holding and p.handed_back
    p.read()
    assert not p.watching


def test_terminal_keys_refuse_a_non_terminal():
    with pytest.raises(ValueError, match="not a terminal"):
        with H.TerminalKeys(io.StringIO()):
            pass


def test_ansi_image_has_one_cell_per_column_and_row_pair():
    img = np.zeros((5, 3, 3), np.uint8)
    text = H.ansi_image(img)
    assert text.count("\n") == 2  # ceil(5 / 2) lines
    assert text.count("\u2580") == 9


class StillPolicy(ChunkPolicy):
    """A policy that never moves (chunks of zeros): every progress must come from the person."""

    spec = PolicySpec(
        (InputSpec(PROMPT, (), "str"),), action_dim=2, action_horizon=10, control_hz=10
    )

    def act(self, obs, key):
        return np.zeros((len(obs[PROMPT]), 10, 2), np.float32)


def deploy_with(keys, corrector, episodes=1):
    env = envs.make("tabletop-reach")
    person = H.HumanCorrector(keys, speed=1.0, hz=0, out=io.StringIO())
    ep = deploy(
        env,
        StillPolicy(),
        jax.random.key(3),
        num_envs=episodes,
        replan_every=5,
        corrector=corrector,
        person=person,
    )
    return ep, person


def test_person_takes_control_steers_and_hands_back():
    # steps 0-2 the policy (still); SPACE at step 3 takes control, "d" pushes right for
    # steps 3-7; SPACE at step 8 hands back.
    keys = H.ScriptedKeys({3: ["space", "d"], 8: ["space"]})
    ep, person = deploy_with(keys, CorrectorConfig(kind="human", trigger="human", fraction=1.0))
    iv = ep.intervention[0]
    assert not iv[:3].any() and iv[3:8].all() and not iv[8 : ep.length[0]].any()
    np.testing.assert_allclose(ep.action[0, 3:8], [[1.0, 0.0]] * 5)
    np.testing.assert_allclose(ep.action[0, :3], 0.0)
    x = ep.state[0, :, 0]  # pusher x
    assert x[2] == pytest.approx(x[0], abs=1e-4)  # the still policy does not move it
    assert x[8] > x[3] + 0.2  # the person's five steps to the right did
    assert ep.state.shape[1] >= ep.length[0] and person.watching


def test_stall_trigger_hands_control_to_the_person_for_correction_steps():
    # the still policy stalls; after stall_window steps the person is handed control for
    # correction_steps steps (no key pressed: the pusher stays still), then the policy again
    cfg = CorrectorConfig(
        kind="human", trigger="stall", fraction=1.0, stall_window=10, correction_steps=7
    )
    ep, _ = deploy_with(H.ScriptedKeys({}), cfg)
    iv = ep.intervention[0, : ep.length[0]]
    first = int(np.argmax(iv))
    assert iv.any() and first == 10  # stall seen at the replanning 10 steps (the window) in
    assert iv[first : first + 7].all() and not iv[first + 7]


def test_q_stops_watching_and_unwatched_episodes_are_never_corrected():
    keys = H.ScriptedKeys({0: ["space", "q"]})
    ep, person = deploy_with(
        keys, CorrectorConfig(kind="human", trigger="human", fraction=1.0), episodes=2
    )
    assert not person.watching and not ep.intervention.any()
    assert ep.state.shape[0] == 2 and len(ep.task) == 2


def test_human_trigger_needs_a_human_corrector():
    with pytest.raises(ValueError, match="needs --corrector.kind human"):
        CorrectorConfig(kind="expert", trigger="human")

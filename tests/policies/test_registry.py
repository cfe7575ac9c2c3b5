"""The checkpoint-loader registry: algorithms register formats, lookups import them lazily,
options are checked per format, and every refusal names the file and the fix."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from policy_runs import write_flywheel_run

from anyskill import rundir
from anyskill.policies import registry
from anyskill.policies.base import STATE, ChunkPolicy, InputSpec, PolicySpec
from anyskill.policies.registry import PolicyLoadError, load_policy, register_loader


class Constant(ChunkPolicy):
    def __init__(self, value: float):
        self.value = value
        self.spec = PolicySpec((InputSpec(STATE, (1,), "float32"),), 1, 2, 10.0, name="const")

    def act(self, obs, key):
        return np.full((len(obs[STATE]), 2, 1), self.value, np.float32)


@pytest.fixture
def loaders(monkeypatch):
    """The registry's loader list, restored after the test."""
    registry.checkpoint_loaders()  # the algorithms' loaders first, as in real use
    monkeypatch.setattr(registry, "CHECKPOINT_LOADERS", list(registry.CHECKPOINT_LOADERS))
    return registry.CHECKPOINT_LOADERS


def test_a_registered_loader_serves_its_directories(tmp_path, loaders):
    def recognises(path):
        return (path / "constant.txt").is_file()

    def load(path, scale: float = 1.0):
        return Constant(scale * float((path / "constant.txt").read_text()))

    register_loader("constant policy (tests)", recognises, load, options=("scale",))
    run = tmp_path / "const"
    run.mkdir()
    (run / "constant.txt").write_text("3.5")
    policy = load_policy(run)
    assert policy.infer([{STATE: np.zeros(1, np.float32)}])[0, 0, 0] == 3.5
    assert load_policy(run, scale=2.0).value == 7.0
    with pytest.raises(PolicyLoadError, match=r"constant policy \(tests\), which takes no option "):
        load_policy(run, beta=2.0)
    # registering the name again replaces the format in place
    register_loader("constant policy (tests)", recognises, lambda path: Constant(-1.0))
    assert load_policy(run).value == -1.0
    assert [x.name for x in loaders].count("constant policy (tests)") == 1
    # a directory no loader recognises lists every known format
    with pytest.raises(PolicyLoadError) as e:
        load_policy(tmp_path)
    for name in ("policy run", "flywheel run", "CRL run", "constant policy (tests)"):
        assert name in str(e.value)


def test_the_registry_imports_no_algorithm_until_asked():
    code = (
        "import sys, anyskill.policies.registry, anyskill.policies.wrappers\n"
        "bad = [m for m in sys.modules if m.startswith('anyskill.algos') or m == 'jax']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_each_format_is_recognised_by_its_own_config(tmp_path):
    """A flywheel config also names a model (it is not a policy run), a CRL config has
    networks but no model; each goes to its own loader, which names what is missing."""
    fw = tmp_path / "fw"
    fw.mkdir()
    from anyskill.flywheel.config import FlywheelConfig

    rundir.write_json(fw / "config.json", rundir.config_to_json(FlywheelConfig(run_dir=fw)))
    with pytest.raises(PolicyLoadError, match="starting policy is not trained yet"):
        load_policy(fw)
    crl = tmp_path / "crl"
    crl.mkdir()
    from anyskill.algos.crl.config import CRLConfig

    rundir.write_json(crl / "config.json", rundir.config_to_json(CRLConfig()))
    with pytest.raises(rundir.RunError, match="has no checkpoint yet"):
        load_policy(crl)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(PolicyLoadError, match="not a format anyskill can serve"):
        load_policy(broken)


def test_a_flywheel_run_refuses_options_that_do_not_apply(tmp_path):
    run = tmp_path / "fw"
    write_flywheel_run(run, "mlp-flow", "prompt", beta=1.5)
    assert load_policy(run).beta == 1.5  # the run's guidance
    with pytest.raises(ValueError, match="unknown flywheel policy.*Did you mean 'recap'"):
        load_policy(run, policy_name="recapp")
    with pytest.raises(PolicyLoadError, match="guidance applies to the RECAP policy"):
        load_policy(run, policy_name="bc", beta=2.0)
    with pytest.raises(PolicyLoadError, match="--best-of must be an integer >= 1"):
        load_policy(run, best_of=0)
    (run / "value.msgpack").unlink()
    with pytest.raises(PolicyLoadError, match="value.msgpack does not exist yet"):
        load_policy(run, best_of=4)
    (run / "policies" / "filtered.msgpack").unlink()
    with pytest.raises(PolicyLoadError, match="filtered.msgpack does not exist"):
        load_policy(run, policy_name="filtered")
    start = load_policy(run, policy_name="start")
    assert start.spec.name == "flywheel-mlp-flow-start"
    assert load_policy(run, policy_name="bc").spec.name == "flywheel-mlp-flow-bc-r1"

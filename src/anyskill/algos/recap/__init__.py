"""RECAP (π*0.6): a value function across tasks, advantages, and the advantage indicator the
policy is conditioned on. The flywheel (``anyskill.flywheel``) runs it round after round."""

"""RECAP (π*0.6): a value function across tasks, advantages, and the advantage indicator the
policy is conditioned on. ``advantage`` holds the per-frame equations, ``value`` the
distributional value function, ``recap`` the steps as functions of typed inputs (value
predictions, advantages and indicator, held-out failure detection, policy fine-tuning) and
``policy`` the deployed policies. The flywheel (``anyskill.flywheel``) runs it round after
round."""

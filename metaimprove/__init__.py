"""metaimprove: learn a policy-improvement operator f(θ, τ, ask) → θ' from RL teachers.

Read the package top-down in pipeline order: ``tasks`` → ``envs`` → ``policy`` → ``rollout`` →
``teachers`` → ``collect`` → ``features`` → ``dataset`` → ``operator`` → ``train`` → ``apply`` → ``plot``.
"""

__version__ = "0.1.0"

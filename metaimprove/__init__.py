"""metaimprove: learn a policy-improvement operator f(θ, τ, ask) → θ' from RL teachers.

Read the package top-down in pipeline order: ``sim`` → ``teachers`` → ``data`` → ``operator`` → ``training`` →
``evaluation``.
"""

__version__ = "0.1.0"

"""metaimprove: learn a policy-improvement operator f(θ, τ, ask) → θ' from RL teachers.

Read the subpackages top-down in pipeline order: ``sim`` → ``teachers`` → ``data`` → ``operator`` → ``training`` →
``evaluation``; ``interop`` reads and writes other libraries' policies, and ``cli``, ``config`` and ``pipeline`` drive
the stages.
"""

__version__ = "0.1.0"

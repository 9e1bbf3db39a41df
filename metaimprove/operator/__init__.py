"""The improvement operator: what it reads of τ, its networks, its checkpoint and its runtime."""

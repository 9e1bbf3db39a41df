"""Tests of metaimprove.operator: features, networks, checkpoints, the runtime that applies them."""

"""Tests of metaimprove.sim: task families, envs, policies, rollouts."""

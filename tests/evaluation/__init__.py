"""Tests of metaimprove.evaluation: apply, the guard, baselines, statistics, plots."""

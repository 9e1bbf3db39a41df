"""Tests of metaimprove.training: pairs, training, relabeling."""

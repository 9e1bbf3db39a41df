"""Tests of metaimprove.teachers: PPO and ARS."""

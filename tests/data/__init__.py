"""Tests of metaimprove.data: collecting datasets."""

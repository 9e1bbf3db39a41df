"""Tests of the studies in research/, run as scripts at their smallest sizes."""

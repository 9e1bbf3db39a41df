"""Tests of metaimprove.interop: SB3 import and export."""

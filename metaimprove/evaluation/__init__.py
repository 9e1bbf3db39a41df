"""Applying operators beside their peers under one protocol, with statistics and plots."""

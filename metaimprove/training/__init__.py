"""Fitting the operator: hindsight pairs from datasets, relabeling, the supervised fit."""

"""Fitting the operator (hindsight pairs from datasets, relabeling, the supervised fit) and meta-learning a start
for the peer that fine-tunes it."""

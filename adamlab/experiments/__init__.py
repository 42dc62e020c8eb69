"""Experiments on top of the one training loop: compare, sweep, studies and their reports."""

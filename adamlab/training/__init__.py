"""Training: state, pure steps, the jit/pmap engines, the one loop, checkpoints, run files.

Imports run downward only: `adamlab.training` uses `adamlab.optim`, `adamlab.data` and
`adamlab.models`, never `adamlab.experiments` or the command line.
"""

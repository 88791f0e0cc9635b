"""Small helpers every other package may use: file hashing and atomic writes, the device rule, ranking metrics.

The bottom layer: it imports no project package. `common.files` and `common.metrics` need only the standard
library and numpy (so `cache`, which knows no torch, may use them); `common.device` is the one module with torch.
"""

"""Compute primitives every layer uses: ``Weights`` (a model's named tensors as one value), its
buffer pool, the device choice and the errors a user may see. Imports nothing else of fedsweep."""

"""The PyTorch side: the model built from the spec, and the single-device / DDP trainer."""

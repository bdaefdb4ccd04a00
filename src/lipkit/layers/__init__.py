"""Lipschitz layers: dense, convolutional, activations, pooling, residual blocks."""

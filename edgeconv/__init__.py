"""edgeconv: take a trained PyTorch or Keras model to edge hardware and prove it still works there."""

__version__ = "0.1.0"

"""Serving a trained model: stateful streaming and exports (TorchScript, ONNX), each
checked against eager PyTorch. Imports torch only, like ``rnnsweep.trial``."""

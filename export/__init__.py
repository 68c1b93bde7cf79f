"""Central-side export: Keras/PyTorch models to TFLite and ONNX artefacts, parity gate, signed bundles."""

"""Central training of gridedge's models: data, task configs, Keras and PyTorch models, baselines, reports.

Heavy frameworks are imported only by the modules that need them (``models_keras``, ``models_torch``),
so ``import trainer`` and the CLI stay light.
"""

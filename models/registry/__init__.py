"""The MLflow face of the models: resolve a URI once, load, register, the pyfuncs, the bundled models."""

"""ftc — a fine-tuning compiler: one TOML spec to a packed dataset, a model and ONNX artifacts."""

__version__ = "0.1.0"

"""slm-loadgen: load generation and trace replay for small-language-model serving."""

__version__ = "0.1.0"

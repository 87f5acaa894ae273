"""An example third-party guidestack plugin (see README.md)."""

__version__ = "0.1.0"

"""guidestack: a plugin-based, composable guidance engine for diffusion-based image restoration."""

__version__ = "0.1.0"

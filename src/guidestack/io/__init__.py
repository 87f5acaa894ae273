"""Image files: safe reading (:mod:`.images`), atomic writing (:mod:`.outputs`) and pictures
(:mod:`.pictures`: compare grids, x0 trajectories).

A library layer between the engine (tensors only) and the applications: the public API reads
user images through :func:`.images.read_image`; the CLI, the bench and the web UI write through
:mod:`.outputs`.  It imports nothing of guidestack but the engine's errors.  The package itself
imports nothing, so ``import guidestack.io.outputs`` stays light.
"""

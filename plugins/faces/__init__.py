"""Faces in the wild: detection, alignment to the prior's template, paste-back."""

"""guidestack's built-in plugins, registered through the same hook third-party plugins use."""

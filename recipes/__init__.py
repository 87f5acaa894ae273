"""Built-in recipes (TOML), read with importlib.resources."""

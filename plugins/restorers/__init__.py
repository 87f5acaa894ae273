"""Built-in restorers: classical (kornia) and learned (torch modules)."""

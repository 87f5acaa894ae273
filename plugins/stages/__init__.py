"""Built-in guidance, initial-latent, latent-update, projection and optimisation stages."""

"""Prior backends: the closed-form Gaussian face prior and diffusers UNets."""

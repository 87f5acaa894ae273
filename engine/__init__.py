"""The engine: priors, schedules, step rules, the sampler loop, hooks, recipes and the CLI."""

"""The ``guidestack`` command line: an application on the public API (:mod:`guidestack.api`).

Core commands (``run``, ``recipes``, ``plugins``, ``validate``, ``explain``, ``new-plugin``)
live here; plugins add their own through ``registry.add_command`` (``degrade``, ``bench``,
``prior fit`` and ``ui`` come from the built-in plugin that way).
"""

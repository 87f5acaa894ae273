"""One exception family, so the CLI can turn any failure into one clear paragraph.

Every error carries a message a user can act on.  ``exit_code`` follows the CLI contract:
2 for usage and recipe errors (the user must change what they typed), 1 for runtime failures.
"""

from __future__ import annotations


class GuidestackError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code: int = 1


class UsageError(GuidestackError):
    """The command line or an argument is wrong."""

    exit_code = 2


class RecipeError(GuidestackError):
    """A recipe is invalid.  ``problems`` holds every ``(path, message)`` found, not just the first."""

    exit_code = 2

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"  {path}: {message}" if path else f"  {message}" for path, message in problems]
        count = len(problems)
        super().__init__(
            f"recipe {source} has {count} problem{'s' if count != 1 else ''}:\n" + "\n".join(lines)
        )


class PluginError(GuidestackError):
    """Plugin discovery or registration failed (duplicate names, bad entry point, API mismatch)."""

    exit_code = 2


class InputError(GuidestackError):
    """An input file (image, mask, reference) cannot be used."""

    exit_code = 2


class PriorUnavailable(GuidestackError):
    """A prior cannot be loaded, e.g. a hub model that was never downloaded and we are offline."""

    exit_code = 2


class OutputError(GuidestackError):
    """Outputs cannot be written without losing something (existing files, a file as folder)."""

    exit_code = 2


class StageError(GuidestackError):
    """A stage failed while running; names the stage and the step so the user knows where."""

    exit_code = 1

    def __init__(
        self, stage: str, hook: str, step: int | None, t: int | None, cause: BaseException
    ):
        self.stage = stage
        self.hook = hook
        self.step = step
        self.t = t
        where = f" at step {step} (t={t})" if step is not None else ""
        super().__init__(
            f"stage '{stage}' failed in {hook}{where}: {type(cause).__name__}: {cause}"
        )


class NonFiniteError(GuidestackError):
    """A loss, gradient or latent became NaN or infinite."""

    exit_code = 1

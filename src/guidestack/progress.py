"""A progress bar on stderr (tqdm), silent with ``--quiet`` or when there is no terminal."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
    """One bar per image (or batch); ``advance`` may carry a postfix such as SHRED's loss."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar: tqdm | None = None

    def start(self, label: str, total: int) -> None:
        self.close()
        if self.enabled:
            self.bar = tqdm(
                total=total,
                desc=label,
                file=sys.stderr,
                unit="step",
                leave=True,
                dynamic_ncols=True,
            )

    def advance(self, postfix: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

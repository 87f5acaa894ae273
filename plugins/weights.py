"""Downloaded weights: one cache folder, one checksum-verified download, one offline message.

Every user of a weights file that is not shipped with guidestack (named priors and restorers,
face-embedding and LPIPS backbones, metrics) finds it and fetches it through this module:

- :func:`models_dir`: ``$GUIDESTACK_MODELS``, else platformdirs' user cache dir
  (``~/.cache/guidestack/models`` on Linux, ``~/Library/Caches/guidestack/models`` on macOS,
  ``%LOCALAPPDATA%\\guidestack\\Cache\\models`` on Windows);
- :func:`download`: ``torch.hub.download_url_to_file`` with a pinned SHA-256 (or the hash prefix
  torchvision puts in its file names), written next to the target and renamed into place, so a
  failed or tampered download leaves nothing behind.  A file without a pinned checksum is never
  downloaded: the message says where to get it and where to put it;
- :class:`ModelCard`: where a file comes from, under which licence, and how to get it by hand.

Offline, every path ends in the same kind of :class:`InputError`: which file, from where, to
which folder (or which option points at a copy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from guidestack.engine.errors import InputError

#: environment variable naming the folder where named models look for their weight files
MODELS_ENV = "GUIDESTACK_MODELS"


def models_dir() -> Path:
    """Where named models look for (and download) their files."""
    value = os.environ.get(MODELS_ENV)
    if value:
        return Path(value).expanduser()
    return platformdirs.user_cache_path("guidestack", appauthor=False) / "models"


@dataclass(frozen=True)
class ModelCard:
    """Where a weight file comes from and under which terms (rendered in docs/models.md)."""

    filename: str
    url: str
    licence: str
    used_by: str
    #: how to fetch it when a plain ``curl`` cannot (Google Drive); ``{dest}`` is the target
    command: str | None = None
    #: SHA-256 of the published file (hex, or a prefix of it); ``None``: not published, so
    #: guidestack does not download it itself
    sha256: str | None = None

    def download_command(self, folder: Path | None = None) -> str:
        folder = models_dir() if folder is None else folder
        dest = folder / self.filename
        fetch = self.command.format(dest=dest) if self.command else f"curl -L -o {dest} {self.url}"
        check = f" && echo '{self.sha256}  {dest}' | sha256sum -c" if self._full_hash else ""
        return f"mkdir -p {folder} && {fetch}{check}"

    @property
    def _full_hash(self) -> bool:
        return self.sha256 is not None and len(self.sha256) == 64


def missing_file_message(what: str, card: ModelCard, alternative: str) -> str:
    """The paragraph shown when a named model's weights are not on this machine."""
    folder = models_dir()
    return (
        f"{what} needs the weight file {card.filename}, which is not in {folder} (set "
        f"{MODELS_ENV} to use another folder). Download it once on a machine with internet "
        f"({card.url}): `{card.download_command(folder)}`, and copy it there. "
        f"Licence: {card.licence}. {alternative}"
    )


def download(url: str, dest: Path, *, sha256: str | None, what: str, hint: str) -> Path:
    """Fetch ``url`` to ``dest`` if its SHA-256 starts with ``sha256``; otherwise (offline, a
    wrong checksum, no checksum to check against) an :class:`InputError` that says how to
    provide the file by hand: download ``url`` and put it at ``dest``, or ``hint``."""
    name = Path(url).name or dest.name
    check = f" (SHA-256 {sha256})" if sha256 and len(sha256) == 64 else ""
    by_hand = (
        f"Download {url}{check} on a machine with internet access and either put it at {dest} "
        f"or {hint}."
    )
    if not sha256:
        raise InputError(
            f"{what} are not on this machine ({dest}) and guidestack downloads only files whose "
            f"checksum it knows, which {name} has none of. {by_hand}"
        )
    tmp = dest.with_name(f".{dest.name}.download")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        import torch  # only to download

        torch.hub.download_url_to_file(url, str(tmp), hash_prefix=sha256, progress=False)
        os.replace(tmp, dest)
    except Exception as exc:  # noqa: BLE001 - any network, disk or checksum failure: same advice
        raise InputError(
            f"{what} are not available offline and could not be downloaded "
            f"({type(exc).__name__}: {exc}). {by_hand}"
        ) from exc
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def locate(card: ModelCard, folder: Path | None = None) -> Path | None:
    """``card``'s file in ``folder`` (default :func:`models_dir`), or ``None``."""
    path = (models_dir() if folder is None else folder) / card.filename
    return path if path.is_file() else None


def fetch(card: ModelCard, what: str, hint: str, folder: Path | None = None) -> Path:
    """``card``'s file: from the cache, or downloaded into it (checksum-verified)."""
    found = locate(card, folder)
    if found is not None:
        return found
    dest = (models_dir() if folder is None else folder) / card.filename
    if card.sha256 is None:
        raise InputError(missing_file_message(what, card, f"Or {hint}."))
    return download(card.url, dest, sha256=card.sha256, what=f"{what}: the weights", hint=hint)

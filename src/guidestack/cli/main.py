"""The ``guidestack`` command line.

Exit codes: 0 success; 2 usage, recipe or input errors (the user must change something);
1 runtime failures.  Errors print as one paragraph; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from guidestack import GuidestackError, PluginError, UsageError, __version__


class _Parser(argparse.ArgumentParser):
    #: a lazily registered command's ``configure``, applied when the command is parsed or its
    #: help shown, so ``guidestack --help`` lists plugin commands without importing them
    pending: Callable[[argparse.ArgumentParser], None] | None = None

    def error(self, message: str) -> None:  # argparse exits 2 too, but with our wording
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")

    def _configure(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending(self)
            _common_options(self)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._configure()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._configure()
        return super().format_help()

    def format_usage(self) -> str:
        self._configure()
        return super().format_usage()


def build_parser(registry) -> argparse.ArgumentParser:
    """The parser: the core commands, then every command a plugin registered."""
    parser = _Parser(
        prog="guidestack",
        description="Restore images with pretrained diffusion priors, composed from plugins.",
    )
    parser.add_argument("--version", action="version", version=f"guidestack {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-run lines")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="restore images with a recipe")
    run.add_argument("recipe", help="built-in recipe name or path to a .toml file")
    run.add_argument("inputs", nargs="+", help="image files or folders of images")
    run.add_argument("-o", "--output", required=True, help="output folder")
    run.add_argument(
        "--mask", help="mask image (white = missing), or a folder of masks named like the inputs"
    )
    run.add_argument(
        "--reference", help="reference image, or a folder of references named like the inputs"
    )
    run.add_argument(
        "--prior", help="prior name, .pt file, diffusers folder or hub id (default: the recipe's)"
    )
    run.add_argument(
        "--seed",
        type=int,
        default=0,
        help="run seed; each input's seed derives from it and its file name",
    )
    run.add_argument("--steps", type=int, help="override sampler.steps")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a recipe value (TOML-typed), e.g. guidance.scale=0.05 or stage.smooth-semantics.weight=2",
    )
    run.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:1, mps (default: cuda if available, else cpu)",
    )
    run.add_argument(
        "--dtype",
        choices=["float32", "float16", "bfloat16"],
        help="denoiser dtype (default: the recipe's prior.dtype)",
    )
    run.add_argument(
        "--batch-size",
        type=int,
        default=1,
        help="images per batch (results equal up to float rounding; bit for bit with --deterministic)",
    )
    run.add_argument(
        "--deterministic",
        action="store_true",
        help="a batch is bit-identical to single runs (sampler.deterministic = true; slower)",
    )
    run.add_argument(
        "--output-size",
        default="input",
        metavar="input|prior|N",
        help="size of the outputs: the input's own (default), the prior's, or N pixels a side",
    )
    run.add_argument(
        "--upsampler",
        metavar="NAME",
        help="how restorations reach the output size: auto (default: Real-ESRGAN x4 where it can "
        "run, else bicubic), bicubic, bilinear, nearest, realesrgan-x4 (`guidestack plugins` lists them)",
    )
    run.add_argument(
        "--trajectory",
        type=int,
        default=0,
        metavar="N",
        help="also write <name>_trajectory.png with N x0 predictions",
    )
    run.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    run.add_argument(
        "--faces",
        action="store_true",
        help="restore every face of (unaligned) photos: detect, align, restore, paste back",
    )
    run.add_argument(
        "--min-face", type=float, default=None, help="with --faces: smallest face side in pixels"
    )
    run.add_argument(
        "--face-threshold",
        type=float,
        default=None,
        help="with --faces: MTCNN probability a face needs",
    )
    run.add_argument(
        "--upscale",
        type=int,
        default=None,
        help="with --faces: output size factor, 1 to 8 (the background is upsampled)",
    )
    run.add_argument(
        "--background-upsampler",
        metavar="NAME",
        help="with --faces: upsampler of the background (default: --upsampler's)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in OUTDIR: inputs it finished are kept, the rest are run",
    )

    recipes = sub.add_parser("recipes", help="list recipes")
    recipes.add_argument("--json", action="store_true")

    plugins = sub.add_parser(
        "plugins", help="list installed plugins with their stages, priors and restorers"
    )
    plugins.add_argument("--json", action="store_true")

    validate = sub.add_parser("validate", help="check a recipe and print it as it would run")
    validate.add_argument("recipe")
    validate.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE"
    )
    validate.add_argument(
        "--prior",
        help="check for this prior (per_prior tables, timesteps); default: the recipe's prior",
    )

    from .plugins import add_plugin_commands

    add_plugin_commands(sub)
    for name in registry.names("command"):
        entry = registry.get("command", name)
        command = sub.add_parser(name, help=entry.description)
        if entry.lazy:  # its module is imported only if this command is used
            command.pending = functools.partial(_configure_plugin_command, entry)
        else:
            entry.obj[0](command)
    for command in sub.choices.values():
        if command.pending is None:
            _common_options(command)
    return parser


def _configure_plugin_command(entry, parser: argparse.ArgumentParser) -> None:
    """Apply a lazily registered command's ``configure`` (what ``add_command`` checks for an
    eager one at registration), naming the plugin if it fails."""
    configure, _ = entry.obj
    try:
        configure(parser)
    except Exception as exc:  # noqa: BLE001 - reported with the plugin's name
        raise PluginError(
            f"plugin '{entry.plugin}' command '{entry.name}': its configure(parser) failed with "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _common_options(command: argparse.ArgumentParser) -> None:
    """``--debug`` and ``--quiet`` after the command as well as before it (``SUPPRESS``: the
    command's parser sets them only when given, so the main parser's value is not reset)."""
    own = command._option_string_actions
    if "--debug" not in own:
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
    if "--quiet" not in own:
        command.add_argument(
            "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress output"
        )


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        from guidestack.lookup import registry as default_registry

        registry = default_registry()
        _warn_broken_plugins(registry, debug)
        args = build_parser(registry).parse_args(argv)
        code = _dispatch(args, registry)
        sys.stdout.flush()  # inside the try: a reader that went away is seen here, not at exit
        return code
    except BrokenPipeError:
        return _reader_gone()
    except GuidestackError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - last resort: one paragraph, not a traceback
        if debug:
            traceback.print_exc()
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


def _reader_gone() -> int:
    """stdout's reader closed it (``guidestack plugins | head -1``): stop quietly, as Unix tools
    do, with SIGPIPE's status; stdout goes to /dev/null so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
        pass
    return 128 + 13


def _warn_broken_plugins(registry, debug: bool = False) -> None:
    """One stderr line per plugin the registry skipped (``--debug``: with its traceback)."""
    for broken in getattr(registry, "broken", ()):
        if debug and broken.exception is not None:
            traceback.print_exception(broken.exception, file=sys.stderr)
        print(f"warning: {broken.message()}", file=sys.stderr)


def _dispatch(args: argparse.Namespace, registry) -> int:
    if args.command == "run":
        from .run import run_command

        return run_command(args, registry)
    if args.command == "recipes":
        return _recipes(args, registry)
    if args.command == "plugins":
        return _plugins(args, registry)
    if args.command == "validate":
        return _validate(args, registry)
    if args.command in ("explain", "new-plugin"):
        from .plugins import run_plugin_command

        return run_plugin_command(args, lambda: registry)
    entry = registry.get("command", args.command)
    if entry is None:  # pragma: no cover - argparse only accepts known commands
        raise UsageError(f"unknown command {args.command}")
    _, run = entry.obj
    return run(args, registry)


def _recipes(args: argparse.Namespace, registry) -> int:
    from guidestack import lookup

    rows = lookup.list_recipes(registry=registry)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max((len(r["name"]) for r in rows), default=0)
        for r in rows:
            print(f"{r['name']:<{width}}  {r['description']}")
    return 0


def _plugins(args: argparse.Namespace, registry) -> int:
    from guidestack import lookup

    listing = lookup.list_plugins(registry=registry)
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    for plugin in listing:
        version = f" {plugin['version']}" if plugin["version"] else ""
        print(f"{plugin['name']}{version} ({plugin['module']})")
        if plugin["broken"]:
            print(f"  BROKEN        {plugin['broken']['message']}")
        for kinds in (key for key, value in plugin.items() if isinstance(value, list)):
            kind = kinds[:-1]
            for item in plugin[kinds]:
                hooks = f" [{', '.join(item['hooks'])}]" if item["hooks"] else ""
                print(f"  {kind:<13} {item['name']:<22}{hooks} {item['description']}")
    return 0


def _validate(args: argparse.Namespace, registry) -> int:
    """Validate as ``run`` would: per_prior tables for ``--prior``, else for the recipe's own
    default prior (loaded if it can be; otherwise the recipe is checked without them).  A
    registered prior that declares its facts (name, kind, schedule) is not even loaded."""
    from guidestack import PriorUnavailable, lookup

    draft = lookup.load_recipe(args.recipe, set=args.overrides, registry=registry)
    wanted = args.prior or draft.prior.name
    try:
        prior = lookup.prior_facts(wanted, registry=registry)
        if prior is None:
            from guidestack import api

            prior = api.load_prior(wanted, registry=registry)
    except PriorUnavailable as exc:
        if args.prior is not None:
            raise
        print(f"{draft.source}: valid (not specialised: prior '{wanted}' is unavailable: {exc})")
        print(json.dumps(draft.resolved(), indent=2, default=str))
        return 0
    recipe = draft.for_prior(prior, registry)
    origin = "--prior" if args.prior else "the recipe's default prior"
    print(f"{recipe.source}: valid for prior {prior.name} (kind {prior.kind}, {origin})")
    print(json.dumps(recipe.resolved(), indent=2, default=str))
    return 0

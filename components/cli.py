"""The ``sovereign`` command: validate and render stacks without the Pulumi CLI, run the lab."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from components.config import StackConfigError, load_stack_file

EXIT_INVALID = 2


def _cmd_validate(args: argparse.Namespace) -> int:
    status = 0
    for file in args.files:
        try:
            config = load_stack_file(file)
        except StackConfigError as exc:
            status = EXIT_INVALID
            for problem in exc.problems:
                print(f"{file}: {problem}", file=sys.stderr)
            continue
        print(f"{file}: ok ({config.environment}: {len(config.hosts)} host(s))")
    return status


def _cmd_render(args: argparse.Namespace) -> int:
    from components.plan.render import RenderTargetNotEmpty, render_stack  # noqa: PLC0415

    try:
        config = load_stack_file(args.file)
    except StackConfigError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    try:
        written = render_stack(config, Path(args.out))
    except RenderTargetNotEmpty as exc:
        print(f"sovereign render: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.file}: wrote {len(written)} file(s) under {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sovereign",
        description="EU bare-metal GPU inference: validate and render stacks, run the local lab.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check stack files; exit 2 listing every problem")
    validate.add_argument("files", nargs="+", metavar="FILE", help="stacks/Pulumi.<env>.yaml")
    validate.set_defaults(func=_cmd_validate)

    render = sub.add_parser("render", help="write what a rollout would apply and check, for review")
    render.add_argument("file", metavar="FILE", help="stacks/Pulumi.<env>.yaml")
    render.add_argument("--out", required=True, metavar="DIR", help="output directory")
    render.set_defaults(func=_cmd_render)

    from components.lab.cli import register as register_lab  # noqa: PLC0415

    register_lab(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())

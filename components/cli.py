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


def _cmd_apply(args: argparse.Namespace) -> int:
    from components.config.loader import project_dir_for  # noqa: PLC0415
    from components.execution.outcome import StepError  # noqa: PLC0415
    from components.rollout import StepReport, apply_stack, secret_env_for  # noqa: PLC0415

    stack_file = Path(args.file)
    try:
        config = load_stack_file(stack_file)
    except StackConfigError as exc:
        for problem in exc.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return EXIT_INVALID
    mode = "check" if args.check else "teardown" if args.teardown else "apply"
    try:
        secrets = secret_env_for(config, stack_file)
    except StepError as exc:
        print(f"sovereign apply: {exc}", file=sys.stderr)
        return EXIT_INVALID

    def show_line(host: str, _stream: str, line: str) -> None:
        if args.verbose:
            print(f"  {host}: {line}", file=sys.stderr, flush=True)

    def show_step(step: StepReport) -> None:
        detail = f"  ({'; '.join(step.changes)})" if step.changes else ""
        if step.error:
            detail = f"  {step.error}"
        print(
            f"{step.host:<16} {step.step:<28} {step.result:<10} {step.seconds:6.1f}s{detail}",
            flush=True,
        )

    hosts = args.hosts.split(",") if args.hosts else None
    try:
        report = apply_stack(
            config,
            project_dir_for(stack_file),
            mode=mode,
            hosts=hosts,
            secret_env=secrets,
            on_line=show_line,
            on_step=show_step,
        )
    except ValueError as exc:
        print(f"sovereign apply: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(
        f"{mode}: {len(report.steps)} step(s), {len(report.changed)} changed/drifted, "
        f"{len(report.failed)} failed, {report.seconds:.1f}s"
    )
    if report.failed:
        return 1
    if args.check and report.changed:
        return 3  # drift found
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

    apply = sub.add_parser(
        "apply",
        help="run the host steps over SSH without the Pulumi engine (trials, lab, drift checks)",
    )
    apply.add_argument("file", metavar="FILE", help="stacks/Pulumi.<env>.yaml")
    apply.add_argument("--hosts", help="comma-separated host names (default: all)")
    modes = apply.add_mutually_exclusive_group()
    modes.add_argument(
        "--check",
        action="store_true",
        help="dry run: report drift, change nothing (exit 3 on drift)",
    )
    modes.add_argument(
        "--teardown",
        action="store_true",
        help="run the steps' teardowns in reverse order (cache data is kept)",
    )
    apply.add_argument("-v", "--verbose", action="store_true", help="stream every step's output")
    apply.set_defaults(func=_cmd_apply)

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

"""The ``sovereign`` command: validate and render stacks without the Pulumi CLI, run the lab."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components.config import StackConfig, StackConfigError, load_stack_file

if TYPE_CHECKING:
    from pydantic import JsonValue

    from components.config.models import HostSpec
    from components.plan.sizing import SizingReport
    from components.plan.step_protocol import Mode

EXIT_INVALID = 2
# `apply --check`: an apply would change something
EXIT_DRIFT = 3
# `sovereign size`: one meaning per code; when several apply, the lowest non-zero code is returned
# (2 before 3 before 4), so an invalid stack is never reported as a sizing outcome.
EXIT_FITS = 0
EXIT_DOES_NOT_FIT = 3
EXIT_NOT_SIZED = 4
SIZE_EXIT_CODES = f"""exit codes:
  {EXIT_FITS}  every model fits its GPUs
  {EXIT_INVALID}  invalid stack or argument (a --from-dir NAME that is not a model of the stack)
  {EXIT_DOES_NOT_FIT}  a model does not fit its GPUs
  {EXIT_NOT_SIZED}  a model cannot be sized: no manifest at hand, or its config.json lacks a key
     (the message names it)
When several apply, the first in this order is returned: {EXIT_INVALID}, {EXIT_DOES_NOT_FIT}, {EXIT_NOT_SIZED}."""


# the distribution name in pyproject.toml: its installed metadata holds the version
DISTRIBUTION = "sovereign-inference"


def package_version() -> str:
    """The installed package's version, as pyproject.toml declares it."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (the package is not installed: pip install -e .)"


def _load_or_report(file: str | Path, *, require_inventory: bool = False) -> StackConfig | None:
    """The validated stack, or None after printing every problem as ``FILE: path: message``.

    ``require_inventory``: an ``inventory`` file the stack names must exist (commands that reach
    hosts, and ``validate``); ``render`` reads the stack without it."""
    try:
        return load_stack_file(file, require_inventory=require_inventory)
    except StackConfigError as exc:
        for problem in exc.problems:
            print(f"{file}: {problem}", file=sys.stderr)
        return None


def _cmd_validate(args: argparse.Namespace) -> int:
    from components.config.loader import project_dir_for  # noqa: PLC0415
    from components.model_facts import default_manifest_cache, model_facts_for  # noqa: PLC0415
    from components.plan.sizing import size_stack  # noqa: PLC0415

    status = 0
    for file in args.files:
        config = _load_or_report(file, require_inventory=True)
        if config is None:
            status = EXIT_INVALID
            continue
        # offline: size only the models whose manifest `sovereign size` has kept locally
        facts, _ = model_facts_for(
            config, default_manifest_cache(project_dir_for(Path(file))), fetch=False
        )
        report = size_stack(config, facts)
        for warning in report.warnings:
            print(f"{file}: warning: {warning}", file=sys.stderr)
        if report.problems:
            for problem in report.problems:
                print(f"{file}: {problem}", file=sys.stderr)
            status = EXIT_INVALID
            continue
        print(f"{file}: ok ({config.environment}: {len(config.hosts)} host(s))")
    return status


def _cmd_render(args: argparse.Namespace) -> int:
    from components.review_tree import RenderTargetNotEmpty, render_stack  # noqa: PLC0415

    config = _load_or_report(args.file)
    if config is None:
        return EXIT_INVALID
    try:
        written = render_stack(config, Path(args.out))
    except RenderTargetNotEmpty as exc:
        print(f"sovereign render: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(f"{args.file}: wrote {len(written)} file(s) under {args.out}")
    return 0


class _ProgressLines(logging.Handler):
    """Each record as one line on the current ``sys.stderr`` (looked up when written)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"ssh: {self.format(record)}", file=sys.stderr, flush=True)


def _show_connection_progress() -> None:
    """Print each failed SSH connection attempt while the executor retries, so a host that is
    not up yet shows why the command waits."""
    from components.execution.ssh import CONNECTION_LOG  # noqa: PLC0415

    if not any(isinstance(h, _ProgressLines) for h in CONNECTION_LOG.handlers):
        CONNECTION_LOG.addHandler(_ProgressLines())
    CONNECTION_LOG.setLevel(logging.INFO)


def _read_outputs(
    command: str, config: StackConfig, path: str
) -> tuple[dict[str, Any], list[HostSpec]] | None:
    """``pulumi stack output --json`` as written to ``path``, and the stack's hosts with what it
    says of them; None after saying why the file cannot be used."""
    from components.verification.runner import hosts_from_outputs, load_outputs  # noqa: PLC0415

    try:
        outputs = load_outputs(Path(path))
        return outputs, hosts_from_outputs(config, outputs)
    except (OSError, ValueError) as exc:
        print(f"sovereign {command}: {exc}", file=sys.stderr)
        return None


def _with_ordered_addresses(config: StackConfig, outputs: str | None) -> StackConfig | None:
    """The stack with its ordered hosts' addresses and pins from ``pulumi stack output --json``
    (``outputs``), or None after saying which hosts have none: every host's steps need them (the
    firewall admits the cluster's nodes, agents join the first server)."""
    if outputs:
        read = _read_outputs("apply", config, outputs)
        if read is None:
            return None
        config = config.model_copy(update={"hosts": tuple(read[1])})
    pending = [h for h in config.hosts if h.address is None]
    if not pending:
        return config
    names = ", ".join(f"{h.name} ({h.source})" for h in pending)
    print(
        f"sovereign apply: {names}: ordered by the program, so their addresses and host keys "
        "exist only after pulumi up, and every host's steps need them: pulumi stack output "
        "--json > outputs.json, then sovereign apply --outputs outputs.json",
        file=sys.stderr,
    )
    return None


def _cmd_apply(args: argparse.Namespace) -> int:
    from components.config.loader import project_dir_for  # noqa: PLC0415
    from components.execution.outcome import StepError  # noqa: PLC0415
    from components.rollout import StepReport, apply_stack, secret_env_for  # noqa: PLC0415

    stack_file = Path(args.file)
    config = _load_or_report(stack_file, require_inventory=True)
    if config is not None:
        config = _with_ordered_addresses(config, args.outputs)
    if config is None:
        return EXIT_INVALID
    mode: Mode = "check" if args.check else "teardown" if args.teardown else "apply"
    try:
        secrets = secret_env_for(config, stack_file)
    except StepError as exc:
        print(f"sovereign apply: {exc}", file=sys.stderr)
        return EXIT_INVALID
    _show_connection_progress()

    def show_line(host: str, _stream: str, line: str) -> None:
        if args.verbose:
            print(f"  {host}: {line}", file=sys.stderr, flush=True)

    def show_step(step: StepReport) -> None:
        # a drift is listed once, after the run, with the others
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
    if report.not_applicable:
        print("not applicable to these hosts:")
        for left_out in report.not_applicable:
            print(f"  {left_out.host} {left_out.step}: {left_out.reason}")
    if report.drifted:
        print("what an apply would change:")
        for step in report.drifted:
            print(f"  {step.host} {step.step}: {step.drift}")
    changed = f"{len(report.drifted)} drifted" if args.check else f"{len(report.changed)} changed"
    print(
        f"{mode}: {len(report.steps)} step(s), {changed}, {len(report.failed)} failed, "
        f"{len(report.not_applicable)} not applicable, {report.seconds:.1f}s"
    )
    if report.failed:
        return 1
    if args.check and report.changed:
        return EXIT_DRIFT
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from components.config.loader import project_dir_for  # noqa: PLC0415
    from components.verification.report import evidence, write_report  # noqa: PLC0415
    from components.verification.results import Finding  # noqa: PLC0415
    from components.verification.runner import HostRun, verify_stack  # noqa: PLC0415

    stack_file = Path(args.stack_file)
    config = _load_or_report(stack_file, require_inventory=not args.outputs)
    if config is None:
        return EXIT_INVALID
    outputs: dict[str, Any] = {}
    hosts: list[HostSpec] | None = None
    if args.outputs:
        read = _read_outputs("verify", config, args.outputs)
        if read is None:
            return EXIT_INVALID
        outputs, hosts = read
    _show_connection_progress()
    kubeconfig = outputs.get("kubeconfig")
    if args.hosts:
        wanted = set(args.hosts.split(","))
        hosts = [h for h in (hosts or config.hosts) if h.name in wanted]

    def progress(run: HostRun, results: list[Finding]) -> None:
        failed = [r for r in results if r.status == "fail"]
        state = (
            "unreachable" if run.facts is None else f"{len(results)} checks, {len(failed)} failed"
        )
        print(f"{run.host:<16} {state} ({run.seconds:.1f}s)", file=sys.stderr, flush=True)
        for result in failed:
            print(f"  FAIL {result.message()}", file=sys.stderr, flush=True)

    verification = verify_stack(
        config,
        project_dir_for(stack_file),
        hosts=hosts,
        on_host=progress,
        kubeconfig=kubeconfig if isinstance(kubeconfig, str) else None,
    )
    report = evidence(config, verification, str(stack_file))
    files = write_report(report, Path(args.report))
    summary = report["summary"]
    print(
        f"verify {config.environment}: {summary['passed']} passed, {summary['failed']} failed, "
        f"{summary['skipped']} skipped on {summary['hosts']} host(s) in {verification.seconds:.1f}s; "
        f"report: {', '.join(str(f) for f in files)}"
    )
    return 1 if verification.failed else 0


def _cmd_policy_config(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from components.policy.residency import pack_config  # noqa: PLC0415

    config = _load_or_report(args.file)
    if config is None:
        return EXIT_INVALID
    policy = config.residency
    print(
        json.dumps(
            pack_config(
                sorted(policy.allowed_countries),
                list(policy.allowed_registries),
                list(policy.allowed_object_store_endpoints),
            ),
            indent=2,
        )
    )
    return 0


def _from_dir(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=DIR")
    return name, Path(directory)


def _unsized_reasons(
    config: StackConfig, unread: dict[str, str], report: SizingReport
) -> dict[str, str]:
    """Why each model of the stack has no figures, in stack order: its manifest could not be
    read, or its facts lack a key (the sizing problem at the model's path names it)."""
    refused = {problem.path: problem.message for problem in report.problems}
    reasons: dict[str, str] = {}
    for i, model in enumerate(config.inference.models):
        if model.name in unread:
            reasons[model.name] = unread[model.name]
        elif model.name in report.unsizable:
            reasons[model.name] = refused.get(f"inference.models[{i}]", "cannot be sized")
        elif model.name in report.unsized:
            reasons[model.name] = "no manifest at hand"
    return reasons


def _cmd_size(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from components.config.loader import project_dir_for  # noqa: PLC0415
    from components.model_facts import (  # noqa: PLC0415
        FromDirError,
        check_from_dirs,
        default_manifest_cache,
        read_model_facts,
    )
    from components.plan.cold_start import estimate_cold_start  # noqa: PLC0415
    from components.plan.kubernetes.serving import model_host_memory  # noqa: PLC0415
    from components.plan.sizing import size_stack  # noqa: PLC0415

    stack_file = Path(args.file)
    config = _load_or_report(stack_file)
    if config is None:
        return EXIT_INVALID
    try:
        from_dirs = check_from_dirs(config, args.from_dir)
    except FromDirError as exc:
        print(f"sovereign size: {exc}", file=sys.stderr)
        return EXIT_INVALID
    manifest_cache = (
        Path(args.manifest_cache)
        if args.manifest_cache
        else default_manifest_cache(project_dir_for(stack_file))
    )
    found = read_model_facts(config, manifest_cache, from_dirs, fetch=not args.offline)
    report = size_stack(config, found.facts)
    sized = {sizing.model: sizing for sizing in report.models}
    unsized = _unsized_reasons(config, found.unread, report)

    entries: list[JsonValue] = []
    for model in config.inference.models:
        facts = found.facts.get(model.name)
        checkpoint = facts.tensor_bytes if facts is not None and facts.tensor_bytes > 0 else None
        # host memory and the cold start need no manifest: the pod requests them from config alone
        host_memory = model_host_memory(model)
        cold_start = estimate_cold_start(config, model, checkpoint)
        sizing = sized.get(model.name)
        if not args.json:
            if sizing is not None:
                print(sizing.line())
            print(host_memory.line(model.name))
            print(cold_start.line(model.name))
            continue
        entry: dict[str, JsonValue] = (
            sizing.as_dict() if sizing is not None else {"model": model.name}
        )
        entry["hostMemory"] = host_memory.as_dict()
        entry["coldStart"] = dict(cold_start.as_dict())
        entries.append(entry)

    if args.json:
        document: dict[str, JsonValue] = {
            "stack": args.file,
            "environment": config.environment,
            "models": entries,
            "unsized": [{"model": name, "reason": reason} for name, reason in unsized.items()],
            "problems": [{"path": p.path, "message": p.message} for p in report.problems],
            "warnings": [{"path": w.path, "message": w.message} for w in report.warnings],
        }
        print(json.dumps(document, indent=2))
    else:
        for warning in report.warnings:
            print(f"{args.file}: warning: {warning}", file=sys.stderr)
        for problem in report.problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        for name, reason in found.unread.items():
            print(f"{args.file}: not sized: {name}: {reason}", file=sys.stderr)
    if report.not_fitting:
        return EXIT_DOES_NOT_FIT
    return EXIT_NOT_SIZED if unsized else EXIT_FITS


def _cmd_weights_publish(args: argparse.Namespace) -> int:
    from sovereign_weights.__main__ import main as weights_main  # noqa: PLC0415

    config = _load_or_report(args.stack)
    if config is None:
        return EXIT_INVALID
    models = {m.name: m for m in config.inference.models}
    if args.model not in models:
        known = ", ".join(sorted(models)) or "none"
        print(
            f"sovereign weights: --model {args.model}: not in {args.stack} (models: {known})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    source = models[args.model].source
    argv = [
        "publish",
        str(args.directory),
        "--endpoint",
        source.endpoint,
        "--uri",
        source.uri,
        "--revision",
        source.revision,
        "--model",
        args.model,
        "--allowed-endpoints",
        ",".join(config.residency.allowed_object_store_endpoints),
        "--jobs",
        str(args.jobs),
    ]
    if args.part_size:
        argv += ["--part-size", args.part_size]
    return weights_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sovereign",
        description="EU bare-metal GPU inference: validate and render stacks, run the local lab.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
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
    apply.add_argument(
        "--outputs",
        metavar="JSON",
        help="pulumi stack output --json: the addresses and host keys of ordered hosts",
    )
    modes = apply.add_mutually_exclusive_group()
    modes.add_argument(
        "--check",
        action="store_true",
        help=f"dry run: report drift, change nothing (exit {EXIT_DRIFT} on drift)",
    )
    modes.add_argument(
        "--teardown",
        action="store_true",
        help="run the steps' teardowns in reverse order (cache data is kept)",
    )
    apply.add_argument("-v", "--verbose", action="store_true", help="stream every step's output")
    apply.set_defaults(func=_cmd_apply)

    verify = sub.add_parser(
        "verify", help="post-deploy verification of every host; writes an evidence report"
    )
    verify.add_argument("--stack-file", required=True, metavar="FILE")
    verify.add_argument(
        "--outputs", metavar="JSON", help="pulumi stack output --json, for hosts' addresses"
    )
    verify.add_argument("--report", required=True, metavar="DIR", help="where the evidence goes")
    verify.add_argument("--hosts", help="comma-separated host names (default: all)")
    verify.set_defaults(func=_cmd_verify)

    policy = sub.add_parser(
        "policy-config", help="print the residency policy pack's config for a stack (JSON)"
    )
    policy.add_argument("file", metavar="FILE")
    policy.set_defaults(func=_cmd_policy_config)

    size = sub.add_parser(
        "size",
        help="VRAM each model needs per GPU of a replica vs what vLLM may use there (from "
        "manifests), the host memory a replica requests and its cold start",
        epilog=SIZE_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    size.add_argument("file", metavar="FILE", help="stacks/Pulumi.<env>.yaml")
    size.add_argument(
        "--from-dir",
        type=_from_dir,
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="size model NAME from a local directory (config.json, safetensors or their index)",
    )
    size.add_argument(
        "--manifest-cache",
        metavar="DIR",
        help="where manifests read from the store are kept (default: <project>/.cache/manifests)",
    )
    size.add_argument(
        "--offline", action="store_true", help="use kept manifests only; never contact a store"
    )
    size.add_argument(
        "--json",
        action="store_true",
        help="one JSON document on stdout: per model and per GPU, weights, KV cache by layer "
        "kind, activations, non-torch memory, budget, headroom, host memory and cold start",
    )
    size.set_defaults(func=_cmd_size)

    weights = sub.add_parser("weights", help="model weights in the stack's EU object store")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True)
    publish = weights_sub.add_parser(
        "publish", help="upload a model directory and its manifest to the model's source"
    )
    publish.add_argument("directory", type=Path, metavar="DIR")
    publish.add_argument("--stack", required=True, type=Path, metavar="FILE")
    publish.add_argument("--model", required=True, metavar="NAME", help="inference.models[].name")
    publish.add_argument("--jobs", type=int, default=8, help="parallel uploads (default 8)")
    publish.add_argument("--part-size", metavar="SIZE", help="multipart part size (64MiB)")
    publish.set_defaults(func=_cmd_weights_publish)

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

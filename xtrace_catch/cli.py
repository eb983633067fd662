"""Command line (typer). A bare `xtrace-catch [OPTIONS]` means `run`, as the older README shows.

Every user error is one line on stderr and exit code 2; other expected failures (kernel
refused, attach failed) are one line and exit 1. `-v` shows libbpf's log and tracebacks.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from typing import Annotated, Optional

# Before numpy is imported: its OpenBLAS starts one thread per CPU (up to 64) at import, idle
# stacks for an agent that never multiplies a matrix. One is enough on a 224-CPU GPU node.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import typer  # noqa: E402 - after the environment above

from . import __version__  # noqa: E402
from .errors import LoadError, UsageError, XtraceError  # noqa: E402
from .kernel.layout import DEFAULT_FLOWS  # noqa: E402
from .settings import DEFAULT_VM_URL, ExportSettings, Mode, Output, XdpMode  # noqa: E402

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    help="eBPF (XDP/TC) flow monitor for RoCE/InfiniBand GPU clusters.",
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

COMMANDS = ("run", "interfaces", "cleanup", "version")
_verbose = False


def _setup_logging(verbose: bool) -> None:
    global _verbose
    _verbose = verbose
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="xtrace-catch: %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not verbose:
        logging.getLogger("xtrace_catch.libbpf").setLevel(logging.ERROR)
        logging.getLogger("pyroute2").setLevel(logging.ERROR)


# Options that also read an environment variable. Click treats a variable set to "" as unset
# and would fall back to the default (eth0, "default") without a word: we refuse it instead.
ENV_OPTIONS = {"interface": "NETWORK_INTERFACE", "vm_url": "VICTORIAMETRICS_REMOTE_WRITE",
               "collect_agg": "COLLECT_AGG", "sysfs_root": "XTRACE_SYSFS_ROOT"}
ENV_ALSO = ("VICTORIAMETRICS_ENABLED", "VM_USERNAME", "VM_PASSWORD", "VM_PASSWORD_FILE", "VM_BEARER_TOKEN",
            "VM_BEARER_TOKEN_FILE")


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` came from the command line or its environment variable."""
    src = ctx.get_parameter_source(name)
    return src is not None and src.name in ("COMMANDLINE", "ENVIRONMENT")


def _check_empty_env(ctx: typer.Context, names: dict[str, str], also: tuple[str, ...] = ()) -> None:
    for param, var in names.items():
        if os.environ.get(var) is not None and not os.environ[var].strip() and not _given(ctx, param):
            raise UsageError(f"{var} must not be empty (it is set to {os.environ[var]!r}); give it a value "
                             "or unset it for the default")
    for var in also:
        if os.environ.get(var) is not None and not os.environ[var].strip():
            raise UsageError(f"{var} must not be empty (it is set to {os.environ[var]!r}); give it a value "
                             "or unset it")


@app.command("run", short_help="Watch an interface and print its flows every interval (the default).")
def run_cmd(
    ctx: typer.Context,
    interface: Annotated[str, typer.Option("-i", "--interface", envvar="NETWORK_INTERFACE",
                                           help="Interface to watch.")] = "eth0",
    mode: Annotated[Mode, typer.Option("-m", "--mode", case_sensitive=False,
                                       help="xdp (ingress only), tc, rdma (port counters), nccl (hw_counters).")
                    ] = Mode.XDP,
    direction: Annotated[Optional[str], typer.Option(
        "-d", "--direction", help="ingress, egress or both (tc); in rdma/nccl modes: the RDMA device.")] = None,
    filter_: Annotated[str, typer.Option("-f", "--filter",
                                         help="all, tcp, udp, roce, roce_v1, roce_v2, ib.")] = "all",
    interval: Annotated[str, typer.Option("-t", "--interval", metavar="<int>",
                                          help="Interval in whole milliseconds (100..3600000).")] = "5000",
    exclude_dns: Annotated[bool, typer.Option("--exclude-dns", help="Drop DNS: port 53 and known DNS servers.")] = False,
    dns_server: Annotated[Optional[list[str]], typer.Option(
        "--dns-server", help="Extra DNS server address for --exclude-dns (repeatable).")] = None,
    output: Annotated[Output, typer.Option("--output", case_sensitive=False,
                                           help="text, json or table (live view).")] = Output.TEXT,
    count: Annotated[Optional[int], typer.Option("--count", help="Stop after N intervals.")] = None,
    xdp_mode: Annotated[XdpMode, typer.Option("--xdp-mode", case_sensitive=False,
                                              help="auto (native, else generic), native or generic (SKB).")
                        ] = XdpMode.AUTO,
    idle_timeout: Annotated[float, typer.Option(
        "--idle-timeout", help="Seconds without packets before a flow leaves the kernel map.")] = 60.0,
    max_flows: Annotated[int, typer.Option("--max-flows", help="Kernel flow map capacity (1024..16777216).")
                         ] = DEFAULT_FLOWS,
    device: Annotated[Optional[str], typer.Option("--device", help="RDMA device (rdma/nccl modes).")] = None,
    rdma_device: Annotated[Optional[str], typer.Option(
        "--rdma-device", help="RDMA device to compare with in xdp/tc modes (kernel bypass).")] = None,
    sysfs_root: Annotated[str, typer.Option(
        "--sysfs-root", envvar="XTRACE_SYSFS_ROOT", help="sysfs to read RDMA counters from (rdma/nccl, --rdma-device).")] = "/sys",
    vm_enabled: Annotated[Optional[bool], typer.Option(
        "--vm-enabled/--vm-disabled", help="Push to VictoriaMetrics [env VICTORIAMETRICS_ENABLED, default false].",
        show_default=False)] = None,
    vm_url: Annotated[str, typer.Option(
        "--vm-url", envvar="VICTORIAMETRICS_REMOTE_WRITE",
        help="Push URL: .../api/v1/write (remote write) or .../api/v1/import/prometheus (text).")] = DEFAULT_VM_URL,
    collect_agg: Annotated[str, typer.Option("--collect-agg", envvar="COLLECT_AGG",
                                             help="Value of the collect_agg label.")] = "default",
    vm_username: Annotated[Optional[str], typer.Option(
        "--vm-username", help="Basic auth user [env VM_USERNAME; password from VM_PASSWORD(_FILE)].")] = None,
    vm_password_file: Annotated[Optional[str], typer.Option(
        "--vm-password-file", help="File holding the basic auth password [env VM_PASSWORD_FILE].")] = None,
    vm_bearer_token_file: Annotated[Optional[str], typer.Option(
        "--vm-bearer-token-file", help="File holding a bearer token [env VM_BEARER_TOKEN(_FILE)].")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Skip TLS certificate verification.")] = False,
    push_buffer_samples: Annotated[int, typer.Option(
        "--push-buffer-samples", help="Samples kept while VictoriaMetrics is unreachable.")] = 3_000_000,
    max_series: Annotated[Optional[int], typer.Option(
        "--max-series", help="Export the top N flows by bytes; fold the rest into 'other' per type/direction.")] = None,
    drop_ephemeral_ports: Annotated[bool, typer.Option(
        "--drop-ephemeral-ports", help="Label ephemeral (client) ports as 'ephemeral'.")] = False,
    metrics_addr: Annotated[Optional[str], typer.Option(
        "--metrics-addr", help="Serve Prometheus /metrics on HOST:PORT.")] = None,
    list_: Annotated[bool, typer.Option("-l", "--list", help="List interfaces and exit.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show libbpf's log and details.")] = False,
) -> None:
    """Watch an interface and print its flows every interval.

    Other commands: interfaces (also -l), cleanup -i IF, version (also --version).
    """
    _setup_logging(verbose)
    if list_:
        _print_interfaces()
        return
    from .settings import Settings

    _check_empty_env(ctx, ENV_OPTIONS, ENV_ALSO)
    export = _export_settings(vm_enabled, vm_url, collect_agg, vm_username, vm_password_file, vm_bearer_token_file,
                              insecure, push_buffer_samples, max_series, drop_ephemeral_ports, metrics_addr)
    s = Settings.from_options(
        interface=interface, mode=mode, direction=direction, filter_=filter_, interval=interval,
        exclude_dns=exclude_dns, dns_servers=dns_server or [], output=output, count=count, verbose=verbose,
        xdp_mode=xdp_mode, idle_timeout=idle_timeout, max_flows=max_flows, device=device, export=export,
        sysfs_root=sysfs_root, rdma_device=rdma_device, interface_given=_given(ctx, "interface"),
    )
    if s.mode in (Mode.RDMA, Mode.NCCL):
        from .rdma.run import run_counters

        raise typer.Exit(run_counters(s))
    from . import agent

    raise typer.Exit(agent.run(s))


def _export_settings(vm_enabled: bool | None, vm_url: str, collect_agg: str, vm_username: str | None,
                     vm_password_file: str | None, vm_bearer_token_file: str | None, insecure: bool,
                     push_buffer_samples: int, max_series: int | None, drop_ephemeral_ports: bool,
                     metrics_addr: str | None) -> ExportSettings:
    """Validate the export options (and their environment variables) before anything starts."""
    import os

    from .export.push import classify_url
    from .export.server import parse_addr
    from .settings import Credentials, parse_bool

    env = dict(os.environ)
    enabled = vm_enabled if vm_enabled is not None else parse_bool(env.get("VICTORIAMETRICS_ENABLED", "false"),
                                                                   "VICTORIAMETRICS_ENABLED")
    if enabled:
        classify_url(vm_url)
    creds = Credentials.from_sources(env, vm_username, vm_password_file, vm_bearer_token_file)
    if not collect_agg.strip():
        raise UsageError("collect_agg (COLLECT_AGG / --collect-agg) must not be empty")
    if push_buffer_samples < 1000:
        raise UsageError(f"--push-buffer-samples {push_buffer_samples}: give at least 1000")
    if max_series is not None and max_series < 1:
        raise UsageError(f"--max-series {max_series}: give a number >= 1")
    return ExportSettings(
        vm_enabled=enabled, vm_url=vm_url.strip(), collect_agg=collect_agg.strip(), credentials=creds,
        insecure=insecure, push_buffer_samples=push_buffer_samples, max_series=max_series,
        drop_ephemeral_ports=drop_ephemeral_ports, metrics_addr=parse_addr(metrics_addr) if metrics_addr is not None else None,
    )


def _print_rdma_links() -> None:
    """The netdev <-> RDMA device/port mapping, as ibdev2netdev prints it (when any exists)."""
    import os

    from . import rdma

    root = os.environ.get("XTRACE_SYSFS_ROOT", "/sys")
    try:
        lines = rdma.mapping_lines(rdma.netdev_links(root))
    except (XtraceError, OSError):
        return
    if lines:
        print("RDMA devices:")
        for line in lines:
            print(f"  {line}")


def _print_attach_paths() -> None:
    from .attach import attach_paths
    from .kernel import libbpf

    try:
        libbpf.get()
    except XtraceError:
        return
    paths = attach_paths()
    print(f"attach paths: XDP {paths['xdp']}; TC {paths['tc']}")


def _print_interfaces() -> None:
    from .attach import list_interfaces

    rows = list_interfaces()
    print(f"{'INTERFACE':<16}{'STATE':<9}{'LINK':<12}{'MTU':>6}  {'ATTACHED':<34}ADDRESSES")
    for i in rows:
        att = ", ".join(([i.xdp] if i.xdp else []) + [f"xtrace tc {d}" for d in i.tc]
                        + [f"xtrace tcx {d}" for d in i.tcx]) or "-"
        print(f"{i.name:<16}{i.state:<9}{i.link_type:<12}{i.mtu:>6}  {att:<33} {' '.join(i.addresses) or '-'}")
    _print_attach_paths()
    _print_rdma_links()


@app.command("interfaces", short_help="List interfaces and the XDP/TC programs on them.")
def interfaces_cmd(verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False) -> None:
    """List interfaces: state, link type, MTU, addresses, and what XDP/TC program is attached."""
    _setup_logging(verbose)
    _print_interfaces()


@app.command("cleanup", short_help="Remove xtrace-catch leftovers from an interface (after a crash).")
def cleanup_cmd(
    ctx: typer.Context,
    interface: Annotated[str, typer.Option("-i", "--interface", envvar="NETWORK_INTERFACE")] = "eth0",
    verbose: Annotated[bool, typer.Option("-v", "--verbose")] = False,
) -> None:
    """Remove xtrace-catch leftovers (after a crash) from an interface; touches nothing else."""
    _setup_logging(verbose)
    _check_empty_env(ctx, {"interface": "NETWORK_INTERFACE"})
    from .attach import cleanup
    from .kernel.caps import check_bpf_privileges

    check_bpf_privileges()
    removed = cleanup(interface)
    if removed:
        for r in removed:
            print(f"removed {r} from {interface}")
    else:
        print(f"nothing of xtrace-catch's on {interface}")


@app.command("version")
def version_cmd() -> None:
    """Print the version, the libbpf in use and the kernel."""
    print(f"xtrace-catch {__version__}")
    try:
        from .kernel import libbpf

        info = libbpf.get().info()
        print(f"libbpf {info.version.lstrip('v')} ({info.source}: {info.path})")
        from .attach import attach_paths

        paths = attach_paths()
        print(f"attach: XDP {paths['xdp']}; TC {paths['tc']}")
        print(f"XDP program: {_xdp_program_words()}")
    except XtraceError as exc:
        print(f"libbpf: not usable: {exc}")
    print(f"kernel {platform.release()}")


def _xdp_program_words() -> str:
    """Which XDP program `run -m xdp` loads here; finding out loads a probe, which needs privileges."""
    from .kernel.caps import check_bpf_privileges
    from .kernel.datapath import xdp_program

    try:
        check_bpf_privileges(need_net_admin=False)
    except XtraceError:
        return "unknown without CAP_BPF (run as root to probe for xdp.frags)"
    return xdp_program()[1]


def _route(argv: list[str]) -> list[str]:
    """Map the older command forms onto subcommands."""
    if not argv:
        return ["run"]
    first = argv[0]
    if first in COMMANDS:
        return argv
    if first in ("--version", "-V"):
        return ["version"]
    if first in ("-l", "--list"):
        return ["interfaces", *argv[1:]]
    return ["run", *argv]


def _top_help() -> str:
    """`xtrace-catch -h`: the commands, --version, then run's options (bare options mean run)."""
    group = typer.main.get_command(app)
    ctx = group.make_context("xtrace-catch", [], resilient_parsing=True)
    run = group.get_command(ctx, "run")  # type: ignore[attr-defined]
    assert run is not None
    run_help = run.get_help(run.make_context("run", [], parent=ctx, resilient_parsing=True))
    width = max(len(c) for c in COMMANDS) + 2
    lines = ["Usage: xtrace-catch [COMMAND] [OPTIONS]", "", f"  {app.info.help}", "", "Commands:"]
    for name in COMMANDS:
        cmd = group.get_command(ctx, name)  # type: ignore[attr-defined]
        short = cmd.get_short_help_str(limit=90) if cmd is not None else ""
        lines.append(f"  {name:<{width}}{short}")
    lines += ["", "Shortcuts:", f"  {'--version, -V':<{width + 4}}the same as 'version'",
              f"  {'-l, --list':<{width + 4}}the same as 'interfaces'", "",
              "Without a command the options are run's ('xtrace-catch COMMAND -h' for the others):", ""]
    return "\n".join(lines) + "\n" + run_help[run_help.index("Options:"):]


def main(argv: list[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] in (["-h"], ["--help"]):
        print(_top_help(), end="")
        return 0
    args = _route(raw)
    try:
        rc = app(args=args, prog_name="xtrace-catch", standalone_mode=False)
        return int(rc or 0)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return 130
    except LoadError as exc:
        print(f"xtrace-catch: error: {exc}", file=sys.stderr)
        if _verbose and exc.log:
            print(exc.log, file=sys.stderr)
        return exc.exit_code
    except XtraceError as exc:
        print(f"xtrace-catch: error: {exc}", file=sys.stderr)
        if _verbose:
            logging.getLogger(__name__).debug("details", exc_info=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # typer's (vendored or external) click raises UsageError subclasses with
        # exit_code 2 and format_message(); match them by shape across versions.
        if getattr(exc, "exit_code", None) == 2 and hasattr(exc, "format_message"):
            print(f"xtrace-catch: error: {exc.format_message().rstrip('.')}; see 'xtrace-catch {args[0]} -h'",
                  file=sys.stderr)
            return 2
        if type(exc).__name__ == "Exit" and hasattr(exc, "exit_code"):
            return int(exc.exit_code)
        raise


if __name__ == "__main__":
    sys.exit(main())

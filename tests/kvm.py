"""Boot other kernels in KVM guests and run the kernel subset of the test suite inside them.

``python tests/kvm.py`` (``make test-kernels``) reads tests/kernels.txt and, for each kernel,
prints one line ``kernel VERSION: N passed, M failed``; it exits 1 when any kernel fails.

How a guest is made (chosen for speed and for having nothing to build; measured in
docs/KERNELS.md): the kernel's Debian package is unpacked into a cache; a small initramfs of
our own holds static busybox, an init script and the kernel's modules that the guest needs
(virtio, 9p, overlayfs, veth, clsact, cls_bpf, 802.1Q), with their dependencies read from
each module's .modinfo. The guest mounts the host's root filesystem read-only over 9p
(virtio), lays a tmpfs overlay on top (so pytest, Python and the tests may write, and
nothing reaches the host), switches root into it and runs the same venv and checkout as
the host. A guest has no network device: its only traffic is on the veths the tests make.

KVM by default; ``--accel tcg`` (or XTRACE_ACCEL=tcg) uses qemu's emulation instead, for hosts
whose /dev/kvm cannot run a stock kernel (kvm_pvm on our Firecracker VMs: the guest dies on
cmpxchg16b/xrstor/int3 emulation failures). TCG is ~20x slower: fine for Step 10's measurements,
too slow for the whole subset within CI's budget. AVX2 is masked under TCG (this qemu emulates
numpy's AVX2 argsort wrongly).

Other uses (Step 10's many-CPU runs): ``python tests/kvm.py run --kernel 6.1 --smp 128 --
CMD...`` boots one kernel and runs CMD (from the checkout) in it; the exit status is CMD's.
"""

from __future__ import annotations

import argparse
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KERNELS_FILE = REPO / "tests" / "kernels.txt"
CACHE = Path(os.environ.get("XTRACE_KERNEL_CACHE", "/var/cache/xtrace-catch/kernels"))
LOG_DIR = Path(os.environ.get("XTRACE_KERNEL_LOGS", REPO / "build" / "kernels"))
BUSYBOX = Path("/bin/busybox")
QEMU = "qemu-system-x86_64"
RC_MARK = "XTRACE-GUEST-RC="
BOOT_TIMEOUT = 900.0  # seconds for one guest, boot to power-off

# What the guest loads before it switches root (their dependencies come along).
TCG_TIME_SCALE = 4  # how much longer the tests wait in a TCG guest
BOOT_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
TEST_MODULES = ("veth", "sch_ingress", "cls_bpf", "8021q")

# The subset: the datapath suite and the end-to-end tests marked `kernels` (tests/conftest.py).
SUBSET = ["-m", "kernels"]


class HarnessError(Exception):
    """A guest could not be made or booted; the message says why."""


@dataclass(frozen=True)
class Kernel:
    name: str
    source: str  # "apt:PKG" or "host"


def read_kernels(path: Path = KERNELS_FILE) -> list[Kernel]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, source = line.split()[:2]
        if not (source == "host" or source.startswith("apt:")):
            raise HarnessError(f"{path}: kernel {name}: unknown source {source!r} (apt:PKG or host)")
        out.append(Kernel(name, source))
    return out


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if p.returncode != 0:
        raise HarnessError(f"{' '.join(cmd)} exited {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}")
    return p


# -- the kernel: package, unpacked tree, modules ---------------------------------------------


def resolve_package(pkg: str) -> str:
    """A meta package (linux-image-amd64) -> the concrete image package it depends on."""
    for _ in range(4):
        out = run(["apt-cache", "depends", "--no-recommends", "--no-suggests", pkg]).stdout
        deps = re.findall(r"^\s*Depends:\s*(linux-image-\S+)", out, re.M)
        deps = [d for d in deps if not d.startswith("<")]
        if not deps:
            return pkg
        pkg = deps[0]
    return pkg


@dataclass(frozen=True)
class KernelTree:
    version: str  # uname -r of the guest
    vmlinuz: Path
    modules: Path  # .../lib/modules/VERSION


def unpack(pkg: str) -> KernelTree:
    """Fetch and unpack PKG into the cache (once); returns its kernel and modules."""
    root = CACHE / pkg
    if not (root / ".done").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        dl = root / "deb"
        dl.mkdir()
        os.chmod(dl, 0o777)  # apt-get download drops privileges to _apt where it can
        run(["apt-get", "download", "-q", pkg], cwd=dl)
        debs = list(dl.glob("*.deb"))
        if len(debs) != 1:
            raise HarnessError(f"apt-get download {pkg} left {len(debs)} .deb files in {dl}")
        run(["dpkg-deb", "-x", str(debs[0]), str(root / "root")])
        debs[0].unlink()
        (root / ".done").write_text(pkg + "\n")
    return tree_of(root / "root")


def tree_of(root: Path) -> KernelTree:
    for mods in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if mods.is_dir():
            versions = sorted(p.name for p in mods.iterdir() if p.is_dir())
            if versions:
                v = versions[-1]
                return KernelTree(v, root / "boot" / f"vmlinuz-{v}", mods / v)
    raise HarnessError(f"no lib/modules/VERSION under {root}")


def vmlinux(tree: KernelTree) -> Path:
    """The uncompressed ELF kernel inside a bzImage, cached beside it.

    qemu boots an ELF vmlinux through its PVH entry (32-bit protected mode). We boot that way,
    not through the bzImage's real-mode set-up: on our dev VMs KVM is a paravirtual flavour
    (kvm_pvm) that hangs in the bzImage's real-mode to long-mode switch but runs PVH fine."""
    out = CACHE / "vmlinux" / f"vmlinux-{tree.version}"
    if out.exists() and out.stat().st_mtime >= tree.vmlinuz.stat().st_mtime:
        return out
    data = tree.vmlinuz.read_bytes()
    # The bzImage header says where its compressed payload is (boot protocol >= 2.08):
    # payload_offset/payload_length at 0x248/0x24c, from the protected-mode code after the
    # setup sectors. The build appends the uncompressed size (4 bytes) to the payload.
    setup = ((data[0x1F1] or 4) + 1) * 512
    off, length = int.from_bytes(data[0x248:0x24C], "little"), int.from_bytes(data[0x24C:0x250], "little")
    payload = data[setup + off:setup + off + length]
    image = b""
    for magic, unpack_ in ((b"\xfd7zXZ\x00", _unxz), (b"\x28\xb5\x2f\xfd", _unzstd), (b"\x1f\x8b\x08", _ungzip)):
        if payload.startswith(magic):
            for cut in (4, 0):
                try:
                    image = unpack_(payload[:len(payload) - cut] if cut else payload)
                except Exception:
                    continue
                if image[:4] == b"\x7fELF":
                    break
                image = b""
    if not image:
        raise HarnessError(f"no compressed ELF kernel found inside {tree.vmlinuz}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(image)
    tmp.rename(out)
    return out


def _unxz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _unzstd(data: bytes) -> bytes:
    import cramjam

    return bytes(cramjam.zstd.decompress(data))


def _ungzip(data: bytes) -> bytes:
    import zlib

    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def host_tree() -> KernelTree | None:
    v = os.uname().release
    vmlinuz, mods = Path(f"/boot/vmlinuz-{v}"), Path(f"/lib/modules/{v}")
    return KernelTree(v, vmlinuz, mods) if vmlinuz.exists() and mods.is_dir() else None


def _mod_name(path: Path) -> str:
    return path.name.split(".ko", 1)[0].replace("-", "_")


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    for suffix, unpack_ in ((".ko.xz", _unxz), (".ko.zst", _unzstd), (".ko.gz", _ungzip)):
        if path.name.endswith(suffix):
            return unpack_(data)
    return data


def _depends(image: bytes) -> list[str]:
    """The `depends=` list from a module's .modinfo section."""
    import io

    from elftools.elf.elffile import ELFFile

    sec = ELFFile(io.BytesIO(image)).get_section_by_name(".modinfo")
    if sec is None:
        return []
    for field in sec.data().split(b"\0"):
        if field.startswith(b"depends="):
            return [d.replace("-", "_") for d in field[8:].decode().split(",") if d]
    return []


def module_closure(mods: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """(name, ELF bytes) for `wanted` and all they depend on, dependencies first. Names
    that are not files are built in (kernel config =y) and need nothing."""
    index = {_mod_name(p): p for p in (mods / "kernel").rglob("*.ko*")}
    order: list[tuple[str, bytes]] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        done.add(name)
        path = index.get(name)
        if path is None:
            return
        image = _module_bytes(path)
        for dep in _depends(image):
            visit(dep)
        order.append((name, image))

    for name in wanted:
        visit(name)
    return order


# -- the guest ---------------------------------------------------------------------------------

INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod /modules/$m.ko || echo "xtrace-guest: insmod $m failed"
done
mkdir -p /lower /upper /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /lower || exec echo "xtrace-guest: 9p mount failed"
mount -t tmpfs -o mode=0755 upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || exec echo "xtrace-guest: overlay failed"
mkdir -p /newroot/usr/lib/modules
rm -rf "/newroot/usr/lib/modules/$(uname -r)"
ln -s "$(cat /modules.host)" "/newroot/usr/lib/modules/$(uname -r)"
cp /job /newroot/xtrace-guest-job
cp /stage2 /newroot/xtrace-guest-stage2
chmod 755 /newroot/xtrace-guest-stage2
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /xtrace-guest-stage2
"""

STAGE2 = r"""#!/bin/sh
# The host's root, read-only under a tmpfs overlay: mount what a booted system has.
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
ip link set lo up
hostname xtrace-guest
ulimit -l unlimited
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 TERM=dumb
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 XTRACE_IN_GUEST=1
echo "xtrace-guest: kernel $(uname -r), $(nproc) CPUs, up $(cut -d' ' -f1 /proc/uptime) s"
sh /xtrace-guest-job </dev/null
echo "XTRACE-GUEST-RC=$?"
sync
echo o > /proc/sysrq-trigger
sleep 30
"""


def build_initramfs(tree: KernelTree, job: str, out: Path) -> None:
    if not BUSYBOX.exists():
        raise HarnessError(f"{BUSYBOX} is missing: install Debian's busybox-static")
    with tempfile.TemporaryDirectory(prefix="xtrace-initrd-") as tmp:
        t = Path(tmp)
        for d in ("bin", "proc", "sys", "dev", "modules"):
            (t / d).mkdir()
        shutil.copy2(BUSYBOX, t / "bin" / "busybox")
        names = []
        for name, image in module_closure(tree.modules, BOOT_MODULES + TEST_MODULES):
            (t / "modules" / f"{name}.ko").write_bytes(image)
            names.append(name)
        (t / "modules.order").write_text("\n".join(names) + "\n")
        (t / "modules.host").write_text(str(tree.modules.resolve()) + "\n")
        for name, text in (("init", INIT), ("stage2", STAGE2)):
            (t / name).write_text(text)
            os.chmod(t / name, 0o755)
        (t / "job").write_text(job)
        files = subprocess.run(["find", ".", "-mindepth", "1"], cwd=t, capture_output=True, check=True).stdout
        with out.open("wb") as fh:
            subprocess.run(["cpio", "--quiet", "-o", "-H", "newc"], cwd=t, input=files, stdout=fh, check=True)


def check_kvm() -> None:
    if shutil.which(QEMU) is None:
        raise HarnessError(f"{QEMU} is missing: install Debian's qemu-system-x86")
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as exc:
        raise HarnessError(f"/dev/kvm is not usable ({exc.strerror}): the kernel guests need KVM; "
                           "they do not run under TCG emulation (far too slow)") from None
    os.close(fd)


def default_accel() -> str:
    """kvm where /dev/kvm can run a stock kernel; tcg on kvm_pvm (these development VMs: see
    the module's docstring) or without /dev/kvm."""
    if Path("/sys/module/kvm_pvm").exists():
        return "tcg"
    try:
        check_kvm()
    except HarnessError:
        return "tcg"
    return "kvm"


def accel_args(accel: str) -> list[str]:
    """qemu's accelerator and CPU model. kvm: the host's CPU less what kvm_pvm cannot emulate;
    tcg: qemu's full emulation (no /dev/kvm needed; slow, for light workloads only)."""
    if accel == "kvm":
        check_kvm()
        return ["-accel", "kvm", "-cpu", "host,-arch-capabilities,-cx16,-xsave,-xsaveopt,-xsavec,-xsaves,-pcid,-invpcid"]
    if accel == "tcg":
        # No AVX2: numpy dispatches its sorts to AVX2 kernels that this qemu emulates wrongly
        # (np.argsort misorders; measured with qemu 7.2 of Debian 12).
        return ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max,-avx2,-avx512f"]
    raise HarnessError(f"unknown accelerator {accel!r} (kvm or tcg)")


def boot(tree: KernelTree, job: str, log: Path, smp: int = 2, mem_mb: int = 3072,
         timeout: float | None = None, echo: bool = False, accel: str = "kvm") -> tuple[int, str]:
    """Boot `tree` and run the shell text `job` in it. Returns (job's exit status, console text).
    `timeout` defaults to BOOT_TIMEOUT, four times that under TCG (~20x slower than KVM)."""
    accel_cmd = accel_args(accel)
    if timeout is None:
        timeout = BOOT_TIMEOUT if accel == "kvm" else 4 * BOOT_TIMEOUT
    if not tree.vmlinuz.exists():
        raise HarnessError(f"no kernel image {tree.vmlinuz}")
    log.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xtrace-guest-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        build_initramfs(tree, job, initrd)
        cmd = [QEMU, *accel_cmd, "-machine", "q35", "-smp", str(smp), "-m", str(mem_mb),
               "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot", "-nic", "none",
               "-serial", "stdio", "-monitor", "none",
               "-kernel", str(vmlinux(tree)), "-initrd", str(initrd),
               "-append", "console=ttyS0 panic=-1 loglevel=3 random.trust_cpu=on rdinit=/init"
               + (" noxsave" if accel == "kvm" else ""),
               "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
        with log.open("w") as fh:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, errors="replace")
            assert proc.stdout is not None
            deadline = time.monotonic() + timeout
            lines: list[str] = []
            try:
                import selectors

                sel = selectors.DefaultSelector()
                sel.register(proc.stdout, selectors.EVENT_READ)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HarnessError(f"guest {tree.version} did not finish in {timeout:.0f} s (log: {log})")
                    if not sel.select(timeout=min(left, 5.0)):
                        continue
                    line = proc.stdout.readline()
                    if not line:
                        break
                    fh.write(line)
                    fh.flush()
                    lines.append(line)
                    if line.startswith(("KVM internal error", "emulation failure")):
                        raise HarnessError(f"KVM could not run guest {tree.version}: qemu reports an "
                                           f"emulation failure (log: {log})")
                    if echo:
                        sys.stdout.write(line)
                        sys.stdout.flush()
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
    text = "".join(lines).replace("\r", "")
    m = re.findall(rf"^{RC_MARK}(\d+)", text, re.M)
    if not m:
        tail = "\n".join(text.splitlines()[-15:])
        raise HarnessError(f"guest {tree.version} ended without running the job, qemu exit {proc.returncode} "
                           f"(log: {log}); its last lines:\n{tail}")
    return int(m[-1]), text


# -- the subset ----------------------------------------------------------------------------------


def pytest_cmd(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "console_output_style=classic",
            *SUBSET, *extra, "tests"]


def summary(text: str) -> dict[str, int]:
    """Counts from pytest's closing line (the last one that has any)."""
    counts: dict[str, int] = {}
    for line in reversed(text.splitlines()):
        found = re.findall(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)", line)
        if found and ("passed" in line or "failed" in line or "error" in line):
            for n, what in found:
                counts["error" if what.startswith("error") else what] = int(n)
            break
    return counts


def line_for(version: str, counts: dict[str, int], note: str = "") -> str:
    failed = counts.get("failed", 0) + counts.get("error", 0)
    s = f"kernel {version}{note}: {counts.get('passed', 0)} passed, {failed} failed"
    if counts.get("skipped"):
        s += f", {counts['skipped']} skipped"
    return s


def test_kernel(k: Kernel, extra: list[str], echo: bool, accel: str = "kvm") -> tuple[bool, str]:
    """Run the subset on one kernel. Returns (passed, the summary line)."""
    # Under TCG everything runs ~20x slower: the tests' start-up and interval deadlines stretch
    # by TIME_SCALE (tests/netns.py), so a deadline measures our code, not the emulator.
    scale = f"export XTRACE_TEST_TIME_SCALE={TCG_TIME_SCALE}; " if accel == "tcg" else ""
    job = f"{scale}cd {shlex.quote(str(REPO))} && {shlex.join(pytest_cmd(extra))}\n"
    started = time.monotonic()
    if k.source == "host" and host_tree() is None:
        # Our dev VMs boot a kernel that is not on their disk: the same subset, natively.
        p = subprocess.run(pytest_cmd(extra), cwd=REPO, capture_output=not echo, text=True, timeout=BOOT_TIMEOUT)
        text = p.stdout or ""
        log = LOG_DIR / f"{k.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(text + (p.stderr or ""))
        rc, version, note = p.returncode, os.uname().release, " (host, not booted: its image is not on disk)"
    else:
        if k.source == "host":
            tree = host_tree()
            assert tree is not None
        else:
            tree = unpack(resolve_package(k.source[4:]))
        log = LOG_DIR / f"{k.name}.log"
        rc, text = boot(tree, job, log, echo=echo, accel=accel)
        version, note = tree.version, ""
    counts = summary(text)
    line = line_for(version, counts, note)
    ok = rc == 0 and counts.get("passed", 0) > 0 and not counts.get("failed") and not counts.get("error")
    if not ok and not counts:
        line += f" (pytest exit {rc}) (log: {log})"
    print(f"{line}   [{time.monotonic() - started:.0f} s]" if os.environ.get("XTRACE_KERNEL_TIMES") else line,
          flush=True)
    return ok, line


README_BEGIN, README_END = "<!-- tested-kernels:begin (tests/kvm.py --update-readme) -->", "<!-- tested-kernels:end -->"


def update_readmes(lines: list[tuple[str, str, str]]) -> None:
    """Replace the tested-kernels block of both READMEs with what this run printed."""
    day = time.strftime("%Y-%m-%d")
    rows = ["| kernels.txt | source | `make test-kernels` printed | date |", "|---|---|---|---|"]
    rows += [f"| {n} | `{src}` | `{re.sub(r' [(]log: [^)]*[)]', '', ln)}` | {day} |" for n, src, ln in lines]
    block = "\n".join([README_BEGIN, *rows, README_END])
    for name in ("README.md", "README_CN.md"):
        path = REPO / name
        text = path.read_text()
        a, b = text.find(README_BEGIN), text.find(README_END)
        if a < 0 or b < a:
            raise HarnessError(f"{name} has no tested-kernels block ({README_BEGIN} ... {README_END})")
        path.write_text(text[:a] + block + text[b + len(README_END):])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="tests/kvm.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    t = sub.add_parser("test", help="run the kernel subset on each kernel of tests/kernels.txt (the default)")
    t.add_argument("--kernels", default=os.environ.get("KERNELS", ""),
                   help="comma-separated names from tests/kernels.txt (default: all)")
    t.add_argument("--echo", action="store_true", help="show the guests' consoles")
    t.add_argument("--update-readme", action="store_true",
                   help="write the lines printed into the tested-kernels table of README.md and README_CN.md")
    t.add_argument("--accel", default=os.environ.get("XTRACE_ACCEL", "kvm"), choices=("kvm", "tcg"),
                   help="kvm (default) or tcg: qemu's emulation, where /dev/kvm cannot run stock kernels")
    t.add_argument("pytest_args", nargs="*", help="more pytest arguments (e.g. -k NAME)")
    r = sub.add_parser("run", help="boot one kernel and run a command from the checkout in it")
    r.add_argument("--kernel", required=True)
    r.add_argument("--smp", type=int, default=2)
    r.add_argument("--mem", type=int, default=3072, help="guest memory in MiB")
    r.add_argument("--accel", default=os.environ.get("XTRACE_ACCEL", "kvm"), choices=("kvm", "tcg"),
                   help="kvm (default) or tcg: qemu's emulation, where /dev/kvm cannot run stock kernels")
    r.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv if argv is not None else sys.argv[1:] or ["test"])
    try:
        kernels = read_kernels()
        by_name = {k.name: k for k in kernels}
        if args.cmd == "run":
            k = by_name.get(args.kernel)
            if k is None:
                raise HarnessError(f"unknown kernel {args.kernel!r}; tests/kernels.txt has {', '.join(by_name)}")
            tree = host_tree() if k.source == "host" else unpack(resolve_package(k.source[4:]))
            if tree is None:
                raise HarnessError("the host's kernel image is not on disk: it cannot be booted")
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            job = f"cd {shlex.quote(str(REPO))} && {shlex.join(cmd or ['true'])}\n"
            rc, _ = boot(tree, job, LOG_DIR / f"{k.name}-run.log", smp=args.smp, mem_mb=args.mem, echo=True,
                           accel=args.accel)
            return rc
        names = [n for n in (args.kernels or "").split(",") if n] or list(by_name)
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise HarnessError(f"unknown kernel(s) {', '.join(unknown)}; tests/kernels.txt has {', '.join(by_name)}")
        if args.accel == "kvm" and any(by_name[n].source != "host" or host_tree() for n in names):
            check_kvm()
        results, lines = [], []
        for n in names:
            try:
                ok, line = test_kernel(by_name[n], args.pytest_args, args.echo, args.accel)
            except HarnessError as exc:
                ok, line = False, f"kernel {n}: error: {str(exc).splitlines()[0]}"
                print(line, flush=True)
            results.append(ok)
            lines.append((n, by_name[n].source, line))
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        (LOG_DIR / "summary.txt").write_text("".join(f"{ln}\n" for _, _, ln in lines))
        if args.update_readme:
            update_readmes(lines)
        return 0 if all(results) else 1
    except HarnessError as exc:
        print(f"tests/kvm.py: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

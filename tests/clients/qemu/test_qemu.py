#!/usr/bin/env python3
"""Unmodified QEMU (7.2 from bookworm, 10.0 from a trixie chroot) attaches
uiommufd's emulated `dma-engine` as a `vfio-pci` device, and the device's
traffic lands in guest memory.

Each case runs `uiommufd run --device dma-engine,traffic... -- qemu-system-x86_64
-machine q35 -accel tcg -nodefaults ... -device vfio-pci,...` with no guest
OS (SeaBIOS only) and checks over QMP, for each device (two-device cases
declare two engines, each with its own traffic window, and give both to one
QEMU: one container, or one iommufd HWPT):

1. the device is realized and `query-pci` lists it (vendor/device IDs) with
   BAR0 assigned by SeaBIOS;
2. `xp` at BAR0 returns the ID, VERSION and CAPS registers (MMIO through
   the device fd);
3. with bus mastering off, no record has been written (TRAFFIC_COUNT 0,
   the window in guest memory all zero);
4. bus mastering turned on the way a guest does it (config COMMAND through
   the 0xcf8/0xcfc I/O ports, vCPUs paused; read back), STATUS.BUS_MASTER
   follows (one device at a time: the others stay quiet);
5. the traffic records appear in guest memory at the GPA given as
   `traffic_iova` (`pmemsave`), each a correct record for its slot, never
   more records than the rate allows;
6. `system_reset` resets the device (registers back to power-on values,
   bus mastering off, no records), and traffic restarts once it is on;
7. `quit` ends QEMU with status 0, and QEMU's trace shows the backend it
   used (iommufd: bind, HWPT with dirty tracking, attach, IOAS_MAP).

Live migration of the same device by both QEMUs: test_migration.py.

Usage: test_qemu.py [--only SUBSTRING]... [--keep] [--smoke]
  --smoke   only check the harness (both QEMUs start, QMP, port I/O and
            pmemsave work) with an emulated pci-testdev; needs no uiommufd.
Environment: UIOMMUFD_BIN (dir with `uiommufd` and `libuiommufd_preload.so`,
default target/release), UIOMMUFD_TRIXIE (the chroot, default
/var/cache/uiommufd/trixie; tests/clients/install-qemu.sh makes it).
Exits 1 if any case fails, printing what failed and QEMU's output.
"""

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

sys.dont_write_bytecode = True  # no __pycache__ in the work tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dmae  # noqa: E402
from qmp import Qemu, QemuError  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
TRIXIE = os.environ.get("UIOMMUFD_TRIXIE", "/var/cache/uiommufd/trixie")
BIN = os.environ.get("UIOMMUFD_BIN", os.path.join(REPO, "target", "release"))

# Where the device writes its records: guest RAM (-m 128), well away from
# what SeaBIOS uses (low memory and the top of RAM).
TRAFFIC_GPA = 0x4000000
TRAFFIC_SIZE = 0x4000  # 256 records
RATE = 2000  # records per second: the window fills in ~0.13 s
ADDR = "0000:f0:00.0"  # the registry's default address of the first device

QEMU_BASE = [
    "qemu-system-x86_64",
    "-machine", "q35",
    "-accel", "tcg",
    "-nodefaults",
    "-display", "none",
    "-m", "128",
    "-trace", "vfio_*",
]


class Failure(Exception):
    """A check failed; the message says which and what was seen."""


def check(cond, msg):
    if not cond:
        raise Failure(msg)


class Case:
    """One QEMU configuration."""

    def __init__(self, name, version, device_args, extra_args=(), expect=(), forbid=(), devices=1):
        self.name = name
        self.devices = devices  # dma-engines declared and given to QEMU
        self.version = version  # "7.2" (host) or "10.0" (trixie chroot)
        self.device_args = device_args  # format with {sysfs}, {addr}
        self.extra_args = list(extra_args)
        # Regular expressions QEMU's trace (stderr) must / must not match:
        # which backend QEMU really used.
        self.expect = list(expect)
        self.forbid = list(forbid)


# QEMU 10.0's iommufd trace: bound, HWPT allocated with DIRTY_TRACKING
# (flags bit 1, as QEMU asks when IOMMU_GET_HW_INFO reports the
# capability), attached, guest RAM mapped at IOVA = GPA.
IOMMUFD_TRACE = [
    r"iommufd_cdev_connect_and_bind .*Successfully bound device " + ADDR,
    r"iommufd_backend_alloc_hwpt .* flags=0x[0-9a-f]*[2367abef] .*\(0\)",
    r"iommufd_cdev_attach_ioas_hwpt .*Successfully attached device " + ADDR,
    r"iommufd_backend_map_dma .* iova=0x0 size=0x[0-9a-f]+ .*readonly=0 \(0\)",
]
# The legacy path: a group, FLR through VFIO_DEVICE_RESET.
LEGACY_TRACE = [r"vfio_pci_reset_flr " + ADDR]
# The two ways a -device names the device (format fields {sysfs}, {addr}).
NAMED = [("sysfsdev", "sysfsdev={sysfs}"), ("host", "host={addr}")]

CASES = [
    # the device named by its sysfs directory and by its address
    *(
        Case(
            "qemu-7.2 legacy " + how,
            "7.2",
            "vfio-pci," + dev,
            expect=LEGACY_TRACE + [r"vfio_realize +\(" + ADDR + r"\) group 100"],
        )
        for how, dev in NAMED
    ),
    Case(
        "qemu-7.2 legacy 2 devices",
        "7.2",
        "vfio-pci,sysfsdev={sysfs}",
        devices=2,
        expect=LEGACY_TRACE + [
            r"vfio_realize +\(" + ADDR + r"\) group 100",
            r"vfio_realize +\(0000:f0:01.0\) group 101",
        ],
    ),
    *(
        Case(
            "qemu-10.0 iommufd " + how,
            "10.0",
            "vfio-pci,iommufd=i0," + dev,
            extra_args=["-object", "iommufd,id=i0"],
            expect=IOMMUFD_TRACE,
            forbid=[r"vfio_attach_device .* group"],
        )
        for how, dev in NAMED
    ),
    Case(
        "qemu-10.0 iommufd 2 devices",
        "10.0",
        "vfio-pci,iommufd=i0,sysfsdev={sysfs}",
        extra_args=["-object", "iommufd,id=i0"],
        devices=2,
        expect=IOMMUFD_TRACE + [
            r"iommufd_cdev_connect_and_bind .*Successfully bound device 0000:f0:01.0",
            # the second device joins the first one's HWPT
            r"Successfully attached device " + ADDR + r" \(\d+\) to id=(\d+)$(?s:.*)"
            r"Successfully attached device 0000:f0:01.0 \(\d+\) to id=\1$",
        ],
    ),
    Case(
        "qemu-10.0 legacy sysfsdev",
        "10.0",
        "vfio-pci,sysfsdev={sysfs}",
        expect=LEGACY_TRACE + [r"vfio_attach_device +\(" + ADDR + r"\) group 100"],
        forbid=[r"iommufd_backend_connect"],
    ),
]


class Env:
    """Where a case runs: a work directory as this script sees it and as
    QEMU sees it, and the command prefix that starts QEMU."""

    def __init__(self, version, keep):
        self.version = version
        self.keep = keep
        if version == "7.2":
            self.root = ""
            self.workdir = tempfile.mkdtemp(prefix="uiommufd-qemu-")
            self.prefix = []
            self.uiommufd = os.path.join(BIN, "uiommufd")
        else:
            qemu = os.path.join(TRIXIE, "usr/bin/qemu-system-x86_64")
            if not os.path.exists(qemu):
                raise Failure(
                    "no QEMU 10.0 at %s: run tests/clients/install-qemu.sh" % qemu
                )
            self.root = TRIXIE
            self.workdir = tempfile.mkdtemp(prefix="uiommufd-qemu-", dir=os.path.join(TRIXIE, "tmp"))
            # The preload and the CLI go into this case's own directory in
            # the chroot (a bookworm build runs on trixie's newer glibc; a
            # directory per case, so that concurrent runs never swap each
            # other's binaries); /proc is mounted in a private mount
            # namespace so nothing outlives the test.
            bindir = os.path.join(self.workdir, "bin")
            os.makedirs(bindir)
            for f in ("uiommufd", "libuiommufd_preload.so"):
                src, dst = os.path.join(BIN, f), os.path.join(bindir, f)
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            self.prefix = [
                "unshare", "-m", "--propagation", "private",
                "sh", "-ec", 'mount -t proc proc "$0/proc"; exec chroot "$0" "$@"', TRIXIE,
            ]
            self.uiommufd = self.inside(os.path.join(bindir, "uiommufd"))

    def inside(self, host_path):
        """`host_path` as QEMU sees it."""
        if not self.root:
            return host_path
        return "/" + os.path.relpath(host_path, self.root)

    def cleanup(self):
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)


def wait_for(what, fn, timeout, interval=0.05):
    """Call fn() until it returns a true value; Failure after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise Failure("timed out after %.0fs waiting for %s (last: %r)" % (timeout, what, last))


def bar_address(dev, bar):
    for r in dev.get("regions", []):
        if r.get("bar") == bar and r.get("type") == "memory":
            addr = r["address"]
            if addr in (0, -1, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF):
                return None
            return addr
    return None


def read64(q, addr):
    lo, hi = q.xp(addr, 2)
    return lo | (hi << 32)


def device_spec(i):
    """The i-th device's declaration: its own traffic window."""
    return "dma-engine,traffic_iova=0x%x,traffic_size=0x%x,rate=%d" % (traffic_gpa(i), TRAFFIC_SIZE, RATE)


def traffic_gpa(i):
    return TRAFFIC_GPA + i * 0x100000


def device_addr(i):
    """The registry's default address of the i-th declared device."""
    return "0000:f0:%02x.0" % i


class Dev:
    """One vfio-pci device of a running QEMU, as the test sees it."""

    def __init__(self, qemu, i):
        self.qemu = qemu
        self.i = i
        self.qdev = "dev%d" % i
        self.gpa = traffic_gpa(i)
        self.bar0 = None
        self.bus = self.slot = self.fn = None

    def wait_bar0(self, what):
        """Wait until SeaBIOS has assigned BAR0 and turned memory decoding
        on, with bus mastering still off; returns COMMAND."""
        q = self.qemu

        def ready():
            d = q.pci_device(self.qdev)
            if not d or not bar_address(d, 0):
                return None
            c = q.pci_config_read(d["bus"], d["slot"], d["function"], 0x04, "h")
            if c & 0x4 or not c & 0x2:
                return None
            return d, c

        d, cmd = wait_for("SeaBIOS to set %s up (%s)" % (self.qdev, what), ready, 20)
        self.bar0 = bar_address(d, 0)
        self.bus, self.slot, self.fn = d["bus"], d["slot"], d["function"]
        return d, cmd

    def reg(self, off):
        return self.qemu.xp(self.bar0 + off, 1)[0]

    def reg64(self, off):
        return read64(self.qemu, self.bar0 + off)

    def command(self, value=None):
        if value is None:
            return self.qemu.pci_config_read(self.bus, self.slot, self.fn, 0x04, "h")
        self.qemu.pci_config_write(self.bus, self.slot, self.fn, 0x04, value, "h")
        return None

    def window(self, name):
        return self.qemu.pmemsave(self.gpa, TRAFFIC_SIZE, "%s-%s.bin" % (self.qdev, name))

    def quiet(self, what):
        """No record written, the window untouched (since `what`)."""
        count = self.reg64(dmae.TRAFFIC_COUNT)
        check(count == 0, "%s: TRAFFIC_COUNT %d %s" % (self.qdev, count, what))
        check(
            not self.reg(dmae.STATUS) & dmae.STATUS_BUS_MASTER,
            "%s: STATUS shows bus mastering %s" % (self.qdev, what),
        )

    def start_traffic(self, cmd):
        """Bus mastering on, as a guest driver does it; returns the time
        just before."""
        t = time.monotonic()
        self.command(cmd | 0x6)
        cmd2 = self.command()
        check(cmd2 & 0x6 == 0x6, "%s: COMMAND reads 0x%04x after writing 0x%04x" % (self.qdev, cmd2, cmd | 0x6))
        status = self.reg(dmae.STATUS)
        check(status & dmae.STATUS_BUS_MASTER, "%s: STATUS 0x%x: the device does not see bus mastering" % (self.qdev, status))
        return t

    def diagnose(self):
        """The registers and VM state that say why a stream stalled."""
        regs = [("STATUS", dmae.STATUS), ("TRAFFIC_CTRL", dmae.TRAFFIC_CTRL), ("ERROR_CODE", 0x20),
                ("ERROR_COUNT", 0x30)]
        vals = ", ".join("%s 0x%x" % (name, self.reg(off)) for name, off in regs)
        return "%s: %s, TRAFFIC_SEQ %d, COMMAND 0x%x, VM %s" % (
            self.qdev, vals, self.reg64(dmae.TRAFFIC_SEQ), self.command(),
            self.qemu.execute("query-status")["status"])

    def check_traffic(self, t_start, name):
        """A full window of correct records, at no more than the rate."""
        n = TRAFFIC_SIZE // dmae.RECORD
        try:
            count = wait_for(
                "%s's TRAFFIC_COUNT to reach %d (a full window)" % (self.qdev, n + 8),
                lambda: (lambda c: c if c >= n + 8 else None)(self.reg64(dmae.TRAFFIC_COUNT)),
                15,
            )
        except Failure as e:
            raise Failure("%s; %s" % (e, self.diagnose())) from e
        elapsed = time.monotonic() - t_start
        # Paced by a deadline clock, no catch-up bursts: never ahead of the
        # rate (a job may write the up-to-64 records due at once).
        check(
            count <= RATE * elapsed + 64,
            "%s: %d records in %.3fs, more than rate %d/s allows" % (self.qdev, count, elapsed, RATE),
        )
        good, bad, empty, errors = dmae.check_window(self.window(name), count)
        check(empty == 0, "%s: %d slots of the window still empty after %d records" % (self.qdev, empty, count))
        # A record being written while pmemsave reads may be torn: at most 2.
        check(bad <= 2, "%s: %d bad records in the window:\n  %s" % (self.qdev, bad, "\n  ".join(errors)))
        status = self.reg(dmae.STATUS)
        check(status & dmae.STATUS_TRAFFIC_ACTIVE, "%s: STATUS 0x%x: traffic no longer active" % (self.qdev, status))
        return "%s: %d records in %.2fs at GPA 0x%x; window: %d good, %d torn" % (
            self.qdev, count, elapsed, self.gpa, good, bad)


def firmware_args(env, log):
    """SeaBIOS's debug console (port 0x402) into `log`."""
    return [
        "-chardev", "file,id=seabios,path=%s" % env.inside(log),
        "-device", "isa-debugcon,iobase=0x402,chardev=seabios",
    ]


def wait_firmware_done(qemu, boots, what):
    """Wait until SeaBIOS has finished its `boots`-th POST (it prints "No
    bootable device." when it has nothing to boot). Until then it may
    reprogram the PAM registers, and QEMU then unmaps and remaps guest RAM
    (all of it, when the RAM section is split anew): a device that DMAs
    into guest RAM meanwhile faults, as it would on real hardware."""

    def done():
        try:
            with open(qemu.firmware_log, "rb") as f:
                n = f.read().count(b"No bootable device")
        except OSError:
            n = 0
        return n >= boots

    wait_for("SeaBIOS to finish (%s)" % what, done, 30)


def start_qemu(env, case, name, extra=()):
    """Start `case`'s QEMU (under `uiommufd run --device ...`) as `name`,
    with its own sysfs root; returns the started Qemu."""
    sysfs_root = os.path.join(env.workdir, name + "-sysfs")
    qmp_sock = os.path.join(env.workdir, name + ".sock")
    argv = env.prefix + [env.uiommufd, "run"]
    for i in range(case.devices):
        argv += ["--device", device_spec(i)]
    firmware_log = os.path.join(env.workdir, name + "-seabios.log")
    argv += (
        ["--"]
        + QEMU_BASE
        + (["-trace", "iommufd*"] if case.version != "7.2" else [])
        + ["-qmp", "unix:%s,server=on,wait=off" % env.inside(qmp_sock)]
        + firmware_args(env, firmware_log)
        + case.extra_args
        + list(extra)
    )
    for i in range(case.devices):
        sysfs = env.inside(os.path.join(sysfs_root, "devices", device_addr(i)))
        argv += ["-device", case.device_args.format(sysfs=sysfs, addr=device_addr(i)) + ",id=dev%d" % i]
    penv = dict(os.environ)
    penv["UIOMMUFD_SYSFS"] = env.inside(sysfs_root)
    penv.setdefault("UIOMMUFD_LOG", "debug")
    qemu = Qemu(argv, qmp_sock, env.workdir, root=env.root, name=name, env=penv)
    qemu.firmware_log = firmware_log
    t0 = time.monotonic()
    version = qemu.start(timeout=30)
    got = "%d.%d" % (version["major"], version["minor"])
    check(got == case.version, "expected QEMU %s, QMP says %s" % (case.version, got))
    qemu.log = [
        "%s: UIOMMUFD_SYSFS=%s %s" % (name, penv["UIOMMUFD_SYSFS"], shlex.join(argv)),
        "%s: QEMU %s.%d up in %.2fs" % (name, got, version["micro"], time.monotonic() - t0),
    ]
    return qemu


def run_device_case(case, keep):
    env = Env(case.version, keep)
    log = []
    qemu = None
    try:
        qemu = start_qemu(env, case, "qemu")
        log += qemu.log
        t0 = time.monotonic()
        # Bus mastering only once the firmware is done with guest RAM.
        wait_firmware_done(qemu, 1, "first boot")
        log.append("SeaBIOS done after %.2fs" % (time.monotonic() - t0))

        devs = [Dev(qemu, i) for i in range(case.devices)]
        cmds = []
        for dev in devs:
            # 1. realized, listed with its IDs, BAR0 assigned by SeaBIOS
            d = qemu.pci_device(dev.qdev)
            check(d is not None, "query-pci does not list the vfio-pci device %s" % dev.qdev)
            ids = d.get("id", {})
            check(
                (ids.get("vendor"), ids.get("device")) == (dmae.VENDOR, dmae.DEVICE),
                "%s: query-pci IDs %04x:%04x, expected %04x:%04x"
                % (dev.qdev, ids.get("vendor", 0), ids.get("device", 0), dmae.VENDOR, dmae.DEVICE),
            )
            _, cmd = dev.wait_bar0("at start")
            cmds.append(cmd)
            log.append(
                "%s at %02x:%02x.%d, BAR0 0x%x (%.2fs)"
                % (dev.qdev, dev.bus, dev.slot, dev.fn, dev.bar0, time.monotonic() - t0)
            )

            # 2. MMIO: identity registers, the traffic parameters
            ident = qemu.xp(dev.bar0, 3)
            want = [dmae.ID_VALUE, dmae.VERSION_VALUE, dmae.CAPS_VALUE]
            check(
                ident == want,
                "%s: xp at BAR0 0x%x: ID/VERSION/CAPS %s, expected %s"
                % (dev.qdev, dev.bar0, [hex(v) for v in ident], [hex(v) for v in want]),
            )
            base, size = dev.reg64(dmae.TRAFFIC_BASE), dev.reg64(dmae.TRAFFIC_SIZE)
            check(
                (base, size) == (dev.gpa, TRAFFIC_SIZE),
                "%s: TRAFFIC_BASE/SIZE 0x%x/0x%x, expected the parameters 0x%x/0x%x"
                % (dev.qdev, base, size, dev.gpa, TRAFFIC_SIZE),
            )

        # 3. no DMA before bus mastering
        time.sleep(0.1)
        for dev in devs:
            dev.quiet("with bus mastering off")
            check(dev.window("before") == bytes(TRAFFIC_SIZE), "guest memory at 0x%x not zero before bus mastering" % dev.gpa)

        # 4.-5. bus mastering on for one device at a time (as a guest driver
        # would: legacy config I/O); its records land in guest memory at
        # its GPA, the others stay quiet.
        for k, dev in enumerate(devs):
            t = dev.start_traffic(cmds[k])
            log.append(dev.check_traffic(t, "after"))
            for other in devs[k + 1:]:
                other.quiet("while only %s masters the bus" % dev.qdev)
                check(other.window("before") == bytes(TRAFFIC_SIZE), "%s's window written" % other.qdev)

        # 6. a system reset resets the devices (VFIO_DEVICE_RESET): bus
        # mastering off, registers back to their power-on values, no more
        # records; SeaBIOS runs again; bus mastering on restarts the stream.
        qemu.execute("system_reset")
        cmds = [dev.wait_bar0("after system_reset")[1] for dev in devs]
        # (the registers are checked before SeaBIOS is done: it does not
        # touch the device beyond its BARs and COMMAND)
        for dev in devs:
            seq = dev.reg64(dmae.TRAFFIC_SEQ)
            check(seq == 0, "%s: TRAFFIC_SEQ %d after system_reset" % (dev.qdev, seq))
            dev.quiet("after system_reset")
        wait_firmware_done(qemu, 2, "after system_reset")
        for dev in devs:
            dev.quiet("after system_reset, bus mastering off")
        for k, dev in enumerate(devs):
            t = dev.start_traffic(cmds[k])
            log.append("after system_reset: " + dev.check_traffic(t, "reset"))

        # 7. clean exit; QEMU's trace shows the backend it used
        rc = qemu.quit()
        check(rc == 0, "QEMU exited with status %s after quit" % rc)
        trace = qemu.stderr()
        for pat in case.expect:
            check(re.search(pat, trace, re.M), "QEMU's trace has no line matching %r" % pat)
        for pat in case.forbid:
            check(not re.search(pat, trace, re.M), "QEMU's trace has a line matching %r" % pat)
        log.append("quit: status 0 (%.2fs in all)" % (time.monotonic() - t0))
        return log
    except Exception as e:
        if qemu is None:
            raise
        qemu.kill()
        msg = str(e) if isinstance(e, (Failure, QemuError)) else "%s: %s" % (type(e).__name__, e)
        tails = "" if "--- qemu " in msg else "\n" + qemu.tails(60)
        raise Failure("%s\n%s%s" % (msg, "\n".join(log), tails)) from e
    finally:
        env.cleanup()


def run_smoke(version, keep):
    """The harness without uiommufd: QEMU starts, QMP, port I/O, pmemsave."""
    env = Env(version, keep)
    qemu = None
    try:
        qmp_sock = os.path.join(env.workdir, "qmp.sock")
        firmware_log = os.path.join(env.workdir, "seabios.log")
        argv = env.prefix + QEMU_BASE + [
            "-qmp", "unix:%s,server=on,wait=off" % env.inside(qmp_sock),
            "-device", "pci-testdev,id=dev0",
        ] + firmware_args(env, firmware_log)
        qemu = Qemu(argv, qmp_sock, env.workdir, root=env.root, name="qemu")
        qemu.firmware_log = firmware_log
        v = qemu.start()
        wait_firmware_done(qemu, 1, "boot")
        check("%d.%d" % (v["major"], v["minor"]) == version, "QMP says QEMU %s" % v)
        dev = wait_for(
            "SeaBIOS to assign BAR0",
            lambda: (lambda d: d if d and bar_address(d, 0) else None)(qemu.pci_device("dev0")),
            20,
        )
        bus, slot, fn = dev["bus"], dev["slot"], dev["function"]
        ids = qemu.pci_config_read(bus, slot, fn, 0, "w")
        check(ids == (dev["id"]["device"] << 16 | dev["id"]["vendor"]), "config IDs 0x%08x via 0xcf8" % ids)
        cmd = qemu.pci_config_read(bus, slot, fn, 4, "h")
        qemu.pci_config_write(bus, slot, fn, 4, cmd | 6, "h")
        check(qemu.pci_config_read(bus, slot, fn, 4, "h") & 6 == 6, "COMMAND write through 0xcfc lost")
        data = qemu.pmemsave(0xF0000, 0x10000, "bios.bin")
        check(data != bytes(0x10000), "pmemsave of the BIOS area returned zeros")
        check(len(qemu.xp(0xF0000, 4)) == 4, "xp")
        check(qemu.quit() == 0, "quit")
        return ["QEMU %d.%d.%d: QMP, port I/O, pmemsave ok" % (v["major"], v["minor"], v["micro"])]
    except BaseException:
        if qemu is not None:
            qemu.kill()
            print(qemu.tails(), file=sys.stderr)
        raise
    finally:
        env.cleanup()


def release_built():
    """Whether the release CLI and preload are built (else say so)."""
    for f in ("uiommufd", "libuiommufd_preload.so"):
        if not os.path.exists(os.path.join(BIN, f)):
            print("missing %s: cargo build --release -p uiommufd-cli -p uiommufd-preload" % os.path.join(BIN, f))
            return False
    return True


def run_jobs(title, jobs, width):
    """Run each (name, job) of jobs (a job returns lines to print under its
    PASS line, or raises): one PASS/FAIL line each, the total time and the
    counts under title. The exit status: 1 if any failed."""
    passed = failed = 0
    failures = []
    t_all = time.monotonic()
    for name, job in jobs:
        t0 = time.monotonic()
        try:
            lines = job()
            passed += 1
            print("PASS %-*s %5.1fs" % (width, name, time.monotonic() - t0))
            for line in lines:
                print("       " + line)
        except (Failure, QemuError, OSError, subprocess.SubprocessError) as e:
            failed += 1
            failures.append(name)
            print("FAIL %-*s %5.1fs\n%s" % (width, name, time.monotonic() - t0, e), flush=True)
        except Exception:
            failed += 1
            failures.append(name)
            print("FAIL %-*s (harness error)\n%s" % (width, name, traceback.format_exc()), flush=True)
        sys.stdout.flush()
    print("\n%s: %.1fs in all" % (title, time.monotonic() - t_all))
    if failures:
        print("failed: %s" % ", ".join(failures))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[], help="run cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep work directories")
    ap.add_argument("--smoke", action="store_true", help="check the harness only (no uiommufd)")
    args = ap.parse_args()

    if args.smoke:
        jobs = [("smoke qemu-%s" % v, lambda v=v: run_smoke(v, args.keep)) for v in ("7.2", "10.0")]
    else:
        if not release_built():
            return 2
        jobs = [
            (c.name, lambda c=c: run_device_case(c, args.keep))
            for c in CASES
            if not args.only or any(o in c.name for o in args.only)
        ]
        if not jobs:
            print("no case matches %s" % args.only)
            return 2

    return run_jobs("qemu", jobs, 28)

if __name__ == "__main__":
    sys.exit(main())

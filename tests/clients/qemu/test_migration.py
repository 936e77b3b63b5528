#!/usr/bin/env python3
"""Unmodified QEMU live-migrates uiommufd's emulated `dma-engine` while the
device writes its traffic stream into guest memory.

Each case runs two QEMU processes, each under its own `uiommufd run --device
dma-engine,traffic_iova=...` (its own preload instance and sysfs tree; the
same device declaration, so the destination's device matches):

  source:      running guest (SeaBIOS only, no `-S`: a source started with
               `-S` stops the device only after the final dirty sync), bus
               mastering turned on through config I/O ports, the device
               writing its records at TRAFFIC_GPA;
  destination: `-incoming defer -S` (paused after the migration so that the
               migrated memory can be checked before the device resumes;
               one case runs it without -S: it starts as soon as the
               migration completes, as a real destination does).

Bus mastering is turned on only once SeaBIOS has finished POST (its debug
port says so): its last PAM change makes QEMU unmap and remap all of guest
RAM, and a record written meanwhile faults and stops the stream. QMP
`migrate-incoming` / `migrate` over a unix socket, throttled
(`max-bandwidth`) so that the migration lasts a second or more and the
device writes hundreds of records into pages already sent (only the dirty
tracker brings those over), `query-migrate` polled to `completed`. Then:

1. the source's device is stopped: its TRAFFIC_SEQ (BAR0, `xp`) is the
   stop sequence S and does not move;
2. the destination's guest memory (`pmemsave` of the window) holds, in every
   slot k, exactly the last record the device wrote there before the stop
   (the largest seq < S with seq mod N = k; all-zero where the device never
   got to): every record written before the stop was migrated, nothing else
   is there; in particular record S-1;
3. after `cont` the destination's device continues the stream: TRAFFIC_SEQ
   starts at S or later and grows, and new valid records (seq >= S) land in
   the window;
4. QEMU's traces show the protocol and the dirty tracker the case is about.

The cancel cases start a migration throttled to a crawl, cancel it
(`migrate_cancel`) or kill the destination, and check that the source VM
runs again, its device is RUNNING (the stream continues, valid records) and
dirty tracking is off (QEMU's trace and uiommufd's debug log).

Cases: QEMU 7.2 v1 region protocol on a type1 container; QEMU 10.0 v2 with
iommufd + HWPT dirty tracking, iommufd + device DMA logging (paused and
auto-started destination), the legacy container (type1 dirty tracking);
cancelled migrations (7.2 v1, 10.0 v2) and a destination lost mid-way (10.0).

Usage: test_migration.py [--only SUBSTRING]... [--keep]
Environment as test_qemu.py (UIOMMUFD_BIN, UIOMMUFD_TRIXIE). Exits 1 if any
case fails, printing what failed with the tails of both QEMUs' stderr
(QEMU's `vfio_*`/`iommufd*` trace and uiommufd's log).
"""

import argparse
import os
import re
import shlex
import struct
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dmae  # noqa: E402
import test_qemu as tq  # noqa: E402
from qmp import Qemu, QemuError  # noqa: E402
from test_qemu import Failure, bar_address, check, read64, wait_for  # noqa: E402

TRAFFIC_GPA = 0x4000000
TRAFFIC_SIZE = 0x4000  # 256 records, 4 pages
N = TRAFFIC_SIZE // dmae.RECORD
RATE = 500  # records per second: the window wraps every ~0.5 s
DEVICE_SPEC = "dma-engine,traffic_iova=0x%x,traffic_size=0x%x,rate=%d" % (TRAFFIC_GPA, TRAFFIC_SIZE, RATE)
ADDR = tq.ADDR

QEMU_BASE = tq.QEMU_BASE

MIGRATE_TIMEOUT = 60
# Bytes per second of a completed migration: 128 MiB of mostly zero pages
# are ~1 MB on the wire.
MIGRATE_BANDWIDTH = 512 * 1024


class MigCase:
    """One migration configuration.

    device_args: the -device value (format fields {sysfs}); extra_args:
    more QEMU arguments; src_expect / dst_expect / forbid: regular
    expressions the source's / destination's stderr must match / neither
    may match; cancel: None (a completed migration), "cancel" or "kill-dst";
    cancel_expect: regular expressions the source's stderr must match after
    a cancel (QEMU's trace, uiommufd's debug log); autostart: the
    destination runs without -S."""

    def __init__(self, name, version, device_args, extra_args=(), src_expect=(), dst_expect=(),
                 forbid=(), cancel=None, cancel_expect=(), autostart=False):
        self.name = name
        self.version = version
        self.device_args = device_args
        self.extra_args = list(extra_args)
        self.src_expect = list(src_expect)
        self.dst_expect = list(dst_expect)
        self.forbid = list(forbid)
        self.cancel = cancel
        # The destination runs as soon as the migration completes (no -S):
        # the device resumes at once, so the window is checked for records
        # from before the stop or newer ones.
        self.autostart = autostart
        self.cancel_expect = list(cancel_expect)


IOMMUFD = ["-object", "iommufd,id=i0"]
# The -device values: QEMU 7.2's v1 migration (type1 dirty tracking), and
# QEMU 10.0's v2 on iommufd with dirty tracking by the HWPT or by the
# device's DMA logging.
V1_TYPE1_DEV = "vfio-pci,sysfsdev={sysfs},x-enable-migration=on,id=dev0"
V2_IOMMUFD_DEV = "vfio-pci,iommufd=i0,sysfsdev={sysfs},x-device-dirty-page-tracking=%s,id=dev0"
HWPT_DIRTY_DEV = V2_IOMMUFD_DEV % "off"
DMA_LOGGING_DEV = V2_IOMMUFD_DEV % "on"
# Each arc QEMU 10.0 takes shows in its trace as
# "vfio_migration_set_device_state (NAME) state STATE".
V2_SRC = [
    r"vfio_migration_set_device_state +\(" + ADDR + r"\) state PRE_COPY\b",
    r"vfio_migration_set_device_state +\(" + ADDR + r"\) state STOP_COPY\b",
    r"vfio_save_complete_precopy +\(" + ADDR + r"\) ret 0",
]
V2_DST = [
    r"vfio_migration_set_device_state +\(" + ADDR + r"\) state RESUMING\b",
    r"vfio_load_state_device_data +\(" + ADDR + r"\) size [1-9][0-9]* ret 0",
    r"vfio_migration_set_device_state +\(" + ADDR + r"\) state RUNNING\b",
]
HWPT_DIRTY = [
    r"iommufd_backend_set_dirty .*enable=1 \(0\)",
    r"iommufd_backend_get_dirty_bitmap .*\(0\)",
]
DEVICE_LOGGING = [r"vfio_device_dirty_tracking_start nr_ranges [1-9]"]

CASES = [
    MigCase(
        "qemu-7.2 v1 type1",
        "7.2",
        V1_TYPE1_DEV,
        # v1: RUNNING|SAVING (3) while running, SAVING (2) once stopped,
        # STOP (0) at the end; the destination RESUMING (4) then RUNNING
        # (1). Dirty pages from the type1 container.
        src_expect=[
            r"vfio_migration_probe +\(" + ADDR + r"\) Region \d+",
            r"vfio_migration_set_state +\(" + ADDR + r"\) state 3\b",
            r"vfio_migration_set_state +\(" + ADDR + r"\) state 2\b",
            r"vfio_migration_set_state +\(" + ADDR + r"\) state 0\b",
            r"vfio_get_dirty_bitmap container fd=\d+, iova=0x0 ",
            r"vfio_save_complete_precopy +\(" + ADDR + r"\)",
        ],
        dst_expect=[
            r"vfio_migration_set_state +\(" + ADDR + r"\) state 4\b",
            r"vfio_load_state_device_data +\(" + ADDR + r"\) Offset 0x[0-9a-f]+ size 0x[1-9a-f]",
            r"vfio_migration_set_state +\(" + ADDR + r"\) state 1\b",
        ],
    ),
    MigCase(
        "qemu-10.0 v2 iommufd hwpt-dirty",
        "10.0",
        HWPT_DIRTY_DEV,
        extra_args=IOMMUFD,
        src_expect=V2_SRC + HWPT_DIRTY,
        dst_expect=V2_DST,
        forbid=[r"vfio_device_dirty_tracking_start"],
    ),
    *(
        MigCase(
            "qemu-10.0 v2 iommufd dma-logging" + (" autostart" if autostart else ""),
            "10.0",
            DMA_LOGGING_DEV,
            extra_args=IOMMUFD,
            src_expect=V2_SRC + DEVICE_LOGGING,
            dst_expect=V2_DST,
            forbid=[r"iommufd_backend_set_dirty .*enable=1"],
            autostart=autostart,
        )
        for autostart in (False, True)
    ),
    MigCase(
        "qemu-10.0 v2 legacy type1",
        "10.0",
        # Type1 dirty tracking on the container (device logging off):
        # `enable-migration=on` lifts the blocker `auto` keeps.
        "vfio-pci,sysfsdev={sysfs},enable-migration=on,x-device-dirty-page-tracking=off,id=dev0",
        src_expect=V2_SRC + [r"vfio_get_dirty_bitmap iova=0x0 "],
        dst_expect=V2_DST,
        forbid=[r"vfio_device_dirty_tracking_start", r"iommufd_backend_connect"],
    ),
    MigCase(
        "qemu-7.2 v1 cancel (type1)",
        "7.2",
        V1_TYPE1_DEV,
        # RUNNING|SAVING while the migration runs; on cancel QEMU writes
        # RUNNING back and stops the container's dirty tracking.
        src_expect=[r"vfio_migration_set_state +\(" + ADDR + r"\) state 3\b"],
        forbid=[r"vfio_migration_set_state +\(" + ADDR + r"\) state 2\b"],
        cancel="cancel",
        cancel_expect=[r"type1 dirty tracking started", r"type1 dirty tracking stopped",
                       r"v1 migration device_state 0x3 -> 0x1 \(Running\)"],
    ),
    MigCase(
        "qemu-10.0 v2 cancel (dma-logging)",
        "10.0",
        DMA_LOGGING_DEV,
        extra_args=IOMMUFD,
        src_expect=[
            r"vfio_migration_set_device_state +\(" + ADDR + r"\) state PRE_COPY\b",
        ] + DEVICE_LOGGING,
        forbid=[r"state STOP_COPY\b"],
        cancel="cancel",
        cancel_expect=[r"DMA logging stopped", r"migration state PreCopy -> Running"],
    ),
    MigCase(
        "qemu-10.0 v2 destination lost (hwpt-dirty)",
        "10.0",
        HWPT_DIRTY_DEV,
        extra_args=IOMMUFD,
        src_expect=[
            r"vfio_migration_set_device_state +\(" + ADDR + r"\) state PRE_COPY\b",
            r"iommufd_backend_set_dirty .*enable=1 \(0\)",
        ],
        forbid=[r"state STOP_COPY\b"],
        cancel="kill-dst",
        cancel_expect=[r"iommufd_backend_set_dirty .*enable=0 \(0\)", r"migration state PreCopy -> Running"],
    ),
]


class Side:
    """One of the two QEMUs of a case."""

    def __init__(self, env, case, role, extra=()):
        self.role = role
        sysfs_root = os.path.join(env.workdir, role + "-sysfs")
        qmp_sock = os.path.join(env.workdir, role + "-qmp.sock")
        # SeaBIOS's debug output (I/O port 0x402): tells when POST is over.
        self.bios_log = os.path.join(env.workdir, role + "-seabios.log")
        device = case.device_args.format(sysfs=env.inside(os.path.join(sysfs_root, "devices", ADDR)))
        self.argv = (
            env.prefix
            + [env.uiommufd, "run", "--device", DEVICE_SPEC, "--"]
            + QEMU_BASE
            + (["-trace", "iommufd*"] if case.version != "7.2" else [])
            + ["-qmp", "unix:%s,server=on,wait=off" % env.inside(qmp_sock)]
            + ["-chardev", "file,id=bios,path=%s" % env.inside(self.bios_log),
               "-device", "isa-debugcon,iobase=0x402,chardev=bios"]
            + case.extra_args
            + ["-device", device]
            + list(extra)
        )
        penv = dict(os.environ)
        penv["UIOMMUFD_SYSFS"] = env.inside(sysfs_root)
        penv.setdefault("UIOMMUFD_LOG", "debug")
        self.command = "UIOMMUFD_SYSFS=%s %s" % (penv["UIOMMUFD_SYSFS"], shlex.join(self.argv))
        self.q = Qemu(self.argv, qmp_sock, env.workdir, root=env.root, name=role, env=penv)

    def start(self, version):
        v = self.q.start(timeout=30)
        got = "%d.%d" % (v["major"], v["minor"])
        check(got == version, "%s: expected QEMU %s, QMP says %s" % (self.role, version, got))

    def wait_post(self):
        """Wait until SeaBIOS has finished POST and tried to boot: its last
        reprogramming of the PAM registers (which makes QEMU unmap and remap
        all of guest RAM in the IOMMU, so that a device DMA then faults) is
        behind it."""

        def done():
            try:
                with open(self.bios_log, "rb") as f:
                    return b"No bootable device" in f.read()
            except OSError:
                return False

        wait_for("%s: SeaBIOS to finish POST (\"No bootable device\" on port 0x402)" % self.role, done, 20)

    def status(self):
        return self.q.execute("query-status")["status"]

    def device(self):
        """(bar0, bus, slot, fn) of dev0 once SeaBIOS assigned BAR0."""
        dev = wait_for(
            "%s: SeaBIOS to assign BAR0" % self.role,
            lambda: (lambda d: d if d and bar_address(d, 0) else None)(self.q.pci_device("dev0")),
            20,
        )
        return bar_address(dev, 0), dev["bus"], dev["slot"], dev["function"]

    def seq(self, bar0):
        return read64(self.q, bar0 + dmae.TRAFFIC_SEQ)

    def count(self, bar0):
        return read64(self.q, bar0 + dmae.TRAFFIC_COUNT)


def expected_slots(stop):
    """For each slot, the seq of the last record written there before the
    device stopped at `stop` (None: never written)."""
    out = []
    for k in range(N):
        if stop <= k:
            out.append(None)
        else:
            out.append(k + ((stop - 1 - k) // N) * N)
    return out


def check_exact(data, stop, newer_ok=False):
    """The window must hold, in every slot, exactly the last record written
    there before `stop` (or, with `newer_ok`, a valid record of seq >= stop
    for that slot: the device runs again; at most 2 torn slots, racing it).
    Returns a list of problems (empty: all good)."""
    problems = []
    torn = 0
    for k, seq in enumerate(expected_slots(stop)):
        rec = data[k * dmae.RECORD:(k + 1) * dmae.RECORD]
        want = bytes(dmae.RECORD) if seq is None else dmae.record(seq)
        if newer_ok and rec != want:
            magic, fmt, got = struct.unpack_from("<IIQ", rec)
            if magic == dmae.RECORD_MAGIC and got >= stop and got % N == k:
                if rec == dmae.record(got):
                    continue
                if torn < 2:
                    torn += 1
                    continue
        if rec != want:
            magic, fmt, got = (0, 0, 0)
            if len(rec) == dmae.RECORD:
                magic, fmt, got = struct.unpack_from("<IIQ", rec)
            what = "seq %d" % got if magic == dmae.RECORD_MAGIC else "bytes %s" % rec[:24].hex()
            problems.append("slot %d: expected %s, found %s" % (k, "zeros" if seq is None else "seq %d" % seq, what))
    return problems


def new_records(data, since):
    """Valid records with seq >= `since` in the window, and bad slots."""
    good = bad = 0
    for k in range(N):
        rec = data[k * dmae.RECORD:(k + 1) * dmae.RECORD]
        if rec == bytes(dmae.RECORD):
            continue
        magic, fmt, seq = struct.unpack_from("<IIQ", rec)
        if magic == dmae.RECORD_MAGIC and seq % N == k and rec == dmae.record(seq):
            if seq >= since:
                good += 1
        else:
            bad += 1
    return good, bad


def query_migrate(q):
    return q.execute("query-migrate")


def wait_migration(src, statuses, timeout):
    """Poll the source's query-migrate until its status is in `statuses`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = query_migrate(src.q)
        if last.get("status") in statuses:
            return last
        if last.get("status") in ("failed", "cancelled") and last.get("status") not in statuses:
            raise Failure("migration %s: %s" % (last.get("status"), last.get("error-desc", last)))
        time.sleep(0.05)
    raise Failure("migration not %s after %ds (query-migrate: %r)" % ("/".join(statuses), timeout, last))


def bus_master_on(side, bar0, bus, slot, fn):
    cmd = side.q.pci_config_read(bus, slot, fn, 0x04, "h")
    side.q.pci_config_write(bus, slot, fn, 0x04, cmd | 0x6, "h")
    status = side.q.xp(bar0 + dmae.STATUS, 1)[0]
    check(status & dmae.STATUS_BUS_MASTER, "%s: STATUS 0x%x: the device does not see bus mastering" % (side.role, status))


def start_source(case, env, log, t0):
    src = Side(env, case, "src")
    log.append("src: " + src.command)
    src.start(case.version)
    bar0, bus, slot, fn = src.device()
    # Bus mastering on while SeaBIOS still runs races its final PAM change:
    # a record written while QEMU has RAM unmapped faults and (as
    # documented) stops the stream.
    src.wait_post()
    ident = src.q.xp(bar0, 1)[0]
    check(ident == dmae.ID_VALUE, "src: BAR0 ID 0x%x" % ident)
    bus_master_on(src, bar0, bus, slot, fn)
    count = wait_for(
        "src: TRAFFIC_COUNT to reach %d (the window full)" % (N + 8),
        lambda: (lambda c: c if c >= N + 8 else None)(src.count(bar0)),
        15,
    )
    log.append("src: dev0 at %02x:%02x.%d, BAR0 0x%x, streaming (%d records, %.2fs)"
               % (bus, slot, fn, bar0, count, time.monotonic() - t0))
    return src, bar0


def check_traces(sides, case):
    for side, pats in sides:
        text = side.q.stderr()
        for pat in pats:
            check(re.search(pat, text, re.M), "%s's stderr has no line matching %r" % (side.role, pat))
        for pat in case.forbid:
            check(not re.search(pat, text, re.M), "%s's stderr has a line matching %r" % (side.role, pat))


def start_pair(case, env, log, sides, dst_args):
    """The source streaming (start_source) and a destination started with
    `-incoming defer` plus `dst_args`, listening on a unix socket:
    (t0, src, bar0, dst, uri)."""
    t0 = time.monotonic()
    src, bar0 = start_source(case, env, log, t0)
    sides.append(src)
    uri = "unix:" + env.inside(os.path.join(env.workdir, "migrate.sock"))
    dst = Side(env, case, "dst", ["-incoming", "defer"] + dst_args)
    sides.append(dst)
    log.append("dst: " + dst.command)
    dst.start(case.version)
    dst.q.execute("migrate-incoming", {"uri": uri})
    return t0, src, bar0, dst, uri


def run_migration(case, env, log, sides):
    t0, src, bar0, dst, uri = start_pair(case, env, log, sides, [] if case.autostart else ["-S"])
    # Throttled so that the migration lasts about a second and a half: the
    # device writes hundreds of records (every window page many times over)
    # into pages already sent, which only the dirty tracker can bring over.
    src.q.execute("migrate-set-parameters", {"max-bandwidth": MIGRATE_BANDWIDTH})
    seq_before = src.seq(bar0)
    t_mig = time.monotonic()
    src.q.execute("migrate", {"uri": uri})
    info = wait_migration(src, ("completed",), MIGRATE_TIMEOUT)
    t_done = time.monotonic() - t_mig
    dst_status = wait_for(
        "dst: the incoming migration to end",
        lambda: (lambda s: s if s != "inmigrate" else None)(dst.status()),
        20,
    )
    want = ("running",) if case.autostart else ("paused", "prelaunch")
    check(dst_status in want, "dst: status %r after the migration (expected %s)" % (dst_status, "/".join(want)))
    ram = info.get("ram", {})
    log.append("migrated in %.2fs (downtime %s ms, total %s ms, %s RAM bytes, %s dirty syncs); dst %s"
               % (t_done, info.get("downtime"), info.get("total-time"), ram.get("transferred"),
                  ram.get("dirty-sync-count"), dst_status))

    # 1. the source's device is stopped at S
    check(src.status() == "postmigrate", "src: status %r after the migration" % src.status())
    stop = src.seq(bar0)
    stop_count = src.count(bar0)
    time.sleep(0.1)
    stop2 = src.seq(bar0)
    check(stop == stop2, "src: TRAFFIC_SEQ moves after the migration (%d then %d): the device was not stopped" % (stop, stop2))
    check(stop > seq_before, "src: TRAFFIC_SEQ %d at the stop, %d before the migration started" % (stop, seq_before))
    log.append("src: device stopped at seq %d (%d records during the migration)" % (stop, stop - seq_before))

    # 2. the destination's memory holds every record written before the stop
    window = dst.q.pmemsave(TRAFFIC_GPA, TRAFFIC_SIZE, "dst-migrated.bin")
    problems = check_exact(window, stop, newer_ok=case.autostart)
    if problems:
        srcwin = src.q.pmemsave(TRAFFIC_GPA, TRAFFIC_SIZE, "src-final.bin")
        srcp = check_exact(srcwin, stop)
        raise Failure(
            "dst: %d of %d slots of the migrated window are not the last records written before the stop "
            "(seq %d):\n  %s\n(the source's own window: %s)"
            % (len(problems), N, stop, "\n  ".join(problems[:8]),
               "exact" if not srcp else "%d wrong too: %s" % (len(srcp), "; ".join(srcp[:3]))))
    if case.autostart:
        log.append("dst: migrated window: every slot holds its last record before the stop (seq < %d) or a newer one" % stop)
    else:
        log.append("dst: migrated window exact: %d slots, last record seq %d present" % (N, stop - 1))

    # 3. resume: the stream continues from S
    if not case.autostart:
        dst.q.execute("cont")
        wait_for("dst: running after cont", lambda: dst.status() == "running", 10)
    dbar0, dbus, dslot, dfn = dst.device()
    check(dbar0 == bar0, "dst: BAR0 at 0x%x, the source's was 0x%x" % (dbar0, bar0))
    s1 = dst.seq(bar0)
    c1 = dst.count(bar0)
    check(s1 >= stop, "dst: TRAFFIC_SEQ %d after resume, below the source's stop %d" % (s1, stop))
    check(c1 >= stop_count, "dst: TRAFFIC_COUNT %d after resume, below the source's %d at the stop" % (c1, stop_count))
    s2 = wait_for(
        "dst: TRAFFIC_SEQ to grow past %d" % (stop + N // 2),
        lambda: (lambda s: s if s >= stop + N // 2 else None)(dst.seq(bar0)),
        10,
    )
    c2 = dst.count(bar0)
    check(c2 > c1, "dst: TRAFFIC_COUNT does not grow after resume (%d then %d)" % (c1, c2))
    window = dst.q.pmemsave(TRAFFIC_GPA, TRAFFIC_SIZE, "dst-resumed.bin")
    good, bad = new_records(window, stop)
    check(bad <= 2, "dst: %d bad slots in the window after resume" % bad)
    check(good >= N // 2 - 2, "dst: only %d valid records with seq >= %d after resume (TRAFFIC_SEQ %d)" % (good, stop, s2))
    log.append("dst: resumed at seq %d (count %d), then seq %d (count %d); %d new records in the window"
               % (s1, c1, s2, c2, good))

    rc = dst.q.quit()
    check(rc == 0, "dst: exit status %s after quit" % rc)
    rc = src.q.quit()
    check(rc == 0, "src: exit status %s after quit" % rc)
    check_traces([(src, case.src_expect), (dst, case.dst_expect)], case)


def run_cancel(case, env, log, sides):
    t0, src, bar0, dst, uri = start_pair(case, env, log, sides, ["-S"])
    # A crawl: the migration cannot complete before it is cancelled.
    src.q.execute("migrate-set-parameters", {"max-bandwidth": 64 * 1024})
    src.q.execute("migrate", {"uri": uri})
    wait_migration(src, ("active",), 20)
    # Let a few iterations (and dirty syncs) happen with the device running.
    time.sleep(1.0)
    info = query_migrate(src.q)
    check(info.get("status") == "active", "src: migration %r before the cancel (expected active)" % info.get("status"))
    seq_mid = src.seq(bar0)
    if case.cancel == "cancel":
        src.q.execute("migrate_cancel")
        info = wait_migration(src, ("cancelled",), 20)
    else:
        dst.q.kill()
        info = wait_migration(src, ("failed",), 30)
    log.append("src: migration %s (%s) after %.2fs" % (info.get("status"), info.get("error-desc", "-"), time.monotonic() - t0))
    st = wait_for("src: running after the %s" % case.cancel, lambda: (lambda s: s if s == "running" else None)(src.status()), 10)
    s1 = src.seq(bar0)
    s2 = wait_for(
        "src: TRAFFIC_SEQ to grow past %d after the %s" % (s1 + N // 2, case.cancel),
        lambda: (lambda s: s if s >= s1 + N // 2 else None)(src.seq(bar0)),
        10,
    )
    check(s1 >= seq_mid, "src: TRAFFIC_SEQ went back (%d then %d)" % (seq_mid, s1))
    window = src.q.pmemsave(TRAFFIC_GPA, TRAFFIC_SIZE, "src-after.bin")
    good, bad = new_records(window, s1)
    check(bad <= 2, "src: %d bad slots in the window after the %s" % (bad, case.cancel))
    check(good >= N // 2 - 2, "src: only %d valid records with seq >= %d after the %s" % (good, s1, case.cancel))
    log.append("src: %s, device running: seq %d then %d, %d new records" % (st, s1, s2, good))
    if dst.q.alive():
        dst.q.kill()
    rc = src.q.quit()
    check(rc == 0, "src: exit status %s after quit" % rc)
    check_traces([(src, case.src_expect + case.cancel_expect)], case)


def run_case(case, keep):
    env = tq.Env(case.version, keep)
    log = []
    sides = []
    try:
        if case.cancel:
            run_cancel(case, env, log, sides)
        else:
            run_migration(case, env, log, sides)
        return log
    except Exception as e:
        if isinstance(e, (Failure, QemuError)):
            msg = str(e.args[0]) if e.args else repr(e)
        else:
            msg = "%s\n%s" % (repr(e), traceback.format_exc())
        tails = []
        for side in sides:
            # How each QEMU ended (a negative status is the signal that
            # killed it), before this harness kills what still runs.
            rc = side.q.proc.poll() if side.q.proc is not None else None
            tails.append("--- %s: %s" % (side.role, "running" if rc is None else "exited with status %s" % rc))
            side.q.kill()
            tails.append(side.q.tails(60))
        if not os.path.isdir(env.workdir):
            tails.append("--- the work directory %s is gone" % env.workdir)
        raise Failure("%s\n%s\n%s" % (msg, "\n".join(log), "\n".join(tails))) from e
    finally:
        for side in sides:
            side.q.kill()
        env.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", default=[], help="run cases whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep work directories")
    args = ap.parse_args()
    if not tq.release_built():
        return 2
    cases = [c for c in CASES if not args.only or any(o in c.name for o in args.only)]
    if not cases:
        print("no case matches %s" % args.only)
        return 2
    jobs = [(c.name, lambda c=c: run_case(c, args.keep)) for c in cases]
    return tq.run_jobs("qemu migration", jobs, 44)

if __name__ == "__main__":
    sys.exit(main())

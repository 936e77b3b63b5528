"""What the client tests know of the `dma-engine` device
(docs/devices/dma-engine.md, map version 1.0): IDs, BAR0 register offsets,
and the traffic records' check."""

import struct

VENDOR = 0x1DE5
DEVICE = 0x0001

# BAR0 registers
ID = 0x000
VERSION = 0x004
CAPS = 0x008
STATUS = 0x014
TRAFFIC_CTRL = 0x080
TRAFFIC_BASE = 0x088
TRAFFIC_SIZE = 0x090
TRAFFIC_SEQ = 0x0A0
TRAFFIC_COUNT = 0x0A8

ID_VALUE = 0x444D4145  # "DMAE"
VERSION_VALUE = 0x00010000
CAPS_VALUE = 0x00040007

STATUS_TRAFFIC_ACTIVE = 1 << 3
STATUS_BUS_MASTER = 1 << 4
STATUS_STOPPED = 1 << 5

RECORD = 64
RECORD_MAGIC = 0x52544D44
RECORD_FORMAT = 1

_M = (1 << 64) - 1


def splitmix64(x):
    """The payload generator of the traffic records."""
    z = (x + 0x9E3779B97F4A7C15) & _M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M
    return z ^ (z >> 31)


assert splitmix64(0) == 0xE220A8397B1DCDAF  # the documented first word of record 0


def record(seq):
    """The 64 bytes of record `seq`."""
    return struct.pack("<IIQ", RECORD_MAGIC, RECORD_FORMAT, seq) + b"".join(
        struct.pack("<Q", splitmix64((seq * 8 + i) & _M)) for i in range(6)
    )


def check_window(data, count):
    """Check a traffic window's bytes (`data`, read from slot 0) after the
    device reported `count` records written (TRAFFIC_COUNT read just
    before the window was read; the device may have written more since).

    Returns (good, bad, empty, errors): slots holding a correct record for
    their slot, slots holding anything else that is not all-zero, all-zero
    slots, and messages about the bad ones (first few).
    """
    n = len(data) // RECORD
    good = bad = empty = 0
    errors = []
    for slot in range(n):
        rec = data[slot * RECORD:(slot + 1) * RECORD]
        if rec == bytes(RECORD):
            empty += 1
            continue
        magic, fmt, seq = struct.unpack_from("<IIQ", rec)
        why = None
        if magic != RECORD_MAGIC or fmt != RECORD_FORMAT:
            why = "magic/format 0x%08x/%d" % (magic, fmt)
        elif seq % n != slot:
            why = "seq %d does not belong in slot %d of %d" % (seq, slot, n)
        elif rec != record(seq):
            why = "payload of seq %d differs from splitmix64" % seq
        if why is None:
            good += 1
        else:
            bad += 1
            if len(errors) < 5:
                errors.append("slot %d: %s (bytes %s)" % (slot, why, rec[:24].hex()))
    return good, bad, empty, errors

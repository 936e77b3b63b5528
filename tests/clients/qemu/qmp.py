"""A small QEMU driver over QMP (Python 3 standard library only).

`Qemu` starts a QEMU process (optionally wrapped: `uiommufd run ... --`,
a chroot), connects to its QMP unix socket, and offers the few commands the
client tests need: `query-pci`, HMP `xp` / `o` / `i` through
`human-monitor-command`, `pmemsave`, `quit`. Every wait has a timeout; every
failure raises `QemuError` with the tail of QEMU's stderr so that a failed
test says why.
"""

import contextlib
import json
import os
import re
import socket
import subprocess
import time


class QemuError(Exception):
    """QEMU did not do what was asked (or died); the message says what."""


class Qemu:
    """One QEMU process and its QMP connection.

    argv: the whole command line (wrapper included). The caller puts
    `-qmp unix:QMP_PATH,server=on,wait=off` on it; `qmp_path` is where this
    process finds that socket (differs from QEMU's view inside a chroot).
    `root` maps QEMU's paths (pmemsave's file) to this process's view: "" for
    none, or the chroot directory.
    """

    def __init__(self, argv, qmp_path, workdir, root="", name="qemu", env=None):
        self.argv = list(argv)
        self.qmp_path = qmp_path
        self.root = root
        self.name = name
        self.workdir = workdir
        self.stdout_path = os.path.join(workdir, name + ".stdout")
        self.stderr_path = os.path.join(workdir, name + ".stderr")
        self.proc = None
        self.sock = None
        self.buf = b""
        self.next_id = 0
        self.env = env

    # -- process ---------------------------------------------------------

    def start(self, timeout=30.0):
        """Start QEMU and complete the QMP handshake (greeting +
        qmp_capabilities) within `timeout` seconds."""
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise QemuError(
                    "%s exited with status %s before its QMP socket answered\n%s"
                    % (self.name, self.proc.returncode, self.tails())
                )
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(self.qmp_path)
                self.sock = s
                break
            except OSError:
                s.close()
            if time.monotonic() > deadline:
                self.kill()
                raise QemuError(
                    "%s: no QMP socket at %s after %.0fs\n%s"
                    % (self.name, self.qmp_path, timeout, self.tails())
                )
            time.sleep(0.05)
        greeting = self._read_msg(deadline - time.monotonic())
        if "QMP" not in greeting:
            raise QemuError("%s: unexpected QMP greeting %r" % (self.name, greeting))
        self.execute("qmp_capabilities", timeout=max(1.0, deadline - time.monotonic()))
        return greeting["QMP"]["version"]["qemu"]

    def alive(self):
        """Whether the QEMU process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def quit(self, timeout=15.0):
        """`quit`, then wait for the process; kill it past `timeout`.
        Returns QEMU's exit status."""
        if self.alive() and self.sock is not None:
            try:
                self.execute("quit", timeout=timeout)
            except (QemuError, OSError):
                pass  # QEMU may close the socket before answering
        return self.wait(timeout)

    def wait(self, timeout):
        """Wait up to `timeout` seconds for the process, killing it after."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.proc.returncode
        finally:
            self._close_sock()

    def kill(self):
        """SIGKILL the process group QEMU (and its wrapper) runs in."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 9)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._close_sock()

    def _close_sock(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def stdout(self):
        """What the process printed on stdout so far."""
        return _read_text(self.stdout_path)

    def stderr(self):
        """What the process printed on stderr so far."""
        return _read_text(self.stderr_path)

    def tails(self, lines=40):
        """The last lines of stdout and stderr, for error messages."""
        parts = []
        for label, text in (("stdout", self.stdout()), ("stderr", self.stderr())):
            tail = text.splitlines()[-lines:]
            if tail:
                parts.append("--- %s %s (last %d lines) ---\n%s" % (self.name, label, len(tail), "\n".join(tail)))
        return "\n".join(parts) if parts else "(%s printed nothing)" % self.name

    # -- QMP -------------------------------------------------------------

    def _read_msg(self, timeout):
        deadline = time.monotonic() + max(timeout, 0.1)
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuError("%s: QMP read timed out\n%s" % (self.name, self.tails()))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                raise QemuError(
                    "%s: QMP connection closed (exit status %s)\n%s"
                    % (self.name, self.proc.poll(), self.tails())
                )
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def execute(self, command, arguments=None, timeout=15.0):
        """Run a QMP command; return its `return` value or raise QemuError
        with its `error`."""
        self.next_id += 1
        msg = {"execute": command, "id": self.next_id}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_msg(deadline - time.monotonic())
            if reply.get("id") != self.next_id:
                continue  # an event, or a late reply
            if "error" in reply:
                raise QemuError(
                    "%s: QMP %s failed: %s" % (self.name, command, reply["error"].get("desc", reply["error"]))
                )
            return reply.get("return")

    def hmp(self, command_line, timeout=15.0):
        """Run an HMP command; return what it printed."""
        return self.execute(
            "human-monitor-command", {"command-line": command_line}, timeout=timeout
        )

    # -- helpers ---------------------------------------------------------

    def query_pci(self):
        """Every PCI function of every bus: dicts of query-pci's device
        info with `bus` added."""
        out = []

        def walk(devices):
            for d in devices:
                out.append(d)
                bridge = d.get("pci_bridge")
                if bridge:
                    walk(bridge.get("devices", []))

        for bus in self.execute("query-pci"):
            walk(bus.get("devices", []))
        return out

    def pci_device(self, qdev_id):
        """query-pci's entry for the device with `qdev_id`, or None."""
        for d in self.query_pci():
            if d.get("qdev_id") == qdev_id:
                return d
        return None

    def xp(self, addr, count, size="w"):
        """Read `count` units of guest-physical memory at `addr` with HMP
        `xp` (size b/h/w/g = 1/2/4/8 bytes); returns a list of ints."""
        text = self.hmp("xp /%dx%s 0x%x" % (count, size, addr))
        vals = []
        for line in text.splitlines():
            if ":" not in line:
                continue
            vals += [int(v, 16) for v in line.split(":", 1)[1].split()]
        if len(vals) != count:
            raise QemuError("%s: xp at 0x%x printed %r" % (self.name, addr, text))
        return vals

    def outp(self, port, value, size="w"):
        """Write an I/O port (HMP `o`; size b/h/w = 1/2/4 bytes)."""
        text = self.hmp("o /%s 0x%x 0x%x" % (size, port, value))
        if text.strip():
            raise QemuError("%s: o /%s 0x%x printed %r" % (self.name, size, port, text))

    def inp(self, port, size="w"):
        """Read an I/O port (HMP `i`; size b/h/w = 1/2/4 bytes)."""
        text = self.hmp("i /%s 0x%x" % (size, port))
        m = re.search(r"=\s*(0x[0-9a-fA-F]+)", text)
        if not m:
            raise QemuError("%s: i /%s 0x%x printed %r" % (self.name, size, port, text))
        return int(m.group(1), 16)

    @contextlib.contextmanager
    def paused(self):
        """Pause the vCPUs for the block (QMP stop/cont) if they run.

        The 0xcf8 address latch is shared with the guest: SeaBIOS may be
        between its own 0xcf8 write and 0xcfc access while the monitor
        does the same, so config-space accesses from the monitor are made
        with the vCPUs paused (and the latch restored)."""
        running = self.execute("query-status").get("running")
        if running:
            self.execute("stop")
        try:
            yield
        finally:
            if running:
                self.execute("cont")

    def _config(self, bus, slot, fn, reg, op):
        with self.paused():
            saved = self.inp(0xCF8, "w")
            self.outp(0xCF8, _cf8(bus, slot, fn, reg), "w")
            try:
                return op(0xCFC + (reg & 3))
            finally:
                self.outp(0xCF8, saved, "w")

    def pci_config_read(self, bus, slot, fn, reg, size="w"):
        """Read a config register through the legacy 0xcf8/0xcfc mechanism
        (what a guest does; QEMU forwards it to the device like any other),
        with the vCPUs paused."""
        return self._config(bus, slot, fn, reg, lambda port: self.inp(port, size))

    def pci_config_write(self, bus, slot, fn, reg, value, size="w"):
        """Write a config register through 0xcf8/0xcfc, vCPUs paused."""
        self._config(bus, slot, fn, reg, lambda port: self.outp(port, value, size))

    def pmemsave(self, addr, size, name):
        """Save guest-physical memory to `name` in the work directory and
        return its bytes. `name` is put under QEMU's view of the work
        directory (`root` stripped)."""
        host_path = os.path.join(self.workdir, name)
        if self.root:
            qemu_path = "/" + os.path.relpath(host_path, self.root)
        else:
            qemu_path = host_path
        self.execute("pmemsave", {"val": addr, "size": size, "filename": qemu_path}, timeout=30)
        with open(host_path, "rb") as f:
            data = f.read()
        if len(data) != size:
            raise QemuError("%s: pmemsave wrote %d bytes, asked %d" % (self.name, len(data), size))
        return data


def _cf8(bus, slot, fn, reg):
    return 0x80000000 | (bus << 16) | (slot << 11) | (fn << 8) | (reg & 0xFC)


def _read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""

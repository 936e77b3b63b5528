# Issue 10 item 1: CPython's subprocess (vfork + closing fds in the child)
# must leave the parent's /dev/iommu fd working. Run under the preload.
import os, fcntl, struct, subprocess
fd = os.open("/dev/iommu", os.O_RDWR)
IOAS_ALLOC = (ord(';') << 8) | 0x81
def alloc():
    buf = bytearray(struct.pack("III", 12, 0, 0))
    fcntl.ioctl(fd, IOAS_ALLOC, buf)
    return struct.unpack("III", buf)[2]
a = alloc()
for i in range(20):
    subprocess.run(["/bin/true"], check=True)
    subprocess.run(["/bin/true"], check=True, close_fds=True, pass_fds=())
b = alloc()
print("OK", a, b)

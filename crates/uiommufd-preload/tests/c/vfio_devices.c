/*
 * A declared emulated VFIO device as programs find it under
 * libuiommufd_preload.so (run with LD_PRELOAD, UIOMMUFD_DEVICES declaring
 * one device and UIOMMUFD_SYSFS naming the sysfs tree):
 *
 *   vfio_devices SYSFS_ROOT ADDR GROUP CDEV
 *
 *  - QEMU's sysfsdev=DIR discovery in the real tree: readlink of
 *    DIR/iommu_group (basename = group), opendir(DIR/vfio-dev) (first entry
 *    vfioN), DIR/vfio-dev/vfioN/dev ("240:N\n");
 *  - host=ADDR: the same through /sys/bus/pci/devices/ADDR/ (open, stat,
 *    readlink, opendir, realpath, access redirected to the tree), and
 *    /sys/kernel/iommu_groups/N/devices/ADDR;
 *  - stat/lstat/statx/access of /dev/vfio/N and /dev/vfio/devices/vfioN:
 *    character devices, rdev makedev(241, N) and makedev(240, N);
 *    undeclared numbers are the kernel's; node misuse is ENOTDIR;
 *  - opening the cdev and the group: fstat of the cdev fd is S_ISCHR with
 *    the same rdev (what QEMU 10 checks), and VFIO_DEVICE_GET_INFO works —
 *    or, while the VFIO layer is not there, the open fails with ENODEV.
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "uapi_test.h"

#define VFIO_TYPE ';'
#define VFIO_BASE 100
#define VFIO_DEVICE_GET_INFO _IO(VFIO_TYPE, VFIO_BASE + 7)
#define VFIO_DEVICE_GET_REGION_INFO _IO(VFIO_TYPE, VFIO_BASE + 8)
#define VFIO_REGION_INFO_FLAG_MMAP (1 << 2)

struct vfio_device_info {
	uint32_t argsz;
	uint32_t flags;
	uint32_t num_regions;
	uint32_t num_irqs;
	uint32_t cap_offset;
	uint32_t pad;
};

struct vfio_region_info {
	uint32_t argsz;
	uint32_t flags;
	uint32_t index;
	uint32_t cap_offset;
	uint64_t size;
	uint64_t offset;
};

static const char *root, *addr;
static int group, cdev;

/* The basename of readlink(path). */
static void check_group_link(const char *path)
{
	char buf[PATH_MAX];
	ssize_t n = readlink(path, buf, sizeof(buf) - 1);
	CHECK(n > 0, "readlink %s", path);
	if (n <= 0)
		return;
	buf[n] = 0;
	CHECK(atoi(basename(buf)) == group, "%s -> %s, not group %d", path,
	      buf, group);
}

/* The first entry of DIR/vfio-dev other than . and .. */
static void check_vfio_dev_dir(const char *dir)
{
	char path[PATH_MAX], want[32];
	snprintf(path, sizeof(path), "%s/vfio-dev", dir);
	snprintf(want, sizeof(want), "vfio%d", cdev);
	DIR *d = opendir(path);
	CHECK(d, "opendir %s", path);
	if (!d)
		return;
	struct dirent *e;
	const char *first = NULL;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			first = e->d_name;
			break;
		}
	}
	CHECK(first && !strcmp(first, want), "%s: first entry %s, want %s",
	      path, first ? first : "(none)", want);
	closedir(d);
}

/* The whole content of a small file. */
static int slurp(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -1;
	buf[n] = 0;
	return 0;
}

static void check_dev_file(const char *dir)
{
	char path[PATH_MAX], buf[64], want[64];
	snprintf(path, sizeof(path), "%s/vfio-dev/vfio%d/dev", dir, cdev);
	snprintf(want, sizeof(want), "240:%d\n", cdev);
	CHECK(slurp(path, buf, sizeof(buf)) == 0, "read %s", path);
	CHECK(!strcmp(buf, want), "%s: %s", path, buf);
}

static void sysfs_views(void)
{
	char dir[1024], host[1024], path[PATH_MAX];
	char a[64], b[64];
	struct stat st;

	/* sysfsdev=DIR: the real tree */
	snprintf(dir, sizeof(dir), "%s/devices/%s", root, addr);
	snprintf(path, sizeof(path), "%s/iommu_group", dir);
	check_group_link(path);
	check_vfio_dev_dir(dir);
	check_dev_file(dir);

	/* host=ADDR: QEMU's spelling, with its trailing slash */
	snprintf(host, sizeof(host), "/sys/bus/pci/devices/%s/", addr);
	CHECK(stat(host, &st) == 0 && S_ISDIR(st.st_mode), "stat %s", host);
	snprintf(path, sizeof(path), "%s/iommu_group", host);
	check_group_link(path);
	check_vfio_dev_dir(host);
	check_dev_file(host);
	snprintf(path, sizeof(path), "%svendor", host);
	CHECK(slurp(path, a, sizeof(a)) == 0, "read %s", path);
	snprintf(path, sizeof(path), "%s/vendor", dir);
	CHECK(slurp(path, b, sizeof(b)) == 0, "read %s", path);
	CHECK(!strcmp(a, b) && !strncmp(a, "0x", 2) && strlen(a) == 7,
	      "vendor %s / %s", a, b);
	snprintf(path, sizeof(path), "%svendor", host);
	CHECK(access(path, R_OK) == 0, "access %s", path);
	CHECK(faccessat(AT_FDCWD, path, R_OK, 0) == 0, "faccessat %s", path);
	snprintf(path, sizeof(path), "%ssubsystem", host);
	char *rp = realpath(path, NULL);
	CHECK(rp && strlen(rp) > 8 && !strcmp(rp + strlen(rp) - 8, "/bus/pci"),
	      "realpath %s = %s", path, rp ? rp : "NULL");
	free(rp);
	snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s", addr);
	CHECK(lstat(path, &st) == 0 && S_ISLNK(st.st_mode),
	      "lstat %s: a symlink, as on Linux", path);

	/* the group lists the device */
	snprintf(path, sizeof(path), "/sys/kernel/iommu_groups/%d/devices/%s/vendor",
		 group, addr);
	CHECK(slurp(path, a, sizeof(a)) == 0 && !strcmp(a, b), "read %s", path);

	/* undeclared addresses are the kernel's */
	CHECK(stat("/sys/bus/pci/devices/0000:ff:1f.7/vendor", &st) == -1 &&
		      errno == ENOENT,
	      "an undeclared address");
}

static void check_node_stat(const char *path, unsigned major, unsigned minor)
{
	struct stat st;
	struct statx stx;
	CHECK(stat(path, &st) == 0, "stat %s", path);
	CHECK(S_ISCHR(st.st_mode) && (st.st_mode & 0777) == 0600,
	      "%s: mode %o", path, st.st_mode);
	CHECK(st.st_rdev == makedev(major, minor), "%s: rdev %u:%u", path,
	      major(st.st_rdev), minor(st.st_rdev));
	CHECK(st.st_uid == geteuid(), "%s: owner %u", path, st.st_uid);
	CHECK(lstat(path, &st) == 0 && S_ISCHR(st.st_mode), "lstat %s", path);
	CHECK(fstatat(AT_FDCWD, path, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
		      st.st_rdev == makedev(major, minor),
	      "fstatat %s", path);
	CHECK(statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &stx) == 0 &&
		      S_ISCHR(stx.stx_mode) && stx.stx_rdev_major == major &&
		      stx.stx_rdev_minor == minor,
	      "statx %s", path);
	CHECK(access(path, R_OK | W_OK) == 0, "access %s", path);
	CHECK(access(path, X_OK) == -1 && errno == EACCES, "access X_OK %s",
	      path);
	char buf[16];
	CHECK(readlink(path, buf, sizeof(buf)) == -1 && errno == EINVAL,
	      "readlink %s", path);
}

static void nodes(void)
{
	char g[64], c[64], p[80];
	snprintf(g, sizeof(g), "/dev/vfio/%d", group);
	snprintf(c, sizeof(c), "/dev/vfio/devices/vfio%d", cdev);
	check_node_stat(g, 241, group);
	check_node_stat(c, 240, cdev);

	struct stat st;
	snprintf(p, sizeof(p), "%s/", g);
	CHECK(stat(p, &st) == -1 && errno == ENOTDIR, "stat %s", p);
	CHECK(open(p, O_RDWR) == -1 && errno == ENOTDIR, "open %s", p);
	CHECK(open(g, O_RDWR | O_DIRECTORY) == -1 && errno == ENOTDIR,
	      "open %s O_DIRECTORY", g);
	CHECK(opendir(c) == NULL && errno == ENOTDIR, "opendir %s", c);
	/* an undeclared group is the kernel's */
	CHECK(stat("/dev/vfio/99999", &st) == -1 && errno == ENOENT,
	      "undeclared group");

	/* open: the cdev fd is a character device with the node's rdev */
	int fd = open(c, O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		CHECK(errno == ENODEV, "open %s", c);
		printf("NOTE: %s: no VFIO layer yet (ENODEV)\n", c);
	} else {
		CHECK(fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) &&
			      st.st_rdev == makedev(240, cdev),
		      "fstat of the cdev fd: mode %o rdev %u:%u", st.st_mode,
		      major(st.st_rdev), minor(st.st_rdev));
		CHECK(fstatat(fd, "", &st, AT_EMPTY_PATH) == 0 &&
			      st.st_rdev == makedev(240, cdev),
		      "fstatat AT_EMPTY_PATH of the cdev fd");
		CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC, "O_CLOEXEC kept");
		struct vfio_device_info info = { .argsz = sizeof(info) };
		int r = ioctl(fd, VFIO_DEVICE_GET_INFO, &info);
		/* before BIND_IOMMUFD the kernel refuses device ioctls */
		CHECK(r == -1 && errno == EINVAL, "GET_INFO on an unbound cdev: %d",
		      r);
		close(fd);
	}
	fd = open(g, O_RDWR | O_CLOEXEC);
	if (fd < 0)
		CHECK(errno == ENODEV, "open %s", g);
	else
		close(fd);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s SYSFS ADDR GROUP CDEV\n", argv[0]);
		return 2;
	}
	root = argv[1];
	addr = argv[2];
	group = atoi(argv[3]);
	cdev = atoi(argv[4]);
	sysfs_views();
	nodes();
	if (failures)
		return 1;
	printf("OK\n");
	return 0;
}

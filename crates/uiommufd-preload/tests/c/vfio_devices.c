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
 *  - opening the cdev: fstat of the fd is S_ISCHR with the same rdev (what
 *    QEMU 10 checks), device ioctls EINVAL before a bind;
 *  - the legacy way (QEMU 7.2): group (fstat rdev 241:N), GET_STATUS,
 *    container, GET_DEVICE_FD by address, GET_INFO, config space vendor
 *    through pread64 equal to sysfs, BAR0 through pread64 and preadv64,
 *    and every mmap-able region mapped (MAP_SHARED only);
 *  - threads, a forked child and a SIGALRM handler (every 200 us) stat,
 *    open, dup, fstat and close the nodes and read the redirected sysfs
 *    at once.
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
#include <sys/time.h>
#include <sys/wait.h>
#include <pthread.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include "uapi_test.h"

#define VFIO_TYPE ';'
#define VFIO_BASE 100
#define VFIO_SET_IOMMU _IO(VFIO_TYPE, VFIO_BASE + 2)
#define VFIO_GROUP_GET_STATUS _IO(VFIO_TYPE, VFIO_BASE + 3)
#define VFIO_GROUP_SET_CONTAINER _IO(VFIO_TYPE, VFIO_BASE + 4)
#define VFIO_GROUP_GET_DEVICE_FD _IO(VFIO_TYPE, VFIO_BASE + 6)
#define VFIO_DEVICE_GET_INFO _IO(VFIO_TYPE, VFIO_BASE + 7)
#define VFIO_DEVICE_GET_REGION_INFO _IO(VFIO_TYPE, VFIO_BASE + 8)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define VFIO_TYPE1v2_IOMMU 3
#define VFIO_GROUP_FLAGS_VIABLE (1 << 0)
#define VFIO_DEVICE_FLAGS_PCI (1 << 1)
#define VFIO_REGION_INFO_FLAG_READ (1 << 0)
#define VFIO_REGION_INFO_FLAG_MMAP (1 << 2)
#define VFIO_PCI_BAR0_REGION_INDEX 0
#define VFIO_PCI_CONFIG_REGION_INDEX 7

struct vfio_device_bind_iommufd {
	uint32_t argsz;
	uint32_t flags;
	int32_t iommufd;
	uint32_t out_devid;
};

struct vfio_group_status {
	uint32_t argsz;
	uint32_t flags;
};

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
	/* stdio too (glibc's fopen opens through an internal call) */
	snprintf(path, sizeof(path), "%svendor", host);
	FILE *f = fopen(path, "r");
	CHECK(f && fgets(a, sizeof(a), f) && !strncmp(a, b, strlen(b)),
	      "fopen %s: %s", path, f ? a : "NULL");
	if (f)
		fclose(f);
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

	/* open: the cdev fd is a character device with the node's rdev (what
	 * QEMU 10 checks against vfio-dev/vfioN/dev) */
	int fd = open(c, O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "open %s", c);
	if (fd >= 0) {
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
		/* bind names an iommufd by number: the preload's fd table */
		int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
		int null = open("/dev/null", O_RDWR);
		struct vfio_device_bind_iommufd bind = {
			.argsz = sizeof(bind), .iommufd = null
		};
		CHECK(ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == -1 &&
			      errno == EBADFD,
		      "BIND_IOMMUFD to /dev/null");
		bind.iommufd = 4000; /* not open */
		CHECK(ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == -1 &&
			      errno == EBADF,
		      "BIND_IOMMUFD to a closed fd");
		bind.iommufd = iommufd;
		CHECK(ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind) == 0,
		      "BIND_IOMMUFD");
		CHECK(ioctl(fd, VFIO_DEVICE_GET_INFO, &info) == 0 &&
			      (info.flags & VFIO_DEVICE_FLAGS_PCI),
		      "GET_INFO after the bind");
		close(null);
		close(fd);
		close(iommufd);
	}
}

/* The legacy way, as QEMU 7.2 does it: group, container, device fd; then
 * the device's regions through ioctl, pread64/preadv and mmap. */
static void group_and_device(void)
{
	char g[64];
	struct stat st;
	snprintf(g, sizeof(g), "/dev/vfio/%d", group);
	int gfd = open(g, O_RDWR | O_CLOEXEC);
	CHECK(gfd >= 0, "open %s", g);
	if (gfd < 0)
		return;
	CHECK(fstat(gfd, &st) == 0 && S_ISCHR(st.st_mode) &&
		      st.st_rdev == makedev(241, group),
	      "fstat of the group fd: rdev %u:%u", major(st.st_rdev),
	      minor(st.st_rdev));
	struct vfio_group_status status = { .argsz = sizeof(status) };
	CHECK(ioctl(gfd, VFIO_GROUP_GET_STATUS, &status) == 0 &&
		      (status.flags & VFIO_GROUP_FLAGS_VIABLE),
	      "GROUP_GET_STATUS flags %#x", status.flags);
	int cfd = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	CHECK(cfd >= 0, "open /dev/vfio/vfio");
	CHECK(ioctl(gfd, VFIO_GROUP_SET_CONTAINER, &cfd) == 0,
	      "GROUP_SET_CONTAINER");
	CHECK(ioctl(cfd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "SET_IOMMU");
	int dfd = ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, addr);
	CHECK(dfd >= 0, "GROUP_GET_DEVICE_FD %s", addr);
	if (dfd >= 0) {
		struct vfio_device_info info = { .argsz = sizeof(info) };
		CHECK(ioctl(dfd, VFIO_DEVICE_GET_INFO, &info) == 0 &&
			      (info.flags & VFIO_DEVICE_FLAGS_PCI) &&
			      info.num_regions >= 9,
		      "DEVICE_GET_INFO flags %#x regions %u", info.flags,
		      info.num_regions);

		/* config space: the vendor ID sysfs shows */
		struct vfio_region_info cfg = {
			.argsz = sizeof(cfg),
			.index = VFIO_PCI_CONFIG_REGION_INDEX
		};
		CHECK(ioctl(dfd, VFIO_DEVICE_GET_REGION_INFO, &cfg) == 0,
		      "GET_REGION_INFO config");
		uint16_t vendor = 0;
		CHECK(pread64(dfd, &vendor, 2, cfg.offset) == 2,
		      "pread64 config vendor");
		char path[1100], buf[16];
		snprintf(path, sizeof(path), "%s/devices/%s/vendor", root, addr);
		CHECK(slurp(path, buf, sizeof(buf)) == 0 &&
			      strtoul(buf, NULL, 16) == vendor,
		      "config vendor %#x, sysfs %s", vendor, buf);

		/* BAR0 through preadv: two segments, one positional read each */
		struct vfio_region_info bar = {
			.argsz = sizeof(bar),
			.index = VFIO_PCI_BAR0_REGION_INDEX
		};
		CHECK(ioctl(dfd, VFIO_DEVICE_GET_REGION_INFO, &bar) == 0 &&
			      (bar.flags & VFIO_REGION_INFO_FLAG_READ) &&
			      bar.size >= 8,
		      "GET_REGION_INFO BAR0");
		uint32_t a = 0, b = 0, c = 0;
		/* memory decoding off: EIO, as vfio-pci */
		CHECK(pread64(dfd, &a, 4, bar.offset) == -1 && errno == EIO,
		      "pread64 BAR0 with memory decoding off");
		uint16_t cmd = 0;
		CHECK(pread64(dfd, &cmd, 2, cfg.offset + 4) == 2, "read COMMAND");
		cmd |= 0x2; /* PCI_COMMAND_MEMORY */
		CHECK(pwrite64(dfd, &cmd, 2, cfg.offset + 4) == 2, "write COMMAND");
		CHECK(pread64(dfd, &a, 4, bar.offset) == 4 && a == 0x444d4145,
		      "pread64 BAR0: ID %#x", a);
		struct iovec iov[2] = { { &b, 4 }, { &c, 4 } };
		CHECK(preadv64(dfd, iov, 2, bar.offset) == 8 && b == a,
		      "preadv64 BAR0: %#x %#x (pread %#x)", b, c, a);

		/* every mmap-able region maps, shared only */
		for (uint32_t i = 0; i < info.num_regions; i++) {
			struct vfio_region_info r = { .argsz = sizeof(r), .index = i };
			if (ioctl(dfd, VFIO_DEVICE_GET_REGION_INFO, &r) ||
			    !(r.flags & VFIO_REGION_INFO_FLAG_MMAP) || !r.size)
				continue;
			void *p = mmap64(NULL, r.size, PROT_READ | PROT_WRITE,
					 MAP_SHARED, dfd, r.offset);
			CHECK(p != MAP_FAILED, "mmap region %u", i);
			if (p != MAP_FAILED)
				munmap(p, r.size);
			p = mmap64(NULL, r.size, PROT_READ, MAP_PRIVATE, dfd,
				   r.offset);
			CHECK(p == MAP_FAILED && errno == EINVAL,
			      "MAP_PRIVATE region %u", i);
			printf("mapped region %u\n", i);
		}
		close(dfd);
	}
	close(cfd);
	close(gfd);
}


/* Signal handlers and threads: a SIGALRM handler stats the cdev node and
 * reads the sysfs dev file through the host= redirect while threads stat,
 * open, fstat and close the nodes and a forked child does the same. */
static atomic_int handler_runs, handler_bad;
static char cdev_path[64], dev_file[160];

static void on_alarm(int sig)
{
	(void)sig;
	int saved = errno;
	struct stat st;
	if (stat(cdev_path, &st) != 0 || st.st_rdev != makedev(240, cdev))
		atomic_fetch_add(&handler_bad, 1);
	int fd = open(dev_file, O_RDONLY | O_CLOEXEC);
	char b[16];
	if (fd < 0 || read(fd, b, sizeof(b)) <= 0)
		atomic_fetch_add(&handler_bad, 1);
	if (fd >= 0)
		close(fd);
	atomic_fetch_add(&handler_runs, 1);
	errno = saved;
}

static void *node_worker(void *arg)
{
	(void)arg;
	for (int i = 0; i < 300; i++) {
		struct stat st;
		CHECK(stat(cdev_path, &st) == 0 &&
			      st.st_rdev == makedev(240, cdev),
		      "thread stat");
		int fd = open(cdev_path, O_RDWR | O_CLOEXEC);
		CHECK(fd >= 0, "thread open");
		if (fd >= 0) {
			CHECK(fstat(fd, &st) == 0 &&
				      st.st_rdev == makedev(240, cdev),
			      "thread fstat");
			int d = dup(fd);
			CHECK(d >= 0 && fstat(d, &st) == 0 &&
				      st.st_rdev == makedev(240, cdev),
			      "fstat of a dup");
			close(d);
			close(fd);
		}
	}
	return NULL;
}

/* A thread that makes the shim allocate (its heap sets up a per-thread
 * part) and ends at once: its heap's thread-exit destructor runs while the
 * timer's handler may call stat() (which allocates in the shim). */
static void *short_lived(void *arg)
{
	(void)arg;
	struct stat st;
	CHECK(stat(cdev_path, &st) == 0, "short-lived thread stat");
	return NULL;
}

static void *short_lived_exit(void *arg)
{
	short_lived(arg);
	pthread_exit(NULL);
}

static void concurrency(void)
{
	snprintf(cdev_path, sizeof(cdev_path), "/dev/vfio/devices/vfio%d", cdev);
	snprintf(dev_file, sizeof(dev_file),
		 "/sys/bus/pci/devices/%s/vfio-dev/vfio%d/dev", addr, cdev);
	CHECK(alarm_storm(on_alarm, 200) == 0, "SIGALRM every 200 us");
	/* many thread exits under the 200 us timer: none may hang */
	for (int i = 0; i < 400; i++) {
		pthread_t s;
		CHECK(pthread_create(&s, NULL, i % 2 ? short_lived : short_lived_exit,
				     NULL) == 0,
		      "pthread_create");
		pthread_join(s, NULL);
	}
	pthread_t t[3];
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, node_worker, NULL);
	pid_t child = fork();
	if (child == 0) {
		/* the child has its own copy of the devices */
		alarm_storm_stop();
		node_worker(NULL);
		_exit(failures ? 1 : 0);
	}
	CHECK(child > 0, "fork");
	node_worker(NULL);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	int status = 0;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
		      WEXITSTATUS(status) == 0,
	      "forked child: status %#x", status);
	alarm_storm_stop();
	signal(SIGALRM, SIG_IGN);
	CHECK(handler_bad == 0, "%d bad answers in the handler",
	      (int)handler_bad);
	printf("signal handler ran %d times\n", (int)handler_runs);
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
	group_and_device();
	concurrency();
	return checks_result();
}

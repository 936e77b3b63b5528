/*
 * Path handling of the open hooks under libuiommufd_preload.so (run with
 * LD_PRELOAD set): bad path pointers, overlong paths, the forms a path to a
 * device node can take, and O_PATH opens.
 *
 * The kernel is the oracle: every form is opened once with the emulated
 * node (/dev/iommu) and once with a real character device (/dev/null) in
 * its place, and both must give the same result and errno.
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "uapi_test.h"

static int ioas_alloc(int fd)
{
	struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };
	return ioctl(fd, IOMMU_IOAS_ALLOC, &cmd);
}

/* open() result as "ok" (fd closed) or the errno */
static int try_open(int dirfd, const char *path, int flags)
{
	int fd = openat(dirfd, path, flags, 0600);
	if (fd < 0)
		return errno;
	close(fd);
	return 0;
}

static void replace(char *out, size_t n, const char *fmt, const char *dev)
{
	/* fmt has one %s for the device name */
	snprintf(out, n, fmt, dev);
}

static void check_forms(void)
{
	static const char *forms[] = {
		"/dev/%s",	  "/dev//%s",	    "//dev/./%s",     "/dev/../dev/%s",
		"/tmp/../dev/%s", "/dev/%s/",	    "/dev/%s//",      "/dev/%s/.",
		"/dev/%s/..",	  "/dev/%s/x",	    "dev/%s",
		"./dev/%s/",	  "../dev/%s",
	};
	static const int flags[] = {
		O_RDWR,
		O_RDWR | O_CREAT,
		O_RDWR | O_CREAT | O_EXCL,
		O_RDWR | O_DIRECTORY,
		O_RDWR | O_CREAT | O_DIRECTORY,
		O_RDWR | O_TMPFILE,
		O_RDONLY | O_TMPFILE,
		O_PATH,
		O_PATH | O_DIRECTORY,
		O_PATH | O_CREAT | O_EXCL,
		O_PATH | O_CREAT | O_DIRECTORY,
	};
	int root = open("/", O_RDONLY | O_DIRECTORY);
	int dev = open("/dev", O_RDONLY | O_DIRECTORY);
	CHECK(root >= 0 && dev >= 0, "open / and /dev");
	for (size_t i = 0; i < sizeof(forms) / sizeof(forms[0]); i++) {
		for (size_t j = 0; j < sizeof(flags) / sizeof(flags[0]); j++) {
			char emu[64], real[64];
			/* relative forms from "/" ("dev/..") and "/dev" ("../dev/..") */
			int dirfd = forms[i][0] == '/' ? AT_FDCWD : !strncmp(forms[i], "../", 3) ? dev : root;
			replace(emu, sizeof(emu), forms[i], "iommu");
			replace(real, sizeof(real), forms[i], "null");
			int want = try_open(dirfd, real, flags[j]);
			int got = try_open(dirfd, emu, flags[j]);
			CHECK(got == want, "%s flags %#x: got %s, /dev/null gives %s", emu,
			      flags[j], got ? strerror(got) : "success",
			      want ? strerror(want) : "success");
		}
	}
	/* the relative forms reach the emulated node through the dirfd */
	int fd = openat(dev, "iommu", O_RDWR);
	CHECK(fd >= 0 && ioas_alloc(fd) == 0, "openat(/dev fd, iommu)");
	close(fd);
	CHECK(try_open(AT_FDCWD, "/dev/iommu/../iommu", O_RDWR) ==
		      try_open(AT_FDCWD, "/dev/null/../null", O_RDWR),
	      "through the node and back");
	CHECK(chdir("/dev") == 0, "chdir");
	fd = open("../dev/./iommu", O_RDWR);
	CHECK(fd >= 0 && ioas_alloc(fd) == 0, "open relative to the cwd");
	close(fd);
	CHECK(open("iommu/", O_RDWR) == -1 && errno == ENOTDIR, "relative, trailing slash");
	close(root);
	close(dev);
}

static void check_o_path(void)
{
	struct stat st;
	char buf[8];
	int fd = open("/dev/iommu", O_PATH | O_CLOEXEC);
	CHECK(fd >= 0, "O_PATH open");
	CHECK(ioas_alloc(fd) == -1 && errno == EBADF, "ioctl on an O_PATH fd is EBADF");
	CHECK(fstat(fd, &st) == 0, "fstat on an O_PATH fd");
	CHECK(read(fd, buf, sizeof(buf)) == -1 && errno == EBADF, "read on an O_PATH fd");
	CHECK(fcntl(fd, F_GETFD) == FD_CLOEXEC, "O_CLOEXEC kept");
	CHECK((fcntl(fd, F_GETFL) & O_PATH) == O_PATH, "the fd is an O_PATH fd");
	CHECK(close(fd) == 0, "close an O_PATH fd");
	fd = open("/dev/iommu", O_PATH);
	CHECK(fd >= 0 && fcntl(fd, F_GETFD) == 0, "O_PATH without O_CLOEXEC");
	close(fd);
	/* an ordinary open still gets a context */
	fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0 && ioas_alloc(fd) == 0, "open after O_PATH opens");
	close(fd);
}

static void check_bad_pointers(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	char *map = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(map != MAP_FAILED, "mmap");
	/* page 0 readable, page 1 PROT_NONE, page 2 unmapped */
	CHECK(mprotect(map + pg, pg, PROT_NONE) == 0, "mprotect");
	CHECK(munmap(map + 2 * pg, pg) == 0, "munmap");
	char *none = map + pg, *gone = map + 2 * pg;

	CHECK(open((char *)8, O_RDONLY) == -1 && errno == EFAULT, "open(8)");
	CHECK(open(none, O_RDONLY) == -1 && errno == EFAULT, "open(PROT_NONE)");
	CHECK(open(gone, O_RDONLY) == -1 && errno == EFAULT, "open(unmapped)");
	CHECK(openat(AT_FDCWD, gone, O_RDWR) == -1 && errno == EFAULT, "openat(unmapped)");
	CHECK(open64(none, O_RDONLY) == -1 && errno == EFAULT, "open64(PROT_NONE)");
	CHECK(openat64(AT_FDCWD, (char *)8, O_RDONLY) == -1 && errno == EFAULT, "openat64(8)");
	errno = 0;
	CHECK(opendir(none) == NULL && errno == EFAULT, "opendir(PROT_NONE)");
	errno = 0;
	CHECK(opendir((char *)8) == NULL && errno == EFAULT, "opendir(8)");
	/* bad flags come before the path, as in the kernel */
	CHECK(open(gone, O_RDONLY | O_CREAT | O_DIRECTORY) == -1 && errno == EINVAL,
	      "flags checked first");

	/* a path running into the PROT_NONE page without a NUL */
	memset(map, 'a', pg);
	map[0] = '/';
	CHECK(open(none - 100, O_RDONLY) == -1 && errno == EFAULT, "unterminated path");
	/* PATH_MAX bytes without a NUL before the bad page: too long, not EFAULT */
	CHECK(open(map, O_RDONLY) == -1 && errno == ENAMETOOLONG, "long, unterminated");
	/* a path ending at the last byte before the PROT_NONE page */
	const char *p = "/dev/iommu";
	char *at = none - strlen(p) - 1;
	memcpy(at, p, strlen(p) + 1);
	int fd = open(at, O_RDWR);
	CHECK(fd >= 0 && ioas_alloc(fd) == 0, "path at the end of a page");
	close(fd);
	/* the same, spanning two readable pages */
	char *two = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(two != MAP_FAILED && mprotect(two + 2 * pg, pg, PROT_NONE) == 0, "mmap 2");
	at = two + pg - 4;
	memcpy(at, p, strlen(p) + 1);
	fd = open(at, O_RDWR);
	CHECK(fd >= 0 && ioas_alloc(fd) == 0, "path across a page boundary");
	close(fd);
	munmap(two, 3 * pg);
	munmap(map, 2 * pg);
}

static void check_long_paths(void)
{
	/* PATH_MAX bytes with the NUL: "/////...//dev/iommu" */
	char *buf = malloc(PATH_MAX + 16);
	const char *tail = "dev/iommu";
	size_t n = PATH_MAX - 1; /* characters before the NUL */
	memset(buf, '/', n);
	memcpy(buf + n - strlen(tail), tail, strlen(tail));
	buf[n] = 0;
	int fd = open(buf, O_RDWR);
	CHECK(fd >= 0 && ioas_alloc(fd) == 0, "a %zu-character path", n);
	close(fd);
	/* one more character: too long */
	memset(buf, '/', n + 1);
	memcpy(buf + n + 1 - strlen(tail), tail, strlen(tail));
	buf[n + 1] = 0;
	CHECK(open(buf, O_RDWR) == -1 && errno == ENAMETOOLONG, "a %zu-character path", n + 1);
	memcpy(buf + n + 1 - 4, "null", 4); /* same shape, a real device */
	CHECK(open(buf, O_RDWR) == -1 && errno == ENAMETOOLONG, "kernel agrees");
	errno = 0;
	CHECK(opendir(buf) == NULL && errno == ENAMETOOLONG, "opendir too long");
	free(buf);
}

int main(void)
{
	check_bad_pointers();
	check_long_paths();
	check_o_path();
	check_forms();
	return checks_result();
}

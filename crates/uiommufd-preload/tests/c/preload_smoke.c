/*
 * Smoke test for libuiommufd_preload.so: run with LD_PRELOAD set.
 *
 *   preload_smoke <how>
 *
 * <how> selects the call used to open /dev/iommu: open, open64, openat,
 * openat64, openat-dirfd, relative, messy-path, fortify (only meaningful when
 * built with -O2 -D_FORTIFY_SOURCE=2, where open() with non-constant flags
 * becomes __open_2).
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#define _LARGEFILE64_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uapi_test.h"

#define IOMMU_UNKNOWN _IO(IOMMUFD_TYPE, 0x7f)

static volatile int rdwr = O_RDWR; /* non-constant: fortify uses __open_2 */

static int open_iommu(const char *how, int extra_flags)
{
	if (!strcmp(how, "open"))
		return open("/dev/iommu", O_RDWR | extra_flags);
	if (!strcmp(how, "open64"))
		return open64("/dev/iommu", O_RDWR | extra_flags);
	if (!strcmp(how, "openat"))
		return openat(AT_FDCWD, "/dev/iommu", O_RDWR | extra_flags);
	if (!strcmp(how, "openat64"))
		return openat64(AT_FDCWD, "/dev/iommu", O_RDWR | extra_flags);
	if (!strcmp(how, "openat-dirfd")) {
		int d = open("/dev", O_RDONLY | O_DIRECTORY);
		int fd = openat(d, "iommu", O_RDWR | extra_flags);
		int e = errno;
		close(d);
		errno = e;
		return fd;
	}
	if (!strcmp(how, "relative")) {
		char cwd[4096];
		int fd;
		if (!getcwd(cwd, sizeof(cwd)) || chdir("/dev"))
			return -1;
		fd = open("iommu", O_RDWR | extra_flags);
		if (chdir(cwd))
			return -1;
		return fd;
	}
	if (!strcmp(how, "messy-path"))
		return open("//dev/./../dev//iommu", O_RDWR | extra_flags);
	if (!strcmp(how, "fortify"))
		return open("/dev/iommu", rdwr | extra_flags);
	fprintf(stderr, "unknown open method %s\n", how);
	exit(2);
}

static int ioas_alloc(int fd, uint32_t *id)
{
	struct iommu_ioas_alloc cmd = { .size = sizeof(cmd) };
	int rc = ioctl(fd, IOMMU_IOAS_ALLOC, &cmd);
	*id = cmd.out_ioas_id;
	return rc;
}

static int destroy(int fd, uint32_t id)
{
	struct iommu_destroy cmd = { .size = sizeof(cmd), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &cmd);
}

struct worker {
	int fd;
	int iterations;
	int errors;
};

static void *alloc_destroy_loop(void *p)
{
	struct worker *w = p;
	for (int i = 0; i < w->iterations; i++) {
		uint32_t id = 0;
		if (ioas_alloc(w->fd, &id) || id == 0 || destroy(w->fd, id))
			w->errors++;
	}
	return NULL;
}

/* Loops until the fd is closed under it; only success or EBADF is allowed. */
static void *ioctl_until_closed(void *p)
{
	struct worker *w = p;
	for (int i = 0; i < 1000000; i++) {
		uint32_t id = 0;
		if (ioas_alloc(w->fd, &id)) {
			if (errno != EBADF)
				w->errors++;
			return NULL;
		}
	}
	return NULL;
}

static void check_ordinary_files(void)
{
	char path[] = "/tmp/uiommufd-preload-XXXXXX";
	char buf[16] = { 0 };
	int fd = mkstemp(path);
	CHECK(fd >= 0, "mkstemp");
	CHECK(write(fd, "hello", 5) == 5, "write");
	CHECK(close(fd) == 0, "close tmp");

	fd = open(path, O_RDONLY);
	CHECK(fd >= 0, "open tmp");
	CHECK(read(fd, buf, sizeof(buf)) == 5 && !memcmp(buf, "hello", 5), "read tmp");
	/* a regular file's ioctl is the kernel's */
	errno = 0;
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, buf) == -1 && errno == ENOTTY, "kernel ioctl");
	CHECK(close(fd) == 0, "close tmp");

	fd = openat(AT_FDCWD, path, O_RDONLY);
	CHECK(fd >= 0, "openat tmp");
	CHECK(close(fd) == 0, "close tmp");

	FILE *f = fopen(path, "r");
	CHECK(f != NULL, "fopen tmp");
	if (f) {
		memset(buf, 0, sizeof(buf));
		CHECK(fread(buf, 1, sizeof(buf), f) == 5, "fread");
		fclose(f);
	}
	unlink(path);

	errno = 0;
	CHECK(open("/nonexistent/uiommufd", O_RDONLY) == -1 && errno == ENOENT,
	      "errno of a forwarded failing open");
	errno = 0;
	CHECK(open("/nonexistent/iommu", O_RDONLY) == -1 && errno == ENOENT,
	      "errno of a forwarded failing open with a device-like name");
	errno = 0;
	CHECK(close(-1) == -1 && errno == EBADF, "close(-1)");
	errno = 0;
	CHECK(ioctl(-1, IOMMU_IOAS_ALLOC, buf) == -1 && errno == EBADF, "ioctl(-1)");
}

int main(int argc, char **argv)
{
	const char *how = argc > 1 ? argv[1] : "open";
	uint32_t id = 0, id2 = 0;
	int fd, fd2, fd3, fd4, other;

	fd = open_iommu(how, 0);
	CHECK(fd >= 0, "open /dev/iommu via %s", how);
	if (fd < 0)
		return 1;
	CHECK((fcntl(fd, F_GETFD) & FD_CLOEXEC) == 0, "no O_CLOEXEC asked");

	CHECK(ioas_alloc(fd, &id) == 0, "IOAS_ALLOC");
	CHECK(id != 0, "IOAS_ALLOC returned id %u", id);

	errno = 0;
	CHECK(destroy(fd, 0xdead) == -1 && errno == ENOENT, "DESTROY of a bad id");
	errno = 0;
	CHECK(ioctl(fd, IOMMU_DESTROY, NULL) == -1 && errno == EFAULT, "DESTROY(NULL)");
	{
		struct iommu_destroy cmd = { .size = sizeof(cmd), .id = id };
		errno = 0;
		CHECK(ioctl(fd, IOMMU_UNKNOWN, &cmd) == -1 && errno == ENOTTY, "unknown ioctl");
	}

	/* dup'd fds see the same objects */
	fd2 = dup(fd);
	CHECK(fd2 >= 0 && fd2 != fd, "dup");
	CHECK(destroy(fd2, id) == 0, "DESTROY via the dup'd fd");
	errno = 0;
	CHECK(destroy(fd, id) == -1 && errno == ENOENT, "object gone via the original fd");

	fd3 = fcntl(fd, F_DUPFD_CLOEXEC, 50);
	CHECK(fd3 >= 50, "F_DUPFD_CLOEXEC");
	CHECK(fcntl(fd3, F_GETFD) & FD_CLOEXEC, "F_DUPFD_CLOEXEC sets FD_CLOEXEC");
	CHECK(ioas_alloc(fd3, &id) == 0 && destroy(fd, id) == 0, "F_DUPFD fd shares the context");

	CHECK(dup2(fd, 100) == 100, "dup2");
	CHECK(ioas_alloc(100, &id) == 0 && destroy(fd2, id) == 0, "dup2 fd shares the context");
	CHECK(dup3(fd, 101, O_CLOEXEC) == 101, "dup3");
	CHECK(ioas_alloc(101, &id) == 0 && destroy(fd, id) == 0, "dup3 fd shares the context");

	/* dup2 of an ordinary fd onto an emulated one: the target is no longer ours */
	other = open("/dev/null", O_RDONLY);
	CHECK(other >= 0, "open /dev/null");
	CHECK(dup2(other, 100) == 100, "dup2 over an emulated fd");
	errno = 0;
	CHECK(ioas_alloc(100, &id) == -1 && errno == ENOTTY, "dup2 target is /dev/null now");
	CHECK(close(other) == 0 && close(100) == 0 && close(101) == 0 && close(fd3) == 0,
	      "close dups");

	/* a second open is a separate context */
	fd4 = open_iommu(how, O_CLOEXEC);
	CHECK(fd4 >= 0, "second open");
	CHECK(fcntl(fd4, F_GETFD) & FD_CLOEXEC, "O_CLOEXEC honoured");
	CHECK(ioas_alloc(fd, &id) == 0, "IOAS_ALLOC on first");
	errno = 0;
	CHECK(destroy(fd4, id) == -1 && errno == ENOENT, "contexts are separate");
	CHECK(ioas_alloc(fd4, &id2) == 0 && destroy(fd4, id2) == 0, "second context works");
	CHECK(close(fd4) == 0, "close second");

	/* device-node open flags */
	errno = 0;
	CHECK(open("/dev/iommu", O_RDWR | O_DIRECTORY) == -1 && errno == ENOTDIR, "O_DIRECTORY");
	errno = 0;
	CHECK(open("/dev/iommu", O_RDWR | O_CREAT | O_EXCL, 0600) == -1 && errno == EEXIST,
	      "O_CREAT|O_EXCL");

	/* multi-threaded alloc/destroy on one fd */
	{
		pthread_t t[4];
		struct worker w[4];
		for (int i = 0; i < 4; i++) {
			w[i] = (struct worker){ .fd = fd, .iterations = 1000 };
			CHECK(pthread_create(&t[i], NULL, alloc_destroy_loop, &w[i]) == 0, "pthread_create");
		}
		for (int i = 0; i < 4; i++) {
			pthread_join(t[i], NULL);
			CHECK(w[i].errors == 0, "thread %d had %d errors", i, w[i].errors);
		}
	}

	CHECK(close(fd2) == 0, "close dup");
	CHECK(destroy(fd, 0xdead) == -1 && errno == ENOENT, "original fd lives on after closing the dup");
	CHECK(close(fd) == 0, "close");
	errno = 0;
	CHECK(ioas_alloc(fd, &id) == -1 && errno == EBADF, "ioctl after close");

	/* ioctls racing with close on another thread */
	{
		pthread_t t[4];
		struct worker w[4];
		int rfd = open_iommu(how, 0);
		CHECK(rfd >= 0, "open for the race");
		for (int i = 0; i < 4; i++) {
			w[i] = (struct worker){ .fd = rfd };
			CHECK(pthread_create(&t[i], NULL, ioctl_until_closed, &w[i]) == 0, "pthread_create");
		}
		usleep(20000);
		CHECK(close(rfd) == 0, "close during ioctls");
		for (int i = 0; i < 4; i++) {
			pthread_join(t[i], NULL);
			CHECK(w[i].errors == 0, "racing thread %d saw an errno other than EBADF", i);
		}
	}

	/* an fd closed behind the shim's back (raw syscall); plain open() so that
	 * no helper fd disturbs the numbering */
	fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0, "open for the stale test");
	CHECK(syscall(SYS_close, fd) == 0, "raw close");
	/* only the opt-in paranoid mode notices before the number is reused
	 * (an fstat per ioctl); by default the shim learns it when the number
	 * comes back from an open, socket, pipe, dup... (checked below) */
	if (getenv("UIOMMUFD_CHECK_FDS")) {
		errno = 0;
		CHECK(ioas_alloc(fd, &id) == -1 && errno == EBADF,
		      "ioctl on a raw-closed fd");
	}
	fd2 = open("/dev/iommu", O_RDWR);
	CHECK(fd2 >= 0, "reopen");
	CHECK(syscall(SYS_close, fd2) == 0, "raw close again");
	other = open("/dev/null", O_RDONLY);
	CHECK(other == fd2, "number reused (%d vs %d)", other, fd2);
	errno = 0;
	CHECK(ioas_alloc(other, &id) == -1 && errno == ENOTTY, "reused number is /dev/null");
	CHECK(close(other) == 0, "close /dev/null");
	fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0 && ioas_alloc(fd, &id) == 0 && destroy(fd, id) == 0, "open after stale");
	CHECK(close(fd) == 0, "close");

	check_ordinary_files();

	return checks_result();
}

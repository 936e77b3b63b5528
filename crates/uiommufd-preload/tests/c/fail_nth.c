/*
 * fail-nth under libuiommufd_preload.so: the procfs and debugfs files of
 * the kernel's fault injection, as iommufd_fail_nth.c uses them, and a
 * small sweep over IOMMU_IOAS_ALLOC + IOMMU_IOAS_MAP + IOMMU_IOAS_COPY.
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uapi_test.h"

static long nth_value(int fd)
{
	char buf[32] = { 0 };
	ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);

	if (n < 2 || buf[n - 1] != '\n')
		return -1;
	return strtol(buf, NULL, 10);
}

static void set_nth(int fd, unsigned int n)
{
	char buf[32];
	int len = snprintf(buf, sizeof(buf), "%u", n);

	CHECK(pwrite(fd, buf, len, 0) == len, "pwrite %u", n);
}

static void check_debugfs(void)
{
	DIR *d = opendir("/sys/kernel/debug/");
	struct dirent *e;
	int seen = 0, fd;
	char buf[8] = { 0 };

	CHECK(d != NULL, "opendir debugfs");
	if (!d)
		return;
	while ((e = readdir(d)))
		if (!strcmp(e->d_name, "failslab") ||
		    !strcmp(e->d_name, "fail_page_alloc"))
			seen++;
	CHECK(seen == 2, "readdir saw %d fail* directories", seen);
	fd = openat(dirfd(d), "failslab/ignore-gfp-wait", O_WRONLY);
	CHECK(fd >= 0, "openat failslab/ignore-gfp-wait");
	CHECK(write(fd, "N", 1) == 1, "write");
	close(fd);
	fd = openat(dirfd(d), "fail_page_alloc/verbose", O_RDONLY);
	CHECK(fd >= 0 && read(fd, buf, sizeof(buf)) == 2 && buf[0] == '2',
	      "read fail_page_alloc/verbose: %s", buf);
	close(fd);
	fd = openat(dirfd(d), "no_such_thing/verbose", O_WRONLY);
	CHECK(fd == -1 && errno == ENOENT, "openat of a missing file");
	fd = open("/sys/kernel/debug/failslab/ignore-gfp-wait", O_RDONLY);
	CHECK(fd >= 0, "absolute open");
	close(fd);
	CHECK(closedir(d) == 0, "closedir");
}

/* The sweep's sequence: 0 on success, -1 when a call failed. */
static int sequence(void *buf, size_t len)
{
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	struct iommu_ioas_map map = {
		.size = sizeof(map),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.user_va = (uintptr_t)buf,
		.length = len,
	};
	struct iommu_ioas_copy copy = {
		.size = sizeof(copy),
		.flags = IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.length = len / 2,
	};
	int fd = open("/dev/iommu", O_RDWR);
	int rc = -1;

	if (fd < 0)
		return -1;
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &alloc))
		goto out;
	map.ioas_id = alloc.out_ioas_id;
	if (ioctl(fd, IOMMU_IOAS_MAP, &map))
		goto out;
	copy.src_ioas_id = copy.dst_ioas_id = alloc.out_ioas_id;
	copy.src_iova = map.iova;
	if (ioctl(fd, IOMMU_IOAS_COPY, &copy))
		goto out;
	rc = 0;
out:
	close(fd);
	return rc;
}

static void *other_thread(void *arg)
{
	int fd = *(int *)arg;

	/* the other thread's points do not count against ours */
	CHECK(sequence(mmap(NULL, 65536, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
		       65536) == 0,
	      "sequence on another thread");
	CHECK(nth_value(fd) == 1, "the main thread's count moved");
	return NULL;
}

int main(void)
{
	char path[64];
	size_t len = 65536;
	void *buf = mmap(NULL, len, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned int n;
	pthread_t t;
	int fd, fd2;

	check_debugfs();

	snprintf(path, sizeof(path), "/proc/self/task/%u/fail-nth", getpid());
	fd = open(path, O_RDWR);
	CHECK(fd >= 0, "open %s", path);
	fd2 = open("/proc/thread-self/fail-nth", O_RDWR);
	CHECK(fd2 >= 0, "open /proc/thread-self/fail-nth");
	CHECK(nth_value(fd) == 0, "initial value");
	CHECK(open("/proc/self/task/1/fail-nth", O_RDWR) == -1 &&
		      errno == ENOENT,
	      "another process's thread");

	/* write N, read the remaining count, write 0 to disable */
	set_nth(fd, 1);
	CHECK(nth_value(fd2) == 1, "armed through the other file");
	CHECK(pthread_create(&t, NULL, other_thread, &fd) == 0, "thread");
	pthread_join(t, NULL);
	errno = 0;
	CHECK(open("/dev/iommu", O_RDWR) == -1 && errno == ENOMEM,
	      "the first point (context allocation) fails");
	CHECK(nth_value(fd) == 0, "fired");
	fd2 = open("/dev/iommu", O_RDWR);
	CHECK(fd2 >= 0, "fires once");
	close(fd2);
	set_nth(fd, 1000);
	CHECK(sequence(buf, len) == 0, "sequence with an unreached point");
	CHECK(nth_value(fd) > 0 && nth_value(fd) < 1000, "count decremented");
	set_nth(fd, 0);
	CHECK(nth_value(fd) == 0, "disabled");
	CHECK(write(fd, "x", 1) == -1 && errno == EINVAL, "not a number");
	{
		char b[4] = { 0 };
		CHECK(write(fd, "7\n", 2) == 2, "write");
		CHECK(read(fd, b, 1) == 1 && b[0] == '7', "read at 0");
		CHECK(read(fd, b, 3) == 1 && b[0] == '\n', "read at 1");
		CHECK(read(fd, b, 3) == 0, "EOF");
		set_nth(fd, 0);
	}

	/* the sweep: as iommufd_fail_nth.c */
	for (n = 1; n < 400; n++) {
		int rc;

		set_nth(fd, n);
		rc = sequence(buf, len);
		if (nth_value(fd) != 0) {
			set_nth(fd, 0);
			CHECK(rc == 0, "the sequence failed without injection");
			break;
		}
		CHECK(rc == -1, "the sequence succeeded although point %u failed", n);
	}
	CHECK(n > 5 && n < 400, "%u iterations", n);
	close(fd);
	if (failures)
		return 1;
	printf("OK (%u iterations)\n", n);
	return 0;
}

/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * A /dev/iommu fd inherited across fork refers to the parent's context,
 * under libuiommufd_preload.so (run with LD_PRELOAD set):
 *
 *  - objects a child and a grandchild (a fork of the child: its fd is
 *    itself inherited) allocate are the parent's to destroy;
 *  - the context lives while a child holds the fd, after the parent closed
 *    its own;
 *  - the child maps MAP_SHARED memory it shares with the parent into a
 *    mock domain, and the parent's access reads what the child wrote;
 *  - a child's IOAS_MAP_FILE maps its own memfd (the fd travels to the
 *    owner), which stays mapped after the child closed it and exited;
 *  - a fault queue fd inherited by a child reads and answers the faults of
 *    the owner's engine;
 *  - a child makes a fault queue and an access itself: their fds work
 *    there, and closing the access fd destroys the access;
 *  - the owner's exit ends the context: a child's calls are then EIO.
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "uapi_test.h"

#define IOVA 0x1000000ull /* inside the mock aperture */
#define MAP_FIXED_RW (IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE)

static void objects_of_children(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0, "open");
	int p[2];
	CHECK(pipe(p) == 0, "pipe");
	pid_t child = fork();
	if (child == 0) {
		uint32_t id = uapi_ioas_alloc(fd);
		pid_t grandchild = fork();
		if (grandchild == 0) {
			uint32_t id3 = uapi_ioas_alloc(fd);
			_exit(write(p[1], &id3, 4) == 4 && id3 ? 0 : 1);
		}
		int ok = child_ok(grandchild);
		_exit(write(p[1], &id, 4) == 4 && id && ok ? 0 : 1);
	}
	uint32_t ids[2] = { 0, 0 };
	CHECK(read(p[0], &ids[0], 4) == 4 && read(p[0], &ids[1], 4) == 4, "ids");
	CHECK(child_ok(child), "child");
	CHECK(ids[0] && ids[1] && ids[0] != ids[1], "two ids %u %u", ids[0], ids[1]);
	CHECK(uapi_destroy(fd, ids[0]) == 0, "destroy the grandchild's IOAS %u", ids[0]);
	CHECK(uapi_destroy(fd, ids[1]) == 0, "destroy the child's IOAS %u", ids[1]);
	errno = 0;
	CHECK(uapi_destroy(fd, ids[0]) == -1 && errno == ENOENT, "destroyed once");
	close(p[0]);
	close(p[1]);
	close(fd);
}

/* The context lives while a child holds the fd, after the parent closed
 * its own. */
static void outlives_the_parents_fd(void)
{
	CHECK(child_after_parent_closes(uapi_calls_work), "the child's calls after the parent's close");
}

static void shared_memory_in_a_domain(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint32_t ioas;
	int fd = uapi_open_ioas(&ioas);
	CHECK(uapi_mock_domain(fd, ioas) == 0, "MOCK_DOMAIN");
	int access = uapi_create_access(fd, ioas, 0);
	CHECK(access >= 0, "CREATE_ACCESS");
	unsigned char *buf = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE,
				  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED, "mmap");
	pid_t child = fork();
	if (child == 0) {
		memset(buf, 0x3c, 2 * pg);
		uint64_t iova = IOVA;
		_exit(uapi_ioas_map(fd, ioas, buf, 2 * pg, &iova, MAP_FIXED_RW) == 0 ? 0 : 1);
	}
	CHECK(child_ok(child), "the child's IOAS_MAP into a domain");
	CHECK(uapi_access_reads(fd, access, IOVA + pg - 16, 32, 0x3c), "ACCESS_RW after the child exited");
	close(fd);
}

/* IOAS_MAP_FILE from a child: its fd travels to the owner, the area stays
 * after the child closed the memfd and exited; a bad fd is EBADF. */
static void map_file_from_a_child(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint32_t ioas;
	int fd = uapi_open_ioas(&ioas);
	int access = uapi_create_access(fd, ioas, 0);
	CHECK(access >= 0, "CREATE_ACCESS");
	pid_t child = fork();
	if (child == 0) {
		int mfd = memfd_create("guest-ram", 0);
		unsigned char page[4096];
		memset(page, 0x77, sizeof(page));
		int ok = mfd >= 0 && ftruncate(mfd, 2 * pg) == 0 &&
			 pwrite(mfd, page, sizeof(page), pg) == (ssize_t)sizeof(page);
		struct iommu_ioas_map_file m = {
			.size = sizeof(m),
			.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
			.ioas_id = ioas,
			.fd = mfd,
			.start = 0,
			.length = 2 * pg,
			.iova = IOVA,
		};
		ok = ok && ioctl(fd, IOMMU_IOAS_MAP_FILE, &m) == 0 && m.fd == mfd;
		m.fd = 1000;
		m.iova = IOVA + 2 * pg;
		errno = 0;
		ok = ok && ioctl(fd, IOMMU_IOAS_MAP_FILE, &m) == -1 && errno == EBADF;
		close(mfd);
		_exit(ok ? 0 : 1);
	}
	CHECK(child_ok(child), "the child's IOAS_MAP_FILE");
	CHECK(uapi_access_reads(fd, access, IOVA + pg + 100, 32, 0x77), "ACCESS_RW of the child's file");
	close(fd);
}

/* A fault queue fd inherited across fork: the child reads the faults the
 * owner's engine queued and answers them there (the queue empties for the
 * parent too); poll works on the shared eventfd. */
static void fault_fd_in_a_child(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0, "open");
	uint32_t idev = 0;
	int ffd = uapi_faulting_mock_device(fd, uapi_ioas_alloc(fd), &idev);
	CHECK(ffd >= 0, "a mock device on a nested HWPT with a fault queue");
	for (uint32_t g = 1; g <= 2; g++)
		CHECK(uapi_trigger_iopf(fd, idev, g) == 0, "TRIGGER_IOPF %u", g);
	pid_t child = fork();
	if (child == 0) {
		struct pollfd pf = { .fd = ffd, .events = POLLIN };
		struct iommu_hwpt_pgfault f[4];
		int ok = poll(&pf, 1, 1000) == 1;
		ssize_t r = read(ffd, f, sizeof(f));
		ok = ok && r == 2 * (ssize_t)sizeof(f[0]) && f[0].grpid == 1 && f[1].grpid == 2;
		for (int i = 0; ok && i < 2; i++) {
			struct iommu_hwpt_page_response resp = { .cookie = f[i].cookie, .code = 0 };
			ok = write(ffd, &resp, sizeof(resp)) == sizeof(resp);
		}
		_exit(ok ? 0 : 1);
	}
	CHECK(child_ok(child), "the child read and answered the faults");
	struct pollfd pf = { .fd = ffd, .events = POLLIN };
	CHECK(poll(&pf, 1, 0) == 0, "the queue is empty for the parent too");
	struct iommu_hwpt_pgfault left[4];
	CHECK(read(ffd, left, sizeof(left)) == 0, "no fault left in the owner's queue");
	close(ffd);
	close(fd);
}

/* Engine fds a child makes (a fault queue, an access): the owner passes
 * them back; the child reads and answers faults through its fault fd and
 * reads the owner's areas through its access fd, which names the access
 * in later commands; closing it destroys the access in the owner. */
static void engine_fds_made_by_a_child(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint32_t ioas;
	int fd = uapi_open_ioas(&ioas);
	unsigned char *buf = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED, "mmap");
	memset(buf, 0x6b, pg);
	uint64_t iova = IOVA;
	CHECK(uapi_ioas_map(fd, ioas, buf, pg, &iova, MAP_FIXED_RW) == 0, "IOAS_MAP");
	pid_t child = fork();
	if (child == 0) {
		int ok = 1;
#define C(x) ok = ok && (x)
		/* an access made here, used here */
		int afd = uapi_create_access(fd, ioas, 0);
		C(afd > 2 && fcntl(afd, F_GETFD) == FD_CLOEXEC);
		C(uapi_access_reads(fd, afd, IOVA + 8, 64, 0x6b));
		/* a number that is no access fd of ours */
		unsigned char got[8];
		C(uapi_access_rw(fd, 1, IOVA + 8, got, sizeof(got), 0) == -1);
		/* a fault queue made here: its faults read and answered here */
		uint32_t idev = 0;
		int ffd = uapi_faulting_mock_device(fd, uapi_ioas_alloc(fd), &idev);
		C(ffd > 2 && ffd != afd && fcntl(ffd, F_GETFD) == FD_CLOEXEC);
		C(uapi_trigger_iopf(fd, idev, 7) == 0);
		struct pollfd pf = { .fd = ffd, .events = POLLIN };
		C(poll(&pf, 1, 1000) == 1);
		struct iommu_hwpt_pgfault f[2];
		C(read(ffd, f, sizeof(f)) == (ssize_t)sizeof(f[0]) && f[0].grpid == 7);
		struct iommu_hwpt_page_response resp = { .cookie = f[0].cookie, .code = 0 };
		C(write(ffd, &resp, sizeof(resp)) == sizeof(resp));
		C(poll(&pf, 1, 0) == 0);
		/* no free fd number here: the fault queue the owner made goes
		 * again (its ID is the next one's), as the kernel's never is */
		{
			struct rlimit old, low;
			int lowest = dup(0);
			close(lowest);
			C(getrlimit(RLIMIT_NOFILE, &old) == 0);
			low = old;
			low.rlim_cur = lowest;
			C(setrlimit(RLIMIT_NOFILE, &low) == 0);
			struct iommu_fault_alloc f2 = { .size = sizeof(f2) };
			errno = 0;
			C(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &f2) == -1 && errno == EMFILE);
			uint32_t gone = f2.out_fault_id;
			C(setrlimit(RLIMIT_NOFILE, &old) == 0);
			struct iommu_fault_alloc f3 = { .size = sizeof(f3) };
			C(ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &f3) == 0 && f3.out_fault_id == gone);
			close(f3.out_fault_fd);
			C(uapi_destroy(fd, f3.out_fault_id) == 0);
		}
		/* closing the access fd destroys the access in the owner: the
		 * IOAS it was on can go (EBUSY before) */
		errno = 0;
		C(uapi_destroy(fd, ioas) == -1 && errno == EBUSY);
		C(close(afd) == 0);
		C(uapi_access_rw(fd, afd, IOVA + 8, got, sizeof(got), 0) == -1);
		C(uapi_destroy(fd, ioas) == 0);
		close(ffd);
#undef C
		_exit(ok ? 0 : 1);
	}
	CHECK(child_ok(child), "the child's access and fault fds");
	errno = 0;
	CHECK(uapi_destroy(fd, ioas) == -1 && errno == ENOENT, "the child destroyed the IOAS");
	munmap(buf, pg);
	close(fd);
}

/* An owner's part: exit at once. */
static int just_exit(int fd)
{
	(void)fd;
	return 1;
}

/* A client's part: a call is EIO. */
static int calls_are_eio(int fd, uint32_t ioas)
{
	(void)ioas;
	errno = 0;
	return uapi_ioas_alloc(fd) == 0 && errno == EIO;
}

/* The owner's exit ends its contexts (a documented difference: the kernel
 * keeps the file while any process holds it): the child's calls are EIO. */
static void owner_exit(void)
{
	CHECK(client_after_owner(O_RDWR, just_exit, calls_are_eio), "EIO after the owner's exit");
}

int main(void)
{
	objects_of_children();
	outlives_the_parents_fd();
	shared_memory_in_a_domain();
	map_file_from_a_child();
	fault_fd_in_a_child();
	engine_fds_made_by_a_child();
	owner_exit();
	return checks_result();
}

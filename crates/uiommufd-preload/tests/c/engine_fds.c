/*
 * The fds the engine hands out (selftest access fds, fault queue fds) under
 * libuiommufd_preload.so, driven through the iommufd uAPI as the kernel
 * selftest does (run with LD_PRELOAD set):
 *
 *  - huge counts (1.5 GiB) under RLIMIT_AS: no bounce buffer of that size
 *    (the kernel copies record by record, or refuses with EINVAL);
 *  - an edge-triggered epoll sees every new fault, not only the first;
 *  - poll on an access fd is readable and writable (the VFS default mask);
 *  - reading faults into read-only or PROT_NONE memory is EFAULT and leaves
 *    the fault queued; the buffer past the records read is never written
 *    (a counter another thread increments there loses nothing).
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "uapi_test.h"

/* 1.5 GiB, a multiple of both the 40-byte record and the 8-byte response */
static volatile size_t huge_count = 1610612720; /* volatile: no -Wstringop-* */
#define HUGE huge_count
static void *volatile null_ptr; /* NULL the compiler cannot see */

static int iommufd, fault_fd, access_fd;
static uint32_t idev_id;
static long pg;

static int test_cmd(struct iommu_test_cmd *c)
{
	return uapi_test_cmd(iommufd, c);
}

static int trigger(uint32_t grpid)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_TRIGGER_IOPF };
	c.trigger_iopf.dev_id = idev_id;
	c.trigger_iopf.grpid = grpid;
	c.trigger_iopf.perm = 3;
	c.trigger_iopf.addr = 0xdeadbeef000 + grpid;
	return test_cmd(&c);
}

static short poll_events(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT };
	if (poll(&p, 1, 0) < 0)
		return -1;
	return p.revents;
}

static void setup(void)
{
	struct iommu_test_cmd acc = { .op = IOMMU_TEST_OP_CREATE_ACCESS };

	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0, "open /dev/iommu");
	uint32_t ioas = uapi_ioas_alloc(iommufd);
	CHECK(ioas != 0, "IOAS_ALLOC");
	fault_fd = uapi_faulting_mock_device(iommufd, ioas, &idev_id);
	CHECK(fault_fd >= 0, "a mock device on a nested HWPT with a fault queue");
	acc.id = ioas;
	CHECK(test_cmd(&acc) == 0, "CREATE_ACCESS");
	access_fd = acc.create_access.out_access_fd;
}

/* read every queued fault and answer it */
static int drain(void)
{
	struct iommu_hwpt_pgfault f[16];
	int n = 0;
	for (;;) {
		ssize_t r = read(fault_fd, f, sizeof(f));
		if (r <= 0)
			return r < 0 ? -1 : n;
		for (size_t i = 0; i < (size_t)r / sizeof(f[0]); i++) {
			struct iommu_hwpt_page_response resp = { .cookie = f[i].cookie, .code = 0 };
			CHECK(write(fault_fd, &resp, sizeof(resp)) == sizeof(resp), "respond");
			n++;
		}
	}
}

static void check_access_fd(void)
{
	char small[16] = "1234";
	short ev = poll_events(access_fd);
	CHECK(ev == (POLLIN | POLLOUT), "poll on an access fd: %#x", ev);
	/* no read/write: EINVAL whatever the count or buffer */
	CHECK(write(access_fd, small, HUGE) == -1 && errno == EINVAL, "huge write");
	CHECK(read(access_fd, small, HUGE) == -1 && errno == EINVAL, "huge read");
	CHECK(write(access_fd, null_ptr, 8) == -1 && errno == EINVAL, "write NULL");
	CHECK(read(access_fd, small, sizeof(small)) == -1 && errno == EINVAL, "read");
	CHECK(pread(access_fd, small, HUGE, 0) == -1 && errno == ESPIPE, "pread");
	CHECK(pwrite(access_fd, small, HUGE, 0) == -1 && errno == ESPIPE, "pwrite");
	ev = poll_events(access_fd);
	CHECK(ev == (POLLIN | POLLOUT), "still readable and writable: %#x", ev);
	struct pollfd p = { .fd = access_fd, .events = POLLIN };
	CHECK(poll(&p, 1, 1000) == 1 && p.revents == POLLIN, "blocking poll returns");
}

static void check_epollet(void)
{
	struct epoll_event ev = { .events = EPOLLIN | EPOLLET };
	struct epoll_event out[4];
	int ep = epoll_create1(EPOLL_CLOEXEC);
	CHECK(ep >= 0, "epoll_create1");
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, fault_fd, &ev) == 0, "EPOLL_CTL_ADD");
	CHECK(epoll_wait(ep, out, 4, 0) == 0, "nothing yet");
	for (int i = 1; i <= 4; i++) {
		CHECK(trigger(i) == 0, "trigger %d", i);
		/* every new fault is a new edge, even with faults still queued */
		CHECK(epoll_wait(ep, out, 4, 1000) == 1 && (out[0].events & EPOLLIN),
		      "edge for fault %d", i);
		CHECK(epoll_wait(ep, out, 4, 0) == 0, "one edge per fault (%d)", i);
	}
	CHECK(drain() == 4, "four faults queued");
	CHECK(!(poll_events(fault_fd) & POLLIN), "drained");
	close(ep);
}

static void check_huge_counts(void)
{
	/* a 40-byte record just before a PROT_NONE page */
	char *map = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(map != MAP_FAILED && mprotect(map + pg, pg, PROT_NONE) == 0, "mmap");
	struct iommu_hwpt_pgfault *rec = (struct iommu_hwpt_pgfault *)(map + pg - sizeof(*rec));

	CHECK(trigger(7) == 0, "trigger");
	CHECK(read(fault_fd, rec, HUGE + 1) == -1 && errno == ESPIPE, "not a multiple of 40");
	CHECK(read(fault_fd, rec, HUGE) == (ssize_t)sizeof(*rec), "1.5 GiB read gets one record");
	CHECK(rec->grpid == 7 && rec->dev_id == idev_id, "the record");
	struct iommu_hwpt_page_response *resp = (struct iommu_hwpt_page_response *)(map + pg - sizeof(*resp));
	resp->cookie = rec->cookie;
	resp->code = 0;
	CHECK(write(fault_fd, resp, HUGE) == (ssize_t)sizeof(*resp), "1.5 GiB write takes one response");
	CHECK(write(fault_fd, resp, HUGE + 4) == -1 && errno == ESPIPE, "not a multiple of 8");
	CHECK(write(fault_fd, resp, HUGE) == -1 && errno == EINVAL, "the cookie is used up");

	/* two groups, room for one: a short read, the second stays queued */
	CHECK(trigger(8) == 0 && trigger(9) == 0, "trigger two");
	CHECK(read(fault_fd, rec, 2 * sizeof(*rec)) == (ssize_t)sizeof(*rec), "short read");
	CHECK(rec->grpid == 8, "first group");
	CHECK(poll_events(fault_fd) & POLLIN, "second group queued");
	resp->cookie = rec->cookie;
	CHECK(write(fault_fd, resp, sizeof(*resp)) == sizeof(*resp), "respond");
	CHECK(drain() == 1, "one left");
	munmap(map, 2 * pg);
}

static void check_efault_keeps_faults(void)
{
	char *ro = mmap(NULL, pg, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *none = mmap(NULL, pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(ro != MAP_FAILED && none != MAP_FAILED, "mmap");
	struct iommu_hwpt_pgfault f;

	CHECK(trigger(11) == 0, "trigger");
	CHECK(read(fault_fd, ro, sizeof(f)) == -1 && errno == EFAULT, "read-only buffer");
	CHECK(read(fault_fd, none, sizeof(f)) == -1 && errno == EFAULT, "PROT_NONE buffer");
	CHECK(read(fault_fd, null_ptr, 4 * sizeof(f)) == -1 && errno == EFAULT, "NULL buffer");
	CHECK(read(fault_fd, ro, HUGE) == -1 && errno == EFAULT, "huge read-only buffer");
	CHECK(poll_events(fault_fd) & POLLIN, "the fault is still queued");
	CHECK(read(fault_fd, &f, sizeof(f)) == sizeof(f) && f.grpid == 11, "then read");
	struct iommu_hwpt_page_response resp = { .cookie = f.cookie };
	CHECK(write(fault_fd, ro, sizeof(resp)) == -1 && errno == EINVAL, "zero cookie");
	CHECK(write(fault_fd, none, sizeof(resp)) == -1 && errno == EFAULT, "PROT_NONE response");
	CHECK(write(fault_fd, &resp, sizeof(resp)) == sizeof(resp), "respond");
	munmap(ro, pg);
	munmap(none, pg);
}

/* The buffer past the records read is left alone: a counter there that
 * another thread keeps incrementing never loses an increment. */
struct counter {
	volatile int stop;
	uint64_t *slot;
	uint64_t done;
};

static void *bump(void *p)
{
	struct counter *c = p;
	while (!c->stop) {
		__atomic_fetch_add(c->slot, 1, __ATOMIC_SEQ_CST);
		c->done++;
	}
	return NULL;
}

static void check_reads_leave_the_rest_alone(void)
{
	/* 100 records' room; the counter in the last one */
	static struct iommu_hwpt_pgfault buf[100];
	struct counter c = { .slot = (uint64_t *)&buf[99] };
	pthread_t t;
	CHECK(pthread_create(&t, NULL, bump, &c) == 0, "thread");
	for (int i = 0; i < 2000; i++) {
		struct iommu_hwpt_page_response resp;
		CHECK(trigger(1000 + i) == 0, "trigger");
		CHECK(read(fault_fd, buf, sizeof(buf)) == sizeof(buf[0]), "read one");
		resp = (struct iommu_hwpt_page_response){ .cookie = buf[0].cookie };
		CHECK(write(fault_fd, &resp, sizeof(resp)) == sizeof(resp), "respond");
	}
	c.stop = 1;
	pthread_join(t, NULL);
	uint64_t seen = __atomic_load_n(c.slot, __ATOMIC_SEQ_CST);
	CHECK(seen == c.done, "counter %llu, increments %llu: %llu lost",
	      (unsigned long long)seen, (unsigned long long)c.done,
	      (unsigned long long)(c.done - seen));
}

int main(void)
{
	pg = sysconf(_SC_PAGESIZE);
	/* a bounce buffer the size of a huge count cannot be allocated */
	struct rlimit as = { .rlim_cur = 1ull << 30, .rlim_max = 1ull << 30 };
	CHECK(setrlimit(RLIMIT_AS, &as) == 0, "RLIMIT_AS");

	setup();
	short ev = poll_events(fault_fd);
	CHECK(ev == POLLOUT, "empty fault fd: writable only (%#x)", ev);
	check_access_fd();
	check_epollet();
	check_huge_counts();
	check_efault_keeps_faults();
	check_reads_leave_the_rest_alone();
	CHECK(!(poll_events(fault_fd) & POLLIN), "nothing left");
	return checks_result();
}

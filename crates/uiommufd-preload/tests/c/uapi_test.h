/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * Shared by the C test programs of the preload: the CHECK macro and the
 * subset of the iommufd uAPI they use (include/uapi/linux/iommufd.h and
 * the selftest's iommufd_test.h, Linux 6.12), with the kernel's names.
 * Included as "uapi_test.h" (found beside the program).
 */
#ifndef UAPI_TEST_H
#define UAPI_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* Checks that failed (atomic: some programs check from several threads). */
static atomic_int failures;

/* Count and report a failed check: the condition, a printf message and
 * the errno of the moment. */
#define CHECK(cond, ...)                                                     \
	do {                                                                 \
		if (!(cond)) {                                               \
			int e_ = errno;                                      \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, \
				#cond);                                      \
			fprintf(stderr, __VA_ARGS__);                        \
			fprintf(stderr, " (errno %d %s)\n", e_, strerror(e_)); \
			atomic_fetch_add(&failures, 1);                      \
		}                                                            \
	} while (0)

/* What main returns at the end: 1, after the count of failed checks on
 * stderr, when any failed; 0, after "OK" on stdout, when none did. */
static inline int checks_result(void)
{
	int n = atomic_load(&failures);

	if (n) {
		fprintf(stderr, "%d check(s) failed\n", n);
		return 1;
	}
	printf("OK\n");
	return 0;
}

#define IOMMUFD_TYPE ';'
#define IOMMU_DESTROY _IO(IOMMUFD_TYPE, 0x80)
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_COPY _IO(IOMMUFD_TYPE, 0x83)
#define IOMMU_IOAS_IOVA_RANGES _IO(IOMMUFD_TYPE, 0x84)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#define IOMMU_VFIO_IOAS _IO(IOMMUFD_TYPE, 0x88)
#define IOMMU_HWPT_ALLOC _IO(IOMMUFD_TYPE, 0x89)
#define IOMMU_FAULT_QUEUE_ALLOC _IO(IOMMUFD_TYPE, 0x8e)
#define IOMMU_IOAS_MAP_FILE _IO(IOMMUFD_TYPE, 0x8f)
#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, 0x80 + 32)

#define IOMMU_IOAS_MAP_FIXED_IOVA (1 << 0)
#define IOMMU_IOAS_MAP_WRITEABLE (1 << 1)
#define IOMMU_IOAS_MAP_READABLE (1 << 2)

#define IOMMU_VFIO_IOAS_GET 0

#define IOMMU_HWPT_ALLOC_NEST_PARENT (1u << 0)
#define IOMMU_HWPT_FAULT_ID_VALID (1u << 2)
#define IOMMU_HWPT_DATA_SELFTEST 0xdead
#define IOMMU_TEST_IOTLB_DEFAULT 0xbadbeef

#define IOMMU_TEST_OP_MOCK_DOMAIN 2
#define IOMMU_TEST_OP_CREATE_ACCESS 5
#define IOMMU_TEST_OP_DESTROY_ACCESS_PAGES 6
#define IOMMU_TEST_OP_ACCESS_PAGES 7
#define IOMMU_TEST_OP_ACCESS_RW 8
#define IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE 10
#define IOMMU_TEST_OP_TRIGGER_IOPF 15
#define MOCK_FLAGS_ACCESS_WRITE (1 << 0)
#define MOCK_ACCESS_RW_WRITE (1 << 0)
#define MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES (1 << 0)

struct iommu_destroy {
	uint32_t size;
	uint32_t id;
};

struct iommu_ioas_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_ioas_id;
};

struct iommu_ioas_iova_ranges {
	uint32_t size;
	uint32_t ioas_id;
	uint32_t num_iovas;
	uint32_t __reserved;
	uint64_t allowed_iovas;
	uint64_t out_iova_alignment;
};

struct iommu_ioas_map {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	uint32_t __reserved;
	uint64_t user_va;
	uint64_t length;
	uint64_t iova;
};

struct iommu_ioas_copy {
	uint32_t size;
	uint32_t flags;
	uint32_t dst_ioas_id;
	uint32_t src_ioas_id;
	uint64_t length;
	uint64_t dst_iova;
	uint64_t src_iova;
};

struct iommu_ioas_unmap {
	uint32_t size;
	uint32_t ioas_id;
	uint64_t iova;
	uint64_t length;
};

struct iommu_ioas_map_file {
	uint32_t size;
	uint32_t flags;
	uint32_t ioas_id;
	int32_t fd;
	uint64_t start;
	uint64_t length;
	uint64_t iova;
};

struct iommu_vfio_ioas {
	uint32_t size;
	uint32_t ioas_id;
	uint16_t op;
	uint16_t __reserved;
};

struct iommu_hwpt_alloc {
	uint32_t size, flags, dev_id, pt_id, out_hwpt_id, __reserved, data_type, data_len;
	uint64_t data_uptr;
	uint32_t fault_id, __reserved2;
};

struct iommu_fault_alloc {
	uint32_t size;
	uint32_t flags;
	uint32_t out_fault_id;
	uint32_t out_fault_fd;
};

struct iommu_hwpt_pgfault {
	uint32_t flags, dev_id, pasid, grpid, perm, __reserved;
	uint64_t addr;
	uint32_t length, cookie;
};

struct iommu_hwpt_page_response {
	uint32_t cookie, code;
};

/* struct iommu_test_cmd: the members of the payload union used here */
struct iommu_test_cmd {
	uint32_t size;
	uint32_t op;
	uint32_t id;
	uint32_t __reserved;
	union {
		struct {
			uint32_t out_stdev_id, out_hwpt_id, out_idev_id;
		} mock_domain;
		struct {
			uint32_t pt_id;
		} replace;
		struct {
			uint32_t out_access_fd;
			uint32_t flags;
		} create_access;
		struct {
			uint32_t access_pages_id;
		} destroy_access_pages;
		struct {
			uint32_t flags;
			uint32_t out_access_pages_id;
			uint64_t iova;
			uint64_t length;
			uint64_t uptr;
		} access_pages;
		struct {
			uint64_t iova;
			uint64_t length;
			uint64_t uptr;
			uint32_t flags;
		} access_rw;
		struct {
			uint32_t dev_id, pasid, grpid, perm;
			uint64_t addr;
		} trigger_iopf;
		uint8_t raw[48];
	};
	uint32_t last;
};

/* IOMMU_TEST_CMD on the iommufd `fd`, its size filled in: ioctl's result */
static inline int uapi_test_cmd(int fd, struct iommu_test_cmd *c)
{
	c->size = sizeof(*c);
	return ioctl(fd, IOMMU_TEST_CMD, c);
}

/* A mock device on IOAS `ioas`, attached to a nested HWPT (over a parent
 * HWPT of the IOAS) whose page requests go to a new fault queue: the
 * device's ID in *idev, and the queue's fd returned; -1 at the first step
 * that fails (its errno kept). */
static inline int uapi_faulting_mock_device(int fd, uint32_t ioas, uint32_t *idev)
{
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	if (uapi_test_cmd(fd, &md))
		return -1;
	*idev = md.mock_domain.out_idev_id;
	struct iommu_hwpt_alloc parent = { .size = sizeof(parent),
					   .flags = IOMMU_HWPT_ALLOC_NEST_PARENT,
					   .dev_id = *idev,
					   .pt_id = ioas };
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &parent) || ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fa))
		return -1;
	uint32_t iotlb = IOMMU_TEST_IOTLB_DEFAULT;
	struct iommu_hwpt_alloc nested = { .size = sizeof(nested),
					   .flags = IOMMU_HWPT_FAULT_ID_VALID,
					   .dev_id = *idev,
					   .pt_id = parent.out_hwpt_id,
					   .data_type = IOMMU_HWPT_DATA_SELFTEST,
					   .data_len = sizeof(iotlb),
					   .data_uptr = (uintptr_t)&iotlb,
					   .fault_id = fa.out_fault_id };
	struct iommu_test_cmd rep = { .op = IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE,
				      .id = md.mock_domain.out_stdev_id };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &nested))
		return -1;
	rep.replace.pt_id = nested.out_hwpt_id;
	if (uapi_test_cmd(fd, &rep))
		return -1;
	return fa.out_fault_fd;
}

/* IOMMU_TEST_OP_TRIGGER_IOPF: a read+write page request of group `grpid`
 * from mock device `idev`. */
static inline int uapi_trigger_iopf(int fd, uint32_t idev, uint32_t grpid)
{
	struct iommu_test_cmd t = { .op = IOMMU_TEST_OP_TRIGGER_IOPF };
	t.trigger_iopf.dev_id = idev;
	t.trigger_iopf.grpid = grpid;
	t.trigger_iopf.perm = 3;
	t.trigger_iopf.addr = 0xdeadbeef000;
	return uapi_test_cmd(fd, &t);
}

/* IOMMU_TEST_OP_ACCESS_RW of `len` bytes at `iova` through access `access`
 * of the iommufd `fd`, to (MOCK_ACCESS_RW_WRITE) or from `buf` */
static inline int uapi_access_rw(int fd, uint32_t access, uint64_t iova, void *buf, size_t len,
				 uint32_t flags)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_ACCESS_RW, .id = access };
	c.access_rw.iova = iova;
	c.access_rw.length = len;
	c.access_rw.uptr = (uintptr_t)buf;
	c.access_rw.flags = flags;
	return uapi_test_cmd(fd, &c);
}

/* IOMMU_TEST_OP_MOCK_DOMAIN: a mock device whose domain is attached to
 * IOAS `ioas`: ioctl's result. */
static inline int uapi_mock_domain(int fd, uint32_t ioas)
{
	struct iommu_test_cmd d = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	return uapi_test_cmd(fd, &d);
}

/* IOMMU_TEST_OP_CREATE_ACCESS on IOAS `ioas`: the new access's fd, -1 on
 * failure. */
static inline int uapi_create_access(int fd, uint32_t ioas, uint32_t flags)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas };
	c.create_access.flags = flags;
	if (uapi_test_cmd(fd, &c))
		return -1;
	return (int)c.create_access.out_access_fd;
}

/* IOMMU_IOAS_MAP of `len` bytes at `buf` into IOAS `ioas`: at *iova with
 * IOMMU_IOAS_MAP_FIXED_IOVA in `flags`, else where the kernel picks (then
 * written to *iova); ioctl's result. */
static inline int uapi_ioas_map(int fd, uint32_t ioas, void *buf, uint64_t len, uint64_t *iova,
				uint32_t flags)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = flags,
		.ioas_id = ioas,
		.user_va = (uintptr_t)buf,
		.length = len,
		.iova = *iova,
	};
	int r = ioctl(fd, IOMMU_IOAS_MAP, &m);
	if (r == 0)
		*iova = m.iova;
	return r;
}

/* Whether the `len` bytes (at most 256) that access `access` reads at
 * `iova` are all `byte`. */
static inline int uapi_access_reads(int fd, uint32_t access, uint64_t iova, size_t len,
				    unsigned char byte)
{
	unsigned char got[256];
	if (len > sizeof(got) || uapi_access_rw(fd, access, iova, got, len, 0))
		return 0;
	for (size_t i = 0; i < len; i++)
		if (got[i] != byte)
			return 0;
	return 1;
}

/* IOMMU_IOAS_ALLOC: the new IOAS's ID, 0 on failure. */
static inline uint32_t uapi_ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a))
		return 0;
	return a.out_ioas_id;
}

/* IOMMU_DESTROY of object ID. */
static inline int uapi_destroy(int fd, uint32_t id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d);
}

/* A child's side of the go pipe `p` (from pipe(2)): wait for the parent's
 * byte; 0 when it came. */
static inline int await_go(int p[2])
{
	char c;
	close(p[1]);
	return read(p[0], &c, 1) == 1 ? 0 : -1;
}

/* The parent's side of the go pipe `p`: the byte the child waits for, then
 * both ends closed; 0 when it was written. */
static inline int send_go(int p[2])
{
	int r = write(p[1], "g", 1) == 1 ? 0 : -1;
	close(p[0]);
	close(p[1]);
	return r;
}

/* Whether child PID exited with status 0 (waits for it). */
static inline int child_ok(pid_t pid)
{
	int st = 0;
	return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* SIGALRM to `handler` every `usec` microseconds (SA_RESTART), the signal
 * storm concurrency cases run their calls under, until alarm_storm_stop();
 * 0, or -1 with errno. */
static inline int alarm_storm(void (*handler)(int), long usec)
{
	struct sigaction sa = { .sa_handler = handler, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGALRM, &sa, NULL))
		return -1;
	struct itimerval it = { .it_interval = { 0, usec }, .it_value = { 0, usec } };
	return setitimer(ITIMER_REAL, &it, NULL);
}

/* Stop alarm_storm's timer (the handler stays installed). */
static inline void alarm_storm_stop(void)
{
	struct itimerval off = { 0 };
	setitimer(ITIMER_REAL, &off, NULL);
}

/* Open /dev/iommu and allocate an IOAS, its ID in *ioas (both checked):
 * the fd. */
static inline int uapi_open_ioas(uint32_t *ioas)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0, "open /dev/iommu");
	*ioas = uapi_ioas_alloc(fd);
	CHECK(*ioas != 0, "IOAS_ALLOC");
	return fd;
}

/* A client's check that its calls work: an IOAS of its own, and the
 * owner's IOAS `ioas` destroyed (proof it is the owner's context). */
static inline int uapi_calls_work(int fd, uint32_t ioas)
{
	uint32_t mine = uapi_ioas_alloc(fd);
	return mine && uapi_destroy(fd, mine) == 0 && uapi_destroy(fd, ioas) == 0;
}

/* A fork child of a process that opened /dev/iommu and allocated IOAS
 * `ioas` runs `then(fd, ioas)` once the parent has closed its fd (an exec
 * there does not return: the new image's exit status counts). Whether
 * `then` returned nonzero. */
static inline int child_after_parent_closes(int (*then)(int fd, uint32_t ioas))
{
	uint32_t ioas;
	int fd = uapi_open_ioas(&ioas);
	int p[2];
	if (pipe(p))
		return 0;
	pid_t child = fork();
	if (child == 0)
		_exit(await_go(p) == 0 && then(fd, ioas) ? 0 : 1);
	close(fd);
	int sent = send_go(p) == 0;
	return child_ok(child) && sent;
}

/* A client that outlives its owner: an owner (a fork child) opens
 * /dev/iommu with `oflags`, allocates an IOAS, forks the client and runs
 * `owner(fd)` (nonzero when it passed; an exec does not return: the new
 * image's exit status counts). Once the owner has exited, the client runs
 * `client(fd, ioas)`. Whether both returned nonzero. */
static inline int client_after_owner(int oflags, int (*owner)(int fd),
				     int (*client)(int fd, uint32_t ioas))
{
	int go[2], done[2];
	if (pipe(go) || pipe(done))
		return 0;
	pid_t pid = fork();
	if (pid == 0) {
		int fd = open("/dev/iommu", oflags);
		uint32_t ioas = fd >= 0 ? uapi_ioas_alloc(fd) : 0;
		pid_t c = fork();
		if (c == 0) {
			close(done[0]);
			char r = await_go(go) == 0 && client(fd, ioas) ? 'y' : 'n';
			_exit(write(done[1], &r, 1) == 1 ? 0 : 1);
		}
		_exit(ioas && owner(fd) ? 0 : 1);
	}
	close(done[1]);
	int owner_ok = child_ok(pid);
	int sent = send_go(go) == 0;
	char r = 0;
	int answered = read(done[0], &r, 1) == 1;
	close(done[0]);
	return owner_ok && sent && answered && r == 'y';
}

#endif

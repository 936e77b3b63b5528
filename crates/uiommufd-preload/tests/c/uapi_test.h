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
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

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

/* Whether child PID exited with status 0 (waits for it). */
static inline int child_ok(pid_t pid)
{
	int st = 0;
	return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

#endif

/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * VT-d first-stage nesting from C under libuiommufd_preload.so, with the
 * dma-engine declared as cdev 18 (UIOMMUFD_DEVICES):
 *
 *  - IOMMU_GET_HW_INFO: INTEL_VTD with ECAP.NEST;
 *  - guest memory mapped in an IOAS, a nest-parent HWPT, a
 *    IOMMU_HWPT_DATA_VTD_S1 HWPT over an x86-64 first-stage table this
 *    program writes in that memory, the device attached to it;
 *  - the dma-engine's descriptor ring and COPY data go through both
 *    stages and land where the tables say;
 *  - a table edit is not seen until IOMMU_HWPT_INVALIDATE
 *    (IOMMU_HWPT_INVALIDATE_DATA_VTD_S1, entry_num written back);
 *  - on a HWPT with a fault queue, a COPY to a page the first stage does
 *    not map fails, the fault is read from the fault fd, the page is
 *    mapped, the fault answered, and the COPY posted again completes.
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "uapi_test.h"

#define IOMMU_GET_HW_INFO _IO(IOMMUFD_TYPE, 0x8a)
#define IOMMU_HWPT_INVALIDATE _IO(IOMMUFD_TYPE, 0x8d)
#define IOMMU_HW_INFO_TYPE_INTEL_VTD 1
#define IOMMU_HWPT_DATA_VTD_S1 1
#define IOMMU_HWPT_INVALIDATE_DATA_VTD_S1 0
#define IOMMU_VTD_INV_FLAGS_LEAF (1 << 0)

#define VFIO_TYPE ';'
#define VFIO_BASE 100
#define VFIO_DEVICE_GET_REGION_INFO _IO(VFIO_TYPE, VFIO_BASE + 8)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)

struct iommu_hw_info {
	uint32_t size, flags, dev_id, data_len;
	uint64_t data_uptr;
	uint32_t out_data_type;
	uint8_t out_max_pasid_log2, __reserved[3];
	uint64_t out_capabilities;
};

struct iommu_hw_info_vtd {
	uint32_t flags, __reserved;
	uint64_t cap_reg, ecap_reg;
};

struct iommu_hwpt_vtd_s1 {
	uint64_t flags, pgtbl_addr;
	uint32_t addr_width, __reserved;
};

struct iommu_hwpt_vtd_s1_invalidate {
	uint64_t addr, npages;
	uint32_t flags, __reserved;
};

struct iommu_hwpt_invalidate {
	uint32_t size, hwpt_id;
	uint64_t data_uptr;
	uint32_t data_type, entry_len, entry_num, __reserved;
};

struct vfio_device_bind_iommufd {
	uint32_t argsz, flags;
	int32_t iommufd;
	uint32_t out_devid;
};

struct vfio_device_attach_iommufd_pt {
	uint32_t argsz, flags, pt_id;
};

struct vfio_region_info {
	uint32_t argsz, flags, index, cap_offset;
	uint64_t size, offset;
};

/* x86-64 first-stage entry bits */
#define P (1ull << 0)
#define RW (1ull << 1)
#define US (1ull << 2)
#define URW (P | RW | US)

/* guest memory: GPA 0x100000.., 16 pages */
#define GPA 0x100000ull
#define PAGES 16
#define gpa(p) (GPA + (uint64_t)(p) * 4096)
/* first-stage IOVA the device uses: page k is PT[k] */
#define IOVA 0x40000000ull

/* dma-engine registers */
#define CONTROL 0x010
#define RING_BASE 0x040
#define RING_SIZE 0x048
#define RING_TAIL 0x050
#define COMPLETED 0x058

static int iommufd, devfd;
static uint32_t devid;
static uint64_t bar0, cfg;
static uint8_t *mem;

static uint64_t *table(int page)
{
	return (uint64_t *)(mem + page * 4096);
}

static uint64_t region(uint32_t index)
{
	struct vfio_region_info r = { .argsz = sizeof(r), .index = index };

	CHECK(ioctl(devfd, VFIO_DEVICE_GET_REGION_INFO, &r) == 0,
	      "REGION_INFO %u", index);
	return r.offset;
}

static void reg_write(uint64_t off, uint64_t v, int len)
{
	CHECK(pwrite(devfd, &v, len, bar0 + off) == len, "BAR0 write %#lx",
	      (unsigned long)off);
}

static uint32_t reg_read32(uint64_t off)
{
	uint32_t v = 0;

	CHECK(pread(devfd, &v, 4, bar0 + off) == 4, "BAR0 read %#lx",
	      (unsigned long)off);
	return v;
}

static uint32_t hwpt_alloc(uint32_t pt, uint32_t flags, uint32_t fault_id,
			   uint32_t type, void *data, uint32_t len)
{
	struct iommu_hwpt_alloc a = {
		.size = sizeof(a), .flags = flags, .dev_id = devid,
		.pt_id = pt, .data_type = type, .data_len = len,
		.data_uptr = (uint64_t)(uintptr_t)data, .fault_id = fault_id,
	};

	CHECK(ioctl(iommufd, IOMMU_HWPT_ALLOC, &a) == 0, "HWPT_ALLOC on %u",
	      pt);
	return a.out_hwpt_id;
}

static void attach(uint32_t pt)
{
	struct vfio_device_attach_iommufd_pt a = { .argsz = sizeof(a),
						   .pt_id = pt };

	CHECK(ioctl(devfd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &a) == 0,
	      "ATTACH_IOMMUFD_PT %u", pt);
}

static unsigned posted;

/* COPY len bytes between first-stage IOVA pages through descriptor
 * `posted`; wait for it: its status word. */
static uint16_t copy(int src_page, int dst_page, uint32_t len)
{
	uint8_t *d = mem + 4 * 4096 + (posted % 16) * 32;
	uint64_t src = IOVA + src_page * 4096ull, dst = IOVA + dst_page * 4096ull;
	struct timespec ts = { 0, 1000000 };
	volatile uint16_t *status = (volatile uint16_t *)(d + 2);
	int i;

	memset(d, 0, 32);
	d[0] = 1; /* COPY */
	memcpy(d + 4, &len, 4);
	memcpy(d + 8, &src, 8);
	memcpy(d + 16, &dst, 8);
	posted++;
	reg_write(RING_TAIL, posted % 16, 4);
	for (i = 0; i < 5000 && reg_read32(COMPLETED) != posted; i++)
		nanosleep(&ts, NULL);
	CHECK(reg_read32(COMPLETED) == posted, "descriptor %u completed",
	      posted - 1);
	return *status;
}

static uint32_t invalidate(uint32_t hwpt, uint64_t iova)
{
	struct iommu_hwpt_vtd_s1_invalidate e = {
		.addr = iova, .npages = 1, .flags = IOMMU_VTD_INV_FLAGS_LEAF,
	};
	struct iommu_hwpt_invalidate c = {
		.size = sizeof(c), .hwpt_id = hwpt,
		.data_uptr = (uint64_t)(uintptr_t)&e,
		.data_type = IOMMU_HWPT_INVALIDATE_DATA_VTD_S1,
		.entry_len = sizeof(e), .entry_num = 1,
	};

	CHECK(ioctl(iommufd, IOMMU_HWPT_INVALIDATE, &c) == 0,
	      "HWPT_INVALIDATE");
	return c.entry_num;
}

int main(void)
{
	struct iommu_hw_info_vtd vtd = { 0 };
	struct iommu_hw_info info = { .size = sizeof(info) };
	struct iommu_ioas_alloc ioas = { .size = sizeof(ioas) };
	struct iommu_fault_alloc fa = { .size = sizeof(fa) };
	struct iommu_hwpt_pgfault f;
	struct iommu_hwpt_page_response r;
	struct iommu_hwpt_vtd_s1 s1 = { .pgtbl_addr = gpa(0),
					.addr_width = 48 };
	uint32_t parent, nested, nested_f;
	uint16_t cmd = 0x6, st;

	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0, "open /dev/iommu");
	devfd = open("/dev/vfio/devices/vfio18", O_RDWR);
	CHECK(devfd >= 0, "open the dma-engine's cdev");
	struct vfio_device_bind_iommufd b = { .argsz = sizeof(b),
					      .iommufd = iommufd };
	CHECK(ioctl(devfd, VFIO_DEVICE_BIND_IOMMUFD, &b) == 0, "BIND");
	devid = b.out_devid;

	info.dev_id = devid;
	info.data_len = sizeof(vtd);
	info.data_uptr = (uint64_t)(uintptr_t)&vtd;
	CHECK(ioctl(iommufd, IOMMU_GET_HW_INFO, &info) == 0, "GET_HW_INFO");
	CHECK(info.out_data_type == IOMMU_HW_INFO_TYPE_INTEL_VTD, "type %u",
	      info.out_data_type);
	CHECK((vtd.ecap_reg >> 26) & 1, "ECAP.NEST in %#llx",
	      (unsigned long long)vtd.ecap_reg);

	/* guest memory in an IOAS, a nest parent on it */
	mem = mmap(NULL, PAGES * 4096, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED, "mmap");
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &ioas) == 0, "IOAS_ALLOC");
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas.out_ioas_id,
		.user_va = (uint64_t)(uintptr_t)mem,
		.length = PAGES * 4096,
		.iova = GPA,
	};
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0, "IOAS_MAP");
	parent = hwpt_alloc(ioas.out_ioas_id, IOMMU_HWPT_ALLOC_NEST_PARENT, 0,
			    0, NULL, 0);

	/* the first stage: PML4 (page 0) -> PDPT (1) -> PD (2) -> PT (3);
	 * IOVA page 0 = the ring (guest page 4), 1 = source (5),
	 * 2 = destination (6) */
	table(0)[0] = gpa(1) | URW;
	table(1)[1] = gpa(2) | URW;
	table(2)[0] = gpa(3) | URW;
	table(3)[0] = gpa(4) | URW;
	table(3)[1] = gpa(5) | URW;
	table(3)[2] = gpa(6) | URW;
	nested = hwpt_alloc(parent, 0, 0, IOMMU_HWPT_DATA_VTD_S1, &s1,
			    sizeof(s1));
	attach(nested);

	bar0 = region(0);
	cfg = region(7);
	CHECK(pwrite(devfd, &cmd, 2, cfg + 4) == 2, "COMMAND: bus master");
	reg_write(RING_BASE, IOVA, 8);
	reg_write(RING_SIZE, 16, 4);
	reg_write(CONTROL, 1, 4);

	/* through both stages */
	memcpy(mem + 5 * 4096, "first-stage copy", 16);
	st = copy(1, 2, 16);
	CHECK(st == 1, "COPY status %#x", st);
	CHECK(memcmp(mem + 6 * 4096, "first-stage copy", 16) == 0,
	      "the copy landed in guest page 6");
	CHECK((table(3)[2] & (3 << 5)) == (3 << 5),
	      "A and D set in the destination's entry: %#llx",
	      (unsigned long long)table(3)[2]);

	/* edit: destination page -> guest page 7; stale until invalidated */
	memcpy(mem + 5 * 4096, "second copy.....", 16);
	table(3)[2] = gpa(7) | URW;
	st = copy(1, 2, 16);
	CHECK(st == 1, "COPY status %#x", st);
	CHECK(memcmp(mem + 6 * 4096, "second copy.....", 16) == 0,
	      "the cached translation still names guest page 6");
	CHECK(mem[7 * 4096] == 0, "guest page 7 untouched");
	CHECK(invalidate(nested, IOVA + 2 * 4096) == 1, "entry_num");
	memcpy(mem + 5 * 4096, "after invalidate", 16);
	st = copy(1, 2, 16);
	CHECK(st == 1, "COPY status %#x", st);
	CHECK(memcmp(mem + 7 * 4096, "after invalidate", 16) == 0,
	      "after HWPT_INVALIDATE the copy lands in guest page 7");

	/* a fault queue: a COPY to IOVA page 3 (not present) faults */
	CHECK(ioctl(iommufd, IOMMU_FAULT_QUEUE_ALLOC, &fa) == 0,
	      "FAULT_QUEUE_ALLOC");
	nested_f = hwpt_alloc(parent, IOMMU_HWPT_FAULT_ID_VALID,
			      fa.out_fault_id, IOMMU_HWPT_DATA_VTD_S1, &s1,
			      sizeof(s1));
	attach(nested_f);
	memcpy(mem + 5 * 4096, "after the fault!", 16);
	st = copy(1, 3, 16);
	CHECK(st == (0x8000 | 1), "COPY to a not-present page: status %#x",
	      st);
	CHECK(read(fa.out_fault_fd, &f, sizeof(f)) == sizeof(f),
	      "read the fault");
	CHECK(f.dev_id == devid && f.addr == IOVA + 3 * 4096 &&
		      (f.perm & 2 /* WRITE */),
	      "fault dev %u addr %#llx perm %#x", f.dev_id,
	      (unsigned long long)f.addr, f.perm);
	/* the handler maps the page and answers; the driver posts again */
	table(3)[3] = gpa(8) | URW;
	r.cookie = f.cookie;
	r.code = 0; /* IOMMUFD_PAGE_RESP_SUCCESS */
	CHECK(write(fa.out_fault_fd, &r, sizeof(r)) == sizeof(r),
	      "answer the fault");
	st = copy(1, 3, 16);
	CHECK(st == 1, "COPY retried: status %#x", st);
	CHECK(memcmp(mem + 8 * 4096, "after the fault!", 16) == 0,
	      "the retried copy landed in guest page 8");

	reg_write(CONTROL, 0, 4);
	close(devfd);
	close(fa.out_fault_fd);
	close(iommufd);
	return checks_result();
}

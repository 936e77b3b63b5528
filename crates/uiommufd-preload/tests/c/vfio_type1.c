/*
 * VFIO type1 container through /dev/vfio/vfio under libuiommufd_preload.so:
 * the container ioctls, the info capability chain, and type1 dirty page
 * tracking of what an emulated device (a selftest access) really wrote,
 * with every validation error of the type1 dirty-pages contract.
 *
 * Run with LD_PRELOAD set. Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uapi_test.h"

/* iommufd's and the selftest's uAPI (not in every libc's headers) */

#define PAGE 4096ul
#define IOVA 0x1000000ul /* two mappings of 8 pages: IOVA and IOVA + 8 pages */
#define NPAGES 16

/* ioctl must fail with exactly `e` */
#define EXPECT_ERRNO(e, call)                                              \
	do {                                                               \
		errno = 0;                                                 \
		int _r = (call);                                           \
		if (_r != -1 || errno != (e)) {                            \
			fprintf(stderr,                                    \
				"%s:%d: %s: want errno %d (%s), got rc %d errno %d (%s)\n", \
				__FILE__, __LINE__, #call, (e), strerror(e), _r, \
				errno, strerror(errno));                   \
			failures++;                                        \
		}                                                          \
	} while (0)

static int fd;
static int access_fd = -1;

static int map_dma(uint64_t vaddr, uint64_t iova, uint64_t size)
{
	struct vfio_iommu_type1_dma_map map = {
		.argsz = sizeof(map),
		.flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
		.vaddr = vaddr,
		.iova = iova,
		.size = size,
	};
	return ioctl(fd, VFIO_IOMMU_MAP_DMA, &map);
}

static int dirty_flags(uint32_t flags)
{
	struct vfio_iommu_type1_dirty_bitmap d = {
		.argsz = sizeof(d),
		.flags = flags,
	};
	return ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, &d);
}

struct get_bitmap {
	struct vfio_iommu_type1_dirty_bitmap hdr;
	struct vfio_iommu_type1_dirty_bitmap_get range;
};

/* a bitmap of `bytes` at 4 KiB pages */
static void bitmap_init(struct vfio_bitmap *b, uint64_t *bitmap, uint64_t bytes)
{
	b->pgsize = PAGE;
	b->size = bytes;
	b->data = (__u64 *)bitmap;
}

static void get_init(struct get_bitmap *g, uint64_t iova, uint64_t size,
		     uint64_t *bitmap, uint64_t bitmap_bytes)
{
	memset(g, 0, sizeof(*g));
	g->hdr.argsz = sizeof(*g);
	g->hdr.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP;
	g->range.iova = iova;
	g->range.size = size;
	bitmap_init(&g->range.bitmap, bitmap, bitmap_bytes);
}

struct unmap_bitmap {
	struct vfio_iommu_type1_dma_unmap hdr;
	struct vfio_bitmap bitmap;
};

static void unmap_init(struct unmap_bitmap *u, uint64_t iova, uint64_t size,
		       uint64_t *bitmap, uint64_t bitmap_bytes)
{
	memset(u, 0, sizeof(*u));
	u->hdr.argsz = sizeof(*u);
	u->hdr.flags = VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
	u->hdr.iova = iova;
	u->hdr.size = size;
	bitmap_init(&u->bitmap, bitmap, bitmap_bytes);
}

/* the dirty pages of [iova, iova + npages pages) as a bit mask */
static uint64_t get_dirty(uint64_t iova, unsigned int npages)
{
	uint64_t bitmap[1] = { 0 };
	struct get_bitmap g;

	get_init(&g, iova, npages * PAGE, bitmap, sizeof(bitmap));
	if (ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, &g)) {
		fprintf(stderr, "GET_BITMAP failed: %s\n", strerror(errno));
		failures++;
		return ~0ull;
	}
	return bitmap[0];
}

static int access_write(uint64_t iova, uint64_t len)
{
	static unsigned char src[3 * PAGE];
	struct iommu_test_cmd t = {
		.size = sizeof(t),
		.op = IOMMU_TEST_OP_ACCESS_RW,
		.id = access_fd,
	};

	memset(src, 0x5a, sizeof(src));
	t.access_rw.iova = iova;
	t.access_rw.length = len;
	t.access_rw.uptr = (uintptr_t)src;
	t.access_rw.flags = MOCK_ACCESS_RW_WRITE;
	return ioctl(fd, IOMMU_TEST_CMD, &t);
}

static void check_info(void)
{
	uint8_t buf[512];
	struct vfio_iommu_type1_info *info = (void *)buf;
	struct vfio_info_cap_header *cap;
	uint32_t need;
	int seen_iova = 0, seen_avail = 0, seen_mig = 0;

	memset(buf, 0xaa, sizeof(buf));
	memset(buf, 0, sizeof(*info));
	info->argsz = sizeof(*info);
	CHECK(ioctl(fd, VFIO_IOMMU_GET_INFO, info) == 0, "check failed");
	CHECK(info->flags == (VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS), "check failed");
	CHECK(info->iova_pgsizes & PAGE, "check failed");
	CHECK(info->cap_offset == 0, "check failed");
	need = info->argsz;
	CHECK(need > sizeof(*info) && need < sizeof(buf), "check failed");
	CHECK(buf[sizeof(*info)] == 0xaa, "check failed"); /* nothing written past argsz */

	memset(buf, 0, sizeof(buf));
	info->argsz = need;
	CHECK(ioctl(fd, VFIO_IOMMU_GET_INFO, info) == 0, "check failed");
	CHECK(info->cap_offset == sizeof(*info), "check failed");
	for (uint32_t at = info->cap_offset; at; at = cap->next) {
		if (at + sizeof(*cap) > need) {
			CHECK(!"cap chain runs past argsz", "check failed");
			break;
		}
		cap = (void *)(buf + at);
		CHECK(cap->version == 1, "check failed");
		switch (cap->id) {
		case VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE: {
			struct vfio_iommu_type1_info_cap_iova_range *r = (void *)cap;
			CHECK(r->nr_iovas >= 1, "check failed");
			seen_iova = 1;
			break;
		}
		case VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
			seen_avail = 1;
			break;
		case VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION: {
			struct vfio_iommu_type1_info_cap_migration *m = (void *)cap;
			CHECK(m->pgsize_bitmap == PAGE, "check failed");
			CHECK(m->max_dirty_bitmap_size == (1ull << 28), "check failed");
			seen_mig = 1;
			break;
		}
		default:
			CHECK(!"unknown capability", "check failed");
		}
		if (cap->next && cap->next <= at) {
			CHECK(!"cap chain goes backwards", "check failed");
			break;
		}
	}
	CHECK(seen_iova && seen_avail && seen_mig, "check failed");
}

static void check_validation(uint8_t *mem)
{
	uint64_t bitmap[4] = { 0 };
	struct get_bitmap g;
	struct unmap_bitmap u;
	struct vfio_iommu_type1_dirty_bitmap d;

	/* header: argsz, unknown flags, no flag, more than one */
	d.argsz = 7;
	d.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_START;
	EXPECT_ERRNO(EINVAL, ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, &d));
	EXPECT_ERRNO(EINVAL, dirty_flags(1 << 3));
	EXPECT_ERRNO(EINVAL, dirty_flags(0));
	EXPECT_ERRNO(EINVAL, dirty_flags(VFIO_IOMMU_DIRTY_PAGES_FLAG_START |
					 VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP));
	EXPECT_ERRNO(EINVAL, dirty_flags(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP |
					 VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP));
	EXPECT_ERRNO(EFAULT, ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, NULL));

	/* GET_BITMAP and unmap with bitmap before tracking starts */
	get_init(&g, IOVA, 8 * PAGE, bitmap, sizeof(bitmap));
	EXPECT_ERRNO(EINVAL, ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, &g));
	unmap_init(&u, IOVA, 8 * PAGE, bitmap, sizeof(bitmap));
	EXPECT_ERRNO(EINVAL, ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &u));

	CHECK(dirty_flags(VFIO_IOMMU_DIRTY_PAGES_FLAG_START) == 0, "check failed");
	CHECK(dirty_flags(VFIO_IOMMU_DIRTY_PAGES_FLAG_START) == 0, "check failed"); /* again: no-op */

#define GET_CASE(stmt)                                                     \
	do {                                                               \
		get_init(&g, IOVA, 8 * PAGE, bitmap, sizeof(bitmap));      \
		stmt;                                                      \
		EXPECT_ERRNO(EINVAL, ioctl(fd, VFIO_IOMMU_DIRTY_PAGES, &g)); \
	} while (0)
	GET_CASE(g.hdr.argsz = sizeof(g) - 1);		/* no room for the range */
	GET_CASE(g.range.bitmap.pgsize = 2 * PAGE);	/* not the smallest page size */
	GET_CASE(g.range.bitmap.pgsize = 0);
	GET_CASE(g.range.iova = IOVA + 8);		/* unaligned iova */
	GET_CASE(g.range.size = 0);
	GET_CASE(g.range.size = PAGE + 8);		/* unaligned size */
	GET_CASE(g.range.iova = -PAGE);			/* iova + size wraps */
	GET_CASE(g.range.bitmap.data = (__u64 *)(uintptr_t)-8ul); /* !access_ok */
	GET_CASE(g.range.bitmap.size = 0);
	GET_CASE(g.range.bitmap.size = (1ull << 28) + 8);	/* above the maximum */
	GET_CASE(g.range.size = 65 * PAGE; g.range.bitmap.size = 8); /* too small */
	GET_CASE(g.range.iova = IOVA + PAGE);		/* cuts the first mapping */
	GET_CASE(g.range.size = 12 * PAGE);		/* cuts the second mapping */
#undef GET_CASE

#define UNMAP_CASE(e, stmt)                                                \
	do {                                                               \
		unmap_init(&u, IOVA + 8 * PAGE, 8 * PAGE, bitmap, sizeof(bitmap)); \
		stmt;                                                      \
		EXPECT_ERRNO(e, ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &u));      \
	} while (0)
	UNMAP_CASE(EINVAL, u.hdr.flags |= VFIO_DMA_UNMAP_FLAG_ALL);
	UNMAP_CASE(EINVAL, u.hdr.argsz = sizeof(u) - 1);
	UNMAP_CASE(EINVAL, u.bitmap.data = (__u64 *)(uintptr_t)-8ul);
	UNMAP_CASE(EINVAL, u.bitmap.size = 0);
	UNMAP_CASE(EINVAL, u.hdr.size = 65 * PAGE; u.bitmap.size = 8);
	UNMAP_CASE(EINVAL, u.hdr.iova += 8);
	UNMAP_CASE(EINVAL, u.hdr.size = PAGE + 8);
	UNMAP_CASE(EINVAL, u.bitmap.pgsize = 2 * PAGE);
	UNMAP_CASE(ENOENT, u.hdr.size = 4 * PAGE);	/* cuts a mapping */
#undef UNMAP_CASE
	(void)mem;
}

int main(void)
{
	struct iommu_vfio_ioas vio = { .size = sizeof(vio), .op = IOMMU_VFIO_IOAS_GET };
	struct iommu_test_cmd t;
	uint64_t bitmap[1];
	struct unmap_bitmap u;
	uint8_t *mem;
	uint32_t item;
	int fd2, iommu;

	fd = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("open /dev/vfio/vfio");
		return 1;
	}
	CHECK(ioctl(fd, VFIO_GET_API_VERSION) == VFIO_API_VERSION, "check failed");
	CHECK(ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "check failed");
	CHECK(ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) == 1, "check failed");
	CHECK(ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_UNMAP_ALL) == 1, "check failed");
	CHECK(ioctl(fd, VFIO_CHECK_EXTENSION, VFIO_UPDATE_VADDR) == 0, "check failed");
	EXPECT_ERRNO(EINVAL, ioctl(fd, VFIO_SET_IOMMU, VFIO_SPAPR_TCE_IOMMU));
	CHECK(ioctl(fd, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) == 0, "check failed");
	check_info();

	/* the container is an iommufd context too: its compat IOAS */
	CHECK(ioctl(fd, IOMMU_VFIO_IOAS, &vio) == 0, "check failed");
	CHECK(vio.ioas_id != 0, "check failed");

	mem = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(mem != MAP_FAILED, "check failed");
	CHECK(map_dma((uintptr_t)mem, IOVA, 8 * PAGE) == 0, "check failed");
	CHECK(map_dma((uintptr_t)mem + 8 * PAGE, IOVA + 8 * PAGE, 8 * PAGE) == 0, "check failed");
	EXPECT_ERRNO(EEXIST, map_dma((uintptr_t)mem, IOVA, PAGE));

	/* an emulated device: a selftest access on the compat IOAS */
	memset(&t, 0, sizeof(t));
	t.size = sizeof(t);
	t.op = IOMMU_TEST_OP_CREATE_ACCESS;
	t.id = vio.ioas_id;
	t.create_access.flags = MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES;
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &t) == 0, "check failed");
	access_fd = t.create_access.out_access_fd;

	/* writes before tracking starts are not reported */
	CHECK(access_write(IOVA, 16) == 0, "check failed");

	check_validation(mem);

	CHECK(get_dirty(IOVA, 16) == 0, "check failed");
	CHECK(access_write(IOVA + PAGE + 100, 1) == 0, "check failed");	   /* page 1 */
	CHECK(access_write(IOVA + 3 * PAGE - 1, 2) == 0, "check failed");  /* pages 2, 3 */
	CHECK(access_write(IOVA + 9 * PAGE, PAGE) == 0, "check failed");   /* page 9 */
	CHECK(mem[9 * PAGE] == 0x5a && mem[PAGE + 100] == 0x5a, "check failed");
	CHECK(get_dirty(IOVA, 16) == ((1 << 1) | (1 << 2) | (1 << 3) | (1 << 9)), "check failed");
	CHECK(get_dirty(IOVA, 16) == 0, "check failed"); /* the read cleared them */

	/* a page pinned for write by the device is dirty until unpinned */
	memset(&t, 0, sizeof(t));
	t.size = sizeof(t);
	t.op = IOMMU_TEST_OP_ACCESS_PAGES;
	t.id = access_fd;
	t.access_pages.flags = MOCK_FLAGS_ACCESS_WRITE;
	t.access_pages.iova = IOVA + 5 * PAGE;
	t.access_pages.length = PAGE;
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &t) == 0, "check failed");
	item = t.access_pages.out_access_pages_id;
	CHECK(get_dirty(IOVA, 8) == (1 << 5), "check failed");
	CHECK(get_dirty(IOVA, 8) == (1 << 5), "check failed");
	memset(&t, 0, sizeof(t));
	t.size = sizeof(t);
	t.op = IOMMU_TEST_OP_DESTROY_ACCESS_PAGES;
	t.id = access_fd;
	t.destroy_access_pages.access_pages_id = item;
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &t) == 0, "check failed");
	CHECK(get_dirty(IOVA, 8) == 0, "check failed");

	/* unmap with bitmap: bits from the unmap's iova, size written back */
	CHECK(access_write(IOVA + 12 * PAGE, 2 * PAGE) == 0, "check failed"); /* pages 12, 13 */
	CHECK(access_write(IOVA + 7 * PAGE, 1) == 0, "check failed");	       /* page 7 */
	bitmap[0] = 0;
	unmap_init(&u, IOVA + 8 * PAGE, 8 * PAGE, bitmap, sizeof(bitmap));
	CHECK(ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &u) == 0, "check failed");
	CHECK(u.hdr.size == 8 * PAGE, "check failed");
	CHECK(bitmap[0] == ((1 << 4) | (1 << 5)), "check failed");
	/* remapped: starts clean; the first mapping still has page 7 */
	CHECK(map_dma((uintptr_t)mem + 8 * PAGE, IOVA + 8 * PAGE, 8 * PAGE) == 0, "check failed");
	CHECK(get_dirty(IOVA, 16) == (1 << 7), "check failed");

	/* STOP drops everything; tracking off again */
	CHECK(access_write(IOVA, 1) == 0, "check failed");
	CHECK(dirty_flags(VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP) == 0, "check failed");
	unmap_init(&u, IOVA, 8 * PAGE, bitmap, sizeof(bitmap));
	EXPECT_ERRNO(EINVAL, ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &u));
	CHECK(dirty_flags(VFIO_IOMMU_DIRTY_PAGES_FLAG_START) == 0, "check failed");
	CHECK(get_dirty(IOVA, 16) == 0, "check failed");

	/* plain unmaps still work: all of it */
	{
		struct vfio_iommu_type1_dma_unmap all = {
			.argsz = sizeof(all),
			.flags = VFIO_DMA_UNMAP_FLAG_ALL,
		};
		CHECK(ioctl(fd, VFIO_IOMMU_UNMAP_DMA, &all) == 0, "check failed");
		CHECK(all.size == NPAGES * PAGE, "check failed");
	}
	CHECK(close(access_fd) == 0, "check failed");

	/* a type1 (v1) container cannot track dirty pages */
	fd2 = open("/dev/vfio/vfio", O_RDWR);
	CHECK(fd2 >= 0, "check failed");
	CHECK(ioctl(fd2, VFIO_SET_IOMMU, VFIO_TYPE1_IOMMU) == 0, "check failed");
	{
		struct vfio_iommu_type1_dirty_bitmap d = {
			.argsz = sizeof(d),
			.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
		};
		EXPECT_ERRNO(EACCES, ioctl(fd2, VFIO_IOMMU_DIRTY_PAGES, &d));
	}
	CHECK(close(fd2) == 0, "check failed");

	/* /dev/iommu is 6.12's: no compat IOAS, no dirty tracking */
	iommu = open("/dev/iommu", O_RDWR);
	CHECK(iommu >= 0, "check failed");
	CHECK(ioctl(iommu, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) == 1, "check failed");
	EXPECT_ERRNO(ENODEV, ioctl(iommu, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU));
	{
		struct vfio_iommu_type1_dirty_bitmap d = {
			.argsz = sizeof(d),
			.flags = VFIO_IOMMU_DIRTY_PAGES_FLAG_START,
		};
		EXPECT_ERRNO(ENOTTY, ioctl(iommu, VFIO_IOMMU_DIRTY_PAGES, &d));
	}
	CHECK(close(iommu) == 0, "check failed");

	CHECK(close(fd) == 0, "check failed");
	munmap(mem, NPAGES * PAGE);
	return checks_result();
}

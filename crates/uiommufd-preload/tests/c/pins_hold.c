/*
 * Pins that hold (issue 12, item 3) under libuiommufd_preload.so (run with
 * LD_PRELOAD set): memory an IOAS has pinned, for a mock domain and for an
 * access, is munmap()ed, mmap(MAP_FIXED)ed over, madvise(MADV_DONTNEED)ed
 * and mremap()ed by the program:
 *
 *  - the program's calls succeed and do what they say (fresh zeroed
 *    memory after MAP_FIXED, zero pages after DONTNEED, its data at the
 *    new address after mremap);
 *  - ACCESS_RW still reads and writes the pinned pages, never the
 *    program's new memory, and the domain maps the pinned pages, not the
 *    program's new memory (MD_CHECK_MAP), or follows them where mremap
 *    put them;
 *  - IOAS_UNMAP releases everything.
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "uapi_test.h"

#define IOMMU_TEST_OP_MD_CHECK_MAP 3
#define IOMMU_TEST_OP_MD_CHECK_REFS 4
#define IOVA (1ull << 24)
#define IOVA2 (1ull << 26)

static int iommufd;
static long pg;

static int test_cmd(struct iommu_test_cmd *c)
{
	return uapi_test_cmd(iommufd, c);
}

/* MD_CHECK_MAP: the domain of `hwpt` maps [iova, +len) to the pages at uptr */
static int check_map(uint32_t hwpt, uint64_t iova, uint64_t len, void *uptr)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MD_CHECK_MAP, .id = hwpt };
	uint64_t p[3] = { iova, len, (uintptr_t)uptr };
	memcpy(c.raw, p, sizeof(p));
	return test_cmd(&c);
}

/* MD_CHECK_REFS: every page of [uptr, +len) is pinned `refs` times */
static int check_refs(void *uptr, uint64_t len, uint32_t refs)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MD_CHECK_REFS };
	uint64_t p[2] = { len, (uintptr_t)uptr };
	memcpy(c.raw, p, sizeof(p));
	memcpy(c.raw + sizeof(p), &refs, sizeof(refs));
	return test_cmd(&c);
}

static int access_rw(uint32_t access, uint64_t iova, void *buf, size_t len, uint32_t flags)
{
	return uapi_access_rw(iommufd, access, iova, buf, len, flags);
}

static void map(uint32_t ioas, void *va, size_t len, uint64_t iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_WRITEABLE |
			 IOMMU_IOAS_MAP_READABLE,
		.ioas_id = ioas, .user_va = (uintptr_t)va, .length = len, .iova = iova,
	};
	CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0, "IOAS_MAP at %#llx",
	      (unsigned long long)iova);
}

static uint8_t pattern(size_t i)
{
	return (uint8_t)(i * 7 + 3);
}

static void *anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED, "mmap");
	return p;
}

/* the IOVA range reads back as `want` through the access */
static void expect(uint32_t access, uint64_t iova, const uint8_t *want, size_t len,
		   const char *what)
{
	uint8_t *got = malloc(len);
	memset(got, 0x55, len);
	CHECK(access_rw(access, iova, got, len, 0) == 0, "%s: ACCESS_RW read", what);
	size_t i;
	for (i = 0; i < len; i++)
		if (got[i] != want[i])
			break;
	CHECK(i == len, "%s: byte %zu is %#x, the pinned page has %#x", what, i,
	      i < len ? got[i] : 0, i < len ? want[i] : 0);
	free(got);
}

int main(void)
{
	size_t n = 8, len, i;
	uint8_t *buf, *want;

	pg = sysconf(_SC_PAGESIZE);
	len = n * pg;
	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0, "open /dev/iommu");
	if (iommufd < 0)
		return 1;
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0, "IOAS_ALLOC");
	uint32_t ioas = a.out_ioas_id;
	struct iommu_test_cmd md = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK(test_cmd(&md) == 0, "MOCK_DOMAIN");
	uint32_t hwpt = md.mock_domain.out_hwpt_id;

	buf = anon(len);
	want = malloc(len);
	for (i = 0; i < len; i++)
		buf[i] = want[i] = pattern(i);
	map(ioas, buf, len, IOVA);
	struct iommu_test_cmd ca = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas };
	ca.create_access.flags = MOCK_FLAGS_ACCESS_CREATE_NEEDS_PIN_PAGES;
	CHECK(test_cmd(&ca) == 0, "CREATE_ACCESS");
	uint32_t access = ca.create_access.out_access_fd;
	/* the access pins pages 1 and 2 */
	struct iommu_test_cmd ap = { .op = IOMMU_TEST_OP_ACCESS_PAGES, .id = access };
	ap.access_pages.iova = IOVA + pg;
	ap.access_pages.length = 2 * pg;
	ap.access_pages.uptr = (uintptr_t)(buf + pg);
	CHECK(test_cmd(&ap) == 0, "ACCESS_PAGES");
	CHECK(check_refs(buf, len, 1) == 0, "one pages object pins the buffer");

	/* munmap pages 2..5: the IOMMU keeps them */
	uint8_t *hole = buf + 2 * pg;
	CHECK(munmap(hole, 4 * pg) == 0, "munmap");
	expect(access, IOVA, want, len, "after munmap");
	const char dma[] = "written by the device";
	CHECK(access_rw(access, IOVA + 3 * pg + 10, (void *)dma, sizeof(dma),
			MOCK_ACCESS_RW_WRITE) == 0,
	      "ACCESS_RW write into an unmapped page");
	memcpy(want + 3 * pg + 10, dma, sizeof(dma));
	expect(access, IOVA, want, len, "after a write");

	/* MAP_FIXED there: fresh zeroed memory, which the IOMMU never reaches */
	uint8_t *fresh = mmap(hole, 4 * pg, PROT_READ | PROT_WRITE,
			      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	CHECK(fresh == hole, "MAP_FIXED");
	for (i = 0; i < 4 * (size_t)pg; i++)
		if (fresh[i])
			break;
	CHECK(i == 4 * (size_t)pg, "the new memory is not zeroed at byte %zu", i);
	memset(fresh, 0xee, 4 * pg);
	expect(access, IOVA, want, len, "after MAP_FIXED");
	errno = 0;
	CHECK(check_map(hwpt, IOVA + 2 * pg, 4 * pg, fresh) != 0,
	      "the domain maps the program's new memory");
	CHECK(check_map(hwpt, IOVA, 2 * pg, buf) == 0, "the domain still maps pages 0..1");
	CHECK(check_refs(fresh, 4 * pg, 0) == 0, "the new memory is not pinned");

	/* MADV_DONTNEED of pages 6..7: zero pages for the program only */
	CHECK(madvise(buf + 6 * pg, 2 * pg, MADV_DONTNEED) == 0, "madvise");
	for (i = 6 * pg; i < len; i++)
		if (buf[i])
			break;
	CHECK(i == len, "MADV_DONTNEED left byte %zu", i);
	buf[6 * pg] = 0x11;
	expect(access, IOVA, want, len, "after MADV_DONTNEED");

	/* mremap: the data moves for the program, and the IOMMU follows it */
	uint8_t *b2 = anon(4 * pg), *w2 = malloc(4 * pg);
	for (i = 0; i < 4 * (size_t)pg; i++)
		b2[i] = w2[i] = pattern(i + 5);
	map(ioas, b2, 4 * pg, IOVA2);
	uint8_t *dst = mmap(NULL, 4 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint8_t *moved = mremap(b2, 4 * pg, 4 * pg, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
	CHECK(moved == dst, "mremap");
	for (i = 0; i < 4 * (size_t)pg; i++)
		if (moved[i] != w2[i])
			break;
	CHECK(i == 4 * (size_t)pg, "mremap lost the data at byte %zu", i);
	memcpy(moved + 100, "the program", 11);
	memcpy(w2 + 100, "the program", 11);
	expect(access, IOVA2, w2, 4 * pg, "after mremap: shared with the program");
	CHECK(check_map(hwpt, IOVA2, 4 * pg, moved) == 0, "the domain follows mremap");
	CHECK(mmap(b2, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		   -1, 0) == b2,
	      "MAP_FIXED at the old address");
	memset(b2, 0xee, 4 * pg);
	expect(access, IOVA2, w2, 4 * pg, "after MAP_FIXED at the old address");
	/* and a munmap at the new address goes to custody as any other */
	CHECK(munmap(moved, 4 * pg) == 0, "munmap of the moved range");
	expect(access, IOVA2, w2, 4 * pg, "after munmap of the moved range");

	/* unpin: the access's pages, then the whole IOAS */
	struct iommu_test_cmd dp = { .op = IOMMU_TEST_OP_DESTROY_ACCESS_PAGES, .id = access };
	dp.destroy_access_pages.access_pages_id = ap.access_pages.out_access_pages_id;
	CHECK(test_cmd(&dp) == 0, "DESTROY_ACCESS_PAGES");
	expect(access, IOVA, want, len, "after the access unpinned");
	struct iommu_ioas_unmap um = { .size = sizeof(um), .ioas_id = ioas, .length = UINT64_MAX };
	CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &um) == 0 && um.length == len + 4 * pg,
	      "IOAS_UNMAP of everything");
	CHECK(check_refs(buf, 2 * pg, 0) == 0 && check_refs(buf + 6 * pg, 2 * pg, 0) == 0,
	      "pages still pinned after IOAS_UNMAP");
	/* the program's memory is its own as before */
	CHECK(munmap(buf, len) == 0 && munmap(b2, 4 * pg) == 0, "final munmap");
	close(iommufd);
	return checks_result();
}

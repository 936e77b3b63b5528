/*
 * IOMMU_IOAS_MAP_FILE (Linux 6.13) under libuiommufd_preload.so, as a VMM
 * with memfd-backed guest RAM does it (run with LD_PRELOAD set):
 *
 *  - map a memfd into an IOAS with a mock domain attached, then munmap the
 *    program's own view of it and close the memfd: an access still reads
 *    the data and its writes land in the (still shared) file pages;
 *  - IOAS_COPY of the file area, unmap of the source: the copy still reads;
 *  - the kernel's errnos for a bad fd, no access flags, unknown flags.
 *
 * With the argument "6.12" (run with UIOMMUFD_UAPI=6.12) MAP_FILE must be
 * ENOTTY, as on a 6.12 kernel, and IOAS_MAP still work.
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

static int iommufd;
static long pg;

static int test_cmd(struct iommu_test_cmd *c)
{
	return uapi_test_cmd(iommufd, c);
}

static uint32_t ioas_alloc(void)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(iommufd, IOMMU_IOAS_ALLOC, &a) == 0, "IOAS_ALLOC");
	return a.out_ioas_id;
}

static void mock_domain(uint32_t ioas)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = ioas };
	CHECK(test_cmd(&c) == 0, "MOCK_DOMAIN on %u", ioas);
}

static uint32_t create_access(uint32_t ioas)
{
	struct iommu_test_cmd c = { .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas };
	CHECK(test_cmd(&c) == 0, "CREATE_ACCESS");
	return c.create_access.out_access_fd;
}

static int access_rw(uint32_t access, uint64_t iova, void *buf, size_t len, uint32_t flags)
{
	return uapi_access_rw(iommufd, access, iova, buf, len, flags);
}

static int map_file(uint32_t ioas, int fd, uint64_t start, uint64_t length, uint32_t flags,
		    uint64_t *iova)
{
	struct iommu_ioas_map_file m = {
		.size = sizeof(m), .flags = flags, .ioas_id = ioas, .fd = fd,
		.start = start, .length = length,
	};
	int r = ioctl(iommufd, IOMMU_IOAS_MAP_FILE, &m);
	if (r == 0 && iova)
		*iova = m.iova;
	return r;
}

int main(int argc, char **argv)
{
	const int rw = IOMMU_IOAS_MAP_WRITEABLE | IOMMU_IOAS_MAP_READABLE;
	int old = argc > 1 && strcmp(argv[1], "6.12") == 0;
	size_t len, i;
	uint64_t iova = 0;
	uint8_t *view, *back;
	int mfd;

	pg = sysconf(_SC_PAGESIZE);
	len = 4 * pg;
	iommufd = open("/dev/iommu", O_RDWR);
	CHECK(iommufd >= 0, "open /dev/iommu");
	if (iommufd < 0)
		return 1;
	uint32_t ioas = ioas_alloc();
	mock_domain(ioas);

	mfd = memfd_create("guest-ram", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, len) == 0, "memfd");
	view = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	CHECK(view != MAP_FAILED, "mmap memfd");
	for (i = 0; i < len; i++)
		view[i] = (uint8_t)(i * 7 + 3);

	if (old) {
		errno = 0;
		CHECK(map_file(ioas, mfd, 0, len, rw, &iova) == -1 && errno == ENOTTY,
		      "MAP_FILE at 6.12 must be ENOTTY");
		struct iommu_ioas_map m = { .size = sizeof(m), .flags = rw, .ioas_id = ioas,
					    .user_va = (uintptr_t)view, .length = len };
		CHECK(ioctl(iommufd, IOMMU_IOAS_MAP, &m) == 0, "IOAS_MAP at 6.12");
		goto out;
	}

	/* the kernel's errnos, in its order */
	errno = 0;
	CHECK(map_file(ioas, mfd, 0, len, rw | (1 << 3), NULL) == -1 && errno == EOPNOTSUPP,
	      "unknown flag");
	errno = 0;
	CHECK(map_file(ioas, mfd, 0, len, 0, NULL) == -1 && errno == EINVAL, "no access");
	errno = 0;
	CHECK(map_file(ioas, -1, 0, len, rw, NULL) == -1 && errno == EBADF, "fd -1");
	errno = 0;
	CHECK(map_file(ioas, mfd, 0, len + pg, rw, NULL) == -1 && errno == EINVAL,
	      "past the end of the file");

	CHECK(map_file(ioas, mfd, 0, len, rw, &iova) == 0, "MAP_FILE");
	/* the program gives up its view and its fd */
	CHECK(munmap(view, len) == 0, "munmap");
	CHECK(close(mfd) == 0, "close memfd");

	uint32_t access = create_access(ioas);
	back = malloc(len);
	memset(back, 0, len);
	CHECK(access_rw(access, iova, back, len, 0) == 0, "ACCESS_RW read");
	for (i = 0; i < len; i++)
		if (back[i] != (uint8_t)(i * 7 + 3))
			break;
	CHECK(i == len, "data differs at byte %zu", i);
	const char msg[] = "DMA into memfd";
	CHECK(access_rw(access, iova + pg + 1, (void *)msg, sizeof(msg), MOCK_ACCESS_RW_WRITE) == 0,
	      "ACCESS_RW write");

	/* copy the area to a second IOAS, drop the source: the copy still reads */
	uint32_t ioas2 = ioas_alloc();
	mock_domain(ioas2);
	struct iommu_ioas_copy cp = { .size = sizeof(cp), .flags = rw, .dst_ioas_id = ioas2,
				      .src_ioas_id = ioas, .length = len, .src_iova = iova };
	CHECK(ioctl(iommufd, IOMMU_IOAS_COPY, &cp) == 0, "IOAS_COPY");
	struct iommu_ioas_unmap um = { .size = sizeof(um), .ioas_id = ioas, .iova = iova,
				       .length = len };
	CHECK(ioctl(iommufd, IOMMU_IOAS_UNMAP, &um) == 0 && um.length == len, "UNMAP source");
	uint32_t access2 = create_access(ioas2);
	char got[sizeof(msg)] = { 0 };
	CHECK(access_rw(access2, cp.dst_iova + pg + 1, got, sizeof(got), 0) == 0, "read copy");
	CHECK(memcmp(got, msg, sizeof(msg)) == 0, "the copy reads \"%s\"", got);
	free(back);
out:
	close(iommufd);
	return checks_result();
}

/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * One /dev/iommu context shared by two unrelated processes through
 * SCM_RIGHTS, under libuiommufd_preload.so (run with LD_PRELOAD set):
 *
 *   scm_rights owner NAME   opens /dev/iommu, maps its own private memory
 *                           (0xa5) at 0x1000000, creates a selftest access,
 *                           and sends the fd to whoever connects to the
 *                           abstract Unix socket NAME;
 *   scm_rights peer NAME    connects, receives the fd, maps its own private
 *                           memory (0x5b) at 0x1100000 into the same IOAS,
 *                           sees the owner's area (EEXIST over it,
 *                           IOAS_COPY of it to 0x1200000).
 *
 * The owner then reads both processes' memory through the access (and
 * writes into the peer's, which the peer sees); a domain cannot map the
 * peer's private memory (EFAULT), and once the peer has exited its memory
 * reads EFAULT while the owner's copy still reads (see the preload's
 * `remote` module for why). Neither process is the other's parent: the
 * Rust test starts both.
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "uapi_test.h"

#define OWNER_IOVA 0x1000000ull /* inside the mock aperture */
#define PEER_IOVA 0x1100000ull
#define COPY_IOVA 0x1200000ull

static long pg;

static socklen_t address(const char *name, struct sockaddr_un *a)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strncpy(a->sun_path + 1, name, sizeof(a->sun_path) - 2);
	return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
}

static void *buffer(int byte)
{
	void *p = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(p != MAP_FAILED, "mmap");
	memset(p, byte, 2 * pg);
	return p;
}

static int map_at(int fd, uint32_t ioas, void *p, uint64_t iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
			 IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)p,
		.length = 2 * pg,
		.iova = iova,
	};
	return ioctl(fd, IOMMU_IOAS_MAP, &m);
}

/* With SCM_MMSG=1 in the environment, the fd travels by sendmmsg and
 * recvmmsg (one message each) rather than sendmsg and recvmsg. */
static ssize_t send_one(int s, struct msghdr *msg)
{
	if (!getenv("SCM_MMSG"))
		return sendmsg(s, msg, 0);
	struct mmsghdr m = { .msg_hdr = *msg };
	return sendmmsg(s, &m, 1, 0) == 1 ? (ssize_t)m.msg_len : -1;
}

static ssize_t recv_one(int s, struct msghdr *msg)
{
	if (!getenv("SCM_MMSG"))
		return recvmsg(s, msg, 0);
	struct mmsghdr m = { .msg_hdr = *msg };
	if (recvmmsg(s, &m, 1, 0, NULL) != 1)
		return -1;
	*msg = m.msg_hdr;
	return m.msg_len;
}

static int all(const unsigned char *p, size_t n, unsigned char v)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

static void say(int s, char c)
{
	CHECK(write(s, &c, 1) == 1, "write %c", c);
}

static char hear(int s)
{
	char c = 0;
	CHECK(read(s, &c, 1) == 1, "read");
	return c;
}

static int owner(const char *name)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0, "open /dev/iommu");
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	CHECK(ioctl(fd, IOMMU_IOAS_ALLOC, &a) == 0, "IOAS_ALLOC");
	unsigned char *mine = buffer(0xa5);
	CHECK(map_at(fd, a.out_ioas_id, mine, OWNER_IOVA) == 0, "owner IOAS_MAP");
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_CREATE_ACCESS,
				    .id = a.out_ioas_id };
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &c) == 0, "CREATE_ACCESS");
	uint32_t access = c.create_access.out_access_fd;

	struct sockaddr_un sa;
	socklen_t len = address(name, &sa);
	int l = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(l >= 0 && bind(l, (struct sockaddr *)&sa, len) == 0 && listen(l, 1) == 0,
	      "listen on @%s", name);
	printf("LISTENING\n");
	fflush(stdout);
	int s = accept(l, NULL, NULL);
	CHECK(s >= 0, "accept");

	/* the fd and the IOAS id, in one message */
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = &a.out_ioas_id, .iov_len = sizeof(a.out_ioas_id) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	CHECK(send_one(s, &msg) == sizeof(a.out_ioas_id), "sendmsg");

	CHECK(hear(s) == 'm', "the peer mapped");
	unsigned char got[64];
	/* the peer's memory, through the peer's area */
	CHECK(uapi_access_rw(fd, access, PEER_IOVA + pg - 32, got, sizeof(got), 0) == 0,
	      "read the peer's area");
	CHECK(all(got, sizeof(got), 0x5b), "the peer's bytes");
	/* our own memory, through the peer's copy of our area */
	CHECK(uapi_access_rw(fd, access, COPY_IOVA + 8, got, sizeof(got), 0) == 0,
	      "read the peer's copy of our area");
	CHECK(all(got, sizeof(got), 0xa5), "our bytes through the copy");
	/* writes land in the peer's memory */
	memset(got, 0x11, sizeof(got));
	CHECK(uapi_access_rw(fd, access, PEER_IOVA, got, 16, MOCK_ACCESS_RW_WRITE) == 0,
	      "write the peer's area");
	say(s, 'w');
	CHECK(hear(s) == 'k', "the peer saw the write");
	/* a domain cannot map the peer's private memory */
	struct iommu_test_cmd d = { .size = sizeof(d), .op = IOMMU_TEST_OP_MOCK_DOMAIN,
				    .id = a.out_ioas_id };
	errno = 0;
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &d) == -1 && errno == EFAULT,
	      "MOCK_DOMAIN over another process's private memory");
	say(s, 'q');
	/* the peer is gone: its private memory with it */
	CHECK(read(s, got, 1) == 0, "the peer exited");
	for (int i = 0; i < 100; i++) {
		errno = 0;
		if (uapi_access_rw(fd, access, PEER_IOVA, got, 16, 0) == -1)
			break;
		usleep(10000);
	}
	CHECK(errno == EFAULT, "the exited peer's memory reads EFAULT");
	CHECK(uapi_access_rw(fd, access, COPY_IOVA, got, 16, 0) == 0 && all(got, 16, 0xa5),
	      "our own area (the copy) still reads");
	close(s);
	close(l);
	close(fd);
	return 0;
}

static int peer(const char *name)
{
	struct sockaddr_un sa;
	socklen_t len = address(name, &sa);
	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(s >= 0 && connect(s, (struct sockaddr *)&sa, len) == 0, "connect to @%s", name);

	uint32_t ioas = 0;
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { .iov_base = &ioas, .iov_len = sizeof(ioas) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof(cbuf) };
	CHECK(recv_one(s, &msg) == sizeof(ioas), "recvmsg");
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	int fd = -1;
	CHECK(cm && cm->cmsg_type == SCM_RIGHTS, "an fd came");
	if (cm)
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));

	unsigned char *mine = buffer(0x5b);
	CHECK(map_at(fd, ioas, mine, PEER_IOVA) == 0, "peer IOAS_MAP");
	/* the owner's area is there */
	errno = 0;
	CHECK(map_at(fd, ioas, mine, OWNER_IOVA) == -1 && errno == EEXIST,
	      "IOAS_MAP over the owner's area");
	struct iommu_ioas_copy cp = {
		.size = sizeof(cp),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE,
		.dst_ioas_id = ioas,
		.src_ioas_id = ioas,
		.length = 2 * pg,
		.dst_iova = COPY_IOVA,
		.src_iova = OWNER_IOVA,
	};
	CHECK(ioctl(fd, IOMMU_IOAS_COPY, &cp) == 0, "IOAS_COPY of the owner's area");
	struct iommu_ioas_iova_ranges r = { .size = sizeof(r), .ioas_id = ioas };
	CHECK(ioctl(fd, IOMMU_IOAS_IOVA_RANGES, &r) == -1 && errno == EMSGSIZE && r.num_iovas >= 1,
	      "IOAS_IOVA_RANGES");
	/* an access the peer makes: its fd is passed back from the owner and
	 * reads the owner's area (the owner's memory, through its engine) */
	struct iommu_test_cmd c = { .size = sizeof(c), .op = IOMMU_TEST_OP_CREATE_ACCESS, .id = ioas };
	CHECK(ioctl(fd, IOMMU_TEST_CMD, &c) == 0, "CREATE_ACCESS from the peer");
	unsigned char seen[16] = { 0 };
	CHECK(uapi_access_rw(fd, c.create_access.out_access_fd, OWNER_IOVA, seen, sizeof(seen), 0) == 0 &&
		      all(seen, sizeof(seen), 0xa5),
	      "the peer's access reads the owner's area");
	CHECK(close(c.create_access.out_access_fd) == 0, "close the peer's access fd");
	say(s, 'm');
	CHECK(hear(s) == 'w', "the owner wrote");
	CHECK(all(mine, 16, 0x11) && all(mine + 16, 2 * pg - 16, 0x5b),
	      "the owner's write in our memory");
	say(s, 'k');
	CHECK(hear(s) == 'q', "done");
	close(fd);
	return 0;
}

int main(int argc, char **argv)
{
	pg = sysconf(_SC_PAGESIZE);
	if (argc != 3) {
		fprintf(stderr, "usage: %s owner|peer NAME\n", argv[0]);
		return 2;
	}
	if (!strcmp(argv[1], "owner"))
		owner(argv[2]);
	else
		peer(argv[2]);
	return checks_result();
}

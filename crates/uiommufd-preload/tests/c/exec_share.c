/* SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause */
/*
 * A /dev/iommu fd inherited across exec keeps its context, under
 * libuiommufd_preload.so (run with LD_PRELOAD set), however the new image
 * was started:
 *
 *  - fork, then execv in the child (a client of its parent's context);
 *  - vfork, then execve in the child, which makes the fd inheritable
 *    itself (what CPython's subprocess does for pass_fds);
 *  - posix_spawn with the fd inherited;
 *  - a client (a fork child) that forks and execs in turn;
 *  - the owner itself (a keeper process takes over its engine), for its
 *    new image and for a client that holds the fd.
 *
 * Each time the parent closes its own fd before the new image uses it, so
 * only the reference kept for the new image holds the context: the new
 * image allocates an IOAS, maps and unmaps its own memory, and destroys
 * the IOAS the parent made (proof it is the same context).
 *
 * Usage: exec_share            the checks; prints "OK", exits 0
 *        exec_share image FD ID  (internal) the new image's part
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "uapi_test.h"

extern char **environ;

/* The new image: FD is the inherited /dev/iommu fd, ID an IOAS of it. */
static int image(int fd, uint32_t parents)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint32_t ioas = uapi_ioas_alloc(fd);
	CHECK(ioas != 0, "IOAS_ALLOC through the inherited fd");
	void *buf = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED, "mmap");
	memset(buf, 0x5a, 4 * pg);
	uint64_t iova = 0;
	CHECK(uapi_ioas_map(fd, ioas, buf, 4 * pg, &iova,
			    IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE) == 0,
	      "IOAS_MAP of the new image's memory");
	struct iommu_ioas_unmap u = { .size = sizeof(u), .ioas_id = ioas, .iova = iova,
				      .length = 4 * pg };
	CHECK(ioctl(fd, IOMMU_IOAS_UNMAP, &u) == 0 && u.length == (uint64_t)(4 * pg),
	      "IOAS_UNMAP");
	CHECK(uapi_destroy(fd, ioas) == 0, "destroy our IOAS");
	CHECK(uapi_destroy(fd, parents) == 0, "destroy the parent's IOAS %u: the same context", parents);
	errno = 0;
	CHECK(uapi_destroy(fd, parents) == -1 && errno == ENOENT, "destroyed once");
	return failures ? 1 : 0;
}

/* The new image of an owner that mapped 0x3e bytes at IOVA 0x1000000 in
 * IOAS ID with a mock domain: they read back through an access. */
static int image_reads(int fd, uint32_t ioas)
{
	int access = uapi_create_access(fd, ioas, 0);
	CHECK(access >= 0, "CREATE_ACCESS in the new image");
	CHECK(uapi_access_reads(fd, access, 0x1000000 + 100, 64, 0x3e),
	      "ACCESS_RW of the old image's area");
	close(access);
	return failures ? 1 : 0;
}

static char self[4096];

/* The command line of this program's new image: `self mode fd id`. */
struct image_argv {
	char fd[16], id[16];
	char *argv[5];
};

/* Fill `v` for image `mode` ("image" or "image-reads") on `fd` and `id`;
 * its argv. */
static char **image_argv(struct image_argv *v, const char *mode, int fd, uint32_t id)
{
	snprintf(v->fd, sizeof(v->fd), "%d", fd);
	snprintf(v->id, sizeof(v->id), "%u", id);
	v->argv[0] = self;
	v->argv[1] = (char *)mode;
	v->argv[2] = v->fd;
	v->argv[3] = v->id;
	v->argv[4] = NULL;
	return v->argv;
}

/* execv this program as image `mode` on `fd` and `id`; returns only when
 * the exec failed. */
static void exec_self(const char *mode, int fd, uint32_t id)
{
	struct image_argv v;
	execv(self, image_argv(&v, mode, fd, id));
}

/* The new image on the inherited fd, by execv (0 when it could not start). */
static int exec_image(int fd, uint32_t id)
{
	exec_self("image", fd, id);
	return 0;
}

/* fork, the parent closes its fd, then the child execs. */
static void fork_then_exec(void)
{
	CHECK(child_after_parent_closes(exec_image), "fork + execv: the new image's calls");
}

/* vfork; the child clears close-on-exec itself and calls execve. */
static void vfork_then_execve(void)
{
	int fd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	CHECK(fd >= 0, "open");
	uint32_t id = uapi_ioas_alloc(fd);
	struct image_argv v;
	char **argv = image_argv(&v, "image", fd, id);
	pid_t child = vfork();
	if (child == 0) {
		fcntl(fd, F_SETFD, 0);
		execve(self, argv, environ);
		_exit(3);
	}
	/* the child has exec'd: only its reference holds the context now */
	close(fd);
	CHECK(child_ok(child), "vfork + execve: the new image's calls");
}

/* posix_spawn with the fd inherited; the parent closes it at once. */
static void posix_spawn_inherits(void)
{
	uint32_t id;
	int fd = uapi_open_ioas(&id);
	struct image_argv v;
	pid_t child = 0;
	CHECK(posix_spawn(&child, self, NULL, NULL, image_argv(&v, "image", fd, id), environ) == 0,
	      "posix_spawn");
	close(fd);
	CHECK(child_ok(child), "posix_spawn: the new image's calls");
}

/* The new image on the inherited fd, by a client's posix_spawn (the hold
 * is made in the owner); the client closes its fd before the image runs. */
static int spawn_image(int fd, uint32_t id)
{
	struct image_argv v;
	pid_t grandchild = 0;
	int ok = posix_spawn(&grandchild, self, NULL, NULL, image_argv(&v, "image", fd, id),
			     environ) == 0;
	close(fd);
	return ok && child_ok(grandchild);
}

/* A client (fork child) forks again; its child execs after both the
 * owner and the client closed their fds. */
static void client_forks_and_execs(void)
{
	CHECK(child_after_parent_closes(spawn_image), "a client's posix_spawn: the new image's calls");
}

/* The owner itself execs: the new image keeps the context (a keeper
 * process takes over the engine), with the area the old image mapped. */
static void owner_execs(void)
{
	pid_t owner = fork();
	if (owner == 0) {
		int fd = open("/dev/iommu", O_RDWR);
		uint32_t id = fd >= 0 ? uapi_ioas_alloc(fd) : 0;
		exec_self("image", fd, id);
		_exit(3);
	}
	CHECK(child_ok(owner), "the owner's new image's calls");
}

/* The owner maps its memory into a mock domain, then execs: the pinned
 * pages stay in the IOAS for the new image (the keeper's copy of them). */
static void owner_execs_with_pinned_memory(void)
{
	pid_t owner = fork();
	if (owner == 0) {
		long pg = sysconf(_SC_PAGESIZE);
		int fd = open("/dev/iommu", O_RDWR);
		uint32_t ioas = fd >= 0 ? uapi_ioas_alloc(fd) : 0;
		unsigned char *buf = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE,
					  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (buf == MAP_FAILED || uapi_mock_domain(fd, ioas))
			_exit(4);
		memset(buf, 0x3e, 4 * pg);
		uint64_t iova = 0x1000000;
		if (uapi_ioas_map(fd, ioas, buf, 4 * pg, &iova,
				  IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE |
					  IOMMU_IOAS_MAP_WRITEABLE))
			_exit(5);
		exec_self("image-reads", fd, ioas);
		_exit(3);
	}
	CHECK(child_ok(owner), "the owner's new image read the old image's pinned pages");
}

/* An owner's part: exec /bin/true, which does not inherit `fd`. */
static int exec_true(int fd)
{
	(void)fd;
	char *argv[] = { "true", NULL };
	execv("/bin/true", argv);
	return 0;
}

/* The owner execs a program that does not inherit the fd while a client
 * (its fork child) holds one: the client's calls still work. */
static void owner_execs_under_a_client(void)
{
	CHECK(client_after_owner(O_RDWR | O_CLOEXEC, exec_true, uapi_calls_work),
	      "the client's calls after the owner's exec of /bin/true");
}

/* VmPin of this process, in kB (-1 when not found). */
static long vm_pin(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long kb = -1;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "VmPin: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

/* A new image that never claims its reference (run without the preload)
 * does not keep the context after it exits: the pins go. */
static void unclaimed_reference_ends_with_the_image(void)
{
	long pg = sysconf(_SC_PAGESIZE);
	uint32_t ioas;
	int fd = uapi_open_ioas(&ioas);
	CHECK(uapi_mock_domain(fd, ioas) == 0, "MOCK_DOMAIN");
	void *buf = mmap(NULL, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	CHECK(buf != MAP_FAILED, "mmap");
	uint64_t iova = 0;
	CHECK(uapi_ioas_map(fd, ioas, buf, 16 * pg, &iova,
			    IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE) == 0,
	      "IOAS_MAP into a mock domain");
	long pinned = vm_pin();
	CHECK(pinned >= 16 * pg / 1024, "VmPin %ld kB while mapped", pinned);
	int p[2];
	CHECK(pipe(p) == 0, "pipe");
	pid_t child = fork();
	if (child == 0) {
		if (await_go(p))
			_exit(2);
		char *argv[] = { "true", NULL };
		char *envp[] = { "PATH=/usr/bin:/bin", NULL };
		execve("/bin/true", argv, envp);
		_exit(3);
	}
	/* the child's reference alone holds the context from here */
	close(fd);
	CHECK(vm_pin() == pinned, "still pinned while the child holds the fd");
	CHECK(send_go(p) == 0, "go");
	CHECK(child_ok(child), "the child ran /bin/true");
	long now = vm_pin();
	for (int i = 0; i < 200 && now != pinned - 16 * pg / 1024; i++) {
		usleep(10000);
		now = vm_pin();
	}
	CHECK(now == pinned - 16 * pg / 1024, "VmPin %ld kB after the image exited (was %ld)", now,
	      pinned);
	munmap(buf, 16 * pg);
}

/* An exec that fails leaves the process and its fd as they were. */
static void failed_exec(void)
{
	int fd = open("/dev/iommu", O_RDWR);
	CHECK(fd >= 0, "open");
	char *argv[] = { "/nonexistent/program", NULL };
	errno = 0;
	CHECK(execv(argv[0], argv) == -1 && errno == ENOENT, "execv of a missing program");
	uint32_t id = uapi_ioas_alloc(fd);
	CHECK(id != 0 && uapi_destroy(fd, id) == 0, "the fd still works");
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "image"))
		return image(atoi(argv[2]), (uint32_t)strtoul(argv[3], NULL, 10));
	if (argc == 4 && !strcmp(argv[1], "image-reads"))
		return image_reads(atoi(argv[2]), (uint32_t)strtoul(argv[3], NULL, 10));
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	CHECK(n > 0, "readlink");
	self[n > 0 ? n : 0] = 0;
	fork_then_exec();
	vfork_then_execve();
	posix_spawn_inherits();
	client_forks_and_execs();
	failed_exec();
	unclaimed_reference_ends_with_the_image();
	owner_execs();
	owner_execs_with_pinned_memory();
	owner_execs_under_a_client();
	return checks_result();
}

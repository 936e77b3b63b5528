/*
 * The preload must never break the host program: vfork, fork in threaded
 * programs, signal handlers, fd-number races, file-level ioctls.
 *
 *   host_safety <case> [seconds]
 *
 * Cases (each reproduces one way the shim used to break a program; the
 * kernel's behaviour is what the checks expect):
 *   vfork        vfork children that close/close_range/closefrom our fds
 *                before exec or _exit; posix_spawn; the parent's fds work
 *   fork-threads fork while other threads run ioctls, open/close and
 *                dup/close; every child's calls work (no deadlock)
 *   signals      ioctl/dup/close/read/open in signal handlers that
 *                interrupt the same calls (and malloc) in the main thread
 *   dup-race     dup racing close of the same /dev/iommu and fault fds:
 *                EBADF or a working fd, never an orphan; open never EBADF
 *   fio          FIOCLEX/FIONCLEX/FIONBIO/FIOASYNC/FIGETBSZ on the fds
 *   stale        fds closed behind the shim's back (raw close, fclose)
 *                and reused by sockets, pipes, eventfds: not ours any more
 *   private-fds  fork children that reach the parent's context, while a
 *                thread dups every low number the program does not hold:
 *                the shim's and the engine's own fds are never there
 *   stress       all of the above mixed, for [seconds] (default 5)
 *
 * Prints "OK" and exits 0 when every check passed. The test driver kills
 * the program after a deadline: a hang fails the test.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uapi_test.h"

extern char **environ;

static int open_iommu(void)
{
	return open("/dev/iommu", O_RDWR | O_CLOEXEC);
}

/* IOAS_ALLOC on fd: the new id, or -errno. */
static int ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &a))
		return -errno;
	return (int)a.out_ioas_id;
}

static int destroy(int fd, uint32_t id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d) ? -errno : 0;
}

/* A fault queue fd on iommufd fd, or -errno. */
static int fault_alloc(int fd)
{
	struct iommu_fault_alloc f = { .size = sizeof(f) };
	if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &f))
		return -errno;
	return (int)f.out_fault_fd;
}

static int map_unmap(int fd, uint32_t ioas, void *buf, uint64_t iova)
{
	struct iommu_ioas_map m = {
		.size = sizeof(m),
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
		.ioas_id = ioas,
		.user_va = (uintptr_t)buf,
		.length = 4096,
		.iova = iova,
	};
	struct iommu_ioas_unmap u = {
		.size = sizeof(u),
		.ioas_id = ioas,
		.iova = iova,
		.length = 4096,
	};
	if (ioctl(fd, IOMMU_IOAS_MAP, &m))
		return -errno;
	if (ioctl(fd, IOMMU_IOAS_UNMAP, &u))
		return -errno;
	return 0;
}

/* An empty fault queue reads 0 bytes; a bare eventfd (an orphan) would
 * block, or with O_NONBLOCK fail with EAGAIN. */
static int fault_fd_works(int ffd)
{
	char buf[80]; /* a multiple of the 40-byte fault record */
	int fl = fcntl(ffd, F_GETFL);
	if (fl < 0)
		return 0;
	fcntl(ffd, F_SETFL, fl | O_NONBLOCK);
	errno = 0;
	ssize_t n = read(ffd, buf, sizeof(buf));
	return n == 0;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *page(void)
{
	char *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(2);
	}
	memset(p, 0x5a, 4096);
	return p;
}

/* ---- vfork ------------------------------------------------------------ */

static void case_vfork(int rounds)
{
	int fd = open_iommu();
	CHECK(fd >= 0, "open /dev/iommu");
	int ffd = fault_alloc(fd);
	CHECK(ffd >= 0, "fault queue");
	int dupfd = dup(fd);
	CHECK(dupfd >= 0, "dup");
	for (int i = 0; i < rounds; i++) {
		pid_t pid = vfork();
		if (pid == 0) {
			/* what CPython's subprocess and many spawners do */
			switch (i % 4) {
			case 0:
				close(fd);
				close(ffd);
				close(dupfd);
				break;
			case 1:
				syscall(SYS_close_range, 3, ~0U, 0);
				close_range(3, ~0U, 0);
				break;
			case 2:
				closefrom(3);
				break;
			case 3:
				dup2(0, fd);
				dup2(0, ffd);
				break;
			}
			if (i % 2) {
				char *argv[] = { "/bin/true", NULL };
				execve("/bin/true", argv, environ);
			}
			_exit(0);
		}
		CHECK(pid > 0, "vfork");
		int st;
		CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
			      WEXITSTATUS(st) == 0,
		      "child %d", i);
		int id = ioas_alloc(fd);
		CHECK(id > 0, "IOAS_ALLOC after vfork child %d: %d", i, id);
		if (id > 0)
			CHECK(destroy(dupfd, id) == 0, "destroy via dup");
		CHECK(fault_fd_works(ffd), "fault fd after vfork child %d", i);
	}
	/* posix_spawn (CLONE_VM|CLONE_VFORK inside glibc) with file actions */
	for (int i = 0; i < rounds; i++) {
		posix_spawn_file_actions_t fa;
		posix_spawn_file_actions_init(&fa);
		posix_spawn_file_actions_addclose(&fa, fd);
		posix_spawn_file_actions_addclose(&fa, ffd);
		char *argv[] = { "/bin/true", NULL };
		pid_t pid;
		CHECK(posix_spawn(&pid, "/bin/true", &fa, NULL, argv, environ) ==
			      0,
		      "posix_spawn");
		posix_spawn_file_actions_destroy(&fa);
		int st;
		waitpid(pid, &st, 0);
		CHECK(ioas_alloc(fd) > 0, "IOAS_ALLOC after posix_spawn");
		CHECK(fault_fd_works(ffd), "fault fd after posix_spawn");
	}
	close(ffd);
	close(dupfd);
	close(fd);
}

/* ---- fork in a threaded program --------------------------------------- */

static atomic_int stop;

static void *worker_ioctl(void *arg)
{
	(void)arg;
	int fd = open_iommu();
	int ioas = ioas_alloc(fd);
	char *buf = page();
	uint64_t iova = 1ull << 30;
	while (!atomic_load(&stop)) {
		CHECK(map_unmap(fd, ioas, buf, iova) == 0, "map/unmap");
		iova += 4096;
		if (iova > (2ull << 30))
			iova = 1ull << 30;
	}
	close(fd);
	munmap(buf, 4096);
	return NULL;
}

static void *worker_open_close(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		int fd = open_iommu();
		CHECK(fd >= 0, "open");
		int ffd = fault_alloc(fd);
		CHECK(ffd >= 0, "fault alloc");
		int d = dup(fd);
		int fd2 = dup(ffd);
		close(fd);
		CHECK(ioas_alloc(d) > 0, "ioctl on a dup");
		close(d);
		close(ffd);
		if (fd2 >= 0)
			CHECK(fault_fd_works(fd2), "fault fd dup");
		close(fd2);
	}
	return NULL;
}

static void case_fork_threads(int rounds)
{
	pthread_t t[3];
	atomic_store(&stop, 0);
	pthread_create(&t[0], NULL, worker_ioctl, NULL);
	pthread_create(&t[1], NULL, worker_open_close, NULL);
	pthread_create(&t[2], NULL, worker_open_close, NULL);
	int fd = open_iommu();
	int hung = 0;
	for (int i = 0; i < rounds; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			/* a deadlocked child dies of SIGALRM */
			alarm(10);
			int id = ioas_alloc(fd);
			int fd2 = open_iommu();
			int id2 = fd2 >= 0 ? ioas_alloc(fd2) : -1;
			int ffd = fd2 >= 0 ? fault_alloc(fd2) : -1;
			int d = dup(fd);
			close(fd2);
			close(d);
			close(ffd);
			_exit(id > 0 && id2 > 0 && ffd >= 0 ? 0 : 3);
		}
		CHECK(pid > 0, "fork");
		int st;
		waitpid(pid, &st, 0);
		if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
			hung++;
		CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
		      "fork child %d: status %#x", i, st);
	}
	CHECK(hung == 0, "%d of %d children deadlocked", hung, rounds);
	atomic_store(&stop, 1);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	close(fd);
}

/* ---- signal handlers --------------------------------------------------- */

static int sig_fd = -1, sig_ffd = -1;
static atomic_int sig_ok, sig_bad;

static void handler(int sig)
{
	(void)sig;
	int saved = errno;
	/* the async-signal-safe calls on our fds, and an ioctl */
	int d = dup(sig_fd);
	if (d >= 0) {
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		if (ioctl(d, IOMMU_IOAS_ALLOC, &a) == 0) {
			struct iommu_destroy x = { .size = sizeof(x),
						   .id = a.out_ioas_id };
			ioctl(d, IOMMU_DESTROY, &x);
			atomic_fetch_add(&sig_ok, 1);
		} else {
			atomic_fetch_add(&sig_bad, 1);
		}
		close(d);
	} else {
		atomic_fetch_add(&sig_bad, 1);
	}
	char buf[80]; /* a multiple of the 40-byte fault record */
	if (read(sig_ffd, buf, sizeof(buf)) != 0)
		atomic_fetch_add(&sig_bad, 1);
	int o = open("/dev/iommu", O_RDWR);
	if (o >= 0)
		close(o);
	else
		atomic_fetch_add(&sig_bad, 1);
	errno = saved;
}

static void case_signals(double seconds)
{
	sig_fd = open_iommu();
	sig_ffd = fault_alloc(sig_fd);
	CHECK(sig_fd >= 0 && sig_ffd >= 0, "setup");
	fcntl(sig_ffd, F_SETFL, O_NONBLOCK);
	CHECK(alarm_storm(handler, 200) == 0, "SIGALRM every 200 us");
	int ioas = ioas_alloc(sig_fd);
	char *buf = page();
	double end = now() + seconds;
	uint64_t iova = 1ull << 30;
	long loops = 0;
	while (now() < end) {
		/* the same calls the handler makes, interrupted by it */
		int r = map_unmap(sig_fd, ioas, buf, iova);
		CHECK(r == 0, "map/unmap in main: %d", r);
		int d = dup(sig_fd);
		close(d);
		int o = open("/dev/iommu", O_RDWR);
		CHECK(o >= 0, "open in main");
		int f = fault_alloc(o);
		close(o);
		close(f);
		char rb[80];
		CHECK(read(sig_ffd, rb, sizeof(rb)) == 0, "read in main");
		/* and malloc, which the handler's calls must not re-enter */
		void *p = malloc(100 + (loops % 5000));
		free(p);
		loops++;
	}
	alarm_storm_stop();
	signal(SIGALRM, SIG_DFL);
	CHECK(atomic_load(&sig_bad) == 0, "%d handler calls failed",
	      atomic_load(&sig_bad));
	CHECK(atomic_load(&sig_ok) > 0, "the handler never ran");
	fprintf(stderr, "signals: %ld loops, %d handler runs\n", loops,
		atomic_load(&sig_ok));
	close(sig_ffd);
	close(sig_fd);
}

/* ---- dup racing close -------------------------------------------------- */

static atomic_int shared_fd = -1, shared_ffd = -1;

/* Whether fd d (a duplicate made while its source number was being closed
 * and reused by the main thread's opens) is a fully working fd of ours: a
 * /dev/iommu (IOAS_ALLOC works) or a fault queue (reads 0 bytes) — or was
 * closed again (EBADF). An orphan is a bare memfd (a regular file whose
 * ioctls are ENOTTY) or a bare eventfd (EAGAIN). */
static int works_or_gone(int d)
{
	int id = ioas_alloc(d);
	if (id > 0 || id == -EBADF)
		return 1;
	struct stat st;
	if (fstat(d, &st))
		return errno == EBADF;
	if (S_ISREG(st.st_mode))
		return 0; /* a memfd nobody registered */
	return fault_fd_works(d) || errno == EBADF;
}

/* dup `fd`, which the main thread may be closing: the copy works or is an
 * orphan, and only EBADF refuses it. */
static void dup_works_or_gone(int fd, const char *what)
{
	int d = dup(fd);
	if (d >= 0) {
		CHECK(works_or_gone(d), "dup of a closing %s is an orphan", what);
		close(d);
	} else {
		CHECK(errno == EBADF, "dup of %s", what);
	}
}

static void *racer_dup(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		dup_works_or_gone(atomic_load(&shared_fd), "/dev/iommu fd");
		dup_works_or_gone(atomic_load(&shared_ffd), "fault fd");
	}
	return NULL;
}

static void *racer_close_next(void *arg)
{
	(void)arg;
	/* closes whatever number the next open is likely to get */
	while (!atomic_load(&stop)) {
		int fd = atomic_load(&shared_fd);
		if (fd >= 0)
			close(fd + 8);
	}
	return NULL;
}

static void case_dup_race(double seconds)
{
	pthread_t t[2];
	atomic_store(&stop, 0);
	int fd = open_iommu();
	atomic_store(&shared_fd, fd);
	atomic_store(&shared_ffd, fault_alloc(fd));
	pthread_create(&t[0], NULL, racer_dup, NULL);
	pthread_create(&t[1], NULL, racer_dup, NULL);
	double end = now() + seconds / 2;
	long n = 0;
	while (now() < end) {
		int nfd = open_iommu();
		CHECK(nfd >= 0, "open");
		int nffd = nfd >= 0 ? fault_alloc(nfd) : -1;
		int ofd = atomic_exchange(&shared_fd, nfd);
		int offd = atomic_exchange(&shared_ffd, nffd);
		close(ofd);
		close(offd);
		n++;
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	close(atomic_load(&shared_fd));
	close(atomic_load(&shared_ffd));
	atomic_store(&shared_fd, -1);

	/* open racing a close of the number it is about to get: open must
	 * never fail (the fd may be closed by the time it returns, as when
	 * the kernel's close runs right after the fd was installed) */
	atomic_store(&stop, 0);
	pthread_create(&t[0], NULL, racer_close_next, NULL);
	end = now() + seconds / 2;
	while (now() < end) {
		int nfd = open_iommu();
		CHECK(nfd >= 0, "open racing close");
		atomic_store(&shared_fd, nfd - 8);
		close(nfd);
		n++;
	}
	atomic_store(&stop, 1);
	pthread_join(t[0], NULL);
	fprintf(stderr, "dup-race: %ld rounds\n", n);
}

/* ---- fds closed behind the shim's back ---------------------------------- */

/* An fd of ours closed without our close hook (a raw syscall, or fclose of
 * an fdopen'ed stream, which glibc closes internally), its number then
 * reused by a socket, pipe, eventfd...: ioctls on the new fd go to the
 * kernel, not to the engine. */
static void case_stale(void)
{
	for (int how = 0; how < 6; how++) {
		int fd = open_iommu();
		CHECK(fd >= 0, "open");
		if (how == 5) {
			FILE *f = fdopen(fd, "r+");
			CHECK(f != NULL, "fdopen");
			CHECK(fclose(f) == 0, "fclose");
		} else {
			CHECK(syscall(SYS_close, fd) == 0, "raw close");
		}
		int fds[2] = { -1, -1 }, n = -1;
		switch (how) {
		case 0:
		case 5:
			n = socket(AF_UNIX, SOCK_STREAM, 0);
			break;
		case 1:
			CHECK(pipe(fds) == 0, "pipe");
			n = fds[0];
			break;
		case 2:
			n = eventfd(0, 0);
			break;
		case 3:
			CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0, "socketpair");
			n = fds[0];
			break;
		case 4:
			n = epoll_create1(0);
			break;
		}
		CHECK(n == fd, "case %d: the number was reused (%d vs %d)", how, n, fd);
		errno = 0;
		struct iommu_ioas_alloc a = { .size = sizeof(a) };
		/* the kernel refuses it (ENOTTY, EINVAL for epoll on newer
		 * kernels); the engine would have allocated an IOAS */
		CHECK(ioctl(n, IOMMU_IOAS_ALLOC, &a) == -1 && errno != 0,
		      "case %d: an IOMMU ioctl on the reused fd reached the engine", how);
		close(n);
		if (fds[1] >= 0)
			close(fds[1]);
	}
}

/* ---- the shim's own fds --------------------------------------------- */

/* Numbers below this one that the program does not hold: the racer's. */
#define LOW_FDS 32
static atomic_int owned[LOW_FDS];

/* dup()s every low number the program does not hold: each must be EBADF.
 * A success is an fd the shim or its engine made for itself (a /proc file
 * it reads, a pidfd, an eventfd) at the lowest free number, where the
 * kernel makes none: a program thread racing on a number it just closed
 * would get it. */
static void *racer_unowned(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop)) {
		for (int n = 3; n < LOW_FDS; n++) {
			if (atomic_load(&owned[n]))
				continue;
			int d = dup(n);
			if (d < 0) {
				CHECK(errno == EBADF, "dup(%d): errno %d", n, errno);
				continue;
			}
			struct stat st;
			char link[64] = "?";
			char path[40];
			snprintf(path, sizeof(path), "/proc/self/fd/%d", d);
			ssize_t l = readlink(path, link, sizeof(link) - 1);
			if (l > 0)
				link[l] = 0;
			CHECK(0, "dup(%d) of a number the program does not hold worked: "
			      "%s (mode %#o)", n, link,
			      fstat(d, &st) ? 0 : (unsigned)st.st_mode);
			close(d);
		}
	}
	return NULL;
}

/* Work that makes the engine open fds for itself in this process: fork
 * children reaching the parent's context through an inherited fd (the
 * parent's server opens a pidfd and reads the child's /proc files), and
 * their maps of their own memory (the parent reads /proc/PID/maps). */
static void case_private_fds(double seconds)
{
	atomic_store(&stop, 0);
	/* what the program inherited is its own */
	for (int n = 0; n < LOW_FDS; n++)
		atomic_store(&owned[n], fcntl(n, F_GETFD) >= 0);
	int fd = open_iommu();
	CHECK(fd >= 0 && fd < LOW_FDS, "open");
	atomic_store(&owned[fd], 1);
	int ioas = ioas_alloc(fd);
	CHECK(ioas > 0, "IOAS_ALLOC");
	pthread_t t;
	pthread_create(&t, NULL, racer_unowned, NULL);
	double end = now() + seconds;
	long n = 0;
	while (now() < end) {
		pid_t pid = fork();
		if (pid == 0) {
			alarm(10);
			char *buf = page();
			int ok = ioas_alloc(fd) > 0 &&
				 map_unmap(fd, ioas, buf, (1ull << 30) + 4096 * (n % 64)) == 0;
			_exit(ok ? 0 : 3);
		}
		CHECK(pid > 0, "fork");
		if (pid > 0) {
			int st;
			waitpid(pid, &st, 0);
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			      "child status %#x", st);
		}
		n++;
	}
	atomic_store(&stop, 1);
	pthread_join(t, NULL);
	close(fd);
	fprintf(stderr, "private-fds: %ld children\n", n);
}

/* ---- file-level ioctls ------------------------------------------------- */

static void case_fio(void)
{
	const char *paths[] = { "/dev/iommu", "/dev/vfio/vfio" };
	for (int i = 0; i < 2; i++) {
		int fd = open(paths[i], O_RDWR);
		CHECK(fd >= 0, "open %s", paths[i]);
		CHECK(ioctl(fd, FIOCLEX) == 0, "FIOCLEX %s", paths[i]);
		CHECK(fcntl(fd, F_GETFD) & FD_CLOEXEC, "cloexec set");
		CHECK(ioctl(fd, FIONCLEX) == 0, "FIONCLEX");
		CHECK(!(fcntl(fd, F_GETFD) & FD_CLOEXEC), "cloexec clear");
		int on = 1, off = 0;
		CHECK(ioctl(fd, FIONBIO, &on) == 0, "FIONBIO on");
		CHECK(fcntl(fd, F_GETFL) & O_NONBLOCK, "nonblock set");
		CHECK(ioctl(fd, FIONBIO, &off) == 0, "FIONBIO off");
		CHECK(!(fcntl(fd, F_GETFL) & O_NONBLOCK), "nonblock clear");
		errno = 0;
		CHECK(ioctl(fd, FIONBIO, (void *)8) == -1 && errno == EFAULT,
		      "FIONBIO bad pointer");
		errno = 0;
		CHECK(ioctl(fd, FIOASYNC, &on) == -1 && errno == ENOTTY,
		      "FIOASYNC on");
		CHECK(ioctl(fd, FIOASYNC, &off) == 0, "FIOASYNC off");
		int bsz = 0;
		CHECK(ioctl(fd, FIGETBSZ, &bsz) == 0 && bsz == 4096, "FIGETBSZ");
		/* and the driver's own commands still work afterwards */
		if (i == 0)
			CHECK(ioas_alloc(fd) > 0, "IOAS_ALLOC");
		close(fd);
	}
}

/* ---- everything at once ------------------------------------------------ */

static void *spawner(void *arg)
{
	(void)arg;
	int fd = open_iommu();
	int i = 0;
	while (!atomic_load(&stop)) {
		pid_t pid;
		char *argv[] = { "/bin/true", NULL };
		switch (i++ % 3) {
		case 0:
			pid = fork();
			if (pid == 0) {
				alarm(10);
				int ok = ioas_alloc(fd) > 0;
				int f = open_iommu();
				ok = ok && ioas_alloc(f) > 0;
				close(f);
				_exit(ok ? 0 : 3);
			}
			break;
		case 1:
			pid = vfork();
			if (pid == 0) {
				closefrom(3);
				execve("/bin/true", argv, environ);
				_exit(0);
			}
			break;
		default:
			if (posix_spawn(&pid, "/bin/true", NULL, NULL, argv,
					environ))
				pid = -1;
			break;
		}
		if (pid > 0) {
			int st;
			waitpid(pid, &st, 0);
			CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
			      "child status %#x", st);
		}
		CHECK(ioas_alloc(fd) > 0, "parent fd after a child");
	}
	close(fd);
	return NULL;
}

static void case_stress(double seconds)
{
	pthread_t t[5];
	atomic_store(&stop, 0);
	sig_fd = open_iommu();
	sig_ffd = fault_alloc(sig_fd);
	fcntl(sig_ffd, F_SETFL, O_NONBLOCK);
	int fd = open_iommu();
	atomic_store(&shared_fd, fd);
	atomic_store(&shared_ffd, fault_alloc(fd));
	CHECK(alarm_storm(handler, 500) == 0, "SIGALRM every 500 us");
	pthread_create(&t[0], NULL, worker_ioctl, NULL);
	pthread_create(&t[1], NULL, worker_open_close, NULL);
	pthread_create(&t[2], NULL, racer_dup, NULL);
	pthread_create(&t[3], NULL, spawner, NULL);
	pthread_create(&t[4], NULL, spawner, NULL);
	double end = now() + seconds;
	while (now() < end) {
		int nfd = open_iommu();
		int nffd = nfd >= 0 ? fault_alloc(nfd) : -1;
		close(atomic_exchange(&shared_fd, nfd));
		close(atomic_exchange(&shared_ffd, nffd));
		usleep(100);
	}
	atomic_store(&stop, 1);
	for (int i = 0; i < 5; i++)
		pthread_join(t[i], NULL);
	alarm_storm_stop();
	signal(SIGALRM, SIG_DFL);
	CHECK(atomic_load(&sig_bad) == 0, "%d handler calls failed",
	      atomic_load(&sig_bad));
	close(atomic_load(&shared_fd));
	close(atomic_load(&shared_ffd));
	close(sig_ffd);
	close(sig_fd);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s case [seconds]\n", argv[0]);
		return 2;
	}
	const char *c = argv[1];
	double secs = argc > 2 ? atof(argv[2]) : 2;
	setvbuf(stdout, NULL, _IONBF, 0);
	if (!strcmp(c, "vfork"))
		case_vfork(200);
	else if (!strcmp(c, "fork-threads"))
		case_fork_threads(60);
	else if (!strcmp(c, "signals"))
		case_signals(secs);
	else if (!strcmp(c, "dup-race"))
		case_dup_race(secs);
	else if (!strcmp(c, "stale"))
		case_stale();
	else if (!strcmp(c, "private-fds"))
		case_private_fds(secs);
	else if (!strcmp(c, "fio"))
		case_fio();
	else if (!strcmp(c, "stress"))
		case_stress(secs);
	else {
		fprintf(stderr, "unknown case %s\n", c);
		return 2;
	}
	return checks_result();
}

/*
 * A program with SIGSEGV/SIGBUS handlers of its own must behave exactly as
 * without the preload, although the preload owns those two signals for its
 * fault-safe copies. Run both with and without LD_PRELOAD: every check must
 * pass both ways. Under the preload it also checks that bad pointers in
 * ioctls are EFAULT (never a crash) while the program's handlers are set,
 * and races copies against munmap/mprotect from another thread.
 *
 *   program_signals [seconds-for-the-race]
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uapi_test.h"

static long pagesz;
static volatile sig_atomic_t hits;
static void *volatile fault_page;
static sigjmp_buf jb;

/* SA_SIGINFO handler that repairs the fault and returns: the access is
 * retried and succeeds (a GC write barrier does this). */
static void repair(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (sig == SIGSEGV && si->si_addr >= fault_page &&
	    (char *)si->si_addr < (char *)fault_page + pagesz) {
		mprotect(fault_page, pagesz, PROT_READ | PROT_WRITE);
		hits++;
	}
}

/* plain handler that escapes with siglongjmp */
static void escape(int sig)
{
	hits++;
	siglongjmp(jb, sig);
}

static int iommu_fd = -1;

/* Under the preload: an ioctl with a bad pointer is EFAULT, never a crash,
 * whatever handler the program has. */
static void bad_pointer_ioctls(const char *when)
{
	if (iommu_fd < 0)
		return;
	void *none = mmap(NULL, pagesz, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);
	struct iommu_ioas_alloc *ro = mmap(NULL, pagesz, PROT_READ | PROT_WRITE,
					   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ro->size = sizeof(*ro);
	mprotect(ro, pagesz, PROT_READ);
	int before = hits;
	errno = 0;
	CHECK(ioctl(iommu_fd, IOMMU_IOAS_ALLOC, none) == -1 && errno == EFAULT,
	      "PROT_NONE arg (%s)", when);
	errno = 0;
	CHECK(ioctl(iommu_fd, IOMMU_IOAS_ALLOC, (void *)8) == -1 &&
		      errno == EFAULT,
	      "NULL-page arg (%s)", when);
	errno = 0;
	CHECK(ioctl(iommu_fd, IOMMU_IOAS_ALLOC, ro) == -1 && errno == EFAULT,
	      "read-only arg (%s)", when);
	errno = 0;
	CHECK(ioctl(iommu_fd, IOMMU_IOAS_ALLOC, (void *)0xffff800000000000ull) ==
			      -1 &&
		      errno == EFAULT,
	      "kernel address (%s)", when);
	CHECK(hits == before, "the program's handler saw the engine's faults (%s)",
	      when);
	munmap(none, pagesz);
	munmap(ro, pagesz);
}

static void test_repairing_handler(void)
{
	struct sigaction sa = { 0 }, q = { 0 };
	sa.sa_sigaction = repair;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction");
	CHECK(sigaction(SIGSEGV, NULL, &q) == 0 && q.sa_sigaction == repair &&
		      (q.sa_flags & SA_SIGINFO),
	      "sigaction reads back the program's handler");
	fault_page = mmap(NULL, pagesz, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS,
			  -1, 0);
	hits = 0;
	((volatile char *)fault_page)[10] = 42; /* faults, repaired, retried */
	CHECK(hits == 1 && ((char *)fault_page)[10] == 42, "repaired fault");
	bad_pointer_ioctls("SA_SIGINFO handler");
	munmap(fault_page, pagesz);
}

static void test_escaping_handler(void)
{
	void (*old)(int) = signal(SIGSEGV, escape);
	CHECK((void *)old == (void *)repair, "signal returns the previous handler");
	hits = 0;
	if (sigsetjmp(jb, 1) == 0) {
		*(volatile int *)16 = 1;
		CHECK(0, "no fault?");
	}
	CHECK(hits == 1, "escaped once");
	/* again: the handler stays (BSD signal semantics) */
	if (sigsetjmp(jb, 1) == 0)
		*(volatile int *)16 = 1;
	CHECK(hits == 2, "escaped twice");
	bad_pointer_ioctls("plain handler");
}

static void test_sigbus_on_altstack(void)
{
	char path[] = "/tmp/uiommufd-sigbus-XXXXXX";
	int fd = mkstemp(path);
	unlink(path);
	CHECK(ftruncate(fd, 10) == 0, "ftruncate");
	char *m = mmap(NULL, 2 * pagesz, PROT_READ, MAP_SHARED, fd, 0);
	stack_t ss = { .ss_sp = malloc(1 << 16), .ss_size = 1 << 16 };
	CHECK(sigaltstack(&ss, NULL) == 0, "sigaltstack");
	struct sigaction sa = { 0 };
	sa.sa_handler = escape;
	sa.sa_flags = SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	CHECK(sigaction(SIGBUS, &sa, NULL) == 0, "sigaction SIGBUS");
	hits = 0;
	if (sigsetjmp(jb, 1) == 0) {
		volatile char c = m[pagesz]; /* past EOF: SIGBUS */
		(void)c;
		CHECK(0, "no SIGBUS?");
	}
	CHECK(hits == 1, "SIGBUS handler ran");
	bad_pointer_ioctls("SIGBUS handler");
	munmap(m, 2 * pagesz);
	close(fd);
	signal(SIGBUS, SIG_DFL);
	ss.ss_flags = SS_DISABLE;
	sigaltstack(&ss, NULL);
}

static void test_resethand_and_kill(void)
{
	struct sigaction sa = { 0 }, q;
	sa.sa_handler = escape;
	sa.sa_flags = SA_RESETHAND | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGSEGV, &sa, NULL);
	hits = 0;
	if (sigsetjmp(jb, 1) == 0)
		*(volatile int *)16 = 1;
	CHECK(hits == 1, "one-shot handler ran");
	sigaction(SIGSEGV, NULL, &q);
	CHECK(q.sa_handler == SIG_DFL, "SA_RESETHAND reset it to SIG_DFL");
	/* a SIGSEGV sent with kill reaches the program's handler */
	signal(SIGSEGV, escape);
	hits = 0;
	if (sigsetjmp(jb, 1) == 0) {
		kill(getpid(), SIGSEGV);
		CHECK(0, "handler did not run");
	}
	CHECK(hits == 1, "sent SIGSEGV handled");
}

/* Children whose faults take the default action die of that signal, with
 * the default disposition, an ignored one, and a sent signal. */
static void test_default_actions(void)
{
	for (int how = 0; how < 4; how++) {
		pid_t pid = fork();
		if (pid == 0) {
			switch (how) {
			case 0:
				signal(SIGSEGV, SIG_DFL);
				*(volatile int *)16 = 1;
				break;
			case 1:
				signal(SIGSEGV, SIG_IGN);
				*(volatile int *)16 = 1;
				break;
			case 2:
				signal(SIGSEGV, SIG_DFL);
				kill(getpid(), SIGSEGV);
				break;
			case 3: {
				signal(SIGBUS, SIG_DFL);
				raise(SIGBUS);
				break;
			}
			}
			_exit(0);
		}
		int st;
		waitpid(pid, &st, 0);
		int want = how == 3 ? SIGBUS : SIGSEGV;
		CHECK(WIFSIGNALED(st) && WTERMSIG(st) == want,
		      "child %d: status %#x", how, st);
	}
}

/* ---- copies racing munmap/mprotect ------------------------------------ */

static atomic_int stop;
static char *volatile race_area;

static void *unmapper(void *arg)
{
	(void)arg;
	unsigned r = 1;
	while (!atomic_load(&stop)) {
		r = r * 1103515245 + 12345;
		char *a = race_area;
		switch (r % 3) {
		case 0:
			munmap(a, pagesz);
			mmap(a, pagesz, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
			break;
		case 1:
			mprotect(a, pagesz, PROT_NONE);
			mprotect(a, pagesz, PROT_READ | PROT_WRITE);
			break;
		default:
			mprotect(a, pagesz, PROT_READ);
			mprotect(a, pagesz, PROT_READ | PROT_WRITE);
			break;
		}
	}
	return NULL;
}

static void test_race(double seconds)
{
	if (iommu_fd < 0)
		return;
	race_area = mmap(NULL, pagesz, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	ioctl(iommu_fd, IOMMU_IOAS_ALLOC, &a);
	pthread_t t;
	atomic_store(&stop, 0);
	pthread_create(&t, NULL, unmapper, NULL);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	long ok = 0, efault = 0, n = 0;
	do {
		/* the command struct and the out array both in the racing page */
		struct iommu_ioas_iova_ranges *r = (void *)race_area;
		struct iommu_ioas_iova_ranges loc = {
			.size = sizeof(loc),
			.ioas_id = a.out_ioas_id,
			.num_iovas = 4,
			.allowed_iovas = (uintptr_t)(race_area + 64),
		};
		int rc;
		/* odd calls: the struct on the stack, the out array in the
		 * page; even calls: the struct in the page too, with whatever
		 * the page holds (zeroes after a remap: EINVAL) */
		if (n % 2)
			rc = ioctl(iommu_fd, IOMMU_IOAS_IOVA_RANGES, &loc);
		else
			rc = ioctl(iommu_fd, IOMMU_IOAS_IOVA_RANGES, r);
		if (rc == 0)
			ok++;
		else if (errno == EFAULT || errno == EINVAL || errno == ENOENT ||
			 errno == EMSGSIZE || errno == E2BIG)
			efault++;
		else
			CHECK(0, "unexpected errno");
		n++;
		clock_gettime(CLOCK_MONOTONIC, &t1);
	} while ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9 <
		 seconds);
	atomic_store(&stop, 1);
	pthread_join(t, NULL);
	fprintf(stderr, "race: %ld calls, %ld ok, %ld failed cleanly\n", n, ok,
		efault);
	CHECK(ok > 0, "no call ever succeeded");
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 1;
	pagesz = sysconf(_SC_PAGESIZE);
	iommu_fd = open("/dev/iommu", O_RDWR); /* -1 without the preload */
	test_repairing_handler();
	test_escaping_handler();
	test_sigbus_on_altstack();
	test_resethand_and_kill();
	test_default_actions();
	test_race(secs);
	return checks_result();
}

/*
 * Ordinary I/O under libuiommufd_preload.so: the shim hooks read, write,
 * readv, writev (and the fortified __read_chk) for the fds the engine
 * creates; every other fd must behave exactly as without it. Run with
 * LD_PRELOAD set; build once plainly and once with -O2 -D_FORTIFY_SOURCE=2
 * (then read() into a fixed-size buffer becomes __read_chk).
 *
 * Prints "OK" and exits 0 when every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/uio.h>
#include <unistd.h>

#include "uapi_test.h"

static volatile size_t four = 4; /* non-constant: fortify uses __read_chk */

static int poll_in(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

static void check_pipe(void)
{
	int p[2];
	char buf[64];
	struct iovec iov[2];
	char a[2], b[8];
	fd_set rfds;
	struct timeval tv = { 0, 0 };
	struct timespec ts = { 0, 0 };
	struct pollfd pf;

	CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe2");
	CHECK(!poll_in(p[0]), "empty pipe not readable");
	CHECK(write(p[1], "ping", 4) == 4, "write pipe");
	CHECK(poll_in(p[0]), "pipe readable after write");
	pf = (struct pollfd){ .fd = p[0], .events = POLLIN };
	CHECK(ppoll(&pf, 1, &ts, NULL) == 1 && (pf.revents & POLLIN), "ppoll");
	FD_ZERO(&rfds);
	FD_SET(p[0], &rfds);
	CHECK(select(p[0] + 1, &rfds, NULL, NULL, &tv) == 1 && FD_ISSET(p[0], &rfds),
	      "select");
	memset(buf, 0, sizeof(buf));
	CHECK(read(p[0], buf, four) == 4 && !memcmp(buf, "ping", 4), "read pipe");
	CHECK(!poll_in(p[0]), "drained");

	iov[0] = (struct iovec){ .iov_base = "ab", .iov_len = 2 };
	iov[1] = (struct iovec){ .iov_base = "cdef", .iov_len = 4 };
	CHECK(writev(p[1], iov, 2) == 6, "writev");
	iov[0] = (struct iovec){ .iov_base = a, .iov_len = sizeof(a) };
	iov[1] = (struct iovec){ .iov_base = b, .iov_len = sizeof(b) };
	CHECK(readv(p[0], iov, 2) == 6 && !memcmp(a, "ab", 2) && !memcmp(b, "cdef", 4),
	      "readv");

	CHECK(fcntl(p[0], F_SETFL, O_NONBLOCK) == 0, "O_NONBLOCK");
	errno = 0;
	CHECK(read(p[0], buf, sizeof(buf)) == -1 && errno == EAGAIN, "EAGAIN on empty pipe");
	errno = 0;
	CHECK(read(-1, buf, 1) == -1 && errno == EBADF, "read(-1)");
	errno = 0;
	CHECK(write(-1, buf, 1) == -1 && errno == EBADF, "write(-1)");
	CHECK(close(p[1]) == 0, "close write end");
	CHECK(read(p[0], buf, sizeof(buf)) == 0, "EOF");
	CHECK(close(p[0]) == 0, "close read end");
}

static void check_epoll_eventfd(void)
{
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = efd };
	uint64_t v = 3;

	CHECK(ep >= 0 && efd >= 0, "epoll_create1/eventfd");
	CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) == 0, "epoll_ctl");
	CHECK(epoll_wait(ep, &ev, 1, 0) == 0, "eventfd not ready");
	CHECK(write(efd, &v, sizeof(v)) == sizeof(v), "write eventfd");
	CHECK(epoll_wait(ep, &ev, 1, 0) == 1 && ev.data.fd == efd, "eventfd ready");
	v = 0;
	CHECK(read(efd, &v, sizeof(v)) == sizeof(v) && v == 3, "read eventfd (a plain one)");
	errno = 0;
	CHECK(read(efd, &v, sizeof(v)) == -1 && errno == EAGAIN, "eventfd drained");
	CHECK(close(efd) == 0 && close(ep) == 0, "close");
}

static void check_file(void)
{
	char path[] = "/tmp/uiommufd-preload-io-XXXXXX";
	char buf[16] = { 0 };
	int fd = mkstemp(path);
	int fd2;

	CHECK(fd >= 0, "mkstemp");
	unlink(path);
	CHECK(write(fd, "hello world", 11) == 11, "write file");
	CHECK(lseek(fd, 0, SEEK_SET) == 0, "lseek");
	CHECK(read(fd, buf, four) == 4 && !memcmp(buf, "hell", 4), "read file");
	fd2 = dup(fd);
	CHECK(fd2 >= 0, "dup");
	CHECK(read(fd2, buf, sizeof(buf)) == 7 && !memcmp(buf, "o world", 7),
	      "dup shares the offset");
	CHECK(pread(fd, buf, 5, 6) == 5 && !memcmp(buf, "world", 5), "pread");
	CHECK(close(fd2) == 0 && close(fd) == 0, "close");
}

struct pinger {
	int wfd;
};

static void *ping_later(void *arg)
{
	struct pinger *p = arg;
	usleep(10000);
	if (write(p->wfd, "x", 1) != 1)
		abort();
	return NULL;
}

/* a blocking poll woken by a write on another thread */
static void check_blocking_poll(void)
{
	int p[2];
	pthread_t t;
	struct pinger pg;
	struct pollfd pf;
	char c;

	CHECK(pipe(p) == 0, "pipe");
	pg.wfd = p[1];
	CHECK(pthread_create(&t, NULL, ping_later, &pg) == 0, "pthread_create");
	pf = (struct pollfd){ .fd = p[0], .events = POLLIN };
	CHECK(poll(&pf, 1, 5000) == 1 && (pf.revents & POLLIN), "poll woken");
	CHECK(read(p[0], &c, 1) == 1 && c == 'x', "read");
	pthread_join(t, NULL);
	CHECK(close(p[0]) == 0 && close(p[1]) == 0, "close");
}

int main(void)
{
	check_pipe();
	check_epoll_eventfd();
	check_file();
	check_blocking_poll();
	/* stdout itself goes through the hooked write */
	return checks_result();
}

//! The real libc functions, found with `dlsym(RTLD_NEXT, ...)`.
//!
//! Each symbol is looked up on first use and cached in an `AtomicUsize`.
//! Two threads racing on the first lookup both call `dlsym` and store the
//! same address, so no lock is needed; `dlsym` itself does not open files
//! and therefore cannot re-enter our `open` hooks.
//!
//! The variadic libc functions (`open`, `openat`, `ioctl`, `fcntl`) are
//! called through C-variadic function pointers so that the caller side of
//! the SysV ABI (`%al` = number of vector registers) is set up correctly.

use std::ffi::{c_char, c_int, c_uint, c_ulong, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Resolve `name` with `dlsym(RTLD_NEXT, name)` once and cache it in `slot`.
fn resolve(slot: &AtomicUsize, name: &std::ffi::CStr) -> usize {
    let addr = slot.load(Ordering::Acquire);
    if addr != 0 {
        return addr;
    }
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT asks for the next object
    // after this one in the lookup order, which is what an interposer wants.
    let addr = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    if addr != 0 {
        slot.store(addr, Ordering::Release);
    }
    addr
}

macro_rules! real {
    ($($(#[$m:meta])* $name:ident: $ty:ty;)*) => {$(
        $(#[$m])*
        pub(crate) fn $name() -> Option<$ty> {
            static SLOT: AtomicUsize = AtomicUsize::new(0);
            let name = const {
                match std::ffi::CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes()) {
                    Ok(c) => c,
                    Err(_) => panic!("bad symbol name"),
                }
            };
            match resolve(&SLOT, name) {
                0 => None,
                // SAFETY: the address is libc's definition of this symbol, whose
                // C prototype is the function pointer type `$ty`.
                addr => Some(unsafe { std::mem::transmute::<usize, $ty>(addr) }),
            }
        }
    )*};
}

real! {
    /// `int pthread_create(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *)`
    pthread_create: unsafe extern "C" fn(
        *mut libc::pthread_t,
        *const libc::pthread_attr_t,
        extern "C" fn(*mut c_void) -> *mut c_void,
        *mut c_void,
    ) -> c_int;
    /// `void pthread_exit(void *)`
    pthread_exit: unsafe extern "C" fn(*mut c_void) -> !;
    /// `int execve(const char *, char *const[], char *const[])`
    execve: unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
    /// `int execv(const char *, char *const[])`
    execv: unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;
    /// `int execvp(const char *, char *const[])`
    execvp: unsafe extern "C" fn(*const c_char, *const *const c_char) -> c_int;
    /// `int execvpe(const char *, char *const[], char *const[])`
    execvpe: unsafe extern "C" fn(*const c_char, *const *const c_char, *const *const c_char) -> c_int;
    /// `int fexecve(int, char *const[], char *const[])`
    fexecve: unsafe extern "C" fn(c_int, *const *const c_char, *const *const c_char) -> c_int;
    /// `int execveat(int, const char *, char *const[], char *const[], int)`
    execveat: unsafe extern "C" fn(c_int, *const c_char, *const *const c_char, *const *const c_char, c_int) -> c_int;
    /// `int posix_spawn(pid_t *, const char *, const posix_spawn_file_actions_t *, const posix_spawnattr_t *, char *const[], char *const[])`
    posix_spawn: unsafe extern "C" fn(
        *mut libc::pid_t,
        *const c_char,
        *const libc::posix_spawn_file_actions_t,
        *const libc::posix_spawnattr_t,
        *const *mut c_char,
        *const *mut c_char,
    ) -> c_int;
    /// `int posix_spawnp(...)`, as `posix_spawn` with a file name
    posix_spawnp: unsafe extern "C" fn(
        *mut libc::pid_t,
        *const c_char,
        *const libc::posix_spawn_file_actions_t,
        *const libc::posix_spawnattr_t,
        *const *mut c_char,
        *const *mut c_char,
    ) -> c_int;
    /// `int open(const char *, int, ...)`
    open: unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    /// `int open64(const char *, int, ...)`
    open64: unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
    /// `int openat(int, const char *, int, ...)`
    openat: unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    /// `int openat64(int, const char *, int, ...)`
    openat64: unsafe extern "C" fn(c_int, *const c_char, c_int, ...) -> c_int;
    /// `int __open_2(const char *, int)` (fortified `open` without `O_CREAT`)
    __open_2: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    /// `int __open64_2(const char *, int)`
    __open64_2: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    /// `int __openat_2(int, const char *, int)`
    __openat_2: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    /// `int __openat64_2(int, const char *, int)`
    __openat64_2: unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;
    /// `int ioctl(int, unsigned long, ...)`
    ioctl: unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int;
    /// `int close(int)`
    close: unsafe extern "C" fn(c_int) -> c_int;
    /// `int close_range(unsigned, unsigned, int)` (glibc 2.34)
    close_range: unsafe extern "C" fn(c_uint, c_uint, c_int) -> c_int;
    /// `void closefrom(int)` (glibc 2.34)
    closefrom: unsafe extern "C" fn(c_int);
    /// `int dup(int)`
    dup: unsafe extern "C" fn(c_int) -> c_int;
    /// `int dup2(int, int)`
    dup2: unsafe extern "C" fn(c_int, c_int) -> c_int;
    /// `int dup3(int, int, int)`
    dup3: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
    /// `int fcntl(int, int, ...)`
    fcntl: unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    /// `int fcntl64(int, int, ...)` (glibc 2.28)
    fcntl64: unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
    /// `ssize_t read(int, void *, size_t)`
    read: unsafe extern "C" fn(c_int, *mut c_void, libc::size_t) -> libc::ssize_t;
    /// `ssize_t __read_chk(int, void *, size_t, size_t)` (fortified `read`)
    __read_chk: unsafe extern "C" fn(c_int, *mut c_void, libc::size_t, libc::size_t) -> libc::ssize_t;
    /// `ssize_t write(int, const void *, size_t)`
    write: unsafe extern "C" fn(c_int, *const c_void, libc::size_t) -> libc::ssize_t;
    /// `ssize_t readv(int, const struct iovec *, int)`
    readv: unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> libc::ssize_t;
    /// `ssize_t writev(int, const struct iovec *, int)`
    writev: unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> libc::ssize_t;
    /// `ssize_t pread(int, void *, size_t, off_t)`
    pread: unsafe extern "C" fn(c_int, *mut c_void, libc::size_t, libc::off_t) -> libc::ssize_t;
    /// `ssize_t pread64(int, void *, size_t, off64_t)`
    pread64: unsafe extern "C" fn(c_int, *mut c_void, libc::size_t, libc::off64_t) -> libc::ssize_t;
    /// `ssize_t __pread_chk(int, void *, size_t, off_t, size_t)`
    __pread_chk: unsafe extern "C" fn(c_int, *mut c_void, libc::size_t, libc::off_t, libc::size_t) -> libc::ssize_t;
    /// `ssize_t __pread64_chk(int, void *, size_t, off64_t, size_t)`
    __pread64_chk: unsafe extern "C" fn(c_int, *mut c_void, libc::size_t, libc::off64_t, libc::size_t) -> libc::ssize_t;
    /// `ssize_t pwrite(int, const void *, size_t, off_t)`
    pwrite: unsafe extern "C" fn(c_int, *const c_void, libc::size_t, libc::off_t) -> libc::ssize_t;
    /// `ssize_t pwrite64(int, const void *, size_t, off64_t)`
    pwrite64: unsafe extern "C" fn(c_int, *const c_void, libc::size_t, libc::off64_t) -> libc::ssize_t;
    /// `DIR *opendir(const char *)`
    opendir: unsafe extern "C" fn(*const c_char) -> *mut libc::DIR;
    /// `struct dirent *readdir(DIR *)`
    readdir: unsafe extern "C" fn(*mut libc::DIR) -> *mut libc::dirent;
    /// `struct dirent64 *readdir64(DIR *)`
    readdir64: unsafe extern "C" fn(*mut libc::DIR) -> *mut libc::dirent64;
    /// `int closedir(DIR *)`
    closedir: unsafe extern "C" fn(*mut libc::DIR) -> c_int;
    /// `int socket(int, int, int)`
    socket: unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
    /// `int accept(int, struct sockaddr *, socklen_t *)`
    accept: unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> c_int;
    /// `int accept4(int, struct sockaddr *, socklen_t *, int)`
    accept4: unsafe extern "C" fn(c_int, *mut libc::sockaddr, *mut libc::socklen_t, c_int) -> c_int;
    /// `int eventfd(unsigned, int)`
    eventfd: unsafe extern "C" fn(c_uint, c_int) -> c_int;
    /// `int epoll_create(int)`
    epoll_create: unsafe extern "C" fn(c_int) -> c_int;
    /// `int epoll_create1(int)`
    epoll_create1: unsafe extern "C" fn(c_int) -> c_int;
    /// `int timerfd_create(int, int)`
    timerfd_create: unsafe extern "C" fn(c_int, c_int) -> c_int;
    /// `int signalfd(int, const sigset_t *, int)`
    signalfd: unsafe extern "C" fn(c_int, *const libc::sigset_t, c_int) -> c_int;
    /// `int inotify_init1(int)`
    inotify_init1: unsafe extern "C" fn(c_int) -> c_int;
    /// `int memfd_create(const char *, unsigned)`
    memfd_create: unsafe extern "C" fn(*const c_char, c_uint) -> c_int;
    /// `int pipe(int[2])`
    pipe: unsafe extern "C" fn(*mut c_int) -> c_int;
    /// `int pipe2(int[2], int)`
    pipe2: unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    /// `ssize_t sendmsg(int, const struct msghdr *, int)`
    sendmsg: unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> isize;
    /// `ssize_t recvmsg(int, struct msghdr *, int)`
    recvmsg: unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> isize;
    /// `int sendmmsg(int, struct mmsghdr *, unsigned int, int)`
    sendmmsg: unsafe extern "C" fn(c_int, *mut libc::mmsghdr, c_uint, c_int) -> c_int;
    /// `int recvmmsg(int, struct mmsghdr *, unsigned int, int, struct timespec *)`
    recvmmsg: unsafe extern "C" fn(c_int, *mut libc::mmsghdr, c_uint, c_int, *mut libc::timespec) -> c_int;
    /// `int socketpair(int, int, int, int[2])`
    socketpair: unsafe extern "C" fn(c_int, c_int, c_int, *mut c_int) -> c_int;
    /// `int fclose(FILE *)`
    fclose: unsafe extern "C" fn(*mut libc::FILE) -> c_int;
    /// `int sigaction(int, const struct sigaction *, struct sigaction *)`
    sigaction: unsafe extern "C" fn(c_int, *const libc::sigaction, *mut libc::sigaction) -> c_int;
    /// `sighandler_t signal(int, sighandler_t)`
    signal: unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    /// `sighandler_t bsd_signal(int, sighandler_t)`
    bsd_signal: unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    /// `sighandler_t sysv_signal(int, sighandler_t)`
    sysv_signal: unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    /// `sighandler_t __sysv_signal(int, sighandler_t)`
    __sysv_signal: unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    /// `sighandler_t sigset(int, sighandler_t)`
    sigset: unsafe extern "C" fn(c_int, libc::sighandler_t) -> libc::sighandler_t;
    /// `int stat(const char *, struct stat *)` (glibc 2.33)
    stat: unsafe extern "C" fn(*const c_char, *mut libc::stat) -> c_int;
    /// `int stat64(const char *, struct stat64 *)` (glibc 2.33)
    stat64: unsafe extern "C" fn(*const c_char, *mut libc::stat64) -> c_int;
    /// `int lstat(const char *, struct stat *)` (glibc 2.33)
    lstat: unsafe extern "C" fn(*const c_char, *mut libc::stat) -> c_int;
    /// `int lstat64(const char *, struct stat64 *)` (glibc 2.33)
    lstat64: unsafe extern "C" fn(*const c_char, *mut libc::stat64) -> c_int;
    /// `int fstat(int, struct stat *)` (glibc 2.33)
    fstat: unsafe extern "C" fn(c_int, *mut libc::stat) -> c_int;
    /// `int fstat64(int, struct stat64 *)` (glibc 2.33)
    fstat64: unsafe extern "C" fn(c_int, *mut libc::stat64) -> c_int;
    /// `int fstatat(int, const char *, struct stat *, int)` (glibc 2.33)
    fstatat: unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat, c_int) -> c_int;
    /// `int fstatat64(int, const char *, struct stat64 *, int)` (glibc 2.33)
    fstatat64: unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat64, c_int) -> c_int;
    /// `int __xstat(int, const char *, struct stat *)` (before glibc 2.33)
    __xstat: unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat) -> c_int;
    /// `int __xstat64(int, const char *, struct stat64 *)`
    __xstat64: unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat64) -> c_int;
    /// `int __lxstat(int, const char *, struct stat *)`
    __lxstat: unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat) -> c_int;
    /// `int __lxstat64(int, const char *, struct stat64 *)`
    __lxstat64: unsafe extern "C" fn(c_int, *const c_char, *mut libc::stat64) -> c_int;
    /// `int __fxstat(int, int, struct stat *)`
    __fxstat: unsafe extern "C" fn(c_int, c_int, *mut libc::stat) -> c_int;
    /// `int __fxstat64(int, int, struct stat64 *)`
    __fxstat64: unsafe extern "C" fn(c_int, c_int, *mut libc::stat64) -> c_int;
    /// `int __fxstatat(int, int, const char *, struct stat *, int)`
    __fxstatat: unsafe extern "C" fn(c_int, c_int, *const c_char, *mut libc::stat, c_int) -> c_int;
    /// `int __fxstatat64(int, int, const char *, struct stat64 *, int)`
    __fxstatat64: unsafe extern "C" fn(c_int, c_int, *const c_char, *mut libc::stat64, c_int) -> c_int;
    /// `int statx(int, const char *, int, unsigned, struct statx *)` (glibc 2.28)
    statx: unsafe extern "C" fn(c_int, *const c_char, c_int, c_uint, *mut libc::statx) -> c_int;
    /// `ssize_t readlink(const char *, char *, size_t)`
    readlink: unsafe extern "C" fn(*const c_char, *mut c_char, libc::size_t) -> libc::ssize_t;
    /// `ssize_t readlinkat(int, const char *, char *, size_t)`
    readlinkat: unsafe extern "C" fn(c_int, *const c_char, *mut c_char, libc::size_t) -> libc::ssize_t;
    /// `ssize_t __readlink_chk(const char *, char *, size_t, size_t)`
    __readlink_chk: unsafe extern "C" fn(*const c_char, *mut c_char, libc::size_t, libc::size_t) -> libc::ssize_t;
    /// `ssize_t __readlinkat_chk(int, const char *, char *, size_t, size_t)`
    __readlinkat_chk: unsafe extern "C" fn(c_int, *const c_char, *mut c_char, libc::size_t, libc::size_t) -> libc::ssize_t;
    /// `FILE *fopen(const char *, const char *)`
    fopen: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE;
    /// `FILE *fopen64(const char *, const char *)`
    fopen64: unsafe extern "C" fn(*const c_char, *const c_char) -> *mut libc::FILE;
    /// `char *realpath(const char *, char *)`
    realpath: unsafe extern "C" fn(*const c_char, *mut c_char) -> *mut c_char;
    /// `char *__realpath_chk(const char *, char *, size_t)`
    __realpath_chk: unsafe extern "C" fn(*const c_char, *mut c_char, libc::size_t) -> *mut c_char;
    /// `int access(const char *, int)`
    access: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    /// `int faccessat(int, const char *, int, int)`
    faccessat: unsafe extern "C" fn(c_int, *const c_char, c_int, c_int) -> c_int;
    /// `int euidaccess(const char *, int)`
    euidaccess: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    /// `int eaccess(const char *, int)`
    eaccess: unsafe extern "C" fn(*const c_char, c_int) -> c_int;
    /// `ssize_t preadv(int, const struct iovec *, int, off_t)`
    preadv: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off_t) -> libc::ssize_t;
    /// `ssize_t preadv64(int, const struct iovec *, int, off64_t)`
    preadv64: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off64_t) -> libc::ssize_t;
    /// `ssize_t preadv2(int, const struct iovec *, int, off_t, int)`
    preadv2: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off_t, c_int) -> libc::ssize_t;
    /// `ssize_t preadv64v2(int, const struct iovec *, int, off64_t, int)`
    preadv64v2: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off64_t, c_int) -> libc::ssize_t;
    /// `ssize_t pwritev(int, const struct iovec *, int, off_t)`
    pwritev: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off_t) -> libc::ssize_t;
    /// `ssize_t pwritev64(int, const struct iovec *, int, off64_t)`
    pwritev64: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off64_t) -> libc::ssize_t;
    /// `ssize_t pwritev2(int, const struct iovec *, int, off_t, int)`
    pwritev2: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off_t, c_int) -> libc::ssize_t;
    /// `ssize_t pwritev64v2(int, const struct iovec *, int, off64_t, int)`
    pwritev64v2: unsafe extern "C" fn(c_int, *const libc::iovec, c_int, libc::off64_t, c_int) -> libc::ssize_t;
    /// `void *mmap(void *, size_t, int, int, int, off_t)`
    mmap: unsafe extern "C" fn(*mut c_void, libc::size_t, c_int, c_int, c_int, libc::off_t) -> *mut c_void;
    /// `void *mmap64(void *, size_t, int, int, int, off64_t)`
    mmap64: unsafe extern "C" fn(*mut c_void, libc::size_t, c_int, c_int, c_int, libc::off64_t) -> *mut c_void;
    /// `int munmap(void *, size_t)`
    munmap: unsafe extern "C" fn(*mut c_void, libc::size_t) -> c_int;
    /// `int madvise(void *, size_t, int)`
    madvise: unsafe extern "C" fn(*mut c_void, libc::size_t, c_int) -> c_int;
    /// `void *mremap(void *, size_t, size_t, int, ...)`
    mremap: unsafe extern "C" fn(*mut c_void, libc::size_t, libc::size_t, c_int, ...) -> *mut c_void;
}

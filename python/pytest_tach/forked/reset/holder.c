/* Where the golden pages live: in the holder, a copy of this process made at the
 * snapshot (clone3, sharing every page copy-on-write) that sleeps until this process
 * exits. A restore copies a page from the holder (/proc/<holder>/mem) into this
 * process's golden cache the first time it needs it, and from the cache after that.
 *
 * Why (issue 19): a private golden copy of everything present at the snapshot made
 * each reused process as large again as its zygote's heap, and the run's memory
 * workers x heap (917 MB at 2 workers on a 300 MB heap, against 306 MB for a
 * fork-per-worker peer). The holder shares its pages with this process and with the
 * zygote; it costs page tables, and the pages this process writes keep their old
 * version alive (as a zygote's child does anyway). The cache holds what tests write:
 * pytest's ~1,400 pages a test, the same ones every time, so after the first restores
 * a restore reads the holder rarely (a read pins the holder's pages, several times
 * the cost of a memcpy: why the cache).
 *
 * The holder runs nothing but raw system calls on the dead part of the stack: its
 * memory is the golden copy, and a libc call could write errno or a lock into it. */
#include "reset.h"

#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef PR_SET_PTRACER
#define PR_SET_PTRACER 0x59616d61
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

struct tach_clone_args {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
};

/* A system call that writes no errno: the holder must not write to its memory. */
static long raw(long n, long a, long b, long c, long d)
{
    long ret;
#if defined(__x86_64__)
    register long r10 __asm__("r10") = d;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    __asm__ volatile("svc #0" : "=r"(x0) : "r"(x8), "0"(x0), "r"(x1), "r"(x2), "r"(x3) : "memory");
    ret = x0;
#else
#error "pytest_tach._reset supports x86_64 and aarch64"
#endif
    return ret;
}

/* The holder: let the owner read its memory (Yama's ptrace_scope 1 allows only
 * ancestors otherwise, and the holder is the owner's sibling), say so, drop every fd
 * but the owner's pidfd (the owner's sockets must close when the owner does), sleep
 * until the owner exits. Dies with the zygote too (its parent). */
static void __attribute__((noreturn)) hold(pid_t owner, pid_t zygote, int owner_pidfd, int ready)
{
    uint64_t all = ~(uint64_t)0;
    raw(SYS_rt_sigprocmask, SIG_BLOCK, (long)&all, 0, 8);
    raw(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0);
    if (raw(SYS_getppid, 0, 0, 0, 0) != zygote)
        raw(SYS_exit_group, 0, 0, 0, 0);
    raw(SYS_prctl, PR_SET_PTRACER, owner, 0, 0);
    char c = 'r';
    raw(SYS_write, ready, (long)&c, 1, 0);
    raw(SYS_close_range, 0, owner_pidfd - 1, 0, 0);
    raw(SYS_close_range, owner_pidfd + 1, ~0U, 0, 0);
    struct pollfd p = {.fd = owner_pidfd, .events = POLLIN};
    for (;;)
        if (raw(SYS_ppoll, (long)&p, 1, 0, 0) > 0)
            raw(SYS_exit_group, 0, 0, 0, 0);
}

/* Make the holder (this process's copy, now) and open its memory. Called by the
 * snapshot right before its setjmp: what this frame writes after the clone is below
 * the snapshot's frame and dead once it returns. The fds it opens for the handshake
 * are closed again; the one it keeps is recorded as the snapshot's (M->fds). */
int make_holder(void)
{
    int pipefd[2];
    int me = (int)syscall(SYS_pidfd_open, getpid(), 0);
    if (me < 0)
        return -1;
    if (pipe2(pipefd, O_CLOEXEC) < 0) {
        int e = errno;
        close(me);
        errno = e;
        return -1;
    }
    pid_t owner = getpid(), zygote = getppid();
    int pidfd = -1;
    struct tach_clone_args a = {.flags = CLONE_PARENT | CLONE_PIDFD, .pidfd = (uint64_t)(uintptr_t)&pidfd};
    long pid = syscall(SYS_clone3, &a, sizeof a);
    if (pid == 0)
        hold(owner, zygote, me, pipefd[1]);
    int e = errno;
    close(pipefd[1]);
    close(me);
    if (pid < 0) {
        close(pipefd[0]);
        errno = e;
        return -1;
    }
    char c;
    ssize_t got = read(pipefd[0], &c, 1);
    close(pipefd[0]);
    M->holder = (pid_t)pid;
    M->holder_pidfd = pidfd;
    if (got != 1) {
        errno = ECHILD;
        return -1;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/mem", pid);
    M->holder_mem = open(path, O_RDONLY | O_CLOEXEC);
    if (M->holder_mem < 0)
        return -1;
    int err = list_fds(M->fds, MAX_FDS, &M->nfds);
    if (err < 0) {
        errno = -err;
        return -1;
    }
    return 0;
}

/* Whether the holder still runs: a restore that found it gone midway would have to
 * give up with memory half put back, so plan() asks first. */
int holder_alive(void)
{
    struct pollfd p = {.fd = M->holder_pidfd, .events = POLLIN};
    return poll(&p, 1, 0) == 0;
}

void drop_holder(void)
{
    if (M->holder_pidfd >= 0) { /* by pidfd: its parent, the zygote, may have reaped it */
        syscall(SYS_pidfd_send_signal, M->holder_pidfd, SIGKILL, NULL, 0);
        close(M->holder_pidfd);
    }
    M->holder_pidfd = -1;
    M->holder = 0;
    if (M->holder_mem >= 0)
        close(M->holder_mem);
    M->holder_mem = -1;
}

/* Make sure the golden cache holds the pages of [addr, addr + len), whose golden
 * bytes start at off in the cache: read the missing runs from the holder. */
void fetch(size_t off, uintptr_t addr, size_t len)
{
    size_t first = off / 4096, last = (off + len) / 4096;
    size_t p = first;
    while (p < last) {
        if (M->filled[p / 8] & (1u << (p % 8))) {
            p++;
            continue;
        }
        size_t q = p;
        while (q < last && !(M->filled[q / 8] & (1u << (q % 8))))
            q++;
        size_t done = 0, want = (q - p) * 4096;
        uintptr_t from = addr + (p - first) * 4096;
        while (done < want) {
            ssize_t n = pread(M->holder_mem, M->golden + p * 4096 + done, want - done, (off_t)(from + done));
            if (n <= 0)
                fatal("reading the snapshot's pages from its holder process", n < 0 ? errno : EIO);
            done += (size_t)n;
        }
        for (size_t k = p; k < q; k++)
            M->filled[k / 8] |= (unsigned char)(1u << (k % 8));
        M->fetched += (long)(q - p);
        p = q;
    }
}

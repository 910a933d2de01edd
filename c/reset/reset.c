/*
 * tach._reset: put a process back into the state it had at a snapshot, in place.
 *
 * Forking a fresh process per test costs a fork (page tables of the whole heap), an exit
 * (tearing them down) and a copy-on-write fault for every page the test writes. This
 * module lets one process run test after test and, after each, restore the memory and
 * the kernel state that matter to the moment of the snapshot: what fork gave it, without
 * forking again.
 *
 *   snapshot()  records the process (mappings, fds, signal state, cwd, ...), copies
 *               the pages present in its private writable mappings into a *golden*
 *               copy, and write-protects them through a userfaultfd in asynchronous
 *               write-protect mode: the kernel then marks pages as written without
 *               ever stopping the process. Returns 0.
 *   restore()   checks that the process can be restored (one thread, no child process
 *               left running, every snapshot fd and file mapping still in place); if not
 *               it raises ResetUnavailable and changes nothing. Otherwise it switches to
 *               a private stack, unmaps what was mapped since, recreates anonymous
 *               mappings that were unmapped or changed, closes new fds, restores signal
 *               dispositions and mask, the alternate signal stack, timers, cwd, umask and
 *               the program break, asks the kernel (PAGEMAP_SCAN) which pages were
 *               written, copies those back from the golden copy, write-protects
 *               everything again when due (see protect_again(): pages a restore puts
 *               back mostly stay unprotected) and jumps back into snapshot(), which
 *               returns the number of restores so far. It does not return.
 *
 * The memory this code itself uses while restoring (its tables, buffers, stack and the
 * golden copy) is never tracked and never restored. Tables and stack are small shared
 * anonymous mappings. The golden copy is private, MADV_DONTFORK (a test that forks
 * does not copy it) and populated in one call before the copy: as shared memory its
 * page-by-page shmem faults made a snapshot of a 24 MB pytest process take ~18 ms,
 * now ~11 ms (100 MB: ~100 ms, now ~65 ms). It cannot merge with a neighbour: those
 * that share its flags are registered with the userfaultfd first, and DONTFORK sets
 * it apart from the rest. Transparent huge pages halved the time again but stalled
 * some snapshots for 300 ms in compaction; not used.
 *
 * Why a copy in this process rather than a forked child holding a copy-on-write image
 * (the first version): process_vm_readv pins each of the child's pages before copying
 * it, and on 2000 trivial tests that made restoring ~1,500 pages per test cost more
 * than the test. A memcpy from the process's own copy is several times cheaper; the
 * price is memory: the copy is as large as the process's private memory at the
 * snapshot (~30 MB for a pytest process).
 *
 * Kernel needs: userfaultfd with UFFD_FEATURE_WP_ASYNC and WP_UNPOPULATED (6.7+), the
 * PAGEMAP_SCAN ioctl. userfaultfd is opened with UFFD_USER_MODE_ONLY
 * when unprivileged (write-protect faults in async mode are resolved by the kernel, so
 * user-mode-only is all this needs).
 *
 * Not restored (documented in docs/engine.md): file offsets of fds open at the snapshot,
 * contents of shared mappings, rlimits, scheduling attributes, POSIX timers, the process
 * name. These are shared with the parent under fork too, or are rarely touched by tests.
 */
#undef _FORTIFY_SOURCE /* its longjmp check refuses to jump between stacks */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

/* Newer than the system headers this may be built against. */
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

struct tach_page_region {
    uint64_t start, end, categories;
};
struct tach_pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define TACH_PAGEMAP_SCAN _IOWR('f', 16, struct tach_pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)

#define MAX_REGIONS 8192
#define MAX_PRESENT 65536
#define MAX_FDS 1024
#define MAPS_BUF (4 << 20)
#define VEC_LEN 16384
#define REPROTECT_EVERY 64 /* restores; see protect_again() */
#define ALT_STACK (512 << 10)
#define NSIG_MAX 65

enum { R_TRACKED = 1, R_ANON = 2, R_STACK = 4, R_SHARED = 8, R_SPECIAL = 16, R_OWN = 32 };

struct region {
    uintptr_t start, end;
    uint64_t offset, inode;
    unsigned dev_major, dev_minor;
    int prot;
    int flags;
};

struct kernel_sigaction {
    void *handler;
    unsigned long flags;
    void *restorer;
    uint64_t mask;
};

struct fdinfo {
    int fd;
    dev_t dev;
    ino_t ino;
};

struct span {
    uintptr_t start, end;
    size_t off; /* of present spans: where their bytes are in the golden copy */
};

/* Everything restore() needs, in a shared mapping the restore never touches itself. */
struct meta {
    jmp_buf jb;
    long restores;
    char *golden;
    size_t golden_len;
    int uffd, pagemap, cwd, fddir, mapsfd;
    int use_query;
    uintptr_t stack_end;
    mode_t umask;
    uintptr_t brk;
    pid_t pgid, sid;
    sigset_t mask;
    stack_t altstack;
    struct itimerval timers[3];
    struct kernel_sigaction acts[NSIG_MAX];
    int act_ok[NSIG_MAX];
    int nregions;
    struct region regions[MAX_REGIONS];
    int nfds;
    struct fdinfo fds[MAX_FDS];
    uintptr_t lo, hi; /* span of the tracked regions */

    /* the plan the check makes and the restore carries out */
    int ncur;
    struct region cur[MAX_REGIONS];
    int nunmap;
    struct span unmap[MAX_REGIONS];
    int nrecreate;
    int recreate[MAX_REGIONS]; /* indexes into regions */
    /* pages present at the snapshot: only these are write-protected (protecting the
     * unpopulated rest, e.g. an allocator's reserved gigabyte, would build page tables
     * for all of it and make every scan walk them), and only these can be dropped */
    int npresent;
    struct span present[MAX_PRESENT];

    struct tach_page_region vec[VEC_LEN];
    /* protect_again(): restores since everything written was last protected, whether
     * the next one is the first since, and how many pages that first one put back */
    long since_protect, base_pages;
    int after_protect;
    char maps[MAPS_BUF];
    char dirbuf[1 << 16];
    struct fdinfo now[MAX_FDS]; /* fds open when plan() ran: restore closes the new ones */
    int nnow;

    /* counters for stats() */
    long pages, ranges, recreated, unmapped, closed, protects;
};

static struct meta *M;
static char *alt; /* ALT_STACK bytes, shared mapping: restore's stack */

/* ------------------------------------------------------------------ helpers */

static void fatal(const char *what, int err)
{
    /* Mid-restore there is no going back: the process is neither the old nor the new
     * state. Say what failed where a human will look, and die with a code the engine
     * recognises (the runner's test has already been reported). */
    char buf[256];
    int n = snprintf(buf, sizeof buf, "tach reset: %s failed: %s\n", what, strerror(err));
    if (n > 0) {
        ssize_t w = write(2, buf, (size_t)n);
        (void)w;
    }
    syscall(SYS_exit_group, 121);
    __builtin_unreachable();
}

static uint64_t parse_hex(const char **p)
{
    uint64_t v = 0;
    for (;;) {
        char c = **p;
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return v;
        v = v * 16 + (uint64_t)d;
        (*p)++;
    }
}

static uint64_t parse_dec(const char **p)
{
    uint64_t v = 0;
    while (**p >= '0' && **p <= '9') {
        v = v * 10 + (uint64_t)(**p - '0');
        (*p)++;
    }
    return v;
}

static int own_mapping(uintptr_t start, uintptr_t end)
{
    uintptr_t m = (uintptr_t)M, a = (uintptr_t)alt, g = (uintptr_t)M->golden;
    return (start < m + sizeof *M && end > m) || (start < a + ALT_STACK && end > a) ||
           (g && start < g + M->golden_len && end > g);
}

/* Read /proc/self/maps into out; no allocation, no libc stdio. Returns count or -errno. */
static int read_maps(struct region *out, int max)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t len = 0;
    for (;;) {
        if (len >= MAPS_BUF - 1) {
            close(fd);
            return -E2BIG;
        }
        ssize_t n = read(fd, M->maps + len, MAPS_BUF - 1 - len);
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    M->maps[len] = 0;
    int count = 0;
    const char *p = M->maps;
    while (*p) {
        if (count >= max)
            return -E2BIG;
        struct region *r = &out[count];
        memset(r, 0, sizeof *r);
        r->start = (uintptr_t)parse_hex(&p);
        p++; /* - */
        r->end = (uintptr_t)parse_hex(&p);
        p++; /* space */
        if (p[0] == 'r')
            r->prot |= PROT_READ;
        if (p[1] == 'w')
            r->prot |= PROT_WRITE;
        if (p[2] == 'x')
            r->prot |= PROT_EXEC;
        if (p[3] == 's')
            r->flags |= R_SHARED;
        p += 5;
        r->offset = parse_hex(&p);
        p++;
        r->dev_major = (unsigned)parse_hex(&p);
        p++;
        r->dev_minor = (unsigned)parse_hex(&p);
        p++;
        r->inode = parse_dec(&p);
        while (*p == ' ')
            p++;
        const char *name = p;
        while (*p && *p != '\n')
            p++;
        size_t nlen = (size_t)(p - name);
        if (*p)
            p++;
        if (nlen == 10 && memcmp(name, "[vsyscall]", 10) == 0)
            continue; /* not a VMA (PROCMAP_QUERY does not list it) and never changes */
        if (nlen == 7 && memcmp(name, "[stack]", 7) == 0)
            r->flags |= R_STACK;
        else if (nlen > 0 && name[0] == '[' && !(nlen == 6 && memcmp(name, "[heap]", 6) == 0))
            r->flags |= R_SPECIAL; /* [vdso], [vvar], [vsyscall], ... */
        if (r->inode == 0 && !(r->flags & (R_SPECIAL | R_SHARED)))
            r->flags |= R_ANON;
        if (own_mapping(r->start, r->end))
            r->flags |= R_OWN;
        else if ((r->prot & PROT_WRITE) && !(r->flags & (R_SHARED | R_SPECIAL)))
            r->flags |= R_TRACKED;
        count++;
    }
    return count;
}

struct tach_procmap_query {
    uint64_t size, query_flags, query_addr, vma_start, vma_end, vma_flags, vma_page_size, vma_offset, inode;
    uint32_t dev_major, dev_minor, vma_name_size, build_id_size;
    uint64_t vma_name_addr, build_id_addr;
};
#define TACH_PROCMAP_QUERY _IOWR('f', 17, struct tach_procmap_query)
#define PROCMAP_QUERY_COVERING_OR_NEXT_VMA 0x10

/* The layout without names, one ioctl per mapping (Linux 6.11+): ~10x cheaper than
 * formatting /proc/self/maps, whose path names dominate. Returns -ENOTTY on kernels
 * without it. Of the flags only R_SHARED is set: at restores that is all the
 * comparison with the snapshot's layout needs (same_identity). */
static int query_maps(struct region *out, int max)
{
    int count = 0;
    uintptr_t addr = 0;
    for (;;) {
        struct tach_procmap_query q = {.size = sizeof q, .query_flags = PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
                                       .query_addr = addr};
        if (ioctl(M->mapsfd, TACH_PROCMAP_QUERY, &q) < 0) {
            if (errno == ENOENT)
                return count;
            return -errno;
        }
        if (count >= max)
            return -E2BIG;
        struct region *r = &out[count++];
        memset(r, 0, sizeof *r);
        r->start = (uintptr_t)q.vma_start;
        r->end = (uintptr_t)q.vma_end;
        r->prot = (int)(q.vma_flags & 7); /* READABLE 1, WRITABLE 2, EXECUTABLE 4 = PROT_* */
        if (q.vma_flags & 8)
            r->flags |= R_SHARED;
        r->offset = q.vma_offset;
        r->inode = q.inode;
        r->dev_major = q.dev_major;
        r->dev_minor = q.dev_minor;
        addr = r->end;
    }
}

static int same_identity(const struct region *a, const struct region *b)
{
    return a->prot == b->prot && (a->flags & R_SHARED) == (b->flags & R_SHARED) &&
           a->inode == b->inode && a->dev_major == b->dev_major && a->dev_minor == b->dev_minor &&
           (a->inode == 0 || a->offset == b->offset);
}

static int list_fds(struct fdinfo *out, int max, int *count)
{
    if (lseek(M->fddir, 0, SEEK_SET) < 0)
        return -errno;
    int n = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, M->fddir, M->dirbuf, sizeof M->dirbuf);
        if (got < 0)
            return -errno;
        if (got == 0)
            break;
        for (long off = 0; off < got;) {
            struct dirent64 *d = (struct dirent64 *)(M->dirbuf + off);
            off += d->d_reclen;
            if (d->d_name[0] < '0' || d->d_name[0] > '9')
                continue;
            const char *p = d->d_name;
            int fd = (int)parse_dec(&p);
            if (fd == M->fddir)
                continue;
            if (n >= max)
                return -EMFILE;
            struct stat st;
            out[n].fd = fd;
            if (fstat(fd, &st) == 0) {
                out[n].dev = st.st_dev;
                out[n].ino = st.st_ino;
            } else {
                out[n].dev = 0;
                out[n].ino = 0;
            }
            n++;
        }
    }
    *count = n;
    return 0;
}

static int snap_fd(int fd)
{
    for (int i = 0; i < M->nfds; i++)
        if (M->fds[i].fd == fd)
            return i;
    return -1;
}

/* ------------------------------------------------------------------ snapshot */

static PyObject *ResetUnavailable;


static PyObject *unavailable(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    PyErr_SetString(ResetUnavailable, buf);
    return NULL;
}

static int count_threads(void)
{
    int dir = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0)
        return -1;
    int n = 0;
    for (;;) {
        long got = syscall(SYS_getdents64, dir, M->dirbuf, sizeof M->dirbuf);
        if (got <= 0)
            break;
        for (long off = 0; off < got;) {
            struct dirent64 *d = (struct dirent64 *)(M->dirbuf + off);
            off += d->d_reclen;
            if (d->d_name[0] >= '0' && d->d_name[0] <= '9')
                n++;
        }
    }
    close(dir);
    return n;
}

static int open_uffd(void)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (fd < 0 && errno == EPERM)
        fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (fd < 0)
        return -1;
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

static int track(uintptr_t start, uintptr_t end)
{
    struct uffdio_register r = {.range = {.start = start, .len = end - start}, .mode = UFFDIO_REGISTER_MODE_WP};
    return ioctl(M->uffd, UFFDIO_REGISTER, &r);
}

static int protect(uintptr_t start, uintptr_t end)
{
    struct uffdio_writeprotect wp = {.range = {.start = start, .len = end - start}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    return ioctl(M->uffd, UFFDIO_WRITEPROTECT, &wp);
}

static int scan(uint64_t flags, uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret, uintptr_t start,
                uintptr_t end, long *nvec, uintptr_t *walk_end);

static int add_present(uintptr_t start, uintptr_t end)
{
    if (M->npresent > 0 && M->present[M->npresent - 1].end == start) {
        M->present[M->npresent - 1].end = end;
        return 0;
    }
    if (M->npresent >= MAX_PRESENT) {
        errno = E2BIG;
        return -1;
    }
    M->present[M->npresent++] = (struct span){start, end, 0};
    return 0;
}

/* Record the pages present now in the tracked mappings (all of a file-backed one: its
 * unpopulated pages are the file's, not zeros), make room for their golden copy and
 * write-protect them. copy_golden() fills the copy, at the last moment. */
static int find_present(const struct region *regions, int n)
{
    M->npresent = 0;
    for (int i = 0; i < n; i++) {
        const struct region *r = &regions[i];
        if (!(r->flags & R_TRACKED))
            continue;
        if (r->inode != 0) {
            if (add_present(r->start, r->end) < 0)
                return -1;
            continue;
        }
        for (uintptr_t at = r->start; at < r->end;) {
            long nvec;
            uintptr_t walk_end;
            if (scan(0, 0, PAGE_IS_WPALLOWED, PAGE_IS_PRESENT | PAGE_IS_SWAPPED, PAGE_IS_WPALLOWED, at, r->end, &nvec,
                     &walk_end) < 0)
                return -1;
            for (long v = 0; v < nvec; v++)
                if (add_present(M->vec[v].start, M->vec[v].end) < 0)
                    return -1;
            if (walk_end <= at) {
                errno = EIO;
                return -1;
            }
            at = walk_end;
        }
    }
    size_t total = 0;
    for (int k = 0; k < M->npresent; k++) {
        M->present[k].off = total;
        total += M->present[k].end - M->present[k].start;
    }
    size_t len = total ? total : 4096;
    void *g = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (g == MAP_FAILED)
        return -1;
    M->golden = g;
    M->golden_len = len;
    if (madvise(g, len, MADV_DONTFORK) < 0)
        return -1;
    (void)madvise(g, len, MADV_POPULATE_WRITE); /* a speed-up only: the copy faults pages in otherwise */
    for (int k = 0; k < M->npresent; k++)
        if (protect(M->present[k].start, M->present[k].end) < 0)
            return -1;
    return 0;
}

static void free_meta(void)
{
    if (M != NULL) {
        if (M->uffd >= 0)
            close(M->uffd);
        if (M->pagemap >= 0)
            close(M->pagemap);
        if (M->cwd >= 0)
            close(M->cwd);
        if (M->fddir >= 0)
            close(M->fddir);
        if (M->mapsfd >= 0)
            close(M->mapsfd);
        if (M->golden != NULL)
            munmap(M->golden, M->golden_len);
        munmap(M, sizeof *M);
        M = NULL;
    }
    if (alt != NULL) {
        munmap(alt, ALT_STACK);
        alt = NULL;
    }
}

static void __attribute__((noinline)) copy_golden(void)
{
    for (int k = 0; k < M->npresent; k++)
        memcpy(M->golden + M->present[k].off, (void *)M->present[k].start, M->present[k].end - M->present[k].start);
}

static int __attribute__((noinline)) do_snapshot(void)
{
    /* restore() puts memory back to the golden copy and the registers to where this
     * setjmp left them, so this returns a second time, with 1. Between the copy and the
     * setjmp nothing writes to memory at or above this frame (copy_golden's frame is
     * below it and dead), so the two agree: the state is one moment. */
    copy_golden();
    if (_setjmp(M->jb))
        return 1;
    return 0;
}

static PyObject *reset_snapshot(PyObject *self, PyObject *args)
{
    if (M != NULL)
        return unavailable("this process already has a snapshot");
    M = mmap(NULL, sizeof *M, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (M == MAP_FAILED) {
        M = NULL;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    alt = mmap(NULL, ALT_STACK, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (alt == MAP_FAILED) {
        alt = NULL;
        free_meta();
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    M->uffd = M->pagemap = M->cwd = M->fddir = M->mapsfd = -1;
    M->golden = NULL;
    M->after_protect = 1; /* everything present is protected below */

    int threads = count_threads();
    if (threads != 1) {
        free_meta();
        return unavailable("the process has %d threads (a snapshot needs exactly one)", threads);
    }
    M->uffd = open_uffd();
    if (M->uffd < 0) {
        int e = errno;
        free_meta();
        return unavailable("userfaultfd with asynchronous write-protect: %s", strerror(e));
    }
    M->pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    M->cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
    M->fddir = open("/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (M->pagemap < 0 || M->cwd < 0 || M->fddir < 0) {
        int e = errno;
        free_meta();
        return unavailable("opening /proc/self/pagemap, /proc/self/fd or the cwd: %s", strerror(e));
    }

    /* Register every private writable mapping, protect the pages present in it and
     * make room for their golden copy; then read the layout that results (registration
     * can merge neighbours, the golden copy is a mapping of its own) as the one to
     * compare against at restores. */
    int n = read_maps(M->cur, MAX_REGIONS);
    if (n < 0) {
        free_meta();
        return unavailable("reading /proc/self/maps: %s", strerror(-n));
    }
    for (int i = 0; i < n; i++) {
        struct region *r = &M->cur[i];
        if (!(r->flags & R_TRACKED))
            continue;
        if (track(r->start, r->end) < 0) {
            int e = errno;
            free_meta();
            return unavailable("registering %lx-%lx: %s", (unsigned long)r->start, (unsigned long)r->end,
                               strerror(e));
        }
    }
    if (find_present(M->cur, n) < 0) {
        int e = errno;
        free_meta();
        return unavailable("copying and write-protecting the populated pages: %s", strerror(e));
    }
    n = read_maps(M->regions, MAX_REGIONS);
    if (n < 0) {
        free_meta();
        return unavailable("reading /proc/self/maps: %s", strerror(-n));
    }
    M->nregions = n;
    M->mapsfd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    M->use_query = M->mapsfd >= 0 && query_maps(M->cur, MAX_REGIONS) == n;
    M->lo = UINTPTR_MAX;
    M->hi = 0;
    for (int i = 0; i < n; i++) {
        if (M->regions[i].flags & R_STACK)
            M->stack_end = M->regions[i].end;
        if (!(M->regions[i].flags & R_TRACKED))
            continue;
        if (M->regions[i].start < M->lo)
            M->lo = M->regions[i].start;
        if (M->regions[i].end > M->hi)
            M->hi = M->regions[i].end;
    }

    int err = list_fds(M->fds, MAX_FDS, &M->nfds);
    if (err < 0) {
        free_meta();
        return unavailable("listing /proc/self/fd: %s", strerror(-err));
    }
    for (int s = 1; s < NSIG_MAX; s++)
        M->act_ok[s] = syscall(SYS_rt_sigaction, s, NULL, &M->acts[s], 8) == 0;
    sigprocmask(SIG_SETMASK, NULL, &M->mask);
    sigaltstack(NULL, &M->altstack);
    for (int t = 0; t < 3; t++)
        getitimer(t, &M->timers[t]);
    M->umask = umask(0);
    umask(M->umask);
    M->brk = (uintptr_t)syscall(SYS_brk, 0);
    M->pgid = getpgid(0);
    M->sid = getsid(0);

    return PyLong_FromLong(do_snapshot() ? M->restores : 0);
}

/* ------------------------------------------------------------------ restore */

/* Decide whether and how the process can be restored; fills M's plan. Returns NULL when
 * it can, else a reason (a static string). Changes nothing. */
static const char *plan(void)
{
    static char why[256];
    int threads = count_threads();
    if (threads != 1) {
        snprintf(why, sizeof why, "the test left %d threads running", threads - 1);
        return why;
    }
    /* Children: reap finished ones; a running one (other than golden) is state that
     * cannot be undone. */
    for (;;) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG | __WALL);
        if (p <= 0)
            break;
        if (p == M->golden) {
            M->golden = NULL;
            return "the golden copy of the process died";
        }
    }
    {
        char path[64], buf[256];
        snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            ssize_t n = read(fd, buf, sizeof buf - 1);
            close(fd);
            if (n > 0) {
                buf[n] = 0;
                const char *p = buf;
                while (*p) {
                    while (*p == ' ')
                        p++;
                    if (!*p || *p == '\n')
                        break;
                    pid_t c = (pid_t)parse_dec(&p);
                    snprintf(why, sizeof why, "the test left child process %d running", (int)c);
                    return why;
                }
            }
        }
    }
    if (getpgid(0) != M->pgid || getsid(0) != M->sid)
        return "the test changed the process group or session";

    struct fdinfo *now = M->now;
    if (list_fds(now, MAX_FDS, &M->nnow) < 0)
        return "listing /proc/self/fd failed";
    for (int i = 0; i < M->nfds; i++) {
        int found = 0;
        for (int j = 0; j < M->nnow; j++)
            if (now[j].fd == M->fds[i].fd) {
                found = now[j].dev == M->fds[i].dev && now[j].ino == M->fds[i].ino;
                break;
            }
        if (!found) {
            snprintf(why, sizeof why, "fd %d open at the snapshot was closed or replaced", M->fds[i].fd);
            return why;
        }
    }

    int n = M->use_query ? query_maps(M->cur, MAX_REGIONS) : read_maps(M->cur, MAX_REGIONS);
    if (n < 0)
        return "reading /proc/self/maps failed";
    M->ncur = n;
    M->nunmap = 0;
    M->nrecreate = 0;

    /* Every snapshot mapping: intact (the same VMAs), or recreatable (anonymous,
     * private), or the process cannot be restored. */
    int j = 0;
    for (int i = 0; i < M->nregions; i++) {
        struct region *s = &M->regions[i];
        while (j < n && M->cur[j].end <= s->start)
            j++;
        int intact = 0;
        if (j < n) {
            struct region *c = &M->cur[j];
            if (s->flags & R_STACK)
                intact = c->start <= s->start && c->end == s->end;
            else
                intact = c->start == s->start && c->end == s->end && same_identity(c, s);
        }
        if (intact)
            continue;
        if ((s->flags & R_ANON) && !(s->flags & R_STACK)) {
            if (M->nrecreate >= MAX_REGIONS)
                return "too many changed mappings";
            M->recreate[M->nrecreate++] = i;
            continue;
        }
        snprintf(why, sizeof why, "mapping %lx-%lx (%s) was unmapped or changed", (unsigned long)s->start,
                 (unsigned long)s->end, s->inode ? "a file" : "special");
        return why;
    }
    /* Every current range no snapshot mapping covers goes. The stack's growth stays. */
    int i = 0;
    for (j = 0; j < n; j++) {
        struct region *c = &M->cur[j];
        if (c->end == M->stack_end)
            continue; /* the stack, grown or not */
        uintptr_t at = c->start;
        while (at < c->end) {
            while (i < M->nregions && M->regions[i].end <= at)
                i++;
            uintptr_t next = c->end;
            if (i < M->nregions && M->regions[i].start <= at) {
                at = M->regions[i].end < c->end ? M->regions[i].end : c->end;
                continue;
            }
            if (i < M->nregions && M->regions[i].start < next)
                next = M->regions[i].start;
            if (M->nunmap >= MAX_REGIONS)
                return "too many new mappings";
            if (M->nunmap > 0 && M->unmap[M->nunmap - 1].end == at)
                M->unmap[M->nunmap - 1].end = next;
            else
                M->unmap[M->nunmap++] = (struct span){at, next};
            at = next;
        }
    }
    return NULL;
}

static int scan(uint64_t flags, uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret, uintptr_t start,
                uintptr_t end, long *nvec, uintptr_t *walk_end)
{
    struct tach_pm_scan_arg a = {
        .size = sizeof a,
        .flags = flags,
        .start = start,
        .end = end,
        .vec = (uint64_t)(uintptr_t)M->vec,
        .vec_len = VEC_LEN,
        .category_inverted = inverted,
        .category_mask = mask,
        .category_anyof_mask = anyof,
        .return_mask = ret,
    };
    long r = ioctl(M->pagemap, TACH_PAGEMAP_SCAN, &a);
    if (r < 0)
        return -1;
    *nvec = r;
    *walk_end = (uintptr_t)a.walk_end;
    return 0;
}

/* Put [start, end) back as it was at the snapshot: the golden bytes of the pages that
 * were present, zeros elsewhere (anonymous pages that did not exist; file-backed
 * mappings are golden in full). With only_present, leave the rest alone. */
static void put_back(uintptr_t start, uintptr_t end, int only_present)
{
    /* binary search: the first present span ending after start */
    int lo = 0, hi = M->npresent;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (M->present[mid].end <= start)
            lo = mid + 1;
        else
            hi = mid;
    }
    uintptr_t at = start;
    for (int q = lo; q < M->npresent && at < end; q++) {
        struct span *p = &M->present[q];
        if (p->start >= end)
            break;
        if (p->start > at) {
            if (!only_present) {
                memset((void *)at, 0, p->start - at);
                M->pages += (long)((p->start - at) / 4096);
            }
            at = p->start;
        }
        uintptr_t stop = p->end < end ? p->end : end;
        memcpy((void *)at, M->golden + p->off + (at - p->start), stop - at);
        M->pages += (long)((stop - at) / 4096);
        at = stop;
    }
    if (at < end && !only_present) {
        memset((void *)at, 0, end - at);
        M->pages += (long)((end - at) / 4096);
    }
    M->ranges++;
}

static void restore_pages(uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret, int only_present)
{
    uintptr_t at = M->lo;
    while (at < M->hi) {
        long nvec;
        uintptr_t walk_end;
        if (scan(0, inverted, mask, anyof, ret, at, M->hi, &nvec, &walk_end) < 0)
            fatal("PAGEMAP_SCAN", errno);
        for (long v = 0; v < nvec; v++)
            put_back((uintptr_t)M->vec[v].start, (uintptr_t)M->vec[v].end, only_present);
        if (walk_end <= at)
            fatal("PAGEMAP_SCAN made no progress", EIO);
        at = walk_end;
    }
}

/* The page filters. "Written" means "not write-protected": a page written since it was
 * protected, but also a page that was never populated (only pages present at the
 * snapshot are protected: see struct meta). So: */

/* written pages that hold something: present or swapped, not the shared zero page */
#define WRITTEN_INV PAGE_IS_PFNZERO
#define WRITTEN_MASK (PAGE_IS_WPALLOWED | PAGE_IS_WRITTEN | PAGE_IS_PFNZERO)
#define WRITTEN_ANY (PAGE_IS_PRESENT | PAGE_IS_SWAPPED)
/* pages with nothing (no page, no marker) or the zero page; those that were present at
 * the snapshot were dropped (MADV_DONTNEED and the like) and must come back */
#define DROPPED_INV (PAGE_IS_PRESENT | PAGE_IS_SWAPPED)
#define DROPPED_MASK (PAGE_IS_WPALLOWED | PAGE_IS_SWAPPED)
#define DROPPED_ANY (PAGE_IS_PRESENT | PAGE_IS_PFNZERO)

/* Write-protect again every page the restore wrote: one scan. */
static void protect_all(void)
{
    for (uintptr_t at = M->lo; at < M->hi;) {
        long nvec;
        uintptr_t walk_end;
        if (scan(PM_SCAN_WP_MATCHING, WRITTEN_INV, WRITTEN_MASK, WRITTEN_ANY, PAGE_IS_WRITTEN, at, M->hi, &nvec,
                 &walk_end) < 0)
            fatal("PAGEMAP_SCAN (protect)", errno);
        if (walk_end <= at)
            fatal("PAGEMAP_SCAN made no progress", EIO);
        at = walk_end;
    }
    M->protects++;
}

/* Whether to write-protect what this restore put back. Mostly not: pytest's protocol
 * writes nearly the same ~1,400 pages in every test, and protecting them again only
 * buys a fault per page per test (~1 us each, plus the TLB flushes). A page left
 * unprotected is reported written by every scan, so it is put back every time:
 * correctness does not depend on this choice, only cost does. The set of unprotected
 * pages grows with what later tests write; everything is protected again every
 * REPROTECT_EVERY restores, or as soon as a restore puts back half as many pages again
 * as the first one after the last protection (a test that wrote 100 MB must not make
 * every later restore copy 100 MB). Measured on 2000 trivial tests (2 workers): the
 * restores put back ~4% more pages than when protecting every time, and the run spends
 * half the system time (2.6 s against 5.2 s). */
static void protect_again(long pages)
{
    if (M->after_protect) {
        M->base_pages = pages;
        M->after_protect = 0;
        M->since_protect = 0;
        return;
    }
    if (++M->since_protect < REPROTECT_EVERY && pages <= M->base_pages + M->base_pages / 2 + 256)
        return;
    protect_all();
    M->after_protect = 1;
}

static void __attribute__((noreturn)) restore_on_alt_stack(void)
{
    /* Kernel state first: these calls may write errno (in tracked memory); the page
     * scan below sees those writes and puts the page back. */
    if ((uintptr_t)syscall(SYS_brk, 0) != M->brk)
        syscall(SYS_brk, M->brk);
    for (int k = 0; k < M->nunmap; k++) {
        if (munmap((void *)M->unmap[k].start, M->unmap[k].end - M->unmap[k].start) < 0)
            fatal("munmap", errno);
        M->unmapped++;
    }
    for (int k = 0; k < M->nrecreate; k++) {
        struct region *s = &M->regions[M->recreate[k]];
        void *p = mmap((void *)s->start, s->end - s->start, s->prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED)
            fatal("mmap", errno);
        M->recreated++;
    }
    for (int k = 0; k < M->nnow; k++) /* listed by plan(); nothing opened an fd since */
        if (snap_fd(M->now[k].fd) < 0) {
            close(M->now[k].fd);
            M->closed++;
        }
    for (int s = 1; s < NSIG_MAX; s++)
        if (M->act_ok[s] && s != SIGKILL && s != SIGSTOP)
            syscall(SYS_rt_sigaction, s, &M->acts[s], NULL, 8);
    sigaltstack(&M->altstack, NULL);
    for (int t = 0; t < 3; t++)
        setitimer(t, &M->timers[t], NULL);
    umask(M->umask);
    if (fchdir(M->cwd) < 0)
        fatal("fchdir", errno);

    /* Recreated mappings: the whole content, then tracked again. */
    for (int k = 0; k < M->nrecreate; k++) {
        struct region *s = &M->regions[M->recreate[k]];
        if ((s->prot & PROT_READ) && (s->prot & PROT_WRITE))
            put_back(s->start, s->end, 1); /* the rest is zero already */
        if ((s->flags & R_TRACKED) && (track(s->start, s->end) < 0 || protect(s->start, s->end) < 0))
            fatal("write-protecting a recreated mapping", errno);
    }
    /* Pages written since the snapshot (or left unprotected by the last restore) ... */
    long before = M->pages;
    restore_pages(WRITTEN_INV, WRITTEN_MASK, WRITTEN_ANY, PAGE_IS_WRITTEN, 0);
    /* ... and pages dropped since (MADV_DONTNEED leaves neither a page nor a marker). */
    restore_pages(DROPPED_INV, DROPPED_MASK, DROPPED_ANY, PAGE_IS_WPALLOWED, 1);
    protect_again(M->pages - before);
    sigprocmask(SIG_SETMASK, &M->mask, NULL);
    M->restores++;
    _longjmp(M->jb, 1);
}

static void __attribute__((noreturn)) switch_stack(void *top, void (*fn)(void))
{
#if defined(__x86_64__)
    __asm__ volatile("mov %0, %%rsp\n\tcall *%1\n\tud2" ::"r"(top), "r"(fn) : "memory");
#elif defined(__aarch64__)
    __asm__ volatile("mov sp, %0\n\tblr %1\n\tbrk #0" ::"r"(top), "r"(fn) : "memory");
#else
#error "tach._reset supports x86_64 and aarch64"
#endif
    __builtin_unreachable();
}

static PyObject *reset_restore(PyObject *self, PyObject *args)
{
    if (M == NULL)
        return unavailable("no snapshot was taken in this process");
    const char *why = plan();
    if (why != NULL)
        return unavailable("%s", why);
    /* Signals that arrive mid-restore would run handlers on half-restored memory. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    switch_stack(alt + ALT_STACK - 64, restore_on_alt_stack);
}

static PyObject *reset_stats(PyObject *self, PyObject *args)
{
    if (M == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:l,s:l,s:l,s:i,s:i}", "restores", M->restores, "pages", M->pages,
                         "ranges", M->ranges, "recreated", M->recreated, "unmapped", M->unmapped, "closed",
                         M->closed, "protects", M->protects, "present_ranges", M->npresent, "mappings",
                         M->nregions);
}

/* Whether snapshot/restore works here, without touching this process's mappings: a
 * userfaultfd in async write-protect mode over one page, and PAGEMAP_SCAN over it. */
static PyObject *reset_probe(PyObject *self, PyObject *args)
{
    const char *what = NULL;
    int err = 0, uffd = -1, pm = -1;
    void *page = MAP_FAILED;
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0 && errno == EPERM)
        uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
    if (uffd < 0) {
        what = "userfaultfd";
        err = errno;
        goto out;
    }
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED};
    if (ioctl(uffd, UFFDIO_API, &api) < 0) {
        what = "userfaultfd asynchronous write-protect (Linux 6.7+)";
        err = errno;
        goto out;
    }
    page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        what = "mmap";
        err = errno;
        goto out;
    }
    struct uffdio_register r = {.range = {.start = (uintptr_t)page, .len = 4096}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &r) < 0) {
        what = "UFFDIO_REGISTER";
        err = errno;
        goto out;
    }
    pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    struct tach_page_region vec[1];
    struct tach_pm_scan_arg a = {.size = sizeof a, .start = (uintptr_t)page, .end = (uintptr_t)page + 4096,
                                 .vec = (uint64_t)(uintptr_t)vec, .vec_len = 1, .category_mask = PAGE_IS_WPALLOWED,
                                 .return_mask = PAGE_IS_WPALLOWED};
    if (pm < 0 || ioctl(pm, TACH_PAGEMAP_SCAN, &a) < 0) {
        what = "the PAGEMAP_SCAN ioctl (Linux 6.7+)";
        err = errno;
        goto out;
    }
out:
    if (page != MAP_FAILED)
        munmap(page, 4096);
    if (pm >= 0)
        close(pm);
    if (uffd >= 0)
        close(uffd);
    if (what == NULL)
        Py_RETURN_NONE;
    return PyUnicode_FromFormat("%s: %s", what, strerror(err));
}

static PyObject *reset_release(PyObject *self, PyObject *args)
{
    free_meta();
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"snapshot", reset_snapshot, METH_NOARGS,
     "snapshot() -> int\n\nRecord this process; 0 now, the restore count when restore() brings it back here."},
    {"restore", reset_restore, METH_NOARGS,
     "restore() -> NoReturn\n\nGo back to the snapshot; raises ResetUnavailable (changing nothing) if it cannot."},
    {"probe", reset_probe, METH_NOARGS,
     "probe() -> str | None\n\nNone if snapshot/restore works on this kernel, else why not."},
    {"stats", reset_stats, METH_NOARGS, "stats() -> dict | None\n\nCounters of this process's restores."},
    {"release", reset_release, METH_NOARGS, "release() -> None\n\nDrop the snapshot (kills the golden copy)."},
    {NULL, NULL, 0, NULL},
};

static int exec_module(PyObject *m)
{
    ResetUnavailable = PyErr_NewExceptionWithDoc("tach._reset.ResetUnavailable",
                                                 "The process cannot be snapshot or restored; fork instead.",
                                                 PyExc_RuntimeError, NULL);
    if (ResetUnavailable == NULL)
        return -1;
    if (PyModule_AddObject(m, "ResetUnavailable", Py_NewRef(ResetUnavailable)) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "tach._reset", "Restore a process to a snapshot in place (see reset.c).", 0, methods,
    slots,
};

PyMODINIT_FUNC PyInit__reset(void) { return PyModuleDef_Init(&module); }

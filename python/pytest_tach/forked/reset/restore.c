/* Whether the process can be restored (plan: changes nothing), and restoring it
 * (restore_now: on its own stack, never returns: it jumps back into the snapshot). */
#include "reset.h"

/* ------------------------------------------------------------------ restore */

static int add_recreate(uintptr_t start, uintptr_t end, int i)
{
    if (start >= end)
        return 0;
    if (M->nrecreate > 0 && M->recreate[M->nrecreate - 1].end == start && M->recreate[M->nrecreate - 1].off == (size_t)i) {
        M->recreate[M->nrecreate - 1].end = end;
        return 0;
    }
    if (M->nrecreate >= MAX_REGIONS)
        return -1;
    M->recreate[M->nrecreate++] = (struct span){start, end, (size_t)i};
    return 0;
}

/* Whether all of [start, end) is registered with the userfaultfd (a mapping the test
 * made in a hole of the snapshot's is not, and nothing would see it written). */
static int registered(uintptr_t start, uintptr_t end)
{
    long nvec;
    uintptr_t walk_end;
    if (scan(0, PAGE_IS_WPALLOWED, PAGE_IS_WPALLOWED, 0, PAGE_IS_WPALLOWED, start, end, &nvec, &walk_end) < 0)
        return 0;
    return nvec == 0 && walk_end >= end;
}

/* Snapshot mapping i (anonymous) is not one VMA as it was: find the parts of it that
 * must be made again: holes, and what covers it now that is not the same kind of
 * mapping or not tracked. The rest keeps its pages, which the page scan puts back. A
 * test that frees one of a hundred adjacent 1 MB blocks (malloc unmaps it; the kernel
 * had merged them into one VMA) costs a megabyte, not a hundred. j: the first current
 * mapping ending after the region starts. */
static int recreate_parts(int i, int j, int n)
{
    struct region *s = &M->regions[i];
    uintptr_t at = s->start;
    for (int k = j; k < n && M->cur[k].start < s->end; k++) {
        struct region *c = &M->cur[k];
        uintptr_t lo = c->start > s->start ? c->start : s->start;
        uintptr_t hi = c->end < s->end ? c->end : s->end;
        if (add_recreate(at, lo, i) < 0)
            return -1;
        int same = c->inode == 0 && !(c->flags & R_SHARED) && c->prot == s->prot;
        if (!same || ((s->flags & R_TRACKED) && !registered(lo, hi)))
            if (add_recreate(lo, hi, i) < 0)
                return -1;
        at = hi;
    }
    return add_recreate(at, s->end, i);
}

/* Decide whether and how the process can be restored; fills M's plan. Returns NULL when
 * it can, else a reason (a static string). Changes nothing. */
const char *plan(void)
{
    static char why[256];
    if (!holder_alive())
        return "the process holding the snapshot's pages is gone";
    int threads = count_threads();
    if (threads != 1) {
        snprintf(why, sizeof why, "the test left %d threads running", threads - 1);
        return why;
    }
    /* Children: reap finished ones; a running one is state that cannot be undone. (The
     * first version kept the golden copy in a child process; it is memory of this one.) */
    for (;;) {
        int status;
        pid_t p = waitpid(-1, &status, WNOHANG | __WALL);
        if (p <= 0)
            break;
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
            if (recreate_parts(i, j, n) < 0)
                return "too many changed mappings";
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
        fetch(p->off + (at - p->start), at, stop - at);
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
        struct span *r = &M->recreate[k];
        void *p = mmap((void *)r->start, r->end - r->start, M->regions[r->off].prot,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
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
        struct span *r = &M->recreate[k];
        struct region *s = &M->regions[r->off];
        if ((s->prot & PROT_READ) && (s->prot & PROT_WRITE))
            put_back(r->start, r->end, 1); /* the rest is zero already */
        if ((s->flags & R_TRACKED) && (track(r->start, r->end) < 0 || protect(r->start, r->end) < 0))
            fatal("write-protecting a recreated mapping", errno);
    }
    /* Pages written since the snapshot (or left unprotected by the last restore) ... */
    long before = M->pages;
    restore_pages(WRITTEN_INV, WRITTEN_MASK, WRITTEN_ANY, PAGE_IS_WRITTEN, 0);
    if (M->die_at == M->restores + 1)
        syscall(SYS_kill, syscall(SYS_getpid), SIGKILL);
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
#error "pytest_tach._reset supports x86_64 and aarch64"
#endif
    __builtin_unreachable();
}

void __attribute__((noreturn)) restore_now(void)
{
    /* Signals that arrive mid-restore would run handlers on half-restored memory. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, NULL);
    switch_stack(alt + ALT_STACK - 64, restore_on_alt_stack);
}

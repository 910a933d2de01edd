/* Which pages a test wrote: the snapshot registers the private writable mappings with a
 * userfaultfd in asynchronous write-protect mode (the kernel marks written pages without
 * stopping the process) and PAGEMAP_SCAN lists the written pages at a restore, and
 * write-protects them again (protect_again decides when). */
#include "reset.h"

int open_uffd(void)
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

int track(uintptr_t start, uintptr_t end)
{
    struct uffdio_register r = {.range = {.start = start, .len = end - start}, .mode = UFFDIO_REGISTER_MODE_WP};
    return ioctl(M->uffd, UFFDIO_REGISTER, &r);
}

int protect(uintptr_t start, uintptr_t end)
{
    struct uffdio_writeprotect wp = {.range = {.start = start, .len = end - start}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    return ioctl(M->uffd, UFFDIO_WRITEPROTECT, &wp);
}

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
 * unpopulated pages are the file's, not zeros), make room for their golden cache and
 * write-protect them. The cache stays empty: the holder made at the snapshot keeps the
 * golden pages, and restores fetch them (holder.c). */
int find_present(const struct region *regions, int n)
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
    /* the cache, then its bitmap; untouched pages of it cost nothing */
    size_t bits = (total / 4096 + 7) / 8;
    size_t len = (total + bits + 4095) / 4096 * 4096;
    if (len == 0)
        len = 4096;
    void *g = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (g == MAP_FAILED)
        return -1;
    M->golden = g;
    M->golden_len = len;
    M->filled = (unsigned char *)g + total;
    if (madvise(g, len, MADV_DONTFORK) < 0)
        return -1;
    for (int k = 0; k < M->npresent; k++)
        if (protect(M->present[k].start, M->present[k].end) < 0)
            return -1;
    return 0;
}

int scan(uint64_t flags, uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret, uintptr_t start,
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
void protect_again(long pages)
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

/* Whether snapshot/restore works here, without touching this process's mappings: a
 * userfaultfd in async write-protect mode over one page, and PAGEMAP_SCAN over it. NULL
 * if it does, else what failed (with the errno in *errp). */
const char *probe_kernel(int *errp)
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
    *errp = err;
    return what;
}

/*
 * pytest_tach._reset's internals, shared by its files (README.md has the contract):
 *
 *   maps.c     the process as the kernel lists it: mappings, fds, threads
 *   uffd.c     which pages were written: userfaultfd write-protection, PAGEMAP_SCAN
 *   holder.c   where the golden pages live: a sleeping copy of the process, and a cache
 *   restore.c  whether the process can be restored, and restoring it
 *   module.c   the snapshot, and the Python module
 *
 * Everything here is hidden in the shared object (-fvisibility=hidden): calls between
 * the files are direct, as between static functions, and go through no PLT slot (the
 * restore rewrites memory while it runs).
 */
#ifndef TACH_RESET_H
#define TACH_RESET_H

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
    /* The golden cache (holder.c): the snapshot's bytes of each present page, read from
     * the holder the first time a restore needs them; `filled` (a bit per page, at the
     * end of the same mapping) says which are there. */
    char *golden;
    size_t golden_len;
    unsigned char *filled;
    pid_t holder;   /* the copy of this process made at the snapshot */
    int holder_pidfd;
    int holder_mem; /* its /proc/<pid>/mem */
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
    struct span recreate[MAX_REGIONS]; /* the parts of anonymous mappings to make again; off: index into regions */
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

    /* The gauntlet's fault: the restore with this number (1-based, counted per
     * process) kills the process halfway through, its memory half put back; 0: never.
     * From TACH_FAULT_RESTORE at the snapshot, so that a test can kill a reused
     * process mid-restore deterministically (tests/gauntlet). */
    long die_at;

    /* counters for stats() */
    long pages, ranges, recreated, unmapped, closed, protects, fetched;
};


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

/* Everything restore() needs and the restore's own stack: set up by the snapshot, never
 * tracked, never restored (module.c). */
extern struct meta *M;
extern char *alt; /* ALT_STACK bytes, shared mapping: restore's stack */

/* maps.c */
void __attribute__((noreturn)) fatal(const char *what, int err);
uint64_t parse_dec(const char **p);
int read_maps(struct region *out, int max);
int query_maps(struct region *out, int max);
int same_identity(const struct region *a, const struct region *b);
int list_fds(struct fdinfo *out, int max, int *count);
int snap_fd(int fd);
int count_threads(void);

/* uffd.c */
int open_uffd(void);
int track(uintptr_t start, uintptr_t end);
int protect(uintptr_t start, uintptr_t end);
int scan(uint64_t flags, uint64_t inverted, uint64_t mask, uint64_t anyof, uint64_t ret, uintptr_t start,
         uintptr_t end, long *nvec, uintptr_t *walk_end);
int find_present(const struct region *regions, int n);
void protect_again(long pages);
const char *probe_kernel(int *err);

/* holder.c */
int make_holder(void);
int holder_alive(void);
void drop_holder(void);
void fetch(size_t off, uintptr_t addr, size_t len);

/* restore.c */
const char *plan(void);
void __attribute__((noreturn)) restore_now(void);

#endif

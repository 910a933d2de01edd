/* The process as the kernel lists it: its mappings (/proc/self/maps, or PROCMAP_QUERY),
 * its fds and its threads. No allocation and no stdio: restore.c calls these while the
 * process's memory is being put back. */
#include "reset.h"

void fatal(const char *what, int err)
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

uint64_t parse_dec(const char **p)
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
int read_maps(struct region *out, int max)
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
int query_maps(struct region *out, int max)
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

int same_identity(const struct region *a, const struct region *b)
{
    return a->prot == b->prot && (a->flags & R_SHARED) == (b->flags & R_SHARED) &&
           a->inode == b->inode && a->dev_major == b->dev_major && a->dev_minor == b->dev_minor &&
           (a->inode == 0 || a->offset == b->offset);
}

int list_fds(struct fdinfo *out, int max, int *count)
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

int snap_fd(int fd)
{
    for (int i = 0; i < M->nfds; i++)
        if (M->fds[i].fd == fd)
            return i;
    return -1;
}

int count_threads(void)
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

/* pytest_tach._reset, the Python module: snapshot(), restore(), probe(), stats(), release()
 * (README.md has the contract). The snapshot itself is here: it records the process,
 * then returns twice, once now and once after every restore. */
#include "reset.h"

struct meta *M;
char *alt;

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
        drop_holder();
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

static int __attribute__((noinline)) do_snapshot(void)
{
    /* restore() puts memory back to the holder's copy, made here, and the registers to
     * where this setjmp left them, so this returns a second time, with 1. Between the
     * copy and the setjmp nothing writes to memory at or above this frame
     * (make_holder's frame is below it and dead), so the two agree: the state is one
     * moment. */
    if (make_holder() < 0)
        return -1;
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
    M->uffd = M->pagemap = M->cwd = M->fddir = M->mapsfd = M->holder_mem = M->holder_pidfd = -1;
    alt = mmap(NULL, ALT_STACK, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (alt == MAP_FAILED) {
        alt = NULL;
        free_meta();
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    M->after_protect = 1; /* everything present is protected below */
    const char *fault = getenv("TACH_FAULT_RESTORE");
    M->die_at = fault != NULL ? strtol(fault, NULL, 10) : 0;

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

    int r = do_snapshot();
    if (r < 0) {
        int e = errno;
        free_meta();
        return unavailable("making the process that holds the snapshot's pages: %s", strerror(e));
    }
    return PyLong_FromLong(r ? M->restores : 0);
}

static PyObject *reset_restore(PyObject *self, PyObject *args)
{
    if (M == NULL)
        return unavailable("no snapshot was taken in this process");
    const char *why = plan();
    if (why != NULL)
        return unavailable("%s", why);
    restore_now();
}

static PyObject *reset_stats(PyObject *self, PyObject *args)
{
    if (M == NULL)
        Py_RETURN_NONE;
    return Py_BuildValue("{s:l,s:l,s:l,s:l,s:l,s:l,s:l,s:i,s:i,s:l,s:i}", "restores", M->restores, "pages", M->pages,
                         "ranges", M->ranges, "recreated", M->recreated, "unmapped", M->unmapped, "closed",
                         M->closed, "protects", M->protects, "present_ranges", M->npresent, "mappings",
                         M->nregions, "fetched", M->fetched, "holder", (int)M->holder);
}

/* Whether snapshot/restore works here, without touching this process's mappings. */
static PyObject *reset_probe(PyObject *self, PyObject *args)
{
    int err = 0;
    const char *what = probe_kernel(&err);
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
    ResetUnavailable = PyErr_NewExceptionWithDoc("pytest_tach._reset.ResetUnavailable",
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
    PyModuleDef_HEAD_INIT, "pytest_tach._reset", "Restore a process to a snapshot in place (see forked/reset/README.md).", 0, methods,
    slots,
};

PyMODINIT_FUNC PyInit__reset(void) { return PyModuleDef_Init(&module); }

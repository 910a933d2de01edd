/* The CPython side of pytest_tach._core.
 *
 * Hand-written rather than generated (gopy) so that it can declare what a generator
 * would not: multi-phase initialisation and, on free-threaded builds, the Py_mod_gil
 * slot. Without that slot, importing this module on 3.13t prints "The global
 * interpreter lock (GIL) has been enabled to load module 'pytest_tach._core'" and the GIL stays
 * on for the whole process -- the opposite of what tach exists for.
 *
 * Every function releases the GIL (detaches its thread state on free-threaded builds)
 * around the call into Go, so a blocking Go call never stalls other Python threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include "_cgo_export.h"

/* Method numbers: keep in step with main.go. */
enum {
    METHOD_VERSION = 0, METHOD_PROBE = 1, METHOD_FRAMES = 2,
    METHOD_START = 3, METHOD_POLL = 4, METHOD_STOP = 5, METHOD_PROTOCOL = 6,
};

static PyObject *
call_go(int method, const char *in, Py_ssize_t in_len)
{
    char *out = NULL;
    size_t out_len = 0;
    int status;

    Py_BEGIN_ALLOW_THREADS
    status = tachCall(method, (char *)in, (size_t)in_len, &out, &out_len);
    Py_END_ALLOW_THREADS

    if (out == NULL)
        return PyErr_NoMemory();
    if (status != 0) {
        PyObject *exc = status == 2 ? PyExc_ValueError : PyExc_RuntimeError;
        PyObject *msg = PyUnicode_DecodeUTF8(out, (Py_ssize_t)out_len, "replace");
        free(out);
        if (msg != NULL) {
            PyErr_SetObject(exc, msg);
            Py_DECREF(msg);
        }
        return NULL;
    }
    PyObject *res = PyBytes_FromStringAndSize(out, (Py_ssize_t)out_len);
    free(out);
    return res;
}

static PyObject *
core_version(PyObject *module, PyObject *unused)
{
    return call_go(METHOD_VERSION, NULL, 0);
}

static PyObject *
core_probe(PyObject *module, PyObject *unused)
{
    return call_go(METHOD_PROBE, NULL, 0);
}

static PyObject *
core_protocol(PyObject *module, PyObject *unused)
{
    return call_go(METHOD_PROTOCOL, NULL, 0);
}

/* A method taking one bytes argument (msgpack for the engine methods). "y#" rather than
 * PyObject_GetBuffer: the buffer calls joined the limited API only in 3.11, and this file
 * stays inside 3.10's so one abi3 build serves every GIL CPython (docs/building.md). "y#"
 * takes bytes and the read-only buffers that need no release; the caller holds a
 * reference to the immutable object for the whole call, so Go may copy from it with the
 * GIL released. */
static PyObject *
call_go_bytes(int method, PyObject *arg)
{
    const char *buf;
    Py_ssize_t len;
    if (!PyArg_Parse(arg, "y#", &buf, &len))
        return NULL;
    return call_go(method, buf, len);
}

static PyObject *
core_frames(PyObject *module, PyObject *arg)
{
    return call_go_bytes(METHOD_FRAMES, arg);
}

static PyObject *
core_start(PyObject *module, PyObject *arg)
{
    return call_go_bytes(METHOD_START, arg);
}

static PyObject *
core_poll(PyObject *module, PyObject *arg)
{
    return call_go_bytes(METHOD_POLL, arg);
}

static PyObject *
core_stop(PyObject *module, PyObject *arg)
{
    return call_go_bytes(METHOD_STOP, arg);
}

static PyMethodDef core_methods[] = {
    {"version", core_version, METH_NOARGS,
     "version() -> bytes\n\nmsgpack map: tach version, Go runtime version, ABI number."},
    {"probe", core_probe, METH_NOARGS,
     "probe() -> bytes\n\nmsgpack map: kernel release, usable CPUs and each kernel feature "
     "tach uses with OK/MISSING/DENIED and why. Starts and reaps a short-lived child."},
    {"protocol", core_protocol, METH_NOARGS,
     "protocol() -> bytes\n\nmsgpack map: the frames the supervisor accepts (field kinds), the "
     "commands it sends and the events it returns (their fields); see go/supervisor/proto.go."},
    {"frames", core_frames, METH_O,
     "frames(stream: bytes) -> bytes\n\nSplit a stream of 4-byte-length-prefixed msgpack "
     "frames with the supervisor's validating decoder; msgpack list of the decoded values, "
     "a bad frame as {'t': 'error', 'error': ...} at the end."},
    {"start", core_start, METH_O,
     "start(config: bytes) -> bytes\n\nStart supervising a root zygote (msgpack config: "
     "listen_fd, root_pid, workers, kill_grace, tests)."},
    {"poll", core_poll, METH_O,
     "poll(request: bytes) -> bytes\n\nWait up to request['timeout_ms'] (<= 100) for events; "
     "msgpack list of events, the last of a run being {'t': 'end'}."},
    {"stop", core_stop, METH_O,
     "stop(request: bytes) -> bytes\n\nStop the run: request['mode'] 'abort' (kill runners, "
     "let zygotes tear their scopes down) or 'kill' (kill every process at once)."},
    {NULL, NULL, 0, NULL},
};

static int
core_exec(PyObject *module)
{
    /* The Go runtime (and the supervisor's state) is one per process. The
     * Py_mod_multiple_interpreters slot below says so to 3.12+, but it is outside the
     * limited API of the abi3 build; this check holds in every build. */
    if (PyInterpreterState_GetID(PyInterpreterState_Get()) != 0) {
        PyErr_SetString(PyExc_ImportError,
                        "pytest_tach._core can be imported only in the main interpreter");
        return -1;
    }
#ifdef Py_GIL_DISABLED
    if (PyModule_AddIntConstant(module, "FREE_THREADED_BUILD", 1) < 0)
        return -1;
#else
    if (PyModule_AddIntConstant(module, "FREE_THREADED_BUILD", 0) < 0)
        return -1;
#endif
    return 0;
}

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
#ifdef Py_mod_multiple_interpreters
    /* (see core_exec) */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
#if defined(Py_GIL_DISABLED) && !defined(TACH_OMIT_GIL_SLOT)
    /* TACH_OMIT_GIL_SLOT exists only so a test can build the module without this slot
     * and prove that its check would catch the GIL being re-enabled. */
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pytest_tach._core",
    .m_doc = "tach's Go core: kernel probes, frame validation and (later) supervision.",
    .m_size = 0,
    .m_methods = core_methods,
    .m_slots = core_slots,
};

PyMODINIT_FUNC
PyInit__core(void)
{
    return PyModuleDef_Init(&core_module);
}

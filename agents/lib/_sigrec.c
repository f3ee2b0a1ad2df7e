/*
 * agents.lib._sigrec: a real SA_SIGINFO signal handler for agents.
 *
 * Python's signal.signal() handlers never see the kernel's siginfo_t, and
 * signal.sigwaitinfo()'s struct_siginfo has no si_fd.  This module installs a
 * C handler with sigaction(SA_SIGINFO) that copies each delivered siginfo_t
 * into a lock-free ring buffer and writes one byte (the signal number) to a
 * non-blocking wake-up pipe.  Python code drains the pipe and calls take().
 *
 * Ring buffer (RING_SIZE slots, a power of two):
 *   - head: the next slot to reserve; advanced only by the handler, with a
 *     compare-and-swap so that handlers running at the same time on two
 *     threads of the process reserve different slots, and so that a full
 *     ring is detected before a slot is reserved (the signal is then counted
 *     in `dropped` instead of overwriting an unread entry).
 *   - tail: the next slot to read; advanced only by take(), which runs with
 *     the GIL held, so there is one consumer at a time.
 *   - slot.ready: set (release) by the handler after the slot is filled;
 *     take() stops at the first reserved slot that is not ready yet (a handler
 *     on another thread still filling it), keeping arrival order, and clears
 *     it before advancing tail.
 * The handler only uses lock-free C11 atomics, getpid() and write(), all
 * async-signal-safe, so it may interrupt take() on the same thread.
 *
 * Each slot also records the pid of the process that received the signal;
 * take() discards slots recorded by another process, i.e. entries inherited
 * from the parent across fork() (Linux clears the pending signals of a fork
 * child, and the child should not see its parent's deliveries either).  A
 * slot that another thread of the parent was still filling when it forked
 * would never become ready in the child (that thread does not exist there):
 * a pthread_atfork child hook marks such slots ready and foreign.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define RING_SIZE 4096u /* a power of two */
#define MAX_SIGNUM 64   /* _NSIG - 1 on Linux */

_Static_assert((RING_SIZE & (RING_SIZE - 1)) == 0, "RING_SIZE must be a power of two");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "atomic int must be lock-free in a signal handler");
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2, "atomic long must be lock-free in a signal handler");

struct slot {
    atomic_int ready;
    int signo;
    int code;
    int err;
    pid_t pid;
    uid_t uid;
    int fd;
    long band;
    pid_t receiver; /* getpid() in the handler */
};

static struct slot ring[RING_SIZE];
static atomic_ulong head;    /* written by handlers only */
static atomic_ulong tail;    /* written by take() only */
static atomic_ulong ndropped;
static atomic_int wakeup_fd = -1;

static void
record_handler(int sig, siginfo_t *info, void *ucontext)
{
    (void)ucontext;
    int saved_errno = errno;
    unsigned long h = atomic_load_explicit(&head, memory_order_relaxed);
    for (;;) {
        unsigned long t = atomic_load_explicit(&tail, memory_order_acquire);
        if (h - t >= RING_SIZE) {
            atomic_fetch_add_explicit(&ndropped, 1, memory_order_relaxed);
            goto wake;
        }
        if (atomic_compare_exchange_weak_explicit(&head, &h, h + 1, memory_order_acq_rel,
                                                  memory_order_relaxed))
            break;
    }
    {
        struct slot *s = &ring[h & (RING_SIZE - 1)];
        s->signo = info->si_signo;
        s->code = info->si_code;
        s->err = info->si_errno;
        s->pid = info->si_pid; /* raw: for POLL_* codes these overlap si_band */
        s->uid = info->si_uid;
        s->fd = info->si_fd; /* raw: meaningful for POLL_* codes only */
        s->band = info->si_band;
        s->receiver = getpid();
        atomic_store_explicit(&s->ready, 1, memory_order_release);
    }
wake:
    {
        int fd = atomic_load_explicit(&wakeup_fd, memory_order_relaxed);
        if (fd >= 0) {
            unsigned char byte = (unsigned char)sig;
            ssize_t n;
            do {
                n = write(fd, &byte, 1);
            } while (n < 0 && errno == EINTR);
            /* EAGAIN (pipe full): the ring still holds the entry; ignore. */
        }
    }
    errno = saved_errno;
}

/* PyLong -> int with a range check (no private API: _PyLong_AsInt is gone in 3.13). */
static int
as_int(PyObject *obj, int *out)
{
    long v = PyLong_AsLong(obj);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < INT_MIN || v > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "value does not fit in a C int");
        return -1;
    }
    *out = (int)v;
    return 0;
}

/* pthread_atfork child hook: release the slots that other threads of the
 * parent had reserved but not filled when fork() was called.  Only this thread
 * exists in the child; a handler that interrupts the loop finishes its own
 * slot before the loop resumes. */
static void
after_fork_child(void)
{
    unsigned long h = atomic_load_explicit(&head, memory_order_acquire);
    for (unsigned long t = atomic_load_explicit(&tail, memory_order_relaxed); t != h; t++) {
        struct slot *s = &ring[t & (RING_SIZE - 1)];
        if (!atomic_load_explicit(&s->ready, memory_order_acquire)) {
            s->receiver = 0; /* nobody's: take() discards it */
            atomic_store_explicit(&s->ready, 1, memory_order_release);
        }
    }
}

static PyObject *
sigrec_set_wakeup(PyObject *module, PyObject *arg)
{
    (void)module;
    int fd;
    if (as_int(arg, &fd) < 0)
        return NULL;
    if (fd < -1) {
        PyErr_SetString(PyExc_ValueError, "fd must be >= 0, or -1 to disable");
        return NULL;
    }
    atomic_store(&wakeup_fd, fd);
    Py_RETURN_NONE;
}

static int
check_signum(int signum)
{
    if (signum < 1 || signum > MAX_SIGNUM) {
        PyErr_Format(PyExc_ValueError, "signal number %d out of range 1..%d", signum,
                     MAX_SIGNUM);
        return -1;
    }
    return 0;
}

static PyObject *
sigrec_install(PyObject *module, PyObject *args)
{
    (void)module;
    int signum, mode;
    if (!PyArg_ParseTuple(args, "ii:install", &signum, &mode))
        return NULL;
    if (check_signum(signum) < 0)
        return NULL;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    switch (mode) {
    case 0:
        sa.sa_handler = SIG_DFL;
        break;
    case 1:
        sa.sa_handler = SIG_IGN;
        break;
    case 2:
        sa.sa_sigaction = record_handler;
        sa.sa_flags = SA_SIGINFO;
        break;
    case 3:
        sa.sa_sigaction = record_handler;
        sa.sa_flags = SA_SIGINFO | SA_RESTART;
        break;
    default:
        PyErr_Format(PyExc_ValueError, "mode must be 0..3, not %d", mode);
        return NULL;
    }
    if (sigaction(signum, &sa, NULL) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *
sigrec_take(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    pid_t self = getpid();
    unsigned long t = atomic_load_explicit(&tail, memory_order_relaxed);
    for (;;) {
        unsigned long h = atomic_load_explicit(&head, memory_order_acquire);
        if (t == h)
            break;
        struct slot *s = &ring[t & (RING_SIZE - 1)];
        if (!atomic_load_explicit(&s->ready, memory_order_acquire))
            break; /* reserved by a handler that has not finished: keep order */
        struct slot copy;
        copy.signo = s->signo;
        copy.code = s->code;
        copy.err = s->err;
        copy.pid = s->pid;
        copy.uid = s->uid;
        copy.fd = s->fd;
        copy.band = s->band;
        copy.receiver = s->receiver;
        if (copy.receiver == self) {
            PyObject *item = Py_BuildValue("(iiiiIil)", copy.signo, copy.code, copy.err,
                                           (int)copy.pid, (unsigned int)copy.uid, copy.fd,
                                           copy.band);
            if (item == NULL || PyList_Append(list, item) < 0) {
                /* the entry stays in the ring for the next take() */
                Py_XDECREF(item);
                Py_DECREF(list);
                return NULL;
            }
            Py_DECREF(item);
        }
        atomic_store_explicit(&s->ready, 0, memory_order_relaxed);
        t++;
        atomic_store_explicit(&tail, t, memory_order_release);
    }
    return list;
}

static int
fill_sigset(PyObject *seq, sigset_t *set)
{
    sigemptyset(set);
    PyObject *fast = PySequence_Fast(seq, "signums must be a sequence of ints");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        int signum;
        if (as_int(PySequence_Fast_GET_ITEM(fast, i), &signum) < 0)
            goto fail;
        if (check_signum(signum) < 0)
            goto fail;
        if (sigaddset(set, signum) < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto fail;
        }
    }
    Py_DECREF(fast);
    return 0;
fail:
    Py_DECREF(fast);
    return -1;
}

static PyObject *
sigset_to_list(const sigset_t *set)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (int signum = 1; signum <= MAX_SIGNUM; signum++) {
        if (sigismember(set, signum) != 1)
            continue;
        PyObject *v = PyLong_FromLong(signum);
        if (v == NULL || PyList_Append(list, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(list);
            return NULL;
        }
        Py_DECREF(v);
    }
    return list;
}

static PyObject *
sigrec_sigmask(PyObject *module, PyObject *args)
{
    (void)module;
    int how;
    PyObject *seq;
    if (!PyArg_ParseTuple(args, "iO:sigmask", &how, &seq))
        return NULL;
    sigset_t set, old;
    if (fill_sigset(seq, &set) < 0)
        return NULL;
    int err = pthread_sigmask(how, &set, &old);
    if (err != 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return sigset_to_list(&old);
}

static PyObject *
sigrec_pending(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    sigset_t set;
    if (sigpending(&set) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return sigset_to_list(&set);
}

static PyObject *
sigrec_dropped(PyObject *module, PyObject *unused)
{
    (void)module;
    (void)unused;
    return PyLong_FromUnsignedLong(atomic_load(&ndropped));
}

/* sigtimedwait(2) of a blocked signal: dequeue one of `signums` without running a
 * handler.  The GIL is released while the thread sleeps.  Returns the raw fields as
 * take() does, or None when `timeout` (seconds; negative: no limit) passes (EAGAIN);
 * EINTR (a handler of another signal ran) and other errors raise OSError. */
static PyObject *
sigrec_sigtimedwait(PyObject *module, PyObject *args)
{
    (void)module;
    PyObject *seq;
    double timeout;
    if (!PyArg_ParseTuple(args, "Od:sigtimedwait", &seq, &timeout))
        return NULL;
    sigset_t set;
    if (fill_sigset(seq, &set) < 0)
        return NULL;
    struct timespec ts, *tsp = NULL;
    if (timeout >= 0) {
        ts.tv_sec = (time_t)timeout;
        ts.tv_nsec = (long)((timeout - (double)ts.tv_sec) * 1e9);
        tsp = &ts;
    }
    siginfo_t info;
    int sig, err;
    memset(&info, 0, sizeof info);
    Py_BEGIN_ALLOW_THREADS
    sig = sigtimedwait(&set, &info, tsp);
    err = errno;
    Py_END_ALLOW_THREADS
    if (sig < 0) {
        if (err == EAGAIN)
            Py_RETURN_NONE;
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return Py_BuildValue("(iiiiIil)", info.si_signo, info.si_code, info.si_errno,
                         (int)info.si_pid, (unsigned int)info.si_uid, info.si_fd,
                         info.si_band);
}

static PyMethodDef sigrec_methods[] = {
    {"sigtimedwait", sigrec_sigtimedwait, METH_VARARGS,
     "sigtimedwait(signums, timeout) -> tuple | None\n\nsigtimedwait(2) of blocked signals: "
     "the raw (signo, code, errno, pid, uid, fd, band), None after timeout seconds "
     "(negative: no limit)."},
    {"set_wakeup", sigrec_set_wakeup, METH_O,
     "set_wakeup(fd) -> None\n\nThe handler writes one byte (the signal number) to fd per "
     "signal; -1 disables."},
    {"install", sigrec_install, METH_VARARGS,
     "install(signum, mode) -> None\n\nsigaction(signum): mode 0 SIG_DFL, 1 SIG_IGN, 2 record "
     "(SA_SIGINFO), 3 record with SA_RESTART."},
    {"take", sigrec_take, METH_NOARGS,
     "take() -> list[tuple[int, int, int, int, int, int, int]]\n\nRemove and return the "
     "recorded (signo, code, errno, pid, uid, fd, band) in arrival order."},
    {"sigmask", sigrec_sigmask, METH_VARARGS,
     "sigmask(how, signums) -> list[int]\n\npthread_sigmask(how, signums); returns the "
     "previously blocked signals."},
    {"pending", sigrec_pending, METH_NOARGS, "pending() -> list[int]\n\nsigpending()."},
    {"dropped", sigrec_dropped, METH_NOARGS,
     "dropped() -> int\n\nSignals not recorded because the ring was full."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sigrec_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "agents.lib._sigrec",
    .m_doc = "Record real signals with their full siginfo_t (see agents.lib.sigrec).",
    .m_size = -1,
    .m_methods = sigrec_methods,
};

PyMODINIT_FUNC
PyInit__sigrec(void)
{
    static int atfork_done;
    if (!atfork_done) {
        int err = pthread_atfork(NULL, NULL, after_fork_child);
        if (err != 0) {
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        atfork_done = 1;
    }
    PyObject *m = PyModule_Create(&sigrec_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "RING_SIZE", RING_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

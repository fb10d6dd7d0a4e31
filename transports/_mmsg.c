/* transports._mmsg: recvmmsg(2) / sendmmsg(2) for the UDP transport's burst reader (Linux).
 *
 * Why C: per forwarded message the gateway spends ~9 us of CPU, of which socket.recvfrom costs
 * 2.2 us, and ~0.75 us of that is CPython turning the sender into a (host, port) tuple (glibc
 * inet_ntop formats with sprintf). One recvmmsg call reads a whole burst and hands the sender
 * back as the raw struct sockaddr bytes, a cheap dict key. No package on PyPI offers
 * recvmmsg/sendmmsg, so this small module does; transports/udp_endpoints.py falls back to the
 * recvfrom loop when it is not built.
 *
 *   recv_batch(fd, count, bufsize) -> list[tuple[bytes, bytes]]   (datagram, raw sockaddr)
 *   send_batch(fd, items: list[tuple[bytes, bytes]]) -> int       datagrams sent
 *
 * Both are non-blocking (MSG_DONTWAIT) and hold the GIL: with nothing to wait for, releasing
 * it would cost more than the call.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MAX_COUNT 1024     /* the kernel's UIO_MAXIOV: it caps vlen there anyway */
#define MAX_BUFSIZE 65536  /* a UDP payload is at most 65507 bytes */

/* Receive buffers, kept between calls and grown to the largest count * bufsize asked for:
 * a burst of 256 datagrams of 1025 bytes is 256 KiB, which malloc would mmap and unmap on
 * every call. */
typedef struct {
    struct mmsghdr *headers;
    struct iovec *iovecs;
    struct sockaddr_storage *names;
    char *data;
    size_t count;     /* headers, iovecs and names hold this many */
    size_t data_size; /* bytes in data */
} RecvBuffers;

static RecvBuffers shared_buffers;
/* Set while shared_buffers are in use: building the result allocates, which may run the cyclic
 * GC and so a finalizer that calls recv_batch again; that call gets buffers of its own. */
static int shared_busy;

static void
buffers_free(RecvBuffers *b)
{
    PyMem_RawFree(b->headers);
    PyMem_RawFree(b->iovecs);
    PyMem_RawFree(b->names);
    PyMem_RawFree(b->data);
    memset(b, 0, sizeof(*b));
}

/* Make room for count datagrams of bufsize bytes; -1 with MemoryError set on failure. */
static int
buffers_reserve(RecvBuffers *b, size_t count, size_t bufsize)
{
    if (count > b->count) {
        struct mmsghdr *headers = PyMem_RawRealloc(b->headers, count * sizeof(*headers));
        if (headers == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->headers = headers;
        struct iovec *iovecs = PyMem_RawRealloc(b->iovecs, count * sizeof(*iovecs));
        if (iovecs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->iovecs = iovecs;
        struct sockaddr_storage *names = PyMem_RawRealloc(b->names, count * sizeof(*names));
        if (names == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        b->names = names;
        b->count = count;
    }
    if (count * bufsize > b->data_size) {
        /* free + malloc, not realloc: the old bytes need no copying */
        PyMem_RawFree(b->data);
        b->data = PyMem_RawMalloc(count * bufsize);
        b->data_size = b->data == NULL ? 0 : count * bufsize;
        if (b->data == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    return 0;
}

/* One C int from a Python int argument, within [low, high]; -1 with an exception set if not. */
static int
int_arg(PyObject *obj, const char *name, long low, long high, int *out)
{
    long value = PyLong_AsLong(obj);
    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (value < low || value > high) {
        PyErr_Format(PyExc_ValueError, "%s must be within %ld..%ld, not %ld", name, low, high,
                     value);
        return -1;
    }
    *out = (int)value;
    return 0;
}

/* The result list of n received datagrams; NULL with an exception set on failure. */
static PyObject *
received_list(const RecvBuffers *b, int n, size_t bufsize)
{
    PyObject *result = PyList_New(n);
    if (result == NULL) {
        return NULL;
    }
    for (int i = 0; i < n; i++) {
        const struct msghdr *msg = &b->headers[i].msg_hdr;
        size_t length = b->headers[i].msg_len;
        if (length > bufsize) {
            length = bufsize; /* the kernel never says more, but cut it all the same */
        }
        PyObject *data = PyBytes_FromStringAndSize(b->data + (size_t)i * bufsize,
                                                   (Py_ssize_t)length);
        if (data == NULL) {
            Py_DECREF(result);
            return NULL;
        }
        PyObject *name = PyBytes_FromStringAndSize((const char *)msg->msg_name,
                                                   (Py_ssize_t)msg->msg_namelen);
        if (name == NULL) {
            Py_DECREF(data);
            Py_DECREF(result);
            return NULL;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(data);
            Py_DECREF(result);
            return NULL;
        }
        PyTuple_SET_ITEM(pair, 0, data); /* steals */
        PyTuple_SET_ITEM(pair, 1, name);
        PyList_SET_ITEM(result, i, pair);
    }
    return result;
}

PyDoc_STRVAR(recv_batch_doc,
"recv_batch(fd, count, bufsize, /)\n--\n\n"
"Receive up to count datagrams with one non-blocking recvmmsg(2).\n\n"
"Returns a list of (datagram, raw_sockaddr) pairs: raw_sockaddr is the sender's struct\n"
"sockaddr as the kernel filled it in. A datagram longer than bufsize arrives cut to\n"
"bufsize bytes. Nothing to read (EAGAIN) or a signal (EINTR) gives an empty list; other\n"
"errors (e.g. ECONNREFUSED for an ICMP port unreachable) raise OSError.");

static PyObject *
recv_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    int fd, count, bufsize;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "recv_batch() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (int_arg(args[0], "fd", 0, INT_MAX, &fd) < 0
        || int_arg(args[1], "count", 1, MAX_COUNT, &count) < 0
        || int_arg(args[2], "bufsize", 1, MAX_BUFSIZE, &bufsize) < 0) {
        return NULL;
    }

    RecvBuffers own = {0};
    RecvBuffers *b = shared_busy ? &own : &shared_buffers;
    if (buffers_reserve(b, (size_t)count, (size_t)bufsize) < 0) {
        buffers_free(&own);
        return NULL;
    }
    for (int i = 0; i < count; i++) {
        b->iovecs[i].iov_base = b->data + (size_t)i * (size_t)bufsize;
        b->iovecs[i].iov_len = (size_t)bufsize;
        struct msghdr *msg = &b->headers[i].msg_hdr;
        msg->msg_name = &b->names[i];
        msg->msg_namelen = sizeof(b->names[i]);
        msg->msg_iov = &b->iovecs[i];
        msg->msg_iovlen = 1;
        msg->msg_control = NULL;
        msg->msg_controllen = 0;
        msg->msg_flags = 0;
        b->headers[i].msg_len = 0;
    }

    int n = recvmmsg(fd, b->headers, (unsigned int)count, MSG_DONTWAIT, NULL);
    PyObject *result;
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            result = PyList_New(0);
        }
        else {
            result = PyErr_SetFromErrno(PyExc_OSError); /* always NULL */
        }
    }
    else {
        int was_busy = shared_busy;
        shared_busy = 1;
        result = received_list(b, n, (size_t)bufsize);
        shared_busy = was_busy;
    }
    buffers_free(&own);
    return result;
}

PyDoc_STRVAR(send_batch_doc,
"send_batch(fd, items, /)\n--\n\n"
"Send (datagram, raw_sockaddr) pairs with one non-blocking sendmmsg(2).\n\n"
"items is a list or tuple of 2-tuples of bytes; at most 1024 are sent per call. Returns\n"
"how many datagrams the kernel took, in order (0 when its buffer is full: EAGAIN). An\n"
"error on the first datagram raises OSError; one on a later datagram stops the batch\n"
"there (the count says where) and shows when that datagram is sent again.");

static PyObject *
send_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    /* Filled and used with no Python code run in between, so one static set serves all. */
    static struct mmsghdr headers[MAX_COUNT];
    static struct iovec iovecs[MAX_COUNT];
    int fd;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "send_batch() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (int_arg(args[0], "fd", 0, INT_MAX, &fd) < 0) {
        return NULL;
    }
    PyObject *items = args[1];
    if (!PyList_Check(items) && !PyTuple_Check(items)) {
        PyErr_Format(PyExc_TypeError, "items must be a list or tuple, not %.100s",
                     Py_TYPE(items)->tp_name);
        return NULL;
    }
    Py_ssize_t size = PySequence_Fast_GET_SIZE(items);
    if (size > MAX_COUNT) {
        size = MAX_COUNT;
    }
    PyObject **item = PySequence_Fast_ITEMS(items);
    for (Py_ssize_t i = 0; i < size; i++) {
        PyObject *pair = item[i];
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2
            || !PyBytes_Check(PyTuple_GET_ITEM(pair, 0))
            || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1))) {
            PyErr_Format(PyExc_TypeError,
                         "items[%zd] must be a (bytes, bytes) tuple, not %.100s", i,
                         Py_TYPE(pair)->tp_name);
            return NULL;
        }
        PyObject *data = PyTuple_GET_ITEM(pair, 0);
        PyObject *name = PyTuple_GET_ITEM(pair, 1);
        /* The items list holds these bytes alive until the call returns. */
        iovecs[i].iov_base = PyBytes_AS_STRING(data);
        iovecs[i].iov_len = (size_t)PyBytes_GET_SIZE(data);
        struct msghdr *msg = &headers[i].msg_hdr;
        msg->msg_name = PyBytes_AS_STRING(name);
        msg->msg_namelen = (socklen_t)PyBytes_GET_SIZE(name);
        msg->msg_iov = &iovecs[i];
        msg->msg_iovlen = 1;
        msg->msg_control = NULL;
        msg->msg_controllen = 0;
        msg->msg_flags = 0;
        headers[i].msg_len = 0;
    }
    if (size == 0) {
        return PyLong_FromLong(0);
    }
    int n = sendmmsg(fd, headers, (unsigned int)size, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
            return PyLong_FromLong(0);
        }
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(n);
}

static PyMethodDef mmsg_methods[] = {
    {"recv_batch", (PyCFunction)(void (*)(void))recv_batch, METH_FASTCALL, recv_batch_doc},
    {"send_batch", (PyCFunction)(void (*)(void))send_batch, METH_FASTCALL, send_batch_doc},
    {NULL, NULL, 0, NULL},
};

static void
mmsg_free(void *module)
{
    (void)module;
    if (!shared_busy) {
        buffers_free(&shared_buffers);
    }
}

static struct PyModuleDef mmsg_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "transports._mmsg",
    .m_doc = "recvmmsg/sendmmsg for the UDP transport (Linux); see transports/udp_endpoints.py.",
    .m_size = 0,
    .m_methods = mmsg_methods,
    .m_free = mmsg_free,
};

PyMODINIT_FUNC
PyInit__mmsg(void)
{
    PyObject *module = PyModule_Create(&mmsg_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(module, "MAX_COUNT", MAX_COUNT) < 0
        || PyModule_AddIntConstant(module, "MAX_BUFSIZE", MAX_BUFSIZE) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}

/* Whole websocket text frames, read and written in C: telephony_bridge.websocket_frames.
 *
 * Every message of a call crosses here once: located (and unmasked) as it is read, or framed
 * (and masked) as it is written. In Python these were 1.6 us to locate a caller's masked media
 * frame and 2.4 us to frame and mask a 20 ms append, a third of that frame's whole path through
 * the bridge. Text goes out from the str's own UTF-8 bytes, with no encoded copy in between.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define FIN_TEXT 0x81
#define MASKED 0x80

/* (None, None): a frame declared longer than the limit, refused from its header alone. */
static PyObject *OVERSIZED;

static PyObject *
next_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "next_frame(buffer, start, max_size, from_client)");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_size = PyLong_AsSsize_t(args[2]);
    int from_client = PyObject_IsTrue(args[3]);
    PyObject *result = NULL;
    if ((start == -1 || max_size == -1 || from_client < 0) && PyErr_Occurred()) {
        goto done;
    }
    const uint8_t *buffer = view.buf;
    Py_ssize_t available = view.len - start;
    if (start < 0 || available < 2) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    const uint8_t *frame = buffer + start;
    uint64_t length = frame[1] & 0x7F;
    Py_ssize_t header = 2;
    if (length == 126) {
        if (available < 4) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        length = (uint64_t)frame[2] << 8 | frame[3];
        header = 4;
    }
    else if (length == 127) {
        if (available < 10) {
            result = Py_NewRef(Py_None);
            goto done;
        }
        length = 0;
        for (int i = 2; i < 10; i++) {
            length = length << 8 | frame[i];
        }
        header = 10;
    }
    if (max_size < 0 || length > (uint64_t)max_size || length > (uint64_t)(PY_SSIZE_T_MAX - 14)) {
        result = Py_NewRef(OVERSIZED);
        goto done;
    }
    int masked = (frame[1] & MASKED) != 0;
    Py_ssize_t frame_size = header + (masked ? 4 : 0) + (Py_ssize_t)length;
    if (frame_size > available) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *end = PyLong_FromSsize_t(start + frame_size);
    if (end == NULL) {
        goto done;
    }
    PyObject *text;
    if (frame[0] != FIN_TEXT || masked != from_client) {
        text = Py_NewRef(Py_None);
    }
    else if (!masked) {
        text = PyBytes_FromStringAndSize((const char *)frame + header, (Py_ssize_t)length);
    }
    else {
        text = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)length);
        if (text != NULL) {
            const uint8_t *key = frame + header;
            const uint8_t *in = key + 4;
            uint8_t *out = (uint8_t *)PyBytes_AS_STRING(text);
            for (Py_ssize_t i = 0; i < (Py_ssize_t)length; i++) {
                out[i] = in[i] ^ key[i & 3];
            }
        }
    }
    if (text == NULL) {
        Py_DECREF(end);
        goto done;
    }
    result = PyTuple_Pack(2, end, text);
    Py_DECREF(end);
    Py_DECREF(text);
done:
    PyBuffer_Release(&view);
    return result;
}

/* A whole text frame of `text`'s UTF-8: unmasked without a key, masked with a 4-byte one. */
static PyObject *
text_frame(PyObject *text, const uint8_t *key)
{
    Py_ssize_t length;
    const char *payload = PyUnicode_AsUTF8AndSize(text, &length);
    if (payload == NULL) {
        return NULL;
    }
    uint8_t header[14];
    Py_ssize_t header_size = 2;
    header[0] = FIN_TEXT;
    uint8_t mask_bit = key ? MASKED : 0;
    if (length < 126) {
        header[1] = mask_bit | (uint8_t)length;
    }
    else if (length < 65536) {
        header[1] = mask_bit | 126;
        header[2] = (uint8_t)(length >> 8);
        header[3] = (uint8_t)length;
        header_size = 4;
    }
    else {
        header[1] = mask_bit | 127;
        for (int i = 0; i < 8; i++) {
            header[2 + i] = (uint8_t)((uint64_t)length >> (56 - 8 * i));
        }
        header_size = 10;
    }
    if (key) {
        memcpy(header + header_size, key, 4);
        header_size += 4;
    }
    PyObject *frame = PyBytes_FromStringAndSize(NULL, header_size + length);
    if (frame == NULL) {
        return NULL;
    }
    uint8_t *out = (uint8_t *)PyBytes_AS_STRING(frame);
    memcpy(out, header, header_size);
    out += header_size;
    if (key) {
        for (Py_ssize_t i = 0; i < length; i++) {
            out[i] = (uint8_t)payload[i] ^ key[i & 3];
        }
    }
    else {
        memcpy(out, payload, length);
    }
    return frame;
}

static PyObject *
server_text_frame(PyObject *module, PyObject *text)
{
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "a text frame's text must be str, not %.100s", Py_TYPE(text)->tp_name);
        return NULL;
    }
    return text_frame(text, NULL);
}

static PyObject *
client_text_frame(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0]) || !PyBytes_Check(args[1]) || PyBytes_GET_SIZE(args[1]) != 4) {
        PyErr_SetString(PyExc_TypeError, "client_text_frame(text: str, key: 4 bytes)");
        return NULL;
    }
    return text_frame(args[0], (const uint8_t *)PyBytes_AS_STRING(args[1]));
}

static PyMethodDef methods[] = {
    {"next_frame", (PyCFunction)(void (*)(void))next_frame, METH_FASTCALL,
     "The frame at start of buffer: None until it is whole, OVERSIZED past max_size, else (end, text or None)."},
    {"server_text_frame", server_text_frame, METH_O, "A whole text frame as a server sends it: unmasked."},
    {"client_text_frame", (PyCFunction)(void (*)(void))client_text_frame, METH_FASTCALL,
     "A whole text frame as a client sends it: masked with the 4-byte key."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_frames", "Whole websocket text frames, read and written.", -1, methods,
};

PyMODINIT_FUNC
PyInit__frames(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    OVERSIZED = PyTuple_Pack(2, Py_None, Py_None);
    if (OVERSIZED == NULL || PyModule_AddObjectRef(m, "OVERSIZED", OVERSIZED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}

/* The audio of the two messages a call carries most, found in their JSON text: Twilio's media
 * frames (50 a second) and the model's audio deltas (up to 50 a second).
 *
 * Parsing them whole built a dict per message (a 1.5 KB delta's included a copy of its 1280
 * characters of base64) that the parsers then checked key by key: 1.8 us a caller frame and
 * 2.9 us a delta, of 10 and 13 us through the whole bridge. Here the text is walked once and
 * the audio's base64 comes out as a slice of it, still to be decoded.
 *
 * Only the shape the services send is taken: an ASCII object whose strings have no escapes, its
 * wanted keys once each. Anything else, valid or not, gives None and the caller parses the text
 * the general way, which decides and explains. The base64 fields are the one exception to the
 * escape check: their closing quote is found with memchr, and any backslash or other character
 * left in them fails the strict decoding that follows, which then sends the text the general way.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH 16

typedef struct {
    const char *key;
    Py_ssize_t key_length;
    int base64;            /* a long string of base64: found with memchr (see above) */
    Py_ssize_t start, end; /* the value's span; start -1 until it is seen */
    int is_string;         /* the span is a string's content, without its quotes */
} Wanted;

static Py_ssize_t
skip_space(const char *s, Py_ssize_t i, Py_ssize_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) {
        i++;
    }
    return i;
}

/* s[i] is '"': the index past the closing quote; -1 for an escape, a control character or no end. */
static Py_ssize_t
skip_string(const char *s, Py_ssize_t i, Py_ssize_t n)
{
    for (i++; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            return i + 1;
        }
        if (c == '\\' || c < 0x20) {
            return -1;
        }
    }
    return -1;
}

static Py_ssize_t
skip_digits(const char *s, Py_ssize_t i, Py_ssize_t n)
{
    Py_ssize_t start = i;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
    }
    return i > start ? i : -1;
}

/* A JSON number at i: the index past it, or -1. */
static Py_ssize_t
skip_number(const char *s, Py_ssize_t i, Py_ssize_t n)
{
    if (i < n && s[i] == '-') {
        i++;
    }
    if (i < n && s[i] == '0') {
        i++;
    }
    else if ((i = skip_digits(s, i, n)) < 0) {
        return -1;
    }
    if (i < n && s[i] == '.' && (i = skip_digits(s, i + 1, n)) < 0) {
        return -1;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) {
            i++;
        }
        if ((i = skip_digits(s, i, n)) < 0) {
            return -1;
        }
    }
    return i;
}

static Py_ssize_t skip_value(const char *s, Py_ssize_t i, Py_ssize_t n, int depth);
static Py_ssize_t scan_object(const char *s, Py_ssize_t i, Py_ssize_t n, Wanted *wanted, int count, int depth);

/* s[i] is '[': the index past its close, or -1. */
static Py_ssize_t
skip_array(const char *s, Py_ssize_t i, Py_ssize_t n, int depth)
{
    if (depth >= MAX_DEPTH) {
        return -1;
    }
    i = skip_space(s, i + 1, n);
    if (i < n && s[i] == ']') {
        return i + 1;
    }
    for (;;) {
        if ((i = skip_value(s, i, n, depth + 1)) < 0) {
            return -1;
        }
        i = skip_space(s, i, n);
        if (i < n && s[i] == ',') {
            i = skip_space(s, i + 1, n);
            continue;
        }
        return i < n && s[i] == ']' ? i + 1 : -1;
    }
}

static Py_ssize_t
skip_literal(const char *s, Py_ssize_t i, Py_ssize_t n, const char *literal)
{
    Py_ssize_t length = (Py_ssize_t)strlen(literal);
    return n - i >= length && memcmp(s + i, literal, length) == 0 ? i + length : -1;
}

/* Any JSON value at i (strings without escapes): the index past it, or -1. */
static Py_ssize_t
skip_value(const char *s, Py_ssize_t i, Py_ssize_t n, int depth)
{
    if (i >= n) {
        return -1;
    }
    switch (s[i]) {
    case '"':
        return skip_string(s, i, n);
    case '{':
        return scan_object(s, i, n, NULL, 0, depth);
    case '[':
        return skip_array(s, i, n, depth);
    case 't':
        return skip_literal(s, i, n, "true");
    case 'f':
        return skip_literal(s, i, n, "false");
    case 'n':
        return skip_literal(s, i, n, "null");
    default:
        return skip_number(s, i, n);
    }
}

/* The object at s[i] ('{'): records each of the `count` wanted keys' values; the index past it,
 * or -1 (also for a wanted key seen twice, whose last value a JSON parser would keep). */
static Py_ssize_t
scan_object(const char *s, Py_ssize_t i, Py_ssize_t n, Wanted *wanted, int count, int depth)
{
    if (i >= n || s[i] != '{' || depth >= MAX_DEPTH) {
        return -1;
    }
    i = skip_space(s, i + 1, n);
    if (i < n && s[i] == '}') {
        return i + 1;
    }
    for (;;) {
        if (i >= n || s[i] != '"') {
            return -1;
        }
        Py_ssize_t key_start = i + 1;
        if ((i = skip_string(s, i, n)) < 0) {
            return -1;
        }
        Py_ssize_t key_length = i - 1 - key_start;
        Wanted *match = NULL;
        for (int k = 0; k < count; k++) {
            if (wanted[k].key_length == key_length && memcmp(s + key_start, wanted[k].key, key_length) == 0) {
                match = &wanted[k];
                break;
            }
        }
        i = skip_space(s, i, n);
        if (i >= n || s[i] != ':') {
            return -1;
        }
        i = skip_space(s, i + 1, n);
        if (match != NULL) {
            if (match->start >= 0 || i >= n) {
                return -1;
            }
            if (s[i] == '"') {
                Py_ssize_t end;
                if (match->base64) {
                    const char *quote = memchr(s + i + 1, '"', n - i - 1);
                    end = quote == NULL ? -1 : quote - s + 1;
                }
                else {
                    end = skip_string(s, i, n);
                }
                if (end < 0) {
                    return -1;
                }
                match->start = i + 1;
                match->end = end - 1;
                match->is_string = 1;
                i = end;
            }
            else {
                match->start = i;
                if ((i = skip_value(s, i, n, depth + 1)) < 0) {
                    return -1;
                }
                match->end = i;
                match->is_string = 0;
            }
        }
        else if ((i = skip_value(s, i, n, depth + 1)) < 0) {
            return -1;
        }
        i = skip_space(s, i, n);
        if (i < n && s[i] == ',') {
            i = skip_space(s, i + 1, n);
            continue;
        }
        return i < n && s[i] == '}' ? i + 1 : -1;
    }
}

/* The text's ASCII bytes, or NULL when it is not an ASCII str (its caller then gives None). */
static const char *
ascii_of(PyObject *text, Py_ssize_t *length)
{
    if (!PyUnicode_Check(text) || !PyUnicode_IS_ASCII(text)) {
        return NULL;
    }
    *length = PyUnicode_GET_LENGTH(text);
    return (const char *)PyUnicode_1BYTE_DATA(text);
}

/* The whole text is one object (whitespace around it allowed) with the wanted keys recorded. */
static int
scan_document(const char *s, Py_ssize_t n, Wanted *wanted, int count)
{
    Py_ssize_t end = scan_object(s, skip_space(s, 0, n), n, wanted, count, 0);
    return end >= 0 && skip_space(s, end, n) == n;
}

static int
is_string(const Wanted *value, const char *s, const char *expected)
{
    Py_ssize_t length = (Py_ssize_t)strlen(expected);
    return value->start >= 0 && value->is_string && value->end - value->start == length
        && memcmp(s + value->start, expected, length) == 0;
}

#define WANTED(name, base64) {name, (Py_ssize_t)sizeof(name) - 1, base64, -1, -1, 0}

static PyObject *
twilio_media_payload(PyObject *module, PyObject *text)
{
    Py_ssize_t n;
    const char *s = ascii_of(text, &n);
    if (s == NULL) {
        Py_RETURN_NONE;
    }
    Wanted top[] = {WANTED("event", 0), WANTED("media", 0)};
    if (!scan_document(s, n, top, 2) || !is_string(&top[0], s, "media") || top[1].start < 0 || top[1].is_string
        || s[top[1].start] != '{') {
        Py_RETURN_NONE;
    }
    Wanted media[] = {WANTED("payload", 1), WANTED("track", 0)};
    if (scan_object(s, top[1].start, top[1].end, media, 2, 1) != top[1].end || media[0].start < 0 || !media[0].is_string
        || (media[1].start >= 0 && !is_string(&media[1], s, "inbound"))) {
        Py_RETURN_NONE;
    }
    return PyUnicode_Substring(text, media[0].start, media[0].end);
}

static PyObject *
realtime_audio_delta(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "realtime_audio_delta(text, event_type)");
        return NULL;
    }
    Py_ssize_t n, type_length;
    const char *s = ascii_of(args[0], &n);
    const char *event_type = PyUnicode_Check(args[1]) ? PyUnicode_AsUTF8AndSize(args[1], &type_length) : NULL;
    if (event_type == NULL) {
        if (PyErr_Occurred()) {
            return NULL;
        }
        PyErr_SetString(PyExc_TypeError, "event_type must be a str");
        return NULL;
    }
    if (s == NULL) {
        Py_RETURN_NONE;
    }
    Wanted fields[] = {WANTED("type", 0), WANTED("response_id", 0), WANTED("item_id", 0), WANTED("delta", 1)};
    if (!scan_document(s, n, fields, 4) || !is_string(&fields[0], s, event_type)) {
        Py_RETURN_NONE;
    }
    for (int k = 1; k < 4; k++) {
        if (fields[k].start < 0 || !fields[k].is_string) {
            Py_RETURN_NONE;
        }
    }
    PyObject *response_id = PyUnicode_Substring(args[0], fields[1].start, fields[1].end);
    PyObject *item_id = PyUnicode_Substring(args[0], fields[2].start, fields[2].end);
    PyObject *delta = PyUnicode_Substring(args[0], fields[3].start, fields[3].end);
    PyObject *result = NULL;
    if (response_id != NULL && item_id != NULL && delta != NULL) {
        result = PyTuple_Pack(3, response_id, item_id, delta);
    }
    Py_XDECREF(response_id);
    Py_XDECREF(item_id);
    Py_XDECREF(delta);
    return result;
}

static PyMethodDef methods[] = {
    {"twilio_media_payload", twilio_media_payload, METH_O,
     "The base64 payload of an inbound media message in Twilio's shape; None: parse the text the general way."},
    {"realtime_audio_delta", (PyCFunction)(void (*)(void))realtime_audio_delta, METH_FASTCALL,
     "(response_id, item_id, delta) of an event of event_type in the service's shape; None: parse it the general way."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_audio_json", "The audio of the two hot messages, found in their JSON text.", -1, methods,
};

PyMODINIT_FUNC
PyInit__audio_json(void)
{
    return PyModule_Create(&module);
}

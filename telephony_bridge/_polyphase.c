/* Polyphase FIR resampling by 3 with G.711 mu-law on the 8 kHz side: the per-frame arithmetic of
 * telephony_bridge.audio, which designs the filter and keeps each call's held-back samples.
 *
 * Pure functions over bytes-like arguments: the filter taps (float32) and the mu-law tables come
 * in on every call, prepared once in Python, so this module holds no state of its own.
 *
 * Every output is summed in one fixed order (phase by phase, tap by tap), whatever the chunk it
 * falls in, so streaming is bit-identical to one shot. The loops run over blocks of BLOCK outputs
 * with the output index innermost: no reduction dependency, so the compiler vectorises them with
 * SSE2 (any x86-64) and without -ffast-math, which would let it reorder the sums. At -O3 (set in
 * pyproject.toml) the block's sums stay in registers across the taps.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "PCM16 is little-endian, read and written here as native int16"
#endif

#define RATIO 3
/* Outputs computed together: 32 float sums are 8 SSE registers, enough independent adds to hide
 * the add latency and few enough to stay in registers (per 20 ms frame, blocks of 16 took 3-4
 * times as long, of 48 and 64 10-70 % longer). */
#define BLOCK 32
/* Adding and subtracting 1.5 * 2^23 rounds a float of magnitude below 2^22 to the nearest integer,
 * ties to even like numpy's rint, in vector registers (rintf needs SSE4.1 to be inlined). */
#define ROUNDER 12582912.0f

typedef struct {
    Py_buffer view;
    int acquired;
} Buffer;

static int
get_buffer(PyObject *obj, Buffer *buffer, const char *what)
{
    if (PyObject_GetBuffer(obj, &buffer->view, PyBUF_SIMPLE) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be a bytes-like object, not %.100s", what, Py_TYPE(obj)->tp_name);
        return -1;
    }
    buffer->acquired = 1;
    return 0;
}

static void
release_buffers(Buffer *buffers, int n)
{
    for (int i = 0; i < n; i++) {
        if (buffers[i].acquired) {
            PyBuffer_Release(&buffers[i].view);
        }
    }
}

/* PCM16 (little-endian) as floats: one vectorised pass, before the strided split into phases. */
static void
to_float(float *restrict x, const unsigned char *restrict pcm, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        int16_t sample;
        memcpy(&sample, pcm + 2 * i, sizeof sample);
        x[i] = sample;
    }
}

/* Mu-law bytes as floats, through the decoding table. */
static void
decode_ulaw(float *restrict x, const unsigned char *restrict ulaw, const float *restrict pcm_of_ulaw, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        x[i] = pcm_of_ulaw[ulaw[i]];
    }
}

/* x_p[m] = x[3m + p] for m < n: the three phases of the input, in one pass. */
static void
split_phases(float *restrict x0, float *restrict x1, float *restrict x2, const float *restrict x, Py_ssize_t n)
{
    for (Py_ssize_t m = 0; m < n; m++) {
        x0[m] = x[RATIO * m];
        x1[m] = x[RATIO * m + 1];
        x2[m] = x[RATIO * m + 2];
    }
}

static Py_ssize_t
round_up(Py_ssize_t n)
{
    return (n + BLOCK - 1) / BLOCK * BLOCK;
}

/* taps[k] for k < ntaps: the filter phase's taps; acc[j] += taps[k] * x[k + j] in order of k. */
static inline void
accumulate_block(float *restrict acc, const float *restrict x, const float *restrict taps, Py_ssize_t ntaps,
                 Py_ssize_t stride)
{
    for (Py_ssize_t k = 0; k < ntaps; k++) {
        const float h = taps[k * stride];
        const float *restrict xk = x + k;
        for (int j = 0; j < BLOCK; j++) {
            acc[j] += h * xk[j];
        }
    }
}

PyDoc_STRVAR(decimate_to_ulaw_doc,
"decimate_to_ulaw(pcm, count, lowpass, ulaw_of_14bit, /) -> bytes\n\n"
"Filter 24 kHz PCM16 (little-endian) with ``lowpass`` (float32) and keep every third output:\n"
"output q is sum over j of lowpass[j] * pcm[3q + j], for q < count. Each output, offset by\n"
"half the table and truncated, indexes ``ulaw_of_14bit`` (saturating at both ends), so with\n"
"taps scaled to 14-bit units and the mu-law code of every 14-bit value in the table it comes\n"
"out rounded to the nearest 14-bit value and mu-law encoded.");

static PyObject *
decimate_to_ulaw(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "decimate_to_ulaw takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t count = PyLong_AsSsize_t(args[1]);
    if (count == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Buffer buffers[3] = {{.acquired = 0}, {.acquired = 0}, {.acquired = 0}};
    PyObject *result = NULL;
    float *scratch = NULL;
    if (get_buffer(args[0], &buffers[0], "pcm") < 0 || get_buffer(args[2], &buffers[1], "lowpass") < 0 ||
        get_buffer(args[3], &buffers[2], "ulaw_of_14bit") < 0) {
        goto done;
    }
    const unsigned char *pcm = buffers[0].view.buf;
    const float *lowpass = buffers[1].view.buf;
    const unsigned char *table = buffers[2].view.buf;
    const Py_ssize_t samples = buffers[0].view.len / 2;
    const Py_ssize_t ntaps = buffers[1].view.len / (Py_ssize_t)sizeof(float);
    const Py_ssize_t table_len = buffers[2].view.len;
    if (ntaps < RATIO || table_len < 2 || table_len > 65536) {
        PyErr_SetString(PyExc_ValueError, "decimate_to_ulaw needs at least 3 taps and 2 to 65536 table entries");
        goto done;
    }
    if (count <= 0) {
        result = PyBytes_FromStringAndSize(NULL, 0);
        goto done;
    }
    if (samples < ntaps || count > (samples - ntaps) / RATIO + 1) {
        PyErr_Format(PyExc_ValueError, "%zd outputs need %zd samples of 24 kHz PCM16, got %zd", count,
                     RATIO * (count - 1) + ntaps, samples);
        goto done;
    }
    /* Phase p of the input, x_p[m] = pcm[3m + p], meets taps lowpass[3k + p]: one row per phase,
     * zero-padded so the last block may read past the outputs asked for. */
    const Py_ssize_t phase_taps = (ntaps + RATIO - 1) / RATIO;
    const Py_ssize_t padded = round_up(count);
    const Py_ssize_t row = padded + phase_taps;
    scratch = PyMem_Malloc(sizeof(float) * (RATIO * row + samples));
    result = PyBytes_FromStringAndSize(NULL, count);
    if (scratch == NULL || result == NULL) {
        Py_CLEAR(result);
        if (scratch == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    float *flat = scratch + RATIO * row;
    to_float(flat, pcm, samples);
    const Py_ssize_t whole = samples / RATIO < row ? samples / RATIO : row;
    split_phases(scratch, scratch + row, scratch + 2 * row, flat, whole);
    for (int p = 0; p < RATIO; p++) {
        for (Py_ssize_t m = whole; m < row; m++) {
            scratch[p * row + m] = RATIO * m + p < samples ? flat[RATIO * m + p] : 0.0f;
        }
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    const float offset = (float)(table_len / 2) + 0.5f;
    const int32_t last = (int32_t)(table_len - 1);
    for (Py_ssize_t block = 0; block < padded; block += BLOCK) {
        float acc[BLOCK] = {0.0f};
        for (int p = 0; p < RATIO; p++) {
            accumulate_block(acc, scratch + p * row + block, lowpass + p, (ntaps - p + RATIO - 1) / RATIO, RATIO);
        }
        const Py_ssize_t end = count - block < BLOCK ? count - block : BLOCK;
        for (Py_ssize_t j = 0; j < end; j++) {
            int32_t index = (int32_t)(acc[j] + offset);
            index = index > 0 ? index : 0;
            out[block + j] = table[index < last ? index : last];
        }
    }
done:
    PyMem_Free(scratch);
    release_buffers(buffers, 3);
    return result;
}

PyDoc_STRVAR(interpolate_from_ulaw_doc,
"interpolate_from_ulaw(ulaw, lowpass, pcm_of_ulaw, /) -> bytes\n\n"
"Decode 8 kHz mu-law through ``pcm_of_ulaw`` (256 float32) and interpolate by 3 with ``lowpass``\n"
"(float32, gain 3 included): for each input n whose window x[n .. n + W - 1] is in, where\n"
"W = ceil(len(lowpass) / 3), output 3n + p is sum over t of x[n + t] * lowpass[3(W - 1 - t) + p],\n"
"rounded to nearest (ties to even) and saturated to PCM16 (little-endian). ``len(ulaw) - W + 1``\n"
"inputs yield outputs; the last W - 1 are the next call's history.");

static PyObject *
interpolate_from_ulaw(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "interpolate_from_ulaw takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Buffer buffers[3] = {{.acquired = 0}, {.acquired = 0}, {.acquired = 0}};
    PyObject *result = NULL;
    float *scratch = NULL;
    if (get_buffer(args[0], &buffers[0], "ulaw") < 0 || get_buffer(args[1], &buffers[1], "lowpass") < 0 ||
        get_buffer(args[2], &buffers[2], "pcm_of_ulaw") < 0) {
        goto done;
    }
    const unsigned char *ulaw = buffers[0].view.buf;
    const float *lowpass = buffers[1].view.buf;
    const float *decode = buffers[2].view.buf;
    const Py_ssize_t ntaps = buffers[1].view.len / (Py_ssize_t)sizeof(float);
    if (ntaps < RATIO || buffers[2].view.len != 256 * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "interpolate_from_ulaw needs at least 3 taps and 256 float32 decodings");
        goto done;
    }
    const Py_ssize_t window = (ntaps + RATIO - 1) / RATIO;
    const Py_ssize_t count = buffers[0].view.len - (window - 1);
    if (count <= 0) {
        result = PyBytes_FromStringAndSize(NULL, 0);
        goto done;
    }
    /* Phase p's taps in the order the window's inputs meet them, zero where 3(W-1-t)+p is past the
     * filter; then the decoded input, zero-padded for the last block; then each phase's outputs. */
    const Py_ssize_t padded = round_up(count);
    const Py_ssize_t span = padded + window;
    scratch = PyMem_Malloc(sizeof(float) * (RATIO * window + span) + sizeof(int16_t) * RATIO * padded);
    result = PyBytes_FromStringAndSize(NULL, 2 * RATIO * count);
    if (scratch == NULL || result == NULL) {
        Py_CLEAR(result);
        if (scratch == NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    float *taps = scratch;
    float *x = taps + RATIO * window;
    int16_t *phases = (int16_t *)(x + span);
    for (int p = 0; p < RATIO; p++) {
        for (Py_ssize_t t = 0; t < window; t++) {
            const Py_ssize_t j = RATIO * (window - 1 - t) + p;
            taps[p * window + t] = j < ntaps ? lowpass[j] : 0.0f;
        }
    }
    const Py_ssize_t inputs = buffers[0].view.len;
    decode_ulaw(x, ulaw, decode, inputs);
    memset(x + inputs, 0, sizeof(float) * (span - inputs));
    for (int p = 0; p < RATIO; p++) {
        int16_t *phase = phases + p * padded;
        for (Py_ssize_t block = 0; block < padded; block += BLOCK) {
            float acc[BLOCK] = {0.0f};
            accumulate_block(acc, x + block, taps + p * window, window, 1);
            for (int j = 0; j < BLOCK; j++) {
                int32_t y = (int32_t)((acc[j] + ROUNDER) - ROUNDER);
                y = y > INT16_MIN ? y : INT16_MIN;
                phase[block + j] = (int16_t)(y < INT16_MAX ? y : INT16_MAX);
            }
        }
    }
    int16_t *out = (int16_t *)PyBytes_AS_STRING(result);
    for (Py_ssize_t n = 0; n < count; n++) {
        for (int p = 0; p < RATIO; p++) {
            out[RATIO * n + p] = phases[p * padded + n];
        }
    }
done:
    PyMem_Free(scratch);
    release_buffers(buffers, 3);
    return result;
}

static PyMethodDef polyphase_methods[] = {
    {"decimate_to_ulaw", (PyCFunction)(void (*)(void))decimate_to_ulaw, METH_FASTCALL, decimate_to_ulaw_doc},
    {"interpolate_from_ulaw", (PyCFunction)(void (*)(void))interpolate_from_ulaw, METH_FASTCALL,
     interpolate_from_ulaw_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef polyphase_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "telephony_bridge._polyphase",
    .m_doc = "Polyphase FIR resampling by 3 between 24 kHz PCM16 and 8 kHz mu-law (see telephony_bridge.audio).",
    .m_size = 0,
    .m_methods = polyphase_methods,
};

PyMODINIT_FUNC
PyInit__polyphase(void)
{
    return PyModuleDef_Init(&polyphase_module);
}

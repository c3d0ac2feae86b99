/*
 * enumwatch.audit._typed: the typed decoder of apiserver audit events, in C.
 *
 * What it does is what enumwatch/audit/decode.py says of "the typed decoder": read only the
 * fields the rule and the operator read, straight from the JSON bytes into their Python types,
 * and decline (return None) on anything it is not sure to read exactly as the generic path
 * (orjson, then decode.py's checks) would: a wrong type, a duplicated key it reads, a key it
 * would have to unescape, a lone surrogate, a control character, a number orjson would read as
 * a float or refuse, nesting deeper than MAX_DEPTH, trailing bytes. The caller then decides with
 * the generic path, so the results are the same whichever path decided: this module only ever
 * *accepts* less.
 *
 * Per event it also makes what the Python decoder made next (one pass over the bytes, no
 * intermediate objects): the event's identity (enumwatch/audit/identity.py: BLAKE2b-128 of the
 * fields' JSON as orjson writes it, hashed by the hashlib object the caller passes) and its time
 * when its stageTimestamp has the apiserver's shape (epoch seconds exactly as
 * datetime.fromisoformat(...).timestamp() gives them; any other shape is left to Python).
 * Values equal to the previous event's in the same field are shared, not made again.
 *
 * Input validity: the caller has checked that the whole body is valid UTF-8 (decode.py's
 * _valid_utf8); the strings read here are decoded by PyUnicode_DecodeUTF8 all the same.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define MAX_DEPTH 64

/* The EventFields order (enumwatch/audit/event.py FIELD_NAMES). */
enum {
    F_VERB, F_REQUEST_URI, F_RESOURCE, F_DECISION, F_CODE, F_MESSAGE, F_NAMESPACE,
    F_USERNAME, F_GROUPS, F_LEVEL, F_SOURCE_IPS, F_USER_AGENT, F_AUDIT_ID, F_STAGE,
    F_STAGE_TIMESTAMP, F_RECEIVED_TIMESTAMP, F_CLUSTER, N_FIELDS
};
/* The kind, read but not a field. */
#define F_KIND N_FIELDS
#define N_SLOTS (N_FIELDS + 1)

/* Results of the parsing functions. */
#define OK 0
#define DECLINE 1
#define ERROR (-1)

typedef struct {
    const char *p;
    const char *end;
} Cursor;

/* One string as it was written: its bytes between the quotes, and whether it has escapes. */
typedef struct {
    const char *start;
    Py_ssize_t len;
    int escaped;
} RawString;

/* What one event read: each slot's raw span (for sharing and for the identity), its object. */
typedef struct {
    PyObject *value[N_SLOTS];      /* new references, NULL when absent */
    const char *raw[N_SLOTS];      /* the span written (string: inside quotes; list: [..]) */
    Py_ssize_t raw_len[N_SLOTS];
    int present[N_SLOTS];          /* seen once (a second time declines) */
    int seen_user, seen_object_ref, seen_status, seen_annotations; /* the same, of objects */
} Event;

/* The previous event's values, shared when a field is written the same way again. */
typedef struct {
    PyObject *value[N_SLOTS];      /* strong references, released at the end of the call */
    const char *raw[N_SLOTS];
    Py_ssize_t raw_len[N_SLOTS];
} Shared;

/* A growable byte buffer (the identity's JSON, unescaped strings). */
typedef struct {
    char *data;
    Py_ssize_t len;
    Py_ssize_t cap;
} Buffer;

static int buf_reserve(Buffer *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_put(Buffer *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, (size_t)n);
    b->len += n;
    return 0;
}

static int buf_byte(Buffer *b, char c) {
    if (buf_reserve(b, 1) < 0) return -1;
    b->data[b->len++] = c;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* Scanning */

static inline void skip_ws(Cursor *c) {
    while (c->p < c->end) {
        char ch = *c->p;
        if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t')
            c->p++;
        else
            break;
    }
}

/* After a member or an element: whether another follows (its comma passed) or the container
 * closed (its bracket passed); anything else declines. */
#define MORE 2
#define CLOSED 0
static inline int next_or_close(Cursor *c, char close) {
    skip_ws(c);
    if (c->p >= c->end) return DECLINE;
    if (*c->p == ',') {
        c->p++;
        skip_ws(c);
        return MORE;
    }
    if (*c->p == close) {
        c->p++;
        return CLOSED;
    }
    return DECLINE;
}

static inline int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int read_hex4(const char *p, const char *end, unsigned *out) {
    if (end - p < 4) return DECLINE;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(p[i]);
        if (h < 0) return DECLINE;
        v = (v << 4) | (unsigned)h;
    }
    *out = v;
    return OK;
}

/* A string at the cursor (on its opening quote): its span; the escapes' syntax checked, a
 * control character or a lone surrogate declined (orjson refuses both). */
static int scan_string(Cursor *c, RawString *s) {
    const char *p = c->p + 1;
    const char *end = c->end;
    s->start = p;
    s->escaped = 0;
    while (p < end) {
#if defined(__SSE2__)
        /* Sixteen bytes at a time to the next quote, backslash or control character. */
        while (end - p >= 16) {
            __m128i x = _mm_loadu_si128((const __m128i *)p);
            __m128i special = _mm_or_si128(
                _mm_or_si128(_mm_cmpeq_epi8(x, _mm_set1_epi8('"')),
                             _mm_cmpeq_epi8(x, _mm_set1_epi8('\\'))),
                _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1F)), x));
            int mask = _mm_movemask_epi8(special);
            if (mask) {
                p += __builtin_ctz((unsigned)mask);
                break;
            }
            p += 16;
        }
        if (p >= end) break;
#endif
        unsigned char ch = (unsigned char)*p;
        if (ch == '"') {
            s->len = p - s->start;
            c->p = p + 1;
            return OK;
        }
        if (ch < 0x20) return DECLINE;
        if (ch == '\\') {
            s->escaped = 1;
            if (p + 1 >= end) return DECLINE;
            char e = p[1];
            if (e == 'u') {
                unsigned u;
                if (read_hex4(p + 2, end, &u) != OK) return DECLINE;
                p += 6;
                if (u >= 0xD800 && u <= 0xDBFF) {
                    unsigned low;
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u') return DECLINE;
                    if (read_hex4(p + 2, end, &low) != OK) return DECLINE;
                    if (low < 0xDC00 || low > 0xDFFF) return DECLINE;
                    p += 6;
                } else if (u >= 0xDC00 && u <= 0xDFFF) {
                    return DECLINE;
                }
                continue;
            }
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' ||
                e == 'r' || e == 't') {
                p += 2;
                continue;
            }
            return DECLINE;
        }
        p++;
    }
    return DECLINE;
}

static void put_utf8(char *out, Py_ssize_t *n, unsigned cp) {
    if (cp < 0x80) {
        out[(*n)++] = (char)cp;
    } else if (cp < 0x800) {
        out[(*n)++] = (char)(0xC0 | (cp >> 6));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out[(*n)++] = (char)(0xE0 | (cp >> 12));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    } else {
        out[(*n)++] = (char)(0xF0 | (cp >> 18));
        out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
        out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[(*n)++] = (char)(0x80 | (cp & 0x3F));
    }
}

/* The string's value as UTF-8 into tmp (already scanned, so its escapes are valid). */
static int unescape(const RawString *s, Buffer *tmp) {
    tmp->len = 0;
    if (buf_reserve(tmp, s->len) < 0) return ERROR; /* never longer than written */
    char *out = tmp->data;
    Py_ssize_t n = 0;
    const char *p = s->start, *end = s->start + s->len;
    while (p < end) {
        if (*p != '\\') {
            out[n++] = *p++;
            continue;
        }
        char e = p[1];
        switch (e) {
        case 'b': out[n++] = '\b'; p += 2; break;
        case 'f': out[n++] = '\f'; p += 2; break;
        case 'n': out[n++] = '\n'; p += 2; break;
        case 'r': out[n++] = '\r'; p += 2; break;
        case 't': out[n++] = '\t'; p += 2; break;
        case 'u': {
            unsigned u, low;
            read_hex4(p + 2, end, &u);
            p += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                read_hex4(p + 2, end, &low);
                p += 6;
                u = 0x10000 + ((u - 0xD800) << 10) + (low - 0xDC00);
            }
            put_utf8(out, &n, u);
            break;
        }
        default: out[n++] = e; p += 2; break; /* " \ / */
        }
    }
    tmp->len = n;
    return OK;
}

static PyObject *make_string(const RawString *s, Buffer *tmp) {
    if (!s->escaped) return PyUnicode_DecodeUTF8(s->start, s->len, NULL);
    if (unescape(s, tmp) != OK) return NULL;
    return PyUnicode_DecodeUTF8(tmp->data, tmp->len, NULL);
}

/* Whether the significant digits of a number (its integer and fraction digits, the leading
 * zeros left out) are at most DBL_MAX's, 17976931348623157: a number of that decimal exponent
 * (308) is then finite for orjson too. */
static int within_dbl_max(const char *int_start, const char *int_end, const char *frac_start,
                          const char *frac_end) {
    static const char max_digits[] = "17976931348623157";
    int i = 0, started = 0;
    for (int part = 0; part < 2; part++) {
        const char *p = part ? frac_start : int_start;
        const char *e = part ? frac_end : int_end;
        for (; p != NULL && p < e; p++) {
            if (!started && *p == '0') continue;
            started = 1;
            if (i < 17) {
                if (*p != max_digits[i]) return *p < max_digits[i];
                i++;
            } else if (*p != '0') {
                return 0; /* more than DBL_MAX's digits: not sure, declined */
            }
        }
    }
    return 1;
}

/* A number at the cursor, its JSON syntax checked; declined when orjson could read it as
 * infinity (and refuse the text): a decimal exponent above 308, or 308 with more than
 * DBL_MAX's digits. */
static int scan_number(Cursor *c, int *is_integer) {
    const char *p = c->p, *end = c->end;
    if (p < end && *p == '-') p++;
    if (p >= end) return DECLINE;
    const char *int_start = p;
    if (*p == '0') {
        p++;
    } else if (*p >= '1' && *p <= '9') {
        while (p < end && *p >= '0' && *p <= '9') p++;
    } else {
        return DECLINE;
    }
    const char *int_end = p;
    const char *frac_start = NULL, *frac_end = NULL;
    long magnitude; /* the decimal exponent of the first significant digit, before the exponent */
    int nonzero = !(int_end - int_start == 1 && *int_start == '0');
    magnitude = nonzero ? (long)(int_end - int_start) - 1 : 0;
    *is_integer = 1;
    if (p < end && *p == '.') {
        *is_integer = 0;
        p++;
        frac_start = p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (!nonzero) {
                magnitude--;
                if (*p != '0') nonzero = 1;
            }
            p++;
        }
        frac_end = p;
        if (p == frac_start) return DECLINE;
    }
    long exponent = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        *is_integer = 0;
        p++;
        int negative = 0;
        if (p < end && (*p == '+' || *p == '-')) negative = (*p++ == '-');
        const char *exp = p;
        while (p < end && *p >= '0' && *p <= '9') {
            if (exponent < 1000000) exponent = exponent * 10 + (*p - '0');
            p++;
        }
        if (p == exp) return DECLINE;
        if (negative) exponent = -exponent;
    }
    if (nonzero) {
        long decimal = magnitude + exponent;
        if (decimal > 308) return DECLINE;
        if (decimal == 308 && !within_dbl_max(int_start, int_end, frac_start, frac_end))
            return DECLINE;
    }
    c->p = p;
    return OK;
}

static int skip_value(Cursor *c, int depth);

static int skip_container(Cursor *c, int depth, char close, int object) {
    if (depth >= MAX_DEPTH) return DECLINE;
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == close) {
        c->p++;
        return OK;
    }
    for (;;) {
        if (object) {
            RawString key;
            if (c->p >= c->end || *c->p != '"') return DECLINE;
            if (scan_string(c, &key) != OK) return DECLINE;
            skip_ws(c);
            if (c->p >= c->end || *c->p != ':') return DECLINE;
            c->p++;
            skip_ws(c);
        }
        int r = skip_value(c, depth + 1);
        if (r != OK) return r;
        r = next_or_close(c, close);
        if (r != MORE) return r;
    }
}

static int match_literal(Cursor *c, const char *word, Py_ssize_t n) {
    if (c->end - c->p < n || memcmp(c->p, word, (size_t)n) != 0) return DECLINE;
    c->p += n;
    return OK;
}

/* Any JSON value at the cursor (whitespace before it skipped), checked and passed over. */
static int skip_value(Cursor *c, int depth) {
    if (c->p >= c->end) return DECLINE;
    switch (*c->p) {
    case '"': {
        RawString s;
        return scan_string(c, &s);
    }
    case '{': return skip_container(c, depth, '}', 1);
    case '[': return skip_container(c, depth, ']', 0);
    case 't': return match_literal(c, "true", 4);
    case 'f': return match_literal(c, "false", 5);
    case 'n': return match_literal(c, "null", 4);
    default: {
        int is_integer;
        return scan_number(c, &is_integer);
    }
    }
}

/* ---------------------------------------------------------------------------------------- */
/* Reading the fields */

typedef struct {
    Buffer tmp;          /* unescaped strings */
    Buffer json;         /* an identity's JSON */
    Shared shared;
} Work;

static int is_null(Cursor *c) {
    if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
        c->p += 4;
        return 1;
    }
    return 0;
}

/* A string-or-null field into slot. */
static int read_string_slot(Cursor *c, Event *ev, int slot, Work *w, int share) {
    if (ev->present[slot]) return DECLINE;
    ev->present[slot] = 1;
    if (is_null(c)) return OK;
    if (c->p >= c->end || *c->p != '"') return DECLINE;
    RawString s;
    if (scan_string(c, &s) != OK) return DECLINE;
    ev->raw[slot] = s.start;
    ev->raw_len[slot] = s.len;
    Shared *sh = &w->shared;
    if (share && sh->value[slot] != NULL && sh->raw_len[slot] == s.len &&
        memcmp(sh->raw[slot], s.start, (size_t)s.len) == 0) {
        Py_INCREF(sh->value[slot]);
        ev->value[slot] = sh->value[slot];
        return OK;
    }
    PyObject *value = make_string(&s, &w->tmp);
    if (value == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
            return DECLINE;
        }
        return ERROR;
    }
    ev->value[slot] = value;
    return OK;
}

/* An array of strings or null (null: the empty tuple) into slot. */
static int read_strings_slot(Cursor *c, Event *ev, int slot, Work *w) {
    if (ev->present[slot]) return DECLINE;
    ev->present[slot] = 1;
    if (is_null(c)) return OK; /* an absent value is the empty tuple, made at the end */
    if (c->p >= c->end || *c->p != '[') return DECLINE;
    const char *start = c->p;
    /* First pass: the span and the count (the strings scanned). */
    Cursor scan = *c;
    scan.p++;
    skip_ws(&scan);
    Py_ssize_t count = 0;
    if (scan.p < scan.end && *scan.p == ']') {
        scan.p++;
    } else {
        for (;;) {
            RawString s;
            if (scan.p >= scan.end || *scan.p != '"') return DECLINE;
            if (scan_string(&scan, &s) != OK) return DECLINE;
            count++;
            int r = next_or_close(&scan, ']');
            if (r == CLOSED) break;
            if (r != MORE) return r;
        }
    }
    ev->raw[slot] = start;
    ev->raw_len[slot] = scan.p - start;
    Shared *sh = &w->shared;
    if (sh->value[slot] != NULL && sh->raw_len[slot] == ev->raw_len[slot] &&
        memcmp(sh->raw[slot], start, (size_t)ev->raw_len[slot]) == 0) {
        Py_INCREF(sh->value[slot]);
        ev->value[slot] = sh->value[slot];
        c->p = scan.p;
        return OK;
    }
    PyObject *tuple = PyTuple_New(count);
    if (tuple == NULL) return ERROR;
    c->p++;
    skip_ws(c);
    for (Py_ssize_t i = 0; i < count; i++) {
        RawString s;
        scan_string(c, &s);
        PyObject *value = make_string(&s, &w->tmp);
        if (value == NULL) {
            Py_DECREF(tuple);
            if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
                PyErr_Clear();
                return DECLINE;
            }
            return ERROR;
        }
        PyTuple_SET_ITEM(tuple, i, value);
        skip_ws(c);
        if (*c->p == ',') {
            c->p++;
            skip_ws(c);
        }
    }
    c->p = scan.p;
    ev->value[slot] = tuple;
    return OK;
}

/* responseStatus.code: an integer or null; declined when orjson would not read it as an int
 * that decode.py takes (a fraction or exponent, beyond 64 bits: the generic path says why). */
static int read_code(Cursor *c, Event *ev) {
    if (ev->present[F_CODE]) return DECLINE;
    ev->present[F_CODE] = 1;
    if (is_null(c)) return OK;
    const char *start = c->p;
    int is_integer;
    if (c->p >= c->end || !(*c->p == '-' || (*c->p >= '0' && *c->p <= '9'))) return DECLINE;
    if (scan_number(c, &is_integer) != OK || !is_integer) return DECLINE;
    Py_ssize_t n = c->p - start;
    const char *d = start;
    int negative = 0;
    if (*d == '-') {
        negative = 1;
        d++;
    }
    if (c->p - d > 19) return DECLINE; /* beyond 64 bits: the generic path decides */
    unsigned long long magnitude = 0;
    for (; d < c->p; d++) magnitude = magnitude * 10 + (unsigned long long)(*d - '0');
    /* What a long long holds; the rest of orjson's range (up to 2**64 - 1) is left to it. */
    if (magnitude > (unsigned long long)LLONG_MAX + (negative ? 1 : 0)) return DECLINE;
    long long value = negative ? (long long)(0ULL - magnitude) : (long long)magnitude;
    ev->raw[F_CODE] = start;
    ev->raw_len[F_CODE] = n;
    ev->value[F_CODE] = PyLong_FromLongLong(value);
    return ev->value[F_CODE] == NULL ? ERROR : OK;
}

/* A key at the cursor (on its quote) that is compared, not made: one written with escapes
 * declines when the object is one whose keys are read (it could be one of them, escaped). */
static int read_key(Cursor *c, RawString *key) {
    if (c->p >= c->end || *c->p != '"') return DECLINE;
    if (scan_string(c, key) != OK) return DECLINE;
    if (key->escaped) return DECLINE;
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':') return DECLINE;
    c->p++;
    skip_ws(c);
    return OK;
}

#define KEY_IS(k, lit) ((k).len == (Py_ssize_t)(sizeof(lit) - 1) && memcmp((k).start, lit, sizeof(lit) - 1) == 0)

/* The members of a nested object, one callback per key; null is an absent object. */
typedef int (*MemberFn)(Cursor *c, const RawString *key, Event *ev, Work *w, int depth);

static int read_object(Cursor *c, Event *ev, Work *w, int depth, MemberFn member) {
    if (depth >= MAX_DEPTH) return DECLINE;
    if (c->p >= c->end || *c->p != '{') return DECLINE;
    c->p++;
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') {
        c->p++;
        return OK;
    }
    for (;;) {
        RawString key;
        int r = read_key(c, &key);
        if (r != OK) return r;
        r = member(c, &key, ev, w, depth + 1);
        if (r != OK) return r;
        r = next_or_close(c, '}');
        if (r != MORE) return r;
    }
}

static int user_member(Cursor *c, const RawString *key, Event *ev, Work *w, int depth) {
    if (KEY_IS(*key, "username")) return read_string_slot(c, ev, F_USERNAME, w, 1);
    if (KEY_IS(*key, "groups")) return read_strings_slot(c, ev, F_GROUPS, w);
    return skip_value(c, depth);
}

static int object_ref_member(Cursor *c, const RawString *key, Event *ev, Work *w, int depth) {
    if (KEY_IS(*key, "resource")) return read_string_slot(c, ev, F_RESOURCE, w, 1);
    if (KEY_IS(*key, "namespace")) return read_string_slot(c, ev, F_NAMESPACE, w, 1);
    return skip_value(c, depth);
}

static int status_member(Cursor *c, const RawString *key, Event *ev, Work *w, int depth) {
    if (KEY_IS(*key, "code")) return read_code(c, ev);
    if (KEY_IS(*key, "message")) return read_string_slot(c, ev, F_MESSAGE, w, 1);
    return skip_value(c, depth);
}

static int annotations_member(Cursor *c, const RawString *key, Event *ev, Work *w, int depth) {
    if (KEY_IS(*key, "authorization.k8s.io/decision"))
        return read_string_slot(c, ev, F_DECISION, w, 1);
    if (KEY_IS(*key, "enumwatch.io/cluster")) return read_string_slot(c, ev, F_CLUSTER, w, 1);
    return skip_value(c, depth);
}

/* A nested object read once (a second one with the same key declines), or null. */
static int read_nested(Cursor *c, Event *ev, Work *w, int depth, int *seen, MemberFn member) {
    if (*seen) return DECLINE;
    *seen = 1;
    if (is_null(c)) return OK;
    return read_object(c, ev, w, depth, member);
}

static int event_member(Cursor *c, const RawString *key, Event *ev, Work *w, int depth) {
    switch (key->len) {
    case 4:
        if (KEY_IS(*key, "kind")) return read_string_slot(c, ev, F_KIND, w, 1);
        if (KEY_IS(*key, "verb")) return read_string_slot(c, ev, F_VERB, w, 1);
        if (KEY_IS(*key, "user"))
            return read_nested(c, ev, w, depth, &ev->seen_user, user_member);
        break;
    case 5:
        if (KEY_IS(*key, "level")) return read_string_slot(c, ev, F_LEVEL, w, 1);
        if (KEY_IS(*key, "stage")) return read_string_slot(c, ev, F_STAGE, w, 1);
        break;
    case 7:
        if (KEY_IS(*key, "auditID")) return read_string_slot(c, ev, F_AUDIT_ID, w, 0);
        break;
    case 9:
        if (KEY_IS(*key, "sourceIPs")) return read_strings_slot(c, ev, F_SOURCE_IPS, w);
        if (KEY_IS(*key, "userAgent")) return read_string_slot(c, ev, F_USER_AGENT, w, 1);
        if (KEY_IS(*key, "objectRef"))
            return read_nested(c, ev, w, depth, &ev->seen_object_ref, object_ref_member);
        break;
    case 10:
        if (KEY_IS(*key, "requestURI")) return read_string_slot(c, ev, F_REQUEST_URI, w, 1);
        break;
    case 11:
        if (KEY_IS(*key, "annotations"))
            return read_nested(c, ev, w, depth, &ev->seen_annotations, annotations_member);
        break;
    case 14:
        if (KEY_IS(*key, "responseStatus"))
            return read_nested(c, ev, w, depth, &ev->seen_status, status_member);
        if (KEY_IS(*key, "stageTimestamp"))
            return read_string_slot(c, ev, F_STAGE_TIMESTAMP, w, 0);
        break;
    case 24:
        if (KEY_IS(*key, "requestReceivedTimestamp"))
            return read_string_slot(c, ev, F_RECEIVED_TIMESTAMP, w, 0);
        break;
    }
    return skip_value(c, depth);
}

static void event_clear(Event *ev) {
    for (int i = 0; i < N_SLOTS; i++) Py_CLEAR(ev->value[i]);
}

/* One Event object at the cursor. */
static int read_event(Cursor *c, Event *ev, Work *w, int depth) {
    memset(ev, 0, sizeof(*ev));
    int r = read_object(c, ev, w, depth, event_member);
    if (r != OK) return r;
    /* Only an Event: anything else is for the generic path to name. */
    if (ev->value[F_KIND] == NULL || ev->raw_len[F_KIND] != 5 ||
        memcmp(ev->raw[F_KIND], "Event", 5) != 0)
        return DECLINE;
    return OK;
}

/* ---------------------------------------------------------------------------------------- */
/* BLAKE2b (RFC 7693), unkeyed, for the identities' 16-byte digests. The same function as
 * hashlib.blake2b(digest_size=16) (enumwatch/audit/identity.py), which the tests compare it
 * with; here because three method calls on a hashlib object per event cost four times the
 * hashing itself. */

typedef struct {
    uint64_t h[8];
    uint64_t t[2];
    uint8_t b[128];
    size_t c;
    size_t outlen;
} Blake2b;

static const uint64_t blake2b_iv[8] = {
    0x6A09E667F3BCC908ULL, 0xBB67AE8584CAA73BULL, 0x3C6EF372FE94F82BULL, 0xA54FF53A5F1D36F1ULL,
    0x510E527FADE682D1ULL, 0x9B05688C2B3E6C1FULL, 0x1F83D9ABFB41BD6BULL, 0x5BE0CD19137E2179ULL,
};

static const uint8_t blake2b_sigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    return (uint64_t)p[0] | ((uint64_t)p[1] << 8) | ((uint64_t)p[2] << 16) |
           ((uint64_t)p[3] << 24) | ((uint64_t)p[4] << 32) | ((uint64_t)p[5] << 40) |
           ((uint64_t)p[6] << 48) | ((uint64_t)p[7] << 56);
}

#define B2B_G(a, b, c, d, x, y)          \
    do {                                 \
        v[a] = v[a] + v[b] + (x);        \
        v[d] = rotr64(v[d] ^ v[a], 32);  \
        v[c] = v[c] + v[d];              \
        v[b] = rotr64(v[b] ^ v[c], 24);  \
        v[a] = v[a] + v[b] + (y);        \
        v[d] = rotr64(v[d] ^ v[a], 16);  \
        v[c] = v[c] + v[d];              \
        v[b] = rotr64(v[b] ^ v[c], 63);  \
    } while (0)

__attribute__((optimize("unroll-loops"))) static void blake2b_compress(Blake2b *ctx, int last) {
    uint64_t v[16], m[16];
    for (int i = 0; i < 8; i++) {
        v[i] = ctx->h[i];
        v[i + 8] = blake2b_iv[i];
    }
    v[12] ^= ctx->t[0];
    v[13] ^= ctx->t[1];
    if (last) v[14] = ~v[14];
    for (int i = 0; i < 16; i++) m[i] = load64(&ctx->b[8 * i]);
    for (int i = 0; i < 12; i++) {
        const uint8_t *s = blake2b_sigma[i];
        B2B_G(0, 4, 8, 12, m[s[0]], m[s[1]]);
        B2B_G(1, 5, 9, 13, m[s[2]], m[s[3]]);
        B2B_G(2, 6, 10, 14, m[s[4]], m[s[5]]);
        B2B_G(3, 7, 11, 15, m[s[6]], m[s[7]]);
        B2B_G(0, 5, 10, 15, m[s[8]], m[s[9]]);
        B2B_G(1, 6, 11, 12, m[s[10]], m[s[11]]);
        B2B_G(2, 7, 8, 13, m[s[12]], m[s[13]]);
        B2B_G(3, 4, 9, 14, m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) ctx->h[i] ^= v[i] ^ v[i + 8];
}

static void blake2b_init(Blake2b *ctx, size_t outlen) {
    for (int i = 0; i < 8; i++) ctx->h[i] = blake2b_iv[i];
    ctx->h[0] ^= 0x01010000ULL ^ (uint64_t)outlen; /* no key, fanout 1, depth 1 */
    ctx->t[0] = ctx->t[1] = 0;
    ctx->c = 0;
    ctx->outlen = outlen;
}

static void blake2b_update(Blake2b *ctx, const uint8_t *in, size_t n) {
    while (n > 0) {
        if (ctx->c == 128) {
            ctx->t[0] += 128;
            if (ctx->t[0] < 128) ctx->t[1]++;
            blake2b_compress(ctx, 0);
            ctx->c = 0;
        }
        size_t take = 128 - ctx->c;
        if (take > n) take = n;
        memcpy(ctx->b + ctx->c, in, take);
        ctx->c += take;
        in += take;
        n -= take;
    }
}

static void blake2b_final(Blake2b *ctx, uint8_t *out) {
    ctx->t[0] += ctx->c;
    if (ctx->t[0] < ctx->c) ctx->t[1]++;
    while (ctx->c < 128) ctx->b[ctx->c++] = 0;
    blake2b_compress(ctx, 1);
    for (size_t i = 0; i < ctx->outlen; i++)
        out[i] = (uint8_t)((ctx->h[i >> 3] >> (8 * (i & 7))) & 0xFF);
}

/* The 16-byte BLAKE2b digest of data (as hashlib.blake2b(data, digest_size=16).digest()). */
static PyObject *blake2b_16(const char *data, Py_ssize_t n) {
    Blake2b ctx;
    uint8_t out[16];
    blake2b_init(&ctx, 16);
    blake2b_update(&ctx, (const uint8_t *)data, (size_t)n);
    blake2b_final(&ctx, out);
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

/* ---------------------------------------------------------------------------------------- */
/* The identity: the fields' JSON as orjson.dumps writes it, hashed */

static int json_escaped(Buffer *b, const char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_byte(b, '"') < 0) return -1;
    Py_ssize_t run = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\') continue;
        if (buf_put(b, s + run, i - run) < 0) return -1;
        run = i + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        Py_ssize_t len = 2;
        switch (ch) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\t': esc[1] = 't'; break;
        case '\n': esc[1] = 'n'; break;
        case '\f': esc[1] = 'f'; break;
        case '\r': esc[1] = 'r'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[ch >> 4];
            esc[5] = hex[ch & 0xF];
            len = 6;
        }
        if (buf_put(b, esc, len) < 0) return -1;
    }
    if (buf_put(b, s + run, n - run) < 0) return -1;
    return buf_byte(b, '"');
}

/* One string value as orjson writes it: the bytes as written when it had no escapes (then it
 * holds no quote, backslash or control character: exactly orjson's), else its value escaped. */
static int json_string(Buffer *b, PyObject *value, const char *raw, Py_ssize_t raw_len,
                       int escaped) {
    if (!escaped && raw != NULL) {
        if (buf_byte(b, '"') < 0 || buf_put(b, raw, raw_len) < 0) return -1;
        return buf_byte(b, '"');
    }
    if (PyUnicode_IS_ASCII(value))  /* its characters are its UTF-8: nothing made */
        return json_escaped(b, PyUnicode_DATA(value), PyUnicode_GET_LENGTH(value));
    /* A temporary copy, not PyUnicode_AsUTF8's (kept on the string as long as it lives: a
     * window would hold every such value twice). */
    PyObject *utf8 = PyUnicode_AsUTF8String(value);
    if (utf8 == NULL) return -1;
    int r = json_escaped(b, PyBytes_AS_STRING(utf8), PyBytes_GET_SIZE(utf8));
    Py_DECREF(utf8);
    return r;
}

static int has_backslash(const char *s, Py_ssize_t n) {
    return n > 0 && memchr(s, '\\', (size_t)n) != NULL;
}

static int json_field(Buffer *b, Event *ev, int slot, PyObject *value) {
    if (value == NULL || value == Py_None) return buf_put(b, "null", 4);
    if (slot == F_CODE) {
        /* orjson writes the integer, not the text it was read from ("-0" is 0). */
        char text[32];
        long long code = PyLong_AsLongLong(value);
        if (code == -1 && PyErr_Occurred()) return -1;
        char *q = text + sizeof(text);
        unsigned long long magnitude = code < 0 ? 0ULL - (unsigned long long)code : (unsigned long long)code;
        do {
            *--q = (char)('0' + magnitude % 10);
            magnitude /= 10;
        } while (magnitude);
        if (code < 0) *--q = '-';
        return buf_put(b, q, text + sizeof(text) - q);
    }
    if (PyTuple_Check(value)) {
        if (buf_byte(b, '[') < 0) return -1;
        Py_ssize_t count = PyTuple_GET_SIZE(value);
        for (Py_ssize_t i = 0; i < count; i++) {
            if (i && buf_byte(b, ',') < 0) return -1;
            if (json_string(b, PyTuple_GET_ITEM(value, i), NULL, 0, 1) < 0) return -1;
        }
        return buf_byte(b, ']');
    }
    const char *raw = ev->raw[slot];
    Py_ssize_t raw_len = ev->raw_len[slot];
    return json_string(b, value, raw, raw_len, raw == NULL || has_backslash(raw, raw_len));
}

static PyObject *identity_of(Event *ev, PyObject **fields, Buffer *b, int pinned) {
    PyObject *audit_id = fields[F_AUDIT_ID];
    if (audit_id == Py_None || PyUnicode_GET_LENGTH(audit_id) == 0) Py_RETURN_NONE;
    b->len = 0;
    int count = fields[F_CLUSTER] == Py_None ? F_CLUSTER : N_FIELDS;
    if (buf_byte(b, '[') < 0) return NULL;
    for (int i = 0; i < count; i++) {
        if (i && buf_byte(b, ',') < 0) return NULL;
        if (i == F_CLUSTER && pinned) {
            if (json_string(b, fields[i], NULL, 0, 1) < 0) return NULL;
        } else if (json_field(b, ev, i, fields[i]) < 0) {
            return NULL;
        }
    }
    if (buf_byte(b, ']') < 0) return NULL;
    return blake2b_16(b->data, b->len);
}

/* ---------------------------------------------------------------------------------------- */
/* The time: stageTimestamp in the apiserver's shape, YYYY-MM-DDTHH:MM:SS[.ffffff]Z */

static int digits(const char *p, int n, int *out) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') return 0;
        v = v * 10 + (p[i] - '0');
    }
    *out = v;
    return 1;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian). */
static long long days_from_civil(int y, int m, int d) {
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long yoe = y - era * 400;
    long long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    long long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int y, int m) {
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return 29;
    return days[m - 1];
}

/* 1 and the epoch seconds when the raw text has the shape; 0 to leave it to Python. */
static int fast_timestamp(const char *s, Py_ssize_t n, double *out) {
    if (n != 20 && n != 27) return 0;
    if (s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' ||
        s[n - 1] != 'Z')
        return 0;
    int y, mo, d, h, mi, se, us = 0;
    if (!digits(s, 4, &y) || !digits(s + 5, 2, &mo) || !digits(s + 8, 2, &d) ||
        !digits(s + 11, 2, &h) || !digits(s + 14, 2, &mi) || !digits(s + 17, 2, &se))
        return 0;
    if (n == 27) {
        if (s[19] != '.' || !digits(s + 20, 6, &us)) return 0;
    }
    if (y < 1 || mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 ||
        se > 59)
        return 0;
    long long seconds = days_from_civil(y, mo, d) * 86400LL + h * 3600 + mi * 60 + se;
    long long micros = seconds * 1000000LL + us;
    /* Python's timedelta.total_seconds(): microseconds / 10**6, correctly rounded; exact here
     * because |micros| < 2**53 for these years and IEEE division is correctly rounded. */
    if (micros > (1LL << 53) || micros < -(1LL << 53)) return 0;
    *out = (double)micros / 1e6;
    return 1;
}

/* ---------------------------------------------------------------------------------------- */
/* Results */

typedef struct {
    PyObject *fields;      /* list of tuples; decode_events: of events, or (fields, identity) */
    PyObject *times;       /* list of float or None (decode only) */
    PyObject *identities;  /* list of bytes or None; NULL when not asked (or decode_events) */
    PyObject *clusters;    /* set of the clusters read (unpinned) */
    int events;            /* decode_events: make the events themselves */
    Py_ssize_t pending;    /* decode_events: how many are (fields, identity) for Python */
} Results;

static PyObject *EMPTY_TUPLE;

/* The event class's layout, given once by configure(): for each of its slots, where it is in
 * the object and what fills it (a field's index, or one of the SOURCE_ values). */
#define SOURCE_TIME (-1)
#define SOURCE_NONE (-2)
#define SOURCE_IDENTITY (-3)
#define MAX_ATTRIBUTES 32
static PyTypeObject *EVENT_TYPE;
static Py_ssize_t EVENT_OFFSETS[MAX_ATTRIBUTES];
static int EVENT_SOURCES[MAX_ATTRIBUTES];
static Py_ssize_t EVENT_COUNT;

/* A new event of the configured class, its slots stored as the class's own slot descriptors
 * store them (what enumwatch.audit.event.event_from_fields does, without the interpreter). */
static PyObject *make_event(PyObject **fields, PyObject *time, PyObject *identity) {
    PyObject *event = EVENT_TYPE->tp_alloc(EVENT_TYPE, 0);
    if (event == NULL) return NULL;
    for (Py_ssize_t k = 0; k < EVENT_COUNT; k++) {
        int source = EVENT_SOURCES[k];
        PyObject *value = source >= 0 ? fields[source]
                          : source == SOURCE_TIME ? time
                          : source == SOURCE_IDENTITY ? identity
                          : Py_None;
        *(PyObject **)((char *)event + EVENT_OFFSETS[k]) = Py_NewRef(value);
    }
    return event;
}

static PyObject *fields_tuple(PyObject **fields) {
    PyObject *tuple = PyTuple_New(N_FIELDS);
    if (tuple == NULL) return NULL;
    for (int i = 0; i < N_FIELDS; i++) PyTuple_SET_ITEM(tuple, i, Py_NewRef(fields[i]));
    return tuple;
}

/* decode: the fields' tuple, the time and the identity, each in its list. */
static int emit_fields(Event *ev, Results *res, Work *w, PyObject *pinned, PyObject **fields) {
    PyObject *tuple = fields_tuple(fields);
    if (tuple == NULL) return ERROR;
    int r = PyList_Append(res->fields, tuple);
    Py_DECREF(tuple);
    if (r < 0) return ERROR;

    PyObject *time = NULL;
    double seconds;
    if (ev->value[F_STAGE_TIMESTAMP] != NULL &&
        fast_timestamp(ev->raw[F_STAGE_TIMESTAMP], ev->raw_len[F_STAGE_TIMESTAMP], &seconds)) {
        time = PyFloat_FromDouble(seconds);
        if (time == NULL) return ERROR;
    } else {
        time = Py_NewRef(Py_None);
    }
    r = PyList_Append(res->times, time);
    Py_DECREF(time);
    if (r < 0) return ERROR;

    if (res->identities != NULL) {
        PyObject *identity = identity_of(ev, fields, &w->json, pinned != Py_None);
        if (identity == NULL) return ERROR;
        r = PyList_Append(res->identities, identity);
        Py_DECREF(identity);
        if (r < 0) return ERROR;
    }
    return OK;
}

/* decode_events: the event itself when its time is read here, else (fields, identity). */
static int emit_event(Event *ev, Results *res, Work *w, PyObject *pinned, PyObject **fields) {
    PyObject *identity = identity_of(ev, fields, &w->json, pinned != Py_None);
    if (identity == NULL) return ERROR;
    PyObject *item;
    double seconds;
    if (ev->value[F_STAGE_TIMESTAMP] != NULL &&
        fast_timestamp(ev->raw[F_STAGE_TIMESTAMP], ev->raw_len[F_STAGE_TIMESTAMP], &seconds)) {
        PyObject *time = PyFloat_FromDouble(seconds);
        if (time == NULL) {
            Py_DECREF(identity);
            return ERROR;
        }
        item = make_event(fields, time, identity);
        Py_DECREF(time);
    } else {
        PyObject *tuple = fields_tuple(fields);
        item = tuple == NULL ? NULL : PyTuple_Pack(2, tuple, identity);
        Py_XDECREF(tuple);
        res->pending++;
    }
    Py_DECREF(identity);
    if (item == NULL) return ERROR;
    int r = PyList_Append(res->fields, item);
    Py_DECREF(item);
    return r < 0 ? ERROR : OK;
}

/* The event's tuple appended, its time and identity with it; the values kept as shared. */
static int emit(Event *ev, Results *res, Work *w, PyObject *pinned) {
    PyObject *fields[N_FIELDS];
    for (int i = 0; i < N_FIELDS; i++) {
        PyObject *v = ev->value[i];
        if (v == NULL) v = (i == F_GROUPS || i == F_SOURCE_IPS) ? EMPTY_TUPLE : Py_None;
        fields[i] = v;
    }
    if (pinned != Py_None) {
        fields[F_CLUSTER] = pinned;
    } else if (ev->value[F_CLUSTER] != NULL) {
        if (PySet_Add(res->clusters, ev->value[F_CLUSTER]) < 0) return ERROR;
    }
    int r;
    if (res->events) {
        r = emit_event(ev, res, w, pinned, fields);
        if (r != OK) return r;
    } else {
        r = emit_fields(ev, res, w, pinned, fields);
        if (r != OK) return r;
    }
    /* Shared with the next event: the values now held by the tuple in the results. */
    for (int i = 0; i < N_SLOTS; i++) {
        if (ev->value[i] != NULL && i != F_AUDIT_ID && i != F_STAGE_TIMESTAMP &&
            i != F_RECEIVED_TIMESTAMP) {
            Py_INCREF(ev->value[i]);
            Py_XSETREF(w->shared.value[i], ev->value[i]);
            w->shared.raw[i] = ev->raw[i];
            w->shared.raw_len[i] = ev->raw_len[i];
        }
    }
    return OK;
}

/* An EventList's items: {"kind":"EventList", "items":[Event, ...], ...}. */
static int read_list(Cursor *c, Results *res, Work *w, PyObject *pinned) {
    if (c->p >= c->end || *c->p != '{') return DECLINE;
    c->p++;
    skip_ws(c);
    int seen_kind = 0, seen_items = 0, is_list = 0;
    if (c->p < c->end && *c->p == '}') return DECLINE;
    for (;;) {
        RawString key;
        int r = read_key(c, &key);
        if (r != OK) return r;
        if (KEY_IS(key, "kind")) {
            RawString kind;
            if (seen_kind) return DECLINE;
            seen_kind = 1;
            if (c->p >= c->end || *c->p != '"' || scan_string(c, &kind) != OK) return DECLINE;
            is_list = !kind.escaped && KEY_IS(kind, "EventList");
        } else if (KEY_IS(key, "items")) {
            if (seen_items) return DECLINE;
            seen_items = 1;
            if (c->p >= c->end || *c->p != '[') return DECLINE;
            c->p++;
            skip_ws(c);
            if (c->p < c->end && *c->p == ']') {
                c->p++;
            } else {
                for (;;) {
                    Event ev;
                    r = read_event(c, &ev, w, 2);
                    if (r == OK) r = emit(&ev, res, w, pinned);
                    event_clear(&ev);
                    if (r != OK) return r;
                    r = next_or_close(c, ']');
                    if (r == CLOSED) break;
                    if (r != MORE) return r;
                }
            }
        } else {
            r = skip_value(c, 1);
            if (r != OK) return r;
        }
        r = next_or_close(c, '}');
        if (r == CLOSED) break;
        if (r != MORE) return r;
    }
    return (is_list && seen_items) ? OK : DECLINE;
}

/* The one pass of decode and decode_events (events: the latter). */
static PyObject *run(PyObject *data, PyObject *is_list_arg, PyObject *pinned, int with_identities,
                     int events) {
    Py_buffer view;
    if (events && EVENT_TYPE == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "decode_events before configure");
        return NULL;
    }
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    int is_list = PyObject_IsTrue(is_list_arg);
    if (is_list < 0 || with_identities < 0 || (pinned != Py_None && !PyUnicode_Check(pinned))) {
        PyBuffer_Release(&view);
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "pinned: str or None");
        return NULL;
    }
    Results res = {PyList_New(0), events ? NULL : PyList_New(0), NULL, PySet_New(NULL), events, 0};
    if (with_identities && !events) res.identities = PyList_New(0);
    Work w;
    memset(&w, 0, sizeof(w));
    PyObject *out = NULL;
    if (res.fields == NULL || (!events && res.times == NULL) || res.clusters == NULL ||
        (with_identities && !events && res.identities == NULL))
        goto done;
    Cursor c = {(const char *)view.buf, (const char *)view.buf + view.len};
    skip_ws(&c);
    int r;
    if (is_list) {
        r = read_list(&c, &res, &w, pinned);
    } else {
        Event ev;
        r = read_event(&c, &ev, &w, 0);
        if (r == OK) r = emit(&ev, &res, &w, pinned);
        event_clear(&ev);
    }
    if (r == OK) {
        skip_ws(&c);
        if (c.p != c.end) r = DECLINE;
    }
    if (r == ERROR) goto done;
    if (r == DECLINE) {
        out = Py_NewRef(Py_None);
        goto done;
    }
    if (events)
        out = Py_BuildValue("(OnO)", res.fields, res.pending, res.clusters);
    else
        out = PyTuple_Pack(4, res.fields, res.times,
                           res.identities != NULL ? res.identities : Py_None, res.clusters);
done:
    Py_XDECREF(res.fields);
    Py_XDECREF(res.times);
    Py_XDECREF(res.identities);
    Py_XDECREF(res.clusters);
    for (int i = 0; i < N_SLOTS; i++) Py_XDECREF(w.shared.value[i]);
    PyMem_Free(w.tmp.data);
    PyMem_Free(w.json.data);
    PyBuffer_Release(&view);
    return out;
}

static PyObject *decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "decode(data, is_list, pinned, identities)");
        return NULL;
    }
    return run(args[0], args[1], args[2], PyObject_IsTrue(args[3]), 0);
}

static PyObject *decode_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "decode_events(data, is_list, pinned)");
        return NULL;
    }
    return run(args[0], args[1], args[2], 1, 1);
}

static PyObject *configure(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyType_Check(args[0]) || !PyTuple_Check(args[1]) ||
        !PyTuple_Check(args[2]) || PyTuple_GET_SIZE(args[1]) != PyTuple_GET_SIZE(args[2]) ||
        PyTuple_GET_SIZE(args[1]) > MAX_ATTRIBUTES) {
        PyErr_SetString(PyExc_TypeError, "configure(event_type, attributes, sources)");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[0];
    Py_ssize_t count = PyTuple_GET_SIZE(args[1]);
    Py_ssize_t offsets[MAX_ATTRIBUTES];
    int sources[MAX_ATTRIBUTES];
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *descr = PyObject_GetAttr((PyObject *)type, PyTuple_GET_ITEM(args[1], k));
        if (descr == NULL) return NULL;
        int is_slot = PyObject_TypeCheck(descr, &PyMemberDescr_Type);
        PyMemberDef *member = is_slot ? ((PyMemberDescrObject *)descr)->d_member : NULL;
        Py_DECREF(descr);
        if (member == NULL || member->type != T_OBJECT_EX || (member->flags & READONLY) ||
            member->offset <= 0 || member->offset > type->tp_basicsize - (Py_ssize_t)sizeof(PyObject *)) {
            PyErr_Format(PyExc_TypeError, "%R is not a writable object slot of %s",
                         PyTuple_GET_ITEM(args[1], k), type->tp_name);
            return NULL;
        }
        long source = PyLong_AsLong(PyTuple_GET_ITEM(args[2], k));
        if (source == -1 && PyErr_Occurred()) return NULL;
        if (source < SOURCE_IDENTITY || source >= N_FIELDS) {
            PyErr_Format(PyExc_ValueError, "no such source: %ld", source);
            return NULL;
        }
        offsets[k] = member->offset;
        sources[k] = (int)source;
    }
    Py_INCREF(type);
    Py_XSETREF(EVENT_TYPE, type);
    memcpy(EVENT_OFFSETS, offsets, sizeof(offsets));
    memcpy(EVENT_SOURCES, sources, sizeof(sources));
    EVENT_COUNT = count;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL,
     "decode(data, is_list, pinned, identities) -> (fields, times, identities, clusters) | None\n\n"
     "The typed decoder's one pass over an Event (is_list false) or an EventList body: each\n"
     "event's EventFields tuple (pinned, when a str, as its cluster), its time (epoch seconds\n"
     "when its stageTimestamp has the apiserver's shape, else None), its identity (a list\n"
     "only when identities is true; None for an event without an auditID) and the set of\n"
     "the clusters the events named. None when anything is outside what it reads exactly as\n"
     "the generic path: that path decides."},
    {"decode_events", (PyCFunction)(void (*)(void))decode_events, METH_FASTCALL,
     "decode_events(data, is_list, pinned) -> (items, pending, clusters) | None\n\n"
     "decode's pass, making each event itself (of the class given to configure) when its time\n"
     "is read here; an event whose time is Python's to pick is left as (fields, identity),\n"
     "pending of them in items."},
    {"configure", (PyCFunction)(void (*)(void))configure, METH_FASTCALL,
     "configure(event_type, attributes, sources)\n\n"
     "The class decode_events makes, and for each of its slots (attributes: their names)\n"
     "what fills it (sources: a field's index in EventFields order, -1 the time, -2 None,\n"
     "-3 the identity). Every name must be a writable slot of the class."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "enumwatch.audit._typed",
    "The typed decoder of apiserver audit events (see enumwatch.audit.decode).", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__typed(void) {
    EMPTY_TUPLE = PyTuple_New(0);
    if (EMPTY_TUPLE == NULL) return NULL;
    return PyModule_Create(&module);
}

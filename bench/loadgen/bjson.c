/*
 * bjson.c: a minimal JSON reader for the Bayeux messages the servers send,
 * and a JSON string escaper. Only what the load generator needs to judge a
 * delivery: channel, clientId, successful, error, advice.reconnect,
 * data.seq and data.t, ext.offset, ext.epoch and ext.recovered. One thread.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bjson.h"

static void jws(jp_t *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int jfail(jp_t *j)
{
    j->err = 1;
    return -1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int jhex4(jp_t *j, uint32_t *out)
{
    if (j->end - j->p < 4)
        return jfail(j);
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval(j->p[i]);
        if (h < 0)
            return jfail(j);
        v = v * 16 + (uint32_t)h;
    }
    j->p += 4;
    *out = v;
    return 0;
}

static int utf8_put(char *o, uint32_t v)
{
    if (v < 0x80) {
        o[0] = (char)v;
        return 1;
    }
    if (v < 0x800) {
        o[0] = (char)(0xC0 | (v >> 6));
        o[1] = (char)(0x80 | (v & 63));
        return 2;
    }
    if (v < 0x10000) {
        o[0] = (char)(0xE0 | (v >> 12));
        o[1] = (char)(0x80 | ((v >> 6) & 63));
        o[2] = (char)(0x80 | (v & 63));
        return 3;
    }
    o[0] = (char)(0xF0 | (v >> 18));
    o[1] = (char)(0x80 | ((v >> 12) & 63));
    o[2] = (char)(0x80 | ((v >> 6) & 63));
    o[3] = (char)(0x80 | (v & 63));
    return 4;
}

/* Writes s as the inside of a JSON string (no quotes); 0, or -1 when it does not fit. */
int json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char tmp[8];
        size_t k;
        if (c == '"' || c == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)c;
            k = 2;
        } else if (c < 0x20) {
            k = (size_t)snprintf(tmp, sizeof tmp, "\\u%04x", c);
        } else {
            tmp[0] = (char)c;
            k = 1;
        }
        if (n + k >= cap)
            return -1;
        memcpy(out + n, tmp, k);
        n += k;
    }
    out[n] = 0;
    return 0;
}

/* Reads a string at j->p (which must be '"'), unescaping into out (truncated
 * to cap-1 bytes, NUL-terminated; out may be NULL to skip). */
static int jstring(jp_t *j, char *out, size_t cap)
{
    size_t n = 0;
    if (j->p >= j->end || *j->p != '"')
        return jfail(j);
    j->p++;
    while (j->p < j->end) {
        unsigned char c = (unsigned char)*j->p++;
        if (c == '"') {
            if (out)
                out[n < cap ? n : cap - 1] = 0;
            return 0;
        }
        if (c < 0x20)
            return jfail(j);
        if (c == '\\') {
            if (j->p >= j->end)
                return jfail(j);
            char e = *j->p++;
            switch (e) {
            case '"': case '\\': case '/': c = (unsigned char)e; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': {
                uint32_t v;
                if (jhex4(j, &v))
                    return -1;
                if (v >= 0xD800 && v < 0xDC00) {     /* a surrogate pair */
                    uint32_t lo;
                    if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                        return jfail(j);
                    j->p += 2;
                    if (jhex4(j, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return jfail(j);
                    v = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
                }
                char u[4];
                int un = utf8_put(u, v);
                for (int i = 0; i < un - 1; i++)
                    if (out && n + 1 < cap)
                        out[n++] = u[i];
                c = (unsigned char)u[un - 1];
                break;
            }
            default:
                return jfail(j);
            }
        }
        if (out && n + 1 < cap)
            out[n++] = (char)c;
    }
    return jfail(j);
}

static int jliteral(jp_t *j, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
        return jfail(j);
    j->p += n;
    return 0;
}

static int jnumber(jp_t *j, int64_t *out, int *is_int)
{
    const char *s = j->p;
    int integral = 1;
    int64_t v = 0;
    int neg = 0;
    if (j->p < j->end && *j->p == '-') {
        neg = 1;
        j->p++;
    }
    if (j->p >= j->end || *j->p < '0' || *j->p > '9')
        return jfail(j);
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
        v = v * 10 + (*j->p - '0');
        j->p++;
    }
    if (j->p < j->end && *j->p == '.') {
        integral = 0;
        j->p++;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        integral = 0;
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
            j->p++;
    }
    if (j->p == s)
        return jfail(j);
    if (out)
        *out = neg ? -v : v;
    if (is_int)
        *is_int = integral;
    return 0;
}

static int jskip(jp_t *j, int depth)
{
    if (depth > 64)
        return jfail(j);
    jws(j);
    if (j->p >= j->end)
        return jfail(j);
    char c = *j->p;
    if (c == '"')
        return jstring(j, NULL, 0);
    if (c == 't')
        return jliteral(j, "true");
    if (c == 'f')
        return jliteral(j, "false");
    if (c == 'n')
        return jliteral(j, "null");
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->p++;
        jws(j);
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return 0;
        }
        for (;;) {
            if (c == '{') {
                jws(j);
                if (jstring(j, NULL, 0))
                    return -1;
                jws(j);
                if (j->p >= j->end || *j->p != ':')
                    return jfail(j);
                j->p++;
            }
            if (jskip(j, depth + 1))
                return -1;
            jws(j);
            if (j->p >= j->end)
                return jfail(j);
            if (*j->p == ',') {
                j->p++;
                continue;
            }
            if (*j->p == close) {
                j->p++;
                return 0;
            }
            return jfail(j);
        }
    }
    return jnumber(j, NULL, NULL);
}

/* Iterates the members of the object at j->p; calls fn(key) positioned at
 * the value, which fn must consume. */
typedef int (*jmember_fn)(jp_t *j, const char *key, void *ctx);

static int jobject(jp_t *j, jmember_fn fn, void *ctx)
{
    char key[64];
    jws(j);
    if (j->p >= j->end || *j->p != '{')
        return jfail(j);
    j->p++;
    jws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
        return 0;
    }
    for (;;) {
        jws(j);
        if (jstring(j, key, sizeof key))
            return -1;
        jws(j);
        if (j->p >= j->end || *j->p != ':')
            return jfail(j);
        j->p++;
        jws(j);
        if (fn(j, key, ctx))
            return -1;
        jws(j);
        if (j->p >= j->end)
            return jfail(j);
        if (*j->p == ',') {
            j->p++;
            continue;
        }
        if (*j->p == '}') {
            j->p++;
            return 0;
        }
        return jfail(j);
    }
}

static int data_member(jp_t *j, const char *key, void *ctx)
{
    bmsg_t *m = ctx;
    int is_int = 0;
    if (strcmp(key, "seq") == 0 && j->p < j->end && (*j->p == '-' || (*j->p >= '0' && *j->p <= '9'))) {
        if (jnumber(j, &m->seq, &is_int))
            return -1;
        m->has_seq = is_int;
        return 0;
    }
    if (strcmp(key, "t") == 0 && j->p < j->end && (*j->p == '-' || (*j->p >= '0' && *j->p <= '9'))) {
        if (jnumber(j, &m->t, &is_int))
            return -1;
        m->has_t = is_int;
        return 0;
    }
    return jskip(j, 2);
}

static int advice_member(jp_t *j, const char *key, void *ctx)
{
    bmsg_t *m = ctx;
    if (strcmp(key, "reconnect") == 0 && j->p < j->end && *j->p == '"')
        return jstring(j, m->reconnect, sizeof m->reconnect);
    return jskip(j, 2);
}

static int ext_member(jp_t *j, const char *key, void *ctx)
{
    bmsg_t *m = ctx;
    char c = j->p < j->end ? *j->p : 0;
    if (strcmp(key, "offset") == 0 && c >= '0' && c <= '9') {
        int64_t v;
        int is_int = 0;
        if (jnumber(j, &v, &is_int))
            return -1;
        m->has_offset = is_int;
        m->offset = (uint64_t)v;
        return 0;
    }
    if (strcmp(key, "epoch") == 0 && c == '"')
        return jstring(j, m->epoch, sizeof m->epoch);
    if (strcmp(key, "recovered") == 0 && (c == 't' || c == 'f')) {
        m->recovered = c == 't';
        return jliteral(j, c == 't' ? "true" : "false");
    }
    return jskip(j, 2);
}

static int msg_member(jp_t *j, const char *key, void *ctx)
{
    bmsg_t *m = ctx;
    char c = j->p < j->end ? *j->p : 0;
    if (strcmp(key, "channel") == 0 && c == '"')
        return jstring(j, m->channel, sizeof m->channel);
    if (strcmp(key, "clientId") == 0 && c == '"')
        return jstring(j, m->client_id, sizeof m->client_id);
    if (strcmp(key, "error") == 0 && c == '"')
        return jstring(j, m->error, sizeof m->error);
    if (strcmp(key, "successful") == 0 && (c == 't' || c == 'f')) {
        m->successful = c == 't';
        return jliteral(j, c == 't' ? "true" : "false");
    }
    if (strcmp(key, "data") == 0) {
        m->has_data = 1;
        if (c == '{')
            return jobject(j, data_member, m);
        return jskip(j, 1);
    }
    if (strcmp(key, "advice") == 0 && c == '{')
        return jobject(j, advice_member, m);
    if (strcmp(key, "ext") == 0 && c == '{')
        return jobject(j, ext_member, m);
    return jskip(j, 1);
}

/* A Bayeux payload: an array of message objects, or one bare object.
 * Returns the number of messages, or -1 when the JSON is malformed. */
int parse_bayeux(const char *p, size_t len, bmsg_fn fn, void *ctx)
{
    jp_t j = { p, p + len, 0 };
    bmsg_t m;
    int count = 0;
    jws(&j);
    if (j.p < j.end && *j.p == '{') {
        memset(&m, 0, sizeof m);
        m.successful = -1;
        m.recovered = -1;
        if (jobject(&j, msg_member, &m))
            return -1;
        fn(ctx, &m);
        count = 1;
    } else {
        if (j.p >= j.end || *j.p != '[')
            return -1;
        j.p++;
        jws(&j);
        if (j.p < j.end && *j.p == ']') {
            j.p++;
        } else {
            for (;;) {
                jws(&j);
                if (j.p < j.end && *j.p == '{') {
                    memset(&m, 0, sizeof m);
                    m.successful = -1;
                    m.recovered = -1;
                    if (jobject(&j, msg_member, &m))
                        return -1;
                    fn(ctx, &m);
                    count++;
                } else if (jskip(&j, 1)) {
                    return -1;
                }
                jws(&j);
                if (j.p < j.end && *j.p == ',') {
                    j.p++;
                    continue;
                }
                if (j.p < j.end && *j.p == ']') {
                    j.p++;
                    break;
                }
                return -1;
            }
        }
    }
    jws(&j);
    return j.p == j.end ? count : -1;
}

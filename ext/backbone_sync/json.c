/*
 * json.c: parsing inbound Bayeux batches with yajl's callback parser, and
 * escaping strings for replies. Layer: pure codecs. Thread: the service
 * thread (bs_json_str and bs_utf8_valid: any).
 *
 * The whole request body or WebSocket message is parsed in one yajl_parse
 * call, so yajl_get_bytes_consumed() inside a callback is the offset just
 * past the current token. That lets us keep `id`, `data`, `subscription` and
 * the members of `ext` as raw spans of the input: a client publish is passed
 * on byte for byte, never decoded and encoded again. yajl has already
 * checked that those bytes are valid JSON; yajl's UTF-8 check is loose
 * (overlongs, surrogates and code points past U+10FFFF pass), so the engine
 * checks the whole input with bs_utf8_valid first.
 *
 * A member the server interprets may appear once in a message, and a string
 * it interprets may not hold NUL: a second "subscription", or
 * "/meta/subscribe\u0000x", would make the server act on one thing and
 * report another.
 */
#include <stdlib.h>
#include <string.h>

#include <yajl/yajl_parse.h>

#include "json.h"

enum field {
    F_NONE, F_CHANNEL, F_CLIENT_ID, F_CONNECTION_TYPE, F_VERSION, F_ID, F_DATA,
    F_SUBSCRIPTION, F_TYPES, F_EXT, F_ADVICE, F_OTHER
};
enum ext_key { X_OTHER, X_SECRET, X_TOKEN, X_TIMEOUT, X_SINCE, X_OFFSET, X_EPOCH, X_EVENT_ID };
enum since_key { S_OTHER, S_OFFSET, S_EPOCH };

typedef struct parse {
    bs_batch_t *b;
    const char *json;
    size_t len;
    int completing;               /* inside yajl_complete_parse */
    yajl_handle h;
    int depth;
    int max_depth;
    int max_batch;
    int msg_depth;                /* depth inside the current message's map, 0 when none */
    enum field field;
    size_t value_start;           /* offset just past the current key */
    /* ext and advice members */
    enum ext_key xkey;
    enum since_key skey;
    const char *num;              /* the raw text of the current number */
    size_t numlen;
    size_t member_start;
    int ext_members;
    size_t ext_start;
    size_t subs_start;            /* arena offset of the first subscription */
    uint32_t seen;                /* bits of the fields met in the current message */
    uint32_t ext_seen;            /* bits of the ext members met */
    const char *error;
} parse_t;

uint32_t bs_conn_type_bit(const char *s)
{
    static const struct { const char *name; uint32_t bit; } types[] = {
        { "long-polling", BS_CT_LONG_POLLING },
        { "cross-origin-long-polling", BS_CT_CROSS_ORIGIN },
        { "callback-polling", BS_CT_CALLBACK },
        { "websocket", BS_CT_WEBSOCKET },
        { "eventsource", BS_CT_EVENTSOURCE },
        { "in-process", BS_CT_IN_PROCESS },
    };
    size_t i;

    for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcmp(s, types[i].name) == 0)
            return types[i].bit;
    return BS_CT_OTHER;
}

static bs_msg_t *cur(parse_t *p)
{
    return &p->b->msgs[p->b->n - 1];
}

/* A number ending the input is only emitted by yajl_complete_parse, whose
 * byte count starts again at 0; by then the whole input has been read. */
static size_t consumed(parse_t *p)
{
    return p->completing ? p->len : yajl_get_bytes_consumed(p->h);
}

/* The bytes of a value, from just past its key (or the previous member) to
 * just past its last token, without the ':' / ',' and blanks before it. */
static bs_span_t span_from(parse_t *p, size_t start)
{
    size_t end = consumed(p);
    const char *s = p->json;

    if (start > end)
        start = end;
    while (start < end && (s[start] == ' ' || s[start] == '\t' || s[start] == '\n' ||
                           s[start] == '\r' || s[start] == ':' || s[start] == ','))
        start++;
    return (bs_span_t){ .off = (uint32_t)start, .len = (uint32_t)(end - start) };
}

/* Copies a decoded string into the arena; returns its offset or -1. */
static long arena_put(parse_t *p, const unsigned char *s, size_t len)
{
    size_t off = p->b->arena.len;

    if (bs_buf_append(&p->b->arena, s, len) || bs_buf_append(&p->b->arena, "", 1)) {
        p->error = "out of memory";
        return -1;
    }
    return (long)off;
}

/* Called when a value directly inside the message map is complete. */
static void message_value_done(parse_t *p)
{
    bs_msg_t *m = cur(p);
    bs_span_t sp = span_from(p, p->value_start);

    switch (p->field) {
    case F_ID: m->raw_id = sp; m->has_id = 1; break;
    case F_DATA: m->raw_data = sp; m->has_data = 1; break;
    case F_SUBSCRIPTION: m->raw_subscription = sp; m->has_subscription = 1; break;
    default: break;
    }
    p->field = F_NONE;
}

/* Called when a value directly inside ext (or advice) is complete. */
static int ext_member_done(parse_t *p)
{
    bs_span_t sp;

    if (p->field == F_ADVICE)
        return 1;
    sp = span_from(p, p->member_start);
    p->member_start = consumed(p);
    /* The secret is never passed on; offset and epoch are the server's to give. */
    if (p->xkey == X_SECRET || p->xkey == X_OFFSET || p->xkey == X_EPOCH)
        return 1;
    if ((p->ext_members++ && bs_buf_append(&p->b->ext, ",", 1)) ||
        bs_buf_append(&p->b->ext, p->json + sp.off, sp.len)) {
        p->error = "out of memory";
        return 0;
    }
    return 1;
}

#define WRONG_TYPE "a field has the wrong type"
#define EVENT_ID_TYPE "ext.event_id must be a string of 1 to 128 bytes with no NUL"

int bs_event_id_valid(const char *s, size_t len)
{
    return len > 0 && len <= BS_EVENT_ID_MAX && !memchr(s, '\0', len);
}

/* 1 when the string just read is one the server acts on. */
static int interpreted_string(const parse_t *p)
{
    if (p->depth == p->msg_depth)
        return p->field == F_CHANNEL || p->field == F_CLIENT_ID || p->field == F_CONNECTION_TYPE ||
               p->field == F_VERSION || p->field == F_SUBSCRIPTION;
    if (p->depth == p->msg_depth + 1)
        return p->field == F_SUBSCRIPTION || p->field == F_TYPES ||
               (p->field == F_EXT && (p->xkey == X_SECRET || p->xkey == X_TOKEN || p->xkey == X_EVENT_ID));
    return p->depth == p->msg_depth + 2 && p->field == F_EXT && p->xkey == X_SINCE;
}

/* Marks the message bad when `bit` was met before in the same object. */
static void once(parse_t *p, uint32_t *seen, uint32_t bit, const char *why)
{
    bs_msg_t *m = cur(p);

    if (*seen & bit)
        m->bad = why;
    *seen |= bit;
}

/* A scalar finished at the current depth: route it. */
static int scalar(parse_t *p, const unsigned char *str, size_t len, int is_string, double num)
{
    bs_msg_t *m;
    long off;

    if (!p->msg_depth) {
        p->error = "each message must be a JSON object";
        return 0;
    }
    m = cur(p);
    if (is_string && memchr(str, '\0', len) && interpreted_string(p))
        m->bad = "a string the server reads holds a NUL character";
    if (p->depth == p->msg_depth) {
        switch (p->field) {
        case F_CHANNEL: case F_CLIENT_ID: case F_CONNECTION_TYPE: case F_VERSION:
            if (!is_string) {
                m->bad = WRONG_TYPE;
                break;
            }
            if ((off = arena_put(p, str, len)) < 0)
                return 0;
            /* Arena offsets become pointers once parsing is done. */
            if (p->field == F_CHANNEL) { m->channel = (const char *)(uintptr_t)(off + 1); m->channel_len = len; }
            if (p->field == F_CLIENT_ID) { m->client_id = (const char *)(uintptr_t)(off + 1); m->client_id_len = len; }
            if (p->field == F_CONNECTION_TYPE) m->connection_type = (const char *)(uintptr_t)(off + 1);
            if (p->field == F_VERSION) m->version = (const char *)(uintptr_t)(off + 1);
            break;
        case F_SUBSCRIPTION:
            if (!is_string) {
                m->bad = WRONG_TYPE;
                break;
            }
            if ((off = arena_put(p, str, len)) < 0)
                return 0;
            m->subs = (const char *)(uintptr_t)(off + 1);
            m->nsubs = 1;
            break;
        case F_TYPES: case F_EXT: case F_ADVICE:
            if (p->field == F_TYPES)
                m->bad = WRONG_TYPE;         /* must be an array */
            break;
        default:
            break;
        }
        message_value_done(p);
        return 1;
    }
    if (p->depth == p->msg_depth + 1) {
        if (p->field == F_SUBSCRIPTION) {
            if (!is_string) {
                m->bad = WRONG_TYPE;
                return 1;
            }
            if ((off = arena_put(p, str, len)) < 0)
                return 0;
            if (m->nsubs++ == 0)
                m->subs = (const char *)(uintptr_t)(off + 1);
            return 1;
        }
        if (p->field == F_TYPES) {
            if (is_string) {
                char name[32];

                if (len < sizeof(name)) {
                    memcpy(name, str, len);
                    name[len] = '\0';
                    m->conn_types |= bs_conn_type_bit(name);
                } else {
                    m->conn_types |= BS_CT_OTHER;
                }
            }
            return 1;
        }
        if (p->field == F_EXT) {
            if (p->xkey == X_EVENT_ID && (!is_string || !bs_event_id_valid((const char *)str, len)))
                m->bad = EVENT_ID_TYPE;
            if (is_string && (p->xkey == X_SECRET || p->xkey == X_TOKEN || p->xkey == X_EVENT_ID)) {
                if ((off = arena_put(p, str, len)) < 0)
                    return 0;
                if (p->xkey == X_SECRET) { m->secret = (const char *)(uintptr_t)(off + 1); m->secret_len = len; }
                else if (p->xkey == X_TOKEN) { m->token = (const char *)(uintptr_t)(off + 1); m->token_len = len; }
                else { m->event_id = (const char *)(uintptr_t)(off + 1); m->event_id_len = len; }
            }
            return ext_member_done(p);
        }
        /* Only ever used to shorten the hold: anything past a day is a day. */
        if (p->field == F_ADVICE && p->xkey == X_TIMEOUT && !is_string && num >= 0)
            m->advice_timeout = num < 86400000.0 ? (int64_t)num : 86400000;
        return 1;
    }
    if (p->depth == p->msg_depth + 2 && p->field == F_EXT && p->xkey == X_SINCE) {
        if (p->skey == S_EPOCH && is_string) {
            if ((off = arena_put(p, str, len)) < 0)
                return 0;
            m->since_epoch = (const char *)(uintptr_t)(off + 1);
        } else if (p->skey == S_OFFSET && !is_string && p->num && p->numlen < 21) {
            char tmp[24], *end;

            memcpy(tmp, p->num, p->numlen);
            tmp[p->numlen] = '\0';
            m->since_offset = strtoull(tmp, &end, 10);
            m->has_since = *end == '\0' && tmp[0] != '-';
        }
        return 1;
    }
    /* Deeper values belong to a captured span; nothing to collect. */
    if (p->depth == p->msg_depth + 2 && p->field == F_SUBSCRIPTION)
        m->bad = WRONG_TYPE;
    return 1;
}

static int cb_null(void *ctx)
{
    return scalar(ctx, NULL, 0, 0, -1);
}

static int cb_boolean(void *ctx, int v)
{
    (void)v;
    return scalar(ctx, NULL, 0, 0, -1);
}

static int cb_number(void *ctx, const char *s, size_t len)
{
    parse_t *p = ctx;
    char tmp[32];
    double v = -1;
    int rc;

    if (len < sizeof(tmp)) {
        memcpy(tmp, s, len);
        tmp[len] = '\0';
        v = strtod(tmp, NULL);
    }
    p->num = s;
    p->numlen = len;
    rc = scalar(ctx, NULL, 0, 0, v);
    p->num = NULL;
    return rc;
}

static int cb_string(void *ctx, const unsigned char *s, size_t len)
{
    return scalar(ctx, s, len, 1, -1);
}

static int open_container(parse_t *p, int is_map)
{
    bs_batch_t *b = p->b;

    if (++p->depth > p->max_depth) {
        p->error = "JSON nested too deeply";
        return 0;
    }
    /* A message begins: a map at the top, or a map inside the top array. */
    if (!p->msg_depth && is_map && p->depth <= 2) {
        if (b->n >= (uint32_t)p->max_batch) {
            p->error = "too many messages in one batch";
            return 0;
        }
        if (b->n % 8 == 0) {
            bs_msg_t *v = realloc(b->msgs, sizeof(*v) * (b->n + 8));

            if (!v) {
                p->error = "out of memory";
                return 0;
            }
            b->msgs = v;
        }
        memset(&b->msgs[b->n], 0, sizeof(bs_msg_t));
        b->msgs[b->n].advice_timeout = -1;
        b->n++;
        p->msg_depth = p->depth;
        p->field = F_NONE;
        p->seen = 0;
        return 1;
    }
    if (!p->msg_depth) {
        if (p->depth == 1 && !is_map)
            return 1;                            /* the batch array */
        p->error = "each message must be a JSON object";
        return 0;
    }
    if (p->depth == p->msg_depth + 1) {
        bs_msg_t *m = cur(p);

        if (p->field == F_EXT) {
            if (is_map) {
                if (bs_buf_append(&b->ext, "{", 1)) {
                    p->error = "out of memory";
                    return 0;
                }
                p->ext_start = b->ext.len - 1;
                p->ext_members = 0;
                p->ext_seen = 0;
                p->member_start = consumed(p);
            } else {
                p->field = F_OTHER;              /* a non-object ext is ignored */
            }
        } else if (p->field == F_ADVICE && !is_map) {
            p->field = F_OTHER;
        } else if ((p->field == F_SUBSCRIPTION || p->field == F_TYPES) && is_map) {
            m->bad = WRONG_TYPE;
        } else if (p->field == F_SUBSCRIPTION) {
            p->subs_start = b->arena.len;
        } else if (p->field == F_TYPES) {
            m->has_conn_types = 1;
        } else if (p->field == F_CHANNEL || p->field == F_CLIENT_ID ||
                   p->field == F_CONNECTION_TYPE || p->field == F_VERSION) {
            m->bad = WRONG_TYPE;
        }
    } else if (p->depth == p->msg_depth + 2 && (p->field == F_SUBSCRIPTION || p->field == F_TYPES)) {
        cur(p)->bad = WRONG_TYPE;                         /* only strings belong in these arrays */
    } else if (p->depth == p->msg_depth + 2 && p->field == F_EXT && p->xkey == X_EVENT_ID) {
        cur(p)->bad = EVENT_ID_TYPE;
    }
    return 1;
}

static int close_container(parse_t *p)
{
    int was = p->depth--;

    if (!p->msg_depth)
        return 1;
    if (was == p->msg_depth) {                   /* the message map itself */
        p->msg_depth = 0;
        return 1;
    }
    if (was == p->msg_depth + 1) {              /* a field's container */
        if (p->field == F_EXT) {
            bs_msg_t *m = cur(p);

            if (bs_buf_append(&p->b->ext, "}", 1)) {
                p->error = "out of memory";
                return 0;
            }
            m->raw_ext = (bs_span_t){ .off = (uint32_t)p->ext_start,
                                      .len = (uint32_t)(p->b->ext.len - p->ext_start) };
            m->has_ext = p->ext_members > 0;
        }
        message_value_done(p);
        return 1;
    }
    if (was == p->msg_depth + 2 && (p->field == F_EXT || p->field == F_ADVICE))
        return p->field == F_EXT ? ext_member_done(p) : 1;
    return 1;
}

static int cb_start_map(void *ctx)
{
    return open_container(ctx, 1);
}

static int cb_end_map(void *ctx)
{
    return close_container(ctx);
}

static int cb_start_array(void *ctx)
{
    return open_container(ctx, 0);
}

static int cb_end_array(void *ctx)
{
    return close_container(ctx);
}

static int cb_map_key(void *ctx, const unsigned char *k, size_t len)
{
    parse_t *p = ctx;

#define KEY(s) (len == sizeof(s) - 1 && memcmp(k, s, len) == 0)
    if (p->msg_depth && p->depth == p->msg_depth) {
        p->field = KEY("channel") ? F_CHANNEL : KEY("clientId") ? F_CLIENT_ID :
                   KEY("connectionType") ? F_CONNECTION_TYPE : KEY("version") ? F_VERSION :
                   KEY("id") ? F_ID : KEY("data") ? F_DATA : KEY("subscription") ? F_SUBSCRIPTION :
                   KEY("supportedConnectionTypes") ? F_TYPES : KEY("ext") ? F_EXT :
                   KEY("advice") ? F_ADVICE : F_OTHER;
        if (p->field != F_OTHER)
            once(p, &p->seen, 1u << p->field, "a member appears twice in one message");
        p->value_start = consumed(p);
    } else if (p->msg_depth && p->depth == p->msg_depth + 1) {
        if (p->field == F_EXT) {
            p->xkey = KEY("secret") ? X_SECRET : KEY("token") ? X_TOKEN : KEY("since") ? X_SINCE :
                      KEY("offset") ? X_OFFSET : KEY("epoch") ? X_EPOCH : KEY("event_id") ? X_EVENT_ID : X_OTHER;
            if (p->xkey != X_OTHER)
                once(p, &p->ext_seen, 1u << p->xkey, "a member appears twice in ext");
        } else if (p->field == F_ADVICE) {
            p->xkey = KEY("timeout") ? X_TIMEOUT : X_OTHER;
        }
    } else if (p->msg_depth && p->depth == p->msg_depth + 2 && p->field == F_EXT && p->xkey == X_SINCE) {
        p->skey = KEY("offset") ? S_OFFSET : KEY("epoch") ? S_EPOCH : S_OTHER;
    }
#undef KEY
    return 1;
}

static const yajl_callbacks callbacks = {
    cb_null, cb_boolean, NULL, NULL, cb_number, cb_string,
    cb_start_map, cb_map_key, cb_end_map, cb_start_array, cb_end_array
};

/* Turns arena offsets (stored +1 so that 0 still means "absent") into pointers. */
static void fix_pointers(bs_batch_t *b)
{
    uint32_t i;

#define FIX(f) if (m->f) m->f = b->arena.ptr + ((uintptr_t)m->f - 1)
    for (i = 0; i < b->n; i++) {
        bs_msg_t *m = &b->msgs[i];

        FIX(channel); FIX(client_id); FIX(connection_type); FIX(version);
        FIX(secret); FIX(token); FIX(subs); FIX(since_epoch); FIX(event_id);
    }
#undef FIX
}

int bs_batch_parse(bs_batch_t *b, const char *json, size_t len, int max_depth, int max_batch)
{
    parse_t p = { .b = b, .json = json, .len = len, .max_depth = max_depth, .max_batch = max_batch };
    yajl_status st;

    memset(b, 0, sizeof(*b));
    p.h = yajl_alloc(&callbacks, NULL, &p);
    if (!p.h) {
        b->error = "out of memory";
        return -1;
    }
    st = yajl_parse(p.h, (const unsigned char *)json, len);
    if (st == yajl_status_ok) {
        p.completing = 1;
        st = yajl_complete_parse(p.h);
    }
    yajl_free(p.h);
    if (st != yajl_status_ok || p.error) {
        b->error = p.error ? p.error : "malformed JSON";
        return -1;
    }
    if (b->n == 0) {
        b->error = "no messages";
        return -1;
    }
    fix_pointers(b);
    return 0;
}

void bs_batch_free(bs_batch_t *b)
{
    free(b->msgs);
    bs_buf_free(&b->arena);
    bs_buf_free(&b->ext);
    memset(b, 0, sizeof(*b));
}

int bs_json_str(bs_buf_t *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    size_t i, run = 0;

    if (bs_buf_append(b, "\"", 1))
        return -1;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[6] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15] };

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        if (bs_buf_append(b, s + run, i - run))
            return -1;
        if (c == '"' || c == '\\') {
            esc[1] = (char)c;
            if (bs_buf_append(b, esc, 2))
                return -1;
        } else if (bs_buf_append(b, esc, 6)) {
            return -1;
        }
        run = i + 1;
    }
    if (bs_buf_append(b, s + run, len - run))
        return -1;
    return bs_buf_append(b, "\"", 1);
}

/* RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF. */
int bs_utf8_valid(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str, *end;

    if (!len)
        return 1;
    end = s + len;
    while (s < end) {
        unsigned char c = *s;
        size_t n;
        unsigned char lo = 0x80, hi = 0xBF;

        if (c < 0x80) {
            s++;
            continue;
        }
        if (c >= 0xC2 && c <= 0xDF) {
            n = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 2;
            if (c == 0xE0)
                lo = 0xA0;                       /* overlong below U+0800 */
            else if (c == 0xED)
                hi = 0x9F;                       /* surrogates U+D800..U+DFFF */
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 3;
            if (c == 0xF0)
                lo = 0x90;                       /* overlong below U+10000 */
            else if (c == 0xF4)
                hi = 0x8F;                       /* past U+10FFFF */
        } else {
            return 0;                            /* C0, C1, F5..FF, or a stray continuation */
        }
        if ((size_t)(end - s) <= n || s[1] < lo || s[1] > hi)
            return 0;
        for (size_t i = 2; i <= n; i++)
            if ((s[i] & 0xC0) != 0x80)
                return 0;
        s += n + 1;
    }
    return 1;
}

static int hex4(const char *p, unsigned *v)
{
    unsigned i, x = 0;

    for (i = 0; i < 4; i++) {
        char c = p[i];

        x <<= 4;
        if (c >= '0' && c <= '9')
            x |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            x |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            x |= (unsigned)(c - 'A' + 10);
        else
            return -1;
    }
    *v = x;
    return 0;
}

int bs_json_lone_surrogate(const char *s, size_t len)
{
    size_t i;
    int in_string = 0;
    unsigned v, w;

    for (i = 0; i < len; i++) {
        if (s[i] == '"') {
            in_string = !in_string;
        } else if (in_string && s[i] == '\\' && i + 1 < len) {
            if (s[++i] != 'u' || i + 4 >= len || hex4(s + i + 1, &v))
                continue;
            i += 4;
            if (v >= 0xDC00 && v <= 0xDFFF)
                return 1;                        /* a low half with no high half before it */
            if (v >= 0xD800 && v <= 0xDBFF) {
                if (i + 6 >= len || s[i + 1] != '\\' || s[i + 2] != 'u' || hex4(s + i + 3, &w) ||
                    w < 0xDC00 || w > 0xDFFF)
                    return 1;                    /* a high half with no low half after it */
                i += 6;
            }
        }
    }
    return 0;
}

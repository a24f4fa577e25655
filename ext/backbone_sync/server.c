/*
 * server.c: the libwebsockets context, its service thread, and the
 * transports: Bayeux over HTTP POST (long-polling, CORS) and WebSocket on the
 * mount path, the browser client at <mount>.js and <mount>/client.js, and
 * GET /stats.
 *
 * Threads: bs_server_new/start/stop/free run in the caller's thread (Ruby,
 * with or without the GVL); bs_server_publish and bs_server_stats in any
 * thread. Everything else runs in the service thread, which owns the lws
 * context and the engine and never calls Ruby. The only shared state is the
 * publish queue and `alive`, under `lock`, and the stats counters (atomics).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <malloc.h>

#include <libwebsockets.h>
#include <openssl/crypto.h>

#include "core.h"

_Static_assert(LWS_PRE <= BS_PRE, "BS_PRE must leave room for the lws header");

#define TICK_US (1000 * LWS_US_PER_MS)     /* the sweep: expiry only; connects have the heap */
#define DUE_SLACK_MS 10                     /* held connects due this close together share a wakeup */
#define TRIM_AFTER 1000                     /* clients freed before memory is handed back to the OS */
#define MAX_PENDING 100000                  /* publishes waiting for the service thread */
#define MAX_PENDING_BYTES (64u << 20)
#define MAX_WRITES_PER_CALLBACK 16
#define BATCH_BYTES (32u << 10)             /* a WS frame of several deliveries stops growing here */
#define RX_BUFFER 1024                      /* lws's per-WebSocket receive buffer: small keeps idle sockets cheap */

enum route { R_NONE, R_BAYEUX, R_JS, R_STATS, R_PREFLIGHT, R_STATUS };

typedef struct link link_t;                 /* lws's per-session memory, below */

static void on_due(lws_sorted_usec_list_t *sul);

/* Work for the service thread from other threads: an in-process publish
 * (its encoded data), a message from the backplane (a whole frame, with its
 * offset and epoch), or the backplane's word that clients must resync. */
enum { P_LOCAL, P_REMOTE, P_RESYNC };

typedef struct pending {
    struct pending *next;
    int kind;
    size_t chlen;
    size_t len;
    uint64_t offset;
    size_t elen;
    char epoch[BS_EPOCH_LEN + 1];
    char *channel;                          /* NUL-terminated, stored after the struct */
    char *data;                             /* after the channel */
} pending_t;

struct bs_server {
    bs_server_config_t cfg;                 /* strings below are our own copies */
    char *host, *mount, *key, *cert, *secret;
    char **signed_channels, **public_channels;
    unsigned char *js;                      /* client_js with BS_PRE headroom */
    char *js_path, *js_path2;

    struct lws_context *ctx;
    struct lws_protocols protocols[2];
    lws_retry_bo_t retry;
    lws_sorted_usec_list_t tick;
    pthread_t thread;
    pid_t pid;
    int port;
    int started;
    int forgotten;
    int stop_requested;                     /* atomic */
    int destroying;                         /* service thread: the context is being destroyed */
    int lock_ready;
    int alive_for_drain;                    /* service thread: the engine can take publishes */
    bs_stats_t conn_stats;                  /* connections, bytes_out: atomics */

    pthread_mutex_t lock;
    int alive;                              /* lock: the context exists and serves */
    pending_t *head, *tail;                 /* lock */
    size_t npending, pending_bytes;         /* lock */

    bs_engine_t engine;                     /* service thread */
    link_t **heap;                          /* service thread: held connects, earliest first */
    uint32_t heap_len, heap_cap;
    int64_t due_at;                         /* when due_tick fires, ms; 0: not set */
    lws_sorted_usec_list_t due_tick;
    bs_backplane_t *backplane;              /* Redis, or NULL */
    bs_buf_t tx;                            /* service thread: outgoing bytes being assembled */
};

static int g_lws_log_fd = -1;               /* process-global, as lws's log sink is */

/* ---- logging: a pipe read by a Ruby thread -------------------------------- */

static void write_line(int fd, char level, const char *text)
{
    char line[1024];
    int n = snprintf(line, sizeof(line), "%c %s", level, text);

    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    while (n > 2 && line[n - 1] == '\n')
        n--;
    line[n++] = '\n';
    /* Non-blocking: a full pipe drops the line rather than stall the server. */
    if (write(fd, line, (size_t)n) < 0)
        return;
}

void bs_log(void *server, char level, const char *fmt, ...)
{
    bs_server_t *s = server;
    char text[900];
    va_list ap;

    if (s->cfg.log_fd < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    write_line(s->cfg.log_fd, level, text);
}

int bs_log_verbose(void *server)
{
    bs_server_t *s = server;

    return s->cfg.verbose && s->cfg.log_fd >= 0;
}

/* The owner is closing its pipe: lws must not write into whatever reuses
 * the descriptor number. Another server's newer sink stays. */
static void release_log_fd(bs_server_t *s)
{
    int fd = s->cfg.log_fd;

    if (fd >= 0)
        __atomic_compare_exchange_n(&g_lws_log_fd, &fd, -1, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

static void lws_emit(int level, const char *line)
{
    int fd = __atomic_load_n(&g_lws_log_fd, __ATOMIC_RELAXED);

    if (fd >= 0)
        write_line(fd, level == LLL_ERR ? 'E' : level == LLL_WARN ? 'W' : 'I', line);
    else if (level == LLL_ERR && write(2, line, strlen(line)) < 0)
        return;
}

/* ---- links ------------------------------------------------------------------ */

/* lws's per-session memory: the engine's view of the link, and its place
 * among the held connects. */
struct link {
    bs_link_t core;                         /* first: the engine's bs_link_t * is ours too */
    uint32_t heap_idx;                      /* 1 + its place among held connects, or 0 */
};

/*
 * Held connects, earliest deadline first: a binary heap of links, and one
 * lws timer set to the top's deadline. lws 4.1 keeps its timers in one
 * sorted list that every (re)schedule walks, so a timer per connect costs
 * O(connections) each time; and every wakeup of the loop costs a poll() over
 * every socket, so the loop wakes only when a connect is due (deadlines
 * within DUE_SLACK_MS share a wakeup). An answered connect may stay in the
 * heap until its time; it is dropped then.
 */
static void heap_swap(bs_server_t *s, uint32_t a, uint32_t b)
{
    link_t *t = s->heap[a];

    s->heap[a] = s->heap[b];
    s->heap[b] = t;
    s->heap[a]->heap_idx = a + 1;
    s->heap[b]->heap_idx = b + 1;
}

static int64_t deadline(const bs_server_t *s, uint32_t i)
{
    return s->heap[i]->core.held_until;
}

static void heap_up(bs_server_t *s, uint32_t i)
{
    while (i && deadline(s, (i - 1) / 2) > deadline(s, i)) {
        heap_swap(s, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(bs_server_t *s, uint32_t i)
{
    for (;;) {
        uint32_t l = 2 * i + 1, r = l + 1, m = i;

        if (l < s->heap_len && deadline(s, l) < deadline(s, m))
            m = l;
        if (r < s->heap_len && deadline(s, r) < deadline(s, m))
            m = r;
        if (m == i)
            return;
        heap_swap(s, i, m);
        i = m;
    }
}

static void heap_remove(bs_server_t *s, link_t *lk)
{
    uint32_t i;

    if (!lk->heap_idx)
        return;
    i = lk->heap_idx - 1;
    lk->heap_idx = 0;
    if (i != --s->heap_len) {
        s->heap[i] = s->heap[s->heap_len];
        s->heap[i]->heap_idx = i + 1;
        heap_down(s, i);
        heap_up(s, i);
    }
}

/* Sets the timer for the earliest held connect, if it is not set earlier already. */
static void schedule_due(bs_server_t *s)
{
    int64_t when, now;

    if (!s->heap_len)
        return;
    when = deadline(s, 0) + DUE_SLACK_MS;
    if (s->due_at && s->due_at <= when)
        return;
    now = bs_now_ms();
    s->due_at = when;
    lws_sul_schedule(s->ctx, 0, &s->due_tick, on_due, (when > now ? when - now : 0) * LWS_US_PER_MS);
}

static void on_due(lws_sorted_usec_list_t *sul)
{
    bs_server_t *s = lws_container_of(sul, bs_server_t, due_tick);
    int64_t now = bs_now_ms();

    s->due_at = 0;
    while (s->heap_len && deadline(s, 0) <= now + DUE_SLACK_MS) {
        link_t *lk = s->heap[0];

        heap_remove(s, lk);
        if (lk->core.held)
            lws_callback_on_writable(lk->core.wsi);
    }
    schedule_due(s);
}

/* After a batch: a held connect goes into the heap at its deadline. */
static void arm_due(bs_server_t *s, bs_link_t *l)
{
    link_t *lk = (link_t *)l;

    heap_remove(s, lk);
    if (!l->held)
        return;
    if (s->heap_len == s->heap_cap) {
        uint32_t cap = s->heap_cap ? s->heap_cap * 2 : 256;
        link_t **v = realloc(s->heap, sizeof(*v) * cap);

        if (!v) {
            lws_callback_on_writable(l->wsi); /* no room to wait: answer now */
            return;
        }
        s->heap = v;
        s->heap_cap = cap;
    }
    s->heap[s->heap_len] = lk;
    lk->heap_idx = ++s->heap_len;
    heap_up(s, s->heap_len - 1);
    schedule_due(s);
}

static void link_open(bs_link_t *l, struct lws *wsi, int via)
{
    l->wsi = wsi;
    l->via = via;
}

static void link_close(bs_server_t *s, bs_link_t *l)
{
    if (!l)
        return;
    heap_remove(s, (link_t *)l);
    bs_engine_unlink(&s->engine, l);
    bs_buf_free(&l->rx);
    bs_buf_free(&l->out);
}

void bs_link_wake(void *server, bs_link_t *l)
{
    (void)server;
    lws_callback_on_writable(l->wsi);
}

void bs_link_lost_client(void *server, bs_link_t *l, int close)
{
    (void)server;
    if (l->via == BS_VIA_WS && close)
        lws_set_timeout(l->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    else
        lws_callback_on_writable(l->wsi);
}

/* The shared output buffer, emptied, with lws's headroom in front. */
static int tx_begin(bs_server_t *s)
{
    bs_buf_reset(&s->tx);
    if (bs_buf_reserve(&s->tx, BS_PRE + 4096))
        return -1;
    memset(s->tx.ptr, 0, BS_PRE);
    s->tx.len = BS_PRE;
    return 0;
}

/* Appends the messages of the first n queued frames, comma separated. */
static uint32_t take_frames(bs_server_t *s, bs_client_t *c, size_t budget, int comma)
{
    uint32_t n = 0;

    while (n < c->queue.len) {
        bs_frame_t *f = bs_ring_at(&c->queue, n);

        if (n && s->tx.len + f->len > budget)
            break;
        if ((comma || n) && bs_buf_append(&s->tx, ",", 1))
            break;
        if (bs_buf_append(&s->tx, BS_FRAME_DATA(f) + 1, f->len - 2))
            break;
        n++;
    }
    bs_ring_drop(&c->queue, n);
    return n;
}

/* ---- WebSocket ---------------------------------------------------------------- */

static int ws_receive(bs_server_t *s, struct lws *wsi, bs_link_t *l, const void *in, size_t len)
{
    if (l->rx.len + len > s->cfg.max_message_size) {
        static const char why[] = "message larger than max_message_size";

        BS_STAT_ADD(&s->engine, errors, 1);
        lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, (unsigned char *)why, sizeof(why) - 1);
        return -1;
    }
    if (bs_buf_append(&l->rx, in, len))
        return -1;
    if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
        return 0;
    /* A message that is not a Bayeux batch gets its 400 error, then a 1007 close. */
    if (bs_engine_receive(&s->engine, l, l->rx.ptr, l->rx.len, &l->out) != 200)
        l->close_code = LWS_CLOSE_STATUS_INVALID_PAYLOAD;
    bs_buf_free(&l->rx);
    /* A client that sends and never reads cannot grow our replies forever. */
    if (l->out.len > 4 * s->cfg.max_message_size + 65536) {
        static const char why[] = "too many unread replies";

        lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION, (unsigned char *)why, sizeof(why) - 1);
        return -1;
    }
    if (l->out.len || (l->held && bs_engine_due(&s->engine, l, bs_now_ms())))
        lws_callback_on_writable(wsi);
    arm_due(s, l);
    return 0;
}

static int ws_write(bs_server_t *s, struct lws *wsi, bs_link_t *l)
{
    int64_t now = bs_now_ms();
    int round;

    for (round = 0; round < MAX_WRITES_PER_CALLBACK; round++) {
        bs_client_t *c = l->client;
        int due = l->held && bs_engine_due(&s->engine, l, now);
        uint32_t queued = c && c->link == l ? c->queue.len : 0;
        unsigned char *p;
        size_t len;
        int n;

        if (!l->out.len && !due && !queued) {
            if (l->close_code) {
                static const char why[] = "not a Bayeux message";

                lws_close_reason(wsi, (enum lws_close_status)l->close_code, (unsigned char *)why,
                                 sizeof(why) - 1);
                return -1;
            }
            return 0;
        }
        if (!l->out.len && !due && (queued == 1 || bs_ring_at(&c->queue, 0)->len > BATCH_BYTES)) {
            /* One message: write the shared frame itself, no copy. */
            bs_frame_t *f = bs_ring_at(&c->queue, 0);

            n = lws_write(wsi, BS_FRAME_DATA(f), f->len, LWS_WRITE_TEXT);
            len = f->len;
            bs_ring_drop(&c->queue, 1);
        } else {
            if (due)
                bs_engine_answer(&s->engine, l);
            if (tx_begin(s) || bs_buf_append(&s->tx, "[", 1) ||
                bs_buf_append(&s->tx, l->out.ptr, l->out.len))
                return -1;
            if (queued)
                take_frames(s, c, BATCH_BYTES, l->out.len > 0);
            if (bs_buf_append(&s->tx, "]", 1))
                return -1;
            bs_buf_reset(&l->out);
            p = (unsigned char *)s->tx.ptr + BS_PRE;
            len = s->tx.len - BS_PRE;
            n = lws_write(wsi, p, len, LWS_WRITE_TEXT);
        }
        if (n < (int)len)
            return -1;
        __atomic_fetch_add(&s->conn_stats.bytes_out, len, __ATOMIC_RELAXED);
        /* Asking whether the pipe is choked costs a poll() of its own: only
         * worth it when there is more to write. */
        if (!l->out.len && !(c && c->link == l && c->queue.len) && !l->held && !l->close_code)
            return 0;
        if (lws_send_pipe_choked(wsi))
            break;
    }
    lws_callback_on_writable(wsi);
    return 0;
}

/* ---- HTTP ---------------------------------------------------------------------- */

static int header_eq(struct lws *wsi, enum lws_token_indexes t, char *buf, int size)
{
    int n = lws_hdr_copy(wsi, buf, size, t);

    return n < 0 ? -1 : n;
}

/* Decodes the `message` field of a form body in place; returns its length or -1. */
static long form_message(char *body, size_t len)
{
    size_t i = 0, o = 0;
    char *field = NULL;

    while (i < len) {
        if ((i == 0 || body[i - 1] == '&') && len - i >= 8 && memcmp(body + i, "message=", 8) == 0) {
            field = body + i + 8;
            break;
        }
        i++;
    }
    if (!field)
        return -1;
    for (i = (size_t)(field - body); i < len && body[i] != '&'; i++) {
        char c = body[i];

        if (c == '+') {
            c = ' ';
        } else if (c == '%' && i + 2 < len) {
            char hex[3] = { body[i + 1], body[i + 2], 0 };
            char *end;
            long v = strtol(hex, &end, 16);

            if (*end)
                return -1;
            c = (char)v;
            i += 2;
        }
        body[o++] = c;
    }
    return (long)o;
}

static void http_status(bs_link_t *l, int status, const char *text)
{
    l->route = R_STATUS;
    l->status = status;
    bs_buf_reset(&l->out);
    bs_buf_append_str(&l->out, text);
    l->responding = 1;
}

/* A Bayeux error for the whole request, e.g. a body that is not JSON. */
static void bayeux_error(bs_server_t *s, bs_link_t *l, const char *why)
{
    http_status(l, 400, "{\"successful\":false,\"error\":");
    bs_json_str(&l->out, why, strlen(why));
    bs_buf_append(&l->out, "}", 1);
    l->route = R_BAYEUX;
    BS_STAT_ADD(&s->engine, errors, 1);
}

static int http_request(bs_server_t *s, struct lws *wsi, bs_link_t *l, const char *path)
{
    size_t mlen = strlen(s->mount);
    char ctype[96];
    int post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
    int options = lws_hdr_total_length(wsi, WSI_TOKEN_OPTIONS_URI) > 0;

    link_open(l, wsi, BS_VIA_HTTP);
    bs_buf_free(&l->rx);
    bs_buf_reset(&l->out);
    l->status = 200;
    l->responding = l->too_big = l->form = 0;
    l->route = R_NONE;
    if (header_eq(wsi, WSI_TOKEN_ORIGIN, l->origin, sizeof(l->origin)) < 0)
        l->origin[0] = '\0';

    if (strcmp(path, s->mount) == 0 || (strncmp(path, s->mount, mlen) == 0 && strcmp(path + mlen, "/") == 0)) {
        if (options) {
            l->route = R_PREFLIGHT;
            l->responding = 1;
        } else if (post) {
            l->route = R_BAYEUX;
            if (header_eq(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, ctype, sizeof(ctype)) > 0 &&
                strstr(ctype, "application/x-www-form-urlencoded"))
                l->form = 1;
            if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0) {
                bayeux_error(s, l, "400::Bad request: empty body");
            } else {
                return 0;                   /* the body follows */
            }
        } else {
            bayeux_error(s, l, "400::Bad request: send Bayeux messages with POST");
        }
    } else if (s->js && (strcmp(path, s->js_path) == 0 || strcmp(path, s->js_path2) == 0)) {
        l->route = R_JS;
        l->responding = 1;
    } else if (strcmp(path, "/stats") == 0) {
        char auth[256];
        size_t slen = s->secret ? strlen(s->secret) : 0;
        int n = header_eq(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, auth, sizeof(auth));

        if (slen && n == (int)(7 + slen) && strncmp(auth, "Bearer ", 7) == 0 &&
            CRYPTO_memcmp(auth + 7, s->secret, slen) == 0) {
            l->route = R_STATS;
            l->responding = 1;
        } else {
            http_status(l, 403, "{\"error\":\"send the server's secret as Authorization: Bearer <secret>\"}");
        }
    } else {
        http_status(l, 404, "{\"error\":\"not found\"}");
    }
    lws_callback_on_writable(wsi);
    return 0;
}

static int http_body(bs_server_t *s, bs_link_t *l, const void *in, size_t len)
{
    if (l->too_big)
        return 0;
    if (l->rx.len + len > s->cfg.max_message_size) {
        l->too_big = 1;
        bs_buf_free(&l->rx);
        return 0;
    }
    return bs_buf_append(&l->rx, in, len) ? -1 : 0;
}

static int http_body_done(bs_server_t *s, struct lws *wsi, bs_link_t *l)
{
    long len;

    if (l->route != R_BAYEUX)
        return 0;
    l->responding = 1;
    if (l->too_big) {
        char err[120];

        snprintf(err, sizeof(err), "400::Bad request: body larger than max_message_size (%zu bytes)",
                 s->cfg.max_message_size);
        bayeux_error(s, l, err);
        lws_callback_on_writable(wsi);
        return 0;
    }
    len = (long)l->rx.len;
    if (l->form && (len = form_message(l->rx.ptr, l->rx.len)) < 0) {
        bayeux_error(s, l, "400::Bad request: no message field in the form");
        lws_callback_on_writable(wsi);
        return 0;
    }
    l->status = bs_engine_receive(&s->engine, l, l->rx.ptr, (size_t)len, &l->out);
    bs_buf_free(&l->rx);
    if (l->status != 200 || !l->held || bs_engine_due(&s->engine, l, bs_now_ms())) {
        lws_callback_on_writable(wsi);
    } else {
        lws_set_timeout(wsi, PENDING_TIMEOUT_HTTP_CONTENT, s->cfg.timeout + 30);
        arm_due(s, l);
    }
    return 0;
}

static int add_header(struct lws *wsi, const char *name, const char *value, unsigned char **p,
                      unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name, (const unsigned char *)value,
                                       (int)strlen(value), p, end);
}

static int http_respond(bs_server_t *s, struct lws *wsi, bs_link_t *l, int status, const char *ctype,
                        unsigned char *body, size_t len)
{
    unsigned char hdr[LWS_PRE + 2048], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof(hdr) - 1;

    if (lws_add_http_common_headers(wsi, (unsigned int)status, ctype, len, &p, end) ||
        add_header(wsi, "cache-control:", "no-cache, no-store", &p, end))
        return -1;
    if (l->origin[0] && (add_header(wsi, "access-control-allow-origin:", l->origin, &p, end) ||
                         add_header(wsi, "access-control-allow-credentials:", "true", &p, end)))
        return -1;
    if (l->route == R_PREFLIGHT &&
        (add_header(wsi, "access-control-allow-methods:", "POST, GET", &p, end) ||
         add_header(wsi, "access-control-allow-headers:",
                    "Accept, Authorization, Content-Type, Pragma, X-Requested-With", &p, end) ||
         add_header(wsi, "access-control-max-age:", "86400", &p, end)))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    if (len && lws_write(wsi, body, len, LWS_WRITE_HTTP_FINAL) != (int)len)
        return -1;
    __atomic_fetch_add(&s->conn_stats.bytes_out, len + (size_t)(p - start), __ATOMIC_RELAXED);
    l->responding = 0;
    l->route = R_NONE;
    bs_buf_reset(&l->out);
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int stats_json(bs_server_t *s)
{
    bs_stats_t st;
    char tmp[768];

    bs_server_stats(s, &st);
    snprintf(tmp, sizeof(tmp),
             "{\"connections\":%llu,\"clients\":%llu,\"channels\":%llu,\"subscriptions\":%llu,"
             "\"messages_in\":%llu,\"messages_out\":%llu,\"bytes_out\":%llu,"
             "\"slow_clients_dropped\":%llu,\"errors\":%llu,\"backplane_up\":%llu,"
             "\"backplane_queued\":%llu,\"backplane_refused\":%llu}",
             (unsigned long long)st.connections, (unsigned long long)st.clients,
             (unsigned long long)st.channels, (unsigned long long)st.subscriptions,
             (unsigned long long)st.messages_in, (unsigned long long)st.messages_out,
             (unsigned long long)st.bytes_out, (unsigned long long)st.slow_clients_dropped,
             (unsigned long long)st.errors, (unsigned long long)st.backplane_up,
             (unsigned long long)st.backplane_queued, (unsigned long long)st.backplane_refused);
    return bs_buf_append_str(&s->tx, tmp);
}

static int http_write(bs_server_t *s, struct lws *wsi, bs_link_t *l)
{
    if (l->held) {
        bs_client_t *c = l->client;

        if (!bs_engine_due(&s->engine, l, bs_now_ms()))
            return 0;
        /* The long-poll answer: the batch's replies with the connect's last,
         * then the deliveries, as Faye orders them. */
        c = c && c->link == l ? c : NULL;
        bs_engine_answer(&s->engine, l);
        if (tx_begin(s) || bs_buf_append(&s->tx, "[", 1) ||
            bs_buf_append(&s->tx, l->out.ptr, l->out.len))
            return -1;
        while (c && c->queue.len && take_frames(s, c, SIZE_MAX, s->tx.len > BS_PRE + 1))
            ;
        if (bs_buf_append(&s->tx, "]", 1))
            return -1;
        return http_respond(s, wsi, l, 200, "application/json", (unsigned char *)s->tx.ptr + BS_PRE,
                            s->tx.len - BS_PRE);
    }
    if (!l->responding)
        return 0;
    switch (l->route) {
    case R_BAYEUX:
        if (tx_begin(s) || bs_buf_append(&s->tx, "[", 1) ||
            bs_buf_append(&s->tx, l->out.ptr, l->out.len) || bs_buf_append(&s->tx, "]", 1))
            return -1;
        return http_respond(s, wsi, l, l->status, "application/json", (unsigned char *)s->tx.ptr + BS_PRE,
                            s->tx.len - BS_PRE);
    case R_JS:
        return http_respond(s, wsi, l, 200, "application/javascript; charset=utf-8", s->js + BS_PRE,
                            s->cfg.client_js_len);
    case R_STATS:
        if (tx_begin(s) || stats_json(s))
            return -1;
        return http_respond(s, wsi, l, 200, "application/json", (unsigned char *)s->tx.ptr + BS_PRE,
                            s->tx.len - BS_PRE);
    case R_PREFLIGHT:
        return http_respond(s, wsi, l, 200, "text/plain", NULL, 0);
    default:
        break;
    }
    if (tx_begin(s) || bs_buf_append(&s->tx, l->out.ptr, l->out.len))
        return -1;
    return http_respond(s, wsi, l, l->status, "application/json", (unsigned char *)s->tx.ptr + BS_PRE,
                        s->tx.len - BS_PRE);
}

/* ---- the service loop ------------------------------------------------------------ */

static void drain_publishes(bs_server_t *s)
{
    pending_t *p, *next;

    pthread_mutex_lock(&s->lock);
    p = s->head;
    s->head = s->tail = NULL;
    s->npending = s->pending_bytes = 0;
    pthread_mutex_unlock(&s->lock);
    for (; p; p = next) {
        next = p->next;
        if (!s->alive_for_drain) {
            /* the engine is gone: only free */
        } else if (p->kind == P_REMOTE) {
            bs_engine_remote(&s->engine, p->channel, p->chlen, p->offset, p->epoch, p->elen, p->data, p->len);
        } else if (p->kind == P_RESYNC) {
            bs_engine_resync(&s->engine);
        } else {
            if (bs_log_verbose(s))
                bs_log(s, 'I', "publish: %s (%zu bytes, in-process)", p->channel, p->len);
            BS_STAT_ADD(&s->engine, messages_in, 1);
            if (bs_engine_publish(&s->engine, p->channel, p->chlen, p->data, p->len, NULL, 0, NULL, 0)) {
                BS_STAT_ADD(&s->engine, errors, 1);
                bs_log(s, 'E', "publish to %s lost: out of memory", p->channel);
            }
        }
        free(p);
    }
}

static void on_tick(lws_sorted_usec_list_t *sul)
{
    bs_server_t *s = lws_container_of(sul, bs_server_t, tick);

    bs_engine_sweep(&s->engine, bs_now_ms());
    /* glibc keeps what thousands of departed clients freed; give it back. */
    if (s->engine.freed_since_trim >= TRIM_AFTER) {
        s->engine.freed_since_trim = 0;
        malloc_trim(0);
    }
    lws_sul_schedule(s->ctx, 0, &s->tick, on_tick, TICK_US);
}

static int upgrade_allowed(bs_server_t *s, struct lws *wsi)
{
    char path[512];

    return header_eq(wsi, WSI_TOKEN_GET_URI, path, sizeof(path)) > 0 && strcmp(path, s->mount) == 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct lws_context *ctx = lws_get_context(wsi);
    bs_server_t *s = ctx ? lws_context_user(ctx) : NULL;
    bs_link_t *l = user;
    char peer[64];

    if (!s)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_publishes(s);
        return 0;
    /* Every accepted socket is created and destroyed once, whatever
     * protocol it binds; only the listening socket's destroy, at shutdown,
     * is not a connection. */
    case LWS_CALLBACK_WSI_CREATE:
        __atomic_fetch_add(&s->conn_stats.connections, 1, __ATOMIC_RELAXED);
        break;
    case LWS_CALLBACK_WSI_DESTROY:
        if (!s->destroying)
            __atomic_fetch_sub(&s->conn_stats.connections, 1, __ATOMIC_RELAXED);
        break;
    case LWS_CALLBACK_HTTP:
        return http_request(s, wsi, l, in);
    case LWS_CALLBACK_HTTP_BODY:
        return http_body(s, l, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return http_body_done(s, wsi, l);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return l ? http_write(s, wsi, l) : 0;
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        link_close(s, l);
        return 0;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        if (upgrade_allowed(s, wsi))
            return 0;
        lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
        return 1;
    case LWS_CALLBACK_ESTABLISHED:
        link_open(l, wsi, BS_VIA_WS);
        if (bs_log_verbose(s)) {
            lws_get_peer_simple(wsi, peer, sizeof(peer));
            bs_log(s, 'I', "websocket opened from %s", peer);
        }
        return 0;
    case LWS_CALLBACK_RECEIVE:
        return ws_receive(s, wsi, l, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return ws_write(s, wsi, l);
    case LWS_CALLBACK_CLOSED:
        if (bs_log_verbose(s))
            bs_log(s, 'I', "websocket closed%s%s", l->client ? ": client " : "",
                   l->client ? l->client->id : "");
        link_close(s, l);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void *service_main(void *arg)
{
    bs_server_t *s = arg;
    int n = 0;

    lws_sul_schedule(s->ctx, 0, &s->tick, on_tick, TICK_US);
    s->alive_for_drain = 1;
    while (n >= 0 && !__atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE))
        n = lws_service(s->ctx, 0);
    pthread_mutex_lock(&s->lock);
    s->alive = 0;
    pthread_mutex_unlock(&s->lock);
    lws_sul_cancel(&s->tick);
    lws_sul_cancel(&s->due_tick);
    /* Closes every connection; each CLOSED callback unlinks its client. */
    s->destroying = 1;
    lws_context_destroy(s->ctx);
    s->ctx = NULL;
    __atomic_store_n(&s->conn_stats.connections, 0, __ATOMIC_RELAXED);
    /* Only now: every CLOSED callback above took its link out of the heap. */
    free(s->heap);
    s->heap = NULL;
    s->heap_len = s->heap_cap = 0;
    bs_engine_free(&s->engine);
    s->alive_for_drain = 0;
    drain_publishes(s);                     /* the engine is gone: just frees */
    bs_buf_free(&s->tx);
    release_log_fd(s);
    return NULL;
}

/* ---- the public API ----------------------------------------------------------------- */

static char *dup_str(const char *p)
{
    return p ? strdup(p) : NULL;
}

static char **dup_list(const char *const *v)
{
    size_t n = 0, i;
    char **out;

    if (!v)
        return NULL;
    while (v[n])
        n++;
    if (!(out = calloc(n + 1, sizeof(*out))))
        return NULL;
    for (i = 0; i < n; i++)
        out[i] = strdup(v[i]);
    return out;
}

static void free_list(char **v)
{
    size_t i;

    for (i = 0; v && v[i]; i++)
        free(v[i]);
    free(v);
}

bs_server_t *bs_server_new(const bs_server_config_t *cfg)
{
    bs_server_t *s = calloc(1, sizeof(*s));
    size_t mlen;

    if (!s)
        return NULL;
    s->cfg = *cfg;
    s->host = dup_str(cfg->host ? cfg->host : "127.0.0.1");
    s->mount = dup_str(cfg->mount && *cfg->mount ? cfg->mount : "/faye");
    s->key = dup_str(cfg->key_path);
    s->cert = dup_str(cfg->cert_path);
    s->secret = cfg->secret && *cfg->secret ? dup_str(cfg->secret) : NULL;
    s->signed_channels = dup_list(cfg->signed_channels);
    s->public_channels = dup_list(cfg->public_channels);
    mlen = strlen(s->mount ? s->mount : "");
    s->js_path = malloc(mlen + 4);
    s->js_path2 = malloc(mlen + 11);
    if (s->js_path && s->js_path2 && s->mount) {
        memcpy(s->js_path, s->mount, mlen);
        memcpy(s->js_path + mlen, ".js", 4);
        memcpy(s->js_path2, s->mount, mlen);
        memcpy(s->js_path2 + mlen, "/client.js", 11);
    }
    if (cfg->client_js && cfg->client_js_len && (s->js = malloc(BS_PRE + cfg->client_js_len)))
        memcpy(s->js + BS_PRE, cfg->client_js, cfg->client_js_len);
    s->cfg.host = s->host;
    s->cfg.mount = s->mount;
    s->cfg.key_path = s->key;
    s->cfg.cert_path = s->cert;
    s->cfg.secret = s->secret;
    s->cfg.signed_channels = (const char *const *)s->signed_channels;
    s->cfg.public_channels = (const char *const *)s->public_channels;
    s->cfg.client_js = NULL;
    if (!s->cfg.timeout)
        s->cfg.timeout = 45;
    if (!s->cfg.max_message_size)
        s->cfg.max_message_size = 65536;
    if (!s->cfg.max_depth)
        s->cfg.max_depth = 32;
    if (!s->cfg.max_batch)
        s->cfg.max_batch = 100;
    if (!s->cfg.max_subscriptions)
        s->cfg.max_subscriptions = 1000;
    if (!s->cfg.max_queue)
        s->cfg.max_queue = 1000;
    if (!s->cfg.history_size)
        s->cfg.history_size = 100;
    if (!s->cfg.history_ttl)
        s->cfg.history_ttl = 300;
    if (!s->cfg.history_memory)
        s->cfg.history_memory = 64u << 20;
    if (!s->host || !s->mount || !s->js_path || !s->js_path2 ||
        (cfg->key_path && !s->key) || (cfg->cert_path && !s->cert) ||
        (cfg->client_js_len && !s->js) || (cfg->signed_channels && !s->signed_channels) ||
        (cfg->public_channels && !s->public_channels)) {
        bs_server_free(s);
        return NULL;
    }
    pthread_mutex_init(&s->lock, NULL);
    s->lock_ready = 1;
    s->protocols[0] = (struct lws_protocols){
        .name = "bayeux",
        .callback = callback,
        .per_session_data_size = sizeof(link_t),
        .rx_buffer_size = RX_BUFFER,
    };
    /* lws pings a WebSocket when it has not seen a pong for a minute (or a
     * connect's length) and hangs up when none comes. Application traffic is
     * not reported to lws: each report re-sorts lws's timer list. Silent
     * clients are expired by the engine anyway. */
    s->retry = (lws_retry_bo_t){
        .secs_since_valid_ping = (uint16_t)(s->cfg.timeout + 5 > 60 ? s->cfg.timeout + 5 : 60),
        .secs_since_valid_hangup = (uint16_t)(s->cfg.timeout + 5 > 60 ? s->cfg.timeout + 35 : 90),
    };
    bs_engine_init(&s->engine, &s->cfg, s);
    bs_buf_init(&s->tx);
    if (cfg->redis_host && cfg->redis_host[0]) {
        if (!cfg->redis_script || !(s->backplane = bs_backplane_new(&s->cfg, s))) {
            bs_server_free(s);
            return NULL;
        }
        s->engine.backplane = s->backplane;
    }
    /* The backplane keeps its own copies. */
    s->cfg.redis_host = s->cfg.redis_password = s->cfg.redis_script = s->cfg.redis_prefix = NULL;
    s->cfg.log_fd = cfg->log_fd;
    return s;
}

/* A taken port is the usual reason lws cannot listen; say so plainly. */
static int port_taken(const char *host, int port)
{
    struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE }, *ai = NULL;
    char service[16];
    int fd, one = 1, taken = 0;

    snprintf(service, sizeof(service), "%d", port);
    if (getaddrinfo(host, service, &hints, &ai) || !ai)
        return 0;
    fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        taken = bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno == EADDRINUSE;
        close(fd);
    }
    freeaddrinfo(ai);
    return taken;
}

int bs_server_start(bs_server_t *s, char *err, size_t errlen)
{
    struct lws_context_creation_info info;
    sigset_t all, old;
    int rc;

    if (s->started) {
        snprintf(err, errlen, "this server was already started; make a new BackboneSync::Server");
        return -1;
    }
    if ((s->key != NULL) != (s->cert != NULL)) {
        snprintf(err, errlen, "TLS needs both key: and cert:");
        return -1;
    }
    if (s->cfg.port > 0 && port_taken(s->host, s->cfg.port)) {
        snprintf(err, errlen, "port %d on %s is already in use: stop the other server or pick another port",
                 s->cfg.port, s->host);
        return -2;
    }
    if (s->cfg.log_fd >= 0)
        fcntl(s->cfg.log_fd, F_SETFL, fcntl(s->cfg.log_fd, F_GETFL) | O_NONBLOCK);
    /* lws has one log sink per process: the newest server's pipe, or none. */
    __atomic_store_n(&g_lws_log_fd, s->cfg.log_fd, __ATOMIC_RELAXED);
    lws_set_log_level(LLL_ERR | LLL_WARN, lws_emit);

    memset(&info, 0, sizeof(info));
    info.port = s->cfg.port;
    info.iface = s->host;
    info.protocols = s->protocols;
    info.user = s;
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
    if (!strchr(s->host, ':'))
        info.options |= LWS_SERVER_OPTION_DISABLE_IPV6;
    if (s->key) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = s->cert;
        info.ssl_private_key_filepath = s->key;
    }
    info.retry_and_idle_policy = &s->retry;
    info.timeout_secs = 20;
    info.keepalive_timeout = 5;
    s->ctx = lws_create_context(&info);
    if (!s->ctx) {
        release_log_fd(s);
        /* Another process may have bound the port since the check above. */
        if (s->cfg.port > 0 && port_taken(s->host, s->cfg.port)) {
            snprintf(err, errlen, "port %d on %s is already in use: stop the other server or pick another port",
                     s->cfg.port, s->host);
            return -2;
        }
        snprintf(err, errlen, "could not listen on %s:%d%s (see the log for libwebsockets' reason)",
                 s->host, s->cfg.port, s->key ? " with TLS: check that key: and cert: are readable PEM files" : "");
        return -1;
    }
    s->port = lws_get_vhost_listen_port(lws_get_vhost_by_name(s->ctx, "default"));
    if (s->port <= 0)
        s->port = s->cfg.port;
    s->pid = getpid();
    s->started = 1;
    pthread_mutex_lock(&s->lock);
    s->alive = 1;
    pthread_mutex_unlock(&s->lock);
    if (s->backplane && bs_backplane_start(s->backplane)) {
        snprintf(err, errlen, "could not start the Redis backplane thread");
        bs_backplane_free(s->backplane);
        s->backplane = s->engine.backplane = NULL;
    }
    /* Signals belong to Ruby: the service thread is born with all blocked. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&s->thread, NULL, service_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        pthread_mutex_lock(&s->lock);
        s->alive = 0;
        pthread_mutex_unlock(&s->lock);
        lws_context_destroy(s->ctx);
        s->ctx = NULL;
        s->started = 0;
        snprintf(err, errlen, "could not start the server thread: %s", strerror(rc));
        return -1;
    }
    return 0;
}

int bs_server_port(const bs_server_t *s)
{
    return s->port;
}

int bs_server_running(const bs_server_t *s)
{
    return s->started && !s->forgotten && !__atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE) &&
           s->pid == getpid();
}

void bs_server_stop(bs_server_t *s)
{
    if (!s->started || s->forgotten || s->pid != getpid())
        return;
    if (!__atomic_exchange_n(&s->stop_requested, 1, __ATOMIC_ACQ_REL)) {
        /* First the backplane, so nothing new arrives from Redis. */
        bs_backplane_stop(s->backplane);
        pthread_mutex_lock(&s->lock);
        if (s->alive)
            lws_cancel_service(s->ctx);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
    }
}

void bs_server_forget(bs_server_t *s)
{
    s->forgotten = 1;
}

void bs_server_free(bs_server_t *s)
{
    if (!s)
        return;
    if (s->forgotten || (s->started && s->pid != getpid())) {
        /* A forked child: the context and the thread belong to the parent. */
        return;
    }
    bs_server_stop(s);
    if (s->lock_ready)
        pthread_mutex_destroy(&s->lock);
    free(s->host);
    free(s->mount);
    free(s->key);
    free(s->cert);
    free(s->secret);
    free_list(s->signed_channels);
    free_list(s->public_channels);
    free(s->js);
    free(s->js_path);
    free(s->js_path2);
    bs_buf_free(&s->tx);
    bs_backplane_free(s->backplane);
    free(s);
}

/* Hands p to the service thread. Returns BS_OK, BS_ESTOPPED or BS_EFULL;
 * p is freed unless BS_OK. */
static int enqueue(bs_server_t *s, pending_t *p)
{
    pthread_mutex_lock(&s->lock);
    if (!s->alive) {
        pthread_mutex_unlock(&s->lock);
        free(p);
        return BS_ESTOPPED;
    }
    if (p->kind == P_LOCAL &&
        (s->npending >= MAX_PENDING || s->pending_bytes + p->len > MAX_PENDING_BYTES)) {
        pthread_mutex_unlock(&s->lock);
        free(p);
        return BS_EFULL;
    }
    if (s->tail)
        s->tail->next = p;
    else
        s->head = p;
    s->tail = p;
    s->npending++;
    s->pending_bytes += p->len;
    /* One wakeup per batch: the loop drains everything queued by then. */
    if (s->npending == 1)
        lws_cancel_service(s->ctx);
    pthread_mutex_unlock(&s->lock);
    return BS_OK;
}

static pending_t *pending_new(int kind, const char *channel, size_t chlen, const char *data, size_t len)
{
    pending_t *p = malloc(sizeof(*p) + chlen + 1 + len);

    if (!p)
        return NULL;
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->chlen = chlen;
    p->len = len;
    p->channel = (char *)(p + 1);
    memcpy(p->channel, channel, chlen);
    p->channel[chlen] = '\0';
    p->data = p->channel + chlen + 1;
    memcpy(p->data, data, len);
    return p;
}

/* Backplane thread: the service thread takes it from here. Messages from
 * Redis are not refused at the bound: Redis already accepted them. */
void bs_server_remote(void *server, const char *channel, size_t chlen, uint64_t offset,
                      const char *epoch, size_t elen, const char *frame, size_t flen)
{
    bs_server_t *s = server;
    pending_t *p = pending_new(P_REMOTE, channel, chlen, frame, flen);

    if (!p)
        return;
    p->offset = offset;
    p->elen = elen > BS_EPOCH_LEN ? BS_EPOCH_LEN : elen;
    memcpy(p->epoch, epoch, p->elen);
    enqueue(s, p);
}

void bs_server_resync(void *server)
{
    pending_t *p = pending_new(P_RESYNC, "", 0, "", 0);

    if (p)
        enqueue(server, p);
}

int bs_server_publish(bs_server_t *s, const char *channel, size_t chlen, const char *json, size_t len)
{
    pending_t *p;

    if (!s->started || s->forgotten || s->pid != getpid())
        return BS_ESTOPPED;
    /* /meta/ belongs to the protocol; nobody may subscribe to /service/. */
    if (!bs_channel_valid_name(channel, chlen) || (chlen > 6 && memcmp(channel, "/meta/", 6) == 0) ||
        (chlen > 9 && memcmp(channel, "/service/", 9) == 0))
        return BS_EINVAL;
    if (len > s->cfg.max_message_size)
        return BS_ETOOBIG;
    if (s->backplane) {
        /* Straight to Redis, from this thread: numbered there, fanned out
         * by every node when it comes back. */
        bs_buf_t head;
        int rc;

        bs_buf_init(&head);
        if (bs_delivery_head(&head, channel, chlen, json, len, NULL, 0, NULL, 0)) {
            bs_buf_free(&head);
            return BS_ENOMEM;
        }
        rc = bs_backplane_publish(s->backplane, channel, chlen, head.ptr, head.len);
        bs_buf_free(&head);
        return rc;
    }
    /* The service thread turns this into one frame that every subscriber shares. */
    if (!(p = pending_new(P_LOCAL, channel, chlen, json, len)))
        return BS_ENOMEM;
    return enqueue(s, p);
}

void bs_server_stats(bs_server_t *s, bs_stats_t *out)
{
    const bs_stats_t *e = &s->engine.stats;

#define LOAD(src, f) __atomic_load_n(&(src)->f, __ATOMIC_RELAXED)
    out->connections = LOAD(&s->conn_stats, connections);
    out->bytes_out = LOAD(&s->conn_stats, bytes_out);
    out->clients = LOAD(e, clients);
    out->channels = LOAD(e, channels);
    out->subscriptions = LOAD(e, subscriptions);
    out->messages_in = LOAD(e, messages_in);
    out->messages_out = LOAD(e, messages_out);
    out->slow_clients_dropped = LOAD(e, slow_clients_dropped);
    out->errors = LOAD(e, errors);
    out->backplane_up = out->backplane_queued = out->backplane_refused = 0;
    if (s->backplane)
        bs_backplane_stats(s->backplane, out);
#undef LOAD
}

/*
 * server.c: the server as the Ruby bindings see it: the libwebsockets
 * context and its service thread, start, stop and fork, the configuration
 * (copied once), publishing from any thread, the counters, and the wiring
 * of the layers below: the engine's ops land in the transports and the
 * backplane, the backplane's sink and in-process publishes land in the
 * inbox, and lws's callbacks are dispatched to http.c and ws.c. Layer: the
 * top of the core, below the Ruby bindings.
 *
 * Threads: bs_server_new/start/stop/free run in the caller's thread (Ruby,
 * with or without the GVL); bs_server_publish and bs_server_stats in any
 * thread; the backplane sink in the backplane thread. Everything else runs
 * in the service thread, which owns the lws context, the engine and the
 * transports and never calls Ruby. Shared: the inbox (its own lock) and the
 * counters (atomics).
 *
 * The loop (config event_loop): lws's own poll loop, turned by lws_service,
 * or a libev loop (epoll) that lws joins as a foreign loop, made in start,
 * run and destroyed by the service thread (by start itself when start
 * fails). lws needs its libev plugin (libwebsockets-evlib_ev.so) for the
 * second. Either way bs_transport_turn_end runs once per turn, after the
 * turn's callbacks and before the loop waits again.
 */
#define _GNU_SOURCE                         /* pthread_setname_np */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <malloc.h>

#include <libwebsockets.h>
#include <ev.h>

#include "backbone_sync.h"
#include "backplane.h"
#include "rnames.h"
#include "bayeux.h"
#include "channel.h"
#include "inbox.h"
#include "transport.h"

#define TICK_US (1000 * LWS_US_PER_MS)     /* the sweep: expiry only; deadlines have the heap */
#define TRIM_AFTER (256u << 10)             /* bytes freed before the heap is handed back (checked once a second) */
#define CONNECTION_BYTES 4096               /* what lws frees with a connection: the wsi, its rx
                                             * buffer, a header table; lws does not say, so estimated */
#define MAX_PENDING 100000                  /* publishes waiting for the service thread */
#define MAX_PENDING_BYTES (64u << 20)
#define RX_BUFFER 768                       /* lws's per-WebSocket receive buffer: small keeps idle sockets cheap */
/* The most lws hands the kernel in one send(). Left at 0, lws sends at most
 * rx_buffer_size bytes per call and copies the rest of a frame into its own
 * buffer for later turns, so a 32 KB frame would take 32 turns. What the
 * socket does not take is still kept by lws and sent when writable. */
#define TX_PACKET (1u << 20)
/* What event_loop: :ev needs installed, said by each error that lacks it. */
#define EV_INSTALL "apt-get install libwebsockets-evlib-ev libev-dev, or use event_loop: :poll"

struct bs_server {
    bs_server_config_t cfg;                 /* strings below are our own copies */
    char *host, *mount, *key, *cert, *secret;
    char **signed_channels, **public_channels, **allowed_origins;
    unsigned char *js;                      /* client_js with BS_PRE headroom */
    char *js_path, *js_path2;
    bs_log_t log;

    struct lws_context *ctx;
    struct ev_loop *evloop;                 /* event_loop ev: the libev loop lws runs on; NULL with poll */
    ev_prepare turn;                        /* service thread: turn_end on the libev loop */
    void *foreign[1];                       /* lws's foreign_loops: { evloop } */
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
    int made;                               /* the inbox and the engine exist (for free) */
    size_t freed;                           /* service thread: bytes freed since the last heap trim */
    bs_stats_t conn_stats;                  /* connections, bytes_out, the outbox figures: atomics */

    bs_inbox_t inbox;                       /* its own lock */
    bs_engine_ops_t ops;
    bs_engine_t engine;                     /* service thread */
    bs_transport_t transport;               /* service thread */
    bs_backplane_t *backplane;              /* Redis, or NULL */
};

/*
 * libev, reached through dlopen(RTLD_LOCAL) when the first event_loop: :ev
 * server starts, never linked: an extension that exports ev_run and the rest
 * takes the place of the libev that other extensions build in (nio4r, so
 * Puma's reactor: it ran this libev's ev_run on its own loop and slept
 * through its wakeups). The other way round, a libev that an extension
 * already loaded exports takes the place of this one for lws's libev plugin,
 * whose watchers then never fire: so :ev refuses to start in such a process
 * (lev_conflict). lws's plugin shares this copy (one soname, loaded once).
 */
static struct {
    __typeof__(ev_loop_new) *loop_new;
    __typeof__(ev_loop_destroy) *loop_destroy;
    __typeof__(ev_run) *run;
    __typeof__(ev_break) *brk;
    __typeof__(ev_prepare_start) *prepare_start;
    __typeof__(ev_prepare_stop) *prepare_stop;
    char error[200];                        /* why it could not be loaded, or "" */
} lev;
static pthread_once_t lev_once = PTHREAD_ONCE_INIT;

static void lev_load(void)
{
    void *h = dlopen("libev.so.4", RTLD_NOW | RTLD_LOCAL);
    const char *why;

    if (h && (lev.loop_new = (__typeof__(lev.loop_new))dlsym(h, "ev_loop_new")) &&
        (lev.loop_destroy = (__typeof__(lev.loop_destroy))dlsym(h, "ev_loop_destroy")) &&
        (lev.run = (__typeof__(lev.run))dlsym(h, "ev_run")) && (lev.brk = (__typeof__(lev.brk))dlsym(h, "ev_break")) &&
        (lev.prepare_start = (__typeof__(lev.prepare_start))dlsym(h, "ev_prepare_start")) &&
        (lev.prepare_stop = (__typeof__(lev.prepare_stop))dlsym(h, "ev_prepare_stop")))
        return;                             /* kept open for the life of the process */
    why = dlerror();
    snprintf(lev.error, sizeof(lev.error), "%s", why ? why : "libev.so.4 lacks a function");
    lev.loop_new = NULL;
}

/* Where another libev's ev_run is visible to every library, the file that
 * holds it (e.g. nio4r's extension); NULL when there is none but libev's. */
static const char *lev_conflict(void)
{
    void *f = dlsym(RTLD_DEFAULT, "ev_run");
    Dl_info info;

    if (!f || !dladdr(f, &info) || !info.dli_fname)
        return NULL;
    return strstr(info.dli_fname, "/libev.so") ? NULL : info.dli_fname;
}

static int g_lws_log_fd = -1;               /* process-global, as lws's log sink is */

/* ---- lws's log hook ---------------------------------------------------------- */

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
        bs_log_line(fd, level == LLL_ERR ? 'E' : level == LLL_WARN ? 'W' : 'I', line);
    else if (level == LLL_ERR && write(2, line, strlen(line)) < 0)
        return;
}

/* ---- the engine's ops ---------------------------------------------------------- */

static void op_wake(void *ctx, bs_link_t *l)
{
    bs_server_t *s = ctx;

    bs_transport_wake(&s->transport, l);
}

static void op_lost_client(void *ctx, bs_link_t *l, int close)
{
    (void)ctx;
    bs_transport_lost_client(l, close);
}

static int op_route(void *ctx, const char *channel, size_t chlen, const char *head, size_t hlen,
                    const char *event_id, size_t idlen)
{
    bs_server_t *s = ctx;

    return bs_backplane_publish(s->backplane, channel, chlen, head, hlen, event_id, idlen);
}

static int op_load(void *ctx, const char *channel, size_t chlen, const char *epoch /* NULL: a barrier */)
{
    bs_server_t *s = ctx;

    return bs_backplane_request_load(s->backplane, channel, chlen, epoch);
}

static void op_interest(void *ctx, const char *name, size_t len, int on)
{
    bs_server_t *s = ctx;

    if (bs_backplane_interest(s->backplane, name, len, on))
        bs_log(&s->log, 'E', "out of memory: this node may miss the messages of %.*s", (int)len, name);
}

/* ---- the backplane's sink: its thread hands over to the service thread -------- */

/* Messages from Redis are not refused at the bound: Redis already accepted them. */
static void sink_message(void *ctx, const char *channel, size_t chlen, uint64_t offset, const char *epoch,
                         size_t elen, const char *frame, size_t flen)
{
    bs_server_t *s = ctx;
    bs_item_t *p = bs_item_new(BS_INBOX_REMOTE, channel, chlen, frame, flen);

    if (!p)
        return;
    p->offset = offset;
    p->elen = elen > BS_EPOCH_LEN ? BS_EPOCH_LEN : elen;
    memcpy(p->epoch, epoch, p->elen);
    bs_inbox_put(&s->inbox, p);
}

/* The answer to a load: to the service thread, which answers the
 * subscribes waiting for it. Never refused: someone waits for it. */
static void sink_loaded(void *ctx, const char *channel, size_t chlen, bs_loaded_t *l)
{
    bs_server_t *s = ctx;
    bs_item_t *p = bs_item_new(BS_INBOX_LOADED, channel, chlen, "", 0);

    if (!p) {
        if (l)
            bs_loaded_free(l);
        free(l);
        return;
    }
    p->ptr = l;
    if (bs_inbox_put(&s->inbox, p) != BS_OK && l) {
        bs_loaded_free(l);
        free(l);
    }
}

/* The lost partitions travel as the item's data: 8 bytes, or none for all. */
static void sink_resync(void *ctx, const uint64_t *lost)
{
    bs_server_t *s = ctx;
    bs_item_t *p = bs_item_new(BS_INBOX_RESYNC, "", 0, lost ? (const char *)lost : "", lost ? sizeof(*lost) : 0);

    if (p)
        bs_inbox_put(&s->inbox, p);
}

/* For bs_engine_resync: whether what name (a channel or a pattern) heard
 * through the backplane may have gaps, when the partitions in *ctx were
 * lost. A pattern listens in every partition. */
static int in_lost_partition(void *ctx, const char *name, size_t len)
{
    const uint64_t *lost = ctx;

    return bs_rnames_listens_in(name, len, *lost);
}

/* Any thread, under the inbox's lock: the context exists while it is open. */
static void wake_loop(void *ctx)
{
    bs_server_t *s = ctx;

    lws_cancel_service(s->ctx);
}

/* ---- the service loop ------------------------------------------------------------ */

static void drain_inbox(bs_server_t *s, int engine_alive)
{
    bs_item_t *p = bs_inbox_take(&s->inbox), *next;

    for (; p; p = next) {
        next = p->next;
        if (!engine_alive) {
            /* the engine is gone: only free */
        } else if (p->kind == BS_INBOX_REMOTE) {
            bs_engine_remote(&s->engine, p->channel, p->chlen, p->offset, p->epoch, p->elen, p->data, p->len);
        } else if (p->kind == BS_INBOX_RESYNC) {
            uint64_t lost;

            if (p->len == sizeof(lost))
                memcpy(&lost, p->data, sizeof(lost));
            bs_engine_resync(&s->engine, p->len == sizeof(lost) ? in_lost_partition : NULL, &lost);
        } else if (p->kind == BS_INBOX_LOADED) {
            bs_engine_loaded(&s->engine, p->channel, p->chlen, p->ptr);
        } else {
            if (bs_log_verbose(&s->log))
                bs_log(&s->log, 'I', "publish: %s (%zu bytes, in-process)", p->channel, p->len);
            BS_STAT_ADD(&s->engine.stats, messages_in, 1);
            int rc = bs_engine_publish(&s->engine, p->channel, p->chlen, p->data, p->len, NULL, 0, NULL, 0,
                                       p->extra, p->xlen);

            if (rc != BS_OK && rc != BS_EDUPLICATE) {
                BS_STAT_ADD(&s->engine.stats, errors, 1);
                bs_log(&s->log, 'E', "publish to %s lost: out of memory", p->channel);
            }
        }
        if (p->kind == BS_INBOX_LOADED && p->ptr) {
            bs_loaded_free(p->ptr);
            free(p->ptr);
        }
        free(p);
    }
}

static void on_tick(lws_sorted_usec_list_t *sul)
{
    bs_server_t *s = lws_container_of(sul, bs_server_t, tick);

    bs_engine_sweep(&s->engine, bs_now_ms());
    /* glibc keeps what departed clients and forgotten histories freed; give it back. */
    s->freed += bs_engine_take_freed(&s->engine);
    if (s->freed >= TRIM_AFTER) {
        s->freed = 0;
        malloc_trim(0);
    }
    lws_sul_schedule(s->ctx, 0, &s->tick, on_tick, TICK_US);
}

static int stats_json(void *ctx, bs_buf_t *out)
{
    bs_stats_t st;
    char tmp[1024];

    bs_server_stats(ctx, &st);
    snprintf(tmp, sizeof(tmp),
             "{\"connections\":%llu,\"clients\":%llu,\"channels\":%llu,\"subscriptions\":%llu,"
             "\"messages_in\":%llu,\"messages_out\":%llu,\"bytes_out\":%llu,"
             "\"slow_clients_dropped\":%llu,\"errors\":%llu,\"backplane_up\":%llu,"
             "\"backplane_queued\":%llu,\"backplane_refused\":%llu,\"backplane_received\":%llu,"
             "\"history_channels\":%llu,"
             "\"history_bytes\":%llu,\"clients_refused\":%llu,\"clients_evicted\":%llu,"
             "\"duplicates_dropped\":%llu,\"outbox_waiting\":%llu,\"outbox_oldest_age\":%.3f}",
             (unsigned long long)st.connections, (unsigned long long)st.clients,
             (unsigned long long)st.channels, (unsigned long long)st.subscriptions,
             (unsigned long long)st.messages_in, (unsigned long long)st.messages_out,
             (unsigned long long)st.bytes_out, (unsigned long long)st.slow_clients_dropped,
             (unsigned long long)st.errors, (unsigned long long)st.backplane_up,
             (unsigned long long)st.backplane_queued, (unsigned long long)st.backplane_refused,
             (unsigned long long)st.backplane_received,
             (unsigned long long)st.history_channels, (unsigned long long)st.history_bytes,
             (unsigned long long)st.clients_refused, (unsigned long long)st.clients_evicted,
             (unsigned long long)st.duplicates_dropped, (unsigned long long)st.outbox_waiting,
             (double)st.outbox_oldest_ms / 1000.0);
    return bs_buf_append_str(out, tmp);
}

/* lws's one protocol callback: HTTP and WebSocket share the mount path. */
static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    struct lws_context *ctx = lws_get_context(wsi);
    bs_server_t *s = ctx ? lws_context_user(ctx) : NULL;
    bs_tlink_t *tl = user;
    bs_transport_t *t;
    char peer[64];

    if (!s)
        return lws_callback_http_dummy(wsi, reason, user, in, len);
    t = &s->transport;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
        drain_inbox(s, 1);
        if (s->evloop && __atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE))
            lev.brk(s->evloop, EVBREAK_ALL);
        return 0;
    /* Every accepted socket is created and destroyed once, whatever
     * protocol it binds; only the listening socket's destroy, at shutdown,
     * is not a connection. */
    case LWS_CALLBACK_WSI_CREATE:
        BS_STAT_ADD(&s->conn_stats, connections, 1);
        break;
    case LWS_CALLBACK_WSI_DESTROY:
        if (!s->destroying)
            BS_STAT_SUB(&s->conn_stats, connections, 1);
        /* Counted for the heap trim: lws's frees are most of what a churn gives back. */
        s->freed += CONNECTION_BYTES;
        break;
    case LWS_CALLBACK_HTTP:
        return bs_http_request(t, wsi, tl, in);
    case LWS_CALLBACK_HTTP_BODY:
        return bs_http_body(t, wsi, tl, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return bs_http_body_done(t, wsi, tl);
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return tl ? bs_http_write(t, wsi, tl, 0) : 0;
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        bs_transport_link_close(t, tl);
        return 0;
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: {
        unsigned int status = bs_http_upgrade_refusal(t, wsi, in);

        if (!status)
            return 0;
        lws_return_http_status(wsi, status, NULL);
        return 1;
    }
    case LWS_CALLBACK_ESTABLISHED:
        bs_transport_link_open(&tl->core, wsi, BS_VIA_WS);
        if (bs_log_verbose(&s->log)) {
            lws_get_peer_simple(wsi, peer, sizeof(peer));
            bs_log(&s->log, 'I', "websocket opened from %s", peer);
        }
        return 0;
    case LWS_CALLBACK_RECEIVE:
        return bs_ws_receive(t, wsi, &tl->core, in, len);
    case LWS_CALLBACK_SERVER_WRITEABLE:
        return bs_ws_write(t, wsi, &tl->core);
    case LWS_CALLBACK_CLOSED:
        if (bs_log_verbose(&s->log))
            bs_log(&s->log, 'I', "websocket closed%s%s", tl->core.client ? ": client " : "",
                   tl->core.client ? tl->core.client->id : "");
        bs_transport_link_close(t, tl);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

/* Service thread: libev runs prepare watchers before each wait for events,
 * the point where the poll loop's turn ends too. */
static void on_ev_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    (void)loop;
    (void)revents;
    bs_transport_turn_end(&lws_container_of(w, bs_server_t, turn)->transport);
}

/* Service thread: turns the loop until stop is requested. At the end of
 * each turn bs_transport_turn_end reads the rest of a publisher's burst,
 * then asks for the writes of the links woken during the turn. */
static void run_loop(bs_server_t *s)
{
    int n = 0;

    if (!s->evloop) {
        while (n >= 0 && !__atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE)) {
            n = lws_service(s->ctx, 0);
            bs_transport_turn_end(&s->transport);
        }
        return;
    }
    /* The active prepare watcher keeps ev_run from returning on its own:
     * only the ev_break of a requested stop (the wait-cancelled callback)
     * ends it. A stop requested before ev_run starts left lws's cancel pipe
     * readable, so the first turn breaks. */
    ev_prepare_init(&s->turn, on_ev_prepare);
    lev.prepare_start(s->evloop, &s->turn);
    if (!__atomic_load_n(&s->stop_requested, __ATOMIC_ACQUIRE))
        lev.run(s->evloop, 0);
    lev.prepare_stop(s->evloop, &s->turn);
}

/* After lws_context_destroy, which stopped lws's watchers on the loop: in
 * the service thread, or in start's thread when start fails. */
static void destroy_loop(bs_server_t *s)
{
    if (s->evloop) {
        lev.loop_destroy(s->evloop);
        s->evloop = NULL;
        s->foreign[0] = NULL;
    }
}

static void *service_main(void *arg)
{
    bs_server_t *s = arg;

    /* Named, so that its CPU can be told apart (/proc/<pid>/task/<tid>/comm). */
    pthread_setname_np(pthread_self(), "backbone_sync");
    lws_sul_schedule(s->ctx, 0, &s->tick, on_tick, TICK_US);
    run_loop(s);
    bs_inbox_set_open(&s->inbox, 0);
    lws_sul_cancel(&s->tick);
    bs_transport_cancel_timer(&s->transport);
    /* Closes every connection; each CLOSED callback unlinks its client. */
    s->destroying = 1;
    lws_context_destroy(s->ctx);
    s->ctx = NULL;
    destroy_loop(s);
    BS_STAT_SET(&s->conn_stats, connections, 0);
    /* Only now: every CLOSED callback above took its link out of the heap. */
    bs_transport_free(&s->transport);
    bs_engine_free(&s->engine);
    drain_inbox(s, 0);                      /* the engine is gone: just frees */
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

/* Joins a and b into a new string, or NULL. */
static char *join(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char *p = malloc(la + lb + 1);

    if (p) {
        memcpy(p, a, la);
        memcpy(p + la, b, lb + 1);
    }
    return p;
}

bs_server_t *bs_server_new(const bs_server_config_t *cfg)
{
    bs_server_t *s = calloc(1, sizeof(*s));
    static const bs_backplane_sink_t sink_ops = { sink_message, sink_resync, sink_loaded, NULL };
    bs_backplane_sink_t sink = sink_ops;

    if (!s) {
        errno = ENOMEM;
        return NULL;
    }
    if (!cfg->host || !cfg->mount || cfg->timeout <= 0 || !cfg->max_message_size || cfg->max_depth <= 0 ||
        cfg->max_batch <= 0 || cfg->max_subscriptions <= 0 || cfg->max_queue <= 0 || cfg->max_clients <= 0 || cfg->max_channels <= 0 ||
        cfg->request_timeout <= 0 || cfg->history_size < 0 || cfg->history_ttl <= 0 ||
        (cfg->event_loop != BS_LOOP_POLL && cfg->event_loop != BS_LOOP_EV)) {
        free(s);
        errno = EINVAL;                     /* server.rb gives every value: nothing is defaulted here */
        return NULL;
    }
    s->cfg = *cfg;
    s->host = dup_str(cfg->host);
    s->mount = dup_str(cfg->mount);
    s->key = dup_str(cfg->key_path);
    s->cert = dup_str(cfg->cert_path);
    s->secret = cfg->secret && *cfg->secret ? dup_str(cfg->secret) : NULL;
    s->signed_channels = dup_list(cfg->signed_channels);
    s->public_channels = dup_list(cfg->public_channels);
    s->allowed_origins = dup_list(cfg->allowed_origins);
    s->js_path = join(cfg->mount, ".js");
    s->js_path2 = join(cfg->mount, "/client.js");
    if (cfg->client_js && cfg->client_js_len && (s->js = malloc(BS_PRE + cfg->client_js_len)))
        memcpy(s->js + BS_PRE, cfg->client_js, cfg->client_js_len);
    s->cfg.host = s->host;
    s->cfg.mount = s->mount;
    s->cfg.key_path = s->key;
    s->cfg.cert_path = s->cert;
    s->cfg.secret = s->secret;
    s->cfg.signed_channels = (const char *const *)s->signed_channels;
    s->cfg.public_channels = (const char *const *)s->public_channels;
    s->cfg.allowed_origins = (const char *const *)s->allowed_origins;
    s->cfg.client_js = NULL;
    s->log = (bs_log_t){ .fd = cfg->log_fd, .verbose = cfg->verbose };
    if (!s->host || !s->mount || !s->js_path || !s->js_path2 ||
        (cfg->key_path && !s->key) || (cfg->cert_path && !s->cert) ||
        (cfg->client_js_len && !s->js) || (cfg->signed_channels && !s->signed_channels) ||
        (cfg->public_channels && !s->public_channels) || (cfg->allowed_origins && !s->allowed_origins)) {
        bs_server_free(s);
        return NULL;
    }
    s->protocols[0] = (struct lws_protocols){
        .name = "bayeux",
        .callback = callback,
        .per_session_data_size = sizeof(bs_tlink_t),
        .rx_buffer_size = RX_BUFFER,
        .tx_packet_size = TX_PACKET,
    };
    /* lws pings a WebSocket when it has not seen a pong for a minute (or a
     * connect's length) and hangs up when none comes. Application traffic is
     * not reported to lws: each report re-sorts lws's timer list. Silent
     * clients are expired by the engine anyway. */
    s->retry = (lws_retry_bo_t){
        .secs_since_valid_ping = (uint16_t)(s->cfg.timeout + 5 > 60 ? s->cfg.timeout + 5 : 60),
        .secs_since_valid_hangup = (uint16_t)(s->cfg.timeout + 5 > 60 ? s->cfg.timeout + 35 : 90),
    };
    bs_inbox_init(&s->inbox, MAX_PENDING, MAX_PENDING_BYTES, wake_loop, s);
    s->ops = (bs_engine_ops_t){ .wake = op_wake, .lost_client = op_lost_client };
    if (cfg->redis_nodes && cfg->redis_nodes[0]) {
        sink.ctx = s;
        if (!cfg->redis_script || !cfg->redis_prefix ||
            !(s->backplane = bs_backplane_new(&s->cfg, &s->log, &sink))) {
            bs_inbox_destroy(&s->inbox);
            s->cfg.redis_nodes = NULL;
            bs_server_free(s);
            return NULL;
        }
        s->ops.route = op_route;
        s->ops.load = op_load;
        s->ops.interest = op_interest;
    }
    bs_engine_init(&s->engine, &s->cfg, &s->log, &s->ops, s);
    bs_transport_init(&s->transport, &s->cfg, &s->log, &s->engine, &s->conn_stats);
    s->transport.js = s->js;
    s->transport.js_len = s->js ? cfg->client_js_len : 0;
    s->transport.js_path = s->js_path;
    s->transport.js_path2 = s->js_path2;
    s->transport.stats_json = stats_json;
    s->transport.stats_ctx = s;
    s->made = 1;
    /* The backplane keeps its own copies. */
    s->cfg.redis_nodes = s->cfg.redis_password = s->cfg.redis_script = s->cfg.redis_prefix = NULL;
    return s;
}

/* lws loads its libev support from a plugin (lws_plugins_init: the file in
 * LWS_INSTALL_LIBDIR whose base name is evlib_ev). When a context on libev
 * cannot be made, this tells a missing or broken plugin from the rest;
 * err gets dlerror's reason. Returns 1 when the plugin loads. */
static int ev_plugin_loads(char *err, size_t errlen)
{
    void *h = dlopen(LWS_INSTALL_LIBDIR "/libwebsockets-evlib_ev.so", RTLD_NOW | RTLD_LOCAL);
    const char *why;

    if (h) {
        dlclose(h);
        return 1;
    }
    why = dlerror();
    snprintf(err, errlen, "%s", why ? why : "cannot be loaded");
    return 0;
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
    if (s->cfg.event_loop == BS_LOOP_EV) {
        const char *other = lev_conflict();

        if (other) {
            release_log_fd(s);
            snprintf(err, errlen, "event_loop: :ev cannot run in this process: %s has its own libev built in "
                     "(nio4r's, as Puma loads it), which lws's libev plugin would use instead; use event_loop: :poll "
                     "here, or run the server in its own process (rake faye:start event_loop=ev)", other);
            return -1;
        }
        pthread_once(&lev_once, lev_load);
        if (!lev.loop_new) {
            release_log_fd(s);
            snprintf(err, errlen, "event_loop: :ev needs libev, which did not load (%s): " EV_INSTALL, lev.error);
            return -1;
        }
        /* epoll, never select's fd limit; NOSIGMASK: libev leaves signals
         * alone (they are Ruby's, and lws adds no signal watcher to a
         * foreign loop). */
        errno = 0;
        s->evloop = lev.loop_new(EVBACKEND_EPOLL | EVFLAG_NOSIGMASK);
        if (!s->evloop) {
            release_log_fd(s);
            snprintf(err, errlen, "event_loop: :ev could not make a libev loop with epoll (%s): " EV_INSTALL,
                     strerror(errno ? errno : ENOSYS));
            return -1;
        }
        s->foreign[0] = s->evloop;
        info.options |= LWS_SERVER_OPTION_LIBEV;
        info.foreign_loops = s->foreign;
    }
    if (s->key) {
        info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
        info.ssl_cert_filepath = s->cert;
        info.ssl_private_key_filepath = s->key;
    }
    info.retry_and_idle_policy = &s->retry;
    info.timeout_secs = 20;
    /* The headers of a request must all be in within request_timeout (lws
     * counts from the first byte); its body gets as long again (http.c). */
    info.timeout_secs_ah_idle = (unsigned int)s->cfg.request_timeout;
    info.keepalive_timeout = 5;
    /* HTTP/1.1 only: lws would speak h2 over TLS (and h2c on request), and
     * WebSockets over h2 streams never pass the upgrade checks in http.c. */
    info.alpn = "http/1.1";
    s->ctx = lws_create_context(&info);
    if (!s->ctx) {
        char why[256];

        destroy_loop(s);
        release_log_fd(s);
        if (s->cfg.event_loop == BS_LOOP_EV && !ev_plugin_loads(why, sizeof(why))) {
            snprintf(err, errlen, "event_loop: :ev needs libwebsockets' libev plugin, which did not load (%s): "
                     EV_INSTALL, why);
            return -1;
        }
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
    s->transport.ctx = s->ctx;
    s->port = lws_get_vhost_listen_port(lws_get_vhost_by_name(s->ctx, "default"));
    if (s->port <= 0)
        s->port = s->cfg.port;
    /* A node that cannot reach its peers must not run alone unnoticed. */
    if (s->backplane && bs_backplane_start(s->backplane, err, errlen)) {
        lws_context_destroy(s->ctx);
        s->ctx = NULL;
        destroy_loop(s);
        release_log_fd(s);
        return -1;
    }
    s->pid = getpid();
    s->started = 1;
    bs_inbox_set_open(&s->inbox, 1);
    /* Signals belong to Ruby: the service thread is born with all blocked. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&s->thread, NULL, service_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        bs_inbox_set_open(&s->inbox, 0);
        bs_backplane_stop(s->backplane);
        lws_context_destroy(s->ctx);
        s->ctx = NULL;
        destroy_loop(s);
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
        bs_inbox_poke(&s->inbox);
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
    if (s->made) {
        if (!s->started) {
            /* Never served: the service thread did not free these. */
            bs_transport_free(&s->transport);
            bs_engine_free(&s->engine);
        }
        bs_inbox_destroy(&s->inbox);
    }
    free(s->host);
    free(s->mount);
    free(s->key);
    free(s->cert);
    free(s->secret);
    free_list(s->signed_channels);
    free_list(s->public_channels);
    free_list(s->allowed_origins);
    free(s->js);
    free(s->js_path);
    free(s->js_path2);
    bs_backplane_free(s->backplane);
    free(s);
}

int bs_server_publish(bs_server_t *s, const char *channel, size_t chlen, const char *json, size_t len,
                      const char *event_id, size_t idlen)
{
    bs_item_t *p;

    if (!s->started || s->forgotten || s->pid != getpid())
        return BS_ESTOPPED;
    if (!bs_channel_publishable(channel, chlen))
        return BS_EINVAL;
    if (event_id && !bs_event_id_valid(event_id, idlen))
        return BS_EINVAL;
    if (len > s->cfg.max_message_size)
        return BS_ETOOBIG;
    if (s->backplane) {
        /* Straight to Redis, from this thread: numbered there, fanned out
         * by every node when it comes back. */
        bs_buf_t head;
        int rc;

        bs_buf_init(&head);
        if (bs_delivery_head(&head, channel, chlen, json, len, NULL, 0, NULL, 0, event_id, idlen)) {
            bs_buf_free(&head);
            return BS_ENOMEM;
        }
        /* the engine's route, from this thread */
        rc = s->ops.route(s, channel, chlen, head.ptr, head.len, event_id, idlen);
        bs_buf_free(&head);
        return rc;
    }
    /* The service thread turns this into one frame that every subscriber shares. */
    if (!(p = bs_item_new_extra(BS_INBOX_PUBLISH, channel, chlen, json, len, event_id, idlen)))
        return BS_ENOMEM;
    return bs_inbox_put(&s->inbox, p);
}

void bs_server_set_outbox(bs_server_t *s, uint64_t waiting, uint64_t oldest_ms)
{
    BS_STAT_SET(&s->conn_stats, outbox_waiting, waiting);
    BS_STAT_SET(&s->conn_stats, outbox_oldest_ms, oldest_ms);
}

size_t bs_server_memsize(bs_server_t *s)
{
    /* A session with an empty queue and a few subscriptions is about this. */
    enum { SESSION_BYTES = 512 };

    return sizeof(*s) + BS_STAT_GET(&s->engine.stats, history_bytes) +
           BS_STAT_GET(&s->engine.stats, clients) * SESSION_BYTES;
}

void bs_server_stats(bs_server_t *s, bs_stats_t *out)
{
    const bs_stats_t *e = &s->engine.stats;

    out->connections = BS_STAT_GET(&s->conn_stats, connections);
    out->bytes_out = BS_STAT_GET(&s->conn_stats, bytes_out);
    out->clients = BS_STAT_GET(e, clients);
    out->channels = BS_STAT_GET(e, channels);
    out->subscriptions = BS_STAT_GET(e, subscriptions);
    out->messages_in = BS_STAT_GET(e, messages_in);
    out->messages_out = BS_STAT_GET(e, messages_out);
    out->slow_clients_dropped = BS_STAT_GET(e, slow_clients_dropped);
    out->errors = BS_STAT_GET(e, errors);
    out->history_channels = BS_STAT_GET(e, history_channels);
    out->history_bytes = BS_STAT_GET(e, history_bytes);
    out->clients_refused = BS_STAT_GET(e, clients_refused);
    out->clients_evicted = BS_STAT_GET(e, clients_evicted);
    out->duplicates_dropped = BS_STAT_GET(e, duplicates_dropped);
    out->outbox_waiting = BS_STAT_GET(&s->conn_stats, outbox_waiting);
    out->outbox_oldest_ms = BS_STAT_GET(&s->conn_stats, outbox_oldest_ms);
    out->backplane_up = out->backplane_queued = out->backplane_refused = out->backplane_received = 0;
    if (s->backplane)
        bs_backplane_stats(s->backplane, out);
}

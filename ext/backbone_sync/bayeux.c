/*
 * bayeux.c: the Bayeux protocol as Faye 1.4 speaks it: sessions (clients),
 * /meta/handshake, connect, subscribe, unsubscribe, disconnect, publish, and
 * the per-client delivery queues (see bayeux.h). Layer: engine. Thread: the
 * service thread.
 *
 * A client's queue holds references to shared frames; the transport drains
 * it (server.c). A /meta/connect is held on the link it came on until it is
 * due: at the server timeout, or, for HTTP long-polling, as soon as the
 * client has something queued.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>

#include "bayeux.h"
#include "channel.h"

#define SUPPORTED (BS_CT_LONG_POLLING | BS_CT_CROSS_ORIGIN | BS_CT_WEBSOCKET)
/* A session that has not sent /meta/connect within this long (or the
 * connect timeout, if shorter) was a handshake and nothing more. */
#define CONNECT_GRACE_MS 10000
#define MAX_LOADS 10000                     /* subscribes waiting for a history load */

static const char *const meta_channels[] = {
    "/meta/handshake", "/meta/connect", "/meta/subscribe", "/meta/unsubscribe", "/meta/disconnect"
};

/* ---- clients ------------------------------------------------------------- */

static bs_client_t *client_find(bs_engine_t *e, const char *id, size_t len)
{
    uint32_t h;
    bs_hnode_t *n;

    if (len != BS_ID_LEN)
        return NULL;
    h = bs_hash(id, len);
    for (n = bs_table_chain(&e->clients, h); n; n = n->next)
        if (n->hash == h && memcmp(((bs_client_t *)n)->id, id, len) == 0)
            return (bs_client_t *)n;
    return NULL;
}

#define CLIENT_OF(node, member) BS_CONTAINER(node, bs_client_t, member)

static void client_destroy(bs_engine_t *e, bs_client_t *c, int close_link);

/* Returns a new session, or NULL with *full set when max_clients are live
 * and every one of them has connected: a flood of handshakes never evicts a
 * connected client, only sessions that never connected, oldest first. */
static bs_client_t *client_create(bs_engine_t *e, int *full)
{
    bs_client_t *c;

    *full = 0;
    if (e->clients.count >= (uint32_t)e->cfg->max_clients) {
        if (!e->waiting.head) {
            *full = 1;
            BS_STAT_ADD(&e->stats, clients_refused, 1);
            return NULL;
        }
        BS_STAT_ADD(&e->stats, clients_evicted, 1);
        client_destroy(e, CLIENT_OF(e->waiting.head, waiting), 0);
    }
    if (!(c = calloc(1, sizeof(*c))))
        return NULL;
    do {
        if (bs_rng_id(&e->rng, c->id, BS_ID_LEN)) {
            free(c);
            return NULL;
        }
    } while (client_find(e, c->id, BS_ID_LEN));
    c->node.hash = bs_hash(c->id, BS_ID_LEN);
    if (bs_table_insert(&e->clients, &c->node)) {
        free(c);
        return NULL;
    }
    bs_dlist_push_front(&e->all, &c->every);
    c->last_seen = c->born = bs_now_ms();
    bs_dlist_append(&e->waiting, &c->waiting);
    BS_STAT_ADD(&e->stats, clients, 1);
    return c;
}

/* A reply's raw JSON id, or none. */
typedef struct rid {
    const char *p;
    size_t len;
} rid_t;

#define MSG_ID(m, json) ((m)->has_id ? (rid_t){ (json) + (m)->raw_id.off, (m)->raw_id.len } : (rid_t){ NULL, 0 })
#define NO_ID ((rid_t){ NULL, 0 })

static void error_reply(bs_buf_t *out, rid_t id, const char *channel, size_t chlen,
                        const char *client_id, const char *error, int advice);

/* Frees c. Its link, if any, answers a held connect with 401 and is closed
 * when close_link is set (a slow or expired WebSocket). */
static void client_destroy(bs_engine_t *e, bs_client_t *c, int close_link)
{
    bs_link_t *l = c->link;

    if (l) {
        l->client = NULL;
        c->link = NULL;
        if (l->held) {
            char err[80];

            snprintf(err, sizeof(err), "401:%s:Unknown client", c->id);
            error_reply(&l->out, (rid_t){ l->held_id, l->held_id_len }, "/meta/connect", 13, NULL,
                        err, 1);
            free(l->held_id);
            l->held_id = NULL;
            l->held = 0;
        }
        e->ops->lost_client(e->ops_ctx, l, close_link);
    }
    bs_table_remove(&e->clients, &c->node);
    bs_dlist_remove(&e->waiting, &c->waiting);
    bs_dlist_remove(&e->all, &c->every);
    e->freed += sizeof(*c) + (size_t)c->sub.subs_cap * sizeof(bs_sub_t) +
                (size_t)c->queue.cap * sizeof(bs_frame_t *);
    bs_registry_unsubscribe_all(&e->registry, &c->sub);
    bs_ring_free(&c->queue);
    BS_STAT_SUB(&e->stats, clients, 1);
    free(c);
}

static void reap_doomed(bs_engine_t *e)
{
    bs_dnode_t *n, *next;

    if (!e->ndoomed)
        return;
    for (n = e->all.head; n; n = next) {
        bs_client_t *c = CLIENT_OF(n, every);

        next = n->next;
        if (c->doomed) {
            if (bs_log_verbose(e->log))
                bs_log(e->log, 'W', "client %s dropped: %u messages queued (max_queue)",
                       c->id, c->queue.len);
            client_destroy(e, c, 1);
        }
    }
    e->ndoomed = 0;
}

/* Queues f for c; drops c (counted as slow) when its queue is full. */
static void deliver(bs_engine_t *e, bs_client_t *c, bs_frame_t *f)
{
    if (c->doomed)
        return;
    if (c->queue.len >= (uint32_t)e->cfg->max_queue || bs_ring_push(&c->queue, f)) {
        c->doomed = 1;
        e->ndoomed++;
        BS_STAT_ADD(&e->stats, slow_clients_dropped, 1);
        return;
    }
    BS_STAT_ADD(&e->stats, messages_out, 1);
    if (c->queue.len == 1 && c->link)
        e->ops->wake(e->ops_ctx, c->link);
}

/* The registry's fan-out and the history's replay reach clients here. */
static void deliver_to_subscriber(void *ctx, bs_subscriber_t *who, bs_frame_t *f)
{
    deliver(ctx, (bs_client_t *)((char *)who - offsetof(bs_client_t, sub)), f);
}

typedef struct replay_to {
    bs_engine_t *e;
    bs_client_t *c;
} replay_to_t;

static void deliver_replayed(void *ctx, bs_frame_t *f)
{
    replay_to_t *to = ctx;

    deliver(to->e, to->c, f);
}

/* ---- replies ------------------------------------------------------------- */

static void advice(bs_buf_t *out, const bs_engine_t *e, int ok)
{
    char tmp[96];

    if (ok)
        snprintf(tmp, sizeof(tmp), ",\"advice\":{\"reconnect\":\"retry\",\"interval\":0,\"timeout\":%lld}",
                 (long long)e->cfg->timeout * 1000);
    else
        snprintf(tmp, sizeof(tmp), ",\"advice\":{\"reconnect\":\"handshake\",\"interval\":0}");
    bs_buf_append_str(out, tmp);
}

/* Opens a reply object: {"id":..,"clientId":..,"channel":..,"successful":.. */
static void reply_open(bs_buf_t *out, rid_t id, const char *channel, size_t chlen,
                       const char *client_id, int ok)
{
    if (out->len)
        bs_buf_append(out, ",", 1);
    bs_buf_append(out, "{", 1);
    if (id.p) {
        bs_buf_append(out, "\"id\":", 5);
        bs_buf_append(out, id.p, id.len);
        bs_buf_append(out, ",", 1);
    }
    if (client_id) {
        bs_buf_append(out, "\"clientId\":", 11);
        bs_json_str(out, client_id, strlen(client_id));
        bs_buf_append(out, ",", 1);
    }
    if (channel) {
        bs_buf_append(out, "\"channel\":", 10);
        bs_json_str(out, channel, chlen);
        bs_buf_append(out, ",", 1);
    }
    bs_buf_append_str(out, ok ? "\"successful\":true" : "\"successful\":false");
}

static void error_reply(bs_buf_t *out, rid_t id, const char *channel, size_t chlen,
                        const char *client_id, const char *error, int with_advice)
{
    reply_open(out, id, channel, chlen, client_id, 0);
    bs_buf_append(out, ",\"error\":", 9);
    bs_json_str(out, error, strlen(error));
    if (with_advice)
        bs_buf_append_str(out, ",\"advice\":{\"reconnect\":\"handshake\",\"interval\":0}");
    bs_buf_append(out, "}", 1);
}

/* Subscribe replies, failed or not, echo the subscription as it was sent. */
static void add_subscription(bs_buf_t *out, const bs_msg_t *m, const char *json)
{
    if (!m->has_subscription || !out->len)
        return;
    out->len--;                                 /* reopen the object */
    bs_buf_append(out, ",\"subscription\":", 16);
    bs_buf_append(out, json + m->raw_subscription.off, m->raw_subscription.len);
    bs_buf_append(out, "}", 1);
}

/* An error whose args part is a channel or name given by the client. */
static void fail(bs_engine_t *e, bs_buf_t *out, const bs_msg_t *m, const char *json,
                 const char *client_id, int code, const char *arg, size_t arglen, const char *text)
{
    bs_buf_t err;
    int meta_reply = m->channel && (strcmp(m->channel, "/meta/handshake") == 0 ||
                                    strcmp(m->channel, "/meta/connect") == 0);

    bs_buf_init(&err);
    if (arglen > 256)
        arglen = 256;
    {
        char head[8];

        snprintf(head, sizeof(head), "%d:", code);
        bs_buf_append_str(&err, head);
    }
    bs_buf_append(&err, arg ? arg : "", arg ? arglen : 0);
    bs_buf_append(&err, ":", 1);
    bs_buf_append_str(&err, text);
    bs_buf_append(&err, "", 1);
    if (err.ptr) {
        error_reply(out, MSG_ID(m, json), m->channel, m->channel_len, client_id, err.ptr, meta_reply);
        if (m->channel && (strcmp(m->channel, "/meta/subscribe") == 0 ||
                           strcmp(m->channel, "/meta/unsubscribe") == 0))
            add_subscription(out, m, json);
    }
    bs_buf_free(&err);
    BS_STAT_ADD(&e->stats, errors, 1);
}

/* Where an exact channel's stream stands, and, when the client asked with
 * ext.since, whether everything it missed is queued for it. */
static void recovery_ext(bs_buf_t *out, const bs_history_t *h, int asked, int recovered)
{
    char tmp[96];

    if (!h->epoch[0]) {
        /* Unknown while Redis is away: the client can only refetch. */
        if (asked)
            bs_buf_append_str(out, ",\"ext\":{\"recovered\":false}");
        return;
    }
    snprintf(tmp, sizeof(tmp), ",\"ext\":{\"epoch\":\"%s\",\"offset\":%llu", h->epoch,
             (unsigned long long)h->offset);
    bs_buf_append_str(out, tmp);
    if (asked)
        bs_buf_append_str(out, recovered ? ",\"recovered\":true" : ",\"recovered\":false");
    bs_buf_append(out, "}", 1);
}

/* A subscribe to one exact channel, with all it needs to be carried to its
 * end: now, or once its history is loaded (then a copy waits in e->loads). */
typedef struct sub_req {
    bs_dnode_t node;                       /* in e->loads while it waits */
    bs_link_t *link;                       /* where its reply goes; NULL once that link closed */
    char client_id[BS_ID_LEN + 1];
    const char *id;                        /* raw JSON of the message's id, or NULL */
    size_t idlen;
    const char *subscription;              /* raw JSON of its subscription member */
    size_t sublen;
    const char *channel;
    size_t chlen;
    const char *since_epoch;               /* ext.since, when has_since */
    uint64_t since_offset;
    int has_since;
} sub_req_t;

/* The reply to a subscribe: its position on the channel (when h knows
 * one), whether recovery worked, and the subscription as it was sent. */
static void subscribe_reply(bs_buf_t *out, const sub_req_t *r, const bs_history_t *h, int recovered)
{
    reply_open(out, (rid_t){ r->id, r->idlen }, "/meta/subscribe", 15, r->client_id, 1);
    if (h)
        recovery_ext(out, h, r->has_since, recovered);
    bs_buf_append(out, ",\"subscription\":", 16);
    bs_buf_append(out, r->subscription, r->sublen);
    bs_buf_append(out, "}", 1);
}

/* ---- meta handlers ------------------------------------------------------- */

static void handshake(bs_engine_t *e, bs_buf_t *out, const bs_msg_t *m, const char *json)
{
    static const char types[] =
        ",\"version\":\"1.0\",\"supportedConnectionTypes\":[\"long-polling\",\"cross-origin-long-polling\",\"websocket\"]";
    bs_client_t *c;
    int full;

    if (!m->version)
        return fail(e, out, m, json, NULL, 402, "version", 7, "Missing required parameter");
    if (!m->has_conn_types)
        return fail(e, out, m, json, NULL, 402, "supportedConnectionTypes", 24,
                    "Missing required parameter");
    if (!(m->conn_types & SUPPORTED))
        return fail(e, out, m, json, NULL, 301, "", 0, "Connection types not supported");
    if (!(c = client_create(e, &full))) {
        if (!full)
            return fail(e, out, m, json, NULL, 500, "", 0, "Internal server error");
        /* Full: come back later, not at once. */
        reply_open(out, MSG_ID(m, json), m->channel, m->channel_len, NULL, 0);
        bs_buf_append_str(out, ",\"error\":\"503::Server full (max_clients): try again later\","
                               "\"advice\":{\"reconnect\":\"handshake\",\"interval\":5000}}");
        BS_STAT_ADD(&e->stats, errors, 1);
        return;
    }
    reply_open(out, MSG_ID(m, json), m->channel, m->channel_len, c->id, 1);
    bs_buf_append(out, types, sizeof(types) - 1);
    advice(out, e, 1);
    bs_buf_append(out, "}", 1);
    if (bs_log_verbose(e->log))
        bs_log(e->log, 'I', "handshake: client %s", c->id);
}

static bs_client_t *known_client(bs_engine_t *e, bs_buf_t *out, const bs_msg_t *m,
                                 const char *json)
{
    bs_client_t *c;

    if (!m->client_id) {
        fail(e, out, m, json, NULL, 402, "clientId", 8, "Missing required parameter");
        return NULL;
    }
    if (!(c = client_find(e, m->client_id, m->client_id_len))) {
        fail(e, out, m, json, NULL, 401, m->client_id, m->client_id_len, "Unknown client");
        return NULL;
    }
    c->last_seen = bs_now_ms();
    return c;
}

void bs_engine_answer(bs_engine_t *e, bs_link_t *l)
{
    bs_client_t *c = l->client;

    if (!l->held)
        return;
    if (c) {
        reply_open(&l->out, (rid_t){ l->held_id, l->held_id_len }, "/meta/connect", 13, c->id, 1);
        advice(&l->out, e, 1);
        bs_buf_append(&l->out, "}", 1);
        c->last_seen = bs_now_ms();
        if (l->via == BS_VIA_HTTP) {
            c->link = NULL;
            l->client = NULL;
        }
    }
    free(l->held_id);
    l->held_id = NULL;
    l->held = 0;
}

int bs_engine_due(const bs_engine_t *e, const bs_link_t *l, int64_t now)
{
    (void)e;
    if (!l->held)
        return 0;
    if (now >= l->held_until || !l->client)
        return 1;
    return l->via == BS_VIA_HTTP && l->client->queue.len > 0;
}

static void connect(bs_engine_t *e, bs_link_t *l, bs_buf_t *out, const bs_msg_t *m,
                    const char *json)
{
    bs_client_t *c = known_client(e, out, m, json);
    int64_t hold;

    if (!c)
        return;
    if (!m->connection_type)
        return fail(e, out, m, json, c->id, 402, "connectionType", 14, "Missing required parameter");
    /* A connect must name the transport it came on: "websocket" over HTTP
     * would be held as if a socket were there to push on. */
    if (!(bs_conn_type_bit(m->connection_type) & SUPPORTED) ||
        (l && l->via == BS_VIA_HTTP && bs_conn_type_bit(m->connection_type) == BS_CT_WEBSOCKET))
        return fail(e, out, m, json, c->id, 301, m->connection_type, strlen(m->connection_type),
                    "Connection types not supported");
    bs_dlist_remove(&e->waiting, &c->waiting);
    if (!l) {
        /* Nothing to hold it on: answer at once. */
        reply_open(out, MSG_ID(m, json), m->channel, m->channel_len, c->id, 1);
        advice(out, e, 1);
        bs_buf_append(out, "}", 1);
        return;
    }
    /* A newer connect supersedes one still held elsewhere, or on this link. */
    if (c->link && c->link != l) {
        bs_link_t *old = c->link;

        bs_engine_answer(e, old);
        old->client = NULL;
        c->link = NULL;
        e->ops->wake(e->ops_ctx, old);
    }
    if (l->held)
        bs_engine_answer(e, l);
    if (l->client && l->client != c)
        l->client->link = NULL;
    c->link = l;
    l->client = c;
    l->held = 1;
    l->held_id = NULL;
    l->held_id_len = 0;
    if (m->has_id && (l->held_id = malloc(m->raw_id.len))) {
        memcpy(l->held_id, json + m->raw_id.off, m->raw_id.len);
        l->held_id_len = m->raw_id.len;
    }
    hold = (int64_t)e->cfg->timeout * 1000;
    if (m->advice_timeout >= 0 && m->advice_timeout < hold)
        hold = m->advice_timeout;
    l->held_until = bs_now_ms() + hold;
    /* What was queued while the client had no link goes out now. */
    if (c->queue.len)
        e->ops->wake(e->ops_ctx, l);
}

static int needs_token(const bs_engine_t *e, const char *s, size_t len)
{
    const char *const *p;

    if (e->cfg->signed_subscriptions)
        return 1;
    for (p = e->cfg->signed_channels; p && *p; p++)
        if (bs_channel_overlaps(*p, s, len))
            return 1;
    return 0;
}

static void finish_subscribe(bs_engine_t *e, bs_buf_t *out, bs_client_t *c, const sub_req_t *r,
                             bs_history_t *h);
static int wait_for_load(bs_engine_t *e, bs_link_t *l, const sub_req_t *r);
static void lose_interest(bs_engine_t *e, const char *name, size_t len);

static void subscribe(bs_engine_t *e, bs_link_t *l, bs_buf_t *out, const bs_msg_t *m, const char *json, int on)
{
    bs_client_t *c = known_client(e, out, m, json);
    const char *s;
    uint32_t i, fresh = 0, fresh_channels = 0;
    bs_history_t *h;
    int exact, made;                        /* one exact channel with a history; made by this subscribe */

    if (!c)
        return;
    if (!m->has_subscription || m->nsubs == 0)
        return fail(e, out, m, json, c->id, 402, "subscription", 12, "Missing required parameter");
    for (i = 0, s = m->subs; i < m->nsubs; i++, s += strlen(s) + 1) {
        size_t len = strlen(s);

        if (!bs_channel_valid_pattern(s, len))
            return fail(e, out, m, json, c->id, 405, s, len, "Invalid channel");
        if (!on)
            continue;
        if (!bs_channel_subscribable(s, len))
            return fail(e, out, m, json, c->id, 403, s, len, "Forbidden channel");
        if (bs_registry_holds(&c->sub, s, len))
            continue;                           /* again: not one more */
        if (needs_token(e, s, len) &&
            !(m->token && bs_token_verify(e->cfg->secret, s, len, m->token, m->token_len,
                                          (int64_t)time(NULL)))) {
            if (bs_log_verbose(e->log))
                bs_log(e->log, 'W', "subscribe refused: client %s, %s: missing, forged or expired token",
                       c->id, s);
            return fail(e, out, m, json, c->id, 403, s, len, "Forbidden channel");
        }
        fresh++;
        fresh_channels += !bs_registry_find(&e->registry, s, len);
    }
    if (on && e->registry.channels.count + fresh_channels > (uint32_t)e->cfg->max_channels)
        return fail(e, out, m, json, c->id, 403, m->subs, strlen(m->subs),
                    "Too many channels on this server (max_channels)");
    if (on && c->sub.nsubs + fresh > (uint32_t)e->cfg->max_subscriptions)
        return fail(e, out, m, json, c->id, 403, m->subs, strlen(m->subs),
                    "Too many subscriptions for one client (max_subscriptions)");
    /* One exact channel: report its epoch and offset, and replay from since. */
    exact = on && m->nsubs == 1 && e->histories.size > 0 && bs_channel_valid_name(m->subs, strlen(m->subs));
    made = exact && !bs_history_find(&e->histories, m->subs, strlen(m->subs)); /* nothing known of it here */
    if (exact && (h = bs_history_get(&e->histories, m->subs, strlen(m->subs)))) {
        sub_req_t r = {
            .id = m->has_id ? json + m->raw_id.off : NULL, .idlen = m->raw_id.len,
            .subscription = json + m->raw_subscription.off, .sublen = m->raw_subscription.len,
            .channel = h->name, .chlen = h->name_len, .since_epoch = m->since_epoch,
            .since_offset = m->since_offset, .has_since = m->has_since,
        };

        memcpy(r.client_id, c->id, sizeof(r.client_id));
        /* With Redis, the truth is there: ask for what this node does not
         * know, and answer once it comes (the service thread never waits).
         * A channel new to this node is wanted from Redis first: whatever
         * the load reads too early then arrives as a message. */
        if (e->ops->interest && !bs_registry_find(&e->registry, h->name, h->name_len)) {
            e->ops->interest(e->ops_ctx, h->name, h->name_len, 1);
            if (!h->loading && !made)
                bs_history_reset(&e->histories, h, "", h->offset);
        }
        if (e->ops->load && !h->loading &&
            (made || !h->epoch[0] || (m->has_since && !bs_history_covers(h, m->since_epoch, m->since_offset)))) {
            if (e->ops->load(e->ops_ctx, h->name, h->name_len, h->epoch) == 0)
                h->loading = 1;
            else
                bs_history_reset(&e->histories, h, "", h->offset);
        }
        if (h->loading && l && e->nloads < MAX_LOADS && wait_for_load(e, l, &r) == 0)
            return;
        return finish_subscribe(e, out, c, &r, h->loading ? NULL : h);
    }
    /* A pattern (or, with history off, a channel) new to this node: no
     * history to load, but the reply still waits until Redis sends its
     * messages here, so that none published after it is missed. */
    if (on && m->nsubs == 1 && e->ops->interest && l && e->nloads < MAX_LOADS &&
        !bs_registry_find(&e->registry, m->subs, strlen(m->subs))) {
        sub_req_t r = {
            .id = m->has_id ? json + m->raw_id.off : NULL, .idlen = m->raw_id.len,
            .subscription = json + m->raw_subscription.off, .sublen = m->raw_subscription.len,
            .channel = m->subs, .chlen = strlen(m->subs),
        };

        memcpy(r.client_id, c->id, sizeof(r.client_id));
        e->ops->interest(e->ops_ctx, r.channel, r.chlen, 1);
        if (e->ops->load(e->ops_ctx, r.channel, r.chlen, NULL) == 0 && wait_for_load(e, l, &r) == 0)
            return;
    }
    for (i = 0, s = m->subs; i < m->nsubs; i++, s += strlen(s) + 1) {
        if (!on) {
            bs_registry_unsubscribe(&e->registry, &c->sub, s, strlen(s));
        } else if (!bs_registry_subscribe(&e->registry, &c->sub, s, strlen(s))) {
            return fail(e, out, m, json, c->id, 500, "", 0, "Internal server error");
        }
        if (bs_log_verbose(e->log))
            bs_log(e->log, 'I', "%s: client %s, %s", on ? "subscribe" : "unsubscribe", c->id, s);
    }
    reply_open(out, MSG_ID(m, json), m->channel, m->channel_len, c->id, 1);
    bs_buf_append(out, "}", 1);
    add_subscription(out, m, json);
}

/* Carries a subscribe to one exact channel to its end. h: the channel's
 * history, or NULL when its position is unknown (recovery is then not
 * possible, and the reply says so when it was asked for). */
static void finish_subscribe(bs_engine_t *e, bs_buf_t *out, bs_client_t *c, const sub_req_t *r,
                             bs_history_t *h)
{
    bs_sub_t *sub = bs_registry_subscribe(&e->registry, &c->sub, r->channel, r->chlen);
    int recovered = 0;

    if (!sub) {
        reply_open(out, (rid_t){ r->id, r->idlen }, "/meta/subscribe", 15, c->id, 0);
        bs_buf_append_str(out, ",\"error\":\"500::Internal server error\"}");
        BS_STAT_ADD(&e->stats, errors, 1);
        return;
    }
    if (bs_log_verbose(e->log))
        bs_log(e->log, 'I', "subscribe: client %s, %s", c->id, r->channel);
    /* Recoverable: what is still queued for this channel goes, and the
     * history after since is queued in its place, in order, once. Frames
     * already written may have died with a socket; these come again. */
    if (h && r->has_since && bs_history_covers(h, r->since_epoch, r->since_offset)) {
        replay_to_t to = { e, c };

        bs_ring_remove_channel(&c->queue, h->name, h->name_len);
        recovered = bs_history_replay(h, r->since_offset, deliver_replayed, &to) == 0;
    }
    /* Whatever reaches this node later with an offset up to here, the
     * client has had or did not ask for. */
    if (h)
        sub->floor = h->offset;
    if (r->has_since && bs_log_verbose(e->log))
        bs_log(e->log, 'I', "recovery for client %s on %s from offset %llu: %s", c->id, r->channel,
               (unsigned long long)r->since_offset, recovered ? "complete" : "not possible");
    if (h || !r->has_since) {
        subscribe_reply(out, r, h, recovered);
    } else {
        reply_open(out, (rid_t){ r->id, r->idlen }, "/meta/subscribe", 15, c->id, 1);
        bs_buf_append_str(out, ",\"ext\":{\"recovered\":false},\"subscription\":");
        bs_buf_append(out, r->subscription, r->sublen);
        bs_buf_append(out, "}", 1);
    }
    reap_doomed(e);
}

/* A copy of r waits in e->loads for the channel's history; its reply will
 * go to l. 0, or -1 when memory ran out. */
static int wait_for_load(bs_engine_t *e, bs_link_t *l, const sub_req_t *r)
{
    size_t elen = r->has_since && r->since_epoch ? strlen(r->since_epoch) : 0;
    sub_req_t *w = malloc(sizeof(*w) + r->idlen + r->sublen + r->chlen + 1 + elen + 1);
    char *p;

    if (!w)
        return -1;
    *w = *r;
    p = (char *)(w + 1);
    w->id = r->id ? memcpy(p, r->id, r->idlen) : NULL;
    p += r->idlen;
    w->subscription = memcpy(p, r->subscription, r->sublen);
    p += r->sublen;
    w->channel = memcpy(p, r->channel, r->chlen);
    p[r->chlen] = '\0';
    p += r->chlen + 1;
    w->since_epoch = r->has_since && r->since_epoch ? memcpy(p, r->since_epoch, elen + 1) : NULL;
    w->link = l;
    w->node = (bs_dnode_t){ 0 };
    bs_dlist_append(&e->loads, &w->node);
    e->nloads++;
    l->waiting++;
    return 0;
}

void bs_engine_loaded(bs_engine_t *e, const char *channel, size_t chlen, const bs_loaded_t *l)
{
    bs_history_t *h = e->histories.size > 0 && bs_channel_valid_name(channel, chlen)
                      ? bs_history_get(&e->histories, channel, chlen) : NULL;
    bs_dnode_t *n, *next;

    if (h) {
        if (l)
            bs_history_load(&e->histories, h, l);
        else
            bs_history_reset(&e->histories, h, "", h->offset);
        h->loading = 0;
    }
    for (n = e->loads.head; n; n = next) {
        sub_req_t *w = BS_CONTAINER(n, sub_req_t, node);
        bs_client_t *c;

        next = n->next;
        if (w->chlen != chlen || memcmp(w->channel, channel, chlen) != 0)
            continue;
        bs_dlist_remove(&e->loads, n);
        e->nloads--;
        if (w->link)
            w->link->waiting--;
        if ((c = client_find(e, w->client_id, BS_ID_LEN))) {
            bs_buf_t none;

            bs_buf_init(&none);
            /* A closed link: the subscription still holds, its reply has no one to go to. */
            finish_subscribe(e, w->link ? &w->link->out : &none, c, w, h && h->epoch[0] ? h : NULL);
            bs_buf_free(&none);
            if (w->link && !w->link->waiting)
                e->ops->wake(e->ops_ctx, w->link);
        }
        free(w);
    }
    /* Everyone who waited left before the answer: the interest goes too. */
    if (e->ops->interest && !bs_registry_find(&e->registry, channel, chlen))
        lose_interest(e, channel, chlen);
}

static void disconnect(bs_engine_t *e, bs_buf_t *out, const bs_msg_t *m, const char *json)
{
    bs_client_t *c = known_client(e, out, m, json);
    char id[BS_ID_LEN + 1];

    if (!c)
        return;
    memcpy(id, c->id, sizeof(id));
    if (bs_log_verbose(e->log))
        bs_log(e->log, 'I', "disconnect: client %s", id);
    /* A connect still held is answered as usual, not with "Unknown client":
     * the client is leaving, not to be sent back to handshake. */
    if (c->link && c->link->held) {
        bs_link_t *l = c->link;

        bs_engine_answer(e, l);
        e->ops->wake(e->ops_ctx, l);
    }
    client_destroy(e, c, 0);
    reply_open(out, MSG_ID(m, json), m->channel, m->channel_len, id, 1);
    bs_buf_append(out, "}", 1);
}

/* ---- publish ------------------------------------------------------------- */

static int secret_matches(const char *secret, const char *given, size_t len)
{
    size_t slen;

    if (!secret || !*secret || !given)
        return 0;
    slen = strlen(secret);
    /* Length is not secret; the bytes are compared in constant time. */
    return slen == len && CRYPTO_memcmp(secret, given, len) == 0;
}

static int public_channel(const bs_engine_t *e, const char *ch, size_t len)
{
    const char *const *p;

    for (p = e->cfg->public_channels; p && *p; p++)
        if (bs_channel_matches(*p, ch, len))
            return 1;
    return 0;
}

int bs_delivery_head(bs_buf_t *b, const char *channel, size_t chlen, const char *data, size_t dlen,
                     const char *id, size_t idlen, const char *ext, size_t extlen,
                     const char *event_id, size_t event_id_len)
{
    bs_buf_append(b, "[{\"channel\":", 12);
    bs_json_str(b, channel, chlen);
    bs_buf_append(b, ",\"data\":", 8);
    bs_buf_append(b, data, dlen);
    if (id) {
        bs_buf_append(b, ",\"id\":", 6);
        bs_buf_append(b, id, idlen);
    }
    /* The publisher's ext, if any, gains the offset and the epoch. */
    bs_buf_append(b, ",\"ext\":", 7);
    if (ext && extlen > 2) {
        bs_buf_append(b, ext, extlen - 1);
        return bs_buf_append(b, ",", 1);
    }
    if (event_id) {
        bs_buf_append(b, "{\"event_id\":", 12);
        bs_json_str(b, event_id, event_id_len);
        return bs_buf_append(b, ",", 1);
    }
    return bs_buf_append(b, "{", 1);
}

int bs_engine_publish(bs_engine_t *e, const char *channel, size_t chlen, const char *data,
                      size_t dlen, const char *id, size_t idlen, const char *ext, size_t extlen,
                      const char *event_id, size_t event_id_len)
{
    bs_history_t *h = NULL;
    bs_buf_t *b = &e->build;
    bs_frame_t *f;
    char tail[80];

    /* /service messages are for the server only; nobody may subscribe to them. */
    if (bs_channel_kind(channel, chlen) == BS_CHANNEL_SERVICE)
        return BS_OK;
    bs_buf_reset(b);
    if (bs_delivery_head(b, channel, chlen, data, dlen, id, idlen, ext, extlen, event_id, event_id_len))
        return BS_ENOMEM;
    /* With a backplane, Redis numbers the message and every node, this one
     * included, fans it out when it comes back (bs_engine_remote). */
    if (e->ops->route)
        return e->ops->route(e->ops_ctx, channel, chlen, b->ptr, b->len, event_id, event_id_len);
    if (e->histories.size > 0 && !(h = bs_history_get(&e->histories, channel, chlen)))
        return BS_ENOMEM;
    if (h && event_id && bs_history_seen(h, event_id, event_id_len)) {
        BS_STAT_ADD(&e->stats, duplicates_dropped, 1);
        return BS_EDUPLICATE;
    }
    if (h) {
        snprintf(tail, sizeof(tail), "\"offset\":%llu,\"epoch\":\"%s\"}}]",
                 (unsigned long long)(h->offset + 1), h->epoch);
    } else if (b->ptr[b->len - 1] == ',') {
        b->len--;                               /* close the publisher's ext as it was */
        snprintf(tail, sizeof(tail), "}}]");
    } else {
        b->len -= 8;                            /* no ext at all: drop ,"ext":{ */
        snprintf(tail, sizeof(tail), "}]");
    }
    if (bs_buf_append_str(b, tail) || !(f = bs_frame_new(b->len)))
        return BS_ENOMEM;
    memcpy(BS_FRAME_DATA(f), b->ptr, b->len);
    if (h) {
        h->offset++;
        if (bs_history_append(&e->histories, h, f, event_id, event_id_len)) {
            h->offset--;
            bs_frame_unref(f);
            return BS_ENOMEM;
        }
    }
    bs_registry_fanout(&e->registry, channel, chlen, f, h ? h->offset : 0, deliver_to_subscriber, e);
    bs_frame_unref(f);
    reap_doomed(e);
    return BS_OK;
}

void bs_engine_remote(bs_engine_t *e, const char *channel, size_t chlen, uint64_t offset,
                      const char *epoch, size_t elen, const char *frame, size_t flen)
{
    bs_history_t *h = NULL;
    bs_frame_t *f;
    char ep[BS_EPOCH_LEN + 1];

    BS_STAT_ADD(&e->stats, messages_in, 1);
    if (!bs_channel_valid_name(channel, chlen) || !bs_utf8_valid(frame, flen)) {
        BS_STAT_ADD(&e->stats, errors, 1);
        bs_log(e->log, 'W', "dropped a message from Redis that is not valid UTF-8 or has no valid channel");
        return;
    }
    if (!(f = bs_frame_new(flen)))
        return;
    memcpy(BS_FRAME_DATA(f), frame, flen);
    if (e->histories.size > 0 && (h = bs_history_get(&e->histories, channel, chlen))) {
        /* This node's copy of the channel's history follows Redis. */
        if (elen > BS_EPOCH_LEN)
            elen = BS_EPOCH_LEN;
        memcpy(ep, epoch, elen);
        ep[elen] = '\0';
        if (strcmp(ep, h->epoch) != 0)
            bs_history_reset(&e->histories, h, ep, offset - 1);
        bs_history_put(&e->histories, h, offset, f);
    }
    bs_registry_fanout(&e->registry, channel, chlen, f, offset, deliver_to_subscriber, e);
    bs_frame_unref(f);
    reap_doomed(e);
}

static int client_lost(bs_client_t *c, bs_lost_fn lost, void *ctx)
{
    if (!lost)
        return 1;
    for (uint32_t i = 0; i < c->sub.nsubs; i++)
        if (lost(ctx, c->sub.subs[i].channel->name, c->sub.subs[i].channel->len))
            return 1;
    return 0;
}

void bs_engine_resync(bs_engine_t *e, bs_lost_fn lost, void *ctx)
{
    uint32_t i;
    unsigned n = 0;

    for (bs_dnode_t *d = e->all.head, *next; d; d = next) {
        bs_client_t *c = CLIENT_OF(d, every);

        next = d->next;
        if (client_lost(c, lost, ctx)) {
            client_destroy(e, c, 1);
            n++;
        }
    }
    /* What this node kept may have gaps now: reload from Redis when asked. */
    for (i = 0; i < e->histories.table.size; i++)
        for (bs_hnode_t *h = e->histories.table.buckets[i]; h; h = h->next) {
            bs_history_t *hist = (bs_history_t *)h;

            if (!lost || lost(ctx, hist->name, hist->name_len))
                bs_history_reset(&e->histories, hist, "", hist->offset);
        }
    bs_log(e->log, 'W', "Redis was unreachable for a while: %u clients were asked to reconnect and recover",
           n);
}

static void publish(bs_engine_t *e, bs_buf_t *out, const bs_msg_t *m, const char *json,
                    const bs_batch_t *b)
{
    const char *client_id = m->client_id && client_find(e, m->client_id, m->client_id_len)
                            ? m->client_id : NULL;
    int trusted;

    if (!bs_channel_valid_name(m->channel, m->channel_len))
        return fail(e, out, m, json, client_id, 405, m->channel, m->channel_len, "Invalid channel");
    if (!m->has_data)
        return fail(e, out, m, json, client_id, 402, "data", 4, "Missing required parameter");
    trusted = secret_matches(e->cfg->secret, m->secret, m->secret_len);
    if (!trusted && !public_channel(e, m->channel, m->channel_len)) {
        if (bs_log_verbose(e->log))
            bs_log(e->log, 'W', "publish refused on %s: no valid secret", m->channel);
        return fail(e, out, m, json, client_id, 403, m->channel, m->channel_len, "Forbidden channel");
    }
    /* An event id can silence a later publish that reuses it: only the
     * app's own publishers may set one, not a browser on a public channel. */
    if (!trusted && m->event_id)
        return fail(e, out, m, json, client_id, 403, m->channel, m->channel_len,
                    "Forbidden: ext.event_id needs the publishers' secret");
    /* The delivery is the message as published, less clientId and the secret. */
    if (bs_log_verbose(e->log))
        bs_log(e->log, 'I', "publish: %s (%u bytes)", m->channel, m->raw_data.len);
    switch (bs_engine_publish(e, m->channel, m->channel_len, json + m->raw_data.off, m->raw_data.len,
                              m->has_id ? json + m->raw_id.off : NULL, m->raw_id.len,
                              m->has_ext ? b->ext.ptr + m->raw_ext.off : NULL, m->raw_ext.len,
                              m->event_id, m->event_id_len)) {
    case BS_OK:
    case BS_EDUPLICATE:                     /* published before: the publisher may stop retrying */
        break;
    case BS_EFULL:
    case BS_ESTOPPED:
        return fail(e, out, m, json, client_id, 407, m->channel, m->channel_len,
                    "Failed to publish: Redis is unreachable and the publishes waiting for it are at their bound");
    default:
        return fail(e, out, m, json, client_id, 500, "", 0, "Internal server error");
    }
    reply_open(out, MSG_ID(m, json), m->channel, m->channel_len, client_id, 1);
    bs_buf_append(out, "}", 1);
}

/* ---- entry points --------------------------------------------------------- */

int bs_engine_receive(bs_engine_t *e, bs_link_t *l, const char *json, size_t len,
                      bs_buf_t *out)
{
    bs_batch_t b;
    uint32_t i;

    /* Before anything is stored or delivered: a browser drops a WebSocket
     * that carries invalid UTF-8, so one such publish kept in history would
     * cut off every subscriber that recovers it. */
    if (!bs_utf8_valid(json, len)) {
        error_reply(out, NO_ID, NULL, 0, NULL, "400::Bad request: the message is not valid UTF-8", 0);
        BS_STAT_ADD(&e->stats, errors, 1);
        bs_log(e->log, 'W', "refused %s message that is not valid UTF-8 (%zu bytes)",
               l && l->via == BS_VIA_WS ? "a WebSocket" : "an HTTP", len);
        return 400;
    }
    /* Half a surrogate pair ("\ud800" alone) is valid JSON but not Unicode:
     * strict parsers (Ruby's) reject the whole long-poll answer it is in. */
    if (bs_batch_parse(&b, json, len, e->cfg->max_depth, e->cfg->max_batch) ||
        bs_json_lone_surrogate(json, len)) {
        char err[128];

        snprintf(err, sizeof(err), "400::Bad request: %s",
                 b.error ? b.error : "a string escapes half a UTF-16 surrogate pair");
        error_reply(out, NO_ID, NULL, 0, NULL, err, 0);
        BS_STAT_ADD(&e->stats, errors, 1);
        bs_batch_free(&b);
        return 400;
    }
    for (i = 0; i < b.n; i++) {
        const bs_msg_t *m = &b.msgs[i];
        size_t k;

        BS_STAT_ADD(&e->stats, messages_in, 1);
        if (m->bad) {
            char why[96];

            snprintf(why, sizeof(why), "Bad request: %s", m->bad);
            fail(e, out, m, json, NULL, 400, "", 0, why);
            continue;
        }
        if (!m->channel) {
            fail(e, out, m, json, NULL, 405, "", 0, "Invalid channel");
            continue;
        }
        if (bs_channel_kind(m->channel, m->channel_len) == BS_CHANNEL_META) {
            /* Exact names only: "/meta/subscribe/x" is not a subscribe. */
            for (k = 0; k < 5; k++)
                if (strcmp(m->channel, meta_channels[k]) == 0)
                    break;
            switch (k) {
            case 0: handshake(e, out, m, json); break;
            case 1: connect(e, l, out, m, json); break;
            case 2: subscribe(e, l, out, m, json, 1); break;
            case 3: subscribe(e, l, out, m, json, 0); break;
            case 4: disconnect(e, out, m, json); break;
            default:
                fail(e, out, m, json, NULL, 403, m->channel, m->channel_len, "Forbidden channel");
            }
            continue;
        }
        publish(e, out, m, json, &b);
    }
    bs_batch_free(&b);
    return 200;
}

void bs_engine_unlink(bs_engine_t *e, bs_link_t *l)
{
    bs_dnode_t *n;

    /* Subscribes still waiting for a load: their replies have nowhere to go. */
    for (n = l->waiting ? e->loads.head : NULL; n; n = n->next) {
        sub_req_t *w = BS_CONTAINER(n, sub_req_t, node);

        if (w->link == l)
            w->link = NULL;
    }
    l->waiting = 0;
    if (l->client && l->client->link == l) {
        l->client->link = NULL;
        l->client->last_seen = bs_now_ms();
    }
    l->client = NULL;
    free(l->held_id);
    l->held_id = NULL;
    l->held = 0;
}

void bs_engine_sweep(bs_engine_t *e, int64_t now)
{
    /* Faye's memory engine forgets a client about 1.6 timeouts after its last
     * connect; we do the same, counting only while no connect is held. */
    int64_t expiry = (int64_t)e->cfg->timeout * 1600;
    int64_t grace = (int64_t)e->cfg->timeout * 1000 < CONNECT_GRACE_MS ? (int64_t)e->cfg->timeout * 1000
                                                                      : CONNECT_GRACE_MS;
    bs_client_t *c;
    bs_dnode_t *n, *next;

    bs_history_sweep(&e->histories, now);
    /* Handshakes that never connected, oldest first. */
    while (e->waiting.head && now - (c = CLIENT_OF(e->waiting.head, waiting))->born > grace) {
        if (bs_log_verbose(e->log))
            bs_log(e->log, 'I', "client %s expired: no /meta/connect after its handshake", c->id);
        client_destroy(e, c, 1);
    }
    /* Held connects are the transport's to answer on time (server.c). */
    for (n = e->all.head; n; n = next) {
        c = CLIENT_OF(n, every);
        next = n->next;
        if (!(c->link && c->link->held) && now - c->last_seen > expiry) {
            if (bs_log_verbose(e->log))
                bs_log(e->log, 'I', "client %s expired", c->id);
            client_destroy(e, c, 1);
        }
    }
}

/* This node stops receiving a channel's messages: what its history holds
 * goes stale, so the next subscriber loads it again. */
static void lose_interest(bs_engine_t *e, const char *name, size_t len)
{
    bs_history_t *h;

    e->ops->interest(e->ops_ctx, name, len, 0);
    if ((h = bs_history_find(&e->histories, name, len)) && !h->loading)
        bs_history_reset(&e->histories, h, "", h->offset);
}

/* The registry and the history tell each other through the engine; with a
 * backplane, the node's interest follows its subscribers. */
static void channel_presence(void *ctx, const char *name, size_t len, int present)
{
    bs_engine_t *e = ctx;

    bs_history_pin(&e->histories, name, len, present);
    if (!e->ops->interest)
        return;
    if (present)
        e->ops->interest(e->ops_ctx, name, len, 1);
    else
        lose_interest(e, name, len);
}

static int channel_subscribed(void *ctx, const char *name, size_t len)
{
    bs_engine_t *e = ctx;

    return bs_registry_find(&e->registry, name, len) != NULL;
}

void bs_engine_init(bs_engine_t *e, const bs_server_config_t *cfg, const bs_log_t *log,
                    const bs_engine_ops_t *ops, void *ops_ctx)
{
    memset(e, 0, sizeof(*e));
    e->cfg = cfg;
    e->log = log;
    e->ops = ops;
    e->ops_ctx = ops_ctx;
    bs_registry_init(&e->registry, &e->stats, channel_presence, e);
    bs_histories_init(&e->histories, cfg, &e->stats, channel_subscribed, e);
    bs_buf_init(&e->build);
}

void bs_engine_free(bs_engine_t *e)
{
    while (e->loads.head) {
        bs_dnode_t *n = e->loads.head;

        bs_dlist_remove(&e->loads, n);
        free(BS_CONTAINER(n, sub_req_t, node));
    }
    while (e->all.head)
        client_destroy(e, CLIENT_OF(e->all.head, every), 0);
    bs_table_free(&e->clients);
    bs_histories_free(&e->histories);
    bs_registry_free(&e->registry);
    bs_buf_free(&e->build);
}

size_t bs_engine_take_freed(bs_engine_t *e)
{
    size_t n = e->freed + e->histories.freed;

    e->freed = e->histories.freed = 0;
    return n;
}

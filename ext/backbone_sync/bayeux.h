/*
 * bayeux.h: the Bayeux protocol as Faye 1.4 speaks it (bayeux.c): sessions,
 * /meta/handshake, connect, subscribe, unsubscribe, disconnect, publish,
 * and the per-client delivery queues. The engine is the one owner of
 * publish policy (who may publish or subscribe where, with which token) and
 * of routing (local fan-out, or the backplane through ops->route).
 *
 * It sits above the registry and the history and calls them; it calls up
 * only through the ops its owner (the transport layer) registers. Layer:
 * engine. Thread: the service thread.
 */
#ifndef BS_BAYEUX_H
#define BS_BAYEUX_H

#include "buf.h"
#include "frame.h"
#include "history.h"
#include "json.h"
#include "registry.h"
#include "types.h"
#include "util.h"

#define BS_ID_LEN 32

typedef struct bs_client bs_client_t;

/* How a batch reached the engine. */
enum { BS_VIA_HTTP = 1, BS_VIA_WS = 2 };

/* A transport connection as the engine sees it: one WebSocket, or one HTTP
 * connection (one request at a time). Lives in lws's per-session memory,
 * zeroed by lws; the transport owns the HTTP fields. */
typedef struct bs_link {
    void *wsi;                             /* struct lws * */
    int via;                               /* BS_VIA_HTTP or BS_VIA_WS */
    bs_client_t *client;                   /* WS: bound by its first connect; HTTP: while held */
    int held;                              /* a /meta/connect on this link awaits its reply */
    int64_t held_until;                    /* ms */
    char *held_id;                         /* raw JSON of that connect's id, or NULL */
    size_t held_id_len;
    bs_buf_t rx;                           /* the request body or WS message being assembled */
    bs_buf_t out;                          /* reply objects not yet written, comma separated */
    int status;                            /* HTTP: response status once known, else 0 */
    int responding;                        /* HTTP: a response is due at the next write */
    int too_big;                           /* HTTP: body went over max_message_size */
    int form;                              /* HTTP: body is application/x-www-form-urlencoded */
    int route;                             /* HTTP: which endpoint (http.c) */
    int close_code;                        /* WS: close with this code once replies are out */
    uint32_t waiting;                      /* subscribes whose replies wait for a history load */
    char *origin;                          /* HTTP: the Origin header, for CORS, or NULL */
} bs_link_t;

struct bs_client {
    bs_hnode_t node;                       /* first: in engine->clients */
    bs_dnode_t every;                      /* in engine->all, for the sweep */
    bs_dnode_t waiting;                    /* in engine->waiting while no /meta/connect was seen */
    int64_t born;                          /* ms */
    char id[BS_ID_LEN + 1];
    bs_subscriber_t sub;                   /* its subscriptions, in the registry */
    bs_ring_t queue;                       /* deliveries not yet written */
    bs_link_t *link;                       /* the transport bound to us, or NULL */
    int64_t last_seen;                     /* ms; expiry counts from here */
    int doomed;                            /* dropped during a fan-out; freed after it */
};

/* What the engine asks of its owner. ctx is the owner's. */
typedef struct bs_engine_ops {
    /* Something is due on l: a reply, a delivery, a held connect's answer. */
    void (*wake)(void *ctx, bs_link_t *l);
    /* The client bound to l is gone (its reply, if any, is in l->out);
     * close: the connection must be closed (a slow or expired WebSocket). */
    void (*lost_client)(void *ctx, bs_link_t *l, int close);
    /* With a backplane (else NULL): hands it a composed delivery head;
     * every node fans the message out when it comes back (bs_engine_remote).
     * Returns BS_OK, BS_EFULL, BS_ESTOPPED or BS_ENOMEM. */
    int (*route)(void *ctx, const char *channel, size_t chlen, const char *head, size_t hlen,
                 const char *event_id, size_t idlen);
    /* With a backplane (else NULL): asks for what it holds of a channel's
     * history, proposing `epoch` for a channel it does not know; never
     * waits. The answer comes back as bs_engine_loaded. epoch NULL asks for
     * nothing but that answer (NULL), once every interest asked for before
     * is in force: a barrier. 0 when asked, -1 when it cannot be. */
    int (*load)(void *ctx, const char *channel, size_t chlen, const char *epoch);
    /* With a backplane (else NULL): this node wants the messages of a
     * channel or pattern (on), or no longer does (off). Called before the
     * load of a channel's first subscriber, so that what the load misses
     * arrives; never waits. */
    void (*interest)(void *ctx, const char *name, size_t len, int on);
} bs_engine_ops_t;

typedef struct bs_engine {
    const bs_server_config_t *cfg;
    const bs_log_t *log;
    const bs_engine_ops_t *ops;
    void *ops_ctx;
    bs_table_t clients;                    /* by id */
    bs_dlist_t all;                        /* every client */
    bs_dlist_t waiting;                    /* handshaken, never connected, oldest first: evicted first */
    bs_dlist_t loads;                      /* subscribes waiting for a history load */
    uint32_t nloads;
    uint32_t ndoomed;                      /* clients to free after the current fan-out */
    size_t freed;                          /* bytes of clients freed, for the heap trim */
    bs_registry_t registry;
    bs_histories_t histories;
    bs_buf_t build;                        /* a frame being composed */
    bs_rng_t rng;                          /* client ids */
    bs_stats_t stats;                      /* written here, read by any thread: atomics */
} bs_engine_t;

void bs_engine_init(bs_engine_t *e, const bs_server_config_t *cfg, const bs_log_t *log,
                    const bs_engine_ops_t *ops, void *ops_ctx);
void bs_engine_free(bs_engine_t *e);
/* Handles one batch that arrived on `link` (NULL: none to hold a connect
 * on). Appends reply objects, comma separated without brackets, to `out`.
 * Returns 200, or 400 when the whole batch was refused (out then holds one
 * error object). */
int bs_engine_receive(bs_engine_t *e, bs_link_t *link, const char *json, size_t len, bs_buf_t *out);
/* Publishes data (JSON text) to channel, which the caller checked with
 * bs_channel_publishable: composes the delivery once, with its offset and
 * epoch in ext, keeps it in the channel's history and queues it for every
 * subscriber (or routes it to the backplane). id and ext (an object without
 * the secret) may be NULL. event_id (NULL: none) is ext's event_id: a
 * message whose event id the channel's history still holds is not published
 * again. Returns BS_OK, BS_EDUPLICATE, or a BS_E* code. */
int bs_engine_publish(bs_engine_t *e, const char *channel, size_t chlen, const char *data,
                      size_t dlen, const char *id, size_t idlen, const char *ext, size_t extlen,
                      const char *event_id, size_t event_id_len);
/* Any thread: appends the delivery up to its ext object, as publish.lua
 * expects it: [{"channel":..,"data":..[,"id":..],"ext":{[members,]
 * Without ext, event_id (NULL: none) becomes ext's one member; a Bayeux
 * publish's ext already holds it. */
int bs_delivery_head(bs_buf_t *b, const char *channel, size_t chlen, const char *data, size_t dlen,
                     const char *id, size_t idlen, const char *ext, size_t extlen,
                     const char *event_id, size_t event_id_len);
/* A message that came through the backplane, with its offset and epoch. */
void bs_engine_remote(bs_engine_t *e, const char *channel, size_t chlen, uint64_t offset,
                      const char *epoch, size_t elen, const char *frame, size_t flen);
/* Whether what a channel or pattern heard from the backplane may have gaps. */
typedef int (*bs_lost_fn)(void *ctx, const char *name, size_t len);
/* After a backplane outage: every client (lost NULL), or each subscribed to
 * a channel or pattern lost says yes to, starts again and recovers; the
 * histories of those channels are reloaded when next needed. */
void bs_engine_resync(bs_engine_t *e, bs_lost_fn lost, void *ctx);
/* The answer to ops->load: l is what the backplane holds of the channel's
 * history, or NULL when it could not be read. The subscribes that waited
 * for it are answered. l stays the caller's. */
void bs_engine_loaded(bs_engine_t *e, const char *channel, size_t chlen, const bs_loaded_t *l);
/* 1 when the connect held on link should be answered now. */
int bs_engine_due(const bs_engine_t *e, const bs_link_t *link, int64_t now);
/* Appends the reply to link's held /meta/connect to link->out and clears it;
 * an HTTP link is unbound from its client. */
void bs_engine_answer(bs_engine_t *e, bs_link_t *link);
/* The link is closing: forget it. */
void bs_engine_unlink(bs_engine_t *e, bs_link_t *link);
/* Called every tick: expires clients and handshakes, sweeps history. */
void bs_engine_sweep(bs_engine_t *e, int64_t now);
/* Bytes freed since the last call (clients and histories), for the heap trim. */
size_t bs_engine_take_freed(bs_engine_t *e);

#endif

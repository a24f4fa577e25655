/*
 * core.h: structures private to the C core (server.c, bayeux.c, channels.c,
 * json.c). Unless a comment says otherwise, everything here is touched only
 * by the service thread, so it needs no lock.
 */
#ifndef BS_CORE_H
#define BS_CORE_H

#include <stdarg.h>
#include <stdint.h>

#include "backbone_sync.h"

/* Headroom before every outgoing buffer; at least LWS_PRE (server.c checks). */
#define BS_PRE 16
#define BS_ID_LEN 32

/* ---- frames: one encoded message, shared by every subscriber ------------- */

/* The bytes are '[' message ']', preceded by BS_PRE bytes of headroom so lws
 * can write a WebSocket header in place. Immutable once queued. `refs` is
 * touched only by the service thread (a publisher thread creates the frame
 * and hands it over whole). */
typedef struct bs_frame {
    uint32_t refs;
    uint32_t len;
} bs_frame_t;

#define BS_FRAME_DATA(f) ((unsigned char *)((f) + 1) + BS_PRE)

/* Returns a frame of `len` uninitialised bytes with refs = 1, or NULL. */
bs_frame_t *bs_frame_new(size_t len);
void bs_frame_unref(bs_frame_t *f);

static inline void bs_frame_ref(bs_frame_t *f)
{
    f->refs++;
}

/* A bounded ring of frame pointers; grows on demand so idle clients cost
 * nothing. */
typedef struct bs_ring {
    bs_frame_t **v;
    uint32_t head;
    uint32_t len;
    uint32_t cap;
} bs_ring_t;

/* Returns 0, or -1 when memory runs out. Takes a reference on f. */
int bs_ring_push(bs_ring_t *r, bs_frame_t *f);
/* Drops the first n frames (their references). */
void bs_ring_drop(bs_ring_t *r, uint32_t n);
/* Drops every frame addressed to channel `name`, keeping the others' order. */
void bs_ring_remove_channel(bs_ring_t *r, const char *name, size_t len);
void bs_ring_free(bs_ring_t *r);

static inline bs_frame_t *bs_ring_at(const bs_ring_t *r, uint32_t i)
{
    return r->v[(r->head + i) & (r->cap - 1)];
}

/* ---- an intrusive hash table (buf.c) ------------------------------------ */

/* The first member of every struct kept in a table. */
typedef struct bs_hnode {
    struct bs_hnode *next;
    uint32_t hash;
} bs_hnode_t;

typedef struct bs_table {
    bs_hnode_t **buckets;
    uint32_t size;                         /* a power of two, or 0 */
    uint32_t count;
} bs_table_t;

uint32_t bs_hash(const char *s, size_t len);
/* Returns 0, or -1 when memory runs out (n is then not inserted). */
int bs_table_insert(bs_table_t *t, bs_hnode_t *n);
void bs_table_remove(bs_table_t *t, bs_hnode_t *n);
void bs_table_free(bs_table_t *t);

/* The nodes that may hold `hash`: compare hash, then the key. */
static inline bs_hnode_t *bs_table_chain(const bs_table_t *t, uint32_t hash)
{
    return t->size ? t->buckets[hash & (t->size - 1)] : NULL;
}

/* ---- clients and channels ---------------------------------------------- */

typedef struct bs_client bs_client_t;
typedef struct bs_channel bs_channel_t;
typedef struct bs_link bs_link_t;          /* a transport connection: server.c */

typedef struct bs_member {                 /* in a channel: who, and where it keeps us */
    bs_client_t *client;
    uint32_t slot;
} bs_member_t;

typedef struct bs_sub {                    /* in a client: which channel, and where */
    bs_channel_t *channel;
    uint32_t pos;
    uint64_t floor;                        /* offsets up to this one were queued, or not asked for */
} bs_sub_t;

struct bs_channel {
    bs_hnode_t node;                       /* first: in engine->channels */
    uint32_t nmembers;
    uint32_t cap;
    int pattern;                           /* its last segment is * or ** */
    bs_member_t *members;
    size_t len;
    char *name;                            /* NUL-terminated, stored after the struct */
};

struct bs_client {
    bs_hnode_t node;                       /* first: in engine->clients */
    bs_client_t *prev, *next;              /* every client, for the sweep */
    bs_client_t *wprev, *wnext;            /* never connected yet, oldest first: evicted first */
    int waiting;                           /* in that list: no /meta/connect seen yet */
    int64_t born;                          /* ms */
    char id[BS_ID_LEN + 1];
    bs_sub_t *subs;
    uint32_t nsubs;
    uint32_t subs_cap;
    bs_ring_t queue;                       /* deliveries not yet written */
    bs_link_t *link;                       /* the transport bound to us, or NULL */
    uint64_t stamp;                        /* last publish delivered: de-duplicates wildcards */
    int64_t last_seen;                     /* ms; expiry counts from here */
    int doomed;                            /* dropped during a fan-out; freed after it */
};

/* A transport connection: one WebSocket, or one HTTP connection (one request
 * at a time). Lives in lws's per-session memory, zeroed by lws. */
struct bs_link {
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
    int route;                             /* HTTP: which endpoint (server.c) */
    int close_code;                        /* WS: close with this code once replies are out */
    char origin[256];                      /* HTTP: the Origin header, for CORS */
};

/* ---- history: offsets, epochs and recent messages per channel (history.c) -- */

#define BS_EPOCH_LEN 16

typedef struct bs_entry {
    uint64_t offset;
    int64_t at;                            /* ms */
    bs_frame_t *frame;
} bs_entry_t;

typedef struct bs_history bs_history_t;
struct bs_history {
    bs_hnode_t node;                       /* first: in engine->histories */
    bs_history_t *lru_prev, *lru_next;     /* most recently published first */
    int in_lru;
    bs_entry_t *ring;
    uint32_t head, len, cap;
    uint64_t offset;                       /* the last one given out */
    size_t bytes;
    int64_t last_used;                     /* ms */
    char epoch[BS_EPOCH_LEN + 1];
    size_t name_len;
    char *name;                            /* stored after the struct */
};

/* ---- the engine: Bayeux state of one server ------------------------------ */

typedef struct bs_engine {
    const bs_server_config_t *cfg;
    void *server;                          /* back pointer for bs_link_* and logging */
    bs_table_t clients;                    /* by id */
    bs_client_t *all;                      /* list head */
    bs_client_t *waiting_head, *waiting_tail; /* handshaken, never connected, oldest first */
    bs_table_t channels;                   /* by name */
    uint32_t npatterns;                    /* wildcard entries: skip expansion when 0 */
    uint64_t stamp;
    uint32_t ndoomed;                      /* clients to free after the current fan-out */
    size_t freed_bytes;                    /* freed since the heap was last trimmed (server.c) */
    bs_table_t histories;                  /* by channel name */
    bs_history_t *lru_head, *lru_tail;
    size_t hist_bytes;                     /* everything the histories hold: see history.c */
    bs_buf_t build;                        /* a frame being composed */
    struct bs_backplane *backplane;        /* Redis, or NULL for a single node */
    int64_t last_history_sweep;            /* ms */
    bs_buf_t scratch;
    unsigned char rnd[256];                /* random bytes for client ids */
    size_t rnd_used;
    bs_stats_t stats;                      /* written here, read by any thread: atomics */
} bs_engine_t;

#define BS_STAT_ADD(e, field, n) __atomic_fetch_add(&(e)->stats.field, (uint64_t)(n), __ATOMIC_RELAXED)
#define BS_STAT_SUB(e, field, n) __atomic_fetch_sub(&(e)->stats.field, (uint64_t)(n), __ATOMIC_RELAXED)

/* How a batch reached the engine. */
enum { BS_VIA_HTTP = 1, BS_VIA_WS = 2 };

/* channels.c */
bs_channel_t *bs_channels_find(bs_engine_t *e, const char *name, size_t len);
/* Returns the client's subscription (an existing one when subscribed
 * already), or NULL when memory ran out. */
bs_sub_t *bs_channels_subscribe(bs_engine_t *e, bs_client_t *c, const char *name, size_t len);
void bs_channels_unsubscribe(bs_engine_t *e, bs_client_t *c, const char *name, size_t len);
void bs_channels_unsubscribe_all(bs_engine_t *e, bs_client_t *c);
/* Queues f for every subscriber of `name` and of every pattern matching it;
 * a subscriber of `name` whose floor is at `offset` or past it is skipped. */
void bs_channels_fanout(bs_engine_t *e, const char *name, size_t len, bs_frame_t *f, uint64_t offset);
/* 1 when name (a channel or pattern) is matched by pattern. */
int bs_channel_matches(const char *pattern, const char *name, size_t len);
/* 1 when pattern p and subscription s (each a name or pattern) can share a channel. */
int bs_channel_overlaps(const char *p, const char *s, size_t slen);
void bs_channels_free(bs_engine_t *e);

/* json.c: parsing inbound Bayeux batches and writing replies */
typedef struct bs_span {
    uint32_t off;
    uint32_t len;
} bs_span_t;

typedef struct bs_msg {
    bs_span_t raw_id;                      /* spans point into the input */
    bs_span_t raw_data;
    bs_span_t raw_subscription;
    bs_span_t raw_ext;                     /* ext without its "secret" member, rebuilt */
    const char *channel;                   /* decoded strings (arena), or NULL */
    const char *client_id;
    const char *connection_type;
    const char *version;
    const char *secret;
    const char *token;
    const char *subs;                      /* nsubs NUL-separated names */
    const char *since_epoch;               /* ext.since of a subscribe, or NULL */
    uint64_t since_offset;
    int has_since;
    uint32_t nsubs;
    uint32_t conn_types;                   /* BS_CT_* bits offered by a handshake */
    int has_conn_types;
    int has_id, has_data, has_ext, has_subscription;
    const char *bad;                       /* why the message is refused (a wrong type, a repeated member), or NULL */
    int64_t advice_timeout;                /* ms, or -1 */
    size_t channel_len, client_id_len, secret_len, token_len;
} bs_msg_t;

enum { BS_CT_LONG_POLLING = 1, BS_CT_CROSS_ORIGIN = 2, BS_CT_CALLBACK = 4, BS_CT_WEBSOCKET = 8,
       BS_CT_EVENTSOURCE = 16, BS_CT_IN_PROCESS = 32, BS_CT_OTHER = 64 };

typedef struct bs_batch {
    bs_msg_t *msgs;
    uint32_t n;
    bs_buf_t arena;                        /* decoded strings */
    bs_buf_t ext;                          /* rebuilt ext objects; raw_ext spans point here */
    const char *error;                     /* why the whole batch was refused, or NULL */
} bs_batch_t;

/* Parses json[0..len) as an array of Bayeux messages (or one message).
 * Returns 0, or -1 with b->error set. Call bs_batch_free either way. */
int bs_batch_parse(bs_batch_t *b, const char *json, size_t len, int max_depth, int max_batch);
void bs_batch_free(bs_batch_t *b);
uint32_t bs_conn_type_bit(const char *s);

/* 1 when s[0..len) is valid UTF-8 (RFC 3629), else 0. Any thread. */
int bs_utf8_valid(const char *s, size_t len);
/* Appends s as a JSON string (quoted and escaped). */
int bs_json_str(bs_buf_t *b, const char *s, size_t len);

/* bayeux.c: the protocol engine */
void bs_engine_init(bs_engine_t *e, const bs_server_config_t *cfg, void *server);
void bs_engine_free(bs_engine_t *e);
/* Handles one batch that arrived on `link`. Appends reply objects, comma
 * separated without brackets, to `out`. Returns 200, or 400 when the whole
 * batch was refused (out then holds one error object). */
int bs_engine_receive(bs_engine_t *e, bs_link_t *link, const char *json, size_t len,
                      bs_buf_t *out);
/* Publishes data (JSON text) to channel: composes the delivery once, with
 * its offset and epoch in ext, keeps it in the channel's history and queues
 * it for every subscriber. id and ext (an object without the secret) may be
 * NULL. Returns 0, or -1 when memory ran out. */
int bs_engine_publish(bs_engine_t *e, const char *channel, size_t chlen, const char *data,
                      size_t dlen, const char *id, size_t idlen, const char *ext, size_t extlen);
/* Fills out[0..n) with random base-36 digits and a NUL. Returns 0 or -1. */
int bs_random_id(bs_engine_t *e, char *out, size_t n);
/* Any thread: appends the delivery up to its ext object, as publish.lua
 * expects it: [{"channel":..,"data":..[,"id":..],"ext":{[members,] */
int bs_delivery_head(bs_buf_t *b, const char *channel, size_t chlen, const char *data, size_t dlen,
                     const char *id, size_t idlen, const char *ext, size_t extlen);
/* A message that came through the backplane, with its offset and epoch. */
void bs_engine_remote(bs_engine_t *e, const char *channel, size_t chlen, uint64_t offset,
                      const char *epoch, size_t elen, const char *frame, size_t flen);
/* After a backplane outage: every client starts again and recovers. */
void bs_engine_resync(bs_engine_t *e);
/* 1 when the connect held on link should be answered now. */
int bs_engine_due(bs_engine_t *e, bs_link_t *link, int64_t now);
/* Appends the reply to link's held /meta/connect to link->out and clears it;
 * an HTTP link is unbound from its client. */
void bs_engine_answer(bs_engine_t *e, bs_link_t *link);
/* The link is closing: forget it. */
void bs_engine_unlink(bs_engine_t *e, bs_link_t *link);
/* Called every tick: expires clients, wakes links whose connect is due. */
void bs_engine_sweep(bs_engine_t *e, int64_t now);
/* Queues f for c; drops c (counted as slow) when its queue is full. */
void bs_engine_deliver(bs_engine_t *e, bs_client_t *c, bs_frame_t *f);
int64_t bs_now_ms(void);

/* history.c */
bs_history_t *bs_history_find(bs_engine_t *e, const char *name, size_t len);
/* Finds or creates (with a fresh epoch) the history of a channel; NULL on OOM. */
bs_history_t *bs_history_get(bs_engine_t *e, const char *name, size_t len);
/* Keeps f as the entry for h->offset. Returns 0, or -1 when memory ran out. */
int bs_history_append(bs_engine_t *e, bs_history_t *h, bs_frame_t *f);
/* Queues for c every kept message after `since`. Returns 0, or -1 when some
 * of them are no longer kept (or since is ahead of the channel). */
int bs_history_replay(bs_engine_t *e, bs_history_t *h, uint64_t since, bs_client_t *c);
/* Forgets h's entries and takes a new epoch (an empty one: unknown) and offset. */
void bs_history_reset(bs_engine_t *e, bs_history_t *h, const char *epoch, uint64_t offset);
/* Keeps f as the entry for `offset`, if it comes after the last kept one. */
void bs_history_put(bs_engine_t *e, bs_history_t *h, uint64_t offset, bs_frame_t *f);
/* The offset of the oldest kept entry (the next one when none is kept). */
uint64_t bs_history_oldest(const bs_history_t *h);
/* The channel lost its last subscriber: a history never published to goes. */
void bs_history_release(bs_engine_t *e, const char *name, size_t len);
void bs_history_sweep(bs_engine_t *e, int64_t now);
void bs_history_free_all(bs_engine_t *e);

/* backplane.c */
typedef struct bs_backplane bs_backplane_t;
bs_backplane_t *bs_backplane_new(const bs_server_config_t *cfg, void *server);
int bs_backplane_start(bs_backplane_t *b);
void bs_backplane_stop(bs_backplane_t *b);
void bs_backplane_free(bs_backplane_t *b);
int bs_backplane_up(bs_backplane_t *b);
void bs_backplane_stats(bs_backplane_t *b, bs_stats_t *st);
/* Any thread: queues a publish for Redis. Returns BS_OK, BS_EFULL, BS_ESTOPPED or BS_ENOMEM. */
int bs_backplane_publish(bs_backplane_t *b, const char *channel, size_t chlen, const char *head, size_t hlen);
/* Service thread: loads h's epoch, offset and history from Redis. 0, or -1. */
int bs_backplane_load(bs_backplane_t *b, bs_engine_t *e, bs_history_t *h);

/* server.c: what the backplane hands to the service thread (from its own thread) */
void bs_server_remote(void *server, const char *channel, size_t chlen, uint64_t offset,
                      const char *epoch, size_t elen, const char *frame, size_t flen);
void bs_server_resync(void *server);

/* server.c: what the engine asks of the transport */
void bs_link_wake(void *server, bs_link_t *link);
/* The client bound to link is gone (its reply, if any, is in link->out);
 * close: the connection must be closed (a slow or expired WebSocket). */
void bs_link_lost_client(void *server, bs_link_t *link, int close);
void bs_log(void *server, char level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int bs_log_verbose(void *server);

#endif

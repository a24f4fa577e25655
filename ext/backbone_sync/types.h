/*
 * types.h: the two plain structs every layer passes around: the server's
 * configuration (read-only once the server is made) and its counters
 * (written by the service thread, read by any thread, as atomics).
 */
#ifndef BS_TYPES_H
#define BS_TYPES_H

#include <stddef.h>
#include <stdint.h>

/* The loop the service thread runs lws on (bs_server_config_t.event_loop). */
typedef enum bs_event_loop {
    BS_LOOP_POLL = 0,                    /* lws's own poll(2) loop */
    BS_LOOP_EV = 1,                      /* a libev loop (epoll) that lws joins as a foreign loop */
} bs_event_loop_t;

/* Every field is given explicitly by the Ruby layer (server.rb owns the
 * defaults, which it documents); the C core takes them as they are. */
typedef struct bs_server_config {
    const char *host;                    /* "127.0.0.1" */
    int port;                            /* 0 picks a free port: see bs_server_port */
    const char *mount;                   /* "/faye" */
    int timeout;                         /* seconds a /meta/connect is held; advice.timeout */
    const char *key_path;                /* TLS private key (PEM), or NULL */
    const char *cert_path;               /* TLS certificate (PEM), or NULL */
    const char *secret;                  /* publishers' secret, or NULL: publish in-process only */
    int signed_subscriptions;            /* 1: every subscribe needs a valid ext.token */
    const char *const *signed_channels;  /* NULL-terminated patterns needing a token, or NULL */
    const char *const *public_channels;  /* NULL-terminated patterns clients may publish to, or NULL */
    size_t max_message_size;             /* bytes of one request body / WS message */
    int max_depth;                       /* JSON nesting of inbound messages */
    int max_batch;                       /* Bayeux messages in one request/frame */
    int max_subscriptions;               /* per client */
    int max_queue;                       /* messages queued for one client before it is dropped */
    int max_clients;                     /* live Bayeux sessions */
    int max_channels;                    /* channels and patterns with subscribers, over all clients */
    int request_timeout;                 /* seconds for an HTTP request's headers, and again for its body */
    const char *const *allowed_origins;  /* NULL-terminated CORS origins served with credentials, or NULL: any, without */
    const char *client_js;               /* browser client bytes, served at <mount>.js and <mount>/client.js */
    size_t client_js_len;
    int history_size;                    /* messages kept per channel for recovery; 0: no history */
    int history_ttl;                     /* seconds a kept message stays recoverable */
    size_t history_memory;               /* bytes of history over all channels */
    const char *redis_nodes;             /* Redis backplane: "host:port[,host:port...]", one Redis or the
                                            seed nodes of a Redis Cluster; NULL for a single node */
    const char *redis_password;          /* or NULL */
    int redis_db;
    const char *redis_script;            /* the text of lib/backbone_sync/publish.lua */
    const char *redis_prefix;            /* key prefix */
    int log_fd;                          /* -1, or the write end of a pipe: lines "<L> <text>\n", L in E W I D */
    int verbose;                         /* 1: log connections, subscriptions and publishes at I */
    bs_event_loop_t event_loop;          /* BS_LOOP_POLL or BS_LOOP_EV */
} bs_server_config_t;

typedef struct bs_stats {
    uint64_t connections;                /* open TCP connections (HTTP and WebSocket) */
    uint64_t clients;                    /* live Bayeux sessions (clientIds) */
    uint64_t channels;                   /* channels and patterns with at least one subscriber */
    uint64_t subscriptions;
    uint64_t messages_in;                /* Bayeux messages received, and publishes made in-process */
    uint64_t messages_out;               /* deliveries queued to subscribers */
    uint64_t bytes_out;                  /* bytes written to sockets */
    uint64_t slow_clients_dropped;
    uint64_t errors;                     /* Bayeux error replies and protocol violations */
    uint64_t backplane_up;               /* 1 while connected to Redis (0 without a backplane) */
    uint64_t backplane_queued;           /* publishes waiting for Redis */
    uint64_t backplane_refused;          /* publishes refused because that queue was full */
    uint64_t backplane_received;         /* messages Redis sent this node (only channels it wants) */
    uint64_t history_channels;           /* channels with a history kept for recovery */
    uint64_t history_bytes;              /* what those histories hold, counted against history_memory */
    uint64_t clients_refused;            /* handshakes refused at max_clients */
    uint64_t clients_evicted;            /* never-connected sessions dropped to make room */
    uint64_t duplicates_dropped;         /* publishes whose ext.event_id the channel's history held */
    uint64_t outbox_waiting;             /* the host app's outbox rows not yet published (set from Ruby) */
    uint64_t outbox_oldest_ms;           /* the age of the oldest of them, ms */
} bs_stats_t;

#define BS_STAT_ADD(st, field, n) __atomic_fetch_add(&(st)->field, (uint64_t)(n), __ATOMIC_RELAXED)
#define BS_STAT_SUB(st, field, n) __atomic_fetch_sub(&(st)->field, (uint64_t)(n), __ATOMIC_RELAXED)
#define BS_STAT_SET(st, field, n) __atomic_store_n(&(st)->field, (uint64_t)(n), __ATOMIC_RELAXED)
#define BS_STAT_GET(st, field) __atomic_load_n(&(st)->field, __ATOMIC_RELAXED)

/* Return codes of the publish paths. */
enum {
    BS_OK = 0,
    BS_ESTOPPED = -1,                    /* not running (never started, stopped, or inherited by fork) */
    BS_EFULL = -2,                       /* the publish queue is at its bound */
    BS_EINVAL = -3,                      /* not a channel one may publish to */
    BS_ETOOBIG = -4,                     /* over max_message_size */
    BS_ENOMEM = -5,
    BS_EDUPLICATE = -6                   /* not an error: its ext.event_id was published already */
};

#endif

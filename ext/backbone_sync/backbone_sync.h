/*
 * backbone_sync.h: the structs and functions shared between the C core
 * (server.c, bayeux.c, channels.c, json.c, buf.c) and the Ruby bindings
 * (ruby_*.c). Core files never include ruby.h; bindings never include
 * libwebsockets.h. Everything here is plain C data.
 */
#ifndef BACKBONE_SYNC_H
#define BACKBONE_SYNC_H

#include <stddef.h>
#include <stdint.h>

/* ---- growable byte buffer (buf.c) -------------------------------------- */

/* A plain growable buffer. Not thread-safe; each owner uses its own. */
typedef struct bs_buf {
    char *ptr;
    size_t len;
    size_t cap;
} bs_buf_t;

void bs_buf_init(bs_buf_t *b);
/* Returns 0, or -1 when memory runs out (the buffer is left as it was). */
int bs_buf_reserve(bs_buf_t *b, size_t extra);
int bs_buf_append(bs_buf_t *b, const void *p, size_t n);
int bs_buf_append_str(bs_buf_t *b, const char *s);
void bs_buf_reset(bs_buf_t *b);
void bs_buf_free(bs_buf_t *b);

/* ---- channel names (channels.c) ----------------------------------------- */

/* Faye's grammar: /seg(/seg)* with seg = [A-Za-z0-9-_!~()$@]+.
 * Return 1 when valid, 0 otherwise. A pattern is a name, or a name prefix
 * followed by a final wildcard segment, one star or two (a lone "/" + stars too). */
int bs_channel_valid_name(const char *s, size_t len);
int bs_channel_valid_pattern(const char *s, size_t len);

/* ---- signed subscription tokens (channels.c) --------------------------- */

/* A token is "<expires>.<hex>" where <expires> is Unix seconds in decimal and
 * <hex> is lowercase hex HMAC-SHA256(secret, channel + "\n" + <expires>).
 * Ruby's BackboneSync.sign makes the same string with OpenSSL::HMAC.
 * Returns 1 when the token is genuine and not expired at `now`, else 0. */
int bs_token_verify(const char *secret, const char *channel, size_t chlen,
                    const char *token, size_t toklen, int64_t now);

/* ---- the server (server.c), driven by ruby_server.c ---------------------- */

typedef struct bs_server bs_server_t;

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
    size_t max_message_size;             /* bytes of one request body / WS message; 65536 */
    int max_depth;                       /* JSON nesting of inbound messages; 32 */
    int max_batch;                       /* Bayeux messages in one request/frame; 100 */
    int max_subscriptions;               /* per client; 1000 (a pushable model subscribes on its own) */
    int max_queue;                       /* messages queued for one client before it is dropped; 1000 */
    const char *client_js;               /* browser client bytes, served at <mount>.js and <mount>/client.js */
    size_t client_js_len;
    int history_size;                    /* messages kept per channel for recovery; 100; -1: no history */
    int history_ttl;                     /* seconds a kept message stays recoverable; 300 */
    size_t history_memory;               /* bytes of history over all channels; 64 MiB */
    const char *redis_host;              /* Redis backplane, or NULL for a single node */
    int redis_port;                      /* 6379 */
    const char *redis_password;          /* or NULL */
    int redis_db;
    const char *redis_script;            /* the text of lib/backbone_sync/publish.lua */
    const char *redis_prefix;            /* key prefix; "backbone_sync:" */
    int log_fd;                          /* -1, or the write end of a pipe: lines "<L> <text>\n", L in E W I D */
    int verbose;                         /* 1: log connections, subscriptions and publishes at I */
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
} bs_stats_t;

enum {
    BS_OK = 0,
    BS_ESTOPPED = -1,                    /* not running (never started, stopped, or inherited by fork) */
    BS_EFULL = -2,                       /* the publish queue is at its bound */
    BS_EINVAL = -3,                      /* not a valid channel name */
    BS_ETOOBIG = -4,                     /* over max_message_size */
    BS_ENOMEM = -5
};

/* Copies the config and every string it points to. NULL when memory runs out. */
bs_server_t *bs_server_new(const bs_server_config_t *cfg);
/* Caller's thread: creates the context and binds, then starts the service
 * thread. Returns 0 once listening; -2 when the port is taken by another
 * socket; else -1. Both failures leave a sentence in err. */
int bs_server_start(bs_server_t *s, char *err, size_t errlen);
/* The port actually bound (differs from config when it was 0). */
int bs_server_port(const bs_server_t *s);
int bs_server_running(const bs_server_t *s);
/* Idempotent. Blocks until the service thread has exited and all sockets are
 * closed; call it without the GVL. */
void bs_server_stop(bs_server_t *s);
/* In a forked child: mark the server stopped without touching lws state,
 * mutexes or the (non-existent) service thread. */
void bs_server_forget(bs_server_t *s);
/* Stops if needed, then frees. */
void bs_server_free(bs_server_t *s);
/* Any thread. Copies `json` (the encoded `data`) into one frame addressed to
 * `channel`; never blocks on clients. Returns BS_OK or a BS_E* code. */
int bs_server_publish(bs_server_t *s, const char *channel, size_t chlen,
                      const char *json, size_t len);
/* Any thread: a snapshot of the counters. */
void bs_server_stats(bs_server_t *s, bs_stats_t *out);

#endif

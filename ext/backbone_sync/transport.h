/*
 * transport.h: what the HTTP and WebSocket transports share (transport.c,
 * http.c, ws.c): lws's per-session link, the deadline heap with its one lws
 * timer, the outgoing buffer, and the engine's wake and lost-client hooks.
 * The transports call the engine; the engine reaches them only through the
 * ops server.c registers, which land here. Layer: transports, above the
 * engine. Thread: the service thread.
 */
#ifndef BS_TRANSPORT_H
#define BS_TRANSPORT_H

#include <libwebsockets.h>

#include "bayeux.h"
#include "deadline.h"

#define BS_BATCH_BYTES (32u << 10)          /* a WS frame of several deliveries stops growing here */
#define BS_MAX_DRAINED 4                    /* publishers read again at the end of a turn */
#define BS_LONGPOLL_BYTES (64u << 10)       /* a long-poll answer stops growing here (one message at least) */

/* lws's per-session memory: the engine's view of the link, and ours. */
typedef struct bs_tlink {
    bs_link_t core;                         /* first: the engine's bs_link_t * is ours too */
    bs_deadline_t deadline;                 /* a held connect is due, or a request body late */
    int reading;                            /* HTTP: a request body is being read (request_timeout) */
    int busy;                               /* HTTP: a whole request is in, its response not yet out */
    int close;                              /* HTTP: close once this response is out */
    int killing;                            /* WS: closed by lws at its next turn; no timeout may replace that */
    int woken;                              /* in the transport's woken list */
    struct bs_tlink *wake_prev, *wake_next;
} bs_tlink_t;

typedef struct bs_transport {
    const bs_server_config_t *cfg;
    const bs_log_t *log;
    bs_engine_t *engine;
    struct lws_context *ctx;
    bs_deadlines_t deadlines;
    int64_t due_at;                         /* when due_tick fires, ms; 0: not set */
    lws_sorted_usec_list_t due_tick;
    bs_buf_t tx;                            /* outgoing bytes being assembled, BS_PRE headroom first */
    /* Links with something new to write: lws is asked to call them back
     * at the end of the loop turn (see bs_transport_turn_end). */
    bs_tlink_t *woken;
    uint64_t woken_since;                   /* the engine's messages_in when the list began */
    int drain_fd[BS_MAX_DRAINED];           /* this turn: publishers whose sockets hold more */
    int ndrain;
    bs_stats_t *conn;                       /* connections, bytes_out (atomics) */
    /* HTTP endpoints */
    unsigned char *js;                      /* the browser client, after BS_PRE bytes of headroom */
    size_t js_len;
    const char *js_path, *js_path2;         /* <mount>.js, <mount>/client.js */
    int (*stats_json)(void *ctx, bs_buf_t *out); /* GET /stats */
    void *stats_ctx;
} bs_transport_t;

void bs_transport_init(bs_transport_t *t, const bs_server_config_t *cfg, const bs_log_t *log,
                       bs_engine_t *engine, bs_stats_t *conn);
/* The context is gone: frees the heap (every link has left it by then). */
void bs_transport_free(bs_transport_t *t);
void bs_transport_cancel_timer(bs_transport_t *t);

/* The engine's hooks (server.c wires them). */
void bs_transport_wake(bs_transport_t *t, bs_link_t *l);
void bs_transport_lost_client(bs_link_t *l, int close);

/* Once per loop turn, after lws has serviced every ready socket: reads
 * what publishers have sent since, then asks for the writable callbacks of
 * the links woken during the turn. */
void bs_transport_turn_end(bs_transport_t *t);
/* After a WebSocket message: when it queued deliveries (messages_out moved
 * from queued_before) and its socket holds more, the turn's end reads on. */
void bs_transport_note_input(bs_transport_t *t, struct lws *wsi, uint64_t queued_before);

void bs_transport_link_open(bs_link_t *l, struct lws *wsi, int via);
void bs_transport_link_close(bs_transport_t *t, bs_tlink_t *l);
/* After a batch: a held connect waits in the heap until due. */
void bs_transport_arm(bs_transport_t *t, bs_link_t *l);
/* A request body must be in by `due`; 0 when there was no room to track it. */
int bs_transport_expect_body(bs_transport_t *t, bs_tlink_t *l, int64_t due);
void bs_transport_body_in(bs_transport_t *t, bs_tlink_t *l);

/* The shared output buffer, emptied, with lws's headroom in front. */
int bs_tx_begin(bs_transport_t *t);
/* Appends the messages of c's first queued frames, comma separated, while
 * the buffer stays within budget; drops them from the queue. Returns how many. */
uint32_t bs_tx_take_frames(bs_transport_t *t, bs_client_t *c, size_t budget, int comma);

/* http.c */
int bs_http_request(bs_transport_t *t, struct lws *wsi, bs_tlink_t *l, const char *path);
int bs_http_body(bs_transport_t *t, struct lws *wsi, bs_tlink_t *l, const void *in, size_t len);
int bs_http_body_done(bs_transport_t *t, struct lws *wsi, bs_tlink_t *l);
int bs_http_write(bs_transport_t *t, struct lws *wsi, bs_tlink_t *l, int now);
/* 0 when an upgrade (to `protocol`, as the Upgrade header names it) may
 * proceed, else the HTTP status that refuses it. */
unsigned int bs_http_upgrade_refusal(bs_transport_t *t, struct lws *wsi, const char *protocol);

/* ws.c */
int bs_ws_receive(bs_transport_t *t, struct lws *wsi, bs_link_t *l, const void *in, size_t len);
int bs_ws_write(bs_transport_t *t, struct lws *wsi, bs_link_t *l);

#endif

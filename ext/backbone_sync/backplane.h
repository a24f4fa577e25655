/*
 * backplane.h: the Redis backplane, so that several servers act as one
 * (backplane.c). It reports up through a sink its owner (server.c)
 * registers: it never calls the engine or the server by name. Layer:
 * backplane, above the engine's types. Threads: its own thread, plus
 * bs_backplane_publish and bs_backplane_request_load from any thread.
 */
#ifndef BS_BACKPLANE_H
#define BS_BACKPLANE_H

#include "history.h"
#include "types.h"
#include "util.h"

typedef struct bs_backplane bs_backplane_t;

/* What arrives from Redis, handed up from the backplane thread. */
typedef struct bs_backplane_sink {
    /* One message for the channel's subscribers on this node, with the
     * offset and epoch Redis gave it; frame is the whole delivery. */
    void (*message)(void *ctx, const char *channel, size_t chlen, uint64_t offset, const char *epoch,
                    size_t elen, const char *frame, size_t flen);
    /* Redis came back after an outage: clients must resync, all of them
     * (lost NULL), or those subscribed to a pattern or to a channel whose
     * partition (rnames.h) has its bit set in *lost. */
    void (*resync)(void *ctx, const uint64_t *lost);
    /* The answer to bs_backplane_request_load: what Redis holds of the
     * channel's history, or NULL when it could not be read. The callee owns
     * it (bs_loaded_free, then free). */
    void (*loaded)(void *ctx, const char *channel, size_t chlen, bs_loaded_t *l);
    void *ctx;
} bs_backplane_sink_t;

/* Copies what it needs of cfg. NULL when memory runs out. */
bs_backplane_t *bs_backplane_new(const bs_server_config_t *cfg, const bs_log_t *log,
                                 const bs_backplane_sink_t *sink);
/* Starts its thread. 0, or -1 with a sentence in err. */
int bs_backplane_start(bs_backplane_t *b, char *err, size_t errlen);
void bs_backplane_stop(bs_backplane_t *b);
void bs_backplane_free(bs_backplane_t *b);
int bs_backplane_up(bs_backplane_t *b);
void bs_backplane_stats(bs_backplane_t *b, bs_stats_t *st);
/* Any thread: queues a publish for Redis. Returns BS_OK, BS_EFULL, BS_ESTOPPED or BS_ENOMEM. */
int bs_backplane_publish(bs_backplane_t *b, const char *channel, size_t chlen, const char *head, size_t hlen,
                         const char *event_id, size_t idlen);
/* Any thread (the service thread): this node wants the messages of a
 * channel or pattern (on), or no longer does. Never waits; a history load
 * asked for after this runs once Redis confirmed it. 0, or -1 on OOM. */
int bs_backplane_interest(bs_backplane_t *b, const char *name, size_t len, int on);
/* Any thread (the service thread): asks for what Redis holds of a
 * channel's history, proposing `epoch` for a channel it does not know yet
 * (NULL: a barrier, answered with NULL once the interests asked for before
 * are in force). Never waits: the answer comes through sink.loaded from the
 * backplane thread. 0 when asked, -1 when it cannot be (stopping, or MAX_LOADS
 * waiting). */
int bs_backplane_request_load(bs_backplane_t *b, const char *channel, size_t chlen, const char *epoch);

#endif

/*
 * backbone_sync.h: the C core's API for the Ruby bindings (ruby_*.c): the
 * server (server.c), plus the containers, channel rules and plain types
 * they share with the core. Core files never include ruby.h; bindings never
 * include libwebsockets.h.
 *
 * The core, bottom to top (each file includes only the headers below it):
 *   utilities     buf.c util.c deadline.c
 *   frames        frame.c
 *   pure codecs   json.c channel.c rnames.c
 *   state         registry.c history.c
 *   engine        bayeux.c
 *   backplane     shards.c backplane.c
 *   transports    inbox.c transport.c http.c ws.c
 *   server        server.c
 * Going back up happens only through ops structs and visitors registered
 * at init (bs_engine_ops_t, bs_backplane_sink_t, the registry's and the
 * history's callbacks).
 */
#ifndef BACKBONE_SYNC_H
#define BACKBONE_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "channel.h"
#include "types.h"

typedef struct bs_server bs_server_t;

/* Copies the config and every string it points to. NULL when memory runs
 * out or a value is missing (the Ruby layer gives every one). */
bs_server_t *bs_server_new(const bs_server_config_t *cfg);
/* Caller's thread: creates the context and binds, starts the backplane
 * (when configured) and the service thread. Returns 0 once listening; -2
 * when the port is taken by another socket; else -1. Both failures leave a
 * sentence in err. */
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
 * `channel`; never blocks on clients. event_id (NULL: none) travels in ext,
 * and the message is dropped when the channel's history holds it already.
 * Returns BS_OK or a BS_E* code (BS_EINVAL: bs_channel_publishable says no,
 * or the event id is empty, longer than BS_EVENT_ID_MAX or holds a NUL). */
int bs_server_publish(bs_server_t *s, const char *channel, size_t chlen,
                      const char *json, size_t len, const char *event_id, size_t idlen);
/* Any thread: a snapshot of the counters. */
void bs_server_stats(bs_server_t *s, bs_stats_t *out);
/* Any thread: what the host app's outbox holds, for the counters (the
 * relay in the server's process sets it). */
void bs_server_set_outbox(bs_server_t *s, uint64_t waiting, uint64_t oldest_ms);
/* Any thread: about how many bytes the server holds (its structs, the
 * histories, the sessions): an estimate for Ruby's ObjectSpace.memsize_of. */
size_t bs_server_memsize(bs_server_t *s);

#endif

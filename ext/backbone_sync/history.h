/*
 * history.h: per-channel offsets, epochs and a bounded history of recent
 * messages, so a client that comes back can be given exactly what it missed
 * (history.c). Replay hands each kept frame to a visitor: the history knows
 * nothing of clients or queues. Layer: history, beside the registry. Thread:
 * the service thread.
 */
#ifndef BS_HISTORY_H
#define BS_HISTORY_H

#include "buf.h"
#include "frame.h"
#include "types.h"
#include "util.h"

typedef struct bs_entry {
    uint64_t offset;
    int64_t at;                            /* ms */
    bs_frame_t *frame;
    char *event_id;                        /* the publisher's ext.event_id (NUL-terminated), or NULL */
} bs_entry_t;

typedef struct bs_history bs_history_t;
struct bs_history {
    bs_hnode_t node;                       /* first: in the table */
    bs_dnode_t lru;                        /* in the list, most recently published first */
    bs_entry_t *ring;
    uint32_t head, len, cap;
    uint64_t offset;                       /* the last one given out */
    size_t bytes;                          /* what this history holds, struct included */
    int64_t last_used;                     /* ms */
    char epoch[BS_EPOCH_LEN + 1];          /* "": unknown (the backplane could not say) */
    int loading;                           /* asked of the backplane; not to be trusted until it answers */
    int pinned;                            /* its channel has subscribers */
    size_t name_len;
    char *name;                            /* stored after the struct */
};

/* 1 when a channel has subscribers (asked when a history is made). */
typedef int (*bs_subscribed_fn)(void *ctx, const char *name, size_t len);
typedef void (*bs_replay_fn)(void *ctx, bs_frame_t *f);

typedef struct bs_histories {
    bs_table_t table;                      /* by channel name */
    bs_dlist_t lru;                        /* histories with entries, most recently published first */
    size_t bytes;                          /* everything the histories hold */
    size_t freed;                          /* bytes freed, for the heap trim (server.c) */
    uint32_t size;                         /* history_size: entries per channel */
    int64_t ttl_ms;
    size_t memory;                         /* history_memory: the bound on `bytes` */
    int64_t last_sweep;
    bs_stats_t *stats;                     /* history_channels, history_bytes */
    bs_subscribed_fn subscribed;
    void *ctx;
} bs_histories_t;

void bs_histories_init(bs_histories_t *hs, const bs_server_config_t *cfg, bs_stats_t *stats,
                       bs_subscribed_fn subscribed, void *ctx);
void bs_histories_free(bs_histories_t *hs);

bs_history_t *bs_history_find(const bs_histories_t *hs, const char *name, size_t len);
/* Finds or creates (with a fresh epoch) the history of a channel; NULL on OOM. */
bs_history_t *bs_history_get(bs_histories_t *hs, const char *name, size_t len);
/* Keeps f as the entry for h->offset, with the event id it was published
 * with (NULL: none). Returns 0, or -1 when memory ran out. */
int bs_history_append(bs_histories_t *hs, bs_history_t *h, bs_frame_t *f, const char *event_id,
                      size_t idlen);
/* The offset of the kept message published with this event id, or 0: a
 * message published twice is delivered once while its first copy is kept. */
uint64_t bs_history_seen(const bs_history_t *h, const char *event_id, size_t idlen);
/* Forgets h's entries and takes a new epoch ("": unknown) and offset. */
void bs_history_reset(bs_histories_t *hs, bs_history_t *h, const char *epoch, uint64_t offset);
/* Keeps f as the entry for `offset`, if it comes after the last kept one. */
void bs_history_put(bs_histories_t *hs, bs_history_t *h, uint64_t offset, bs_frame_t *f);
/* The offset of the oldest kept entry (the next one when none is kept). */
uint64_t bs_history_oldest(const bs_history_t *h);
/* 1 when h holds every message after `since` in `epoch`. */
int bs_history_covers(const bs_history_t *h, const char *epoch, uint64_t since);
/* Visits every kept message after `since`, in order. Returns 0, or -1 when
 * some of them are no longer kept (or since is ahead of the channel). */
int bs_history_replay(const bs_history_t *h, uint64_t since, bs_replay_fn visit, void *ctx);
/* The channel got its first subscriber (pinned 1), or lost its last (0):
 * then a history never published to goes. */
void bs_history_pin(bs_histories_t *hs, const char *name, size_t len, int pinned);
/* Once a second at most: drops what is past history_ttl. */
void bs_history_sweep(bs_histories_t *hs, int64_t now);

/* A channel's history as another store (the backplane) holds it: what
 * bs_history_load applies. Frames are owned by the struct until applied. */
typedef struct bs_loaded {
    char epoch[BS_EPOCH_LEN + 1];
    uint64_t offset;
    uint32_t n, cap;
    struct bs_loaded_entry {
        uint64_t offset;
        bs_frame_t *frame;
    } *v;
} bs_loaded_t;

/* Appends a kept message (copied into a new frame). 0, or -1 on OOM. */
int bs_loaded_add(bs_loaded_t *l, uint64_t offset, const char *bytes, size_t len);
void bs_loaded_free(bs_loaded_t *l);
/* h becomes what l says: its epoch, offset and messages; messages of the
 * same epoch that reached h meanwhile, newer than what l read, stay. */
void bs_history_load(bs_histories_t *hs, bs_history_t *h, const bs_loaded_t *l);

#endif

/*
 * shards.h: the backplane's connections to Redis (shards.c): one Redis, or
 * every primary of a Redis Cluster, found from seed nodes, with the
 * partition of a channel mapped to the primary that holds it. Which of the
 * two it is, Redis says (INFO cluster); the caller sees shards either way,
 * one for a single Redis. Layer: backplane, below backplane.c. Thread: the
 * backplane thread only.
 */
#ifndef BS_SHARDS_H
#define BS_SHARDS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "channel.h"
#include "rnames.h"

#define BS_MAX_SHARDS 256                   /* primaries followed in one cluster */

typedef struct bs_shard {
    char host[64];
    int port;
    redisContext *cmd;                      /* EVALSHA and history loads, blocking with a timeout */
    redisContext *sub;                      /* (S)SUBSCRIBE, read when poll() says so */
    size_t awaited;                         /* confirmations of (un)subscribes not yet read */
    int broken;                             /* a connection of it failed: bs_shards_repair replaces it */
    /* the last message handed up from `sub`, so that the copy a pattern
     * subscription brings of the same publish, right after, is dropped */
    char last_channel[BS_CHANNEL_MAX];
    size_t last_chlen;
    uint64_t last_offset;
} bs_shard_t;

typedef struct bs_shards {
    char **seed_host;                       /* what the caller named, tried in turn */
    int *seed_port;
    size_t nseeds;
    struct { char host[64]; int port; } known[16]; /* primaries of the last map, tried after the seeds */
    size_t nknown;
    char *password;                         /* or NULL */
    int db;
    int cluster;                            /* connected to a Redis Cluster */
    bs_shard_t *shard;                      /* connected: n of them */
    size_t n;
    int part[BS_RPARTITIONS];               /* cluster: the shard of each partition */
    /* Every open connection, so that another thread can break the blocking
     * read or write the backplane thread is in (bs_shards_halt): hiredis's
     * timeout is per read, and a Redis that sends a byte a second never
     * lets it expire. A connection is opened and freed under io_lock. */
    pthread_mutex_t io_lock;
    redisContext **live;                    /* io_lock */
    size_t nlive, live_cap;                 /* io_lock */
    int halted;                             /* io_lock: no connection is opened any more */
} bs_shards_t;

/* nodes: "host:port[,host:port...]". 0, or -1 (bad list, or out of memory). */
int bs_shards_init(bs_shards_t *s, const char *nodes, const char *password, int db);
void bs_shards_destroy(bs_shards_t *s);
/* Finds the shards from the first seed that answers and connects both
 * connections of each. 0, or -1 with a sentence in why. */
int bs_shards_connect(bs_shards_t *s, char *why, size_t whylen);
void bs_shards_disconnect(bs_shards_t *s);
/* A cluster that moved, or shards whose `broken` is set: reads the map
 * again, keeps the connections of the shards that are still primaries and
 * did not break, and opens the others. *lost gets the partitions (bit p for
 * partition p) whose shard changed or broke: what a node heard of them
 * meanwhile may have gaps. 0, or -1 (not a cluster, no map, or a new shard
 * unreachable): the caller then disconnects and connects anew. */
int bs_shards_repair(bs_shards_t *s, uint64_t *lost, char *why, size_t whylen);
/* The partition a channel lives in: BS_RNO_PARTITION on a single Redis. */
int bs_shards_partition(const bs_shards_t *s, const char *channel, size_t len);
/* The shard that holds a partition (BS_RNO_PARTITION: the only one). */
bs_shard_t *bs_shards_of(bs_shards_t *s, int partition);
/* 1 when an error reply means the cluster moved under us (MOVED, ASK,
 * CLUSTERDOWN, TRYAGAIN, READONLY, LOADING, NOSCRIPT): what was asked is to
 * be asked again once the shards are found anew. */
int bs_shards_moved(const redisReply *r);
/* Any thread: shuts down every connection open and refuses new ones, so
 * that the backplane thread returns from any call within the connect
 * timeout; then only bs_shards_disconnect and bs_shards_destroy are left. */
void bs_shards_halt(bs_shards_t *s);
/* "host:port" of the first seed, for log lines. */
const char *bs_shards_name(const bs_shards_t *s, char *buf, size_t len);

#endif

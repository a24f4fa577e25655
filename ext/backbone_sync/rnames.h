/*
 * rnames.h: the names the Redis backplane uses, its one owner (rnames.c):
 * the keys of a channel's epoch, offset, history and event ids, the pub/sub
 * channels its messages travel on, and, for a Redis Cluster, the hash slot
 * of a name and the partition a channel lives in. The backplane (C) and
 * RedisPublisher (Ruby, through ruby_publish.c) both ask here, so that a
 * publish from either lands on the keys and the shard the other reads.
 * Layer: pure codecs. Thread: any.
 */
#ifndef BS_RNAMES_H
#define BS_RNAMES_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* On a Redis Cluster every channel belongs to one of this many partitions,
 * and everything of a partition (its channels' keys and the pub/sub
 * channels publish.lua sends on) carries the hash tag "{<partition>}", so
 * it lives on one shard and one script can touch all of it. A pattern
 * subscription (one star or two, below /a) listens in every partition. */
#define BS_RPARTITIONS 64
#define BS_RSLOTS 16384
/* No partition: a single Redis, whose names carry no tag. */
#define BS_RNO_PARTITION (-1)

/* The cluster hash slot of a key or shard channel, as Redis computes it
 * (CRC16 of its hash tag when it has a non-empty one, else of all of it). */
unsigned bs_rnames_slot(const char *name, size_t len);
/* The partition of a channel: CRC16 of its name, modulo BS_RPARTITIONS. */
int bs_rnames_partition(const char *channel, size_t len);

/* 1 when a name a node subscribes to (a channel, or a pattern: one whose
 * last segment is one star or two) listens in every partition, as a
 * pattern does; 0 when only in its own (bs_rnames_partition). */
int bs_rnames_everywhere(const char *name, size_t len);
/* 1 when what name listens to may be in one of the partitions whose bits
 * are set in `partitions` (bit p for partition p). */
int bs_rnames_listens_in(const char *name, size_t len, uint64_t partitions);

/* What a name is of. Keys: KIND_SETTINGS (the history settings the servers
 * write, one per partition; channel ignored), KIND_EPOCH, KIND_OFFSET,
 * KIND_HISTORY, KIND_EVENTS (of a channel). Pub/sub channels: KIND_PUBSUB,
 * with a channel or a pattern as Bayeux spells them (a name, or a name and a last segment of one star or two),
 * gives the one publish.lua sends on for exactly what it matches. */
enum { BS_RKIND_SETTINGS, BS_RKIND_EPOCH, BS_RKIND_OFFSET, BS_RKIND_HISTORY, BS_RKIND_EVENTS,
       BS_RKIND_PUBSUB };

/* Writes the name into out (reset first): prefix, then "{<partition>}"
 * unless partition is BS_RNO_PARTITION, then what kind names.
 * 0, or -1 when memory runs out. */
int bs_rnames_name(bs_buf_t *out, const char *prefix, int partition, int kind, const char *channel,
                   size_t len);

#endif

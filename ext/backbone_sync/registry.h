/*
 * registry.h: who is subscribed to what (registry.c), two ways: each
 * channel keeps its members and each subscriber its subscriptions, every
 * entry with its index in the other array, so subscribe and unsubscribe are
 * O(1) and a channel disappears with its last member, as in redis's
 * pubsub.c. Fan-out walks the members of a channel and of every pattern that
 * matches it, and hands each subscriber to a visitor: the registry knows
 * nothing of queues, limits or links. Layer: registry, above frames and the
 * pure codecs. Thread: the service thread.
 */
#ifndef BS_REGISTRY_H
#define BS_REGISTRY_H

#include "buf.h"
#include "frame.h"
#include "types.h"

typedef struct bs_subscriber bs_subscriber_t;
typedef struct bs_channel bs_channel_t;

typedef struct bs_member {                 /* in a channel: who, and where it keeps us */
    bs_subscriber_t *who;
    uint32_t slot;
} bs_member_t;

typedef struct bs_sub {                    /* in a subscriber: which channel, and where */
    bs_channel_t *channel;
    uint32_t pos;
    uint64_t floor;                        /* offsets up to this one were queued, or not asked for */
} bs_sub_t;

struct bs_channel {
    bs_hnode_t node;                       /* first: in the registry's table */
    uint32_t nmembers;
    uint32_t cap;
    int pattern;                           /* its last segment is * or ** */
    bs_member_t *members;
    size_t len;
    char *name;                            /* NUL-terminated, stored after the struct */
};

/* Embedded in whatever subscribes (a Bayeux client). */
struct bs_subscriber {
    bs_sub_t *subs;
    uint32_t nsubs;
    uint32_t subs_cap;
    uint64_t stamp;                        /* last fan-out that reached it: de-duplicates wildcards */
};

/* Called once per subscriber a fan-out reaches. */
typedef void (*bs_fanout_fn)(void *ctx, bs_subscriber_t *who, bs_frame_t *f);
/* Called when a channel gets its first subscriber (1) or loses its last (0). */
typedef void (*bs_presence_fn)(void *ctx, const char *name, size_t len, int present);

typedef struct bs_registry {
    bs_table_t channels;                   /* by name */
    uint32_t npatterns;                    /* wildcard entries: skip expansion when 0 */
    uint64_t stamp;
    bs_buf_t scratch;
    bs_stats_t *stats;                     /* channels, subscriptions */
    bs_presence_fn presence;
    void *ctx;
} bs_registry_t;

void bs_registry_init(bs_registry_t *r, bs_stats_t *stats, bs_presence_fn presence, void *ctx);
void bs_registry_free(bs_registry_t *r);
bs_channel_t *bs_registry_find(const bs_registry_t *r, const char *name, size_t len);
/* Returns the subscription (an existing one when subscribed already), or
 * NULL when memory ran out. */
bs_sub_t *bs_registry_subscribe(bs_registry_t *r, bs_subscriber_t *who, const char *name, size_t len);
void bs_registry_unsubscribe(bs_registry_t *r, bs_subscriber_t *who, const char *name, size_t len);
void bs_registry_unsubscribe_all(bs_registry_t *r, bs_subscriber_t *who);
/* 1 when who holds exactly this subscription. */
int bs_registry_holds(const bs_subscriber_t *who, const char *name, size_t len);
/* Visits every subscriber of `name` and of every pattern matching it, once;
 * a subscriber of `name` whose floor is at `offset` or past it is skipped
 * (offset 0: no offset). */
void bs_registry_fanout(bs_registry_t *r, const char *name, size_t len, bs_frame_t *f, uint64_t offset,
                        bs_fanout_fn visit, void *ctx);

#endif

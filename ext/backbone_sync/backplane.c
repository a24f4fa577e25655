/*
 * backplane.c: the Redis backplane, so that several servers act as one.
 *
 * Every publish goes through lib/backbone_sync/publish.lua, run in Redis: it
 * gives the message its channel's next offset and the channel's epoch, keeps
 * it in the channel's history (a sorted set by offset), and PUBLISHes it on
 * <prefix>ch:<channel>, on <prefix>kids:<parent> (for the wildcard one
 * segment below the parent) and on <prefix>tree:<ancestor> for each
 * ancestor, the root "" included (for the wildcards of any depth below it).
 * A node receives the messages of a channel only while it has a
 * subscriber to it or to a pattern matching it: the engine says which
 * channels and patterns it wants (bs_backplane_interest), and this thread
 * SUBSCRIBEs and UNSUBSCRIBEs to match, before it runs any history load
 * asked for after that, so what a load reads too early arrives as a
 * message. No PSUBSCRIBE: Redis checks every pattern on every publish, so
 * a flood of wildcard subscriptions would cost every publish. Each node
 * fans a message out to its own subscribers: once per node, in offset
 * order. Ruby processes publish with the same script,
 * straight into Redis.
 *
 * Layer: backplane (see backplane.h). Threads: the backplane thread owns two
 * connections, `sub` (SUBSCRIBE) and `cmd` (EVALSHA, and the history loads
 * the service thread asks for), reconnects with backoff, and hands what
 * arrives up through the sink (server.c passes it on to the service
 * thread). Any thread may queue a publish (bs_backplane_publish); the queue
 * is bounded, and while Redis is away it holds publishes until Redis is
 * back, then refuses. The service thread queues loads
 * (bs_backplane_request_load) and never waits on Redis: every request is
 * answered through sink.loaded, with the history or with NULL.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "backplane.h"
#include "channel.h"
#include "json.h"
#include "rnames.h"
#include "shards.h"

#define MAX_OUT 10000                       /* publishes waiting for Redis */
#define MAX_OUT_BYTES (16u << 20)
#define PIPELINE 256                        /* EVALSHAs sent before reading replies */
#define MAX_LOADS 10000                     /* history loads waiting for the backplane thread */
#define SUB_TIMEOUT_MS 2000                 /* for Redis to confirm a SUBSCRIBE */
#define STEADY_MS 2000                      /* a connection that lived this long resets the backoff */

enum { LOAD_HISTORY, LOAD_BARRIER };        /* the kinds of a load item */
#define LOAD_LOST (-2)                      /* load(): reconnect, the cluster may have moved */

/* A channel or pattern this node wants the messages of, or did. */
typedef struct interest {
    bs_hnode_t node;                        /* first: in b->interests */
    int wanted;                             /* lock: what the engine asked for last */
    int dirty;                              /* lock: Redis may not match `wanted` yet */
    struct interest *next_dirty;            /* lock: in b->dirty while dirty */
    int want_now;                           /* backplane thread: `wanted` when it was taken */
    int deferred;                           /* backplane thread: its shard is out of reach; asked again later */
    int active;                             /* backplane thread: subscribed on `sub` */
    size_t len;
    char name[];                            /* NUL-terminated */
} interest_t;


struct bs_backplane {
    const bs_log_t *log;
    bs_backplane_sink_t sink;
    char *script, *prefix;
    int history_size, history_ttl;
    char sha[41];

    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    bs_item_t *head, *tail;                     /* lock */
    size_t nout, out_bytes;                 /* lock */
    int stop;                               /* lock */
    int wake[2];                            /* a byte here wakes the backplane thread */

    bs_shards_t shards;                     /* backplane thread: one Redis, or a cluster's primaries */
    struct pollfd *pfd;                     /* backplane thread: each shard's `sub`, then `wake` */
    uint64_t lost;                          /* backplane thread: partitions lost, their clients not yet resynced */
    int mending;                            /* backplane thread: the last repair did not finish */
    bs_item_t *loads, *loads_tail;          /* lock: history loads asked for, channel and proposed epoch */
    size_t nloads;                          /* lock */
    bs_table_t interests;                   /* lock: interest_t by name; freed only by the backplane thread */
    struct interest *dirty;                 /* lock: the interests with dirty set */
    size_t ndirty;                          /* lock: how many */

    int up;                                 /* atomic */
    uint64_t refused;                       /* atomic */
    uint64_t received;                      /* atomic: messages Redis sent this node */
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

bs_backplane_t *bs_backplane_new(const bs_server_config_t *cfg, const bs_log_t *log,
                                 const bs_backplane_sink_t *sink)
{
    bs_backplane_t *b = calloc(1, sizeof(*b));

    if (!b)
        return NULL;
    b->log = log;
    b->sink = *sink;
    b->script = dup_or_null(cfg->redis_script);
    b->prefix = dup_or_null(cfg->redis_prefix);
    b->history_size = cfg->history_size > 0 ? cfg->history_size : 0;
    b->history_ttl = cfg->history_ttl;
    b->wake[0] = b->wake[1] = -1;
    pthread_mutex_init(&b->lock, NULL);
    if (bs_shards_init(&b->shards, cfg->redis_nodes, cfg->redis_password, cfg->redis_db)) {
        free(b->script);
        free(b->prefix);
        pthread_mutex_destroy(&b->lock);
        free(b);
        return NULL;
    }
    if (!b->script || !b->prefix || pipe2(b->wake, O_CLOEXEC | O_NONBLOCK)) {
        bs_backplane_free(b);
        return NULL;
    }
    return b;
}

/* ---- connections ------------------------------------------------------------ */

static void disconnect(bs_backplane_t *b)
{
    bs_shards_disconnect(&b->shards);
    free(b->pfd);
    b->pfd = NULL;
    b->lost = 0;                            /* connecting anew resyncs every client */
    b->mending = 0;
    __atomic_store_n(&b->up, 0, __ATOMIC_RELEASE);
}

/* Caller holds the lock: x is to be brought in line with Redis. */
static void mark_dirty(bs_backplane_t *b, interest_t *x)
{
    if (x->dirty)
        return;
    x->dirty = 1;
    x->next_dirty = b->dirty;
    b->dirty = x;
    b->ndirty++;
}

/* A new `sub` holds no subscription: what is wanted in the lost partitions
 * (NULL: all), and every pattern, is to be asked for again (sync_interest
 * does it; asking a shard again for what it has is harmless). */
static void resubscribe(bs_backplane_t *b, const uint64_t *lost)
{
    uint32_t i;

    pthread_mutex_lock(&b->lock);
    for (i = 0; i < b->interests.size; i++)
        for (bs_hnode_t *n = b->interests.buckets[i]; n; n = n->next) {
            interest_t *x = (interest_t *)n;

            if (lost && !bs_rnames_listens_in(x->name, x->len, *lost))
                continue;
            x->active = 0;
            mark_dirty(b, x);
        }
    pthread_mutex_unlock(&b->lock);
}

/* Reads n replies from c; 0 when none was an error, else -1 with the
 * first error in why (unless NULL). */
static int read_replies(redisContext *c, size_t n, const char *what, char *why, size_t whylen)
{
    int rc = 0;

    for (size_t i = 0; i < n; i++) {
        void *reply;
        redisReply *r;

        if (redisGetReply(c, &reply) != REDIS_OK) {
            if (why)
                snprintf(why, whylen, "%s failed: %s", what, c->errstr);
            return -1;
        }
        r = reply;
        if (r->type == REDIS_REPLY_ERROR && rc == 0) {
            if (why)
                snprintf(why, whylen, "%s failed: %s", what, r->str);
            rc = -1;
        }
        freeReplyObject(r);
    }
    return rc;
}

/* The shards as they are now connected: the script loaded on each, the
 * history settings written in each partition, `sub` read only when poll()
 * says so. 0, or -1 with a sentence in why. */
static int prepare(bs_backplane_t *b, char *why, size_t whylen)
{
    struct timeval none = { 0, 0 };
    bs_buf_t key;
    int rc = 0, first, last;

    for (size_t i = 0; i < b->shards.n; i++) {
        redisReply *r = redisCommand(b->shards.shard[i].cmd, "SCRIPT LOAD %s", b->script);

        if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
            snprintf(why, whylen, "SCRIPT LOAD failed: %s", r && r->str ? r->str : b->shards.shard[i].cmd->errstr);
            if (r)
                freeReplyObject(r);
            return -1;
        }
        memcpy(b->sha, r->str, 40);
        b->sha[40] = '\0';
        freeReplyObject(r);
    }
    /* The history settings, for publish.lua: every publisher, Ruby's too,
     * trims the history the way the servers keep it. A cluster keeps them
     * in each partition, beside the keys a publish there touches. */
    first = b->shards.cluster ? 0 : BS_RNO_PARTITION;
    last = b->shards.cluster ? BS_RPARTITIONS - 1 : BS_RNO_PARTITION;
    bs_buf_init(&key);
    for (int p = first; rc == 0 && p <= last; p++) {
        char size[16], ttl[16];
        const char *argv[] = { "HSET", NULL, "history_size", size, "history_ttl", ttl };
        size_t lens[] = { 4, 0, 12, 0, 11, 0 };

        lens[3] = (size_t)snprintf(size, sizeof(size), "%d", b->history_size);
        lens[5] = (size_t)snprintf(ttl, sizeof(ttl), "%d", b->history_ttl);
        if (bs_rnames_name(&key, b->prefix, p, BS_RKIND_SETTINGS, "", 0)) {
            rc = -1;
            break;
        }
        argv[1] = key.ptr;
        lens[1] = key.len;
        if (redisAppendCommandArgv(bs_shards_of(&b->shards, p)->cmd, 6, argv, lens) != REDIS_OK)
            rc = -1;
        bs_shards_of(&b->shards, p)->awaited++;
    }
    bs_buf_free(&key);
    for (size_t i = 0; i < b->shards.n; i++) {
        bs_shard_t *sh = &b->shards.shard[i];

        /* Every reply is read, so that none is left to be taken for the
         * answer to a later command. */
        if (read_replies(sh->cmd, sh->awaited, "HSET settings", rc ? NULL : why, whylen))
            rc = -1;
        sh->awaited = 0;
        redisSetTimeout(sh->sub, none);
    }
    return rc;
}

/* Every shard connected and prepared; subscriptions follow (sync_interest). */
static int connect_all(bs_backplane_t *b, char *why, size_t whylen)
{
    /* Room for as many shards as may ever be followed, and `wake`. */
    if (!(b->pfd = calloc(BS_MAX_SHARDS + 1, sizeof(*b->pfd)))) {
        snprintf(why, whylen, "out of memory");
        return -1;
    }
    if (bs_shards_connect(&b->shards, why, whylen) || prepare(b, why, whylen)) {
        disconnect(b);
        return -1;
    }
    resubscribe(b, NULL);
    return 0;
}

/* Something failed on the way (a shard's connection: its `broken` is set;
 * or a MOVED, or an unsubscribe nobody asked for). A single Redis: every
 * connection is dropped and the main loop connects anew. A cluster: the map
 * is read again, and only the partitions whose shard changed or broke are
 * lost: their interests are asked for again and the clients subscribed
 * there resync. While a shard stays out of reach (a primary dead and its
 * replica not yet promoted), the others carry on, the publishes to it wait
 * in the queue, and this is tried again (mend). */
static void repair(bs_backplane_t *b)
{
    uint64_t lost = 0;
    char why[256];

    if (!b->shards.cluster) {
        disconnect(b);
        return;
    }
    if (bs_shards_repair(&b->shards, &lost, why, sizeof(why)) == 0)
        b->lost |= lost;
    else
        goto out_of_reach;
    if (prepare(b, why, sizeof(why)))
        goto out_of_reach;
    b->mending = 0;
    __atomic_store_n(&b->up, 1, __ATOMIC_RELEASE);
    if (!b->lost)
        return;
    bs_log(b->log, 'W', "Redis Cluster changed: %d of %d partitions moved or broke; their clients resync",
           __builtin_popcountll(b->lost), BS_RPARTITIONS);
    resubscribe(b, &b->lost);
    b->sink.resync(b->sink.ctx, &b->lost);
    b->lost = 0;
    return;
out_of_reach:
    bs_log(b->log, 'W', "Redis Cluster: a shard is out of reach (%s); the others carry on, its publishes wait", why);
    b->mending = 1;
    __atomic_store_n(&b->up, 0, __ATOMIC_RELEASE);
}

/* ---- the backplane thread ------------------------------------------------------- */

static int run_loads(bs_backplane_t *b);

/* A frame from Redis has the shape publish.lua gives it, "[{...}]": the
 * transports splice frames into a reply by stripping the first and the
 * last byte, so a shorter one would underflow and another would break the
 * JSON every client of the channel reads. (Its bytes are checked as UTF-8
 * by the engine, for a message; here, for a history.) */
static int frame_shaped(const char *f, size_t len)
{
    return len >= 4 && f[0] == '[' && f[1] == '{' && f[len - 2] == '}' && f[len - 1] == ']';
}

/* An epoch as the core makes them (bs_random_id: digits and lower-case
 * letters; upper case, '-' and '_' let through too): it is written into
 * JSON replies as it is, so a quote or a backslash from Redis would break
 * them, and a NUL would cut it. */
static int epoch_ok(const char *e, size_t len)
{
    if (len == 0)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!((e[i] >= '0' && e[i] <= '9') || (e[i] >= 'a' && e[i] <= 'z') || (e[i] >= 'A' && e[i] <= 'Z') ||
              e[i] == '-' || e[i] == '_'))
            return 0;
    return 1;
}

/* "<channel>\n<offset>\n<epoch>\n<frame>", as publish.lua sends it. */
static void handle_message(bs_backplane_t *b, bs_shard_t *sh, const char *p, size_t len)
{
    const char *end = p + len, *ch = p, *nl1, *nl2, *nl3;
    unsigned long long offset;
    char *stop;

    if (!(nl1 = memchr(ch, '\n', len)) || !(nl2 = memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1))) ||
        !(nl3 = memchr(nl2 + 1, '\n', (size_t)(end - nl2 - 1))))
        return;
    /* Only what publish.lua writes: an offset of 1 to 20 decimal digits,
     * not 0 (strtoull alone takes "", " 1" and "-1", the last as 2^64-1). */
    if (nl2 == nl1 + 1 || nl2 - nl1 - 1 > 20 || nl1[1] < '1' || nl1[1] > '9')
        return;
    errno = 0;
    offset = strtoull(nl1 + 1, &stop, 10);
    if (stop != nl2 || errno || nl3 - nl2 - 1 > BS_EPOCH_LEN * 2 || (size_t)(nl1 - ch) > BS_CHANNEL_MAX ||
        !epoch_ok(nl2 + 1, (size_t)(nl3 - nl2 - 1)) || !frame_shaped(nl3 + 1, (size_t)(end - nl3 - 1))) {
        bs_log(b->log, 'W', "dropped a message from Redis that is not as publish.lua writes it");
        return;
    }
    /* One publish reaches a node once per subscription that matches it, one
     * right after another: keep the first. */
    if (sh->last_chlen == (size_t)(nl1 - ch) && sh->last_offset == offset &&
        memcmp(sh->last_channel, ch, sh->last_chlen) == 0)
        return;
    sh->last_chlen = (size_t)(nl1 - ch);
    memcpy(sh->last_channel, ch, sh->last_chlen);
    sh->last_offset = offset;
    __atomic_fetch_add(&b->received, 1, __ATOMIC_RELAXED);
    b->sink.message(b->sink.ctx, ch, (size_t)(nl1 - ch), offset, nl2 + 1, (size_t)(nl3 - nl2 - 1),
                    nl3 + 1, (size_t)(end - nl3 - 1));
}

/* A reply read on a shard's `sub`: a message is handed up; 1 when it
 * confirms a subscribe or unsubscribe (sharded or not), else 0. */
static int sub_reply(bs_backplane_t *b, bs_shard_t *sh, redisReply *r)
{
    const char *kind;

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    kind = r->element[0]->str;
    if ((strcmp(kind, "message") == 0 || strcmp(kind, "smessage") == 0) &&
        r->element[2]->type == REDIS_REPLY_STRING) {
        handle_message(b, sh, r->element[2]->str, r->element[2]->len);
        return 0;
    }
    return strcmp(kind, "subscribe") == 0 || strcmp(kind, "unsubscribe") == 0 ||
           strcmp(kind, "ssubscribe") == 0 || strcmp(kind, "sunsubscribe") == 0;
}

/* What arrived on a shard's `sub` while no (un)subscribe was waiting to be
 * confirmed. -1 when the connection failed, or when Redis unsubscribed us
 * by itself: a cluster does when the slot of a sharded channel moves to
 * another primary, and the map is to be read again. */
static int read_sub(bs_backplane_t *b, bs_shard_t *sh)
{
    void *reply;

    if (redisBufferRead(sh->sub) != REDIS_OK) {
        sh->broken = 1;
        return -1;
    }
    for (;;) {
        redisReply *r;
        int confirmation;

        if (redisGetReplyFromReader(sh->sub, &reply) != REDIS_OK) {
            sh->broken = 1;
            return -1;
        }
        if (!(r = reply))
            return 0;
        confirmation = sub_reply(b, sh, r);
        freeReplyObject(r);
        if (confirmation)
            return -1;
    }
}

/* Appends the EVALSHA of publish.lua for one publish to the `cmd` of the
 * shard that holds its channel, with the names rnames.c gives. The shard,
 * or NULL when memory runs out. */
static bs_shard_t *append_publish(bs_backplane_t *b, const bs_item_t *o, const char *size, const char *ttl)
{
    int part = bs_shards_partition(&b->shards, o->channel, o->chlen);
    bs_shard_t *sh = bs_shards_of(&b->shards, part);
    bs_buf_t names[6];
    const char *argv[16];
    size_t lens[16], n = 0;
    int rc = 0;

    for (int k = 0; k < 6; k++)
        bs_buf_init(&names[k]);
    for (int k = BS_RKIND_SETTINGS; k <= BS_RKIND_EVENTS && !rc; k++)
        rc = bs_rnames_name(&names[k], b->prefix, part, k, o->channel, o->chlen);
    rc = rc || bs_rnames_name(&names[5], b->prefix, part, BS_RKIND_PUBSUB, "", 0);
    if (!rc) {
#define ARG(p, l) (argv[n] = (p), lens[n++] = (l))
        ARG("EVALSHA", 7);
        ARG(b->sha, 40);
        ARG("5", 1);
        for (int k = BS_RKIND_SETTINGS; k <= BS_RKIND_EVENTS; k++)
            ARG(names[k].ptr, names[k].len);
        ARG(names[5].ptr, names[5].len - 3);        /* the pub/sub start, less "ch:" */
        ARG(o->channel, o->chlen);
        ARG(o->data, o->len);
        ARG(size, strlen(size));
        ARG(ttl, strlen(ttl));
        ARG(o->epoch, BS_EPOCH_LEN);
        ARG(o->extra ? o->extra : "", o->xlen);
        if (b->shards.cluster)
            ARG("SPUBLISH", 8);
        else
            ARG("PUBLISH", 7);
#undef ARG
        rc = redisAppendCommandArgv(sh->cmd, (int)n, argv, lens) != REDIS_OK;
    }
    for (int k = 0; k < 6; k++)
        bs_buf_free(&names[k]);
    return rc ? NULL : sh;
}

/* Sends what is queued, PIPELINE at a time, each publish to the shard of
 * its channel; a publish leaves the queue once Redis has answered for it.
 * One the cluster refused because it moved (bs_shards_moved) stays, in
 * its place, for the next connection. Returns -1 when a connection failed
 * or the cluster moved. */
static int flush_out(bs_backplane_t *b)
{
    for (;;) {
        bs_item_t *batch[PIPELINE];
        bs_shard_t *shard_of[PIPELINE];
        char done[PIPELINE];
        size_t n = 0, i;
        char size[16], ttl[16];
        int rc = 0;

        /* In queue order, passing over the publishes to a shard out of
         * reach: they wait, in their order, and the others go. */
        pthread_mutex_lock(&b->lock);
        for (bs_item_t *o = b->head; o && n < PIPELINE; o = o->next)
            if (!bs_shards_of(&b->shards, bs_shards_partition(&b->shards, o->channel, o->chlen))->broken)
                batch[n++] = o;
        pthread_mutex_unlock(&b->lock);
        if (!n)
            return 0;
        snprintf(size, sizeof(size), "%d", b->history_size);
        snprintf(ttl, sizeof(ttl), "%d", b->history_ttl);
        for (i = 0; i < n; i++)
            if (!(shard_of[i] = append_publish(b, batch[i], size, ttl)))
                return -1;
        /* Each shard answers in the order it was asked. Every answer that
         * can be read is: what another shard did is not done twice. */
        memset(done, 0, n);
        for (i = 0; i < n; i++) {
            void *reply;
            redisReply *r;

            if (shard_of[i]->cmd->err || redisGetReply(shard_of[i]->cmd, &reply) != REDIS_OK) {
                shard_of[i]->broken = 1;
                rc = -1;
                continue;
            }
            r = reply;
            if (bs_shards_moved(r)) {
                bs_log(b->log, 'I', "Redis Cluster moved (%s); reading its map again", r->str);
                rc = -1;
            } else {
                if (r->type == REDIS_REPLY_ERROR)
                    bs_log(b->log, 'E', "Redis refused a publish to %s: %s", batch[i]->channel, r->str);
                done[i] = 1;
            }
            freeReplyObject(r);
        }
        pthread_mutex_lock(&b->lock);
        /* The batch is in queue order, and only this thread takes from the
         * queue: others only append. */
        {
            bs_item_t **at = &b->head, *prev = NULL;

            for (i = 0; *at && i < n;) {
                bs_item_t *o = *at;

                if (o != batch[i] || !done[i++]) {
                    prev = o;
                    at = &o->next;
                    continue;
                }
                *at = o->next;
                if (b->tail == o)
                    b->tail = prev;
                b->nout--;
                b->out_bytes -= o->len;
                free(o);
            }
        }
        pthread_mutex_unlock(&b->lock);
        if (rc)
            return -1;
    }
}

static int stopping(bs_backplane_t *b)
{
    int stop;

    pthread_mutex_lock(&b->lock);
    stop = b->stop;
    pthread_mutex_unlock(&b->lock);
    return stop;
}

/* ---- interest: what `sub` is subscribed to ---------------------------------- */

/* Asks one shard to (un)subscribe the pub/sub channel publish.lua sends a
 * Bayeux channel's or pattern's messages on, in one partition. 0, or -1. */
static int ask(bs_backplane_t *b, bs_buf_t *name, const interest_t *x, int part)
{
    bs_shard_t *sh = bs_shards_of(&b->shards, part);
    const char *verb = b->shards.cluster ? (x->want_now ? "SSUBSCRIBE" : "SUNSUBSCRIBE")
                                         : (x->want_now ? "SUBSCRIBE" : "UNSUBSCRIBE");

    if (bs_rnames_name(name, b->prefix, part, BS_RKIND_PUBSUB, x->name, x->len) ||
        redisAppendCommand(sh->sub, "%s %b", verb, name->ptr, name->len) != REDIS_OK)
        return -1;
    sh->awaited++;
    return 0;
}

/* Reads a shard's `sub` until every (un)subscribe sent is confirmed,
 * handing up the messages that arrive meanwhile. 0, or -1 when the
 * connection failed or the cluster moved. */
static int confirm(bs_backplane_t *b, bs_shard_t *sh)
{
    struct timeval wait = { SUB_TIMEOUT_MS / 1000, (SUB_TIMEOUT_MS % 1000) * 1000 }, none = { 0, 0 };
    int rc = 0;

    redisSetTimeout(sh->sub, wait);
    while (rc == 0 && sh->awaited) {
        void *reply;
        redisReply *r;

        if (redisGetReply(sh->sub, &reply) != REDIS_OK) {
            sh->broken = 1;
            rc = -1;
            break;
        }
        r = reply;
        if (bs_shards_moved(r)) {
            /* What else it was asked is left unread: its connections go. */
            bs_log(b->log, 'I', "Redis Cluster moved (%s); reading its map again", r->str);
            sh->broken = 1;
            rc = -1;
        } else if (r->type == REDIS_REPLY_ERROR) {
            /* An answer all the same (an ACL that forbids the channel, say). */
            bs_log(b->log, 'E', "Redis refused a subscription: %s", r->str);
            sh->awaited--;
        } else {
            sh->awaited -= (size_t)sub_reply(b, sh, r);
        }
        freeReplyObject(r);
    }
    redisSetTimeout(sh->sub, none);
    return rc;
}

/* Subscribes and unsubscribes to match what the engine wants, on each
 * shard concerned (a pattern, on a cluster: in every partition), and waits
 * (at most SUB_TIMEOUT_MS a shard) until Redis confirmed it. Returns -1
 * when a connection failed or the cluster moved. */
static int sync_interest(bs_backplane_t *b)
{
    interest_t **batch;
    size_t n = 0, i;
    bs_buf_t name;
    int rc = 0;

    pthread_mutex_lock(&b->lock);
    if (!b->ndirty || !(batch = malloc(sizeof(*batch) * b->ndirty))) {
        pthread_mutex_unlock(&b->lock);
        return 0;
    }
    /* Only what changed: a flood of new channels costs each its own, not a
     * walk over every interest. */
    for (interest_t *x = b->dirty; x; x = x->next_dirty) {
        x->dirty = 0;
        x->want_now = x->wanted;
        batch[n++] = x;
    }
    b->dirty = NULL;
    b->ndirty = 0;
    pthread_mutex_unlock(&b->lock);

    /* A shard out of reach is not asked: a channel there waits (deferred),
     * a pattern is asked in the other partitions, and in that one once the
     * shard is mended (repair asks every pattern again). */
    bs_buf_init(&name);
    for (i = 0; i < n && rc == 0; i++) {
        interest_t *x = batch[i];
        int part = bs_shards_partition(&b->shards, x->name, x->len);

        x->deferred = 0;
        if (x->want_now == x->active)
            continue;
        if (!b->shards.cluster || !bs_rnames_everywhere(x->name, x->len)) {
            if (bs_shards_of(&b->shards, part)->broken)
                x->deferred = 1;
            else
                rc = ask(b, &name, x, part);
        } else {
            for (int p = 0; p < BS_RPARTITIONS && rc == 0; p++)
                if (!bs_shards_of(&b->shards, p)->broken)
                    rc = ask(b, &name, x, p);
        }
    }
    bs_buf_free(&name);
    for (i = 0; i < b->shards.n; i++)
        if (!b->shards.shard[i].broken && confirm(b, &b->shards.shard[i]))
            rc = -1;

    pthread_mutex_lock(&b->lock);
    for (i = 0; i < n; i++) {
        interest_t *x = batch[i];

        if (rc == 0 && !x->deferred)
            x->active = x->want_now;
        else
            mark_dirty(b, x);              /* asked again on the next connection */
        if (!x->wanted && !x->active && !x->dirty) {
            bs_table_remove(&b->interests, &x->node);
            free(x);
        }
    }
    pthread_mutex_unlock(&b->lock);
    free(batch);
    return rc;
}

int bs_backplane_interest(bs_backplane_t *b, const char *name, size_t len, int on)
{
    uint32_t hv = bs_hash(name, len);
    interest_t *x = NULL;
    int was_idle;

    pthread_mutex_lock(&b->lock);
    for (bs_hnode_t *h = bs_table_chain(&b->interests, hv); h; h = h->next)
        if (h->hash == hv && ((interest_t *)h)->len == len && memcmp(((interest_t *)h)->name, name, len) == 0) {
            x = (interest_t *)h;
            break;
        }
    if (!x && !on) {
        pthread_mutex_unlock(&b->lock);
        return 0;
    }
    if (!x) {
        if (!(x = calloc(1, sizeof(*x) + len + 1))) {
            pthread_mutex_unlock(&b->lock);
            return -1;
        }
        x->node.hash = hv;
        x->len = len;
        memcpy(x->name, name, len);
        if (bs_table_insert(&b->interests, &x->node)) {
            pthread_mutex_unlock(&b->lock);
            free(x);
            return -1;
        }
    }
    x->wanted = on;
    was_idle = b->ndirty == 0;
    mark_dirty(b, x);
    pthread_mutex_unlock(&b->lock);
    if (was_idle && write(b->wake[1], "x", 1) < 0) {
        /* full pipe: a wakeup is pending already */
    }
    return 0;
}

static void drain_wake(bs_backplane_t *b)
{
    char buf[64];

    while (read(b->wake[0], buf, sizeof(buf)) > 0)
        ;
}

/* Disconnected: waits ms (or until woken), answering the loads asked
 * meanwhile at once, with nothing. */
static void pause_for(bs_backplane_t *b, int ms)
{
    struct pollfd pfd = { .fd = b->wake[0], .events = POLLIN };

    run_loads(b);
    if (stopping(b))
        return;                             /* its wakeup may be read already */
    poll(&pfd, 1, ms);
    drain_wake(b);
}

/* A repair left unfinished, or a shard whose connection failed. */
static int needs_mending(const bs_backplane_t *b)
{
    if (b->mending)
        return 1;
    for (size_t i = 0; i < b->shards.n; i++)
        if (b->shards.shard[i].broken)
            return 1;
    return 0;
}

/* How often the shards have needed mending of late. */
typedef struct trouble {
    int backoff;                            /* ms */
    int64_t last;                           /* when they last did */
} trouble_t;

/* repair, then, when the last repair was not long ago (a cluster in the
 * middle of moving a slot answers ASK or TRYAGAIN until it is done), a
 * pause that doubles each time, so that the node does not spin. */
static void mend(bs_backplane_t *b, trouble_t *t)
{
    int64_t now = bs_now_ms();

    repair(b);
    if (t->last && now - t->last < STEADY_MS) {
        pause_for(b, t->backoff);
        t->backoff = t->backoff >= 5000 ? 5000 : t->backoff * 2;
    } else {
        t->backoff = 100;
    }
    t->last = now;
}

static void *backplane_main(void *arg)
{
    bs_backplane_t *b = arg;
    int backoff = 100, was_up = 0;
    int64_t up_since = 0;
    trouble_t trouble = { 100, 0 };
    char why[256], name[128];

    bs_shards_name(&b->shards, name, sizeof(name));
    while (!stopping(b)) {
        if (!b->pfd) {
            /* Lost soon after it was made (a cluster in the middle of moving
             * a slot, a flapping shard): the backoff goes on, so that the
             * node neither spins nor asks its clients to resync in a loop. */
            if (up_since && bs_now_ms() - up_since < STEADY_MS) {
                pause_for(b, backoff);
                backoff = backoff >= 5000 ? 5000 : backoff * 2;
            } else if (up_since) {
                backoff = 100;
            }
            up_since = 0;
            if (connect_all(b, why, sizeof(why))) {
                bs_log(b->log, 'W', "Redis at %s unreachable (%s); retrying in %d ms", name, why, backoff);
                pause_for(b, backoff);
                backoff = backoff >= 5000 ? 5000 : backoff * 2;
                continue;
            }
            up_since = bs_now_ms();
            __atomic_store_n(&b->up, 1, __ATOMIC_RELEASE);
            if (b->shards.cluster)
                bs_log(b->log, 'I', "Redis backplane connected to a Redis Cluster of %zu primaries through %s",
                       b->shards.n, name);
            else
                bs_log(b->log, 'I', "Redis backplane connected at %s", name);
            /* Messages may have passed while we were away: every client
             * starts again and recovers from the history in Redis. */
            if (was_up)
                b->sink.resync(b->sink.ctx, NULL);
            was_up = 1;
        }
        if (flush_out(b)) {
            bs_log(b->log, 'W', "Redis connection lost or moved while publishing; publishes are held until it is back");
            mend(b, &trouble);
            continue;
        }
        if (sync_interest(b)) {
            bs_log(b->log, 'W', "Redis did not confirm a subscription; reconnecting");
            mend(b, &trouble);
            continue;
        }
        if (run_loads(b)) {
            bs_log(b->log, 'W', "Redis connection lost or moved while loading a history; reconnecting");
            mend(b, &trouble);
            continue;
        }
        if (needs_mending(b)) {
            mend(b, &trouble);
            continue;
        }
        {
            size_t n = b->shards.n;

            for (size_t i = 0; i < n; i++)
                b->pfd[i] = (struct pollfd){ .fd = b->shards.shard[i].sub->fd, .events = POLLIN };
            b->pfd[n] = (struct pollfd){ .fd = b->wake[0], .events = POLLIN };
            if (poll(b->pfd, n + 1, 1000) < 0 && errno != EINTR) {
                disconnect(b);
                continue;
            }
            if (b->pfd[n].revents)
                drain_wake(b);
            for (size_t i = 0; i < n; i++)
                if ((b->pfd[i].revents & (POLLIN | POLLERR | POLLHUP)) && read_sub(b, &b->shards.shard[i])) {
                    bs_log(b->log, 'W', "Redis subscription lost or moved (%s:%d); reconnecting",
                           b->shards.shard[i].host, b->shards.shard[i].port);
                    mend(b, &trouble);
                    break;
                }
        }
    }
    disconnect(b);
    return NULL;
}

int bs_backplane_start(bs_backplane_t *b, char *err, size_t errlen)
{
    sigset_t all, old;
    int rc;

    /* Signals belong to Ruby: the thread is born with all blocked. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&b->thread, NULL, backplane_main, b);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc) {
        snprintf(err, errlen, "could not start the Redis backplane thread: %s", strerror(rc));
        return -1;
    }
    b->started = 1;
    return 0;
}

void bs_backplane_stop(bs_backplane_t *b)
{
    if (!b || !b->started)
        return;
    pthread_mutex_lock(&b->lock);
    b->stop = 1;
    pthread_mutex_unlock(&b->lock);
    if (write(b->wake[1], "x", 1) < 0) {
        /* the pipe is full: the thread is awake anyway */
    }
    /* It may be in a blocking read that a Redis keeps alive a byte at a
     * time, or connecting to one shard after another: end both. */
    bs_shards_halt(&b->shards);
    pthread_join(b->thread, NULL);
    b->started = 0;
}

void bs_backplane_free(bs_backplane_t *b)
{
    bs_item_t *o, *next;

    if (!b)
        return;
    bs_backplane_stop(b);
    for (o = b->head; o; o = next) {
        next = o->next;
        free(o);
    }
    for (o = b->loads; o; o = next) {
        next = o->next;
        free(o);
    }
    for (uint32_t i = 0; i < b->interests.size; i++)
        for (bs_hnode_t *h = b->interests.buckets[i], *hn; h; h = hn) {
            hn = h->next;
            free(h);
        }
    bs_table_free(&b->interests);
    bs_shards_destroy(&b->shards);
    if (b->wake[0] >= 0)
        close(b->wake[0]);
    if (b->wake[1] >= 0)
        close(b->wake[1]);
    pthread_mutex_destroy(&b->lock);
    free(b->script);
    free(b->prefix);
    free(b);
}

int bs_backplane_up(bs_backplane_t *b)
{
    return __atomic_load_n(&b->up, __ATOMIC_ACQUIRE);
}

void bs_backplane_stats(bs_backplane_t *b, bs_stats_t *st)
{
    pthread_mutex_lock(&b->lock);
    st->backplane_queued = b->nout;
    pthread_mutex_unlock(&b->lock);
    st->backplane_up = (uint64_t)bs_backplane_up(b);
    st->backplane_refused = __atomic_load_n(&b->refused, __ATOMIC_RELAXED);
    st->backplane_received = __atomic_load_n(&b->received, __ATOMIC_RELAXED);
}

int bs_backplane_publish(bs_backplane_t *b, const char *channel, size_t chlen, const char *head, size_t hlen,
                         const char *event_id, size_t idlen)
{
    /* data: the delivery head; epoch: proposed, for a channel Redis does not
     * know; extra: the event id publish.lua drops a second copy by. A
     * publish without one gets one of its own (not in the delivery): when
     * Redis ran it but its answer was lost (a shard stalled past the
     * timeout), the copy sent again is dropped rather than numbered anew. */
    char own[3 + BS_EPOCH_LEN + 1];        /* bs_random_id ends it with a NUL */
    bs_item_t *o;
    int was_empty;

    if (!idlen) {
        memcpy(own, "bs-", 3);
        if (bs_random_id(own + 3, BS_EPOCH_LEN) == 0) {
            event_id = own;
            idlen = sizeof(own) - 1;
        }
    }
    o = bs_item_new_extra(0, channel, chlen, head, hlen, event_id, idlen);

    if (!o)
        return BS_ENOMEM;
    if (bs_random_id(o->epoch, BS_EPOCH_LEN))
        memset(o->epoch, '0', BS_EPOCH_LEN);
    pthread_mutex_lock(&b->lock);
    if (b->stop || b->nout >= MAX_OUT || b->out_bytes + hlen > MAX_OUT_BYTES) {
        int stop = b->stop;

        pthread_mutex_unlock(&b->lock);
        free(o);
        if (stop)
            return BS_ESTOPPED;
        __atomic_fetch_add(&b->refused, 1, __ATOMIC_RELAXED);
        return BS_EFULL;
    }
    was_empty = b->head == NULL;
    if (b->tail)
        b->tail->next = o;
    else
        b->head = o;
    b->tail = o;
    b->nout++;
    b->out_bytes += hlen;
    pthread_mutex_unlock(&b->lock);
    if (was_empty && write(b->wake[1], "x", 1) < 0) {
        /* full pipe: a wakeup is pending already */
    }
    return BS_OK;
}

/* ---- history loads, asked for by the service thread, run here ------------------- */

int bs_backplane_request_load(bs_backplane_t *b, const char *channel, size_t chlen, const char *epoch)
{
    bs_item_t *o = bs_item_new(epoch ? LOAD_HISTORY : LOAD_BARRIER, channel, chlen, "", 0);
    int was_empty;

    if (!o)
        return -1;
    if (epoch)
        memcpy(o->epoch, epoch, strnlen(epoch, BS_EPOCH_LEN));
    /* A node that no longer knows the epoch ("") still proposes a real one:
     * Redis keeps the first proposal for a channel it does not know. */
    if (epoch && !o->epoch[0] && bs_random_id(o->epoch, BS_EPOCH_LEN))
        memset(o->epoch, '0', BS_EPOCH_LEN);
    pthread_mutex_lock(&b->lock);
    if (b->stop || b->nloads >= MAX_LOADS) {
        pthread_mutex_unlock(&b->lock);
        free(o);
        return -1;
    }
    was_empty = b->loads == NULL;
    if (b->loads_tail)
        b->loads_tail->next = o;
    else
        b->loads = o;
    b->loads_tail = o;
    b->nloads++;
    pthread_mutex_unlock(&b->lock);
    if (was_empty && write(b->wake[1], "x", 1) < 0) {
        /* full pipe: a wakeup is pending already */
    }
    return 0;
}

/* What Redis holds of one channel, read on the `cmd` of its shard. 0; -1
 * when Redis would not say; LOAD_LOST when the connection failed or the
 * cluster moved. */
static int load(bs_backplane_t *b, const char *name, size_t len, const char *epoch, bs_loaded_t *out)
{
    int part = bs_shards_partition(&b->shards, name, len);
    redisContext *c = bs_shards_of(&b->shards, part)->cmd;
    bs_buf_t ekey, okey, hkey;
    redisReply *r = NULL;
    size_t i;
    int rc = -1;

    bs_buf_init(&ekey);
    bs_buf_init(&okey);
    bs_buf_init(&hkey);
    if (bs_rnames_name(&ekey, b->prefix, part, BS_RKIND_EPOCH, name, len) ||
        bs_rnames_name(&okey, b->prefix, part, BS_RKIND_OFFSET, name, len) ||
        bs_rnames_name(&hkey, b->prefix, part, BS_RKIND_HISTORY, name, len))
        goto out;
    /* Agree on an epoch first: the proposed one, unless Redis has one. */
    r = redisCommand(c, "SET %b %s NX EX %d", ekey.ptr, ekey.len, epoch,
                     b->history_ttl > 86400 ? b->history_ttl : 86400);
    if (!r || r->type == REDIS_REPLY_ERROR)
        goto out;
    freeReplyObject(r);
    r = redisCommand(c, "MGET %b %b", ekey.ptr, ekey.len, okey.ptr, okey.len);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len > BS_EPOCH_LEN ||
        !epoch_ok(r->element[0]->str, r->element[0]->len)) {
        if (r && r->type != REDIS_REPLY_ERROR)
            bs_log(b->log, 'W', "Redis answered the epoch of %.*s with something that is not one", (int)len, name);
        goto out;
    }
    memcpy(out->epoch, r->element[0]->str, r->element[0]->len);
    out->epoch[r->element[0]->len] = '\0';
    out->offset = r->element[1]->type == REDIS_REPLY_STRING ? strtoull(r->element[1]->str, NULL, 10) : 0;
    freeReplyObject(r);
    r = NULL;
    if (b->history_size > 0) {
        r = redisCommand(c, "ZRANGE %b 0 -1 WITHSCORES", hkey.ptr, hkey.len);
        if (!r || r->type != REDIS_REPLY_ARRAY)
            goto out;
        for (i = 0; i + 1 < r->elements; i += 2) {
            redisReply *frame = r->element[i], *score = r->element[i + 1];

            /* A score that is not a string (a broken or hostile Redis) has
             * no str; a frame of another shape would break the replay. */
            if (frame->type != REDIS_REPLY_STRING || score->type != REDIS_REPLY_STRING ||
                !frame_shaped(frame->str, frame->len) || !bs_utf8_valid(frame->str, frame->len))
                continue;
            if (bs_loaded_add(out, strtoull(score->str, NULL, 10), frame->str, frame->len))
                goto out;
        }
    }
    rc = 0;
out:
    if (rc && (!r || r->type == REDIS_REPLY_ERROR))
        bs_log(b->log, 'W', "could not load the history of %.*s from Redis: %s", (int)len, name,
               r ? r->str : c->errstr);
    if (rc && (c->err || !r || bs_shards_moved(r)))
        rc = LOAD_LOST;
    if (c->err)
        bs_shards_of(&b->shards, part)->broken = 1;
    if (r)
        freeReplyObject(r);
    bs_buf_free(&ekey);
    bs_buf_free(&okey);
    bs_buf_free(&hkey);
    return rc;
}

/* Answers every load asked for: from Redis when connected, else with NULL
 * (the service thread then tells the client recovery was not possible).
 * Returns -1 when the connection failed on the way. */
static int run_loads(bs_backplane_t *b)
{
    bs_item_t *o, *next;
    int rc = 0;

    pthread_mutex_lock(&b->lock);
    o = b->loads;
    b->loads = b->loads_tail = NULL;
    b->nloads = 0;
    pthread_mutex_unlock(&b->lock);
    /* Every interest asked for before these loads is in force first. */
    if (o && b->pfd && sync_interest(b))
        rc = -1;
    for (; o; o = next) {
        bs_loaded_t *l = calloc(1, sizeof(*l));
        int got = -1;

        next = o->next;
        /* A shard out of reach answers nothing (the client is told it
         * could not recover); the others answer. */
        if (l && b->pfd && o->kind == LOAD_HISTORY &&
            !bs_shards_of(&b->shards, bs_shards_partition(&b->shards, o->channel, o->chlen))->broken)
            got = load(b, o->channel, o->chlen, o->epoch, l);
        if (got == LOAD_LOST)
            rc = -1;
        if (l && got) {
            bs_loaded_free(l);
            free(l);
            l = NULL;
        }
        b->sink.loaded(b->sink.ctx, o->channel, o->chlen, l);
        free(o);
    }
    return rc;
}

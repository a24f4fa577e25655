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
#include "rnames.h"

#define MAX_OUT 10000                       /* publishes waiting for Redis */
#define MAX_OUT_BYTES (16u << 20)
#define PIPELINE 256                        /* EVALSHAs sent before reading replies */
#define MAX_LOADS 10000                     /* history loads waiting for the backplane thread */
#define SUB_TIMEOUT_MS 2000                 /* for Redis to confirm a SUBSCRIBE */

enum { LOAD_HISTORY, LOAD_BARRIER };        /* the kinds of a load item */

/* A channel or pattern this node wants the messages of, or did. */
typedef struct interest {
    bs_hnode_t node;                        /* first: in b->interests */
    int wanted;                             /* lock: what the engine asked for last */
    int dirty;                              /* lock: Redis may not match `wanted` yet */
    struct interest *next_dirty;            /* lock: in b->dirty while dirty */
    int want_now;                           /* backplane thread: `wanted` when it was taken */
    int active;                             /* backplane thread: subscribed on `sub` */
    size_t len;
    char name[];                            /* NUL-terminated */
} interest_t;


struct bs_backplane {
    const bs_log_t *log;
    bs_backplane_sink_t sink;
    char *host, *password, *script, *prefix;
    int port, db, history_size, history_ttl;
    char sha[41];

    pthread_t thread;
    int started;
    pthread_mutex_t lock;
    bs_item_t *head, *tail;                     /* lock */
    size_t nout, out_bytes;                 /* lock */
    int stop;                               /* lock */
    int wake[2];                            /* a byte here wakes the backplane thread */

    redisContext *sub, *cmd;                /* backplane thread */
    bs_item_t *loads, *loads_tail;          /* lock: history loads asked for, channel and proposed epoch */
    size_t nloads;                          /* lock */
    bs_table_t interests;                   /* lock: interest_t by name; freed only by the backplane thread */
    struct interest *dirty;                 /* lock: the interests with dirty set */
    size_t ndirty;                          /* lock: how many */

    /* backplane thread: the last message handed up, so that the copy a
     * pattern subscription brings of the same publish is dropped */
    char last_channel[BS_CHANNEL_MAX];
    size_t last_chlen;
    uint64_t last_offset;

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
    b->host = dup_or_null(cfg->redis_host);
    b->password = dup_or_null(cfg->redis_password);
    b->script = dup_or_null(cfg->redis_script);
    b->prefix = dup_or_null(cfg->redis_prefix);
    b->port = cfg->redis_port;
    b->db = cfg->redis_db;
    b->history_size = cfg->history_size > 0 ? cfg->history_size : 0;
    b->history_ttl = cfg->history_ttl;
    b->wake[0] = b->wake[1] = -1;
    pthread_mutex_init(&b->lock, NULL);
    if (!b->host || !b->script || !b->prefix || (cfg->redis_password && !b->password) ||
        pipe2(b->wake, O_CLOEXEC | O_NONBLOCK)) {
        bs_backplane_free(b);
        return NULL;
    }
    return b;
}

/* ---- connections ------------------------------------------------------------ */

static redisContext *connect_redis(bs_backplane_t *b, int timeout_ms, char *why, size_t whylen)
{
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
    redisContext *c = redisConnectWithTimeout(b->host, b->port, tv);
    redisReply *r;

    if (!c || c->err) {
        snprintf(why, whylen, "%s", c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisEnableKeepAlive(c);
    if (b->password) {
        r = redisCommand(c, "AUTH %s", b->password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "AUTH failed: %s", r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (b->db) {
        r = redisCommand(c, "SELECT %d", b->db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "SELECT %d failed: %s", b->db, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    return c;
fail:
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return NULL;
}

static void disconnect(bs_backplane_t *b)
{
    if (b->sub)
        redisFree(b->sub);
    if (b->cmd)
        redisFree(b->cmd);
    b->sub = b->cmd = NULL;
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

/* A new `sub` holds no subscription: everything wanted is to be asked
 * for again (sync_interest does it). */
static void resubscribe_all(bs_backplane_t *b)
{
    uint32_t i;

    pthread_mutex_lock(&b->lock);
    for (i = 0; i < b->interests.size; i++)
        for (bs_hnode_t *n = b->interests.buckets[i]; n; n = n->next) {
            interest_t *x = (interest_t *)n;

            x->active = 0;
            mark_dirty(b, x);
        }
    pthread_mutex_unlock(&b->lock);
    b->last_chlen = 0;
}

/* Both connections and the script loaded; subscriptions follow (sync_interest). */
static int connect_both(bs_backplane_t *b, char *why, size_t whylen)
{
    struct timeval none = { 0, 0 };
    redisReply *r;

    if (!(b->cmd = connect_redis(b, 2000, why, whylen)) ||
        !(b->sub = connect_redis(b, 2000, why, whylen)))
        goto fail;
    r = redisCommand(b->cmd, "SCRIPT LOAD %s", b->script);
    if (!r || r->type != REDIS_REPLY_STRING || r->len != 40) {
        snprintf(why, whylen, "SCRIPT LOAD failed: %s", r && r->str ? r->str : b->cmd->errstr);
        if (r)
            freeReplyObject(r);
        goto fail;
    }
    memcpy(b->sha, r->str, 40);
    b->sha[40] = '\0';
    freeReplyObject(r);
    /* The history settings, for publish.lua: every publisher, Ruby's too,
     * trims the history the way the servers keep it. */
    r = redisCommand(b->cmd, "HSET %ssettings history_size %d history_ttl %d", b->prefix, b->history_size,
                     b->history_ttl);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(why, whylen, "HSET settings failed: %s", r && r->str ? r->str : b->cmd->errstr);
        if (r)
            freeReplyObject(r);
        goto fail;
    }
    freeReplyObject(r);
    /* From here `sub` is read only when poll() says so. */
    redisSetTimeout(b->sub, none);
    resubscribe_all(b);
    return 0;
fail:
    disconnect(b);
    return -1;
}

/* ---- the backplane thread ------------------------------------------------------- */

static int run_loads(bs_backplane_t *b);

/* "<channel>\n<offset>\n<epoch>\n<frame>", as publish.lua sends it. */
static void handle_message(bs_backplane_t *b, const char *p, size_t len)
{
    const char *end = p + len, *ch = p, *nl1, *nl2, *nl3;
    unsigned long long offset;
    char *stop;

    if (!(nl1 = memchr(ch, '\n', len)) || !(nl2 = memchr(nl1 + 1, '\n', (size_t)(end - nl1 - 1))) ||
        !(nl3 = memchr(nl2 + 1, '\n', (size_t)(end - nl2 - 1))))
        return;
    offset = strtoull(nl1 + 1, &stop, 10);
    if (stop != nl2 || nl3 - nl2 - 1 > BS_EPOCH_LEN * 2 || (size_t)(nl1 - ch) > BS_CHANNEL_MAX)
        return;
    /* One publish reaches a node once per subscription that matches it, one
     * right after another: keep the first. */
    if (b->last_chlen == (size_t)(nl1 - ch) && b->last_offset == offset &&
        memcmp(b->last_channel, ch, b->last_chlen) == 0)
        return;
    b->last_chlen = (size_t)(nl1 - ch);
    memcpy(b->last_channel, ch, b->last_chlen);
    b->last_offset = offset;
    __atomic_fetch_add(&b->received, 1, __ATOMIC_RELAXED);
    b->sink.message(b->sink.ctx, ch, (size_t)(nl1 - ch), offset, nl2 + 1, (size_t)(nl3 - nl2 - 1),
                    nl3 + 1, (size_t)(end - nl3 - 1));
}

/* A reply read on `sub`: a message is handed up; 1 when it confirms a
 * subscribe or unsubscribe, else 0. */
static int sub_reply(bs_backplane_t *b, redisReply *r)
{
    const char *kind;

    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->element[0]->type != REDIS_REPLY_STRING)
        return 0;
    kind = r->element[0]->str;
    if (strcmp(kind, "message") == 0 && r->element[2]->type == REDIS_REPLY_STRING) {
        handle_message(b, r->element[2]->str, r->element[2]->len);
        return 0;
    }
    return strcmp(kind, "subscribe") == 0 || strcmp(kind, "unsubscribe") == 0;
}

static int read_sub(bs_backplane_t *b)
{
    void *reply;

    if (redisBufferRead(b->sub) != REDIS_OK)
        return -1;
    for (;;) {
        redisReply *r;

        if (redisGetReplyFromReader(b->sub, &reply) != REDIS_OK)
            return -1;
        if (!(r = reply))
            return 0;
        sub_reply(b, r);
        freeReplyObject(r);
    }
}

/* Appends the EVALSHA of publish.lua for one publish to `cmd`, with the
 * names rnames.c gives. 0, or -1 when memory runs out. */
static int append_publish(bs_backplane_t *b, const bs_item_t *o, const char *size, const char *ttl)
{
    bs_buf_t names[6];
    const char *argv[16];
    size_t lens[16], n = 0;
    int rc = 0;

    for (int k = 0; k < 6; k++)
        bs_buf_init(&names[k]);
    for (int k = BS_RKIND_SETTINGS; k <= BS_RKIND_EVENTS && !rc; k++)
        rc = bs_rnames_name(&names[k], b->prefix, BS_RNO_PARTITION, k, o->channel, o->chlen);
    rc = rc || bs_rnames_name(&names[5], b->prefix, BS_RNO_PARTITION, BS_RKIND_PUBSUB, "", 0);
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
        ARG("PUBLISH", 7);
#undef ARG
        rc = redisAppendCommandArgv(b->cmd, (int)n, argv, lens) != REDIS_OK;
    }
    for (int k = 0; k < 6; k++)
        bs_buf_free(&names[k]);
    return rc ? -1 : 0;
}

/* Sends what is queued, PIPELINE at a time; an item leaves the queue only
 * once Redis has answered for it. Returns -1 when the connection failed. */
static int flush_out(bs_backplane_t *b)
{
    for (;;) {
        bs_item_t *batch[PIPELINE];
        size_t n = 0, i;
        char size[16], ttl[16];

        pthread_mutex_lock(&b->lock);
        for (bs_item_t *o = b->head; o && n < PIPELINE; o = o->next)
            batch[n++] = o;
        pthread_mutex_unlock(&b->lock);
        if (!n)
            return 0;
        snprintf(size, sizeof(size), "%d", b->history_size);
        snprintf(ttl, sizeof(ttl), "%d", b->history_ttl);
        for (i = 0; i < n; i++)
            if (append_publish(b, batch[i], size, ttl))
                return -1;
        for (i = 0; i < n; i++) {
            void *reply;
            redisReply *r;

            if (redisGetReply(b->cmd, &reply) != REDIS_OK)
                return -1;
            r = reply;
            if (r->type == REDIS_REPLY_ERROR)
                bs_log(b->log, 'E', "Redis refused a publish to %s: %s", batch[i]->channel, r->str);
            freeReplyObject(r);
        }
        pthread_mutex_lock(&b->lock);
        for (i = 0; i < n; i++) {
            bs_item_t *o = b->head;

            b->head = o->next;
            b->nout--;
            b->out_bytes -= o->len;
            free(o);
        }
        if (!b->head)
            b->tail = NULL;
        pthread_mutex_unlock(&b->lock);
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

/* The Redis channel publish.lua sends a Bayeux channel's or pattern's
 * messages on: "<prefix>ch:/a/b" for the channel /a/b, "<prefix>kids:/a"
 * for the pattern of one star below /a, "<prefix>tree:/a" for the pattern
 * of two stars below /a (exactly what each matches). */
static int redis_channel(bs_buf_t *out, const char *prefix, const char *name, size_t len)
{
    bs_buf_reset(out);
    bs_buf_append_str(out, prefix);
    if (len >= 3 && memcmp(name + len - 3, "/**", 3) == 0)
        return bs_buf_append(out, "tree:", 5) || bs_buf_append(out, name, len - 3);
    if (len >= 2 && memcmp(name + len - 2, "/*", 2) == 0)
        return bs_buf_append(out, "kids:", 5) || bs_buf_append(out, name, len - 2);
    return bs_buf_append(out, "ch:", 3) || bs_buf_append(out, name, len);
}

/* Subscribes and unsubscribes `sub` to match what the engine wants, and
 * waits (at most SUB_TIMEOUT_MS) until Redis confirmed it, handing up the
 * messages that arrive meanwhile. Returns -1 when the connection failed. */
static int sync_interest(bs_backplane_t *b)
{
    struct timeval wait = { SUB_TIMEOUT_MS / 1000, (SUB_TIMEOUT_MS % 1000) * 1000 }, none = { 0, 0 };
    interest_t **batch;
    size_t n = 0, i, sent = 0, confirmed = 0;
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

    bs_buf_init(&name);
    for (i = 0; i < n; i++) {
        interest_t *x = batch[i];

        if (x->want_now == x->active)
            continue;
        if (redis_channel(&name, b->prefix, x->name, x->len) ||
            redisAppendCommand(b->sub, "%s %b", x->want_now ? "SUBSCRIBE" : "UNSUBSCRIBE", name.ptr,
                               name.len) != REDIS_OK) {
            rc = -1;
            break;
        }
        sent++;
    }
    bs_buf_free(&name);
    redisSetTimeout(b->sub, wait);
    while (rc == 0 && confirmed < sent) {
        void *reply;

        if (redisGetReply(b->sub, &reply) != REDIS_OK) {
            rc = -1;
            break;
        }
        if (((redisReply *)reply)->type == REDIS_REPLY_ERROR) {
            /* An answer all the same (an ACL that forbids the channel, say). */
            bs_log(b->log, 'E', "Redis refused a subscription: %s", ((redisReply *)reply)->str);
            confirmed++;
        } else {
            confirmed += (size_t)sub_reply(b, reply);
        }
        freeReplyObject(reply);
    }
    redisSetTimeout(b->sub, none);

    pthread_mutex_lock(&b->lock);
    for (i = 0; i < n; i++) {
        interest_t *x = batch[i];

        if (rc == 0)
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

static void *backplane_main(void *arg)
{
    bs_backplane_t *b = arg;
    int backoff = 100, was_up = 0;
    char why[256];

    while (!stopping(b)) {
        if (!b->sub) {
            if (connect_both(b, why, sizeof(why))) {
                struct pollfd pfd = { .fd = b->wake[0], .events = POLLIN };

                bs_log(b->log, 'W', "Redis at %s:%d unreachable (%s); retrying in %d ms",
                       b->host, b->port, why, backoff);
                run_loads(b);               /* answered at once: nothing to load from */
                poll(&pfd, 1, backoff);
                drain_wake(b);
                backoff = backoff >= 5000 ? 5000 : backoff * 2;
                continue;
            }
            backoff = 100;
            __atomic_store_n(&b->up, 1, __ATOMIC_RELEASE);
            bs_log(b->log, 'I', "Redis backplane connected at %s:%d", b->host, b->port);
            /* Messages may have passed while we were away: every client
             * starts again and recovers from the history in Redis. */
            if (was_up)
                b->sink.resync(b->sink.ctx);
            was_up = 1;
        }
        if (flush_out(b)) {
            bs_log(b->log, 'W', "Redis connection lost while publishing; publishes are held until it is back");
            disconnect(b);
            continue;
        }
        if (sync_interest(b)) {
            bs_log(b->log, 'W', "Redis did not confirm a subscription; reconnecting");
            disconnect(b);
            continue;
        }
        if (run_loads(b)) {
            bs_log(b->log, 'W', "Redis connection lost while loading a history; reconnecting");
            disconnect(b);
            continue;
        }
        {
            struct pollfd pfd[2] = { { .fd = b->sub->fd, .events = POLLIN },
                                     { .fd = b->wake[0], .events = POLLIN } };

            if (poll(pfd, 2, 1000) < 0 && errno != EINTR) {
                disconnect(b);
                continue;
            }
            if (pfd[1].revents)
                drain_wake(b);
            if ((pfd[0].revents & (POLLIN | POLLERR | POLLHUP)) && read_sub(b)) {
                bs_log(b->log, 'W', "Redis subscription lost; reconnecting");
                disconnect(b);
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
    if (b->wake[0] >= 0)
        close(b->wake[0]);
    if (b->wake[1] >= 0)
        close(b->wake[1]);
    pthread_mutex_destroy(&b->lock);
    free(b->host);
    free(b->password);
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
     * know; extra: the event id publish.lua drops a second copy by. */
    bs_item_t *o = bs_item_new_extra(0, channel, chlen, head, hlen, event_id, idlen);
    int was_empty;

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

/* What Redis holds of one channel, read on `cmd`. 0, or -1 (the
 * connection may be gone then). */
static int load(bs_backplane_t *b, const char *name, size_t len, const char *epoch, bs_loaded_t *out)
{
    redisReply *r;
    size_t i;

    /* Agree on an epoch first: the proposed one, unless Redis has one. */
    r = redisCommand(b->cmd, "SET %sepoch:%b %s NX EX %d", b->prefix, name, len, epoch,
                     b->history_ttl > 86400 ? b->history_ttl : 86400);
    if (!r || r->type == REDIS_REPLY_ERROR)
        goto fail;
    freeReplyObject(r);
    r = redisCommand(b->cmd, "MGET %sepoch:%b %soffset:%b", b->prefix, name, len, b->prefix, name, len);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[0]->len > BS_EPOCH_LEN)
        goto fail;
    memcpy(out->epoch, r->element[0]->str, r->element[0]->len);
    out->epoch[r->element[0]->len] = '\0';
    out->offset = r->element[1]->type == REDIS_REPLY_STRING ? strtoull(r->element[1]->str, NULL, 10) : 0;
    freeReplyObject(r);
    if (b->history_size <= 0)
        return 0;
    r = redisCommand(b->cmd, "ZRANGE %shistory:%b 0 -1 WITHSCORES", b->prefix, name, len);
    if (!r || r->type != REDIS_REPLY_ARRAY)
        goto fail;
    for (i = 0; i + 1 < r->elements; i += 2) {
        redisReply *frame = r->element[i], *score = r->element[i + 1];

        if (frame->type == REDIS_REPLY_STRING &&
            bs_loaded_add(out, strtoull(score->str, NULL, 10), frame->str, frame->len)) {
            freeReplyObject(r);
            return -1;
        }
    }
    freeReplyObject(r);
    return 0;
fail:
    bs_log(b->log, 'W', "could not load the history of %.*s from Redis: %s", (int)len, name,
           r && r->type == REDIS_REPLY_ERROR ? r->str : b->cmd->errstr);
    if (r)
        freeReplyObject(r);
    return -1;
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
    if (o && b->sub && sync_interest(b))
        rc = -1;
    for (; o; o = next) {
        bs_loaded_t *l = calloc(1, sizeof(*l));

        next = o->next;
        if (l && (rc || !b->cmd || o->kind == LOAD_BARRIER || load(b, o->channel, o->chlen, o->epoch, l))) {
            if (b->cmd && b->cmd->err)
                rc = -1;
            bs_loaded_free(l);
            free(l);
            l = NULL;
        }
        b->sink.loaded(b->sink.ctx, o->channel, o->chlen, l);
        free(o);
    }
    return rc;
}

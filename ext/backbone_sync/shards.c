/*
 * shards.c: the backplane's connections to Redis (see shards.h).
 *
 * A single Redis is one shard. On a Redis Cluster (a node that says
 * cluster_enabled:1), the shards are the primaries CLUSTER SLOTS names for
 * the slots of the BS_RPARTITIONS partition tags (rnames.c): everything of
 * a channel lives in its partition's slot, so each partition has exactly
 * one primary. When the cluster changes (a failover, a slot moved), the
 * caller sees a MOVED, an unsubscribe it did not ask for, or a lost
 * connection, and bs_shards_repair reads the map again: the shards that
 * still hold their partitions keep their connections, so only the
 * partitions that moved or broke are lost. When even that fails, the caller
 * drops everything and connects anew, from the seeds and then from the
 * primaries it last knew.
 *
 * Layer: backplane. Thread: the backplane thread only; every call blocks
 * for at most the connection timeout.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "shards.h"

#define TIMEOUT_MS 2000
/* The most elements one reply may announce. hiredis 0.14 callocs what a
 * multi-bulk header announces before any element arrived, and frees by
 * walking that many: "*2147483647" alone would cost 16 GiB of address
 * space and seconds of the thread's time on each connection. The largest
 * reply asked for is a ZRANGE of a history (two per message, history_size
 * is at most 100,000) or CLUSTER SLOTS (a range per slot at most). */
#define MAX_ELEMENTS (1 << 20)

static redisReplyObjectFunctions bounded_fns;
static redisReplyObjectFunctions *hiredis_fns;
static pthread_once_t bounded_once = PTHREAD_ONCE_INIT;
static redisReplyObjectFunctions *first_fns;

static void *bounded_array(const redisReadTask *task, int elements)
{
    /* NULL: the reader fails with "Out of memory", and the connection with it */
    return elements < 0 || elements > MAX_ELEMENTS ? NULL : hiredis_fns->createArray(task, elements);
}

static void bounded_init(void)
{
    hiredis_fns = __atomic_load_n(&first_fns, __ATOMIC_ACQUIRE);
    bounded_fns = *hiredis_fns;
    bounded_fns.createArray = bounded_array;
}

static void bound_replies(redisContext *c)
{
    /* every context starts with hiredis's one table: the same pointer,
     * whichever backplane thread (one a server) writes it */
    __atomic_store_n(&first_fns, c->reader->fn, __ATOMIC_RELEASE);
    pthread_once(&bounded_once, bounded_init);
    c->reader->fn = &bounded_fns;
}

_Static_assert(BS_RPARTITIONS <= 64, "bs_shards_repair reports lost partitions as bits of a uint64_t");

static int parse_node(const char *p, size_t len, char *host, size_t hostlen, int *port)
{
    const char *colon = NULL;
    char *end;
    long v;

    for (size_t i = 0; i < len; i++)
        if (p[i] == ':')
            colon = p + i;
    if (!colon || colon == p || (size_t)(colon - p) >= hostlen)
        return -1;
    v = strtol(colon + 1, &end, 10);
    if (end != p + len || v <= 0 || v > 65535)
        return -1;
    /* [::1]:6379 names an IPv6 address */
    if (*p == '[' && colon[-1] == ']')
        snprintf(host, hostlen, "%.*s", (int)(colon - p - 2), p + 1);
    else
        snprintf(host, hostlen, "%.*s", (int)(colon - p), p);
    *port = (int)v;
    return 0;
}

/* Frees a connection opened by open_one. */
static void close_one(bs_shards_t *s, redisContext *c)
{
    pthread_mutex_lock(&s->io_lock);
    for (size_t i = 0; i < s->nlive; i++)
        if (s->live[i] == c) {
            s->live[i] = s->live[--s->nlive];
            break;
        }
    redisFree(c);
    pthread_mutex_unlock(&s->io_lock);
}

void bs_shards_halt(bs_shards_t *s)
{
    pthread_mutex_lock(&s->io_lock);
    s->halted = 1;
    for (size_t i = 0; i < s->nlive; i++)
        shutdown(s->live[i]->fd, SHUT_RDWR);
    pthread_mutex_unlock(&s->io_lock);
}

int bs_shards_init(bs_shards_t *s, const char *nodes, const char *password, int db)
{
    const char *p = nodes;

    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->io_lock, NULL);
    s->db = db;
    if (password && !(s->password = strdup(password)))
        return -1;
    while (p && *p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char host[64];
        int port;
        char **hosts;
        int *ports;

        if (parse_node(p, len, host, sizeof(host), &port) ||
            !(hosts = realloc(s->seed_host, sizeof(*hosts) * (s->nseeds + 1))))
            goto fail;
        s->seed_host = hosts;
        if (!(ports = realloc(s->seed_port, sizeof(*ports) * (s->nseeds + 1))))
            goto fail;
        s->seed_port = ports;
        if (!(s->seed_host[s->nseeds] = strdup(host)))
            goto fail;
        s->seed_port[s->nseeds++] = port;
        p = comma ? comma + 1 : NULL;
    }
    if (s->nseeds)
        return 0;
fail:
    bs_shards_destroy(s);
    return -1;
}

void bs_shards_destroy(bs_shards_t *s)
{
    bs_shards_disconnect(s);
    for (size_t i = 0; i < s->nseeds; i++)
        free(s->seed_host[i]);
    free(s->seed_host);
    free(s->seed_port);
    free(s->password);
    free(s->live);
    pthread_mutex_destroy(&s->io_lock);
    memset(s, 0, sizeof(*s));
}

const char *bs_shards_name(const bs_shards_t *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s:%d%s", s->nseeds ? s->seed_host[0] : "?", s->nseeds ? s->seed_port[0] : 0,
             s->nseeds > 1 ? " (and other seeds)" : "");
    return buf;
}

/* A connection, authenticated and on the right database. */
static redisContext *open_one(bs_shards_t *s, const char *host, int port, char *why, size_t whylen)
{
    struct timeval tv = { .tv_sec = TIMEOUT_MS / 1000, .tv_usec = (TIMEOUT_MS % 1000) * 1000 };
    redisContext *c = redisConnectWithTimeout(host, port, tv);
    redisReply *r = NULL;
    redisContext **grown;

    if (!c || c->err) {
        snprintf(why, whylen, "%s:%d: %s", host, port, c ? c->errstr : "out of memory");
        if (c)
            redisFree(c);
        return NULL;
    }
    pthread_mutex_lock(&s->io_lock);
    if (!s->halted && s->nlive == s->live_cap) {
        if ((grown = realloc(s->live, sizeof(*grown) * (s->live_cap * 2 + 8)))) {
            s->live = grown;
            s->live_cap = s->live_cap * 2 + 8;
        }
    }
    if (s->halted || s->nlive == s->live_cap) {
        snprintf(why, whylen, "%s", s->halted ? "stopping" : "out of memory");
        redisFree(c);
        pthread_mutex_unlock(&s->io_lock);
        return NULL;
    }
    s->live[s->nlive++] = c;
    pthread_mutex_unlock(&s->io_lock);
    redisSetTimeout(c, tv);
    redisEnableKeepAlive(c);
    bound_replies(c);
    if (s->password) {
        r = redisCommand(c, "AUTH %s", s->password);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "%s:%d: AUTH failed: %s", host, port, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    if (s->db) {
        r = redisCommand(c, "SELECT %d", s->db);
        if (!r || r->type == REDIS_REPLY_ERROR) {
            snprintf(why, whylen, "%s:%d: SELECT %d failed: %s", host, port, s->db, r ? r->str : c->errstr);
            goto fail;
        }
        freeReplyObject(r);
    }
    return c;
fail:
    if (r)
        freeReplyObject(r);
    close_one(s, c);
    return NULL;
}

static int add_shard(bs_shards_t *s, const char *host, size_t hostlen, int port)
{
    bs_shard_t *grown;

    for (size_t i = 0; i < s->n; i++)
        if (s->shard[i].port == port && strlen(s->shard[i].host) == hostlen &&
            memcmp(s->shard[i].host, host, hostlen) == 0)
            return (int)i;
    if (s->n >= BS_MAX_SHARDS || hostlen >= sizeof(s->shard[0].host) ||
        !(grown = realloc(s->shard, sizeof(*grown) * (s->n + 1))))
        return -1;
    s->shard = grown;
    memset(&s->shard[s->n], 0, sizeof(s->shard[0]));
    memcpy(s->shard[s->n].host, host, hostlen);
    s->shard[s->n].host[hostlen] = '\0';
    s->shard[s->n].port = port;
    return (int)s->n++;
}

static bs_shard_t *find_shard(bs_shards_t *s, const char *host, int port)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->shard[i].port == port && strcmp(s->shard[i].host, host) == 0)
            return &s->shard[i];
    return NULL;
}

static void close_shard(bs_shards_t *s, bs_shard_t *sh)
{
    if (sh->cmd)
        close_one(s, sh->cmd);
    if (sh->sub)
        close_one(s, sh->sub);
    sh->cmd = sh->sub = NULL;
}

static void remember(bs_shards_t *s)
{
    for (s->nknown = 0; s->nknown < s->n && s->nknown < sizeof(s->known) / sizeof(s->known[0]); s->nknown++) {
        memcpy(s->known[s->nknown].host, s->shard[s->nknown].host, sizeof(s->known[0].host));
        s->known[s->nknown].port = s->shard[s->nknown].port;
    }
}

/* The primaries of the partitions, from CLUSTER SLOTS on c. */
static int read_map(bs_shards_t *s, redisContext *c, char *why, size_t whylen)
{
    redisReply *r = redisCommand(c, "CLUSTER SLOTS");
    const char *bad = NULL;
    int rc = 0;

    if (!r || r->type != REDIS_REPLY_ARRAY) {
        snprintf(why, whylen, "CLUSTER SLOTS failed: %s", r && r->str ? r->str : c->errstr);
        rc = -1;
        goto out;
    }
    for (int p = 0; p < BS_RPARTITIONS && rc == 0; p++) {
        char tag[16];
        int len = snprintf(tag, sizeof(tag), "{%d}", p);
        unsigned slot = bs_rnames_slot(tag, (size_t)len);

        s->part[p] = -1;
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *range = r->element[i], *primary;

            if (range->type != REDIS_REPLY_ARRAY || range->elements < 3 ||
                range->element[0]->type != REDIS_REPLY_INTEGER || range->element[1]->type != REDIS_REPLY_INTEGER ||
                slot < (unsigned long long)range->element[0]->integer ||
                slot > (unsigned long long)range->element[1]->integer)
                continue;
            primary = range->element[2];
            if (primary->type != REDIS_REPLY_ARRAY || primary->elements < 2 ||
                primary->element[0]->type != REDIS_REPLY_STRING || primary->element[1]->type != REDIS_REPLY_INTEGER) {
                bad = "a primary that is not [host, port]";
                continue;
            }
            /* A port out of range would be cut to 16 bits by the resolver
             * (70000 is 4464), a host with a NUL cut at it. */
            if (primary->element[1]->integer < 1 || primary->element[1]->integer > 65535) {
                bad = "a primary with a port out of 1..65535";
                continue;
            }
            if (primary->element[0]->len >= sizeof(s->shard[0].host) ||
                memchr(primary->element[0]->str, '\0', primary->element[0]->len)) {
                bad = "a primary whose host is too long or holds a NUL";
                continue;
            }
            /* An empty address means "the node you asked". */
            if (primary->element[0]->len == 0)
                s->part[p] = add_shard(s, c->tcp.host, strlen(c->tcp.host), (int)primary->element[1]->integer);
            else
                s->part[p] = add_shard(s, primary->element[0]->str, primary->element[0]->len,
                                       (int)primary->element[1]->integer);
            break;
        }
        if (s->part[p] < 0 && bad) {
            snprintf(why, whylen, "CLUSTER SLOTS names %s for slot %u", bad, slot);
            rc = -1;
        } else if (s->part[p] < 0) {
            snprintf(why, whylen, "no primary serves slot %u of the Redis Cluster (CLUSTERDOWN?), or more "
                     "than %d primaries", slot, BS_MAX_SHARDS);
            rc = -1;
        }
    }
out:
    if (r)
        freeReplyObject(r);
    return rc;
}

/* Is c a node of a Redis Cluster? 1, 0, or -1 when it did not say. */
static int is_cluster(redisContext *c, char *why, size_t whylen)
{
    /* The default sections: "server" has the version, "cluster" the mode. */
    redisReply *r = redisCommand(c, "INFO");
    const char *version;
    int rc;

    if (!r || r->type != REDIS_REPLY_STRING) {
        snprintf(why, whylen, "INFO failed: %s", r && r->str ? r->str : c->errstr);
        rc = -1;
    } else if (!strstr(r->str, "cluster_enabled:1")) {
        rc = 0;
    } else if ((version = strstr(r->str, "redis_version:")) && atoi(version + 14) < 7) {
        /* SSUBSCRIBE and SPUBLISH came with 7.0; an older cluster would
         * refuse every subscription. */
        snprintf(why, whylen, "a Redis Cluster needs Redis 7 or later (sharded pub/sub), and %s:%d runs %.*s",
                 c->tcp.host, c->tcp.port, (int)strcspn(version + 14, "\r\n"), version + 14);
        rc = -1;
    } else {
        rc = 1;
    }
    if (r)
        freeReplyObject(r);
    return rc;
}

int bs_shards_connect(bs_shards_t *s, char *why, size_t whylen)
{
    int found = 0;

    bs_shards_disconnect(s);
    snprintf(why, whylen, "no seed node given");
    /* The seeds first, then the primaries the last map named: the seeds
     * given may be the nodes that died. */
    for (size_t i = 0; i < s->nseeds + s->nknown && !found; i++) {
        const char *host = i < s->nseeds ? s->seed_host[i] : s->known[i - s->nseeds].host;
        int port = i < s->nseeds ? s->seed_port[i] : s->known[i - s->nseeds].port;
        redisContext *c = open_one(s, host, port, why, whylen);
        int cluster = c ? is_cluster(c, why, whylen) : -1;

        if (cluster == 0) {
            /* A single Redis: this node is the one shard, c its cmd. */
            if (add_shard(s, host, strlen(host), port) < 0) {
                snprintf(why, whylen, "out of memory");
                close_one(s, c);
                break;
            }
            s->shard[0].cmd = c;
            s->cluster = 0;
            found = 1;
            continue;
        }
        if (cluster == 1 && s->db) {
            snprintf(why, whylen, "a Redis Cluster has only database 0, and %d was asked for", s->db);
            close_one(s, c);
            break;
        }
        if (cluster == 1 && read_map(s, c, why, whylen) == 0) {
            s->cluster = 1;
            found = 1;
        }
        s->n = found ? s->n : 0;
        if (c)
            close_one(s, c);
    }
    if (!found)
        goto fail;
    for (size_t i = 0; i < s->n; i++) {
        bs_shard_t *sh = &s->shard[i];

        if ((!sh->cmd && !(sh->cmd = open_one(s, sh->host, sh->port, why, whylen))) ||
            !(sh->sub = open_one(s, sh->host, sh->port, why, whylen)))
            goto fail;
    }
    if (s->cluster)
        remember(s);
    return 0;
fail:
    bs_shards_disconnect(s);
    return -1;
}

void bs_shards_disconnect(bs_shards_t *s)
{
    for (size_t i = 0; i < s->n; i++)
        close_shard(s, &s->shard[i]);
    free(s->shard);
    s->shard = NULL;
    s->n = 0;
    s->cluster = 0;
}

int bs_shards_partition(const bs_shards_t *s, const char *channel, size_t len)
{
    return s->cluster ? bs_rnames_partition(channel, len) : BS_RNO_PARTITION;
}

bs_shard_t *bs_shards_of(bs_shards_t *s, int partition)
{
    return partition == BS_RNO_PARTITION ? &s->shard[0] : &s->shard[s->part[partition]];
}

int bs_shards_moved(const redisReply *r)
{
    static const char *const kinds[] = { "MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN", "READONLY",
                                         "LOADING", "NOSCRIPT" };

    if (r->type != REDIS_REPLY_ERROR || !r->str)
        return 0;
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
        if (strncmp(r->str, kinds[i], strlen(kinds[i])) == 0)
            return 1;
    return 0;
}

int bs_shards_repair(bs_shards_t *s, uint64_t *lost, char *why, size_t whylen)
{
    bs_shards_t fresh;
    int found = 0;

    if (!s->cluster || !s->n)
        return -1;
    memset(&fresh, 0, sizeof(fresh));
    snprintf(why, whylen, "no node gave the map");
    /* The map, from a shard that still answers, else a seed or a known node. */
    for (size_t i = 0; i < s->n && !found; i++)
        if (!s->shard[i].broken && s->shard[i].cmd && !s->shard[i].cmd->err) {
            found = read_map(&fresh, s->shard[i].cmd, why, whylen) == 0;
            fresh.n = found ? fresh.n : 0;
        }
    for (size_t i = 0; i < s->nseeds + s->nknown && !found; i++) {
        const char *host = i < s->nseeds ? s->seed_host[i] : s->known[i - s->nseeds].host;
        int port = i < s->nseeds ? s->seed_port[i] : s->known[i - s->nseeds].port;
        redisContext *c = open_one(s, host, port, why, whylen);

        if (c) {
            found = read_map(&fresh, c, why, whylen) == 0;
            fresh.n = found ? fresh.n : 0;
            close_one(s, c);
        }
    }
    if (!found)
        goto fail;
    /* First what is new: until every connection is made, the old shards
     * stay as they were. Then the kept ones move over. */
    for (size_t i = 0; i < fresh.n; i++) {
        bs_shard_t *f = &fresh.shard[i], *o = find_shard(s, f->host, f->port);

        if (o && !o->broken && o->cmd && !o->cmd->err && o->sub && !o->sub->err)
            continue;
        if (!(f->cmd = open_one(s, f->host, f->port, why, whylen)) ||
            !(f->sub = open_one(s, f->host, f->port, why, whylen)))
            goto fail;
    }
    for (size_t i = 0; i < fresh.n; i++) {
        bs_shard_t *f = &fresh.shard[i], *o = find_shard(s, f->host, f->port);

        if (f->cmd)
            continue;
        *f = *o;                            /* its connections, and what it last handed up */
        o->cmd = o->sub = NULL;
        f->awaited = 0;
    }
    *lost = 0;
    for (int p = 0; p < BS_RPARTITIONS; p++) {
        const bs_shard_t *o = &s->shard[s->part[p]], *f = &fresh.shard[fresh.part[p]];

        if (o->broken || o->port != f->port || strcmp(o->host, f->host) != 0)
            *lost |= (uint64_t)1 << p;
    }
    for (size_t i = 0; i < s->n; i++)
        close_shard(s, &s->shard[i]);
    free(s->shard);
    s->shard = fresh.shard;
    s->n = fresh.n;
    memcpy(s->part, fresh.part, sizeof(s->part));
    remember(s);
    return 0;
fail:
    for (size_t i = 0; i < fresh.n; i++)
        close_shard(s, &fresh.shard[i]);
    free(fresh.shard);
    return -1;
}

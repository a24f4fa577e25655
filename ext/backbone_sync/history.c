/*
 * history.c: per-channel offsets, epochs and a bounded history of recent
 * messages, so a client that comes back can be given exactly what it missed.
 * Layer: history. Thread: the service thread.
 *
 * A channel gets a history at its first publish, or at its first subscribe
 * (the reply names the epoch and offset its messages will carry). Its epoch
 * is random and fixed for the life of the history; each publish increments
 * its 64-bit offset. The last history_size frames are kept, none older than
 * history_ttl seconds.
 *
 * history_memory bounds everything the histories hold together: the frames,
 * the rings, the structs with their names, and their table slots. Past it,
 * the channels published to least recently give up their oldest entries
 * first; one left empty is forgotten when nobody subscribes to it, else it
 * keeps only its struct (its subscribers hold that much anyway). A history
 * that was never published to goes with its last subscriber; one that is
 * empty, idle and unsubscribed goes at the sweep. A client that asks for a
 * forgotten history later meets a new epoch and refetches.
 */
#include <stdlib.h>
#include <string.h>

#include "history.h"

#define RING_FIRST 4                        /* entries a ring starts with; it doubles up to history_size */

static bs_entry_t *entry_at(const bs_history_t *h, uint32_t i)
{
    return &h->ring[(h->head + i) % h->cap];
}

/* What a history's struct, name and table slot cost: counted against
 * history_memory while nobody subscribes to the channel. A subscribed
 * channel's is not: its subscribers hold it (bounded by max_channels), and
 * counting it would let subscriptions evict every channel's messages. */
static size_t base_cost(const bs_history_t *h)
{
    return h->pinned ? 0 : sizeof(*h) + h->name_len + 1 + sizeof(bs_hnode_t *);
}

/* What its ring costs: always counted. */
static size_t ring_cost(const bs_history_t *h)
{
    return (size_t)h->cap * sizeof(bs_entry_t);
}

static void count(bs_histories_t *hs, bs_history_t *h, size_t add, size_t sub)
{
    h->bytes = h->bytes + add - sub;
    hs->bytes = hs->bytes + add - sub;
    hs->freed += sub;
    BS_STAT_SET(hs->stats, history_bytes, hs->bytes);
}

bs_history_t *bs_history_find(const bs_histories_t *hs, const char *name, size_t len)
{
    uint32_t hv = bs_hash(name, len);
    bs_hnode_t *n;

    for (n = bs_table_chain(&hs->table, hv); n; n = n->next) {
        bs_history_t *h = (bs_history_t *)n;

        if (n->hash == hv && h->name_len == len && memcmp(h->name, name, len) == 0)
            return h;
    }
    return NULL;
}

#define LRU_OLDEST(hs) ((hs)->lru.tail ? BS_CONTAINER((hs)->lru.tail, bs_history_t, lru) : NULL)

bs_history_t *bs_history_get(bs_histories_t *hs, const char *name, size_t len)
{
    bs_history_t *h = bs_history_find(hs, name, len);

    if (h)
        return h;
    if (!(h = calloc(1, sizeof(*h) + len + 1)))
        return NULL;
    h->node.hash = bs_hash(name, len);
    if (bs_random_id(h->epoch, BS_EPOCH_LEN) || bs_table_insert(&hs->table, &h->node)) {
        free(h);
        return NULL;
    }
    h->name = (char *)(h + 1);
    memcpy(h->name, name, len);
    h->name[len] = '\0';
    h->name_len = len;
    h->last_used = bs_now_ms();
    h->pinned = hs->subscribed(hs->ctx, name, len);
    count(hs, h, base_cost(h), 0);
    bs_dlist_push_front(&hs->lru, &h->lru);
    BS_STAT_ADD(hs->stats, history_channels, 1);
    return h;
}

/* An entry's frame, and its event id with what malloc adds to it. */
static size_t entry_cost(const bs_entry_t *x)
{
    return bs_frame_cost(x->frame) + (x->event_id ? strlen(x->event_id) + 1 + 2 * sizeof(void *) : 0);
}

static void drop_oldest(bs_histories_t *hs, bs_history_t *h)
{
    bs_entry_t *x = entry_at(h, 0);

    count(hs, h, 0, entry_cost(x));
    bs_frame_unref(x->frame);
    free(x->event_id);
    h->head = (h->head + 1) % h->cap;
    h->len--;
}

/* Gives the ring back; only an empty one. */
static void free_ring(bs_histories_t *hs, bs_history_t *h)
{
    size_t before = ring_cost(h);

    free(h->ring);
    h->ring = NULL;
    h->cap = h->head = 0;
    count(hs, h, 0, before);
}

static void destroy(bs_histories_t *hs, bs_history_t *h)
{
    while (h->len)
        drop_oldest(hs, h);
    count(hs, h, 0, base_cost(h) + ring_cost(h));
    bs_table_remove(&hs->table, &h->node);
    bs_dlist_remove(&hs->lru, &h->lru);
    free(h->ring);
    free(h);
    BS_STAT_SUB(hs->stats, history_channels, 1);
}

/* Room for one more entry: the ring doubles, up to history_size. */
static int ring_room(bs_histories_t *hs, bs_history_t *h)
{
    uint32_t size = hs->size, cap, i;
    bs_entry_t *v;
    size_t before;

    if (h->len < h->cap)
        return 0;
    if (h->cap >= size) {
        drop_oldest(hs, h);
        return 0;
    }
    cap = h->cap ? h->cap * 2 : RING_FIRST;
    if (cap > size)
        cap = size;
    if (!(v = malloc(sizeof(*v) * cap)))
        return -1;
    for (i = 0; i < h->len; i++)
        v[i] = *entry_at(h, i);
    before = ring_cost(h);
    free(h->ring);
    h->ring = v;
    h->head = 0;
    h->cap = cap;
    count(hs, h, ring_cost(h), before);
    return 0;
}

/* Over history_memory: the least recently published give way, never `keep`. */
static void enforce_bound(bs_histories_t *hs, bs_history_t *keep)
{
    bs_history_t *old;

    while (hs->bytes > hs->memory && (old = LRU_OLDEST(hs)) && old != keep) {
        while (old->len && hs->bytes > hs->memory)
            drop_oldest(hs, old);
        if (old->len)
            break;                          /* under the bound again */
        if (!old->pinned) {
            destroy(hs, old);
        } else {
            free_ring(hs, old);
            bs_dlist_remove(&hs->lru, &old->lru);             /* its subscribers keep the struct */
        }
    }
}

int bs_history_append(bs_histories_t *hs, bs_history_t *h, bs_frame_t *f, const char *event_id,
                      size_t idlen)
{
    char *id = NULL;
    bs_entry_t *x;

    if (event_id && !(id = malloc(idlen + 1)))
        return -1;
    if (ring_room(hs, h)) {
        free(id);
        return -1;
    }
    if (id) {
        memcpy(id, event_id, idlen);
        id[idlen] = '\0';
    }
    x = entry_at(h, h->len);
    *x = (bs_entry_t){ .offset = h->offset, .at = bs_now_ms(), .frame = f, .event_id = id };
    h->len++;
    bs_frame_ref(f);
    count(hs, h, entry_cost(x), 0);
    h->last_used = bs_now_ms();
    bs_dlist_push_front(&hs->lru, &h->lru);
    enforce_bound(hs, h);
    return 0;
}

void bs_history_reset(bs_histories_t *hs, bs_history_t *h, const char *epoch, uint64_t offset)
{
    size_t n = strlen(epoch);

    while (h->len)
        drop_oldest(hs, h);
    if (n > BS_EPOCH_LEN)
        n = BS_EPOCH_LEN;
    memcpy(h->epoch, epoch, n);
    h->epoch[n] = '\0';
    h->offset = offset;
}

void bs_history_put(bs_histories_t *hs, bs_history_t *h, uint64_t offset, bs_frame_t *f)
{
    uint64_t last = h->len ? entry_at(h, h->len - 1)->offset : 0;
    uint64_t keep = h->offset;

    if (h->len && offset <= last)
        return;
    if (h->len && offset != last + 1) {
        /* The kept entries must be consecutive for replay to be exact. */
        while (h->len)
            drop_oldest(hs, h);
    }
    h->offset = offset;
    bs_history_append(hs, h, f, NULL, 0);
    if (keep > h->offset)
        h->offset = keep;
}

int bs_history_replay(const bs_history_t *h, uint64_t since, bs_replay_fn visit, void *ctx)
{
    uint32_t i;

    if (since > h->offset || since + 1 < bs_history_oldest(h))
        return -1;                          /* ahead of us, or older than what we keep */
    for (i = 0; i < h->len; i++) {
        bs_entry_t *x = entry_at(h, i);

        if (x->offset > since)
            visit(ctx, x->frame);
    }
    return 0;
}

uint64_t bs_history_seen(const bs_history_t *h, const char *event_id, size_t idlen)
{
    uint32_t i;

    /* At most history_size entries, newest first: a retry comes soon after. */
    for (i = h->len; i-- > 0;) {
        const bs_entry_t *x = entry_at(h, i);

        if (x->event_id && strncmp(x->event_id, event_id, idlen) == 0 && x->event_id[idlen] == '\0')
            return x->offset;
    }
    return 0;
}

uint64_t bs_history_oldest(const bs_history_t *h)
{
    return h->len ? entry_at(h, 0)->offset : h->offset + 1;
}

int bs_history_covers(const bs_history_t *h, const char *epoch, uint64_t since)
{
    return epoch && h->epoch[0] && strcmp(epoch, h->epoch) == 0 && since <= h->offset &&
           since + 1 >= bs_history_oldest(h);
}

void bs_history_pin(bs_histories_t *hs, const char *name, size_t len, int pinned)
{
    bs_history_t *h = bs_history_find(hs, name, len);

    if (!h || h->pinned == !!pinned)
        return;
    if (pinned) {
        count(hs, h, 0, base_cost(h));
        h->pinned = 1;
    } else {
        h->pinned = 0;
        count(hs, h, base_cost(h), 0);
        /* Never published to: it was there only to name the epoch. */
        if (!h->offset && !h->len && !h->loading)
            destroy(hs, h);
        else
            enforce_bound(hs, NULL);
    }
}

void bs_history_sweep(bs_histories_t *hs, int64_t now)
{
    uint32_t i;

    if (!hs->table.count || now - hs->last_sweep < 1000)
        return;
    hs->last_sweep = now;
    for (i = 0; i < hs->table.size; i++) {
        bs_hnode_t *n = hs->table.buckets[i], *next;

        for (; n; n = next) {
            bs_history_t *h = (bs_history_t *)n;

            next = n->next;
            while (h->len && now - entry_at(h, 0)->at > hs->ttl_ms)
                drop_oldest(hs, h);
            if (h->len || now - h->last_used <= hs->ttl_ms)
                continue;
            if (!h->pinned)
                destroy(hs, h);
            else if (h->ring)
                free_ring(hs, h);
        }
    }
}

void bs_histories_init(bs_histories_t *hs, const bs_server_config_t *cfg, bs_stats_t *stats,
                       bs_subscribed_fn subscribed, void *ctx)
{
    memset(hs, 0, sizeof(*hs));
    hs->size = cfg->history_size > 0 ? (uint32_t)cfg->history_size : 0;
    hs->ttl_ms = (int64_t)cfg->history_ttl * 1000;
    hs->memory = cfg->history_memory;
    hs->stats = stats;
    hs->subscribed = subscribed;
    hs->ctx = ctx;
}

void bs_histories_free(bs_histories_t *hs)
{
    uint32_t i;

    for (i = 0; i < hs->table.size; i++)
        while (hs->table.buckets[i])
            destroy(hs, (bs_history_t *)hs->table.buckets[i]);
    bs_table_free(&hs->table);
}

int bs_loaded_add(bs_loaded_t *l, uint64_t offset, const char *bytes, size_t len)
{
    bs_frame_t *f;

    if (l->n == l->cap) {
        uint32_t cap = l->cap ? l->cap * 2 : 16;
        struct bs_loaded_entry *v = realloc(l->v, sizeof(*v) * cap);

        if (!v)
            return -1;
        l->v = v;
        l->cap = cap;
    }
    if (!(f = bs_frame_new(len)))
        return -1;
    memcpy(BS_FRAME_DATA(f), bytes, len);
    l->v[l->n++] = (struct bs_loaded_entry){ .offset = offset, .frame = f };
    return 0;
}

void bs_loaded_free(bs_loaded_t *l)
{
    uint32_t i;

    for (i = 0; i < l->n; i++)
        bs_frame_unref(l->v[i].frame);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

void bs_history_load(bs_histories_t *hs, bs_history_t *h, const bs_loaded_t *l)
{
    bs_entry_t *newer = NULL;
    uint32_t i, n = 0;

    if (h->len && strcmp(h->epoch, l->epoch) == 0 && (newer = malloc(sizeof(*newer) * h->len))) {
        for (i = 0; i < h->len; i++) {
            bs_entry_t *x = entry_at(h, i);

            if (x->offset > l->offset) {
                bs_frame_ref(x->frame);
                newer[n] = *x;
                newer[n++].event_id = NULL;     /* freed with x by the reset */
            }
        }
    }
    bs_history_reset(hs, h, l->epoch, l->offset);
    for (i = 0; i < l->n; i++)
        if (l->v[i].offset <= h->offset)
            bs_history_put(hs, h, l->v[i].offset, l->v[i].frame);
    for (i = 0; i < n; i++) {
        bs_history_put(hs, h, newer[i].offset, newer[i].frame);
        bs_frame_unref(newer[i].frame);
    }
    free(newer);
}

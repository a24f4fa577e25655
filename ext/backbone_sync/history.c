/*
 * history.c: per-channel offsets, epochs and a bounded history of recent
 * messages, so a client that comes back can be given exactly what it missed.
 * Thread: the service thread only.
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

#include "core.h"

#define RING_FIRST 4                        /* entries a ring starts with; it doubles up to history_size */

static bs_entry_t *entry_at(const bs_history_t *h, uint32_t i)
{
    return &h->ring[(h->head + i) % h->cap];
}

/* What one kept frame costs: its allocation, shared or not. */
static size_t frame_cost(const bs_frame_t *f)
{
    return sizeof(*f) + BS_PRE + f->len;
}

/* What a history costs besides its frames. */
static size_t shell_cost(const bs_history_t *h)
{
    return sizeof(*h) + h->name_len + 1 + sizeof(bs_hnode_t *) + (size_t)h->cap * sizeof(bs_entry_t);
}

static void count(bs_engine_t *e, bs_history_t *h, size_t add, size_t sub)
{
    h->bytes = h->bytes + add - sub;
    e->hist_bytes = e->hist_bytes + add - sub;
    e->freed_bytes += sub;
    __atomic_store_n(&e->stats.history_bytes, (uint64_t)e->hist_bytes, __ATOMIC_RELAXED);
}

bs_history_t *bs_history_find(bs_engine_t *e, const char *name, size_t len)
{
    uint32_t hv = bs_hash(name, len);
    bs_hnode_t *n;

    for (n = bs_table_chain(&e->histories, hv); n; n = n->next) {
        bs_history_t *h = (bs_history_t *)n;

        if (n->hash == hv && h->name_len == len && memcmp(h->name, name, len) == 0)
            return h;
    }
    return NULL;
}

static void lru_unlink(bs_engine_t *e, bs_history_t *h)
{
    if (!h->in_lru)
        return;
    h->in_lru = 0;
    if (h->lru_prev)
        h->lru_prev->lru_next = h->lru_next;
    else
        e->lru_head = h->lru_next;
    if (h->lru_next)
        h->lru_next->lru_prev = h->lru_prev;
    else
        e->lru_tail = h->lru_prev;
    h->lru_prev = h->lru_next = NULL;
}

static void lru_front(bs_engine_t *e, bs_history_t *h)
{
    if (e->lru_head == h)
        return;
    lru_unlink(e, h);
    h->in_lru = 1;
    h->lru_next = e->lru_head;
    if (e->lru_head)
        e->lru_head->lru_prev = h;
    e->lru_head = h;
    if (!e->lru_tail)
        e->lru_tail = h;
}

bs_history_t *bs_history_get(bs_engine_t *e, const char *name, size_t len)
{
    bs_history_t *h = bs_history_find(e, name, len);

    if (h)
        return h;
    if (!(h = calloc(1, sizeof(*h) + len + 1)))
        return NULL;
    h->node.hash = bs_hash(name, len);
    if (bs_random_id(e, h->epoch, BS_EPOCH_LEN) || bs_table_insert(&e->histories, &h->node)) {
        free(h);
        return NULL;
    }
    h->name = (char *)(h + 1);
    memcpy(h->name, name, len);
    h->name[len] = '\0';
    h->name_len = len;
    h->last_used = bs_now_ms();
    count(e, h, shell_cost(h), 0);
    lru_front(e, h);
    BS_STAT_ADD(e, history_channels, 1);
    return h;
}

static void drop_oldest(bs_engine_t *e, bs_history_t *h)
{
    bs_entry_t *x = entry_at(h, 0);

    count(e, h, 0, frame_cost(x->frame));
    bs_frame_unref(x->frame);
    h->head = (h->head + 1) % h->cap;
    h->len--;
}

/* Gives the ring back; only an empty one. */
static void free_ring(bs_engine_t *e, bs_history_t *h)
{
    size_t before = shell_cost(h);

    free(h->ring);
    h->ring = NULL;
    h->cap = h->head = 0;
    count(e, h, shell_cost(h), before);
}

static void destroy(bs_engine_t *e, bs_history_t *h)
{
    while (h->len)
        drop_oldest(e, h);
    count(e, h, 0, shell_cost(h));
    bs_table_remove(&e->histories, &h->node);
    lru_unlink(e, h);
    free(h->ring);
    free(h);
    BS_STAT_SUB(e, history_channels, 1);
}

/* Room for one more entry: the ring doubles, up to history_size. */
static int ring_room(bs_engine_t *e, bs_history_t *h)
{
    uint32_t size = (uint32_t)e->cfg->history_size, cap, i;
    bs_entry_t *v;
    size_t before;

    if (h->len < h->cap)
        return 0;
    if (h->cap >= size) {
        drop_oldest(e, h);
        return 0;
    }
    cap = h->cap ? h->cap * 2 : RING_FIRST;
    if (cap > size)
        cap = size;
    if (!(v = malloc(sizeof(*v) * cap)))
        return -1;
    for (i = 0; i < h->len; i++)
        v[i] = *entry_at(h, i);
    before = shell_cost(h);
    free(h->ring);
    h->ring = v;
    h->head = 0;
    h->cap = cap;
    count(e, h, shell_cost(h), before);
    return 0;
}

/* Over history_memory: the least recently published give way, never `keep`. */
static void enforce_bound(bs_engine_t *e, bs_history_t *keep)
{
    while (e->hist_bytes > e->cfg->history_memory && e->lru_tail && e->lru_tail != keep) {
        bs_history_t *old = e->lru_tail;

        while (old->len && e->hist_bytes > e->cfg->history_memory)
            drop_oldest(e, old);
        if (old->len)
            break;                          /* under the bound again */
        if (!bs_channels_find(e, old->name, old->name_len)) {
            destroy(e, old);
        } else {
            free_ring(e, old);
            lru_unlink(e, old);             /* its subscribers keep the struct */
        }
    }
}

int bs_history_append(bs_engine_t *e, bs_history_t *h, bs_frame_t *f)
{
    if (ring_room(e, h))
        return -1;
    *entry_at(h, h->len) = (bs_entry_t){ .offset = h->offset, .at = bs_now_ms(), .frame = f };
    h->len++;
    bs_frame_ref(f);
    count(e, h, frame_cost(f), 0);
    h->last_used = bs_now_ms();
    lru_front(e, h);
    enforce_bound(e, h);
    return 0;
}

void bs_history_reset(bs_engine_t *e, bs_history_t *h, const char *epoch, uint64_t offset)
{
    size_t n = strlen(epoch);

    while (h->len)
        drop_oldest(e, h);
    if (n > BS_EPOCH_LEN)
        n = BS_EPOCH_LEN;
    memcpy(h->epoch, epoch, n);
    h->epoch[n] = '\0';
    h->offset = offset;
}

void bs_history_put(bs_engine_t *e, bs_history_t *h, uint64_t offset, bs_frame_t *f)
{
    uint64_t last = h->len ? entry_at(h, h->len - 1)->offset : 0;
    uint64_t keep = h->offset;

    if (h->len && offset <= last)
        return;
    if (h->len && offset != last + 1) {
        /* The kept entries must be consecutive for replay to be exact. */
        while (h->len)
            drop_oldest(e, h);
    }
    h->offset = offset;
    bs_history_append(e, h, f);
    if (keep > h->offset)
        h->offset = keep;
}

int bs_history_replay(bs_engine_t *e, bs_history_t *h, uint64_t since, bs_client_t *c)
{
    uint32_t i;
    uint64_t oldest = h->len ? entry_at(h, 0)->offset : h->offset + 1;

    if (since > h->offset || since + 1 < oldest)
        return -1;                          /* ahead of us, or older than what we keep */
    for (i = 0; i < h->len; i++) {
        bs_entry_t *x = entry_at(h, i);

        if (x->offset > since)
            bs_engine_deliver(e, c, x->frame);
    }
    return 0;
}

uint64_t bs_history_oldest(const bs_history_t *h)
{
    return h->len ? entry_at(h, 0)->offset : h->offset + 1;
}

void bs_history_release(bs_engine_t *e, const char *name, size_t len)
{
    bs_history_t *h = bs_history_find(e, name, len);

    if (h && !h->offset && !h->len)
        destroy(e, h);
}

void bs_history_sweep(bs_engine_t *e, int64_t now)
{
    int64_t ttl = (int64_t)e->cfg->history_ttl * 1000;
    uint32_t i;

    for (i = 0; i < e->histories.size; i++) {
        bs_hnode_t *n = e->histories.buckets[i], *next;

        for (; n; n = next) {
            bs_history_t *h = (bs_history_t *)n;

            next = n->next;
            while (h->len && now - entry_at(h, 0)->at > ttl)
                drop_oldest(e, h);
            if (h->len || now - h->last_used <= ttl)
                continue;
            if (!bs_channels_find(e, h->name, h->name_len))
                destroy(e, h);
            else if (h->ring)
                free_ring(e, h);
        }
    }
}

void bs_history_free_all(bs_engine_t *e)
{
    uint32_t i;

    for (i = 0; i < e->histories.size; i++)
        while (e->histories.buckets[i])
            destroy(e, (bs_history_t *)e->histories.buckets[i]);
    bs_table_free(&e->histories);
}

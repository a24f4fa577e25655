/*
 * registry.c: the two-way subscription registry and fan-out (see
 * registry.h). Layer: registry. Thread: the service thread.
 */
#include <stdlib.h>
#include <string.h>

#include "registry.h"

void bs_registry_init(bs_registry_t *r, bs_stats_t *stats, bs_presence_fn presence, void *ctx)
{
    memset(r, 0, sizeof(*r));
    r->stats = stats;
    r->presence = presence;
    r->ctx = ctx;
    bs_buf_init(&r->scratch);
}

bs_channel_t *bs_registry_find(const bs_registry_t *r, const char *name, size_t len)
{
    uint32_t h = bs_hash(name, len);
    bs_hnode_t *n;

    for (n = bs_table_chain(&r->channels, h); n; n = n->next) {
        bs_channel_t *c = (bs_channel_t *)n;

        if (n->hash == h && c->len == len && memcmp(c->name, name, len) == 0)
            return c;
    }
    return NULL;
}

static int is_pattern(const char *name, size_t len)
{
    return (len >= 2 && memcmp(name + len - 2, "/*", 2) == 0) ||
           (len >= 3 && memcmp(name + len - 3, "/**", 3) == 0);
}

static bs_channel_t *channel_create(bs_registry_t *r, const char *name, size_t len)
{
    bs_channel_t *c = calloc(1, sizeof(*c) + len + 1);

    if (!c)
        return NULL;
    c->name = (char *)(c + 1);
    memcpy(c->name, name, len);
    c->name[len] = '\0';
    c->len = len;
    c->node.hash = bs_hash(name, len);
    if (bs_table_insert(&r->channels, &c->node)) {
        free(c);
        return NULL;
    }
    c->pattern = is_pattern(name, len);
    r->npatterns += (uint32_t)c->pattern;
    BS_STAT_ADD(r->stats, channels, 1);
    if (r->presence)
        r->presence(r->ctx, c->name, c->len, 1);
    return c;
}

static void channel_destroy(bs_registry_t *r, bs_channel_t *c)
{
    bs_table_remove(&r->channels, &c->node);
    r->npatterns -= (uint32_t)c->pattern;
    BS_STAT_SUB(r->stats, channels, 1);
    if (r->presence)
        r->presence(r->ctx, c->name, c->len, 0);
    free(c->members);
    free(c);
}

bs_sub_t *bs_registry_subscribe(bs_registry_t *r, bs_subscriber_t *who, const char *name, size_t len)
{
    bs_channel_t *c = bs_registry_find(r, name, len);
    uint32_t i;

    if (c) {
        for (i = 0; i < who->nsubs; i++)
            if (who->subs[i].channel == c)
                return &who->subs[i];
    } else if (!(c = channel_create(r, name, len))) {
        return NULL;
    }
    if (who->nsubs == who->subs_cap) {
        uint32_t cap = who->subs_cap ? who->subs_cap * 2 : 2;
        bs_sub_t *v = realloc(who->subs, sizeof(*v) * cap);

        if (!v)
            goto fail;
        who->subs = v;
        who->subs_cap = cap;
    }
    if (c->nmembers == c->cap) {
        uint32_t cap = c->cap ? c->cap * 2 : 4;
        bs_member_t *v = realloc(c->members, sizeof(*v) * cap);

        if (!v)
            goto fail;
        c->members = v;
        c->cap = cap;
    }
    c->members[c->nmembers] = (bs_member_t){ .who = who, .slot = who->nsubs };
    who->subs[who->nsubs] = (bs_sub_t){ .channel = c, .pos = c->nmembers };
    c->nmembers++;
    who->nsubs++;
    BS_STAT_ADD(r->stats, subscriptions, 1);
    return &who->subs[who->nsubs - 1];
fail:
    if (c->nmembers == 0)
        channel_destroy(r, c);
    return NULL;
}

/* Removes who's sub at index i from both arrays by moving each array's last
 * entry into the hole and fixing that entry's back index. */
static void unsubscribe_at(bs_registry_t *r, bs_subscriber_t *who, uint32_t i)
{
    bs_channel_t *c = who->subs[i].channel;
    uint32_t pos = who->subs[i].pos, last;

    last = --c->nmembers;
    if (pos != last) {
        c->members[pos] = c->members[last];
        c->members[pos].who->subs[c->members[pos].slot].pos = pos;
    }
    last = --who->nsubs;
    if (i != last) {
        who->subs[i] = who->subs[last];
        who->subs[i].channel->members[who->subs[i].pos].slot = i;
    }
    BS_STAT_SUB(r->stats, subscriptions, 1);
    if (c->nmembers == 0)
        channel_destroy(r, c);
}

void bs_registry_unsubscribe(bs_registry_t *r, bs_subscriber_t *who, const char *name, size_t len)
{
    uint32_t i;

    for (i = 0; i < who->nsubs; i++) {
        if (who->subs[i].channel->len == len && memcmp(who->subs[i].channel->name, name, len) == 0) {
            unsubscribe_at(r, who, i);
            return;
        }
    }
}

void bs_registry_unsubscribe_all(bs_registry_t *r, bs_subscriber_t *who)
{
    while (who->nsubs)
        unsubscribe_at(r, who, who->nsubs - 1);
    free(who->subs);
    who->subs = NULL;
    who->subs_cap = 0;
}

int bs_registry_holds(const bs_subscriber_t *who, const char *name, size_t len)
{
    uint32_t i;

    for (i = 0; i < who->nsubs; i++)
        if (who->subs[i].channel->len == len && memcmp(who->subs[i].channel->name, name, len) == 0)
            return 1;
    return 0;
}

static void visit_members(bs_registry_t *r, bs_channel_t *c, bs_frame_t *f, uint64_t offset,
                          bs_fanout_fn visit, void *ctx)
{
    uint32_t i;

    for (i = 0; i < c->nmembers; i++) {
        bs_subscriber_t *who = c->members[i].who;

        if (offset) {
            bs_sub_t *sub = &who->subs[c->members[i].slot];

            if (sub->floor >= offset)
                continue;
            sub->floor = offset;
        }
        if (who->stamp == r->stamp)
            continue;
        who->stamp = r->stamp;
        visit(ctx, who, f);
    }
}

void bs_registry_fanout(bs_registry_t *r, const char *name, size_t len, bs_frame_t *f, uint64_t offset,
                        bs_fanout_fn visit, void *ctx)
{
    bs_channel_t *c;
    size_t i;

    r->stamp++;
    if ((c = bs_registry_find(r, name, len)))
        visit_members(r, c, f, offset, visit, ctx);
    if (!r->npatterns)
        return;
    /* "/a/b/c" is also reached through the patterns "/" "**", "/a/" "**",
     * "/a/b/" "**" and "/a/b/" "*". */
    bs_buf_reset(&r->scratch);
    if (bs_buf_reserve(&r->scratch, len + 4))
        return;
    memcpy(r->scratch.ptr, name, len);
    for (i = 0; i < len; i++) {
        if (name[i] != '/')
            continue;
        memcpy(r->scratch.ptr + i, "/**", 3);
        if ((c = bs_registry_find(r, r->scratch.ptr, i + 3)))
            visit_members(r, c, f, 0, visit, ctx);
        if (!memchr(name + i + 1, '/', len - i - 1) &&
            (c = bs_registry_find(r, r->scratch.ptr, i + 2)))
            visit_members(r, c, f, 0, visit, ctx);
        memcpy(r->scratch.ptr + i, name + i, len - i < 3 ? len - i : 3);
    }
}

void bs_registry_free(bs_registry_t *r)
{
    uint32_t i;

    for (i = 0; i < r->channels.size; i++) {
        bs_hnode_t *n = r->channels.buckets[i], *next;

        for (; n; n = next) {
            next = n->next;
            free(((bs_channel_t *)n)->members);
            free(n);
        }
    }
    bs_table_free(&r->channels);
    bs_buf_free(&r->scratch);
    r->npatterns = 0;
}

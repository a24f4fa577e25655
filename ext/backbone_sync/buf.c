/*
 * buf.c: the growable byte buffer used by the JSON encoders and by request
 * reassembly. Owned by one thread at a time; no locking.
 */
#include <stdlib.h>
#include <string.h>

#include "backbone_sync.h"

void bs_buf_init(bs_buf_t *b)
{
    b->ptr = NULL;
    b->len = 0;
    b->cap = 0;
}

int bs_buf_reserve(bs_buf_t *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (extra > SIZE_MAX - b->len)
        return -1;
    need = b->len + extra;
    if (need <= b->cap)
        return 0;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(b->ptr, cap);
    if (!p)
        return -1;
    b->ptr = p;
    b->cap = cap;
    return 0;
}

int bs_buf_append(bs_buf_t *b, const void *p, size_t n)
{
    if (bs_buf_reserve(b, n))
        return -1;
    if (n)
        memcpy(b->ptr + b->len, p, n);
    b->len += n;
    return 0;
}

int bs_buf_append_str(bs_buf_t *b, const char *s)
{
    return bs_buf_append(b, s, strlen(s));
}

void bs_buf_reset(bs_buf_t *b)
{
    b->len = 0;
}

void bs_buf_free(bs_buf_t *b)
{
    free(b->ptr);
    bs_buf_init(b);
}

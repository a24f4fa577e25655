/*
 * bjson.h: a minimal JSON reader for Bayeux messages, and an escaper (bjson.c).
 */
#ifndef LOADGEN_BJSON_H
#define LOADGEN_BJSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct jp {
    const char *p, *end;
    int err;
} jp_t;

typedef struct bmsg {
    char channel[128];
    char client_id[96];
    char error[192];
    char reconnect[32];       /* advice.reconnect */
    int successful;           /* -1 absent, 0 false, 1 true */
    int has_data;
    int has_seq, has_t;
    int64_t seq, t;
    int has_offset;
    int recovered;            /* ext.recovered: -1 absent, 0 false, 1 true */
    uint64_t offset;          /* ext.offset */
    char epoch[48];           /* ext.epoch */
} bmsg_t;

typedef void (*bmsg_fn)(void *ctx, const bmsg_t *m);

/* Writes s as the inside of a JSON string (no quotes); 0, or -1 when it does not fit. */
int json_escape(char *out, size_t cap, const char *s);
/* A Bayeux payload: an array of message objects, or one bare object. Calls
 * fn for each message; returns their number, or -1 when the JSON is malformed. */
int parse_bayeux(const char *p, size_t len, bmsg_fn fn, void *ctx);

#endif

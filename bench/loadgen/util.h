/*
 * util.h: the load generator's small helpers (util.c). One thread.
 */
#ifndef LOADGEN_UTIL_H
#define LOADGEN_UTIL_H

#include <stddef.h>
#include <stdint.h>

extern int64_t t_origin;             /* CLOCK_MONOTONIC ns at start */
int64_t now_ns(void);                /* since t_origin */
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void warnx_(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern uint64_t rng_state;           /* main seeds it */
uint32_t rnd32(void);

typedef struct buf {
    char *p;
    size_t off, len, cap;     /* live bytes are p[off .. off+len) */
} buf_t;

void buf_reserve(buf_t *b, size_t extra);
void buf_append(buf_t *b, const void *data, size_t n);
void buf_consume(buf_t *b, size_t n);

#endif

/*
 * util.h: the clock, random ids and the log sink (util.c). Layer:
 * utilities. Thread: any; a bs_rng_t belongs to one thread, a bs_log_t is
 * read-only once set up.
 */
#ifndef BS_UTIL_H
#define BS_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds on the monotonic clock. */
int64_t bs_now_ms(void);

/* Random base-36 ids from the kernel's CSPRNG, drawn 256 bytes at a time. */
typedef struct bs_rng {
    unsigned char bytes[256];
    size_t used;                           /* 0: refill first */
} bs_rng_t;

/* Fills out[0..n) with base-36 digits and a NUL (32 of them: ~165 bits).
 * Returns 0, or -1 when the kernel gives no randomness. */
int bs_rng_id(bs_rng_t *r, char *out, size_t n);

/* Any thread: the same from a fresh draw (an epoch, made rarely). */
int bs_random_id(char *out, size_t n);

#define BS_EPOCH_LEN 16                    /* a channel history's epoch: bs_random_id(out, BS_EPOCH_LEN) */

/* Where the core logs: the write end of a pipe a Ruby thread reads, lines
 * "<L> <text>\n" with L in E W I D. Writes never block: a full pipe drops
 * the line rather than stall the server. fd -1: no log. */
typedef struct bs_log {
    int fd;
    int verbose;                           /* 1: connections, subscriptions and publishes at I */
} bs_log_t;

void bs_log(const bs_log_t *log, char level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* The raw line writer, for libwebsockets' own log hook (server.c). */
void bs_log_line(int fd, char level, const char *text);

static inline int bs_log_verbose(const bs_log_t *log)
{
    return log->verbose && log->fd >= 0;
}

#endif

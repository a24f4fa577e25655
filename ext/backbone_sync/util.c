/*
 * util.c: the clock, random ids and the log sink. Layer: utilities.
 * Thread: any (see util.h for who owns what).
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

int64_t bs_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int bs_rng_id(bs_rng_t *r, char *out, size_t n)
{
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    size_t i = 0;

    while (i < n) {
        unsigned char b;

        if (r->used == 0 || r->used >= sizeof(r->bytes)) {
            if (getrandom(r->bytes, sizeof(r->bytes), 0) != (ssize_t)sizeof(r->bytes))
                return -1;
            r->used = 0;
        }
        b = r->bytes[r->used++];
        if (b < 252)                              /* 252 = 7 * 36: no modulo bias */
            out[i++] = digits[b % 36];
    }
    out[n] = '\0';
    return 0;
}

int bs_random_id(char *out, size_t n)
{
    bs_rng_t r = { .used = 0 };

    return bs_rng_id(&r, out, n);
}

void bs_log_line(int fd, char level, const char *text)
{
    char line[1024];
    int n = snprintf(line, sizeof(line), "%c %s", level, text);

    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line) - 1)
        n = sizeof(line) - 2;
    while (n > 2 && line[n - 1] == '\n')
        n--;
    line[n++] = '\n';
    if (write(fd, line, (size_t)n) < 0)
        return;                                   /* full or closed: the line is dropped */
}

void bs_log(const bs_log_t *log, char level, const char *fmt, ...)
{
    char text[900];
    va_list ap;

    if (!log || log->fd < 0)
        return;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    bs_log_line(log->fd, level, text);
}

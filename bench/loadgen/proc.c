/*
 * proc.c: what /proc says of a process (the server under test, or this
 * one): RSS, open descriptors and CPU time. One thread.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "proc.h"

long proc_rss_kib(int pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kib = strtol(line + 6, NULL, 10);
    fclose(f);
    return kib;
}

int proc_fd_count(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

int64_t proc_stat_cpu_us(int pid)
{
    char path[64], data[2048];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(data, 1, sizeof data - 1, f);
    fclose(f);
    data[n] = 0;
    /* comm may contain spaces and parentheses: fields start after the last ')'.
     * After it come field 3 (state), ..., field 14 (utime), field 15 (stime). */
    char *s = strrchr(data, ')');
    if (!s)
        return -1;
    unsigned long long utime = 0, stime = 0;
    char *save = NULL;
    int field = 3;
    for (char *tok = strtok_r(s + 1, " ", &save); tok; tok = strtok_r(NULL, " ", &save), field++) {
        if (field == 14)
            utime = strtoull(tok, NULL, 10);
        if (field == 15) {
            stime = strtoull(tok, NULL, 10);
            break;
        }
    }
    long hz = sysconf(_SC_CLK_TCK);
    return (int64_t)((utime + stime) * 1000000ull / (unsigned long long)hz);
}

/* CPU time of the whole process, in microseconds: the sum of its threads'
 * schedstat run times (nanosecond resolution), else utime+stime from
 * /proc/PID/stat (clock ticks, 10 ms). Short phases need the former. */
int64_t proc_cpu_us(int pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (d) {
        struct dirent *e;
        int64_t total = 0;
        int ok = 1;
        while (ok && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char sp[320];
            unsigned long long ns;
            snprintf(sp, sizeof sp, "/proc/%d/task/%s/schedstat", pid, e->d_name);
            FILE *f = fopen(sp, "r");
            if (f && fscanf(f, "%llu", &ns) == 1)
                total += (int64_t)(ns / 1000);
            else
                ok = 0;
            if (f)
                fclose(f);
        }
        closedir(d);
        if (ok)
            return total;
    }
    return proc_stat_cpu_us(pid);
}

int64_t self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
           (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
}

/* Busy time of one CPU from /proc/stat (user, nice, system, irq, softirq,
 * steal: everything but idle and iowait), in microseconds, clock-tick
 * resolution. It counts whoever ran there, softirq work included. */
int64_t proc_core_busy_us(int cpu)
{
    char want[16], line[512];
    int64_t busy = -1;
    snprintf(want, sizeof want, "cpu%d ", cpu);
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long long v[8] = { 0 };
        if (strncmp(line, want, strlen(want)) != 0)
            continue;
        if (sscanf(line + strlen(want), "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) == 8)
            busy = (int64_t)((v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) * 1000000ull /
                             (unsigned long long)sysconf(_SC_CLK_TCK));
        break;
    }
    fclose(f);
    return busy;
}

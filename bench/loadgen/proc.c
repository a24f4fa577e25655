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

/* Busy time of one CPU from /proc/stat (user, nice, system, irq, softirq:
 * everything but idle, iowait and steal), in microseconds, clock-tick
 * resolution; its softirq share in *softirq_us. It counts whoever ran
 * there, ksoftirqd and other tenants included. */
int64_t proc_core_busy_us(int cpu, int64_t *softirq_us)
{
    char want[16], line[512];
    int64_t busy = -1;
    snprintf(want, sizeof want, "cpu%d ", cpu);
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        unsigned long long v[7] = { 0 };
        if (strncmp(line, want, strlen(want)) != 0)
            continue;
        if (sscanf(line + strlen(want), "%llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3], &v[4],
                   &v[5], &v[6]) == 7) {
            unsigned long long hz = (unsigned long long)sysconf(_SC_CLK_TCK);
            busy = (int64_t)((v[0] + v[1] + v[2] + v[5] + v[6]) * 1000000ull / hz);
            if (softirq_us)
                *softirq_us = (int64_t)(v[6] * 1000000ull / hz);
        }
        break;
    }
    fclose(f);
    return busy;
}

/* The pid of ksoftirqd/<cpu>, which runs the softirq work that did not fit
 * into the context that raised it; 0 if not found. */
int proc_ksoftirqd_pid(int cpu)
{
    char want[32], path[300], comm[64];
    snprintf(want, sizeof want, "ksoftirqd/%d\n", cpu);
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    struct dirent *e;
    int pid = 0;
    while (!pid && (e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof path, "/proc/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof comm, f) && strcmp(comm, want) == 0)
            pid = atoi(e->d_name);
        fclose(f);
    }
    closedir(d);
    return pid;
}

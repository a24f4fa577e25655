/*
 * proc.h: what /proc says of a process (proc.c). -1 when it cannot say.
 */
#ifndef LOADGEN_PROC_H
#define LOADGEN_PROC_H

#include <stdint.h>

long proc_rss_kib(int pid);
int proc_fd_count(int pid);
/* utime + stime from /proc/PID/stat, in microseconds (10 ms resolution). */
int64_t proc_stat_cpu_us(int pid);
/* The sum of the threads' schedstat run times (ns resolution), else the above. */
int64_t proc_cpu_us(int pid);
/* Busy time of CPU `cpu` (all but idle, iowait and steal) from /proc/stat,
 * whoever ran; its softirq part in *softirq_us (may be NULL). */
int64_t proc_core_busy_us(int cpu, int64_t *softirq_us);
/* The pid of ksoftirqd/<cpu>, 0 if not found. */
int proc_ksoftirqd_pid(int cpu);
/* This process's own user + system time. */
int64_t self_cpu_us(void);

#endif

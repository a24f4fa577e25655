/*
 * natspub.c: bin/bench --engines' NATS publisher (libnats, the maintained C
 * client). M messages of ~200 bytes, message j on subject <prefix>.c<j mod
 * C>, published from one connection while a subscriber on another
 * connection (possibly to another server of a NATS cluster) counts them on
 * <prefix>.>; the run ends when all M arrived or --timeout passes.
 *
 * Core NATS: plain publishes (fire and forget, the server fans out).
 * --js: JetStream publishes, each acknowledged (asynchronous, at most
 * --window unacknowledged), into a memory stream that keeps 100 messages
 * per subject: the analogue of publish.lua's bounded per-channel history;
 * --replicas R (a JetStream cluster) keeps it on R servers.
 *
 * Output, "key value" lines: published, errors, seconds, msgs_per_sec,
 * received, received_per_sec.
 *
 * Build: cc -O2 -o natspub natspub.c -lnats
 */
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile long received;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    (void)nc;
    (void)sub;
    (void)closure;
    __atomic_add_fetch(&received, 1, __ATOMIC_RELAXED);
    natsMsg_Destroy(msg);
}

static void check(natsStatus s, const char *what)
{
    if (s == NATS_OK)
        return;
    fprintf(stderr, "natspub: %s: %s (%s)\n", what, natsStatus_GetText(s), nats_GetLastError(NULL));
    exit(2);
}

int main(int argc, char **argv)
{
    const char *url = "nats://127.0.0.1:4222", *sub_url = NULL;
    long messages = 100000;
    int channels = 300, js_mode = 0, window = 256, replicas = 1;
    double timeout = 60;

    for (int i = 1; i < argc; i++) {
        const char *v = i + 1 < argc ? argv[i + 1] : "";
        if (!strcmp(argv[i], "--url")) url = v, i++;
        else if (!strcmp(argv[i], "--sub-url")) sub_url = v, i++;
        else if (!strcmp(argv[i], "--messages")) messages = atol(v), i++;
        else if (!strcmp(argv[i], "--channels")) channels = atoi(v), i++;
        else if (!strcmp(argv[i], "--window")) window = atoi(v), i++;
        else if (!strcmp(argv[i], "--timeout")) timeout = atof(v), i++;
        else if (!strcmp(argv[i], "--js")) js_mode = 1;
        else if (!strcmp(argv[i], "--replicas")) replicas = atoi(v), i++;
        else {
            fprintf(stderr, "natspub: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!sub_url)
        sub_url = url;
    const char *prefix = js_mode ? "js" : "bench";

    natsConnection *pub = NULL, *subc = NULL;
    natsSubscription *sub = NULL;
    check(natsConnection_ConnectTo(&pub, url), "connect (publisher)");
    check(natsConnection_ConnectTo(&subc, sub_url), "connect (subscriber)");
    char wildcard[32];
    snprintf(wildcard, sizeof wildcard, "%s.>", prefix);
    check(natsConnection_Subscribe(&sub, subc, wildcard, on_msg, NULL), "subscribe");
    check(natsSubscription_SetPendingLimits(sub, -1, -1), "pending limits");
    check(natsConnection_Flush(subc), "flush (subscriber)");
    /* The subscription must have reached the publisher's server too (a cluster). */
    nats_Sleep(js_mode || strcmp(url, sub_url) ? 300 : 0);

    jsCtx *js = NULL;
    if (js_mode) {
        jsOptions o;
        jsOptions_Init(&o);
        o.PublishAsync.MaxPending = window;
        /* At the window, wait for acks rather than fail the publish after
         * the default 200 ms: a replicated stream on a busy machine is slower. */
        o.PublishAsync.StallWait = 10000;
        check(natsConnection_JetStream(&js, pub, &o), "JetStream context");
        jsStreamConfig cfg;
        jsStreamConfig_Init(&cfg);
        const char *subjects[1] = { "js.>" };
        cfg.Name = "BENCH";
        cfg.Subjects = subjects;
        cfg.SubjectsLen = 1;
        cfg.Storage = js_MemoryStorage;
        cfg.MaxMsgsPerSubject = 100;
        cfg.Replicas = replicas;
        jsStreamInfo *si = NULL;
        jsErrCode jerr = 0;
        natsStatus s;
        /* A JetStream cluster answers only once it has elected its leader. */
        for (int tries = 0; (s = js_AddStream(&si, js, &cfg, NULL, &jerr)) != NATS_OK && tries < 100; tries++)
            nats_Sleep(100);
        check(s, "add stream");
        jsStreamInfo_Destroy(si);
    }

    char payload[200];
    memset(payload, 'x', sizeof payload);
    char **subjects = malloc(sizeof(char *) * (size_t)channels);
    for (int k = 0; k < channels; k++) {
        subjects[k] = malloc(32);
        snprintf(subjects[k], 32, "%s.c%d", prefix, k);
    }

    long errors = 0, sent = 0;
    double start = now(), deadline = start + timeout;
    for (; sent < messages && now() < deadline; sent++) {
        const char *subj = subjects[sent % channels];
        natsStatus s = js_mode ? js_PublishAsync(js, subj, payload, sizeof payload, NULL)
                               : natsConnection_Publish(pub, subj, payload, sizeof payload);
        if (s != NATS_OK)
            errors++;
    }
    if (js_mode) {
        jsPubOptions po;
        jsPubOptions_Init(&po);
        po.MaxWait = (int64_t)(timeout * 1000);
        if (js_PublishAsyncComplete(js, &po) != NATS_OK)
            errors++;
    } else if (natsConnection_Flush(pub) != NATS_OK) {
        errors++;
    }
    double published_at = now();
    while (__atomic_load_n(&received, __ATOMIC_RELAXED) < sent && now() < deadline)
        nats_Sleep(1);
    double done_at = now();
    long got = __atomic_load_n(&received, __ATOMIC_RELAXED);

    printf("published %ld\n", sent);
    printf("errors %ld\n", errors);
    printf("seconds %.4f\n", published_at - start);
    printf("msgs_per_sec %.0f\n", sent / (published_at - start));
    printf("received %ld\n", got);
    printf("received_per_sec %.0f\n", got / (done_at - start));
    fflush(stdout);

    natsSubscription_Destroy(sub);
    jsCtx_Destroy(js);
    natsConnection_Destroy(pub);
    natsConnection_Destroy(subc);
    nats_Close();
    return errors || got < sent ? 1 : 0;
}

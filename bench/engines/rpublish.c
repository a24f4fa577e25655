/*
 * rpublish.c: bin/bench's fast publisher into the Redis backplane (--nodes
 * and --engines). It runs publish.lua (EVALSHA) as the servers and
 * RedisPublisher do, but from C with pipelining, so that the figure is the
 * engine's and not a Ruby client's.
 *
 * bin/bench writes the plan: which Redis connections to open and, per
 * channel, the connection (the primary that owns the channel's slot on a
 * cluster), the pub/sub name the message reaches, and the EVALSHA argv
 * (names from ext/backbone_sync/rnames.c through BackboneSync._redis_names).
 *
 *   port <p>                                   one line per connection
 *   cmd <conn>\t<pubsub channel>\t<arg>\t...   one line per Bayeux channel
 *
 * Message j goes to plan channel j mod C, sent by the thread of that
 * channel's connection (one thread per connection, so that a slow shard
 * does not hold back the others). At most --window commands are in flight
 * on each connection. With --subscribe CMD (SUBSCRIBE or SSUBSCRIBE)
 * a second connection per port listens to the pub/sub channels it owns and
 * the run ends when all M are received (or --timeout passes).
 *
 * Output, "key value" lines: published, errors, seconds, msgs_per_sec,
 * received, received_per_sec.
 *
 * Build: cc -O2 -o rpublish rpublish.c -lhiredis -lpthread
 */
#define _GNU_SOURCE
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_CONNS 64
#define MAX_ARGS 32

typedef struct {
    int conn;
    char *pubsub;
    int argc;
    char *argv[MAX_ARGS];
    size_t argvlen[MAX_ARGS];
} plan_cmd_t;

static int ports[MAX_CONNS], nports;
static plan_cmd_t *cmds;
static int ncmds;
static long received;           /* by the listeners, under lock */
static double last_received_at; /* under lock too */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    fprintf(stderr, "rpublish: %s\n", what);
    exit(2);
}

static void read_plan(const char *path)
{
    FILE *f = fopen(path, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int size = 0;

    if (!f)
        die("cannot open the plan");
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = 0;
        if (!strncmp(line, "port ", 5)) {
            if (nports == MAX_CONNS)
                die("too many connections");
            ports[nports++] = atoi(line + 5);
        } else if (!strncmp(line, "cmd ", 4)) {
            if (ncmds == size) {
                size = size ? size * 2 : 512;
                cmds = realloc(cmds, sizeof(*cmds) * (size_t)size);
                if (!cmds)
                    die("out of memory");
            }
            plan_cmd_t *c = &cmds[ncmds++];
            char *rest = strdup(line + 4), *field;
            c->conn = atoi(strsep(&rest, "\t"));
            c->pubsub = strsep(&rest, "\t");
            c->argc = 0;
            while ((field = strsep(&rest, "\t")) != NULL) {
                if (c->argc == MAX_ARGS)
                    die("too many arguments");
                c->argvlen[c->argc] = strlen(field);
                c->argv[c->argc++] = field;
            }
            if (!c->pubsub || c->argc == 0 || c->conn < 0 || c->conn >= nports)
                die("malformed cmd line");
        }
    }
    free(line);
    fclose(f);
    if (!nports || !ncmds)
        die("the plan has no port or no cmd");
}

static redisContext *connect_to(int port)
{
    struct timeval tv = { 10, 0 };
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);

    if (!c || c->err)
        die("cannot connect to Redis");
    redisSetTimeout(c, tv);
    return c;
}

typedef struct {
    int port;
    const char *command;        /* SUBSCRIBE or SSUBSCRIBE */
    long expected;
    double deadline;
    redisContext *ctx;
    int nchannels;
} listener_t;

static void *listen_loop(void *arg)
{
    listener_t *l = arg;
    redisReply *r;
    int acks = 0;

    while (now() < l->deadline) {
        pthread_mutex_lock(&lock);
        long got = received;
        pthread_mutex_unlock(&lock);
        if (got >= l->expected)
            break;
        if (redisGetReply(l->ctx, (void **)&r) != REDIS_OK)
            break;              /* the 5 s read timeout, or the connection closed */
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 && r->element[0]->type == REDIS_REPLY_STRING) {
            const char *kind = r->element[0]->str;
            if (!strcmp(kind, "message") || !strcmp(kind, "smessage")) {
                pthread_mutex_lock(&lock);
                received++;
                last_received_at = now();
                pthread_mutex_unlock(&lock);
            } else {
                acks++;
            }
        }
        freeReplyObject(r);
    }
    return NULL;
}

/* Opens the listener on one port: subscribed to every pub/sub channel of
 * the plan that port owns, before the first publish. */
static void start_listener(listener_t *l, pthread_t *thread)
{
    const char **argv = malloc(sizeof(char *) * (size_t)(ncmds + 1));
    size_t *lens = malloc(sizeof(size_t) * (size_t)(ncmds + 1));
    int argc = 1;

    argv[0] = l->command;
    lens[0] = strlen(l->command);
    for (int i = 0; i < ncmds; i++) {
        if (ports[cmds[i].conn] != l->port)
            continue;
        argv[argc] = cmds[i].pubsub;
        lens[argc++] = strlen(cmds[i].pubsub);
    }
    l->ctx = connect_to(l->port);
    l->nchannels = argc - 1;
    if (argc > 1) {
        /* SSUBSCRIBE takes channels of one slot at a time: one command per channel. */
        for (int i = 1; i < argc; i++) {
            const char *one[2] = { argv[0], argv[i] };
            size_t onelen[2] = { lens[0], lens[i] };
            redisAppendCommandArgv(l->ctx, 2, one, onelen);
        }
        for (int i = 1; i < argc; i++) {
            redisReply *r;
            if (redisGetReply(l->ctx, (void **)&r) != REDIS_OK)
                die("the subscribe was not answered");
            if (r->type == REDIS_REPLY_ERROR) {
                fprintf(stderr, "rpublish: %s: %s\n", l->command, r->str);
                exit(2);
            }
            freeReplyObject(r);
        }
    }
    struct timeval tv = { 5, 0 };
    redisSetTimeout(l->ctx, tv);
    free(argv);
    free(lens);
    pthread_create(thread, NULL, listen_loop, l);
}

typedef struct {
    int conn;
    long messages, sent, errors;
    int window;
    double deadline;
    char first_error[256];
} publisher_t;

/* Publishes the messages of the plan channels on connection p->conn
 * (message j goes to channel j mod C), at most p->window in flight. */
static void *publish_loop(void *arg)
{
    publisher_t *p = arg;
    redisContext *c = connect_to(ports[p->conn]);
    long inflight = 0;

    for (long j = 0; j < p->messages || inflight > 0;) {
        int can_send = j < p->messages && inflight < p->window && now() < p->deadline;
        if (can_send) {
            plan_cmd_t *cmd = &cmds[j++ % ncmds];
            if (cmd->conn != p->conn)
                continue;
            redisAppendCommandArgv(c, cmd->argc, (const char **)cmd->argv, cmd->argvlen);
            inflight++;
            p->sent++;
            continue;
        }
        if (inflight == 0)
            break;              /* past the deadline */
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK)
            die("a publish was not answered");
        inflight--;
        if (r->type == REDIS_REPLY_ERROR && !p->errors++)
            snprintf(p->first_error, sizeof p->first_error, "%s", r->str);
        freeReplyObject(r);
    }
    redisFree(c);
    return NULL;
}

int main(int argc, char **argv)
{
    const char *plan = NULL, *subscribe = NULL;
    long messages = 10000;
    int window = 64;
    double timeout = 60;

    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--plan")) plan = argv[i + 1];
        else if (!strcmp(argv[i], "--messages")) messages = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--window")) window = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--subscribe")) subscribe = argv[i + 1];
        else if (!strcmp(argv[i], "--timeout")) timeout = atof(argv[i + 1]);
        else die("unknown option");
    }
    if (!plan || messages <= 0 || window <= 0)
        die("usage: rpublish --plan FILE --messages M [--window W] [--subscribe CMD] [--timeout S]");
    read_plan(plan);

    listener_t listeners[MAX_CONNS];
    pthread_t threads[MAX_CONNS];
    int nlisteners = 0;
    double deadline = now() + timeout;
    if (subscribe) {
        for (int i = 0; i < nports; i++) {
            listeners[i] = (listener_t){ ports[i], subscribe, messages, deadline, NULL, 0 };
            start_listener(&listeners[i], &threads[i]);
            nlisteners++;
        }
    }

    /* One publishing thread per connection (per primary on a cluster), so
     * that a slow shard does not hold back the others. */
    publisher_t pubs[MAX_CONNS];
    pthread_t pub_threads[MAX_CONNS];
    double start = now();
    for (int i = 0; i < nports; i++) {
        pubs[i] = (publisher_t){ .conn = i, .messages = messages, .window = window, .deadline = deadline };
        pthread_create(&pub_threads[i], NULL, publish_loop, &pubs[i]);
    }
    long errors = 0, sent = 0;
    char first_error[256] = "";
    for (int i = 0; i < nports; i++) {
        pthread_join(pub_threads[i], NULL);
        sent += pubs[i].sent;
        if (pubs[i].errors && !errors)
            snprintf(first_error, sizeof first_error, "%s", pubs[i].first_error);
        errors += pubs[i].errors;
    }
    double published_at = now();
    for (int i = 0; i < nlisteners; i++)
        pthread_join(threads[i], NULL);
    double done_at = last_received_at > published_at ? last_received_at : published_at;

    printf("published %ld\n", sent);
    printf("errors %ld\n", errors);
    if (errors)
        printf("first_error %s\n", first_error);
    printf("seconds %.4f\n", published_at - start);
    printf("msgs_per_sec %.0f\n", sent / (published_at - start));
    if (subscribe) {
        printf("received %ld\n", received);
        printf("received_per_sec %.0f\n", received / (done_at - start));
    }
    return errors || (subscribe && received < sent) ? 1 : 0;
}

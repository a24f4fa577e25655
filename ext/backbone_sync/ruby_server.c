/*
 * ruby_server.c: BackboneSync::Server's private primitives over bs_server_t.
 * Every function here runs in a Ruby thread; the GVL is held except inside
 * the _nogvl helpers, which touch no Ruby object. lib/backbone_sync/server.rb
 * validates arguments and serialises start/stop with a Mutex.
 */
#include <errno.h>

#include "ruby_bindings.h"

static VALUE eError = Qnil, eStartError = Qnil, ePortInUse = Qnil, eNotRunning = Qnil,
             eOverloaded = Qnil, eChannelError = Qnil, eMessageTooLarge = Qnil;

typedef struct server_wrapper {
    bs_server_t *srv;                    /* NULL until _configure */
    /* Set by _forget in a forked child. The core keeps its own flag, but
     * offers no way to ask it, and _stats must not take the backplane's
     * lock, which the parent's threads may have held at fork. */
    int forgotten;
} server_wrapper_t;

static void server_free(void *p)
{
    server_wrapper_t *w = p;

    /* Stops (joins the service pthread, which never takes the GVL, so this
     * cannot deadlock) only when Ruby dropped a running server without stop. */
    if (w->srv)
        bs_server_free(w->srv);
    xfree(w);
}

/* What the core holds counts toward Ruby's malloc accounting (ObjectSpace). */
static size_t server_size(const void *p)
{
    const server_wrapper_t *w = p;

    return sizeof(server_wrapper_t) + (w->srv && !w->forgotten ? bs_server_memsize(w->srv) : 0);
}

static const rb_data_type_t server_type = {
    .wrap_struct_name = "BackboneSync::Server",
    .function = {
        .dmark = NULL,                   /* holds no Ruby objects */
        .dfree = server_free,
        .dsize = server_size,
        .dcompact = NULL,
        .reserved = { 0 },
    },
    .parent = NULL,
    .data = NULL,
    .flags = RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE server_alloc(VALUE klass)
{
    server_wrapper_t *w;

    return TypedData_Make_Struct(klass, server_wrapper_t, &server_type, w);
}

static server_wrapper_t *unwrap(VALUE self)
{
    server_wrapper_t *w;

    TypedData_Get_Struct(self, server_wrapper_t, &server_type, w);
    return w;
}

static bs_server_t *configured(VALUE self)
{
    server_wrapper_t *w = unwrap(self);

    if (!w->srv)
        rb_raise(eNotRunning, "the server was never started: call start first");
    return w->srv;
}

/* ---- _configure -------------------------------------------------------- */

static VALUE opt(VALUE hash, const char *key)
{
    return rb_hash_aref(hash, ID2SYM(rb_intern(key)));
}

static const char *opt_cstr(VALUE hash, const char *key)
{
    VALUE v = opt(hash, key);

    return NIL_P(v) ? NULL : StringValueCStr(v);
}

/* server.rb owns every default and passes every value: a missing one is a
 * bug there, said as such. */
static VALUE need(VALUE hash, const char *key)
{
    VALUE v = opt(hash, key);

    if (NIL_P(v))
        rb_raise(rb_eArgError, "_configure: no value for %s (BackboneSync::Server passes every option)", key);
    return v;
}

static int need_int(VALUE hash, const char *key)
{
    return NUM2INT(need(hash, key));
}

static size_t need_size(VALUE hash, const char *key)
{
    return NUM2SIZET(need(hash, key));
}

/* :poll or :ev, as server.rb validated it. */
static bs_event_loop_t need_event_loop(VALUE hash)
{
    VALUE v = need(hash, "event_loop");

    if (v == ID2SYM(rb_intern("poll")))
        return BS_LOOP_POLL;
    if (v == ID2SYM(rb_intern("ev")))
        return BS_LOOP_EV;
    rb_raise(rb_eArgError, "_configure: event_loop must be :poll or :ev, got %" PRIsVALUE, rb_inspect(v));
}

/* A NULL-terminated array of C strings from an Array of Strings. It lives in
 * a Ruby String (*keep, which the caller guards) so an exception half-way
 * leaks nothing; the pointers point into the Strings the hash keeps alive. */
static const char *const *opt_patterns(VALUE hash, const char *key, VALUE *keep)
{
    VALUE ary = opt(hash, key);
    const char **list;
    long i, n;

    if (NIL_P(ary))
        return NULL;
    Check_Type(ary, T_ARRAY);
    n = RARRAY_LEN(ary);
    *keep = rb_str_buf_new((long)sizeof(const char *) * (n + 1));
    list = (const char **)RSTRING_PTR(*keep);
    for (i = 0; i < n; i++) {
        VALUE s = RARRAY_AREF(ary, i);
        list[i] = StringValueCStr(s);
    }
    list[n] = NULL;
    return list;
}

/*
 * call-seq:
 *   _configure(options) -> self
 *
 * Builds the C server from a Hash with symbol keys (see server.rb). Replaces
 * a previous configuration when the server is not running.
 */
static VALUE Server_configure(VALUE self, VALUE hash)
{
    server_wrapper_t *w = unwrap(self);
    bs_server_config_t cfg;
    VALUE keep_signed = Qnil, keep_public = Qnil, keep_origins = Qnil;
    VALUE signed_opt, client_js, host, mount;
    bs_server_t *srv;

    Check_Type(hash, T_HASH);
    if (w->srv && bs_server_running(w->srv))
        rb_raise(eError, "cannot reconfigure a running server: call stop first");

    host = need(hash, "host");
    mount = need(hash, "mount");
    signed_opt = opt(hash, "signed_subscriptions");
    client_js = opt(hash, "client_js");
    if (!NIL_P(client_js))
        StringValue(client_js);

    cfg = (bs_server_config_t){
        .host = StringValueCStr(host),
        .port = need_int(hash, "port"),
        .mount = StringValueCStr(mount),
        .timeout = need_int(hash, "timeout"),
        .key_path = opt_cstr(hash, "key"),
        .cert_path = opt_cstr(hash, "cert"),
        .secret = opt_cstr(hash, "secret"),
        .signed_subscriptions = RTEST(signed_opt) && !RB_TYPE_P(signed_opt, T_ARRAY),
        .signed_channels = RB_TYPE_P(signed_opt, T_ARRAY)
                               ? opt_patterns(hash, "signed_subscriptions", &keep_signed) : NULL,
        .public_channels = opt_patterns(hash, "public_channels", &keep_public),
        .max_message_size = need_size(hash, "max_message_size"),
        .max_depth = need_int(hash, "max_depth"),
        .max_batch = need_int(hash, "max_batch"),
        .max_subscriptions = need_int(hash, "max_subscriptions"),
        .max_queue = need_int(hash, "max_queue"),
        .max_clients = need_int(hash, "max_clients"),
        .max_channels = need_int(hash, "max_channels"),
        .request_timeout = need_int(hash, "request_timeout"),
        .allowed_origins = opt_patterns(hash, "allowed_origins", &keep_origins),
        .client_js = NIL_P(client_js) ? NULL : RSTRING_PTR(client_js),
        .client_js_len = NIL_P(client_js) ? 0 : (size_t)RSTRING_LEN(client_js),
        .history_size = need_int(hash, "history_size"),
        .history_ttl = need_int(hash, "history_ttl"),
        .history_memory = need_size(hash, "history_memory"),
        .redis_nodes = opt_cstr(hash, "redis_nodes"),
        .redis_password = opt_cstr(hash, "redis_password"),
        .redis_db = NIL_P(opt(hash, "redis_nodes")) ? 0 : need_int(hash, "redis_db"),
        .redis_script = opt_cstr(hash, "redis_script"),
        .redis_prefix = opt_cstr(hash, "redis_prefix"),
        .log_fd = need_int(hash, "log_fd"),
        .verbose = RTEST(opt(hash, "verbose")),
        .event_loop = need_event_loop(hash),
    };

    /* bs_server_new copies every string, so the Ruby ones may go after this */
    srv = bs_server_new(&cfg);
    RB_GC_GUARD(hash);
    RB_GC_GUARD(client_js);
    RB_GC_GUARD(keep_signed);
    RB_GC_GUARD(keep_public);
    RB_GC_GUARD(keep_origins);
    RB_GC_GUARD(host);
    RB_GC_GUARD(mount);
    if (!srv) {
        if (errno == EINVAL)
            rb_raise(rb_eArgError, "_configure: a value is out of range (BackboneSync::Server validates them)");
        rb_memerror();
    }

    if (w->srv)
        bs_server_free(w->srv);
    w->srv = srv;
    w->forgotten = 0;
    return self;
}

/* ---- _start / _stop ---------------------------------------------------- */

/*
 * call-seq:
 *   _start -> self
 *
 * Binds and starts the service thread; returns once listening. Raises
 * BackboneSync::StartError with the core's explanation, or its subclass
 * BackboneSync::PortInUse when another socket holds the port.
 */
typedef struct start_args {
    bs_server_t *srv;
    char err[512];
    int rc;
} start_args_t;

static void *start_nogvl(void *arg)
{
    start_args_t *a = arg;

    a->rc = bs_server_start(a->srv, a->err, sizeof(a->err));
    return NULL;
}

static VALUE Server_start(VALUE self)
{
    start_args_t a = { .srv = configured(self), .err = "" };

    /* Name resolution, binding and loading TLS files may take a while: other
     * Ruby threads run meanwhile. server.rb's lock keeps stop out; the
     * outcome is carried out and raised with the GVL back. */
    rb_thread_call_without_gvl(start_nogvl, &a, NULL, NULL);
    if (a.rc != 0)
        rb_raise(a.rc == -2 ? ePortInUse : eStartError, "%s", a.err[0] ? a.err : "the server could not start");
    return self;
}

static void *stop_nogvl(void *arg)
{
    bs_server_stop(arg);
    return NULL;
}

/*
 * call-seq:
 *   _stop -> nil
 *
 * Stops the service thread and closes every connection; idempotent. Other
 * Ruby threads keep running while it waits.
 */
static VALUE Server_stop(VALUE self)
{
    server_wrapper_t *w = unwrap(self);

    if (!w->srv)
        return Qnil;
    /* In a forked child (bs_server_forget) the core returns at once: there
     * is no service thread to join. No unblock function: bs_server_stop is
     * bounded, and abandoning it half-way would leave the context half
     * destroyed. */
    rb_thread_call_without_gvl(stop_nogvl, w->srv, NULL, NULL);
    return Qnil;
}

/*
 * call-seq:
 *   _forget -> nil
 *
 * In a forked child: mark the inherited server stopped without touching the
 * parent's thread, sockets or locks. The core remembers it.
 */
static VALUE Server_forget(VALUE self)
{
    server_wrapper_t *w = unwrap(self);

    if (w->srv)
        bs_server_forget(w->srv);
    w->forgotten = 1;
    return Qnil;
}

/* ---- _publish ---------------------------------------------------------- */

/*
 * call-seq:
 *   _publish(channel, data, event_id) -> nil
 *
 * Encodes +data+ as JSON in this thread and queues it for +channel+'s
 * subscribers, with +event_id+ (nil: none) in ext. Raises EncodeError, ChannelError, NotRunning, Overloaded,
 * MessageTooLarge. (In a forked child the core answers NotRunning; server.rb
 * says so first, with the parent's pid.)
 */
static VALUE Server_publish(VALUE self, VALUE channel, VALUE data, VALUE event_id)
{
    server_wrapper_t *w = unwrap(self);
    bs_buf_t buf;
    int rc;

    StringValue(channel);
    bs_ruby_check_event_id(event_id);
    if (!w->srv)
        rb_raise(eNotRunning, "the server was never started: call start before publish");

    bs_buf_init(&buf);
    bs_ruby_json_encode(data, &buf); /* frees buf itself if it raises */
    rc = bs_server_publish(w->srv, RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel),
                           buf.ptr, buf.len, NIL_P(event_id) ? NULL : RSTRING_PTR(event_id),
                           NIL_P(event_id) ? 0 : (size_t)RSTRING_LEN(event_id));
    bs_buf_free(&buf);
    RB_GC_GUARD(channel);
    RB_GC_GUARD(event_id);

    switch (rc) {
    case BS_OK:
        return Qnil;
    case BS_ESTOPPED:
        rb_raise(eNotRunning, "the server is not running (never started, stopped, or inherited by a forked "
                              "child): call start before publish, or publish over HTTP with "
                              "BackboneSync::Publisher");
    case BS_EFULL:
        rb_raise(eOverloaded, "the publish queue is full (subscribers are not keeping up); "
                              "publish less often, or retry after a pause");
    case BS_EINVAL:
        rb_raise(eChannelError,
                 "invalid channel %" PRIsVALUE ": use /segment/segment with letters, "
                 "digits and -_!~()$@ (no wildcards, not under /meta or /service)",
                 rb_inspect(channel));
    case BS_ETOOBIG:
        rb_raise(eMessageTooLarge, "the message for %" PRIsVALUE " is larger than max_message_size; "
                                   "publish less data (an id to fetch), or raise max_message_size",
                 rb_inspect(channel));
    case BS_ENOMEM:
        rb_memerror();
    default:
        rb_raise(eError, "publish failed with unknown code %d; this is a bug in "
                         "backbone_sync, please report it", rc);
    }
    UNREACHABLE_RETURN(Qnil);
}

/* ---- queries ----------------------------------------------------------- */

/*
 * call-seq:
 *   _stats -> Hash
 *
 * A snapshot of the server's counters, with symbol keys and Integer values
 * (outbox_oldest_age: Float seconds); zeros in a forked child.
 */
static VALUE Server_stats(VALUE self)
{
    server_wrapper_t *w = unwrap(self);
    bs_stats_t st = { 0 };
    VALUE h = rb_hash_new();

    if (w->srv && !w->forgotten)
        bs_server_stats(w->srv, &st);
#define STAT(name) rb_hash_aset(h, ID2SYM(rb_intern(#name)), ULL2NUM(st.name))
    STAT(connections);
    STAT(clients);
    STAT(channels);
    STAT(subscriptions);
    STAT(messages_in);
    STAT(messages_out);
    STAT(bytes_out);
    STAT(slow_clients_dropped);
    STAT(errors);
    STAT(backplane_up);
    STAT(backplane_queued);
    STAT(backplane_refused);
    STAT(backplane_received);
    STAT(history_channels);
    STAT(history_bytes);
    STAT(clients_refused);
    STAT(clients_evicted);
    STAT(duplicates_dropped);
    STAT(outbox_waiting);
    rb_hash_aset(h, ID2SYM(rb_intern("outbox_oldest_age")), DBL2NUM((double)st.outbox_oldest_ms / 1000.0));
#undef STAT
    return h;
}

/*
 * call-seq:
 *   _set_outbox(waiting, oldest_ms) -> nil
 *
 * What the app's outbox holds, shown in stats and GET /stats.
 */
static VALUE Server_set_outbox(VALUE self, VALUE waiting, VALUE oldest_ms)
{
    server_wrapper_t *w = unwrap(self);
    uint64_t n = NUM2ULL(waiting), ms = NUM2ULL(oldest_ms);

    if (w->srv && !w->forgotten)
        bs_server_set_outbox(w->srv, n, ms);
    return Qnil;
}

static VALUE Server_running_p(VALUE self)
{
    server_wrapper_t *w = unwrap(self);

    return (w->srv && bs_server_running(w->srv)) ? Qtrue : Qfalse;
}

static VALUE Server_port(VALUE self)
{
    server_wrapper_t *w = unwrap(self);

    return w->srv ? INT2NUM(bs_server_port(w->srv)) : Qnil;
}

/* ---- the channel rules (channel.c owns them; Ruby asks here) ------------ */

/*
 * call-seq:
 *   BackboneSync.channel?(name) -> true or false
 *
 * True when +name+ is one channel a message may be published to, and a
 * subscription token be signed for: Faye's grammar, no wildcard, not under
 * /meta or /service. Anything but a String is false.
 */
static VALUE BackboneSync_channel_p(VALUE self, VALUE name)
{
    (void)self;
    if (!RB_TYPE_P(name, T_STRING))
        return Qfalse;
    return bs_channel_publishable(RSTRING_PTR(name), (size_t)RSTRING_LEN(name)) ? Qtrue : Qfalse;
}

/*
 * call-seq:
 *   BackboneSync.channel_pattern?(pattern) -> true or false
 *
 * True when a client may subscribe to +pattern+: a channel, or one whose
 * last segment is one star or two, not under /meta or /service. Anything
 * but a String is false.
 */
static VALUE BackboneSync_channel_pattern_p(VALUE self, VALUE pattern)
{
    (void)self;
    if (!RB_TYPE_P(pattern, T_STRING))
        return Qfalse;
    return bs_channel_subscribable(RSTRING_PTR(pattern), (size_t)RSTRING_LEN(pattern)) ? Qtrue : Qfalse;
}

void Init_BackboneSync_Server(VALUE mBackboneSync)
{
    VALUE cServer = rb_define_class_under(mBackboneSync, "Server", rb_cObject);

    eError = bs_ruby_error_class("Error");
    eStartError = bs_ruby_error_class("StartError");
    ePortInUse = bs_ruby_error_class("PortInUse");
    eNotRunning = bs_ruby_error_class("NotRunning");
    eOverloaded = bs_ruby_error_class("Overloaded");
    eChannelError = bs_ruby_error_class("ChannelError");
    eMessageTooLarge = bs_ruby_error_class("MessageTooLarge");

    rb_define_alloc_func(cServer, server_alloc);
    rb_define_private_method(cServer, "_configure", Server_configure, 1);
    rb_define_private_method(cServer, "_start", Server_start, 0);
    rb_define_private_method(cServer, "_stop", Server_stop, 0);
    rb_define_private_method(cServer, "_forget", Server_forget, 0);
    rb_define_private_method(cServer, "_publish", Server_publish, 3);
    rb_define_private_method(cServer, "_stats", Server_stats, 0);
    rb_define_private_method(cServer, "_set_outbox", Server_set_outbox, 2);
    rb_define_private_method(cServer, "_running?", Server_running_p, 0);
    rb_define_private_method(cServer, "_port", Server_port, 0);

    rb_define_module_function(mBackboneSync, "channel?", BackboneSync_channel_p, 1);
    rb_define_module_function(mBackboneSync, "channel_pattern?", BackboneSync_channel_pattern_p, 1);
}

/*
 * ruby_publish.c: the shape of a delivery and the making of epochs, for
 * Ruby publishers that do not go through a server (RedisPublisher). The
 * core owns these rules (bs_delivery_head in bayeux.c, bs_random_id in
 * util.c, the Redis names in rnames.c); this file only lends them to Ruby,
 * so a message that enters the backplane from Ruby is byte for byte the one
 * the C server would build, on the keys and the shard the servers read.
 * Runs in Ruby threads with the GVL held.
 */
#include "ruby_bindings.h"

#include "bayeux.h"
#include "json.h"
#include "rnames.h"
#include "util.h"

static VALUE eChannelError = Qnil, eError = Qnil;

void bs_ruby_check_event_id(VALUE event_id)
{
    if (NIL_P(event_id))
        return;
    if (!RB_TYPE_P(event_id, T_STRING) ||
        !bs_event_id_valid(RSTRING_PTR(event_id), (size_t)RSTRING_LEN(event_id)))
        rb_raise(rb_eArgError, "event_id must be nil or a String of 1 to %d bytes with no NUL "
                               "(e.g. SecureRandom.uuid), got %" PRIsVALUE,
                 BS_EVENT_ID_MAX, rb_inspect(event_id));
}

/*
 * call-seq:
 *   BackboneSync.delivery_head(channel, encoded_data, event_id = nil) -> String
 *
 * The delivery of +encoded_data+ (JSON text, as BackboneSync.encode_json
 * gives it) to +channel+, up to its ext object, exactly as the C server
 * builds it and as lib/backbone_sync/publish.lua expects it:
 *
 *   BackboneSync.delivery_head("/sync/users", '{"id":1}')
 *   # => '[{"channel":"/sync/users","data":{"id":1},"ext":{'
 *
 * With +event_id+, ext starts with it ({"event_id":...,). The script (or
 * the server) appends the offset and the epoch. Raises
 * BackboneSync::ChannelError when +channel+ is not one a message may be
 * published to (BackboneSync.channel?). +encoded_data+ is taken as given.
 */
static VALUE BackboneSync_delivery_head(int argc, VALUE *argv, VALUE self)
{
    VALUE channel, data, event_id;
    bs_buf_t buf;
    VALUE head;

    (void)self;
    rb_scan_args(argc, argv, "21", &channel, &data, &event_id);
    StringValue(channel);
    StringValue(data);
    if (!bs_channel_publishable(RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel)))
        rb_raise(eChannelError,
                 "invalid channel %" PRIsVALUE ": use /segment/segment with letters, "
                 "digits and -_!~()$@ (no wildcards, not under /meta or /service)",
                 rb_inspect(channel));
    bs_ruby_check_event_id(event_id);

    bs_buf_init(&buf);
    if (bs_delivery_head(&buf, RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel), RSTRING_PTR(data),
                         (size_t)RSTRING_LEN(data), NULL, 0, NULL, 0,
                         NIL_P(event_id) ? NULL : RSTRING_PTR(event_id),
                         NIL_P(event_id) ? 0 : (size_t)RSTRING_LEN(event_id))) {
        bs_buf_free(&buf);
        rb_memerror();
    }
    head = rb_utf8_str_new(buf.ptr, (long)buf.len);
    bs_buf_free(&buf);
    RB_GC_GUARD(channel);
    RB_GC_GUARD(data);
    RB_GC_GUARD(event_id);
    return head;
}

/*
 * call-seq:
 *   BackboneSync.new_epoch -> String
 *
 * A fresh channel epoch, as the C server makes them: 16 base-36 digits from
 * the kernel's CSPRNG (e.g. "k2n8q0w7x1c5v9b3"). Raises BackboneSync::Error
 * when the kernel gives no randomness.
 */
static VALUE BackboneSync_new_epoch(VALUE self)
{
    char epoch[BS_EPOCH_LEN + 1];

    (void)self;
    if (bs_random_id(epoch, BS_EPOCH_LEN))
        rb_raise(eError, "no randomness from the kernel (getrandom failed) to make an epoch");
    return rb_utf8_str_new(epoch, BS_EPOCH_LEN);
}

/*
 * call-seq:
 *   BackboneSync.event_id?(value) -> true or false
 *
 * True when +value+ may be a message's event id: a String of 1 to 128
 * bytes with no NUL (the rule the server applies to ext.event_id).
 */
static VALUE BackboneSync_event_id_p(VALUE self, VALUE value)
{
    (void)self;
    return RB_TYPE_P(value, T_STRING) && bs_event_id_valid(RSTRING_PTR(value), (size_t)RSTRING_LEN(value))
           ? Qtrue : Qfalse;
}

/*
 * call-seq:
 *   BackboneSync._redis_names(prefix, channel, cluster) -> [keys, pubsub]
 *
 * For RedisPublisher: the five keys publish.lua takes for +channel+
 * (settings, epoch, offset, history, events) and the start of its pub/sub
 * channels, on a Redis Cluster (+cluster+ true: tagged with the channel's
 * partition) or a single Redis.
 */
static VALUE BackboneSync__redis_names(VALUE self, VALUE prefix, VALUE channel, VALUE cluster)
{
    int part;
    VALUE keys = rb_ary_new_capa(5), pubsub;
    bs_buf_t buf;

    (void)self;
    StringValueCStr(prefix);
    StringValue(channel);
    part = RTEST(cluster) ? bs_rnames_partition(RSTRING_PTR(channel), (size_t)RSTRING_LEN(channel))
                          : BS_RNO_PARTITION;
    bs_buf_init(&buf);
    for (int kind = BS_RKIND_SETTINGS; kind <= BS_RKIND_EVENTS; kind++) {
        if (bs_rnames_name(&buf, RSTRING_PTR(prefix), part, kind, RSTRING_PTR(channel),
                           (size_t)RSTRING_LEN(channel))) {
            bs_buf_free(&buf);
            rb_memerror();
        }
        rb_ary_push(keys, rb_utf8_str_new(buf.ptr, (long)buf.len));
    }
    /* The pub/sub start: a pub/sub name of an empty channel, less its "ch:". */
    if (bs_rnames_name(&buf, RSTRING_PTR(prefix), part, BS_RKIND_PUBSUB, "", 0)) {
        bs_buf_free(&buf);
        rb_memerror();
    }
    pubsub = rb_utf8_str_new(buf.ptr, (long)buf.len - 3);
    bs_buf_free(&buf);
    RB_GC_GUARD(prefix);
    RB_GC_GUARD(channel);
    return rb_ary_new_from_args(2, keys, pubsub);
}

/*
 * call-seq:
 *   BackboneSync._redis_slot(name) -> Integer
 *
 * The Redis Cluster hash slot of a key (0 to 16383), for RedisPublisher's
 * routing.
 */
static VALUE BackboneSync__redis_slot(VALUE self, VALUE name)
{
    (void)self;
    StringValue(name);
    return UINT2NUM(bs_rnames_slot(RSTRING_PTR(name), (size_t)RSTRING_LEN(name)));
}

void Init_BackboneSync_Publish(VALUE mBackboneSync)
{
    eChannelError = bs_ruby_error_class("ChannelError");
    eError = bs_ruby_error_class("Error");

    rb_define_module_function(mBackboneSync, "delivery_head", BackboneSync_delivery_head, -1);
    rb_define_module_function(mBackboneSync, "new_epoch", BackboneSync_new_epoch, 0);
    rb_define_module_function(mBackboneSync, "event_id?", BackboneSync_event_id_p, 1);
    rb_define_module_function(mBackboneSync, "_redis_names", BackboneSync__redis_names, 3);
    rb_define_module_function(mBackboneSync, "_redis_slot", BackboneSync__redis_slot, 1);
}

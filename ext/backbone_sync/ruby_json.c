/*
 * ruby_json.c: encodes Ruby objects as JSON with yajl, for publish and for
 * BackboneSync.encode_json. Runs in the calling Ruby thread with the GVL
 * held (it calls as_json/to_s); the bytes land in a plain bs_buf_t that the
 * caller then hands to the core.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <yajl/yajl_gen.h>

#include "ruby_bindings.h"

/* Below yajl's own cap of 128, and low enough that a cyclic structure fails
 * fast with a clear message instead of a yajl status or a stack overflow. */
#define BS_JSON_MAX_DEPTH 64

static VALUE eEncodeError = Qnil;
static ID id_as_json, id_iso8601;

typedef struct encoder {
    yajl_gen gen;
    bs_buf_t *out;
    VALUE obj;
    int depth;
    int oom;                             /* the print callback ran out of memory */
} encoder_t;

static void encode_value(encoder_t *e, VALUE obj);

NORETURN(static void encode_error(const char *fmt, ...))
    __attribute__((format(printf, 1, 2)));

static void encode_error(const char *fmt, ...)
{
    va_list ap;
    VALUE msg;

    va_start(ap, fmt);
    msg = rb_vsprintf(fmt, ap);
    va_end(ap);
    rb_exc_raise(rb_exc_new_str(eEncodeError, msg));
}

static void print_cb(void *ctx, const char *s, size_t len)
{
    encoder_t *e = ctx;

    /* yajl gives the callback no way to fail: remember, check after. */
    if (!e->oom && bs_buf_append(e->out, s, len))
        e->oom = 1;
}

static void check(encoder_t *e, yajl_gen_status st)
{
    if (e->oom)
        rb_memerror();
    if (st != yajl_gen_status_ok)
        encode_error("the JSON generator refused a value (yajl status %d); "
                     "this is a bug in backbone_sync, please report it", (int)st);
}

/* A short, printable excerpt of a string for error messages. */
static VALUE excerpt(VALUE str)
{
    long len = RSTRING_LEN(str);

    return rb_inspect(rb_str_subseq(str, 0, len > 40 ? 40 : len));
}

/* Returns str as valid UTF-8 (possibly a converted copy) or raises. */
static VALUE utf8_string(VALUE str)
{
    int idx = rb_enc_get_index(str);
    int utf8 = rb_utf8_encindex();
    VALUE orig = str;

    if (idx == utf8 || idx == rb_usascii_encindex()) {
        /* already UTF-8 (US-ASCII is a subset); validity checked below */
    } else if (idx == rb_ascii8bit_encindex()) {
        /* Binary strings usually hold UTF-8 read from a socket or file. */
        str = rb_str_dup(str);
        rb_enc_associate_index(str, utf8);
    } else {
        str = rb_str_conv_enc(str, rb_enc_from_index(idx), rb_utf8_encoding());
        /* rb_str_conv_enc returns its argument unchanged when it cannot convert */
        if (rb_enc_get_index(str) != utf8)
            encode_error("cannot convert string %" PRIsVALUE " from %s to UTF-8; "
                         "fix the data, or convert it yourself with String#encode",
                         excerpt(orig), rb_enc_name(rb_enc_from_index(idx)));
    }
    if (rb_enc_str_coderange(str) == ENC_CODERANGE_BROKEN)
        encode_error("string %" PRIsVALUE " is not valid UTF-8 (its encoding is %s); "
                     "fix the data, or clean it with String#scrub before publishing",
                     excerpt(orig), rb_enc_name(rb_enc_from_index(idx)));
    return str;
}

static void encode_string(encoder_t *e, VALUE str)
{
    str = utf8_string(str);
    check(e, yajl_gen_string(e->gen, (const unsigned char *)RSTRING_PTR(str),
                             (size_t)RSTRING_LEN(str)));
    RB_GC_GUARD(str);
}

static void encode_key(encoder_t *e, VALUE key)
{
    if (RB_TYPE_P(key, T_STRING))
        encode_string(e, key);
    else if (RB_TYPE_P(key, T_SYMBOL))
        encode_string(e, rb_sym2str(key));
    else
        encode_string(e, rb_obj_as_string(key));
}

/* Shortest of %.15g..%.17g that reads back as the same double, with ".0"
 * on whole numbers so JSON.parse gives a Float again; yajl's own
 * yajl_gen_double prints 0.1 as 0.10000000000000000555. */
static void encode_float(encoder_t *e, double d)
{
    char buf[40];
    int prec;

    if (isnan(d) || isinf(d))
        encode_error("%s is not valid JSON; publish nil or a string instead",
                     isnan(d) ? "NaN" : d > 0 ? "Infinity" : "-Infinity");
    for (prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, d);
        if (strtod(buf, NULL) == d)
            break;
    }
    if (!strpbrk(buf, ".eE"))
        strcat(buf, ".0");
    check(e, yajl_gen_number(e->gen, buf, strlen(buf)));
}

/* ISO 8601 in UTC with milliseconds, e.g. "2024-01-02T03:04:05.678Z", the
 * form JavaScript's Date parses and produces. */
static void encode_time(encoder_t *e, VALUE time)
{
    struct timespec ts = rb_time_timespec(time);
    time_t secs = ts.tv_sec;
    struct tm tm;
    char buf[64];
    int n;

    if (!gmtime_r(&secs, &tm))
        encode_error("time %" PRIsVALUE " is out of range; publish it as a string",
                     rb_inspect(time));
    n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                 tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
    check(e, yajl_gen_string(e->gen, (const unsigned char *)buf, (size_t)n));
}

static void enter(encoder_t *e)
{
    if (++e->depth > BS_JSON_MAX_DEPTH)
        encode_error("nesting deeper than %d; is the object cyclic?", BS_JSON_MAX_DEPTH);
}

static int encode_pair(VALUE key, VALUE val, VALUE arg)
{
    encoder_t *e = (encoder_t *)arg;

    encode_key(e, key);
    encode_value(e, val);
    return ST_CONTINUE;
}

static void encode_hash(encoder_t *e, VALUE hash)
{
    enter(e);
    check(e, yajl_gen_map_open(e->gen));
    rb_hash_foreach(hash, encode_pair, (VALUE)e);
    check(e, yajl_gen_map_close(e->gen));
    e->depth--;
}

static void encode_array(encoder_t *e, VALUE ary)
{
    long i;

    enter(e);
    check(e, yajl_gen_array_open(e->gen));
    /* as_json/to_s of an element may change the array: re-read the length */
    for (i = 0; i < RARRAY_LEN(ary); i++)
        encode_value(e, RARRAY_AREF(ary, i));
    check(e, yajl_gen_array_close(e->gen));
    e->depth--;
}

/* Anything that is not a core JSON type: as_json (Rails models, TimeWithZone,
 * Date under ActiveSupport), then iso8601 (Date, DateTime), then to_s. */
static void encode_other(encoder_t *e, VALUE obj)
{
    VALUE res;

    if (rb_obj_is_kind_of(obj, rb_cTime)) {
        encode_time(e, obj);
        return;
    }
    if (rb_respond_to(obj, id_as_json)) {
        res = rb_funcall(obj, id_as_json, 0);
        /* as_json returning self would recurse forever; use the fallbacks */
        if (res != obj) {
            enter(e);
            encode_value(e, res);
            e->depth--;
            return;
        }
    }
    if (rb_respond_to(obj, id_iso8601)) {
        res = rb_funcall(obj, id_iso8601, 0);
        if (RB_TYPE_P(res, T_STRING)) {
            encode_string(e, res);
            return;
        }
    }
    encode_string(e, rb_obj_as_string(obj));
}

static void encode_value(encoder_t *e, VALUE obj)
{
    switch (rb_type(obj)) {
    case T_NIL:
        check(e, yajl_gen_null(e->gen));
        break;
    case T_TRUE:
        check(e, yajl_gen_bool(e->gen, 1));
        break;
    case T_FALSE:
        check(e, yajl_gen_bool(e->gen, 0));
        break;
    case T_FIXNUM:
        check(e, yajl_gen_integer(e->gen, FIX2LONG(obj)));
        break;
    case T_BIGNUM: {
        VALUE digits = rb_big2str(obj, 10);
        check(e, yajl_gen_number(e->gen, RSTRING_PTR(digits), (size_t)RSTRING_LEN(digits)));
        RB_GC_GUARD(digits);
        break;
    }
    case T_FLOAT:
        encode_float(e, RFLOAT_VALUE(obj));
        break;
    case T_STRING:
        encode_string(e, obj);
        break;
    case T_SYMBOL:
        encode_string(e, rb_sym2str(obj));
        break;
    case T_HASH:
        encode_hash(e, obj);
        break;
    case T_ARRAY:
        encode_array(e, obj);
        break;
    default:
        encode_other(e, obj);
        break;
    }
}

static VALUE encode_protected(VALUE arg)
{
    encoder_t *e = (encoder_t *)arg;

    encode_value(e, e->obj);
    return Qnil;
}

void bs_ruby_json_encode(VALUE obj, bs_buf_t *out)
{
    encoder_t e = { .gen = NULL, .out = out, .obj = obj, .depth = 0, .oom = 0 };
    int state = 0;

    e.gen = yajl_gen_alloc(NULL);
    if (!e.gen) {
        bs_buf_free(out);
        rb_memerror();
    }
    yajl_gen_config(e.gen, yajl_gen_print_callback, print_cb, &e);
    /* as_json/to_s may raise anything: free the generator and the buffer,
     * then let the exception continue */
    rb_protect(encode_protected, (VALUE)&e, &state);
    yajl_gen_free(e.gen);
    if (state) {
        bs_buf_free(out);
        rb_jump_tag(state);
    }
    RB_GC_GUARD(obj);
}

static VALUE buf_to_string(VALUE arg)
{
    bs_buf_t *buf = (bs_buf_t *)arg;

    return rb_utf8_str_new(buf->ptr, (long)buf->len);
}

static VALUE buf_free(VALUE arg)
{
    bs_buf_free((bs_buf_t *)arg);
    return Qnil;
}

/*
 * call-seq:
 *   BackboneSync.encode_json(obj) -> String
 *
 * Encodes +obj+ as JSON exactly as Server#publish does: Hash, Array, String
 * (must be valid UTF-8), Symbol, Integer, Float (no NaN/Infinity), true,
 * false, nil, Time (ISO 8601 UTC with milliseconds), objects with as_json,
 * then iso8601, then to_s. Raises BackboneSync::EncodeError.
 */
static VALUE BackboneSync_encode_json(VALUE self, VALUE obj)
{
    bs_buf_t buf;

    (void)self;
    bs_buf_init(&buf);
    bs_ruby_json_encode(obj, &buf);
    return rb_ensure(buf_to_string, (VALUE)&buf, buf_free, (VALUE)&buf);
}

void Init_BackboneSync_JSON(VALUE mBackboneSync)
{
    eEncodeError = bs_ruby_error_class("EncodeError");
    id_as_json = rb_intern("as_json");
    id_iso8601 = rb_intern("iso8601");

    rb_define_module_function(mBackboneSync, "encode_json", BackboneSync_encode_json, 1);
}

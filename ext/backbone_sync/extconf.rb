# frozen_string_literal: true

# Build configuration for the backbone_sync extension.
#   BACKBONE_SYNC_DEBUG=1     -O0 -g, for gdb
#   BACKBONE_SYNC_SANITIZE=1  AddressSanitizer + UBSan (see `rake spec:asan`)
require "mkmf"

def missing!(what, package, option)
  abort <<~MSG

    backbone_sync: #{what} was not found.
      Debian/Ubuntu: sudo apt-get install #{package}  (or run bin/setup)
      Elsewhere, install it and point the build at its prefix:
        gem install backbone_sync -- --with-#{option}-dir=/path/to/prefix
      (bundler: bundle config build.backbone_sync --with-#{option}-dir=/path/to/prefix)
  MSG
end

dir_config("libwebsockets")
dir_config("yajl")
dir_config("openssl")

# pkg_config adds the flags it finds; the have_* checks then confirm the
# headers and libraries really work (and are the fallback without a .pc file).
pkg_config("libwebsockets")
unless have_header("libwebsockets.h") &&
       have_library("websockets", "lws_create_context", "libwebsockets.h")
  missing!("libwebsockets (>= 4.1)", "libwebsockets-dev", "libwebsockets")
end
have_func("lws_cancel_service", "libwebsockets.h")

pkg_config("yajl")
unless have_header("yajl/yajl_gen.h") &&
       have_library("yajl", "yajl_gen_alloc", "yajl/yajl_gen.h")
  missing!("yajl 2.x", "libyajl-dev", "yajl")
end

pkg_config("libcrypto")
unless have_header("openssl/hmac.h") &&
       have_library("crypto", "HMAC", "openssl/hmac.h")
  missing!("OpenSSL's libcrypto", "libssl-dev", "openssl")
end

# libev: the loop of event_loop: :ev (server.c). Only its header is needed
# here: server.c opens libev.so.4 itself when such a server starts, and lws
# reaches it through its libev plugin (libwebsockets-evlib-ev); start says so
# when either is missing. Not linked: see server.c on why.
dir_config("libev")
missing!("libev's header", "libev-dev", "libev") unless have_header("ev.h")

dir_config("hiredis")
pkg_config("hiredis")
unless have_header("hiredis/hiredis.h") &&
       have_library("hiredis", "redisConnectWithTimeout", "hiredis/hiredis.h")
  missing!("hiredis (the Redis backplane's client)", "libhiredis-dev", "hiredis")
end

$CFLAGS << " -std=gnu11 -Wall -Wextra -Werror=implicit-function-declaration"

if ENV["BACKBONE_SYNC_SANITIZE"] == "1"
  # Added after the checks above so their test programs link without the
  # runtime; Ruby must then run with libasan preloaded (rake spec:asan).
  $CFLAGS << " -fsanitize=address,undefined -fno-omit-frame-pointer -O1 -g"
  $LDFLAGS << " -fsanitize=address,undefined"
elsif ENV["BACKBONE_SYNC_DEBUG"] == "1"
  $CFLAGS << " -O0 -g"
end

# Every *.c beside this file: the core (see backbone_sync.h for its layers)
# and the Ruby bindings (ruby_*.c, init.c).
$srcs = Dir.glob(File.join(__dir__, "*.c")).map { |f| File.basename(f) }.sort

create_makefile("backbone_sync/backbone_sync")

# frozen_string_literal: true

# rake faye:start [port=9292] [host=127.0.0.1] [mount=/faye] [timeout=45]
#                 [secret=S] [key=K cert=C] [verbose=1] [event_loop=poll|ev]
#                 [redis=URL[,URL...]]
# redis= defaults to $BACKBONE_SYNC_REDIS_URL; several comma-separated URLs
# are the seed nodes of a Redis Cluster, passed to Server.new as given.
namespace :faye do
  desc "Run the backbone_sync server in the foreground until INT/TERM " \
       "(port= host= mount= timeout= secret= key= cert= verbose=1 event_loop=poll|ev redis=URL[,URL...])"
  task :start do
    require "backbone_sync"
    require "backbone_sync/launcher"

    arg = ->(name) { v = ENV[name] || ENV[name.upcase]; v unless v.nil? || v.empty? }
    integer = lambda do |name|
      v = arg.(name)
      next nil unless v
      Integer(v, 10)
    rescue ArgumentError
      abort "rake faye:start: #{name}=#{v.inspect} is not a number"
    end

    options = {
      host: arg.("host"), port: integer.("port"), mount: arg.("mount"),
      timeout: integer.("timeout"), secret: arg.("secret"), key: arg.("key"), cert: arg.("cert"),
      verbose: %w[1 true yes].include?(arg.("verbose").to_s.downcase),
      event_loop: arg.("event_loop"), # Server.new checks it and says what is allowed
      # Not $REDIS, which an app may hold for something else.
      redis: ENV["redis"].then { |v| v unless v.nil? || v.empty? } # Server.new checks it too
    }.reject { |_, v| v.nil? }

    # In an app (backbone_sync:defaults loaded it), the outbox relay runs
    # next to the server and publishes to it in-process.
    on_start = lambda do |_server|
      BackboneSync::Rails::Engine.start_relay if defined?(BackboneSync::Rails::Engine) &&
                                                 BackboneSync::Rails::Engine.relay_with_server
    end

    begin
      BackboneSync::Launcher.run(on_start: on_start, **options)
    rescue ArgumentError, BackboneSync::Error => e
      abort "rake faye:start: #{e.message}"
    end
  end
end

# frozen_string_literal: true

module BackboneSync
  # What `plugin :backbone_sync` in config/puma.rb does (the Puma side is
  # lib/puma/plugin/backbone_sync.rb). This file loads neither Puma nor the
  # rest of the gem: in a cluster without preload_app! the Puma master never
  # loads the app, and must not load the gem before Rails either.
  #
  # - Single mode: the server runs in the Puma process, started once the
  #   app has booted (whatever config.backbone_sync.embedded says, unless it
  #   is a Hash, which gives its options).
  # - Cluster mode (with or without preload_app!): right before the first
  #   workers are forked, the master forks one more child, the server
  #   process, which boots the app (or inherits it when preloaded) and runs
  #   the server on root_address's port. Workers never start one; they
  #   publish to it over HTTP. The master restarts the server process when it
  #   dies (backing off from 1 s to 30 s) and stops it when Puma stops or
  #   hot-restarts; phased restarts replace workers only and leave it alone.
  module PumaPlugin
    # Exit statuses of the server process that say why it ended.
    PORT_IN_USE = 3
    GIVE_UP = 4

    @role = nil

    class << self
      # nil without the plugin; :single (start in this process), :cluster (the
      # master and its workers: another process runs it) or :server.
      attr_accessor :role

      # Puma calls this (through the plugin) in the master, before the app
      # is loaded in any process.
      def start(launcher)
        clustered = launcher.options[:workers].to_i.positive?
        self.role = clustered ? :cluster : :single
        # `rails server` boots the app before Puma reads its config.
        booted = defined?(BackboneSync::Rails::Engine) && defined?(::Rails.application) &&
                 ::Rails.application&.initialized?
        if clustered
          BackboneSync::Broadcaster.stop_embedded_server if booted
          @supervisor = Supervisor.new(launcher)
        elsif booted && !BackboneSync::Broadcaster.embedded_server
          BackboneSync::Rails::Engine.boot_server(::Rails.application.config.backbone_sync.embedded)
        end
      end

      # The DSL hook in the master, once, just before the first workers.
      def before_fork
        @supervisor&.start
      end
    end

    # Master side: forks the server process and keeps one running.
    class Supervisor
      MIN_BACKOFF = 1.0
      MAX_BACKOFF = 30.0
      STOP_GRACE = 10.0

      def initialize(launcher)
        @launcher = launcher
        @master_pid = Process.pid
        @backoff = MIN_BACKOFF
        @stopping = false
        @lock = Mutex.new
        events = launcher.events
        events.public_send(events.respond_to?(:after_stopped) ? :after_stopped : :on_stopped) { stop }
        events.public_send(events.respond_to?(:before_restart) ? :before_restart : :on_restart) do
          stop if hot_restart?
        end
      end

      def start
        @monitor = Thread.new do
          Thread.current.name = "backbone_sync supervisor"
          supervise
        end
      end

      # Stops the server process (TERM, then KILL after STOP_GRACE seconds).
      def stop
        pid = @lock.synchronize do
          @stopping = true
          @pid
        end
        return unless pid

        signal("TERM", pid)
        return if @monitor.join(STOP_GRACE)

        signal("KILL", pid)
        @monitor.join(STOP_GRACE)
      end

      private

      # Puma fires before_restart for a hot restart (the master execs itself
      # and starts a new server process) and for a phased restart (only the
      # workers are replaced: the server stays). Puma offers no reader for
      # which one it is; its launcher's status says :restart only for the first.
      def hot_restart?
        @launcher.instance_variable_get(:@status) != :run
      end

      def supervise
        loop do
          started = monotonic
          status = run_once
          break if status == :stopped || status == GIVE_UP

          @backoff = MIN_BACKOFF if monotonic - started > 60
          log(status == PORT_IN_USE ? "backbone_sync: the server's port is taken by another process; " \
                                      "workers publish to it; trying again in #{@backoff.round}s" :
                                      "backbone_sync: the server process ended (#{status.inspect}); " \
                                      "starting it again in #{@backoff.round}s")
          sleep @backoff
          @backoff = [@backoff * 2, MAX_BACKOFF].min
        end
      rescue StandardError => e
        log("backbone_sync: the supervisor failed (#{e.class}: #{e.message}); the server is not running")
      end

      # Forks the server process and waits for it to end; returns its exit
      # status, or :stopped when Puma is stopping.
      def run_once
        reader, writer = IO.pipe
        pid = @lock.synchronize do
          return :stopped if @stopping

          @pid = fork { serve(reader, writer) }
        end
        writer.close
        # The child holds the only write end: EOF means it has exited.
        reader.read
        reader.close
        status = reap(pid)
        @lock.synchronize do
          @pid = nil
          return :stopped if @stopping
        end
        status
      end

      # The server process. Signals are its own again; Puma's sockets are not.
      def serve(reader, writer)
        reader.close
        PumaPlugin.role = :server
        %w[USR1 USR2 HUP TTIN TTOU].each { |sig| Signal.trap(sig, "DEFAULT") }
        %w[TERM INT].each { |sig| Signal.trap(sig) { exit } }
        @launcher.binder.ios.each { |io| io.close unless io.closed? }
        Process.setproctitle("puma: backbone_sync server")
        @launcher.config.app # boots the app unless preload_app! did
        code = start_server
        exit!(code) if code

        sleep 1 while Process.ppid == @master_pid
        exit
      rescue SystemExit
        raise
      rescue Exception => e # rubocop:disable Lint/RescueException
        warn "backbone_sync: the server process failed: #{e.class}: #{e.message}"
        exit!(1)
      ensure
        writer.close unless writer.closed?
      end

      # nil once serving, else the exit status to end with.
      def start_server
        unless defined?(BackboneSync::Rails::Engine) && defined?(::Rails.application) && ::Rails.application
          warn "backbone_sync: plugin :backbone_sync needs a Rails app that loads the backbone_sync gem; " \
               "not running the server"
          return GIVE_UP
        end

        embedded = ::Rails.application.config.backbone_sync.embedded
        BackboneSync::Rails::Engine.start_embedded(embedded.is_a?(Hash) ? embedded : true) ? nil : PORT_IN_USE
      end

      # Puma's master reaps every child, so ours may be gone already.
      def reap(pid)
        Process.wait2(pid)[1].exitstatus
      rescue Errno::ECHILD
        nil
      end

      def signal(sig, pid)
        Process.kill(sig, pid)
      rescue Errno::ESRCH
        nil
      end

      def log(line)
        @launcher.log_writer.log(line)
      rescue StandardError
        warn line
      end

      def monotonic
        Process.clock_gettime(Process::CLOCK_MONOTONIC)
      end
    end
  end
end

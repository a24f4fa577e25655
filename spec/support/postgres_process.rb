# frozen_string_literal: true

require "tmpdir"
require "fileutils"
require "etc"

module BackboneSyncSpec
  # A real PostgreSQL (Debian's postgresql package) on a loopback port in a
  # temporary directory, owned by the spec and removed by stop. initdb
  # refuses to run as root: as root, the cluster belongs to the postgres
  # user (made by the package) and is run through runuser.
  class PostgresProcess
    BIN_GLOB = "/usr/lib/postgresql/*/bin"

    attr_reader :port, :database

    def self.bin_dir
      Dir.glob(BIN_GLOB).max_by { |d| d[%r{/(\d+)/bin}, 1].to_i }
    end

    def self.available?
      dir = bin_dir
      dir && File.executable?(File.join(dir, "initdb")) && (Process.uid != 0 || user_exists?("postgres"))
    end

    def self.user_exists?(name)
      Etc.getpwnam(name)
      true
    rescue ArgumentError
      false
    end

    def initialize(port, database: "backbone_sync_test")
      @port = port
      @database = database
      @bin = self.class.bin_dir
      @dir = nil
      @pid = nil
    end

    # The URL ActiveRecord takes (DATABASE_URL).
    def url
      "postgres://postgres@127.0.0.1:#{port}/#{database}"
    end

    def start
      @dir = Dir.mktmpdir("backbone_sync-pg")
      File.chmod(0o755, @dir)
      FileUtils.chown("postgres", nil, @dir) if root?
      run!(File.join(@bin, "initdb"), "-D", data_dir, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
      @pid = Process.spawn(*as_owner(File.join(@bin, "postgres"), "-D", data_dir, "-p", port.to_s, "-k", @dir,
                                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                                     "-c", "synchronous_commit=off", "-c", "full_page_writes=off"),
                           out: File.join(@dir, "server.log"), err: %i[child out], pgroup: true)
      wait_ready(60)
      run!(File.join(@bin, "createdb"), "-h", "127.0.0.1", "-p", port.to_s, "-U", "postgres", database)
      self
    rescue StandardError
      stop
      raise
    end

    def stop
      if @pid
        begin
          Process.kill("TERM", -@pid)
          Process.wait(@pid)
        rescue Errno::ESRCH, Errno::ECHILD
          nil
        end
      end
      FileUtils.rm_rf(@dir) if @dir
    ensure
      @pid = nil
      @dir = nil
    end

    def log
      File.read(File.join(@dir, "server.log"))
    rescue StandardError
      ""
    end

    private

    def data_dir
      File.join(@dir, "data")
    end

    def root?
      Process.uid.zero?
    end

    def as_owner(*argv)
      root? ? ["runuser", "-u", "postgres", "--", *argv] : argv
    end

    def run!(*argv)
      out = IO.popen(as_owner(*argv), err: %i[child out], &:read)
      raise "#{argv.first(2).join(' ')} failed: #{out}" unless $?.success?

      out
    end

    # pg_isready until it answers (bounded): the server accepts connections.
    def wait_ready(timeout)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      loop do
        return if system(File.join(@bin, "pg_isready"), "-q", "-h", "127.0.0.1", "-p", port.to_s)
        raise "PostgreSQL on port #{port} did not start within #{timeout}s: #{log}" if Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

        Process.wait(@pid, Process::WNOHANG) && raise("PostgreSQL exited: #{log}")
        sleep 0.1
      end
    end
  end
end

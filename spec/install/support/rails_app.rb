# frozen_string_literal: true

require "bundler"
require "digest"
require "fileutils"
require "open3"
require "rbconfig"
require "timeout"

# A Rails app made by `rails new` (the bundle's Rails) under tmp/install,
# bundled from locally installed gems only, with this checkout as its
# backbone_sync. Every command it runs is bounded in time.
class InstallSpecApp
  ROOT = File.expand_path("../../..", __dir__)
  NODE_MODULES = File.join(ROOT, "node_modules")
  FIXTURES = File.expand_path("../fixtures", __dir__)

  # What a bare `rails new` brings that these specs do not need.
  SKIPS = %w[--skip-bundle --skip-git --skip-test --skip-system-test --skip-bootsnap
             --skip-action-mailer --skip-action-mailbox --skip-action-text --skip-active-storage
             --skip-action-cable --skip-hotwire --skip-jbuilder --skip-rubocop --skip-brakeman
             --skip-ci --skip-docker --skip-kamal --skip-dev-gems --skip-devcontainer].freeze

  attr_reader :dir

  def initialize(name)
    @dir = File.join(ROOT, "tmp/install", name)
  end

  # rails new, then a Gemfile pointing at this checkout, bundled offline.
  def create(*options)
    FileUtils.rm_rf(dir)
    FileUtils.mkdir_p(File.dirname(dir))
    # In the gem's own bundle, where railties is.
    run!({}, RbConfig.ruby, Gem.bin_path("railties", "rails"), "new", dir, "--quiet", *SKIPS, *options, chdir: ROOT)
    File.write(path("Gemfile"), read("Gemfile") + %(\ngem "backbone_sync", path: #{ROOT.inspect}\n))
    # The embedded server (on in development) takes a port of its own
    # choosing: 9292 may be busy on a shared machine, and today it also
    # starts in bin/rails generate.
    write("config/initializers/embedded_server_port.rb",
          "Rails.application.config.backbone_sync.embedded = { port: 0 }\n")
    app!("bundle", "install", "--local", "--quiet")
  end

  # Runs a command of the app, in its own bundle.
  def app!(*command, env: {}, timeout: 120)
    run!({ "BUNDLE_GEMFILE" => path("Gemfile"), "RAILS_ENV" => "development" }.merge(env), *command,
         chdir: dir, timeout: timeout, unbundled: true)
  end

  def rails!(*args)
    app!(RbConfig.ruby, "bin/rails", *args)
  end

  def path(relative)
    File.join(dir, relative)
  end

  def read(relative)
    File.read(path(relative))
  end

  def write(relative, text)
    FileUtils.mkdir_p(File.dirname(path(relative)))
    File.write(path(relative), text)
  end

  def fixture(name)
    File.read(File.join(FIXTURES, name))
  end

  def node_module(relative)
    File.read(File.join(NODE_MODULES, relative))
  end

  # { relative path => digest } of the app's own files (not log/ or tmp/).
  def snapshot
    Dir.glob("**/*", File::FNM_DOTMATCH, base: dir).sort.each_with_object({}) do |file, digests|
      next if file.start_with?("log/", "tmp/", "storage/") || File.directory?(path(file))

      digests[file] = Digest::SHA256.file(path(file)).hexdigest
    end
  end

  # The members list: model with push, JSON controller, page, routes.
  def add_members
    rails!("generate", "model", "Member", "name:string", "--quiet")
    write("app/models/member.rb", fixture("member.rb"))
    # The demo's JSON API (spec/dummy), which the page's collection talks to.
    write("app/controllers/members_controller.rb", File.read(File.join(ROOT, "spec/dummy/app/controllers/members_controller.rb")))
    write("app/views/members/index.html.erb", fixture("index.html.erb"))
    write("config/routes.rb", <<~RUBY)
      Rails.application.routes.draw do
        resources :members, only: %i[index show create update destroy]
        root "members#index"
      end
    RUBY
    rails!("db:migrate")
  end

  # Starts `bin/rails server` on a free port; returns its URL once Puma
  # listens. Stop it with #stop.
  def start_server
    env = { "BUNDLE_GEMFILE" => path("Gemfile"), "RAILS_ENV" => "development" }
    reader, writer = IO.pipe
    Bundler.with_unbundled_env do
      @server = Process.spawn(env, RbConfig.ruby, "bin/rails", "server", "-b", "127.0.0.1", "-p", "0",
                              chdir: dir, out: writer, err: writer, pgroup: true)
    end
    writer.close
    @server_output = +""
    Timeout.timeout(90, Timeout::Error, "#{dir}: Puma did not listen within 90 s") do
      until (match = @server_output.match(%r{Listening on (http://127\.0\.0\.1:\d+)}))
        @server_output << reader.readpartial(4096)
      end
      @server_reader = Thread.new do
        loop { @server_output << reader.readpartial(4096) }
      rescue EOFError, IOError
        nil
      end
      match[1]
    end
  rescue EOFError
    raise "#{dir}: the server exited before listening:\n#{@server_output}"
  end

  def server_output
    @server_output.to_s
  end

  def stop
    return unless @server

    begin
      Process.kill("TERM", -@server)
      Timeout.timeout(20) { Process.wait(@server) }
    rescue Timeout::Error
      Process.kill("KILL", -@server)
      Process.wait(@server)
    rescue Errno::ESRCH, Errno::ECHILD
      nil
    end
    @server_reader&.join(5)
    @server = nil
  end

  private

  def run!(env, *command, chdir:, timeout: 120, unbundled: false)
    output = nil
    status = nil
    runner = lambda do
      Open3.popen2e(env, *command, chdir: chdir, pgroup: true) do |stdin, out, wait|
        stdin.close
        reader = Thread.new { out.read }
        unless wait.join(timeout)
          Process.kill("KILL", -wait.pid)
          raise "#{command.join(' ')}: still running after #{timeout} s\n#{reader.value}"
        end
        output = reader.value
        status = wait.value
      end
    end
    unbundled ? Bundler.with_unbundled_env(&runner) : runner.call
    raise "#{command.join(' ')} failed (#{status.exitstatus}) in #{chdir}:\n#{output}" unless status.success?

    output
  end
end

# frozen_string_literal: true

require "spec_helper"

# ext/backbone_sync/ruby_publish.c: the C core's delivery head and epochs,
# lent to Ruby publishers (RedisPublisher) so that they never write their
# own. spec/backplane/redis_spec.rb checks the bytes end to end.
RSpec.describe "BackboneSync.delivery_head and BackboneSync.new_epoch" do
  it "gives the delivery up to its ext, as publish.lua expects it" do
    head = BackboneSync.delivery_head("/sync/users", BackboneSync.encode_json({ "id" => 1, "s" => "é" }))
    expect(head).to eq(%([{"channel":"/sync/users","data":{"id":1,"s":"é"},"ext":{))
    expect(head.encoding).to eq(Encoding::UTF_8)
    # What the script appends makes a complete Bayeux delivery.
    expect(JSON.parse("#{head}\"offset\":1,\"epoch\":\"e\"}}]"))
      .to eq([{ "channel" => "/sync/users", "data" => { "id" => 1, "s" => "é" }, "ext" => { "offset" => 1, "epoch" => "e" } }])
  end

  it "refuses a channel no message may be published to, with BackboneSync.channel?'s rule" do
    ["/a/*", "/meta/x", "no-slash", "/has space"].each do |channel|
      expect { BackboneSync.delivery_head(channel, "1") }.to raise_error(BackboneSync::ChannelError, /invalid channel/), channel
    end
    expect { BackboneSync.delivery_head(nil, "1") }.to raise_error(TypeError)
  end

  it "makes epochs of 16 base-36 digits, fresh each time" do
    epochs = Array.new(50) { BackboneSync.new_epoch }
    expect(epochs).to all(match(/\A[0-9a-z]{16}\z/))
    expect(epochs.uniq.size).to eq(50)
    expect(epochs.first.encoding).to eq(Encoding::UTF_8)
  end
end

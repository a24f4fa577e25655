# frozen_string_literal: true

require "spec_helper"
require "bigdecimal"
require "date"
require "time"

RSpec.describe "BackboneSync.encode_json" do
  def encode(obj)
    BackboneSync.encode_json(obj)
  end

  # Parses back with Ruby's JSON, which is strict about what it accepts.
  def round_trip(obj)
    JSON.parse(encode(obj), quirks_mode: true)
  end

  it "returns a UTF-8 String" do
    json = encode({ "a" => 1 })
    expect(json).to be_a(String)
    expect(json.encoding).to eq(Encoding::UTF_8)
    expect(json).to be_valid_encoding
  end

  describe "core JSON types" do
    it "encodes nil, true and false" do
      expect(encode(nil)).to eq("null")
      expect(encode(true)).to eq("true")
      expect(encode(false)).to eq("false")
      expect(round_trip([nil, true, false])).to eq([nil, true, false])
    end

    it "encodes Integers, including Bignums past 64 bits" do
      values = [0, 1, -1, 2**62, -(2**62), 2**63 - 1, -(2**63), 2**64, 2**100, -(2**100), 10**40]
      expect(round_trip(values)).to eq(values)
      expect(encode(2**100)).to eq((2**100).to_s)
    end

    it "encodes Floats in their shortest round-trip form, with .0 on whole numbers" do
      expect(encode(0.1)).to eq("0.1")
      expect(encode(9.99)).to eq("9.99")
      expect(encode(100.0)).to eq("100.0")
      expect(encode(-0.0)).to eq("-0.0")
      expect(encode(1.5)).to eq("1.5")
      expect(encode(0.1 + 0.2)).to eq("0.30000000000000004")
    end

    it "round-trips Floats exactly, as Floats" do
      values = [0.0, -0.0, 0.1, 1.0 / 3, 2.5e-8, 1e20, 1.7976931348623157e308, 5e-324,
                -123.456, 12_345_678_901_234.5, 2.0**53, 0.1 + 0.2]
      back = round_trip(values)
      expect(back).to all(be_a(Float))
      expect(back).to eq(values)
      expect(back.map { |f| [f].pack("G") }).to eq(values.map { |f| [f].pack("G") })
    end

    it "round-trips random Floats bit for bit" do
      rng = Random.new(42)
      values = Array.new(2000) { [rng.bytes(8)].pack("a8").unpack1("G") }.reject { |f| f.nan? || f.infinite? }
      expect(round_trip(values).map { |f| [f].pack("G") }).to eq(values.map { |f| [f].pack("G") })
    end

    it "rejects NaN and Infinity with an EncodeError that says what to do" do
      [Float::NAN, Float::INFINITY, -Float::INFINITY].each do |bad|
        expect { encode({ "x" => [bad] }) }
          .to raise_error(BackboneSync::EncodeError, /(NaN|Infinity) is not valid JSON; publish nil or a string/)
      end
    end

    it "encodes Strings with JSON escapes for quotes, backslashes and control characters" do
      s = "quote \" backslash \\ newline \n tab \t nul \u0000 bell \u0007 del \u007f slash / </script>"
      expect(round_trip([s])).to eq([s])
      expect(encode("\u0001")).to eq('"\\u0001"')
      expect(encode("a\nb")).to eq('"a\\nb"')
    end

    it "passes non-ASCII UTF-8 through unescaped, including U+2028 and astral characters" do
      s = "héllo wörld ✓ \u2028\u2029 😀 日本語"
      json = encode(s)
      expect(json).to eq("\"#{s}\"")
      expect(JSON.parse("[#{json}]")).to eq([s])
    end

    it "encodes Symbols as strings" do
      expect(encode(:hello)).to eq('"hello"')
      expect(round_trip([:a, :"with space"])).to eq(["a", "with space"])
    end

    it "encodes empty and nested containers" do
      obj = { "a" => [], "b" => {}, "c" => [[[{ "d" => [1, { "e" => nil }] }]]] }
      expect(round_trip(obj)).to eq(obj)
      expect(encode([])).to eq("[]")
      expect(encode({})).to eq("{}")
    end

    it "keeps Hash order" do
      expect(encode({ "z" => 1, "a" => 2, "m" => 3 })).to eq('{"z":1,"a":2,"m":3}')
    end

    it "turns Symbol keys and other keys into strings" do
      obj = { sym: 1, "str" => 2, 3 => 3, 4.5 => 4, nil => 5, [1, 2] => 6 }
      expect(round_trip(obj)).to eq("sym" => 1, "str" => 2, "3" => 3, "4.5" => 4, "" => 5, "[1, 2]" => 6)
    end

    it "encodes a realistic record the same as Ruby's JSON" do
      record = { "id" => 42, "name" => "Ada", "score" => 9.75, "tags" => %w[a b], "admin" => false,
                 "manager_id" => nil, "nested" => { "deep" => [1, 2.5, "x"] } }
      expect(encode(record)).to eq(JSON.generate(record))
    end

    it "handles large strings and arrays" do
      big = "x" * 1_000_000
      expect(round_trip([big])).to eq([big])
      many = (1..100_000).to_a
      expect(round_trip(many)).to eq(many)
    end
  end

  describe "string encodings" do
    it "accepts US-ASCII strings" do
      expect(encode("plain".encode("US-ASCII"))).to eq('"plain"')
    end

    it "re-tags binary (ASCII-8BIT) strings holding valid UTF-8" do
      bin = "caf\xC3\xA9".b
      expect(bin.encoding).to eq(Encoding::BINARY)
      expect(round_trip([bin])).to eq(["café"])
      expect(bin.encoding).to eq(Encoding::BINARY) # the caller's string is untouched
    end

    it "converts other encodings to UTF-8" do
      latin1 = (+"caf\xE9").force_encoding("ISO-8859-1")
      sjis = "日本".encode("Shift_JIS")
      utf16 = "ünï".encode("UTF-16LE")
      expect(round_trip([latin1, sjis, utf16])).to eq(["café", "日本", "ünï"])
    end

    it "converts keys too" do
      expect(round_trip({ (+"caf\xE9").force_encoding("ISO-8859-1") => 1, "\xC3\xBC".b => 2 }))
        .to eq("café" => 1, "ü" => 2)
    end

    it "raises EncodeError naming the problem for invalid UTF-8" do
      expect { encode({ "name" => "ab\xFFcd" }) }
        .to raise_error(BackboneSync::EncodeError, /"ab\\xFFcd" is not valid UTF-8 .*String#scrub/)
      expect { encode(["\xC3".b]) }
        .to raise_error(BackboneSync::EncodeError, /not valid UTF-8 \(its encoding is ASCII-8BIT\)/)
      expect { encode({ "\xFF" => 1 }) }.to raise_error(BackboneSync::EncodeError, /not valid UTF-8/)
      expect { encode((+"\xFF").force_encoding("US-ASCII")) }.to raise_error(BackboneSync::EncodeError, /not valid UTF-8/)
    end

    it "raises EncodeError for strings that cannot be converted" do
      truncated = (+"\x81").force_encoding("Shift_JIS")
      expect(truncated).not_to be_valid_encoding
      expect { encode([truncated]) }.to raise_error(BackboneSync::EncodeError, /from Shift_JIS to UTF-8/)
      undefined = (+"\x81").force_encoding("Windows-1252") # a hole in the code page
      expect { encode({ "k" => undefined }) }
        .to raise_error(BackboneSync::EncodeError, /cannot convert string "\\x81" from Windows-1252 to UTF-8/)
    end

    it "shortens long offending strings in the message" do
      expect { encode("#{'a' * 1000}\xFF") }.to raise_error(BackboneSync::EncodeError) { |e|
        expect(e.message.length).to be < 200
      }
    end
  end

  describe "times and dates" do
    it "encodes Time as ISO 8601 UTC with milliseconds" do
      t = Time.utc(2024, 1, 2, 3, 4, 5, 678_901)
      expect(encode(t)).to eq('"2024-01-02T03:04:05.678Z"')
    end

    it "converts other zones to UTC" do
      t = Time.new(2024, 1, 2, 3, 4, 5.5r, "+05:30")
      expect(encode(t)).to eq('"2024-01-01T21:34:05.500Z"')
      expect(Time.iso8601(round_trip([t]).first)).to eq(t)
    end

    it "handles times before 1970 and whole seconds" do
      expect(encode(Time.at(-0.5).utc)).to eq('"1969-12-31T23:59:59.500Z"')
      expect(encode(Time.at(0))).to eq('"1970-01-01T00:00:00.000Z"')
    end

    it "encodes Date and DateTime with iso8601" do
      expect(encode(Date.new(2024, 1, 2))).to eq('"2024-01-02"')
      expect(encode(DateTime.new(2024, 1, 2, 3, 4, 5))).to eq('"2024-01-02T03:04:05+00:00"')
    end

    it "prefers as_json when a date responds to it (as under ActiveSupport)" do
      d = Date.new(2024, 1, 2)
      def d.as_json
        "from as_json"
      end
      expect(encode(d)).to eq('"from as_json"')
    end
  end

  describe "other objects" do
    it "calls as_json and encodes its result" do
      model = Class.new do
        def as_json
          { "id" => 7, "at" => Time.utc(2020, 5, 6), "tags" => [:x] }
        end
      end.new
      expect(round_trip([model])).to eq([{ "id" => 7, "at" => "2020-05-06T00:00:00.000Z", "tags" => ["x"] }])
    end

    it "follows as_json through several objects" do
      inner = Class.new { def as_json = [1, 2] }.new
      outer = Class.new { define_method(:as_json) { { "inner" => inner } } }.new
      expect(round_trip(outer)).to eq("inner" => [1, 2])
    end

    it "falls back to to_s when as_json returns self" do
      selfish = Class.new do
        def as_json
          self
        end

        def to_s
          "selfish"
        end
      end.new
      expect(encode(selfish)).to eq('"selfish"')
    end

    it "uses to_s for objects without as_json" do
      # The rule (README): no as_json or iso8601, so the object's to_s, as a
      # JSON string; the expected strings come from to_s, not from the encoder.
      objects = [BigDecimal("1.5"), 1r / 3, Object.new.tap { |o| def o.to_s = "custom" }]
      expect(objects.none? { |o| o.respond_to?(:as_json) || o.respond_to?(:iso8601) }).to be(true)
      expect(JSON.parse(encode(objects))).to eq([BigDecimal("1.5").to_s, "1/3", "custom"])
    end

    it "raises EncodeError when as_json objects refer to each other forever" do
      a = Class.new { attr_accessor :other; def as_json = other }.new
      b = Class.new { attr_accessor :other; def as_json = other }.new
      a.other = b
      b.other = a
      expect { encode(a) }.to raise_error(BackboneSync::EncodeError, /nesting deeper than 64; is the object cyclic\?/)
    end

    it "lets exceptions from as_json and to_s through, leaving the encoder usable" do
      boom = Class.new { def as_json = raise(KeyError, "boom") }.new
      expect { encode({ "a" => [1, boom] }) }.to raise_error(KeyError, "boom")
      expect(encode({ "a" => 1 })).to eq('{"a":1}')
    end

    it "does not leak or crash when many encodes fail" do
      boom = Class.new { def as_json = raise(ArgumentError, "no") }.new
      doc = ["x" * 4000, { "k" => boom }]
      failures = 0
      fail_once = lambda do
        encode(doc)
      rescue ArgumentError
        failures += 1
      end
      2000.times { fail_once.call } # warm up: the first failures size Ruby's own caches
      # 8 MB: each failure leaves a yajl generator and a 4 KB output buffer
      # behind if not freed, 20,000 of them over 80 MB; Ruby's garbage from
      # the rescued exceptions is collected before measuring.
      expect_memory_growth_below(8 * 1024) do
        20_000.times { fail_once.call }
      end
      expect(failures).to eq(22_000)
      expect(encode([1])).to eq("[1]")
    end
  end

  describe "depth" do
    def nested(depth)
      depth.times.reduce(1) { |acc, _| [acc] }
    end

    it "encodes 64 levels of nesting" do
      expect(round_trip(nested(64))).to eq(nested(64))
    end

    it "refuses 65 levels" do
      expect { encode(nested(65)) }.to raise_error(BackboneSync::EncodeError, /nesting deeper than 64/)
    end

    it "raises EncodeError for cyclic arrays and hashes" do
      a = []
      a << a
      h = {}
      h["self"] = h
      expect { encode(a) }.to raise_error(BackboneSync::EncodeError, /is the object cyclic\?/)
      expect { encode({ "x" => h }) }.to raise_error(BackboneSync::EncodeError, /is the object cyclic\?/)
    end
  end

  it "is an EncodeError, a BackboneSync::Error" do
    expect(BackboneSync::EncodeError.ancestors).to include(BackboneSync::Error, StandardError)
  end

  it "encodes the same value from several threads at once" do
    payload = { "id" => 1, "name" => "ünï", "at" => Time.utc(2024, 1, 1), "list" => (1..50).to_a }
    expected = encode(payload)
    results = Array.new(4) { Thread.new { Array.new(500) { encode(payload) }.uniq } }.map(&:value)
    expect(results).to all(eq([expected]))
  end
end

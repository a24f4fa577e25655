-- publish.lua: the one way a message enters the Redis backplane, used alike
-- by the C server (ext/backbone_sync/backplane.c) and by Ruby publishers
-- (BackboneSync::RedisPublisher). It gives the message the next offset of its
-- channel and the channel's epoch, keeps it in the channel's bounded history,
-- and publishes it where the nodes that want it listen: <pubsub>ch:<channel>
-- for its own subscribers, <pubsub>kids:<parent> for /parent/*, and
-- <pubsub>tree:<ancestor> for /ancestor/** (tree: alone for /**). A publish
-- on a Redis channel nobody listens to costs a lookup; no pattern is ever
-- matched. Every name comes from ext/backbone_sync/rnames.c, the one owner
-- of them: on a Redis Cluster all of them carry the hash tag of the
-- channel's partition, so the script runs on one shard, declares every key
-- it touches, and sends with SPUBLISH (sharded pub/sub).
--
-- KEYS: settings, epoch, offset, history, events (of the channel)
-- ARGV: pubsub, channel, head, history_size, history_ttl, fresh_epoch,
--       event_id, publish_command
--   pubsub is what the pub/sub channels start with (the prefix, and the
--   partition's tag on a cluster).
--   head is the delivery up to its ext object, ending in `"ext":{` or, when
--   ext already has members, in `"ext":{...,`.
--   event_id ("": none) is the publisher's ext.event_id: while the
--   channel's history keeps a message published with it, a second publish
--   with it is dropped and answered with the first one's offset.
--   history_size and history_ttl are the caller's guess: the servers write
--   theirs to the settings key when they connect, and those win, so that a
--   Ruby publisher never trims the history the servers keep.
--   publish_command is PUBLISH (a single Redis) or SPUBLISH (a cluster).
local pubsub, channel, head = ARGV[1], ARGV[2], ARGV[3]
local size, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local send = ARGV[8] == 'SPUBLISH' and 'SPUBLISH' or 'PUBLISH'
local settings = redis.call('HMGET', KEYS[1], 'history_size', 'history_ttl')
if settings[1] then size = tonumber(settings[1]) end
if settings[2] then ttl = tonumber(settings[2]) end
local ekey, okey, hkey, ikey = KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local event_id = ARGV[7]
if event_id ~= '' and size > 0 then
  local seen = redis.call('ZSCORE', ikey, event_id)
  if seen then return tonumber(seen) end
end
local epoch = redis.call('GET', ekey)
if not epoch then
  epoch = ARGV[6]
  redis.call('SET', ekey, epoch)
end
local offset = redis.call('INCR', okey)
local frame = head .. '"offset":' .. offset .. ',"epoch":"' .. epoch .. '"}}]'
local keep = math.max(ttl, 86400)
if size > 0 then
  redis.call('ZADD', hkey, offset, frame)
  redis.call('ZREMRANGEBYRANK', hkey, 0, -(size + 1))
  redis.call('EXPIRE', hkey, ttl)
  -- the event ids of the messages kept, and no others
  if event_id ~= '' then redis.call('ZADD', ikey, offset, event_id) end
  redis.call('ZREMRANGEBYSCORE', ikey, '-inf', '(' .. (offset - size + 1))
  redis.call('EXPIRE', ikey, ttl)
end
redis.call('EXPIRE', ekey, keep)
redis.call('EXPIRE', okey, keep)
local message = channel .. '\n' .. offset .. '\n' .. epoch .. '\n' .. frame
redis.call(send, pubsub .. 'ch:' .. channel, message)
local parent = string.match(channel, '^(.*)/[^/]*$')
redis.call(send, pubsub .. 'kids:' .. parent, message)
while true do
  redis.call(send, pubsub .. 'tree:' .. parent, message)
  if parent == '' then break end
  parent = string.match(parent, '^(.*)/[^/]*$')
end
return offset

-- publish.lua: the one way a message enters the Redis backplane, used alike
-- by the C server (ext/backbone_sync/backplane.c) and by Ruby publishers
-- (BackboneSync::RedisPublisher). It gives the message the next offset of its
-- channel and the channel's epoch, keeps it in the channel's bounded history,
-- and publishes it on <prefix>ch:<channel>, where the nodes with a subscriber
-- to the channel (or to a pattern matching it) listen.
--
-- ARGV: prefix, channel, head, history_size, history_ttl, fresh_epoch[, event_id]
--   head is the delivery up to its ext object, ending in `"ext":{` or, when
--   ext already has members, in `"ext":{...,`.
--   event_id ("" or absent: none) is the publisher's ext.event_id: while the
--   channel's history keeps a message published with it, a second publish
--   with it is dropped and answered with the first one's offset.
--   history_size and history_ttl are the caller's guess: the servers write
--   theirs to <prefix>settings when they connect, and those win, so that a
--   Ruby publisher never trims the history the servers keep.
local prefix, channel, head = ARGV[1], ARGV[2], ARGV[3]
local size, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local settings = redis.call('HMGET', prefix .. 'settings', 'history_size', 'history_ttl')
if settings[1] then size = tonumber(settings[1]) end
if settings[2] then ttl = tonumber(settings[2]) end
local ekey = prefix .. 'epoch:' .. channel
local okey = prefix .. 'offset:' .. channel
local hkey = prefix .. 'history:' .. channel
local ikey = prefix .. 'events:' .. channel
local event_id = ARGV[7] or ''
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
redis.call('PUBLISH', prefix .. 'ch:' .. channel, channel .. '\n' .. offset .. '\n' .. epoch .. '\n' .. frame)
return offset

"""The Lua scripts that move job records (``flaskmodel.jobs.store`` runs them): each state change
is one script, so a cancel racing a finishing worker leaves exactly one winner and a terminal state
is never overwritten.

The record's ``attempts_history`` (JSON list, the last ``HISTORY_KEEP`` deliveries) is kept by
the same scripts: a start appends who started which delivery when, and closes the delivery before
it if that one never recorded an end (``redelivered``); a hand-over to the next chunk and a
terminal move close the current one (``ended_at``, ``outcome``).
"""

#: Deliveries kept in a job's ``attempts_history``.
HISTORY_KEEP = 20

# Close the newest delivery of the record KEYS[1] that is still open (no outcome yet).
_CLOSE_LAST = """
local function close_last(outcome, at)
  local raw = redis.call('HGET', KEYS[1], 'attempts_history')
  if not raw then return end
  local history = cjson.decode(raw)
  local last = history[#history]
  if last == nil or last['outcome'] ~= nil then return end
  last['outcome'] = outcome
  if at then last['ended_at'] = at end
  redis.call('HSET', KEYS[1], 'attempts_history', cjson.encode(history))
end
"""

# KEYS: job hash, result key (may be unused), done list. ARGV: allowed states (comma list), new
# state, ttl, result JSON ("" for none), done-list ttl, then field/value pairs to set. Returns the
# state found. A move into a terminal state also pushes that state onto the done list.
# A result write counts itself in the record (``result_writes``: the ledger's proof that a job's
# result was written once).
TRANSITION = (
    _CLOSE_LAST
    + """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return false end
local allowed = ',' .. ARGV[1] .. ','
if not string.find(allowed, ',' .. cur .. ',', 1, true) then return cur end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('SET', KEYS[2], ARGV[4], 'EX', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'result_writes', 1)
end
if ARGV[2] == 'SUCCEEDED' or ARGV[2] == 'FAILED' or ARGV[2] == 'CANCELLED' then
  redis.call('RPUSH', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[5])
  close_last(ARGV[2], redis.call('HGET', KEYS[1], 'finished_at'))
end
return cur
"""
)

# A delivery of chunk ARGV[1] of a job. KEYS: job hash. ARGV: chunk, now, ttl, worker (JSON
# ``JobWorker``), history length kept. Returns
# {verdict, state, attempt}: 'run' (the chunk the record expects: RUNNING, attempt counted),
# 'republish' (this chunk already handed over but the next message may never have been
# published: a crash between ``advance`` and the publish), 'stale' (a duplicate of a chunk
# that was handed over), 'ended' (terminal state) or 'missing'.
START_CHUNK = """
local cur = redis.call('HGET', KEYS[1], 'state')
if not cur then return {'missing', '', 0} end
if cur == 'SUCCEEDED' or cur == 'FAILED' or cur == 'CANCELLED' then return {'ended', cur, 0} end
local expected = tonumber(redis.call('HGET', KEYS[1], 'chunk') or '0')
local chunk = tonumber(ARGV[1])
if chunk ~= expected then
  if chunk + 1 == expected and redis.call('HEXISTS', KEYS[1], 'handover') == 1 then
    return {'republish', cur, 0}
  end
  return {'stale', cur, 0}
end
redis.call('HSET', KEYS[1], 'state', 'RUNNING', 'delivered_at', ARGV[2], 'worker', ARGV[4])
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
local raw = redis.call('HGET', KEYS[1], 'attempts_history')
local history = raw and cjson.decode(raw) or {}
local last = history[#history]
if last ~= nil and last['outcome'] == nil then last['outcome'] = 'redelivered' end
table.insert(history, {attempt = attempt, chunk = chunk, worker = cjson.decode(ARGV[4]),
  started_at = ARGV[2]})
while #history > tonumber(ARGV[5]) do table.remove(history, 1) end
redis.call('HSET', KEYS[1], 'attempts_history', cjson.encode(history))
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {'run', cur, attempt}
"""

# Hand a running job over from chunk ARGV[1] to the next: only the delivery of the expected
# chunk wins. Marks the hand-over pending until the next message is published (``handed_over``)
# and resets the per-chunk delivery count. KEYS: job hash. ARGV: chunk, now. Returns 1 when this
# call advanced it.
ADVANCE = (
    _CLOSE_LAST
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'RUNNING' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'chunk') or '0') ~= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'chunk', tonumber(ARGV[1]) + 1, 'handover', 1, 'attempts', 0)
close_last('handed_over', ARGV[2])
return 1
"""
)

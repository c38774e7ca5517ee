//! The Lua scripts behind [`Cluster`](super::Cluster)'s operations.
//!
//! Each operation that must be atomic (check, then write) is one script, run with
//! `EVALSHA` (the scripts are loaded when the handle connects; after a Redis restart
//! the `redis` crate reloads one on `NOSCRIPT`). A script runs alone on the server,
//! so "check the owner, then write" cannot interleave with another instance's claim:
//! that is the fencing ([rule 16](flightdeck_core::contract#rule-16) across machines).
//!
//! Generations and owner tokens are handled as strings inside the scripts: Lua 5.1
//! numbers are doubles and print large integers in exponent form, so a generation is
//! formatted with `%d` once and compared as text afterwards.

use redis::Script;

/// Lua helper shared by the scripts that write the cache: index the cache entry
/// `ck` in the sorted set `idx` (score = expiry time in ms, server clock), drop the
/// index entries that have expired, evict the entries closest to expiry (with one
/// time to live for all, the oldest) beyond `cap`, and keep the index alive as long
/// as its longest-lived entry.
const CACHE_INDEX_LUA: &str = r"
local function index_cache_entry(ck, idx, ttl, cap)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', idx, '-inf', now)
  redis.call('ZADD', idx, now + ttl, ck)
  local excess = redis.call('ZCARD', idx) - cap
  if excess > 0 then
    local victims = redis.call('ZPOPMIN', idx, excess)
    for i = 1, #victims, 2 do redis.call('DEL', victims[i]) end
  end
  if redis.call('PTTL', idx) < ttl then redis.call('PEXPIRE', idx, ttl) end
end
-- RPUSH in groups: Lua's unpack is bounded by the C stack (about 8000 values).
local function push_all(list, values)
  local group = {}
  for _, v in ipairs(values) do
    group[#group + 1] = v
    if #group == 1000 then redis.call('RPUSH', list, unpack(group)); group = {} end
  end
  if #group > 0 then redis.call('RPUSH', list, unpack(group)) end
end
";

/// `claim`: KEYS = cache, owner, gen; ARGV = instance, lease ms, hold ms.
/// Returns `{0, cached list}` (cache hit: outcome first, then the chunks),
/// `{1, owner value}` (a live owner: "gen/instance"), or `{2, gen}` (this caller is
/// the owner of the new generation `gen`, a decimal string).
///
/// A missing generation counter is seeded from the server clock in microseconds,
/// so generations never repeat for a key even after the counter expired or Redis
/// lost its data: a stalled owner's token can never match a later owner's.
const CLAIM_LUA: &str = r"
local cached = redis.call('LRANGE', KEYS[1], 0, -1)
if #cached > 0 then return {0, cached} end
local owner = redis.call('GET', KEYS[2])
if owner then return {1, owner} end
if redis.call('EXISTS', KEYS[3]) == 0 then
  local t = redis.call('TIME')
  redis.call('SET', KEYS[3], t[1] .. string.format('%06d', tonumber(t[2])))
end
local gen = string.format('%d', redis.call('INCR', KEYS[3]))
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('SET', KEYS[2], gen .. '/' .. ARGV[1], 'NX', 'PX', ARGV[2])
return {2, gen}
";

/// `renew`: KEYS = owner, gen, log; ARGV = token, lease ms, hold ms.
/// Returns 1 if the caller still owns the key (lease, counter and log extended), 0
/// if not (nothing changed).
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1
";

/// `append`: KEYS = owner, log; ARGV = token, hold ms, chunk...
/// Returns 0 if fenced (nothing written), 1 after adding the chunks to the log as
/// entries of at most 1000 chunks each (field `c` repeated, in order).
const APPEND_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local fields = {}
for i = 3, #ARGV do
  fields[#fields + 1] = 'c'
  fields[#fields + 1] = ARGV[i]
  if #fields == 2000 then redis.call('XADD', KEYS[2], '*', unpack(fields)); fields = {} end
end
if #fields > 0 then redis.call('XADD', KEYS[2], '*', unpack(fields)) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
";

/// `finish`: KEYS = owner, log, gen, cache, index; ARGV = token, outcome,
/// cacheable ('1' or '0'), cache ttl ms, cache capacity, retention ms, gen hold ms.
/// Returns 0 if fenced (nothing written), 1 after: the end entry (field `end`) on
/// the log; if cacheable, the cache entry (outcome, then every chunk of the log)
/// with its time to live, indexed and trimmed; the lease deleted; the log and the
/// counter set to expire after the retention.
fn finish_lua() -> String {
    format!(
        "{CACHE_INDEX_LUA}{}",
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], '*', 'end', ARGV[2])
local ttl = tonumber(ARGV[4])
local cap = tonumber(ARGV[5])
if ARGV[3] == '1' and cap > 0 then
  local values = {ARGV[2]}
  for _, e in ipairs(redis.call('XRANGE', KEYS[2], '-', '+')) do
    local f = e[2]
    for i = 1, #f, 2 do
      if f[i] == 'c' then values[#values + 1] = f[i + 1] end
    end
  end
  redis.call('DEL', KEYS[4])
  push_all(KEYS[4], values)
  redis.call('PEXPIRE', KEYS[4], ttl)
  index_cache_entry(KEYS[4], KEYS[5], ttl, cap)
end
redis.call('DEL', KEYS[1])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PEXPIRE', KEYS[3], ARGV[7])
return 1
"
    )
}

/// `cache_put`: KEYS = cache, index; ARGV = ttl ms, capacity, outcome, chunk...
fn cache_put_lua() -> String {
    format!(
        "{CACHE_INDEX_LUA}{}",
        r"
local ttl = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if cap <= 0 then return 0 end
local values = {}
for i = 3, #ARGV do values[#values + 1] = ARGV[i] end
redis.call('DEL', KEYS[1])
push_all(KEYS[1], values)
redis.call('PEXPIRE', KEYS[1], ttl)
index_cache_entry(KEYS[1], KEYS[2], ttl, cap)
return 1
"
    )
}

/// A follower's check after an idle `XREAD BLOCK`: KEYS = owner, log; ARGV =
/// "gen/" prefix, last id read. Returns 1 if the owner of that generation still
/// holds the lease or the log has entries after the last id (the end may have just
/// been written), 0 if the owner is gone without finishing.
const FOLLOW_CHECK_LUA: &str = r"
local o = redis.call('GET', KEYS[1])
if o and string.sub(o, 1, #ARGV[1]) == ARGV[1] then return 1 end
local more = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2], '+', 'COUNT', 1)
if #more > 0 then return 1 end
return 0
";

/// The compiled scripts (their SHA1 digests computed once).
#[derive(Debug)]
pub(crate) struct Scripts {
    pub(crate) claim: Script,
    pub(crate) renew: Script,
    pub(crate) append: Script,
    pub(crate) finish: Script,
    pub(crate) cache_put: Script,
    pub(crate) follow_check: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            claim: Script::new(CLAIM_LUA),
            renew: Script::new(RENEW_LUA),
            append: Script::new(APPEND_LUA),
            finish: Script::new(&finish_lua()),
            cache_put: Script::new(&cache_put_lua()),
            follow_check: Script::new(FOLLOW_CHECK_LUA),
        }
    }

    /// Every script, for loading them all at connect.
    pub(crate) fn all(&self) -> [&Script; 6] {
        [
            &self.claim,
            &self.renew,
            &self.append,
            &self.finish,
            &self.cache_put,
            &self.follow_check,
        ]
    }
}

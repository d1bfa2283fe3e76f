-- promote: due scheduled/retrying jobs -> queued, then per-queue priority aging.
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3..]  queue prefixes QP
-- Returns the number of changes (jobs promoted plus levels jobs moved up).
local now = clock(ARGV[1])
local G = ARGV[2]
local changed = 0
for i = 3, #ARGV do
    local n = promote_queue(G, ARGV[i], now, -1)
    if n > 0 then
        wake(ARGV[i])
    end
    changed = changed + n
end
return changed

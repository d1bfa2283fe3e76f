-- probe: is work ready in these queues, and when does the next waiting job fall due?
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2..]  queue prefixes QP
-- Returns {now, queues with ready jobs, earliest run_at or ''}.
local now = clock(ARGV[1])
local ready, next_due = 0, nil
for i = 2, #ARGV do
    if any_ready(ARGV[i]) then
        ready = ready + 1
    end
    local first = redis.call('ZRANGE', ARGV[i] .. 'due', 0, 0, 'WITHSCORES')
    if first[2] and (next_due == nil or tonumber(first[2]) < next_due) then
        next_due = tonumber(first[2])
    end
end
return { fmt(now), ready, next_due and fmt(next_due) or '' }

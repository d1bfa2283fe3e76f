-- finish_claim: apply a batch of outcomes, then claim, in one atomic call and one round
-- trip (the worker's steady state: the slots its finished jobs freed are refilled).
--
-- KEYS[1]  routing key   ARGV[1]  now ('' = Redis TIME)   ARGV[2]  G
-- ARGV[3]  the outcomes, as finish.lua's ARGV[3]
-- ARGV[4..]  claim.lua's ARGV[3..]: lease token base, worker, lease seconds, task caps
--   (JSON), promote limit, limit, queue prefixes in serving order
-- Returns {finish.lua's reply, claim.lua's reply}. The outcomes are applied first, so
-- the slots, task caps and tenant caps they free count for the claim.
local now = clock(ARGV[1])
local G = ARGV[2]
-- The claim's task caps (ARGV[7]) tell the finish which freed slots may unblock jobs.
local applied = finish_outcomes(now, G, cjson.decode(ARGV[3]), cjson.decode(ARGV[7]))
return { applied, claim_jobs(now, G, ARGV, 4, #ARGV) }

-- wrk script: POSTs one signed workflow_job `queued` delivery with a fresh
-- X-GitHub-Delivery per request (the signature covers the body only).
-- Usage: see README "Benchmarks"; BODY and SIGNATURE come from the environment.
local body = os.getenv("BODY")
local signature = os.getenv("SIGNATURE")
local counter = 0
request = function()
  counter = counter + 1
  local headers = {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "workflow_job",
    ["X-GitHub-Delivery"] = string.format("wrk-%d-%d-%d", os.time(), math.random(1, 1e9), counter),
    ["X-Hub-Signature-256"] = signature,
  }
  return wrk.format("POST", "/webhook", headers, body)
end

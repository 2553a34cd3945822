-- wrk script for POST /v1/chat/completions:
--   wrk -t1 -c64 -d30s --latency -s scripts/chat_completion.lua http://127.0.0.1:8080/v1/chat/completions
-- `just bench` does not need wrk: benches/run.py brings its own load generator.
wrk.method = "POST"
wrk.body   = '{"model":"gpt-3.5-turbo","messages":[{"role":"user","content":"Hello"}]}'
wrk.headers["Content-Type"] = "application/json"

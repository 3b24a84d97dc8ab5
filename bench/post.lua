-- wrk script for scenario 2: a small JSON POST (a create, the legacy service answers 200)
wrk.method = "POST"
wrk.body = '{"name":"widget","price":42}'
wrk.headers["Content-Type"] = "application/json"

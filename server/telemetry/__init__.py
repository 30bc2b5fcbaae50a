"""Recording what happens, for every layer: `metrics` (the Prometheus
counters, gauges and histograms, and one function per event) and `context`
(the job or RPC a log line concerns, an attempt's trace span).

Cross-cutting, so it sits low: just above model, importing nothing of ours
but model, and any layer may record through it. Serving the metrics,
exporting the traces and formatting the logs is wiring: server/runtime/.
"""
